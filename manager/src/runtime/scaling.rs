//! The loop's service-wide work: the watched socket (a first connect on
//! demand, fast fail in backoff), saturation hints (grow), the periodic
//! tick (shrink, unresponsive instances, memory, recycling, trial health)
//! and retiring instances. Decisions come from `calibrate.rs` and the
//! transitions; this file gathers their inputs and carries them out.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use charon_protocol::scoreboard::{now_ns, SlotState};
use charon_protocol::{encode_response, Limits as WireLimits, Response};

use super::Manager;
use crate::calibrate::{self, Decision, View, Why};
use crate::instance::{self, Replacement};
use crate::log::{info, warning};
use crate::refuse::{refuse, waiting};
use crate::service::state::{KillReason, Mode};
use crate::service::transition::{Event, StartWhy};
use crate::services::Watch;
use crate::svc::Svc;
use crate::timers::Timer;

/// An instance up this long without failing has proved healthy.
pub(crate) const HEALTHY_UPTIME: Duration = Duration::from_secs(10);
/// While saturated with clients waiting, re-check this often.
const SAT_RECHECK: Duration = Duration::from_millis(10);
/// While a replacement comes up, check this often whether it is ready.
const RECYCLE_RECHECK: Duration = Duration::from_millis(20);
/// A retiree at its request notice idle this long is stopped rather than
/// left to reach its limit.
const RETIREE_IDLE: Duration = Duration::from_secs(1);
/// Instances being recycled at once, per service.
const MAX_RECYCLING: usize = 2;

impl Manager {
    /// The socket is readable while we watch it.
    pub(crate) fn on_listener(&mut self, s: usize) {
        let svc = &self.services[s];
        match svc.watch() {
            Watch::Off => {}
            Watch::Demand => {
                // The caller processes the queued event.
                if waiting(svc.listen()) {
                    self.events.push_back((s, Event::Demand));
                }
            }
            Watch::FastFail => self.fast_fail(s),
            Watch::Saturated => self.check_saturation(s),
            Watch::Starved => self.starved_fail(s),
        }
    }

    /// Accepts every waiting connection and answers it with Unavailable at
    /// once. Only done while no instance is left; the socket is non-blocking
    /// anyway, so a connection a leaving instance took first costs nothing.
    fn fast_fail(&mut self, s: usize) {
        let svc = &mut self.services[s];
        let Mode::Backoff { until, .. } = svc.mode() else {
            return;
        };
        let left = until.saturating_duration_since(Instant::now());
        let retry_after = u32::try_from(left.as_millis().div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1);
        let reason = backoff_reason(svc);
        let mut frame = Vec::new();
        let resp = Response::Unavailable {
            retry_after,
            reason: &reason,
        };
        if let Err(e) = encode_response(&resp, &WireLimits::default(), &mut frame) {
            warning!(
                Some(svc.config().key.as_str()),
                None,
                "unable to encode an unavailable answer: {e}"
            );
            return;
        }
        refuse_waiting(svc, &frame);
    }

    /// An instance says every instance is busy.
    pub(crate) fn on_saturated(&mut self, s: usize) {
        let svc = &self.services[s];
        if !matches!(svc.mode(), Mode::Running) || self.stopping {
            return;
        }
        self.check_saturation(s);
    }

    /// Grows if connections wait. While every instance stays busy and more
    /// may be started, watches the socket (a new connection wakes the
    /// manager: no instance can take it, and no instance can send a hint)
    /// and re-checks shortly while started instances come up.
    pub(crate) fn check_saturation(&mut self, s: usize) {
        if !matches!(self.services[s].mode(), Mode::Running) || self.stopping {
            if self.services[s].watch() == Watch::Saturated {
                self.set_watch(s, Watch::Off);
            }
            return;
        }
        let views = self.views(s);
        let (waiting, exact) = self.queue_depth(s);
        let decision =
            calibrate::decide(&self.limits(s), &views, Why::Saturated { waiting, exact });
        if let Decision::Start(k) = decision {
            for _ in 0..k {
                self.spawn_one(s, StartWhy::Grow);
            }
        }
        let all_busy = !self.services[s].any_idle();
        let below_max = self.live_count(s) < self.services[s].config().maximum_processes;
        // Clients waiting while an instance is idle is a moment, not an
        // answer: the idle one takes one connection and the rest may still
        // need new instances, and its saturation hint can fall in the
        // hints' rate limit. So keep watching and re-check while anyone
        // waits. (Dropping the watch here left a burst's last clients
        // waiting a whole request: the roundtrip bench's 8 x 100 ms burst
        // took two rounds, 205 ms, in about half the runs.)
        let saturated = below_max && (all_busy || waiting > 0);
        let at = (saturated && waiting > 0).then(|| Instant::now() + SAT_RECHECK);
        self.timers.set(Timer::Saturation(s), at);
        if !saturated {
            // Nothing watches the socket now, so the next instance to find
            // every instance busy must be able to say so at once: a hint
            // from a request that ended before we looked (an idle instance
            // here) must not rate-limit the next, real one.
            self.services[s].allow_next_hint();
        }
        match (saturated, self.services[s].watch()) {
            (true, Watch::Off) => self.set_watch(s, Watch::Saturated),
            (false, Watch::Saturated) => self.set_watch(s, Watch::Off),
            _ => {}
        }
    }

    /// Connections waiting on the socket: an exact count from sock_diag,
    /// else 1 or 0 from a zero-timeout poll. A full queue means clients are
    /// being refused as overloaded: counted once per look.
    pub(crate) fn queue_depth(&mut self, s: usize) -> (u32, bool) {
        let svc = &mut self.services[s];
        if let Some(probe) = &mut self.probe {
            if let Ok(d) = probe.depth(svc.ino()) {
                if d.backlog > 0 && d.waiting >= d.backlog {
                    svc.count_overload();
                }
                return (d.waiting, true);
            }
        }
        (u32::from(waiting(svc.listen())), false)
    }

    fn limits(&self, s: usize) -> calibrate::Limits {
        let c = self.services[s].config();
        calibrate::Limits {
            minimum: c.minimum_processes,
            maximum: c.maximum_processes,
            occupancy_percent: c.occupancy_percent,
            idle_timeout: c.idle_timeout,
        }
    }

    fn views(&self, s: usize) -> Vec<View> {
        let now = Instant::now();
        let svc = &self.services[s];
        self.procs
            .of(s)
            .map(|(id, i)| View {
                id,
                state: svc.slot_state(i.slot()),
                leaving: i.is_leaving(),
                idle_for: i.idle_for(now),
                busy: i.busy(),
            })
            .collect()
    }

    /// The periodic tick.
    pub(crate) fn tick(&mut self, now: Instant) {
        let ids: Vec<usize> = self.procs.iter().map(|(id, _)| id).collect();
        let ns = now_ns();
        for id in ids {
            self.observe(id, now, ns);
        }
        for s in self.services.ids() {
            if let Some(n) = self.services[s].stderr_dropped(now) {
                let key = self.services[s].key().to_string();
                warning!(
                    Some(&key),
                    None,
                    "unable to log all stderr: {n} line(s) dropped by the rate limit"
                );
            }
            self.recycle_step(s);
            self.update_hints(s);
            if self.services[s].watch() == Watch::Saturated {
                self.check_saturation(s);
            }
            if self.stopping || !matches!(self.services[s].mode(), Mode::Running) {
                continue;
            }
            // At the maximum nothing else looks at the queue: notice a full
            // backlog (clients refused as overloaded) here. Below it, clients
            // waiting while no instance is idle and nothing watches are a
            // lost saturation hint (rate-limited, or sent before the flag
            // said hints were wanted): grow now rather than never.
            let (waiting, _) = self.queue_depth(s);
            if waiting > 0
                && self.services[s].watch() != Watch::Saturated
                && !self.services[s].any_idle()
            {
                self.check_saturation(s);
            }
            let views = self.views(s);
            if let Decision::Stop(id, reason) =
                calibrate::decide(&self.limits(s), &views, Why::Tick)
            {
                self.stop_instance(id, reason);
            }
        }
    }

    /// Reads one instance's slot: busy share, idleness, stuck requests,
    /// memory, trial health.
    fn observe(&mut self, id: usize, now: Instant, ns: u64) {
        let Some(inst) = self.procs.get_mut(id) else {
            return;
        };
        let s = inst.service();
        let svc = &self.services[s];
        let Some(snap) = svc.slot_snapshot(inst.slot()) else {
            return;
        };
        let dt = super::TICK.as_nanos() as f64;
        inst.observe(&snap, dt, now);
        let (pid, leaving) = (inst.pid(), inst.is_leaving());
        self.note_ready(id, now);
        if self.check_unresponsive(id, now, ns) {
            return;
        }
        let svc = &self.services[s];
        if let Some(max) = svc.config().maximum_rss {
            if let Some(rss) = rss_bytes(pid) {
                if rss > max && !leaving {
                    info!(
                        Some(svc.config().key.as_str()),
                        Some(pid),
                        "resident memory {rss} bytes is over maximum-rss {max}: recycling"
                    );
                    self.retire(id, KillReason::MaxRss);
                }
            }
        }
        if let Some(started) = self.procs.get(id).map(|i| i.started()) {
            if snap.requests > 0 || now.saturating_duration_since(started) >= HEALTHY_UPTIME {
                self.check_trial(s, started);
            }
        }
    }

    /// Kills an instance busy on one request past `unresponsive-timeout`
    /// (true if it did). Otherwise, for a busy instance, sets its
    /// unresponsive deadline to the moment its request would pass the
    /// limit, so the kill does not wait for a tick.
    pub(crate) fn check_unresponsive(&mut self, id: usize, now: Instant, ns: u64) -> bool {
        let Some(inst) = self.procs.get(id) else {
            return false;
        };
        let svc = &self.services[inst.service()];
        let (Some(limit), Some(snap)) = (
            svc.config().unresponsive_timeout,
            svc.slot_snapshot(inst.slot()),
        ) else {
            return false;
        };
        if snap.busy_since_ns == 0 || inst.life().asked() == Some(KillReason::Unresponsive) {
            return false;
        }
        let busy_for = Duration::from_nanos(ns.saturating_sub(snap.busy_since_ns));
        if busy_for <= limit {
            // A little past the limit, so the check then finds it over.
            let at = now + (limit - busy_for) + Duration::from_millis(5);
            self.timers.set_earlier(Timer::Unresponsive(id), at);
            return false;
        }
        warning!(
            Some(svc.config().key.as_str()),
            Some(inst.pid()),
            "unable to get an answer from instance: busy {:.1}s on one request (client {:?}, attempt {}, {} bytes); killing it",
            busy_for.as_secs_f64(),
            snap.client,
            snap.attempt,
            snap.request_bytes
        );
        self.kill_instance(id, KillReason::Unresponsive);
        true
    }

    /// The trial instance after a backoff served or stayed up: healthy.
    /// Only an instance started since the trial began counts: others may
    /// have outlived the failure that caused the backoff.
    pub(crate) fn check_trial(&mut self, s: usize, started: Instant) {
        if let Mode::Trial { since } = self.services[s].mode() {
            if started >= since {
                self.events.push_back((s, Event::Healthy));
            }
        }
    }

    /// Marks an instance for recycling; the replacement starts first.
    pub(crate) fn retire(&mut self, id: usize, reason: KillReason) {
        let Some(s) = self.procs.get(id).map(|i| i.service()) else {
            return;
        };
        self.life_event(id, instance::Event::Retire(reason));
        self.recycle_step(s);
    }

    /// Advances recycling: start replacements (a few at a time), then stop
    /// each retiree once its replacement is idle (or gone); one retiring
    /// for `maximum-requests` is left to reach its limit unless it is idle.
    /// A retiree still waiting for a slot for its replacement is stopped
    /// without one once it has been idle a while: every slot may be held
    /// by retirees and the instances that refilled the pool when others
    /// reached their limit, and nothing would ever free one.
    pub(crate) fn recycle_step(&mut self, s: usize) {
        let now = Instant::now();
        let sorted = self.sort_retirees(s, now);
        for rep in sorted.replacements {
            self.note_ready(rep, now);
        }
        for (id, reason) in sorted.ready {
            self.stop_instance(id, reason);
        }
        let active = self.start_replacements(s, &sorted.pending, sorted.active);
        self.timers.set(
            Timer::Recycle(s),
            (active > 0).then(|| Instant::now() + RECYCLE_RECHECK),
        );
    }

    /// Where each retiree of service `s` stands in its recycling.
    fn sort_retirees(&self, s: usize, now: Instant) -> Retirees {
        let mut sorted = Retirees::default();
        let slot_free = self.services[s].has_free_slot();
        for (id, i) in self.procs.of(s) {
            let Some((reason, replacement)) = i.life().retiring() else {
                continue;
            };
            // An instance at its request notice serves on to its limit,
            // where it leaves by itself (a SIGTERM would cut its life short
            // and cost a fork more per `maximum-requests`); stopped only
            // once it has had nothing to do for a while (the load went
            // away).
            let finishing = reason == KillReason::MaxRequests && i.idle_for(now) < RETIREE_IDLE;
            match replacement {
                Replacement::Wanted if !slot_free && i.idle_for(now) >= RETIREE_IDLE => {
                    sorted.ready.push((id, reason));
                }
                Replacement::Wanted => sorted.pending.push(id),
                Replacement::Unavailable if !finishing => sorted.ready.push((id, reason)),
                Replacement::Unavailable => {}
                Replacement::Started(rep) => {
                    sorted.replacements.push(rep);
                    let rep_state = self
                        .procs
                        .get(rep)
                        .and_then(|r| self.services[s].slot_state(r.slot()));
                    if !finishing
                        && matches!(rep_state, None | Some(SlotState::Idle | SlotState::Busy))
                    {
                        sorted.ready.push((id, reason));
                    } else {
                        sorted.active += 1;
                    }
                }
            }
        }
        sorted
    }

    /// Starts replacements for the `pending` retirees of service `s` while
    /// fewer than [`MAX_RECYCLING`] are `active` and a slot is free.
    /// Returns how many are now active.
    fn start_replacements(&mut self, s: usize, pending: &[usize], mut active: usize) -> usize {
        // A draining generation's instances leave by draining, not by
        // replacement.
        let can_start = !self.stopping
            && !self.services[s].mode().is_backoff()
            && self.services[s].mode() != Mode::Stopped;
        for &id in pending {
            // Every slot taken (replacements already on their way): the
            // retiree waits for the next step, serving meanwhile.
            let slot_free = self.services[s].has_free_slot();
            if active >= MAX_RECYCLING || !can_start || !slot_free {
                break;
            }
            let rep = self.spawn_one(s, StartWhy::Recycle);
            // None: no replacement could start; it is stopped anyway at the
            // next step.
            self.life_event(id, instance::Event::ReplacementStarted(rep));
            active += 1;
        }
        active
    }
}

/// Resident memory of a pid from `/proc/PID/statm` (second field, pages).
fn rss_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::sys::page_size())
}

/// The retirees of one service, sorted by [`Manager::sort_retirees`].
#[derive(Default)]
struct Retirees {
    /// Recycling under way: a replacement still coming up, or a retiree
    /// serving on to its request limit.
    active: usize,
    /// Waiting for a replacement to be started.
    pending: Vec<usize>,
    /// To stop now, and why.
    ready: Vec<(usize, KillReason)>,
    /// Replacements started, to check for readiness.
    replacements: Vec<usize>,
}

/// Why a service in backoff fails its clients: its last exit. A launch
/// failure (a missing program, a wrong `cd`) is fixed by a person, who
/// need not wait for the backoff to run out, so the reason says how.
fn backoff_reason(svc: &Svc) -> String {
    let last = svc.stats().last_exit();
    let mut reason = last.map_or_else(|| "service is in backoff".to_string(), |e| e.reason());
    if last.is_some_and(crate::stats::LastExit::is_launch_failure) {
        reason.push_str(&format!(
            "; once fixed, `charon restart {}` retries at once",
            svc.config().key.as_str()
        ));
    }
    reason
}

/// Accepts every connection waiting on `svc`'s socket and answers it with
/// `frame`, counting each as fast-failed.
fn refuse_waiting(svc: &mut Svc, frame: &[u8]) {
    while waiting(svc.listen()) {
        let conn = match crate::sys::accept(svc.listen().as_fd()) {
            Ok(fd) => fd,
            // The service library makes the shared socket non-blocking:
            // a connection taken by a leaving instance is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warning!(
                    Some(svc.config().key.as_str()),
                    None,
                    "unable to accept a connection: {e}"
                );
                return;
            }
        };
        refuse(&conn, frame);
        svc.count_fast_fail();
    }
}
