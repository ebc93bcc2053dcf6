//! The end of a generation: after a reload swapped in its successor, or its
//! config file was removed, or its replacement failed to come up, or the
//! manager is stopping (SIGTERM/SIGINT, its socket unlinked). This file is
//! the shell that carries out `drain_policy.rs`'s decisions: it tells the
//! policy what it sees of each instance and of the queue, then sends the
//! signals (SIGUSR1 to an instance that is up, SIGTERM to one that never
//! came up), starts an instance of the old config for a leftover queue or
//! closes it, and frees the generation (its socket closes, its scoreboard
//! is freed and its figures fold into the key's live generation). When to
//! drain is `reload.rs`'s decision.

use std::time::{Duration, Instant};

use charon_protocol::scoreboard::SlotState;

use super::Manager;
use crate::drain_policy::{self, Left, Look, Seen, Step, Then, Why};
use crate::log::{info, warning};
use crate::refuse::waiting;
use crate::service::state::KillReason;
use crate::service::transition::{Event, StartWhy};
use crate::services::Watch;
use crate::timers::Timer;

/// A draining generation's socket stays open this long after the swap even
/// when nothing waits on it: a client that looked the path up just before
/// the rename may still be queueing a connection there.
const LINGER: Duration = Duration::from_secs(1);

impl Manager {
    /// Marks a generation as draining: it starts nothing more, and each
    /// instance is told to drain once it is up. Its socket stays open for
    /// `LINGER` after its path was handed on (a reload's rename) or, with
    /// `linger` false, only until its queue is served (a stop: the path was
    /// unlinked, so nobody can connect any more).
    pub(crate) fn begin_drain(&mut self, o: usize, linger: bool) {
        let now = Instant::now();
        let svc = &mut self.services[o];
        // Its path is handed on (a reload's rename) or was removed.
        svc.take_sock_path();
        let linger_until = if linger { now + LINGER } else { now };
        // Its first drain step runs at the look just below.
        let _ = svc.on_gen(crate::generation::Event::Drain { linger_until }, now);
        self.timers.set(Timer::Generation(o), Some(now));
        self.timers.set(Timer::Saturation(o), None);
        self.events.push_back((o, Event::Shutdown));
        self.stop_template(o);
        if self.services[o].watch() != Watch::Off {
            self.set_watch(o, Watch::Off);
        }
    }

    /// Drains a generation as `drain_policy.rs` says: each instance gets
    /// its step (SIGUSR1 once up, SIGTERM if it never came up), then the
    /// generation its next move (wait, serve or close a leftover queue,
    /// linger, free). False if freed.
    pub(crate) fn drain_step(&mut self, o: usize, now: Instant, linger_until: Instant) -> bool {
        let look = self.drain_look(o, linger_until);
        let ids = self.procs.ids_of(o, true);
        let mut left = if ids.is_empty() {
            Left::Nothing
        } else {
            Left::Leaving
        };
        for id in ids {
            let Some(seen) = self.drain_seen(id) else {
                continue;
            };
            match drain_policy::instance(seen, &look, now) {
                Step::None => {}
                Step::Drain(reason) => self.drain_instance(id, reason),
                Step::Stop(reason) => self.stop_instance(id, reason),
                Step::Wait => left = Left::Starting,
                Step::Impossible(what) => self.drain_impossible(id, what),
            }
        }
        match drain_policy::after(left, &look, now) {
            Then::AwaitExits => self.timers.set(Timer::Generation(o), None),
            Then::Recheck(at) => self.timers.set(Timer::Generation(o), Some(at)),
            Then::Spawn(at) => {
                self.services[o].note_drain_spawn();
                let _ = self.spawn_one(o, StartWhy::Drain);
                self.timers.set(Timer::Generation(o), Some(at));
            }
            Then::CloseQueue(at) => {
                self.close_queue(o);
                self.timers.set(Timer::Generation(o), Some(at));
            }
            Then::Free => {
                self.free_generation(o);
                return false;
            }
        }
        true
    }

    /// What the drain policy needs to know of generation `o` now.
    fn drain_look(&self, o: usize, linger_until: Instant) -> Look {
        let svc = &self.services[o];
        let why = match (self.stopping, self.stopping_now) {
            (false, _) => Why::Reload,
            (true, false) => Why::Stop,
            (true, true) => Why::StopNow,
        };
        Look {
            why,
            queued: waiting(svc.listen()),
            held: self.fdstore.holds(svc.key()),
            spawns: svc.drain_spawns(),
            linger_until,
            stop_grace: svc.config().stop_grace,
        }
    }

    /// Instance `id` as the drain policy sees it: asked to leave, up (its
    /// slot says idle or busy), or not yet up.
    fn drain_seen(&self, id: usize) -> Option<Seen> {
        let inst = self.procs.get(id)?;
        if inst.life().asked().is_some() {
            return Some(Seen::Asked);
        }
        Some(
            match self.services[inst.service()].slot_state(inst.slot()) {
                Some(SlotState::Idle) => Seen::Idle,
                Some(SlotState::Busy) => Seen::Busy,
                _ => Seen::Starting {
                    since: inst.started(),
                },
            },
        )
    }

    /// The drain policy met a pair that cannot happen: say so, and SIGKILL
    /// the instance (the manager stops now).
    fn drain_impossible(&mut self, id: usize, what: &str) {
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        warning!(
            Some(self.services[inst.service()].key()),
            Some(inst.pid()),
            "unable to follow the drain: {what} (can't happen; killing it)"
        );
        self.kill_instance(id, KillReason::Shutdown);
    }

    /// SIGUSR1 to one instance; SIGKILL after `stop-grace`.
    fn drain_instance(&mut self, id: usize, reason: KillReason) {
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let (pid, s) = (inst.pid(), inst.service());
        let grace = self.services[s].config().stop_grace;
        if self.life_event(id, crate::instance::Event::Drain { reason, grace }) {
            info!(
                Some(self.services[s].key()),
                Some(pid),
                "draining ({})",
                reason.name()
            );
        }
    }

    /// No instance could be started for a leftover queue: close each
    /// connection unanswered, so its client retries on the key's new
    /// socket (or sees NotFound if the key was removed).
    fn close_queue(&mut self, o: usize) {
        let mut n = 0u32;
        while waiting(self.services[o].listen()) {
            match crate::sys::accept(std::os::fd::AsFd::as_fd(self.services[o].listen())) {
                Ok(conn) => {
                    drop(conn);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if n > 0 {
            warning!(
                Some(self.services[o].key()),
                None,
                "unable to serve {n} connection(s) left on a drained socket: closed them (clients retry once)"
            );
        }
    }

    /// The last instance of a drained generation is gone: close its socket,
    /// free its scoreboard, and fold its figures into the key's live one.
    fn free_generation(&mut self, o: usize) {
        if self.services[o].watch() != Watch::Off {
            self.set_watch(o, Watch::Off);
        }
        self.events.retain(|(s, _)| *s != o);
        self.cancel_service_timers(o);
        self.detach_template(o);
        let Some(mut old) = self.services.remove(o) else {
            return;
        };
        info!(
            Some(old.key()),
            None,
            "generation {} ({}) is gone",
            old.generation(),
            old.gen().name()
        );
        if let Some(l) = self.live_of(old.key()) {
            self.services[l].absorb_stats(old.take_stats(), false);
        }
    }
}
