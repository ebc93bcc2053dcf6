//! The templates of the service generations that have one (`template =
//! true`): a slab keyed by a small id (which also names their mio tokens
//! and timer), each with its automaton's phase (`template.rs`), its
//! process, its stderr pipe and control channel, and the starts it was
//! sent and has not answered yet, in order. A template outlives its
//! generation until it is reaped. What to do with one is decided by its
//! automaton, and carried out by the loop (`runtime/template.rs`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use crate::process_table::StderrRead;
use crate::service::transition::StartWhy;
use crate::stderr::LineBuf;
use crate::sys::Reaped;
use crate::template::{self, Actions, Event, Phase};

/// One generation's template.
pub(crate) struct Template {
    /// Its generation (a `services.rs` index); None once that is freed.
    service: Option<usize>,
    phase: Phase,
    /// Its process; 0 when none runs.
    pid: i32,
    stderr: Option<OwnedFd>,
    lines: LineBuf,
    control: Option<OwnedFd>,
    /// The starts sent and not answered, oldest first.
    pending: VecDeque<Pending>,
    /// When its process started.
    since: Option<Instant>,
}

/// A start sent to a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The instance (`process_table.rs`) waiting for its pid.
    pub id: usize,
    /// Why it is started, and its request limit (for the log).
    pub why: StartWhy,
    pub limit: u64,
}

/// What one receive on a template's control channel brought.
pub(crate) enum ControlRead {
    /// A message of this many bytes; receive again.
    Got(usize),
    /// Nothing more for now.
    Done,
    /// The channel closed: its fd, to deregister.
    Closed(OwnedFd),
}

impl Template {
    pub(crate) const fn service(&self) -> Option<usize> {
        self.service
    }

    pub(crate) const fn phase(&self) -> Phase {
        self.phase
    }

    /// Its process, if one runs.
    pub(crate) const fn pid(&self) -> Option<i32> {
        if self.pid > 0 {
            Some(self.pid)
        } else {
            None
        }
    }

    /// Feeds an event to its automaton; the loop performs the actions.
    pub(crate) fn on_event(&mut self, ev: Event, now: Instant) -> Actions {
        template::on_event(&mut self.phase, ev, now)
    }

    /// Its process started.
    pub(crate) fn started(&mut self, pid: i32, stderr: OwnedFd, control: OwnedFd) {
        self.since = Some(Instant::now());
        self.pid = pid;
        self.stderr = Some(stderr);
        self.control = Some(control);
        self.lines = LineBuf::default();
    }

    /// Its process was reaped: its pid must not be signalled any more.
    pub(crate) fn reaped(&mut self) {
        self.pid = 0;
    }

    /// Its fds, read to the end once it is reaped: to deregister and close.
    pub(crate) fn take_fds(&mut self) -> Vec<OwnedFd> {
        [self.stderr.take(), self.control.take()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// When its process started, if one runs.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since.filter(|_| self.pid > 0)
    }

    /// Its control channel, while it is READY and open.
    pub(crate) fn ready_channel(&self) -> Option<&OwnedFd> {
        self.control.as_ref().filter(|_| self.phase.is_ready())
    }

    /// A start was sent.
    pub(crate) fn sent(&mut self, p: Pending) {
        self.pending.push_back(p);
    }

    /// The oldest start not answered yet, now answered.
    pub(crate) fn answered(&mut self) -> Option<Pending> {
        self.pending.pop_front()
    }

    /// Every start not answered (it will not answer them now).
    pub(crate) fn take_pending(&mut self) -> Vec<Pending> {
        self.pending.drain(..).collect()
    }

    /// Starts sent and not answered.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether instance `id` waits for this template's answer.
    pub(crate) fn is_pending(&self, id: usize) -> bool {
        self.pending.iter().any(|p| p.id == id)
    }

    /// Reads its stderr once into `buf`, as an instance's
    /// (`process_table.rs`).
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
            Err(_) => StderrRead::Done(if flush { self.lines.finish() } else { None }),
        }
    }

    /// Receives one message from its control channel into `buf`.
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> ControlRead {
        loop {
            let Some(fd) = &self.control else {
                return ControlRead::Done;
            };
            return match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => self
                    .control
                    .take()
                    .map_or(ControlRead::Done, ControlRead::Closed),
                Ok(n) => ControlRead::Got(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => ControlRead::Done,
                Err(_) => self
                    .control
                    .take()
                    .map_or(ControlRead::Done, ControlRead::Closed),
            };
        }
    }
}

/// Every template, and the reaps that came before their STARTED.
#[derive(Default)]
pub(crate) struct Templates {
    slab: Vec<Option<Template>>,
    /// Children reaped while starts were unanswered, by pid: each may be
    /// an instance whose STARTED is still on its way.
    unclaimed: HashMap<i32, Reaped>,
}

impl Templates {
    /// A template for generation `s`, due to start at `now`. Returns its id.
    pub(crate) fn create(&mut self, s: usize, now: Instant) -> usize {
        let t = Template {
            service: Some(s),
            phase: Phase::new(now),
            pid: 0,
            stderr: None,
            lines: LineBuf::default(),
            control: None,
            pending: VecDeque::new(),
            since: None,
        };
        match self.slab.iter().position(Option::is_none) {
            Some(i) => {
                self.slab[i] = Some(t);
                i
            }
            None => {
                self.slab.push(Some(t));
                self.slab.len() - 1
            }
        }
    }

    pub(crate) fn get(&self, id: usize) -> Option<&Template> {
        self.slab.get(id).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: usize) -> Option<&mut Template> {
        self.slab.get_mut(id).and_then(Option::as_mut)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Template)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(id, t)| t.as_ref().map(|t| (id, t)))
    }

    /// The template of generation `s`.
    pub(crate) fn of_service(&self, s: usize) -> Option<usize> {
        self.iter()
            .find(|(_, t)| t.service == Some(s))
            .map(|(id, _)| id)
    }

    /// The template whose process is `pid`.
    pub(crate) fn by_pid(&self, pid: i32) -> Option<usize> {
        self.iter()
            .find(|(_, t)| t.pid == pid && pid > 0)
            .map(|(id, _)| id)
    }

    /// The template instance `id` waits on, if any.
    pub(crate) fn pending_on(&self, id: usize) -> Option<usize> {
        self.iter()
            .find(|(_, t)| t.is_pending(id))
            .map(|(tid, _)| tid)
    }

    /// Some start is not answered yet: a child reaped now may be one of
    /// its, and a child not in the process table may be an instance.
    pub(crate) fn any_pending(&self) -> bool {
        self.iter().any(|(_, t)| t.has_pending())
    }

    /// Its generation is freed: the template lives on until reaped, and is
    /// dropped now if nothing runs.
    pub(crate) fn detach(&mut self, id: usize) {
        let done = match self.get_mut(id) {
            Some(t) => {
                t.service = None;
                t.pid == 0
            }
            None => false,
        };
        if done {
            self.slab[id] = None;
        }
    }

    /// Drops a detached template once its process is reaped.
    pub(crate) fn drop_if_done(&mut self, id: usize) {
        if self
            .get(id)
            .is_some_and(|t| t.service.is_none() && t.pid == 0)
        {
            self.slab[id] = None;
        }
    }

    /// Keeps a reap until a STARTED names its pid.
    pub(crate) fn keep_reaped(&mut self, r: Reaped) {
        self.unclaimed.insert(r.pid, r);
    }

    /// The kept reap of `pid`, if any.
    pub(crate) fn claim_reaped(&mut self, pid: i32) -> Option<Reaped> {
        self.unclaimed.remove(&pid)
    }

    /// Once no start is unanswered, the kept reaps were not instances'.
    pub(crate) fn unclaimed_for_good(&mut self) -> Vec<Reaped> {
        if self.any_pending() {
            return Vec::new();
        }
        self.unclaimed.drain().map(|(_, r)| r).collect()
    }

    /// No template process runs.
    pub(crate) fn none_running(&self) -> bool {
        self.iter().all(|(_, t)| t.pid == 0)
    }
}
