//! The loop's work on single instances: launch one into a free scoreboard
//! slot, read its stderr and reports, signal its process group, and reap it
//! (classify the exit, count it, free its slot, tell the automaton). Which
//! instances to start or stop is decided by the transitions and
//! `calibrate.rs`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use charon_protocol::report::{self, Message, MAX_MESSAGE_LEN};
use charon_protocol::scoreboard::SlotState;
use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::signal::Signal;

use super::Manager;
use crate::generation::Gen;
use crate::instance::{self, Action, Life, Reached, Replacement};
use crate::log::{info, warning, Level};
use crate::process_table::{Instance, Pipe, ReportRead, StderrRead};
use crate::service::state::{ExitClass, KillReason, Mode};
use crate::service::transition::{Event, StartWhy};
use crate::spawn::{Launch, Spawned};
use crate::sys::{self, WaitStatus};
use crate::timers::Timer;
use crate::tokens::{token, Owner};

impl Manager {
    /// Launches one instance of service `s`. Returns its id, or None (the
    /// failure is logged and counted, and fed back as a launch failure).
    pub(crate) fn spawn_one(&mut self, s: usize, why: StartWhy) -> Option<usize> {
        // Before the fork: the new instance may accept a connection before
        // this loop runs again (charond preempted after the fork), and a
        // saturation hint it would send must not be lost to a stale flag.
        self.publish_hints(s, self.live_count(s) + 1);
        if let Some(id) = self.start_via_template(s, why) {
            self.update_hints(s);
            return Some(id);
        }
        let limit = self.request_limit(s);
        let svc = &mut self.services[s];
        let key = svc.config().key.as_str().to_string();
        let Some(slot) = svc.prepare_slot(limit) else {
            warning!(
                Some(&key),
                None,
                "unable to start an instance: all {} scoreboard slots in use",
                svc.slot_count()
            );
            return None;
        };
        let launch = Launch {
            config: svc.config(),
            config_dir: &self.paths.config_dir,
            run_dir: &self.paths.run_dir,
            slot,
            listen: svc.listen(),
            scoreboard: svc.board_fd(),
            devnull: &self.devnull,
            template: false,
        };
        let spawned = match self.spawner.spawn(&launch) {
            Ok(sp) => sp,
            Err(e) => {
                svc.slot_unused(slot);
                self.launch_failed(s, &key, &e);
                self.update_hints(s);
                return None;
            }
        };
        let pid = spawned.pid;
        let id = self.track_launched(s, slot, spawned);
        info!(
            Some(&key),
            Some(pid),
            "started (slot {slot}, {}, request limit {limit})",
            why.name()
        );
        self.update_hints(s);
        Some(id)
    }

    /// A launch of service `s` failed: a starved resource stops launches
    /// for a while; anything else is logged, counted and fed back to the
    /// service as a young exit.
    pub(super) fn launch_failed(&mut self, s: usize, key: &str, e: &std::io::Error) {
        if let Some(problem) = crate::starved::resource_failure(e) {
            self.starved(s, problem);
            return;
        }
        warning!(Some(key), None, "unable to start an instance: {e}");
        let svc = &mut self.services[s];
        svc.count_launch_failure(&e.to_string());
        if matches!(svc.gen(), Gen::Pending { .. }) {
            self.timers.set(Timer::Generation(s), Some(Instant::now()));
        }
        let remaining = self.live_count(s);
        self.events.push_back((
            s,
            Event::Exited {
                class: ExitClass::LaunchFailure(17),
                remaining,
                young: true,
            },
        ));
    }

    /// Records a launched instance of service `s` in `slot`: its process
    /// table entry, its start-up deadline and its pipes in the poll.
    /// Returns its id.
    pub(super) fn track_launched(&mut self, s: usize, slot: u32, spawned: Spawned) -> usize {
        let svc = &mut self.services[s];
        svc.launched(slot, spawned.pid);
        let now = Instant::now();
        let ready_by = now + svc.config().startup_timeout;
        let id = self.procs.insert(Instance::new(
            spawned.pid,
            s,
            slot,
            now,
            ready_by,
            Some(spawned.stderr),
            Some(spawned.report),
        ));
        self.timers.set(Timer::Instance(id), Some(ready_by));
        self.register_instance(id);
        self.fed(s);
        id
    }

    /// Starts `count` replacements of dead instances as fast as the fork
    /// pacer allows; the rest are started by [`Manager::replace_owed`] at
    /// the pacer's next token.
    pub(crate) fn replace(&mut self, s: usize, count: u32) {
        for _ in 0..count {
            let now = Instant::now();
            let svc = &mut self.services[s];
            if let Err(at) = svc.pace_fork(now) {
                self.timers.set_earlier(Timer::Pace(s), at);
                info!(
                    Some(svc.key()),
                    None,
                    "replacement paced: the next may start in {}ms",
                    at.saturating_duration_since(now).as_millis()
                );
                return;
            }
            self.spawn_one(s, StartWhy::Replace);
        }
    }

    /// The pacer's deadline: starts what is still owed (the minimum may
    /// have been met meanwhile, or the service stopped).
    pub(crate) fn replace_owed(&mut self, s: usize) {
        let svc = &self.services[s];
        if self.stopping || svc.mode() != Mode::Running {
            return;
        }
        let owed = svc.wanted().saturating_sub(self.planned_count(s));
        self.replace(s, owed);
    }

    pub(super) fn register_instance(&mut self, id: usize) {
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let reg = self.poll.registry();
        for (fd, pipe) in inst.pipes() {
            let o = match pipe {
                Pipe::Stderr => Owner::Stderr(id),
                Pipe::Report => Owner::Report(id),
            };
            if let Err(e) =
                reg.register(&mut SourceFd(&fd.as_raw_fd()), token(o), Interest::READABLE)
            {
                warning!(None, Some(inst.pid()), "unable to watch instance fd: {e}");
            }
        }
    }

    pub(super) fn unregister(&self, fd: &OwnedFd) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()));
    }

    /// `maximum-requests` minus a random share of up to the jitter percent,
    /// so that instances started together do not retire together.
    pub(super) fn request_limit(&mut self, s: usize) -> u64 {
        let c = self.services[s].config();
        self.jitter
            .limit(c.maximum_requests, u64::from(c.maximum_requests_jitter))
    }

    /// Instances of `s` that are capacity (not being stopped or replaced).
    pub(crate) fn live_count(&self, s: usize) -> u32 {
        self.procs.capacity(s)
    }

    /// Sets `want_hints` while more instances may be started.
    pub(crate) fn update_hints(&self, s: usize) {
        self.publish_hints(s, self.live_count(s));
    }

    /// Sets `want_hints` while more than `live` instances may run.
    fn publish_hints(&self, s: usize, live: u32) {
        let svc = &self.services[s];
        let want = matches!(svc.mode(), Mode::Running) && live < svc.config().maximum_processes;
        svc.set_want_hints(want);
    }

    /// Signals an instance and its process group. Only instances in the
    /// table, i.e. not yet reaped, can be named, so the pid cannot have been
    /// reused.
    pub(crate) fn signal(&mut self, id: usize, sig: Signal) {
        match self.procs.get_mut(id) {
            // Its template has not said its pid yet: sent once it has.
            Some(inst) if inst.pid() == 0 => inst.defer(sig),
            Some(inst) => {
                let pid = inst.pid();
                self.spawner.signal(pid, sig);
            }
            None => {}
        }
    }

    /// Feeds an event to an instance's automaton (`instance.rs`) and
    /// performs what it returns: signals and log lines.
    pub(crate) fn life_event(&mut self, id: usize, ev: instance::Event) -> bool {
        let now = Instant::now();
        let Some(inst) = self.procs.get_mut(id) else {
            return false;
        };
        let actions = inst.on_life(ev, now);
        let (pid, s) = (inst.pid(), inst.service());
        self.timers.set(Timer::Instance(id), inst.life().deadline());
        let acted = !actions.is_empty();
        for a in actions {
            let key = self.services[s].key();
            match a {
                Action::Sigterm => self.signal(id, Signal::SIGTERM),
                Action::Sigusr1 => self.signal(id, charon_protocol::managed::DRAIN_SIGNAL),
                Action::Sigkill => self.signal(id, Signal::SIGKILL),
                Action::WarnNotReady => warning!(
                    Some(key),
                    Some(pid),
                    "unable to get instance ready: not ready within startup-timeout {}s; killing it (a young failure: it counts toward backoff)",
                    self.services[s].config().startup_timeout.as_secs_f64()
                ),
                Action::WarnGraceOver => {
                    self.forced |= self.stopping;
                    warning!(Some(key), Some(pid), "unable to stop instance gracefully: still running after stop-grace; sending SIGKILL");
                }
                Action::Impossible(what) => warning!(
                    Some(key),
                    Some(pid),
                    "unable to follow the instance's life: {what} (can't happen; ignored)"
                ),
            }
        }
        acted
    }

    /// Asks an instance to finish its request and exit (SIGTERM), counting
    /// its exit under `reason`; SIGKILL follows after `stop-grace`.
    pub(crate) fn stop_instance(&mut self, id: usize, reason: KillReason) {
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let (pid, s) = (inst.pid(), inst.service());
        let grace = self.services[s].config().stop_grace;
        if self.life_event(id, instance::Event::Stop { reason, grace }) {
            info!(
                Some(self.services[s].key()),
                Some(pid),
                "stopping ({})",
                reason.name()
            );
        }
        self.update_hints(s);
    }

    /// SIGKILLs an instance at once.
    pub(crate) fn kill_instance(&mut self, id: usize, reason: KillReason) {
        self.life_event(id, instance::Event::Kill(reason));
    }

    /// An instance's deadline has come: its start-up deadline (ready by
    /// now, or killed as not ready) or its stop's grace period (SIGKILL).
    pub(crate) fn check_life(&mut self, id: usize, now: Instant) {
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        if inst.life().deadline().is_none_or(|t| t > now) {
            // Not due after all (moved meanwhile): keep it set.
            let at = inst.life().deadline();
            self.timers.set(Timer::Instance(id), at);
            return;
        }
        match inst.life() {
            Life::Starting { .. } => {
                let unanswered = inst.pid() == 0;
                // Ready, or its template did not answer its start in time
                // (the template is killed and the start redone by exec).
                let handled =
                    self.note_ready(id, now) || (unanswered && self.start_unanswered(id, now));
                if !handled {
                    self.life_event(id, instance::Event::StartupOver);
                }
            }
            _ => {
                self.life_event(id, instance::Event::GraceOver);
            }
        }
    }

    /// Looks whether a starting instance has become ready (its slot left
    /// *starting*); if so its start-up deadline goes, and the service
    /// learns how long its instances take to come up. True if it is ready
    /// (or was already).
    pub(crate) fn note_ready(&mut self, id: usize, now: Instant) -> bool {
        let Some(inst) = self.procs.get(id) else {
            return false;
        };
        if !matches!(inst.life(), Life::Starting { .. }) {
            return true;
        }
        let (s, slot, started) = (inst.service(), inst.slot(), inst.started());
        let svc = &mut self.services[s];
        let ready = svc
            .slot_state(slot)
            .is_some_and(|st| st != SlotState::Starting);
        if ready {
            svc.seen_ready(now.saturating_duration_since(started));
            self.life_event(id, instance::Event::Ready);
        }
        ready
    }

    /// Reads an instance's stderr into whole log lines; with
    /// `final_drain` (after its exit) an unterminated rest too.
    pub(crate) fn read_stderr(&mut self, id: usize, final_drain: bool) {
        let mut buf = [0u8; 8192];
        let now = Instant::now();
        loop {
            let Some(inst) = self.procs.get_mut(id) else {
                return;
            };
            let (pid, s) = (inst.pid(), inst.service());
            let rest = match inst.read_stderr(&mut buf, final_drain) {
                StderrRead::Lines(lines) => {
                    for l in lines {
                        self.log_line(s, pid, &l, now);
                    }
                    continue;
                }
                StderrRead::Done(rest) => rest,
                StderrRead::Closed(fd, rest) => {
                    self.unregister(&fd);
                    rest
                }
            };
            if let Some(line) = rest {
                self.log_line(s, pid, &line, now);
            }
            return;
        }
    }

    fn log_line(&mut self, s: usize, pid: i32, line: &str, now: Instant) {
        let svc = &mut self.services[s];
        if svc.admit_stderr(now) {
            info!(Some(svc.config().key.as_str()), Some(pid), "stderr: {line}");
        }
    }

    /// Reads report messages until none is left.
    pub(crate) fn read_reports(&mut self, id: usize) {
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        loop {
            let Some(inst) = self.procs.get_mut(id) else {
                return;
            };
            let n = match inst.recv_report(&mut buf) {
                ReportRead::Got(n) => n,
                ReportRead::Done => return,
                ReportRead::Closed(fd) => {
                    self.unregister(&fd);
                    return;
                }
            };
            let (pid, s) = (inst.pid(), inst.service());
            match report::decode(&buf[..n]) {
                Ok(Message::Records(recs)) => {
                    inst.note_served(recs.len() as u64, Instant::now());
                    let started = inst.started();
                    self.services[s].count_records(&recs);
                    self.check_trial(s, started);
                }
                Ok(Message::Saturated) => self.on_saturated(s),
                Ok(Message::Retiring) => {
                    let age = inst.age(Instant::now());
                    let svc = &mut self.services[s];
                    if let Some(snap) = svc.slot_snapshot(inst.slot()) {
                        svc.seen_rate(snap.requests, age);
                    }
                    self.retire(id, KillReason::MaxRequests);
                }
                Err(e) => {
                    // Untrusted bytes: say so once per instance, not per message.
                    let first = self
                        .procs
                        .get_mut(id)
                        .is_some_and(Instance::note_bad_report);
                    if first {
                        warning!(
                            Some(self.services[s].key()),
                            Some(pid),
                            "unable to decode report: {e} (further bad reports from this instance are ignored silently)"
                        );
                    }
                }
            }
        }
    }

    /// SIGCHLD: reap every exited child.
    pub(crate) fn reap_all(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some(r)) => self.on_reaped(r),
                Ok(None) => return,
                Err(e) => {
                    warning!(None, None, "unable to reap children: {e}");
                    return;
                }
            }
        }
    }

    /// An instance was reaped: free its slot, count and log its exit, tell
    /// its generation and the retiree it was replacing, and feed the exit
    /// to the service automaton (young or mature: `instance::young`).
    pub(crate) fn on_reaped(&mut self, r: sys::Reaped) {
        let Some(id) = self.procs.id_of(r.pid) else {
            // A template, an instance whose template has not said its pid
            // yet, a process an instance left behind, or (as PID 1)
            // anyone's.
            self.reaped_not_instance(r);
            return;
        };
        self.read_stderr(id, true);
        self.read_reports(id);
        let Some(inst) = self.forget(id, r.pid) else {
            return;
        };
        let s = inst.service();
        let now = Instant::now();
        let class = exit_class(r.status, &inst);
        // The child ran out of the manager's fds or memory before exec:
        // the manager's problem, not the service's.
        let starved = inst.life().asked().is_none()
            && matches!(r.status, WaitStatus::Exited(sys::code::RESOURCES));
        let (served, reached) = self.free_slot_of(&inst);
        let young = instance::young(
            class,
            reached,
            now.saturating_duration_since(inst.started()),
            self.services[s].proven(),
        );
        self.services[s].count_exit((inst.pid(), inst.last_stderr()), &r, class, starved);
        self.tell_generation(s, &inst, class, now);
        self.log_exit(s, &inst, &r, class, served, now);
        self.replacement_gone(id);
        if reached == Reached::Served {
            // A trial that served has proved the service can run, whatever
            // happens to it next (its requests may not have been reported
            // yet).
            self.check_trial(s, inst.started());
        }
        let (key, grace) = (
            self.services[s].key().to_string(),
            self.services[s].config().stop_grace,
        );
        self.instance_gone(id, &key, grace);
        self.tell_service_exited(s, class, young, starved);
        self.update_hints(s);
    }

    /// Takes the reaped instance `id` out of the process table, its timers
    /// and the poll. None if it was already gone.
    fn forget(&mut self, id: usize, pid: i32) -> Option<Instance> {
        let (_, inst) = self.procs.remove_pid(pid)?;
        self.timers.set(Timer::Instance(id), None);
        self.timers.set(Timer::Unresponsive(id), None);
        for (fd, _) in inst.pipes() {
            self.unregister(fd);
        }
        Some(inst)
    }

    /// Frees the scoreboard slot of a reaped instance. Returns how many
    /// requests it served and how far it got: served a request (a mature
    /// instance, whose death is about that request or an outside event,
    /// not about the program), died serving a retried request, died with a
    /// first attempt in hand, ready (its slot had left *starting*), or
    /// nothing.
    fn free_slot_of(&mut self, inst: &Instance) -> (u64, Reached) {
        let svc = &mut self.services[inst.service()];
        // Read before the slot is freed.
        let slot = svc.slot_snapshot(inst.slot());
        let ready = slot
            .as_ref()
            .is_some_and(|sl| sl.state.is_some_and(|st| st != SlotState::Starting));
        // The attempt of the request in hand (begun, not finished), if any.
        let in_hand = slot
            .as_ref()
            .filter(|sl| sl.state == Some(SlotState::Busy) && sl.busy_since_ns != 0)
            .map(|sl| sl.attempt);
        let served = svc.free_slot(inst.slot(), inst.reported());
        let reached = match (served > 0, in_hand, ready) {
            (true, _, _) => Reached::Served,
            (false, Some(attempt), _) if attempt >= 2 => Reached::Retry,
            (false, Some(_), true) => Reached::InHand,
            (false, _, true) => Reached::Ready,
            (false, _, false) => Reached::Nothing,
        };
        (served, reached)
    }

    /// Feeds an instance's exit to service `s`'s automaton, or, when the
    /// child was starved of the manager's resources, stops launches for a
    /// while instead.
    fn tell_service_exited(&mut self, s: usize, class: ExitClass, young: bool, starved: bool) {
        if starved {
            if let Some(what) = sys::code::describe(sys::code::RESOURCES) {
                self.starved(s, what);
            }
            return;
        }
        let remaining = self.planned_count(s);
        self.events.push_back((
            s,
            Event::Exited {
                class,
                remaining,
                young,
            },
        ));
    }

    /// Capacity of service `s`, counting each retiree still waiting for
    /// its replacement to start: that start is already planned (and the
    /// retiree serves meanwhile), so a refill of the pool must not start
    /// one for it too. A replacement that died before taking over made its
    /// retiree wait for a new one; refilling for the same loss as well
    /// started two instances for one.
    fn planned_count(&self, s: usize) -> u32 {
        let wanted = self
            .procs
            .of(s)
            .filter(|(_, i)| matches!(i.life().retiring(), Some((_, Replacement::Wanted))))
            .count();
        self.live_count(s)
            .saturating_add(u32::try_from(wanted).unwrap_or(u32::MAX))
    }

    /// A pending generation that lost an instance it did not stop cannot
    /// take over; a pending or draining one looks again now.
    fn tell_generation(&mut self, s: usize, inst: &Instance, class: ExitClass, now: Instant) {
        let svc = &mut self.services[s];
        match svc.gen() {
            Gen::Live => return,
            Gen::Pending { .. } if inst.life().asked().is_none() => {
                let why = format!(
                    "new instance (pid {}) {class} before it was ready{}",
                    inst.pid(),
                    if inst.last_stderr().is_empty() {
                        String::new()
                    } else {
                        format!("; last stderr line: {}", inst.last_stderr())
                    }
                );
                svc.note_gen_failure(why);
            }
            Gen::Pending { .. } | Gen::Draining { .. } => {}
        }
        self.timers.set(Timer::Generation(s), Some(now));
    }

    /// One line per exit: its class, status, life span and requests.
    fn log_exit(
        &self,
        s: usize,
        inst: &Instance,
        r: &sys::Reaped,
        class: ExitClass,
        served: u64,
        now: Instant,
    ) {
        let status = match r.status {
            WaitStatus::Exited(c) => format!("exit {c}"),
            WaitStatus::Signaled(sig) => format!("signal {sig}"),
        };
        let level = if class.is_trouble() {
            Level::Warn
        } else {
            Level::Info
        };
        crate::log::line(
            level,
            Some(self.services[s].key()),
            Some(inst.pid()),
            format_args!(
                "exited: {class} [{status}] after {:.3}s, {} request(s); counted as {}",
                now.saturating_duration_since(inst.started()).as_secs_f64(),
                served,
                class.name()
            ),
        );
    }

    /// A retiree whose replacement (instance `id`) died waits for a new
    /// one (the id may be reused by an unrelated instance).
    pub(super) fn replacement_gone(&mut self, id: usize) {
        let retirees: Vec<usize> = self
            .procs
            .iter()
            .filter(|(_, i)| {
                matches!(i.life().retiring(), Some((_, Replacement::Started(rep))) if rep == id)
            })
            .map(|(rid, _)| rid)
            .collect();
        for rid in retirees {
            self.life_event(rid, instance::Event::ReplacementGone);
        }
    }
}

/// How a reaped instance ended. An instance that leaves at its request
/// limit on its own (the library stops accepting there) is counted as the
/// recycle it is.
fn exit_class(status: WaitStatus, inst: &Instance) -> ExitClass {
    let asked = inst
        .life()
        .asked()
        .or(match (status, inst.life().retiring()) {
            (WaitStatus::Exited(0), Some((reason, _))) => Some(reason),
            _ => None,
        });
    ExitClass::of(status, asked)
}
