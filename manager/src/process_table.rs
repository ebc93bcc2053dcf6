//! The instances alive: a slab keyed by a small id (which also names their
//! mio tokens) plus a pid index. An instance leaves the table only when it
//! is reaped, so a pid in the table is never a reused one and may be
//! signalled. What an instance does is decided elsewhere.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::instance::Life;
use crate::stderr::LineBuf;

/// One running instance, as the manager tracks it.
pub(crate) struct Instance {
    pub pid: i32,
    pub service: usize,
    pub slot: u32,
    pub started: Instant,
    pub stderr: Option<OwnedFd>,
    pub lines: LineBuf,
    pub report: Option<OwnedFd>,
    /// Where it is in its life (`instance.rs`): starting, serving,
    /// retiring or stopping, each with its deadline and reason.
    pub life: Life,
    /// Requests reported served.
    pub served: u64,
    pub seen_requests: u64,
    pub seen_busy_ns: u64,
    pub idle_since: Instant,
    /// Busy fraction over the last tick.
    pub busy: f64,
    /// Report messages that could not be decoded.
    pub bad_reports: u32,
}

impl Instance {
    /// A just-started instance: nothing served, nothing asked of it yet;
    /// killed if not ready by `ready_by`.
    pub(crate) fn new(
        pid: i32,
        service: usize,
        slot: u32,
        now: Instant,
        ready_by: Instant,
        stderr: Option<OwnedFd>,
        report: Option<OwnedFd>,
    ) -> Instance {
        Instance {
            pid,
            service,
            slot,
            started: now,
            stderr,
            lines: LineBuf::default(),
            report,
            life: Life::new(ready_by),
            served: 0,
            seen_requests: 0,
            seen_busy_ns: 0,
            idle_since: now,
            busy: 0.0,
            bad_reports: 0,
        }
    }

    /// Leaving: not counted as capacity any more.
    #[must_use]
    pub(crate) const fn is_leaving(&self) -> bool {
        self.life.is_leaving()
    }
}

/// The table.
#[derive(Default)]
pub(crate) struct ProcessTable {
    slab: Vec<Option<Instance>>,
    by_pid: HashMap<i32, usize>,
}

impl ProcessTable {
    /// Adds an instance, returning its id.
    pub(crate) fn insert(&mut self, inst: Instance) -> usize {
        debug_assert!(!self.by_pid.contains_key(&inst.pid), "pid in table twice");
        let pid = inst.pid;
        let id = match self.slab.iter().position(Option::is_none) {
            Some(i) => {
                self.slab[i] = Some(inst);
                i
            }
            None => {
                self.slab.push(Some(inst));
                self.slab.len() - 1
            }
        };
        self.by_pid.insert(pid, id);
        id
    }

    /// Removes the instance with this pid (it was reaped).
    pub(crate) fn remove_pid(&mut self, pid: i32) -> Option<(usize, Instance)> {
        let id = self.by_pid.remove(&pid)?;
        let inst = self.slab.get_mut(id)?.take()?;
        debug_assert_eq!(inst.pid, pid);
        Some((id, inst))
    }

    /// The id of the instance with this pid.
    pub(crate) fn id_of(&self, pid: i32) -> Option<usize> {
        self.by_pid.get(&pid).copied()
    }

    pub(crate) fn get(&self, id: usize) -> Option<&Instance> {
        self.slab.get(id).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: usize) -> Option<&mut Instance> {
        self.slab.get_mut(id).and_then(Option::as_mut)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Instance)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(id, i)| i.as_ref().map(|i| (id, i)))
    }

    pub(crate) fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(pid: i32, service: usize) -> Instance {
        let now = Instant::now();
        Instance::new(pid, service, 0, now, now, None, None)
    }

    #[test]
    fn ids_are_reused_and_pids_indexed() {
        let mut t = ProcessTable::default();
        let a = t.insert(inst(10, 0));
        let b = t.insert(inst(11, 1));
        assert_eq!((a, b), (0, 1));
        assert!(t.remove_pid(10).is_some());
        assert!(t.remove_pid(10).is_none());
        assert_eq!(t.insert(inst(12, 0)), 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(0).map(|i| i.pid), Some(12));
    }
}
