//! The manager's runtime: one thread, one mio poll over the signalfd, the
//! rendezvous sockets it currently watches, the control socket and each
//! instance's stderr pipe and report channel, with the poll timeout set by
//! the earliest deadline in `timers.rs`. [`Manager`] maps each token to
//! its owner and calls a small named handler, runs the timers that are
//! due and only those, and feeds the service automata their events.
//! Policy lives in pure code outside this directory: the service, instance
//! and generation automata (`service/transition.rs`, `instance.rs`,
//! `generation.rs`), `calibrate.rs`, `drain_policy.rs`.
//!
//! [`Manager`] is a struct of owned parts with private fields. The parts
//! are leaf modules that never import it: `services.rs` (the slab of
//! generations, each a `svc.rs`: its socket, scoreboard and automaton),
//! `process_table.rs` (the instances), `control.rs` (the control socket
//! and its connections), `timers.rs` (every deadline), `orphans.rs`,
//! `starved.rs` (the retry and the spare fd), `reload.rs` (the diff and
//! the reloads waiting for an answer), `notify.rs`, `fdstore.rs`,
//! `broken.rs`, `jitter.rs`. They answer
//! through their APIs, or return what to do (a request to answer, an
//! orphan to signal, a deadline to set), and the loop does it.
//!
//! This file holds the struct, `new`, `run`, the dispatch of tokens,
//! timers and automaton actions, and the stop. Its child modules hold the
//! rest of the `Manager`'s work, one concern each (Rust lets them read its
//! private fields; nothing outside this directory can): `instances`
//! (start, signal, reap and read one instance), `scaling` (the watched
//! socket, grow, shrink, recycle, fast fail, the tick), `drain` (the end of
//! a generation), `reload` (new generations in, old ones out), `restart`,
//! `control` (answering the control socket), `snapshot` (the figures for
//! `stats` and `ps`), `orphans` (what instances leave behind), `starved`
//! (the manager's own resource failures), `setup` (what the start hands it
//! before it runs); `loop_tests` drives it all without forking.

mod control;
mod drain;
mod instances;
#[cfg(test)]
mod loop_tests;
mod orphans;
mod reload;
mod restart;
mod scaling;
mod setup;
mod snapshot;
mod starved;
mod template;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use nix::fcntl::Flock;

use crate::control::Control;
use crate::generation::Gen;
use crate::jitter::Jitter;
use crate::log::{info, warning};
use crate::process_table::ProcessTable;
use crate::queue::QueueProbe;
use crate::service::state::Mode;
use crate::service::transition::{Action, Event, StartWhy};
use crate::services::{Bound, Services, Svc, Watch};
use crate::signals::{Sig, Signals};
use crate::spawn::Spawner;
use crate::timers::{Timer, Timers};
use crate::tokens::{owner, token, Owner, SIGNALS};

/// Paths and options the loop needs.
pub(crate) struct Paths {
    pub config_dir: PathBuf,
    pub run_dir: PathBuf,
    pub stats_interval: Duration,
}

/// The manager: the parts it owns, each behind its own API, and the
/// loop's own state (the poll, the queue of automaton events, whether it
/// is stopping).
pub(crate) struct Manager {
    poll: Poll,
    signals: Signals,
    services: Services,
    procs: ProcessTable,
    paths: Paths,
    devnull: OwnedFd,
    events: VecDeque<(usize, Event)>,
    stopping: bool,
    /// A second stop signal came: SIGKILL, start nothing, serve no queue.
    stopping_now: bool,
    /// Spreads each instance's `maximum-requests` (`jitter.rs`).
    jitter: Jitter,
    /// Every deadline of the loop (`timers.rs`).
    timers: Timers,
    /// Starts and signals instances (fork/exec, or a test stand-in).
    spawner: Box<dyn Spawner>,
    /// sock_diag queries; None where the kernel does not offer them.
    probe: Option<QueueProbe>,
    /// Numbers the temporary socket names of new generations
    /// (`.gen<N>.sock`), unique for the manager's life.
    next_temp_name: u64,
    /// The control socket and its connections.
    control: Option<Control>,
    /// Reloads whose answer waits for new generations to come up.
    reloads: crate::reload::Waiting,
    /// Where fresh statistics go for the `/metrics` thread.
    metrics: Option<crossbeam_channel::Sender<String>>,
    /// Readiness, status and watchdog for systemd (`NOTIFY_SOCKET`).
    notify: crate::notify::Notifier,
    /// The notifier looks at the end of this turn (its timer fired, or a
    /// reload was answered).
    notify_due: bool,
    /// Keys whose config file is broken, answered for (`broken.rs`).
    broken_keys: crate::broken::BrokenKeys,
    /// The sockets systemd keeps across a restart (`FDSTORE=1`).
    fdstore: crate::fdstore::FdStore,
    /// The manager's own resource failures: retry time and spare fd.
    starvation: crate::starved::Starvation,
    /// Processes instances left behind (charond is their subreaper).
    orphans: crate::orphans::Orphans,
    /// The generations' templates (`template = true`).
    templates: crate::templates::Templates,
    /// While stopping, something had to be SIGKILLed (stop-grace passed, or
    /// a second stop signal): the exit status says so.
    forced: bool,
    /// Errors of the config files that failed to load at the last scan
    /// (start or reload), sorted by file: `charon health` names them.
    broken: Vec<crate::config::ConfigError>,
    _lock: Flock<File>,
}

/// The periodic tick: scoreboard scan, shrink, unresponsive, rss.
pub(crate) const TICK: Duration = Duration::from_secs(1);

impl Manager {
    /// Builds the manager around already-bound services.
    pub(crate) fn new(
        paths: Paths,
        lock: Flock<File>,
        signals: Signals,
        services: Vec<Bound>,
        devnull: OwnedFd,
        spawner: Box<dyn Spawner>,
    ) -> io::Result<Manager> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&signals.raw()), SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.set(Timer::Tick, Some(now + TICK));
        let mut slab = Services::default();
        // Each key counts its own generations, from 1.
        for b in services {
            slab.insert(Svc::new(b, Gen::Live, 1, now));
        }
        Ok(Manager {
            poll,
            signals,
            services: slab,
            procs: ProcessTable::default(),
            paths,
            devnull,
            events: VecDeque::new(),
            stopping: false,
            stopping_now: false,
            jitter: Jitter::seeded(),
            probe: QueueProbe::new().ok(),
            timers,
            spawner,
            next_temp_name: 1,
            control: None,
            reloads: crate::reload::Waiting::default(),
            metrics: None,
            broken_keys: crate::broken::BrokenKeys::default(),
            starvation: crate::starved::Starvation::new(),
            orphans: crate::orphans::Orphans::default(),
            templates: crate::templates::Templates::default(),
            forced: false,
            broken: Vec::new(),
            notify: crate::notify::Notifier::from_env(),
            notify_due: false,
            fdstore: crate::fdstore::FdStore::from_env(),
            _lock: lock,
        })
    }

    /// Runs until a stop signal has been handled and every instance and
    /// every process an instance left behind is gone. True if the stop
    /// was graceful: nothing had to be SIGKILLed.
    ///
    /// # Errors
    ///
    /// Only an error of the poll itself, which leaves the loop unable to go
    /// on.
    pub(crate) fn run(&mut self) -> io::Result<bool> {
        let stats_at = Instant::now() + self.paths.stats_interval;
        self.timers.set(Timer::Stats, Some(stats_at));
        for s in self.services.ids() {
            self.events.push_back((s, Event::Begin));
        }
        self.process_events();
        self.notify_look();
        let mut events = Events::with_capacity(256);
        loop {
            // Stopping ends once every generation has served its queue and
            // been freed, and every instance is reaped.
            if self.stopping
                && self.procs.is_empty()
                && self.services.is_empty()
                && self.orphans.is_empty()
                && self.templates.none_running()
            {
                info!(
                    None,
                    None,
                    "all instances gone; exiting{}",
                    if self.forced {
                        " (some had to be killed)"
                    } else {
                        ""
                    }
                );
                return Ok(!self.forced);
            }
            let timeout = self.timers.timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in &events {
                self.dispatch(owner(ev.token()));
            }
            self.on_deadlines(Instant::now());
            self.process_events();
            if std::mem::take(&mut self.notify_due) {
                self.notify_look();
            }
        }
    }

    /// Hands this round's figures to the systemd notifier, and sets when
    /// it must look again (its watchdog ping, its status line, soon while
    /// starting). Only then, or once a reload is answered: not at every
    /// turn, so the figures are not gathered per event.
    fn notify_look(&mut self) {
        let reloading = !self.reloads.is_empty();
        self.notify
            .look(|| crate::notify::figures(&self.services, &self.procs, reloading));
        let again = self.notify.next_deadline(Instant::now());
        self.timers.set(Timer::Notify, again);
    }

    fn dispatch(&mut self, o: Owner) {
        match o {
            Owner::Signals => {
                for sig in self.signals.drain() {
                    match sig {
                        Sig::Child => self.reap_all(),
                        Sig::Terminate => self.begin_shutdown(),
                        Sig::Hangup => {
                            info!(None, None, "SIGHUP: reloading the config dir");
                            self.reload(None);
                        }
                        Sig::Reopen => crate::log::reopen(),
                    }
                }
            }
            Owner::Listener(s) => self.on_listener(s),
            Owner::Stderr(i) => self.read_stderr(i, false),
            Owner::Report(i) => self.read_reports(i),
            Owner::ControlListen => self.control_accept(),
            Owner::ControlConn(c) => self.control_ready(c),
            Owner::Broken(b) => self.broken_keys.ready(b),
            Owner::TemplateStderr(t) => self.read_template_stderr(t, false),
            Owner::TemplateControl(t) => self.read_template(t),
        }
    }

    /// Feeds queued events to the service automata and performs their
    /// actions (which may queue more events).
    pub(crate) fn process_events(&mut self) {
        while let Some((s, ev)) = self.events.pop_front() {
            let now = Instant::now();
            let Some(svc) = self.services.get_mut(s) else {
                continue;
            };
            let actions = svc.on_event(ev, now);
            let backoff_until = match svc.mode() {
                Mode::Backoff { until, .. } => Some(until),
                _ => None,
            };
            self.timers.set(Timer::Backoff(s), backoff_until);
            for a in actions {
                self.perform(s, a);
            }
        }
    }

    fn perform(&mut self, s: usize, a: Action) {
        match a {
            Action::Spawn {
                count,
                why: StartWhy::Replace,
            } => self.replace(s, count),
            Action::Spawn { count, why } => {
                for _ in 0..count {
                    self.spawn_one(s, why);
                }
            }
            Action::WatchDemand => self.set_watch(s, Watch::Demand),
            Action::WatchFastFail => self.set_watch(s, Watch::FastFail),
            Action::Unwatch => self.set_watch(s, Watch::Off),
            Action::BackoffEntered(wait) => {
                let svc = &mut self.services[s];
                svc.count_backoff();
                warning!(
                    Some(svc.key()),
                    None,
                    "backoff: no launch for {}s",
                    wait.as_secs_f64()
                );
            }
            Action::Recovered => {
                info!(
                    Some(self.services[s].key()),
                    None, "healthy again: backoff reset"
                );
            }
        }
    }

    pub(crate) fn set_watch(&mut self, s: usize, w: Watch) {
        let tok = token(Owner::Listener(s));
        self.services[s].set_watch(w, self.poll.registry(), tok);
        if w != Watch::Off {
            // A connection queued before registration: handle it now.
            self.on_listener(s);
        }
    }

    /// One due deadline, to its owner.
    fn on_timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Tick => {
                self.timers.set(Timer::Tick, Some(now + TICK));
                self.tick(now);
                self.find_orphans(None);
                self.publish_metrics();
            }
            Timer::Stats => {
                let next = now + self.paths.stats_interval;
                self.timers.set(Timer::Stats, Some(next));
                self.log_stats();
            }
            // At the end of this turn, once its events are processed.
            Timer::Notify => self.notify_due = true,
            Timer::Retry => self.starved_retry(now),
            Timer::ControlAgain => self.control_again(),
            Timer::ControlIdle(c) => self.control_expire(c, now),
            Timer::Orphan(pid) => self.orphan_due(pid, now),
            Timer::Generation(s) if self.services.get(s).is_some() => {
                self.generation_step(s, now);
            }
            Timer::Backoff(s) => {
                if let Some(Mode::Backoff { until, .. }) = self.services.get(s).map(|v| v.mode()) {
                    if until <= now {
                        self.events.push_back((s, Event::BackoffOver));
                    } else {
                        // Moved by a newer backoff meanwhile.
                        self.timers.set(t, Some(until));
                    }
                }
            }
            Timer::Saturation(s) if self.services.get(s).is_some() => self.check_saturation(s),
            Timer::Pace(s) if self.services.get(s).is_some() => self.replace_owed(s),
            Timer::Recycle(s) if self.services.get(s).is_some() => self.recycle_step(s),
            Timer::Instance(id) => self.check_life(id, now),
            Timer::Template(t) => self.template_due(t, now),
            Timer::Unresponsive(id) => {
                let ns = charon_protocol::scoreboard::now_ns();
                self.check_unresponsive(id, now, ns);
            }
            // A service freed since: its timers went with it.
            Timer::Generation(_) | Timer::Saturation(_) | Timer::Pace(_) | Timer::Recycle(_) => {}
        }
    }

    /// A generation is freed: none of its timers may fire for the next
    /// service given its index.
    pub(crate) fn cancel_service_timers(&mut self, s: usize) {
        for t in [
            Timer::Generation(s),
            Timer::Saturation(s),
            Timer::Pace(s),
            Timer::Recycle(s),
            Timer::Backoff(s),
        ] {
            self.timers.set(t, None);
        }
    }

    /// Runs the timers due at `now`, earliest first, and only those.
    fn on_deadlines(&mut self, now: Instant) {
        for t in self.timers.take_due(now) {
            self.on_timer(t, now);
        }
    }

    /// SIGTERM/SIGINT: remove the sockets (new clients get NotFound) and
    /// drain every generation (`drain.rs`): its instances serve the
    /// connections already queued, finish the request in hand and exit,
    /// SIGKILLed after `stop-grace`; a queue left with no instance gets one.
    /// A second SIGTERM/SIGINT while stopping means "now": SIGKILL every
    /// group without waiting for `stop-grace`, and close what is queued.
    pub(crate) fn begin_shutdown(&mut self) {
        if self.stopping {
            info!(
                None,
                None,
                "stopping now: killing {} instance(s)",
                self.procs.len()
            );
            self.stopping_now = true;
            self.forced = true;
            let ids: Vec<usize> = self.procs.iter().map(|(id, _)| id).collect();
            for id in ids {
                self.kill_instance(id, crate::service::state::KillReason::Shutdown);
            }
            self.orphans_kill_all();
            self.kill_templates();
            return;
        }
        self.stopping = true;
        self.notify.stop();
        info!(
            None,
            None,
            "stopping: {} instance(s) to serve their queue and finish",
            self.procs.len()
        );
        for s in self.services.ids() {
            let path = self.services[s].take_sock_path();
            let svc = &self.services[s];
            // A socket systemd keeps outlives charond: its file stays, so
            // that clients queue on it until the next charond serves it.
            if !(svc.gen() == Gen::Live && self.fdstore.holds(svc.key())) {
                crate::startup::remove_socket(&path, svc.key());
            }
            self.begin_drain(s, false);
        }
        self.answer_reloads_now("the manager is stopping");
        self.process_events();
    }
}
