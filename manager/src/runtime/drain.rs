//! The end of a generation: after a reload swapped in its successor, or its
//! config file was removed, or its replacement failed to come up, or the
//! manager is stopping (SIGTERM/SIGINT, its socket unlinked). Its
//! instances get SIGUSR1 once they are up (serve what is queued, finish the
//! request in hand, exit 0); a queue left with no instance gets one more
//! instance of the old config; then the socket closes, the scoreboard is
//! freed and the figures fold into the key's live generation. When to
//! drain is `reload.rs`'s decision.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use charon_protocol::scoreboard::SlotState;

use super::Manager;
use crate::log::{info, warning};
use crate::refuse::waiting;
use crate::reload::{READY_DEADLINE, RECHECK};
use crate::service::state::KillReason;
use crate::service::transition::{Event, StartWhy};
use crate::services::Watch;
use crate::timers::Timer;

/// A draining generation's socket stays open this long after the swap even
/// when nothing waits on it: a client that looked the path up just before
/// the rename may still be queueing a connection there.
const LINGER: Duration = Duration::from_secs(1);
/// Instances started for a draining generation's leftover queue before its
/// connections are closed instead (the client retries on the new socket).
const MAX_DRAIN_SPAWNS: u32 = 3;

impl Manager {
    /// Marks a generation as draining: it starts nothing more, and each
    /// instance is told to drain once it is up. Its socket stays open for
    /// `LINGER` after its path was handed on (a reload's rename) or, with
    /// `linger` false, only until its queue is served (a stop: the path was
    /// unlinked, so nobody can connect any more).
    pub(crate) fn begin_drain(&mut self, o: usize, linger: bool) {
        let now = Instant::now();
        let svc = &mut self.services[o];
        svc.sock_path = PathBuf::new();
        let linger_until = if linger { now + LINGER } else { now };
        // Its first drain step runs at the look just below.
        let _ = crate::generation::on_event(
            &mut svc.gen,
            crate::generation::Event::Drain { linger_until },
            now,
        );
        self.timers.set(Timer::Generation(o), Some(now));
        self.timers.set(Timer::Saturation(o), None);
        self.events.push_back((o, Event::Shutdown));
        if self.services[o].watch != Watch::Off {
            self.set_watch(o, Watch::Off);
        }
    }

    /// Drains a generation: SIGUSR1 to each instance that is up; once none
    /// is left, serve a leftover queue, then free it. False if freed.
    pub(crate) fn drain_step(&mut self, o: usize, now: Instant, linger_until: Instant) -> bool {
        let mut starting = false;
        let mut any = false;
        // At a stop with nothing queued, an instance not yet up has nothing
        // to serve: it is stopped at once (as a program that never reports
        // up, not using the service library, would otherwise wait for the
        // ready deadline).
        let idle_stop = self.stopping && !waiting(&self.services[o].listen);
        // A stop's drain began at `linger_until` (it has no linger): an
        // instance still not up `stop-grace` after is not waited for.
        let stop_overdue =
            self.stopping && now >= linger_until + self.services[o].config.stop_grace;
        let ids: Vec<usize> = self
            .procs
            .iter()
            .filter(|(_, i)| i.service == o)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            any = true;
            let Some(inst) = self.procs.get(id) else {
                continue;
            };
            if inst.life.asked().is_some() {
                continue;
            }
            let st = self.services[o]
                .board
                .slot(inst.slot)
                .and_then(|sl| sl.state());
            // Before its handler is installed SIGUSR1 would kill it: wait
            // until the library reports it up.
            if matches!(st, Some(SlotState::Idle | SlotState::Busy)) {
                self.drain_instance(id);
            } else if idle_stop
                || stop_overdue
                || now.saturating_duration_since(inst.started) > READY_DEADLINE
            {
                // Never came up: it serves nothing, so stopping it loses
                // nothing (and SIGKILL follows after stop-grace).
                let reason = self.drain_reason();
                self.stop_instance(id, reason);
            } else {
                starting = true;
            }
        }
        if any {
            self.timers
                .set(Timer::Generation(o), starting.then_some(now + RECHECK));
            return true;
        }
        // At a stop, a socket systemd keeps (fd store, socket activation)
        // keeps its queue and its file: the next charond serves them, and
        // clients keep arriving meanwhile, so nothing is spawned for them
        // and nothing is closed.
        let kept = self.stopping && self.fdstore.holds(self.services[o].key());
        if !kept && waiting(&self.services[o].listen) {
            // A graceful stop serves a leftover queue too; a second stop
            // signal ("now") does not.
            if self.services[o].drain_spawns < MAX_DRAIN_SPAWNS && !self.stopping_now {
                self.services[o].drain_spawns += 1;
                let _ = self.spawn_one(o, StartWhy::Drain);
            } else {
                self.close_queue(o);
            }
            self.timers.set(Timer::Generation(o), Some(now + RECHECK));
            return true;
        }
        if now < linger_until {
            self.timers.set(Timer::Generation(o), Some(linger_until));
            return true;
        }
        self.free_generation(o);
        false
    }

    /// Why generations drain now: a reload, or the manager stopping.
    fn drain_reason(&self) -> KillReason {
        if self.stopping {
            KillReason::Shutdown
        } else {
            KillReason::Reload
        }
    }

    /// SIGUSR1 to one instance; SIGKILL after `stop-grace`.
    fn drain_instance(&mut self, id: usize) {
        let reason = self.drain_reason();
        let Some(inst) = self.procs.get(id) else {
            return;
        };
        let (pid, s) = (inst.pid, inst.service);
        let grace = self.services[s].config.stop_grace;
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
        while waiting(&self.services[o].listen) {
            match crate::sys::accept(std::os::fd::AsFd::as_fd(&self.services[o].listen)) {
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
        if self.services[o].watch != Watch::Off {
            self.set_watch(o, Watch::Off);
        }
        self.events.retain(|(s, _)| *s != o);
        self.cancel_service_timers(o);
        let Some(old) = self.services.remove(o) else {
            return;
        };
        info!(
            Some(old.key()),
            None,
            "generation {} ({}) is gone",
            old.generation,
            old.gen.name()
        );
        if let Some(l) = self.live_of(old.key()) {
            self.services[l].stats.absorb(old.stats, false);
        }
    }
}
