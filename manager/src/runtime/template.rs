//! The loop's work on templates (`templates.rs` keeps them, `template.rs`
//! decides): start a generation's template with its first instance, read
//! its stderr and control channel, send it starts, match its answers (and
//! the reaps that beat them) to the instances waiting, start by exec what
//! it cannot, and stop it with its generation. A template's trouble is
//! logged, never counted against its service.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use charon_protocol::template::{decode_reply, Reply, MAX_MESSAGE_LEN};
use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::signal::Signal;

use super::Manager;
use crate::log::{info, warning};
use crate::process_table::{Instance, StderrRead};
use crate::service::transition::StartWhy;
use crate::spawn::{self, Launch};
use crate::sys::Reaped;
use crate::template::{Action, Event, Phase};
use crate::templates::{ControlRead, Pending};
use crate::timers::Timer;
use crate::tokens::{token, Owner};

impl Manager {
    /// Starts instance of service `s` through its template, if it has a
    /// READY one (starting the template first if it has none yet). Returns
    /// the new instance's id, its pid known once the template answers; None
    /// means "exec it".
    pub(crate) fn start_via_template(&mut self, s: usize, why: StartWhy) -> Option<usize> {
        if !self.services[s].config().template || self.stopping {
            return None;
        }
        let tid = match self.templates.of_service(s) {
            Some(t) => t,
            None => {
                let now = Instant::now();
                let tid = self.templates.create(s, now);
                self.template_launch(tid, now);
                return None;
            }
        };
        self.templates.get(tid)?.ready_channel()?;
        let limit = self.request_limit(s);
        let svc = &mut self.services[s];
        let slot = svc.prepare_slot(limit)?;
        let control = self.templates.get(tid)?.ready_channel()?;
        let (stderr, report) = match spawn::start_via_template(control, slot) {
            Ok(ends) => ends,
            Err(e) => {
                svc.slot_unused(slot);
                info!(
                    Some(svc.key()),
                    None,
                    "unable to start an instance through the template: {e}; starting it by exec"
                );
                return None;
            }
        };
        let spawned = crate::spawn::Spawned {
            pid: 0,
            stderr,
            report,
        };
        let id = self.track_launched(s, slot, spawned);
        if let Some(t) = self.templates.get_mut(tid) {
            t.sent(Pending { id, why, limit });
        }
        Some(id)
    }

    /// Starts template `tid`'s process, as an instance but with
    /// `CHARON_TEMPLATE` and a control channel.
    fn template_launch(&mut self, tid: usize, now: Instant) {
        let Some(s) = self.templates.get(tid).and_then(|t| t.service()) else {
            return;
        };
        let svc = &self.services[s];
        let launch = Launch {
            config: svc.config(),
            config_dir: &self.paths.config_dir,
            run_dir: &self.paths.run_dir,
            slot: 0,
            listen: svc.listen(),
            scoreboard: svc.board_fd(),
            devnull: &self.devnull,
            template: true,
        };
        let timeout = svc.config().startup_timeout;
        let key = svc.key().to_string();
        let ev = match self.spawner.spawn(&launch) {
            Ok(sp) => {
                info!(Some(&key), Some(sp.pid), "template started");
                let reg = self.poll.registry();
                for (fd, o) in [
                    (&sp.stderr, Owner::TemplateStderr(tid)),
                    (&sp.report, Owner::TemplateControl(tid)),
                ] {
                    let src = &mut SourceFd(&fd.as_raw_fd());
                    if let Err(e) = reg.register(src, token(o), Interest::READABLE) {
                        warning!(Some(&key), Some(sp.pid), "unable to watch template fd: {e}");
                    }
                }
                if let Some(t) = self.templates.get_mut(tid) {
                    t.started(sp.pid, sp.stderr, sp.report);
                }
                Event::Launched { timeout }
            }
            Err(e) => {
                warning!(Some(&key), None, "unable to start the template: {e}");
                Event::LaunchFailed
            }
        };
        self.template_event(tid, ev, now);
    }

    /// Feeds an event to template `tid`'s automaton and performs what it
    /// returns.
    pub(crate) fn template_event(&mut self, tid: usize, ev: Event, now: Instant) {
        let Some(t) = self.templates.get_mut(tid) else {
            return;
        };
        let actions = t.on_event(ev, now);
        let (pid, s, phase) = (t.pid(), t.service(), t.phase());
        self.timers.set(Timer::Template(tid), phase.deadline());
        let key = s
            .and_then(|s| self.services.get(s))
            .map(|v| v.key().to_string());
        for a in actions {
            match a {
                Action::Sigterm | Action::Sigkill => {
                    let sig = if a == Action::Sigterm {
                        Signal::SIGTERM
                    } else {
                        Signal::SIGKILL
                    };
                    if let Some(pid) = pid {
                        self.spawner.signal(pid, sig);
                    }
                }
                Action::ExecPending => self.exec_pending(tid),
                Action::Warn(why) => warning!(
                    key.as_deref(),
                    pid,
                    "template: {why}{}",
                    if phase == Phase::Off && s.is_some() {
                        "; instances are started by exec for this generation"
                    } else {
                        ""
                    }
                ),
                Action::Impossible(what) => warning!(
                    key.as_deref(),
                    pid,
                    "unable to follow the template's life: {what} (can't happen; ignored)"
                ),
            }
        }
    }

    /// Template `tid`'s deadline: start it, or it was not READY in time,
    /// or its stop's grace is over.
    pub(crate) fn template_due(&mut self, tid: usize, now: Instant) {
        let Some(t) = self.templates.get(tid) else {
            return;
        };
        match t.phase() {
            Phase::Down { restart_at, .. } if restart_at <= now => {
                if t.service().is_some() && !self.stopping {
                    self.template_launch(tid, now);
                }
            }
            Phase::Starting { ready_by, .. } if ready_by <= now => {
                self.template_event(tid, Event::StartupOver, now);
            }
            Phase::Stopping { kill_at: Some(at) } if at <= now => {
                self.template_event(tid, Event::GraceOver, now);
            }
            p => self.timers.set(Timer::Template(tid), p.deadline()),
        }
    }

    /// Template `tid`'s control channel is readable: its answers.
    pub(crate) fn read_template(&mut self, tid: usize) {
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        loop {
            let Some(t) = self.templates.get_mut(tid) else {
                return;
            };
            let n = match t.recv(&mut buf) {
                ControlRead::Got(n) => n,
                ControlRead::Done => return,
                ControlRead::Closed(fd) => {
                    self.unregister(&fd);
                    self.template_event(tid, Event::HungUp, Instant::now());
                    return;
                }
            };
            let now = Instant::now();
            match decode_reply(&buf[..n]) {
                Ok(Reply::Ready) => {
                    self.template_note(tid, "template ready: instances are forked from it");
                    self.template_event(tid, Event::Ready, now);
                }
                Ok(Reply::NotForkable(why)) => {
                    self.template_note(tid, &format!("template cannot fork: {why}"));
                    self.template_event(tid, Event::NotForkable, now);
                }
                Ok(Reply::Started { slot, pid }) => self.template_started(tid, slot, pid),
                Ok(Reply::Failed { slot, errno }) => self.template_failed(tid, slot, errno),
                Err(e) => {
                    self.template_note(tid, &format!("unable to read the template: {e}"));
                    self.template_event(tid, Event::HungUp, now);
                    return;
                }
            }
        }
    }

    fn template_note(&self, tid: usize, what: &str) {
        let Some(t) = self.templates.get(tid) else {
            return;
        };
        let key = t
            .service()
            .and_then(|s| self.services.get(s))
            .map(|v| v.key());
        info!(key, t.pid(), "{what}");
    }

    /// STARTED: the oldest start runs as `pid`.
    fn template_started(&mut self, tid: usize, slot: u32, pid: u32) {
        let Some(p) = self.templates.get_mut(tid).and_then(|t| t.answered()) else {
            self.template_note(tid, "template answered a start never sent; ignored");
            return;
        };
        let id = p.id;
        let pid = i32::try_from(pid).unwrap_or(0);
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let s = inst.service();
        if inst.slot() != slot || pid <= 0 || self.procs.id_of(pid).is_some() {
            // Not the answer to the start it must answer next.
            self.template_note(tid, "template answered out of order; it is restarted");
            if let Some(t) = self.templates.get_mut(tid) {
                t.sent(p);
            }
            self.template_event(tid, Event::HungUp, Instant::now());
            return;
        }
        let deferred = self.procs.set_pid(id, pid);
        self.services[s].set_slot_pid(slot, pid);
        let (why, limit) = (p.why, p.limit);
        info!(
            Some(self.services[s].key()),
            Some(pid),
            "started (slot {slot}, {}, request limit {limit}, forked by the template)",
            why.name()
        );
        if let Some(sig) = deferred {
            self.spawner.signal(pid, sig);
        }
        if let Some(r) = self.templates.claim_reaped(pid) {
            self.on_reaped(r);
        }
        self.flush_unclaimed();
    }

    /// FAILED: the oldest start is done by exec.
    fn template_failed(&mut self, tid: usize, slot: u32, errno: i32) {
        let Some(p) = self.templates.get_mut(tid).and_then(|t| t.answered()) else {
            return;
        };
        let e = std::io::Error::from_raw_os_error(errno);
        self.template_note(
            tid,
            &format!(
                "template could not fork the instance for slot {slot}: {e}; starting it by exec"
            ),
        );
        self.exec_instead(p);
        self.flush_unclaimed();
    }

    /// Every start template `tid` has not answered is done by exec.
    fn exec_pending(&mut self, tid: usize) {
        let starts = self
            .templates
            .get_mut(tid)
            .map(crate::templates::Template::take_pending)
            .unwrap_or_default();
        for p in starts {
            self.exec_instead(p);
        }
        self.flush_unclaimed();
    }

    /// Instance `id`, whose start its template did not do, is started by
    /// exec in the same slot and keeps its place (as a retiree's
    /// replacement, say); if exec fails too, it is gone as a launch failure.
    fn exec_instead(&mut self, p: Pending) {
        let (id, why) = (p.id, p.why);
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let (s, slot) = (inst.service(), inst.slot());
        let svc = &self.services[s];
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
        let key = svc.key().to_string();
        let ready_by_after = svc.config().startup_timeout;
        match self.spawner.spawn(&launch) {
            Ok(sp) => {
                let now = Instant::now();
                let pid = sp.pid;
                let old = self
                    .procs
                    .get_mut(id)
                    .map(|i| i.relaunched(sp.pid, sp.stderr, sp.report, now, now + ready_by_after));
                for fd in old.unwrap_or_default() {
                    self.unregister(&fd);
                }
                let deferred = self.procs.set_pid(id, pid);
                self.services[s].set_slot_pid(slot, pid);
                self.register_instance(id);
                let deadline = self.procs.get(id).and_then(|i| i.life().deadline());
                self.timers.set(Timer::Instance(id), deadline);
                info!(
                    Some(&key),
                    Some(pid),
                    "started (slot {slot}, {}, by exec)",
                    why.name()
                );
                if let Some(sig) = deferred {
                    self.spawner.signal(pid, sig);
                }
            }
            Err(e) => {
                if let Some(inst) = self.procs.remove_id(id) {
                    self.forget_unstarted(id, &inst);
                }
                self.launch_failed(s, &key, &e);
            }
        }
    }

    /// An instance that never ran leaves the table: its pipes, timers and
    /// slot go, and a retiree it was to replace waits for another.
    fn forget_unstarted(&mut self, id: usize, inst: &Instance) {
        self.timers.set(Timer::Instance(id), None);
        self.timers.set(Timer::Unresponsive(id), None);
        for (fd, _) in inst.pipes() {
            self.unregister(fd);
        }
        self.services[inst.service()].free_slot(inst.slot(), 0);
        self.replacement_gone(id);
    }

    /// A child not in the process table was reaped: a template's, or an
    /// instance whose STARTED has not been read yet (kept until it is),
    /// or an orphan.
    pub(crate) fn reaped_not_instance(&mut self, r: Reaped) {
        if let Some(tid) = self.templates.by_pid(r.pid) {
            self.template_reaped(tid, &r);
        } else if self.templates.any_pending() {
            self.templates.keep_reaped(r);
        } else {
            self.orphan_reaped(&r);
        }
    }

    /// Reaps kept for a STARTED that can no longer come were orphans'.
    fn flush_unclaimed(&mut self) {
        for r in self.templates.unclaimed_for_good() {
            self.orphan_reaped(&r);
        }
    }

    fn template_reaped(&mut self, tid: usize, r: &Reaped) {
        // First: its pid may be reused from now on, and reading its last
        // answers below may call for a signal.
        if let Some(t) = self.templates.get_mut(tid) {
            t.reaped();
        }
        self.read_template_stderr(tid, true);
        self.read_template(tid);
        let fds = self
            .templates
            .get_mut(tid)
            .map(crate::templates::Template::take_fds)
            .unwrap_or_default();
        for fd in &fds {
            self.unregister(fd);
        }
        let key = self
            .templates
            .get(tid)
            .and_then(|t| t.service())
            .and_then(|s| self.services.get(s))
            .map(|v| v.key().to_string());
        info!(
            key.as_deref(),
            Some(r.pid),
            "template exited ({}); not counted against the service",
            crate::orphans::status(r.status)
        );
        self.template_event(tid, Event::Gone, Instant::now());
        self.templates.drop_if_done(tid);
    }

    /// Reads a template's stderr into log lines.
    pub(crate) fn read_template_stderr(&mut self, tid: usize, final_drain: bool) {
        let mut buf = [0u8; 8192];
        let now = Instant::now();
        loop {
            let Some(t) = self.templates.get_mut(tid) else {
                return;
            };
            let (pid, s) = (t.pid(), t.service());
            let (lines, rest, closed): (Vec<String>, Option<String>, Option<OwnedFd>) =
                match t.read_stderr(&mut buf, final_drain) {
                    StderrRead::Lines(lines) => (lines, None, None),
                    StderrRead::Done(rest) => (Vec::new(), rest, None),
                    StderrRead::Closed(fd, rest) => (Vec::new(), rest, Some(fd)),
                };
            let more = rest.is_none() && closed.is_none() && !lines.is_empty();
            for l in lines.iter().chain(rest.as_ref()) {
                match s.and_then(|s| self.services.get_mut(s)) {
                    Some(v) => {
                        if v.admit_stderr(now) {
                            info!(Some(v.key()), pid, "template stderr: {l}");
                        }
                    }
                    None => info!(None, pid, "template stderr: {l}"),
                }
            }
            if let Some(fd) = closed {
                self.unregister(&fd);
                return;
            }
            if !more {
                return;
            }
        }
    }

    /// A starting instance with no pid yet passed its start-up deadline:
    /// its template did not answer in time.
    pub(crate) fn start_unanswered(&mut self, id: usize, now: Instant) -> bool {
        let Some(tid) = self.templates.pending_on(id) else {
            return false;
        };
        self.template_event(tid, Event::Stuck, now);
        true
    }

    /// Generation `s` is going: its template stops.
    pub(crate) fn stop_template(&mut self, s: usize) {
        let Some(tid) = self.templates.of_service(s) else {
            return;
        };
        let grace = self.services[s].config().stop_grace;
        self.template_event(tid, Event::Stop { grace }, Instant::now());
    }

    /// `charon restart`: the program may have been replaced on disk, and
    /// the template is the old one's image: it is stopped, and a new one
    /// started at once (exec serves until it is READY).
    pub(crate) fn renew_template(&mut self, s: usize) {
        let Some(old) = self.templates.of_service(s) else {
            return;
        };
        self.stop_template(s);
        self.templates.detach(old);
        let now = Instant::now();
        let new = self.templates.create(s, now);
        self.template_launch(new, now);
    }

    /// Generation `s` is freed: its template, stopped, lives on until
    /// reaped.
    pub(crate) fn detach_template(&mut self, s: usize) {
        if let Some(tid) = self.templates.of_service(s) {
            self.templates.detach(tid);
        }
    }

    /// A second stop signal: every template is SIGKILLed now.
    pub(crate) fn kill_templates(&mut self) {
        let pids: Vec<i32> = self.templates.iter().filter_map(|(_, t)| t.pid()).collect();
        for pid in pids {
            self.spawner.signal(pid, Signal::SIGKILL);
        }
    }

    /// A pid that is a template's (not an orphan, not an instance).
    pub(crate) fn is_template(&self, pid: i32) -> bool {
        self.templates.by_pid(pid).is_some()
    }
}
