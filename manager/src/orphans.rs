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
//!
//! This file keeps the orphans charond tracks and their deadlines
//! ([`Orphans`]) and reads where one comes from; finding them, signalling
//! them and logging is the loop's work, in `runtime/orphans.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sys::WaitStatus;

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

    /// `pid` is tracked.
    pub(crate) fn knows(&self, pid: i32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Tracks a new orphan of service `key`, descending from instance
    /// `owner` while that one runs.
    pub(crate) fn track(&mut self, pid: i32, key: String, owner: Option<usize>, grace: Duration) {
        let o = Orphan {
            key,
            owner,
            grace,
            kill_at: None,
        };
        self.by_pid.insert(pid, o);
    }

    /// Instance `id` is gone: the orphans it owned are on their own now.
    /// Returns their pids, to be stopped.
    pub(crate) fn disown(&mut self, id: usize) -> Vec<i32> {
        let mut pids = Vec::new();
        for (pid, o) in &mut self.by_pid {
            if o.owner == Some(id) {
                o.owner = None;
                pids.push(*pid);
            }
        }
        pids
    }

    /// Starts stopping `pid`: its SIGKILL is due after its grace (the
    /// caller sets that deadline). Returns its key and grace (the caller
    /// sends SIGTERM), or None if it is not tracked or already stopping.
    pub(crate) fn stop(&mut self, pid: i32, now: Instant) -> Option<(&str, Duration)> {
        let o = self.by_pid.get_mut(&pid)?;
        if o.kill_at.is_some() {
            return None;
        }
        o.kill_at = Some(now + o.grace);
        Some((&o.key, o.grace))
    }

    /// `pid`'s SIGKILL, if due at `now` (its grace is over and it is
    /// still there): returns its key. Due only once.
    pub(crate) fn kill_due(&mut self, pid: i32, now: Instant) -> Option<&str> {
        let o = self.by_pid.get_mut(&pid)?;
        if o.kill_at.is_none_or(|k| k > now) {
            return None;
        }
        o.kill_at = None;
        Some(&o.key)
    }

    /// Every orphan, with its key, to be SIGKILLed at once (a second stop
    /// signal); none is due after.
    pub(crate) fn kill_all(&mut self) -> Vec<(i32, String)> {
        let mut all = Vec::new();
        for (pid, o) in &mut self.by_pid {
            o.kill_at = None;
            all.push((*pid, o.key.clone()));
        }
        all
    }

    /// `pid` was reaped: it is no longer tracked. Returns its key if it
    /// was.
    pub(crate) fn reaped(&mut self, pid: i32) -> Option<String> {
        self.by_pid.remove(&pid).map(|o| o.key)
    }
}

/// What an orphan's environment says: (run dir, service key, slot).
pub(crate) fn origin(pid: i32) -> Option<(String, String, Option<u32>)> {
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

/// An exit status as the log says it.
pub(crate) fn status(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(c) => format!("exit {c}"),
        WaitStatus::Signaled(sig) => format!("signal {sig}"),
    }
}

/// `stop-grace` when the orphan's service is no longer configured.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_is_stopped_once_and_killed_once_after_its_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut o = Orphans::default();
        o.track(7, "a.b.0.raw".into(), Some(3), grace);
        o.track(8, "a.b.0.raw".into(), None, grace);
        assert!(o.knows(7) && !o.knows(9));
        // Its instance leaves: only its own orphan is handed back.
        assert_eq!(o.disown(3), [7]);
        assert!(o.disown(3).is_empty());
        assert_eq!(o.stop(7, t0), Some(("a.b.0.raw", grace)));
        assert_eq!(o.stop(7, t0), None);
        assert_eq!(o.stop(9, t0), None);
        // Not stopping yet, or not yet due: no SIGKILL.
        assert_eq!(o.kill_due(8, t0 + grace), None);
        assert_eq!(o.kill_due(7, t0 + grace / 2), None);
        assert_eq!(o.kill_due(7, t0 + grace), Some("a.b.0.raw"));
        assert_eq!(o.kill_due(7, t0 + grace), None);
        assert_eq!(o.kill_due(9, t0 + grace), None);
        // A second stop signal: every one, stopping or not.
        assert_eq!(o.kill_all().len(), 2);
        assert_eq!(o.reaped(7).as_deref(), Some("a.b.0.raw"));
        assert_eq!(o.reaped(7), None);
        assert!(!o.is_empty());
        assert_eq!(o.reaped(8).as_deref(), Some("a.b.0.raw"));
        assert!(o.is_empty());
    }
}
