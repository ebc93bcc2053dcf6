//! The loop's work on the processes instances leave behind (`orphans.rs`
//! keeps them and their deadlines): look for them among charond's
//! children when an instance is reaped and on each tick, tell whose they
//! are, SIGTERM them once their instance is gone, SIGKILL them after
//! their service's `stop-grace`, and log their reaping.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Manager;
use crate::log::{info, warning};
use crate::orphans::{origin, status, DEFAULT_GRACE};
use crate::sys::Reaped;
use crate::timers::Timer;

impl Manager {
    /// Looks for children that are not instances. `gone` is the service key
    /// and `stop-grace` of an instance just reaped: a child whose
    /// environment says nothing is taken as its descendant.
    pub(crate) fn find_orphans(&mut self, gone: Option<(&str, Duration)>) {
        // A child forked by a template is an instance whose pid is not
        // known yet: look again once every start is answered.
        if self.templates.any_pending() {
            return;
        }
        let run_dir = self.paths.run_dir.to_string_lossy().into_owned();
        for pid in self.spawner.children() {
            if self.procs.id_of(pid).is_some() || self.orphans.knows(pid) || self.is_template(pid) {
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
            self.orphans.track(pid, key, owner, grace);
            if owner.is_none() {
                self.stop_orphan(pid);
            }
        }
    }

    /// Instance `id` was reaped: stop what it left behind.
    pub(crate) fn instance_gone(&mut self, id: usize, key: &str, grace: Duration) {
        for pid in self.orphans.disown(id) {
            self.stop_orphan(pid);
        }
        self.find_orphans(Some((key, grace)));
    }

    /// A child that is not an instance was reaped.
    pub(crate) fn orphan_reaped(&mut self, r: &Reaped) {
        self.timers.set(Timer::Orphan(r.pid), None);
        match self.orphans.reaped(r.pid) {
            Some(key) => info!(
                Some(&key),
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

    /// An orphan's grace is over: SIGKILL it if it is still there.
    pub(crate) fn orphan_due(&mut self, pid: i32, now: Instant) {
        if let Some(key) = self.orphans.kill_due(pid, now) {
            warning!(
                Some(key),
                Some(pid),
                "unable to stop a process an instance left behind gracefully: sending SIGKILL"
            );
            self.forced |= self.stopping;
            self.spawner.signal(pid, Signal::SIGKILL);
        }
    }

    /// A second stop signal: SIGKILL every orphan now.
    pub(crate) fn orphans_kill_all(&mut self) {
        for (pid, key) in self.orphans.kill_all() {
            self.timers.set(Timer::Orphan(pid), None);
            warning!(
                Some(&key),
                Some(pid),
                "unable to stop a process an instance left behind gracefully: sending SIGKILL"
            );
            self.forced |= self.stopping;
            self.spawner.signal(pid, Signal::SIGKILL);
        }
    }

    /// At stop: every orphan whose instance is gone is already stopping;
    /// the others follow their instance.
    fn stop_orphan(&mut self, pid: i32) {
        let now = Instant::now();
        let Some((key, grace)) = self.orphans.stop(pid, now) else {
            return;
        };
        self.timers.set(Timer::Orphan(pid), Some(now + grace));
        warning!(
            Some(key),
            Some(pid),
            "an instance left this process behind: stopping it (SIGTERM, SIGKILL after {:.1}s)",
            grace.as_secs_f64()
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
            .map(|(_, s)| s.config().stop_grace)
    }
}
