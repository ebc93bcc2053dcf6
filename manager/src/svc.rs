//! One generation of a configured service at run time (`Svc`): its bound
//! socket and scoreboard, its automaton's state, its figures, and what the
//! manager does with its socket ([`Watch`]). It owns all of that: callers
//! ask it what they need (its config, a slot's state, its mode) and tell
//! it what happened (a launch, an exit, a fast fail), and it keeps its own
//! books (which slots are used, the fork pacing, the stderr rate limit,
//! whether it is starved). Which generations exist is `services.rs`'s
//! business; what a generation does is the loop's.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use charon_protocol::report::Record;
use charon_protocol::scoreboard::{Scoreboard, SlotSnapshot, SlotState};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::calibrate;
use crate::config::ServiceConfig;
use crate::generation::{self, Gen};
use crate::log::warning;
use crate::service::backoff::{Backoff, CrashTally};
use crate::service::pacing::ForkPacer;
use crate::service::state::{ExitClass, Mode, ServiceState};
use crate::service::transition::{self, Actions, Event};
use crate::stats::{LastExit, Stats};
use crate::stderr::RateLimit;
use crate::sys::{Reaped, WaitStatus};

/// What the manager does with a service's socket right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Not registered: instances accept on it.
    Off,
    /// Fork one on the first connect.
    Demand,
    /// Accept and answer Unavailable.
    FastFail,
    /// Every instance is busy below the maximum: a new connection means
    /// grow (the manager never accepts it).
    Saturated,
    /// No instance, for the manager's own resource failure: accept and
    /// answer Unavailable naming it (`starved.rs`).
    Starved,
}

/// One configured service at run time.
pub(crate) struct Svc {
    config: ServiceConfig,
    listen: OwnedFd,
    sock_path: PathBuf,
    board: Scoreboard,
    board_fd: OwnedFd,
    used_slots: Vec<bool>,
    state: ServiceState,
    watch: Watch,
    stats: Stats,
    stderr_limit: RateLimit,
    /// Replacements of dead instances, rate-limited.
    pacer: ForkPacer,
    /// How long instances took to become ready (smoothed), once seen.
    startup: Option<Duration>,
    /// Requests a second one instance served (smoothed), measured over
    /// the life of instances that reached their retirement notice.
    rate: f64,
    /// Inode of the listening socket, for queue-depth queries.
    ino: u64,
    /// Live, pending (a reload's replacement coming up) or draining.
    gen: Gen,
    /// Counts generations of all keys, for logs and `charon ps`.
    generation: u64,
    /// Instances started to serve a draining generation's queue.
    drain_spawns: u32,
    /// Why a pending generation cannot take over (an instance left early).
    gen_failure: Option<String>,
    /// The manager's own resource failure that kept an instance of it from
    /// starting, as its clients are told (`starved.rs`).
    starved: Option<String>,
    /// An instance of this generation was reaped after completing a
    /// request (`proven` also looks at the live ones' slots).
    served_once: bool,
}

impl Svc {
    pub(crate) fn key(&self) -> &str {
        self.config.key.as_str()
    }

    pub(crate) const fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Its number among all generations of all keys.
    pub(crate) const fn generation(&self) -> u64 {
        self.generation
    }

    /// The listening socket its instances accept on.
    pub(crate) const fn listen(&self) -> &OwnedFd {
        &self.listen
    }

    /// The listening socket's inode, for queue-depth queries.
    pub(crate) const fn ino(&self) -> u64 {
        self.ino
    }

    /// Where its socket is bound (empty once handed on or removed).
    pub(crate) fn sock_path(&self) -> &Path {
        &self.sock_path
    }

    /// Its socket's path is no longer its own (removed, or handed on).
    pub(crate) fn take_sock_path(&mut self) -> PathBuf {
        std::mem::take(&mut self.sock_path)
    }

    /// Its socket was renamed to `path`.
    pub(crate) fn moved_to(&mut self, path: PathBuf) {
        self.sock_path = path;
    }

    /// The scoreboard its instances write, for test rigs that play an
    /// instance.
    #[cfg(test)]
    pub(crate) const fn board(&self) -> &Scoreboard {
        &self.board
    }

    /// The scoreboard's memory, handed to each instance.
    pub(crate) const fn board_fd(&self) -> &OwnedFd {
        &self.board_fd
    }

    /// What slot `slot` says its instance is doing.
    pub(crate) fn slot_state(&self, slot: u32) -> Option<SlotState> {
        self.board.slot(slot).and_then(|sl| sl.state())
    }

    /// Everything slot `slot` says, read once.
    pub(crate) fn slot_snapshot(&self, slot: u32) -> Option<SlotSnapshot> {
        self.board.slot(slot).map(|sl| sl.snapshot())
    }

    /// Some instance says it is idle.
    pub(crate) fn any_idle(&self) -> bool {
        self.board.any_idle()
    }

    /// Lets its instances' next saturation hint through at once.
    pub(crate) fn allow_next_hint(&self) {
        self.board.allow_next_hint();
    }

    /// Scoreboard slots, used or not.
    pub(crate) fn slot_count(&self) -> usize {
        self.used_slots.len()
    }

    /// Some slot is free for one more instance.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.used_slots.iter().any(|u| !u)
    }

    /// A free slot made ready for a new instance with request limit
    /// `limit`, and its retirement notice timed so that a replacement is
    /// up when it leaves; None if every slot is in use.
    pub(crate) fn prepare_slot(&mut self, limit: u64) -> Option<u32> {
        let slot = self.used_slots.iter().position(|u| !u)? as u32;
        if let Some(sl) = self.board.slot(slot) {
            // Written before the fork: the instance reads its limit at start.
            sl.reset(u32::MAX, limit);
            let startup = self.startup.unwrap_or(calibrate::ASSUMED_STARTUP);
            let notice = calibrate::retire_notice(limit, self.rate, startup);
            sl.retire_notice.store(notice, Ordering::Relaxed);
        }
        Some(slot)
    }

    /// The instance for a prepared slot could not be started.
    pub(crate) fn slot_unused(&self, slot: u32) {
        if let Some(sl) = self.board.slot(slot) {
            sl.reset(0, 0);
        }
    }

    /// The instance `pid` now runs in a prepared slot: a launch.
    pub(crate) fn launched(&mut self, slot: u32, pid: i32) {
        self.stats.launched();
        if let Some(u) = self.used_slots.get_mut(slot as usize) {
            *u = true;
        }
        if let Some(sl) = self.board.slot(slot) {
            sl.pid.store(pid as u32, Ordering::Relaxed);
        }
        self.publish_slots_in_use();
    }

    /// The instance in `slot` runs as `pid`, which its template (or an
    /// exec in its place) has just said.
    pub(crate) fn set_slot_pid(&self, slot: u32, pid: i32) {
        if let Some(sl) = self.board.slot(slot) {
            sl.pid.store(pid as u32, Ordering::Relaxed);
        }
    }

    /// Frees the slot of a reaped instance that `reported` requests.
    /// Returns the requests it completed, reported or still in an unsent
    /// batch (its slot counts them too); those never reported are added
    /// to the figures (without latency).
    pub(crate) fn free_slot(&mut self, slot: u32, reported: u64) -> u64 {
        let counted = self.board.slot(slot).map_or(0, |sl| sl.snapshot().requests);
        if let Some(sl) = self.board.slot(slot) {
            if counted > reported {
                let unreported = counted - reported;
                self.stats.unreported(unreported);
            }
            sl.reset(0, 0);
        }
        if let Some(u) = self.used_slots.get_mut(slot as usize) {
            *u = false;
        }
        self.publish_slots_in_use();
        let served = counted.max(reported);
        self.served_once |= served > 0;
        served
    }

    /// An instance of this generation has completed a request: the program
    /// has shown it can serve (`instance::young`).
    pub(crate) fn proven(&self) -> bool {
        self.served_once
            || (0..self.used_slots.len() as u32).any(|slot| {
                self.used_slots[slot as usize]
                    && self
                        .board
                        .slot(slot)
                        .is_some_and(|sl| sl.snapshot().requests > 0)
            })
    }

    /// The program may have changed under the same config (`charon
    /// restart` after the binary was replaced): it must show again that it
    /// can serve.
    pub(crate) fn unprove(&mut self) {
        self.served_once = false;
    }

    fn publish_slots_in_use(&self) {
        let in_use = self
            .used_slots
            .iter()
            .rposition(|u| *u)
            .map_or(0, |i| i + 1);
        self.board
            .header()
            .slots_in_use
            .store(in_use as u32, Ordering::Relaxed);
    }

    /// Tells its instances whether more of them may be started.
    pub(crate) fn set_want_hints(&self, want: bool) {
        self.board
            .header()
            .want_hints
            .store(u32::from(want), Ordering::Relaxed);
    }

    /// Its automaton's mode.
    pub(crate) const fn mode(&self) -> Mode {
        self.state.mode()
    }

    /// How many instances it should have at least (`service/state.rs`).
    pub(crate) const fn wanted(&self) -> u32 {
        self.state.wanted()
    }

    /// Feeds an event to its automaton (`service/transition.rs`).
    pub(crate) fn on_event(&mut self, ev: Event, now: Instant) -> Actions {
        transition::on_event(&mut self.state, ev, now)
    }

    pub(crate) const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// An instance could not be started: `why`.
    pub(crate) fn count_launch_failure(&mut self, why: &str) {
        self.stats.could_not_start(why);
    }

    /// An instance reported these requests done.
    pub(crate) fn count_records(&mut self, recs: &[Record]) {
        self.stats.records(recs);
    }

    /// Instance `pid` exited as `class` and was reaped as `r`, its last
    /// stderr line `stderr`; kept as the last exit. One the manager's own
    /// want of resources caused (`starved`) is no exit of the service's
    /// and is not counted by class.
    pub(crate) fn count_exit(
        &mut self,
        (pid, stderr): (i32, &str),
        r: &Reaped,
        class: ExitClass,
        starved: bool,
    ) {
        let stats = &mut self.stats;
        if !starved {
            stats.exit(class.name());
        }
        if matches!(class, ExitClass::LaunchFailure(_)) && !starved {
            stats.launch_failed();
        }
        stats.exited_resources(r.cpu_us, r.maxrss_kib);
        let (code, signal) = match r.status {
            WaitStatus::Exited(c) => (Some(c), None),
            WaitStatus::Signaled(sig) => (None, Some(sig)),
        };
        stats.set_last_exit(LastExit::new(
            (pid, stderr),
            class.name(),
            class.to_string(),
            (code, signal),
        ));
    }

    /// It went into backoff.
    pub(crate) fn count_backoff(&mut self) {
        self.stats.backoff_entered();
    }

    /// A client was answered Unavailable.
    pub(crate) fn count_fast_fail(&mut self) {
        self.stats.fast_failed();
    }

    /// Its backlog was seen full (clients refused as overloaded).
    pub(crate) fn count_overload(&mut self) {
        self.stats.overload_seen();
    }

    /// Adds another generation's figures of the same key (see
    /// [`Stats::absorb`]).
    pub(crate) fn absorb_stats(&mut self, other: Stats, other_is_older: bool) {
        self.stats.absorb(other, other_is_older);
    }

    /// Hands its figures on (to the generation that replaces it).
    pub(crate) fn take_stats(&mut self) -> Stats {
        std::mem::replace(&mut self.stats, Stats::new())
    }

    /// A replacement may be forked now (Ok), or at the time given.
    pub(crate) fn pace_fork(&mut self, now: Instant) -> Result<(), Instant> {
        if self.pacer.take(now) {
            Ok(())
        } else {
            Err(self.pacer.next_at())
        }
    }

    /// One more stderr line may be logged now.
    pub(crate) fn admit_stderr(&mut self, now: Instant) -> bool {
        self.stderr_limit.admit(now)
    }

    /// Lines the stderr rate limit dropped since last asked, if any.
    pub(crate) fn stderr_dropped(&mut self, now: Instant) -> Option<u64> {
        self.stderr_limit.summary(now)
    }

    /// What the manager does with its socket now.
    pub(crate) const fn watch(&self) -> Watch {
        self.watch
    }

    /// Registers its socket with the poll as `tok` for `w` (or
    /// deregisters it for [`Watch::Off`]); a failure is logged and leaves
    /// it off.
    pub(crate) fn set_watch(&mut self, w: Watch, reg: &Registry, tok: Token) {
        let raw = self.listen.as_raw_fd();
        if self.watch != Watch::Off {
            if let Err(e) = reg.deregister(&mut SourceFd(&raw)) {
                warning!(Some(self.key()), None, "unable to unwatch socket: {e}");
            }
        }
        self.watch = Watch::Off;
        if w != Watch::Off {
            // Registering reports a connection already waiting, so the
            // first request of an on-demand service is never missed.
            match reg.register(&mut SourceFd(&raw), tok, Interest::READABLE) {
                Ok(()) => self.watch = w,
                Err(e) => warning!(Some(self.key()), None, "unable to watch socket: {e}"),
            }
        }
    }

    /// Live, pending or draining.
    pub(crate) const fn gen(&self) -> Gen {
        self.gen
    }

    /// Feeds an event to its generation's automaton (`generation.rs`).
    pub(crate) fn on_gen(&mut self, ev: generation::Event, now: Instant) -> generation::Action {
        generation::on_event(&mut self.gen, ev, now)
    }

    /// Why, as a pending generation, it cannot take over, if it cannot.
    pub(crate) fn gen_failure(&self) -> Option<&str> {
        self.gen_failure.as_deref()
    }

    /// One of its instances left before it was ready: the first reason
    /// stands.
    pub(crate) fn note_gen_failure(&mut self, why: String) {
        self.gen_failure.get_or_insert(why);
    }

    /// Instances started for its leftover queue while draining.
    pub(crate) const fn drain_spawns(&self) -> u32 {
        self.drain_spawns
    }

    pub(crate) fn note_drain_spawn(&mut self) {
        self.drain_spawns += 1;
    }

    /// The manager's own failure that keeps it from starting an instance,
    /// as its clients are told.
    pub(crate) fn starved(&self) -> Option<&str> {
        self.starved.as_deref()
    }

    /// It is starved for `reason`; true if it was not already.
    pub(crate) fn set_starved(&mut self, reason: String) -> bool {
        self.starved.replace(reason).is_none()
    }

    /// It started an instance again; true if it had been starved.
    pub(crate) fn fed(&mut self) -> bool {
        self.starved.take().is_some()
    }

    /// An instance became ready `took` after it was started.
    pub(crate) fn seen_ready(&mut self, took: Duration) {
        self.startup = Some(self.startup.map_or(took, |s| (s * 3 + took) / 4));
    }

    /// An instance served `requests` in `age`.
    pub(crate) fn seen_rate(&mut self, requests: u64, age: Duration) {
        let secs = age.as_secs_f64();
        if secs > 0.0 {
            let r = requests as f64 / secs;
            self.rate = if self.rate == 0.0 {
                r
            } else {
                (self.rate * 3.0 + r) / 4.0
            };
        }
    }

    /// A generation around a bound socket and scoreboard.
    pub(crate) fn new(b: Bound, gen: Gen, generation: u64, now: Instant) -> Svc {
        let Bound {
            config,
            listen,
            sock_path,
            board,
            board_fd,
        } = b;
        let state = ServiceState::new(
            config.minimum_processes,
            config.prestart_processes,
            Backoff::new(config.backoff_initial, config.exec_failure_backoff),
            CrashTally::new(config.crash_loop_count, config.crash_loop_interval),
        );
        let slots = board.slot_count() as usize;
        let ino = nix::sys::stat::fstat(&listen).map_or(0, |st| st.st_ino);
        Svc {
            config,
            listen,
            sock_path,
            board,
            board_fd,
            used_slots: vec![false; slots],
            state,
            watch: Watch::Off,
            stats: Stats::new(),
            stderr_limit: RateLimit::new(now),
            pacer: ForkPacer::new(now),
            startup: None,
            rate: 0.0,
            ino,
            gen,
            generation,
            drain_spawns: 0,
            gen_failure: None,
            starved: None,
            served_once: false,
        }
    }
}

/// A service ready to run: its config, bound socket and scoreboard.
pub(crate) struct Bound {
    config: ServiceConfig,
    listen: OwnedFd,
    sock_path: PathBuf,
    board: Scoreboard,
    board_fd: OwnedFd,
}

impl Bound {
    /// `config`'s socket `listen`, bound at `sock_path`, and its
    /// scoreboard with the fd its instances map it from.
    pub(crate) fn new(
        config: ServiceConfig,
        (listen, sock_path): (OwnedFd, PathBuf),
        (board, board_fd): (Scoreboard, OwnedFd),
    ) -> Bound {
        Bound {
            config,
            listen,
            sock_path,
            board,
            board_fd,
        }
    }

    /// Where its socket is bound.
    pub(crate) fn sock_path(&self) -> &Path {
        &self.sock_path
    }
}
