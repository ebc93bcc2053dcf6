//! The instances alive: a slab keyed by a small id (which also names their
//! mio tokens) plus a pid index. An instance leaves the table only when it
//! is reaped, so a pid in the table is never a reused one and may be
//! signalled. An [`Instance`] keeps its own figures (what it reported, how
//! busy and how long idle its slot said it was) and reads its own pipes;
//! what it should do is decided elsewhere (its life in `instance.rs`,
//! scaling in `calibrate.rs`), and the loop carries that out.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use charon_protocol::scoreboard::{SlotSnapshot, SlotState};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use crate::instance::{self, Actions, Life};
use crate::stderr::LineBuf;

/// One running instance, as the manager tracks it.
pub(crate) struct Instance {
    pid: i32,
    service: usize,
    slot: u32,
    started: Instant,
    stderr: Option<OwnedFd>,
    lines: LineBuf,
    report: Option<OwnedFd>,
    /// Where it is in its life (`instance.rs`): starting, serving,
    /// retiring or stopping, each with its deadline and reason.
    life: Life,
    /// Requests reported served.
    served: u64,
    /// Its slot's request count and busy time at the last tick.
    seen_requests: u64,
    seen_busy_ns: u64,
    idle_since: Instant,
    /// Busy fraction over the last tick.
    busy: f64,
    /// Report messages that could not be decoded.
    bad_reports: u32,
    /// The strongest signal asked for while its pid was unknown (a start
    /// a template has not answered yet), sent once it is known.
    deferred: Option<nix::sys::signal::Signal>,
}

/// Which of an instance's two pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pipe {
    Stderr,
    Report,
}

/// What one read of an instance's stderr brought.
pub(crate) enum StderrRead {
    /// Whole lines (perhaps none); read again.
    Lines(Vec<String>),
    /// Nothing more for now; the unterminated rest if a flush was asked.
    Done(Option<String>),
    /// The pipe closed: its fd (to deregister) and the unterminated rest.
    Closed(OwnedFd, Option<String>),
}

/// What one receive on an instance's report channel brought.
pub(crate) enum ReportRead {
    /// A message of this many bytes; receive again.
    Got(usize),
    /// Nothing more for now.
    Done,
    /// The channel closed: its fd, to deregister.
    Closed(OwnedFd),
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
            deferred: None,
        }
    }

    /// Its pid; 0 while a template has not said it yet.
    pub(crate) const fn pid(&self) -> i32 {
        self.pid
    }

    /// Keeps `sig` for when its pid is known: SIGKILL over SIGTERM over
    /// SIGUSR1.
    pub(crate) fn defer(&mut self, sig: nix::sys::signal::Signal) {
        use nix::sys::signal::Signal::{SIGKILL, SIGTERM};
        let rank = |s: nix::sys::signal::Signal| match s {
            SIGKILL => 2,
            SIGTERM => 1,
            _ => 0,
        };
        if self.deferred.is_none_or(|d| rank(sig) >= rank(d)) {
            self.deferred = Some(sig);
        }
    }

    /// Started again by exec in the same slot after its template could not
    /// start it: a new process, pipes and start-up deadline. Returns the
    /// old pipes, to deregister.
    pub(crate) fn relaunched(
        &mut self,
        pid: i32,
        stderr: OwnedFd,
        report: OwnedFd,
        now: Instant,
        ready_by: Instant,
    ) -> Vec<OwnedFd> {
        let old = [self.stderr.take(), self.report.take()];
        self.pid = pid;
        self.stderr = Some(stderr);
        self.report = Some(report);
        self.started = now;
        self.idle_since = now;
        if matches!(self.life, Life::Starting { .. }) {
            self.life = Life::new(ready_by);
        }
        old.into_iter().flatten().collect()
    }

    /// The generation (a `services.rs` index) it belongs to.
    pub(crate) const fn service(&self) -> usize {
        self.service
    }

    /// Its scoreboard slot.
    pub(crate) const fn slot(&self) -> u32 {
        self.slot
    }

    /// When it was forked.
    pub(crate) const fn started(&self) -> Instant {
        self.started
    }

    /// How long it has run.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Where it is in its life; changed only through [`Instance::on_life`].
    pub(crate) const fn life(&self) -> Life {
        self.life
    }

    /// Feeds an event to its life's automaton (`instance.rs`); the loop
    /// performs the actions.
    pub(crate) fn on_life(&mut self, ev: instance::Event, now: Instant) -> Actions {
        instance::on_event(&mut self.life, ev, now)
    }

    /// Leaving: not counted as capacity any more.
    #[must_use]
    pub(crate) const fn is_leaving(&self) -> bool {
        self.life.is_leaving()
    }

    /// Requests it reported served.
    pub(crate) const fn reported(&self) -> u64 {
        self.served
    }

    /// A batch of `n` request records arrived: it is not idle.
    pub(crate) fn note_served(&mut self, n: u64, now: Instant) {
        self.served += n;
        self.idle_since = now;
    }

    /// A report could not be decoded: true the first time, so that it is
    /// said once per instance.
    pub(crate) fn note_bad_report(&mut self) -> bool {
        self.bad_reports += 1;
        self.bad_reports == 1
    }

    /// The tick read its slot: its busy share over the tick (`tick_ns`
    /// long), and whether it did anything (then it is not idle).
    pub(crate) fn observe(&mut self, snap: &SlotSnapshot, tick_ns: f64, now: Instant) {
        let busy_ns = snap.busy_total_ns.saturating_sub(self.seen_busy_ns);
        self.busy = (busy_ns as f64 / tick_ns).clamp(0.0, 1.0);
        self.seen_busy_ns = snap.busy_total_ns;
        if snap.requests != self.seen_requests || snap.state == Some(SlotState::Busy) {
            self.seen_requests = snap.requests;
            self.idle_since = now;
        }
    }

    /// Its busy share over the last tick.
    pub(crate) const fn busy(&self) -> f64 {
        self.busy
    }

    /// How long it has done nothing.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.idle_since)
    }

    /// Its last non-empty stderr line (for exit reasons).
    pub(crate) fn last_stderr(&self) -> &str {
        self.lines.last()
    }

    /// Its open pipes, to register with the poll or deregister.
    pub(crate) fn pipes(&self) -> impl Iterator<Item = (&OwnedFd, Pipe)> {
        let stderr = self.stderr.as_ref().map(|fd| (fd, Pipe::Stderr));
        let report = self.report.as_ref().map(|fd| (fd, Pipe::Report));
        stderr.into_iter().chain(report)
    }

    /// Reads its stderr once into `buf`. With `flush`, once nothing more
    /// is there, an unterminated rest is a line too: after its exit a
    /// grandchild may keep the pipe open.
    pub(crate) fn read_stderr(&mut self, buf: &mut [u8], flush: bool) -> StderrRead {
        let Some(fd) = &self.stderr else {
            return StderrRead::Done(None);
        };
        match nix::unistd::read(fd, buf) {
            Ok(0) => match self.stderr.take() {
                Some(fd) => StderrRead::Closed(fd, self.lines.finish()),
                None => StderrRead::Done(None),
            },
            Ok(n) => StderrRead::Lines(self.lines.push(&buf[..n])),
            Err(Errno::EINTR) => StderrRead::Lines(Vec::new()),
            // EAGAIN: nothing more now.
            Err(_) => StderrRead::Done(if flush { self.lines.finish() } else { None }),
        }
    }

    /// Receives one report message into `buf`.
    pub(crate) fn recv_report(&mut self, buf: &mut [u8]) -> ReportRead {
        loop {
            let Some(fd) = &self.report else {
                return ReportRead::Done;
            };
            return match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => self
                    .report
                    .take()
                    .map_or(ReportRead::Done, ReportRead::Closed),
                Ok(n) => ReportRead::Got(n),
                Err(Errno::EINTR) => continue,
                Err(_) => ReportRead::Done,
            };
        }
    }

    /// Test rigs age an instance's idleness without waiting.
    #[cfg(test)]
    pub(crate) fn set_idle_since(&mut self, at: Instant) {
        self.idle_since = at;
    }

    /// Reports that could not be decoded (for tests).
    #[cfg(test)]
    pub(crate) const fn bad_reports(&self) -> u32 {
        self.bad_reports
    }
}

/// The table.
#[derive(Default)]
pub(crate) struct ProcessTable {
    slab: Vec<Option<Instance>>,
    by_pid: HashMap<i32, usize>,
}

impl ProcessTable {
    /// Adds an instance, returning its id; a pid of 0 (not known yet) is
    /// indexed once [`ProcessTable::set_pid`] gives it.
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
        if pid != 0 {
            self.by_pid.insert(pid, id);
        }
        id
    }

    /// An instance started by a template has this pid (it was 0). Returns
    /// the signal deferred until then, if any.
    pub(crate) fn set_pid(&mut self, id: usize, pid: i32) -> Option<nix::sys::signal::Signal> {
        let inst = self.slab.get_mut(id)?.as_mut()?;
        debug_assert!(!self.by_pid.contains_key(&pid), "pid in table twice");
        if inst.pid != 0 {
            self.by_pid.remove(&inst.pid);
        }
        inst.pid = pid;
        self.by_pid.insert(pid, id);
        inst.deferred.take()
    }

    /// Removes the instance with this pid (it was reaped).
    pub(crate) fn remove_pid(&mut self, pid: i32) -> Option<(usize, Instance)> {
        let id = self.by_pid.remove(&pid)?;
        let inst = self.slab.get_mut(id)?.take()?;
        debug_assert_eq!(inst.pid, pid);
        Some((id, inst))
    }

    /// Removes instance `id`, whose process never ran (a start its
    /// template did not answer, and exec could not redo).
    pub(crate) fn remove_id(&mut self, id: usize) -> Option<Instance> {
        let inst = self.slab.get_mut(id)?.take()?;
        if inst.pid != 0 {
            self.by_pid.remove(&inst.pid);
        }
        Some(inst)
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

    /// The instances of generation `s`.
    pub(crate) fn of(&self, s: usize) -> impl Iterator<Item = (usize, &Instance)> {
        self.iter().filter(move |(_, i)| i.service == s)
    }

    /// The ids of generation `s`'s instances, to act on each; with
    /// `leaving` false, only those that are still capacity.
    pub(crate) fn ids_of(&self, s: usize, leaving: bool) -> Vec<usize> {
        self.of(s)
            .filter(|(_, i)| leaving || !i.is_leaving())
            .map(|(id, _)| id)
            .collect()
    }

    /// How many of generation `s`'s instances are capacity (not being
    /// stopped or replaced).
    pub(crate) fn capacity(&self, s: usize) -> u32 {
        self.of(s).filter(|(_, i)| !i.is_leaving()).count() as u32
    }

    pub(crate) fn len(&self) -> usize {
        self.iter().count()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::state::KillReason;

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
        assert_eq!(t.get(0).map(Instance::pid), Some(12));
    }

    #[test]
    fn a_generations_instances_and_its_capacity() {
        let mut t = ProcessTable::default();
        let a = t.insert(inst(10, 0));
        let b = t.insert(inst(11, 1));
        let c = t.insert(inst(12, 0));
        let now = Instant::now();
        if let Some(i) = t.get_mut(c) {
            i.on_life(instance::Event::Kill(KillReason::Excess), now);
        }
        assert_eq!(t.ids_of(0, true), [a, c]);
        assert_eq!(t.ids_of(0, false), [a], "a leaving instance is no capacity");
        assert_eq!((t.capacity(0), t.capacity(1), t.capacity(2)), (1, 1, 0));
        assert_eq!(t.of(1).map(|(id, _)| id).collect::<Vec<_>>(), [b]);
    }

    #[test]
    fn a_tick_that_saw_work_resets_idleness_and_measures_the_busy_share() {
        let t0 = Instant::now();
        let mut i = Instance::new(10, 0, 0, t0, t0, None, None);
        let tick = Duration::from_secs(1);
        let mut snap = SlotSnapshot {
            state: Some(SlotState::Idle),
            pid: 10,
            attempt: 0,
            requests: 0,
            busy_since_ns: 0,
            busy_total_ns: 250_000_000,
            request_bytes: 0,
            client: String::new(),
        };
        i.observe(&snap, tick.as_nanos() as f64, t0 + tick);
        assert_eq!(i.busy(), 0.25);
        assert!(
            i.idle_for(t0 + tick) >= tick,
            "nothing completed: still idle"
        );
        snap.requests = 1;
        i.observe(&snap, tick.as_nanos() as f64, t0 + tick * 2);
        assert_eq!(i.busy(), 0.0, "no busy time since the last tick");
        assert_eq!(i.idle_for(t0 + tick * 2), Duration::ZERO);
        i.note_served(3, t0 + tick * 3);
        assert_eq!(
            (i.reported(), i.idle_for(t0 + tick * 3)),
            (3, Duration::ZERO)
        );
    }

    #[test]
    fn a_bad_report_is_news_once() {
        let mut i = inst(10, 0);
        assert!(i.note_bad_report());
        assert!(!i.note_bad_report());
    }

    #[test]
    fn stderr_is_read_into_lines_and_its_rest_flushed_at_the_end() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let now = Instant::now();
        let mut i = Instance::new(10, 0, 0, now, now, Some(r), None);
        assert_eq!(
            i.pipes().map(|(_, p)| p).collect::<Vec<_>>(),
            [Pipe::Stderr]
        );
        nix::unistd::write(&w, b"one\ntwo").unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(i.read_stderr(&mut buf, false), StderrRead::Lines(l) if l == ["one"]));
        drop(w);
        assert!(matches!(
            i.read_stderr(&mut buf, false),
            StderrRead::Closed(_, Some(rest)) if rest == "two"
        ));
        assert_eq!(i.last_stderr(), "two");
        assert_eq!(i.pipes().count(), 0, "a closed pipe is gone");
        assert!(matches!(
            i.read_stderr(&mut buf, true),
            StderrRead::Done(None)
        ));
    }
}
