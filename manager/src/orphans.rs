//! Processes an instance leaves behind. charond is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so a descendant of an instance whose parent
//! dies (a `setsid sleep 300 &` of a shell service, a double fork) becomes
//! charond's child instead of init's. The loop finds such *orphans* among
//! its children (`/proc/self/task/<pid>/children`, any child that is not an
//! instance) when an instance is reaped and on each tick, and tells whose
//! they are from their environment (`CHARON_RUN_DIR`, `CHARON_SERVICE_KEY`,
//! `CHARON_SLOT`), or, failing that, from the instance just reaped. Once
//! their instance is gone they are stopped like an instance: SIGTERM to
//! them (and their process group if they lead one), SIGKILL after the
//! service's `stop-grace`, reaped, and logged with the service key. A child
//! that is neither an instance nor an instance's descendant (charond as a
//! container's PID 1 inherits every orphan of the container) is only
//! reaped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::log::{info, warning};
use crate::runtime::Manager;
use crate::sys::{Reaped, WaitStatus};

/// One process left behind.
struct Orphan {
    key: String,
    /// The instance it descends from, while that one still runs.
    owner: Option<usize>,
    grace: Duration,
    /// SIGKILL at this time (set once SIGTERM was sent).
    kill_at: Option<Instant>,
}

/// The orphans charond tracks, by pid. Every pid here is charond's child
/// and not yet reaped, so signalling it can never hit a reused pid.
#[derive(Default)]
pub(crate) struct Orphans {
    by_pid: HashMap<i32, Orphan>,
}

impl Orphans {
    /// None left.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// The earliest SIGKILL due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.by_pid.values().filter_map(|o| o.kill_at).min()
    }
}

/// What an orphan's environment says: (run dir, service key, slot).
fn origin(pid: i32) -> Option<(String, String, Option<u32>)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut run, mut key, mut slot) = (None, None, None);
    for v in env.split(|&b| b == 0) {
        let v = String::from_utf8_lossy(v);
        if let Some(x) = v.strip_prefix("CHARON_RUN_DIR=") {
            run = Some(x.to_string());
        } else if let Some(x) = v.strip_prefix("CHARON_SERVICE_KEY=") {
            key = Some(x.to_string());
        } else if let Some(x) = v.strip_prefix("CHARON_SLOT=") {
            slot = x.parse().ok();
        }
    }
    Some((run?, key?, slot))
}

impl Manager {
    /// Looks for children that are not instances. `gone` is the service key
    /// and `stop-grace` of an instance just reaped: a child whose
    /// environment says nothing is taken as its descendant.
    pub(crate) fn find_orphans(&mut self, gone: Option<(&str, Duration)>) {
        let run_dir = self.paths.run_dir.to_string_lossy().into_owned();
        for pid in self.spawner.children() {
            if self.procs.id_of(pid).is_some() || self.orphans.by_pid.contains_key(&pid) {
                continue;
            }
            let (key, owner, grace) = match origin(pid) {
                Some((run, key, slot)) if run == run_dir => {
                    let owner = self.instance_at(&key, slot);
                    let grace = self.grace_of(&key).or(gone.map(|g| g.1));
                    (key, owner, grace.unwrap_or(DEFAULT_GRACE))
                }
                _ => match gone {
                    Some((key, grace)) => (key.to_string(), None, grace),
                    // Not ours: only reaped when it exits.
                    None => continue,
                },
            };
            if owner.is_some() {
                info!(
                    Some(&key),
                    Some(pid),
                    "a process of an instance lost its parent: it is stopped once its instance is gone"
                );
            }
            self.orphans.by_pid.insert(
                pid,
                Orphan {
                    key,
                    owner,
                    grace,
                    kill_at: None,
                },
            );
            if owner.is_none() {
                self.stop_orphan(pid);
            }
        }
    }

    /// Instance `id` was reaped: stop what it left behind.
    pub(crate) fn instance_gone(&mut self, id: usize, key: &str, grace: Duration) {
        let owned: Vec<i32> = self
            .orphans
            .by_pid
            .iter()
            .filter(|(_, o)| o.owner == Some(id))
            .map(|(p, _)| *p)
            .collect();
        for pid in owned {
            if let Some(o) = self.orphans.by_pid.get_mut(&pid) {
                o.owner = None;
            }
            self.stop_orphan(pid);
        }
        self.find_orphans(Some((key, grace)));
    }

    /// A child that is not an instance was reaped.
    pub(crate) fn orphan_reaped(&mut self, r: &Reaped) {
        match self.orphans.by_pid.remove(&r.pid) {
            Some(o) => info!(
                Some(&o.key),
                Some(r.pid),
                "reaped a process an instance left behind ({})",
                status(r.status)
            ),
            None => info!(
                None,
                Some(r.pid),
                "reaped a process that was not an instance ({})",
                status(r.status)
            ),
        }
    }

    /// SIGKILLs orphans past their grace; with `now` None, all of them (a
    /// second stop signal).
    pub(crate) fn orphans_overdue(&mut self, now: Option<Instant>) {
        let due: Vec<i32> = self
            .orphans
            .by_pid
            .iter()
            .filter(|(_, o)| match now {
                Some(t) => o.kill_at.is_some_and(|k| k <= t),
                None => true,
            })
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            if let Some(o) = self.orphans.by_pid.get_mut(&pid) {
                o.kill_at = None;
                warning!(
                    Some(&o.key),
                    Some(pid),
                    "unable to stop a process an instance left behind gracefully: sending SIGKILL"
                );
                self.forced |= self.stopping;
                self.spawner.signal(pid, Signal::SIGKILL);
            }
        }
    }

    /// At stop: every orphan whose instance is gone is already stopping;
    /// the others follow their instance.
    fn stop_orphan(&mut self, pid: i32) {
        let Some(o) = self.orphans.by_pid.get_mut(&pid) else {
            return;
        };
        if o.kill_at.is_some() {
            return;
        }
        o.kill_at = Some(Instant::now() + o.grace);
        warning!(
            Some(&o.key),
            Some(pid),
            "an instance left this process behind: stopping it (SIGTERM, SIGKILL after {:.1}s)",
            o.grace.as_secs_f64()
        );
        self.spawner.signal(pid, Signal::SIGTERM);
    }

    /// The running instance of `key` in `slot`, if there is one.
    fn instance_at(&self, key: &str, slot: Option<u32>) -> Option<usize> {
        let slot = slot?;
        self.procs
            .iter()
            .find(|(_, i)| {
                i.slot() == slot
                    && self
                        .services
                        .get(i.service())
                        .is_some_and(|s| s.key() == key)
            })
            .map(|(id, _)| id)
    }

    fn grace_of(&self, key: &str) -> Option<Duration> {
        self.services
            .iter()
            .find(|(_, s)| s.key() == key)
            .map(|(_, s)| s.config.stop_grace)
    }
}

fn status(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(c) => format!("exit {c}"),
        WaitStatus::Signaled(sig) => format!("signal {sig}"),
    }
}

/// `stop-grace` when the orphan's service is no longer configured.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
