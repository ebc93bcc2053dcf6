//! Which instances a draining generation signals, and what it does once
//! none is left, as pure policy. Each time a draining generation is looked
//! at, every instance of it is one *state* ([`Seen`]: asked to leave
//! already, idle, busy, or not yet up) and the look is the *event*
//! ([`Look`]: why generations drain now, whether connections are queued,
//! whether `stop-grace` has passed since a stop began); [`instance`] maps
//! each pair to one [`Step`]. One kind of pair cannot happen: an instance
//! not yet asked to leave after a second stop signal, which SIGKILLs every
//! instance and lets none start; it is reported as such, and killed. Then
//! [`after`] decides the generation's next
//! move from what is left of its instances and its queue ([`Then`]).
//! Sending the signals, spawning, closing and freeing is `drain.rs`'s job;
//! when a generation starts to drain is `reload.rs`'s and the stop's.
//! `charon restart` drains no generation: it recycles instances through the
//! replacement-first path (`scaling.rs`).

use std::time::{Duration, Instant};

use crate::generation::{READY_DEADLINE, RECHECK};
use crate::service::state::KillReason;

/// Instances started for a draining generation's leftover queue before its
/// connections are closed instead (the client retries on the new socket).
pub(crate) const MAX_DRAIN_SPAWNS: u32 = 3;

/// Why generations drain now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// A reload replaced it, its config file was removed, or it failed to
    /// come up; the manager runs on.
    Reload,
    /// The manager stops (SIGTERM/SIGINT): its socket is unlinked, nobody
    /// can connect any more.
    Stop,
    /// A second stop signal: every instance was SIGKILLed, and a leftover
    /// queue is closed rather than served.
    StopNow,
}

impl Why {
    /// The reason an instance's exit is counted under.
    #[must_use]
    pub(crate) const fn reason(self) -> KillReason {
        match self {
            Why::Reload => KillReason::Reload,
            Why::Stop | Why::StopNow => KillReason::Shutdown,
        }
    }

    const fn stopping(self) -> bool {
        matches!(self, Why::Stop | Why::StopNow)
    }
}

/// One instance of a draining generation, as the loop sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Already asked to leave (drained, stopped or killed): its exit is
    /// awaited.
    Asked,
    /// Up (its slot says idle): its SIGUSR1 handler is installed.
    Idle,
    /// Up and serving a request.
    Busy,
    /// Not yet up, forked at `since`: SIGUSR1 would kill it before its
    /// handler is installed.
    Starting { since: Instant },
}

/// What the loop saw of a draining generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Look {
    pub why: Why,
    /// Connections wait on its socket.
    pub queued: bool,
    /// systemd's fd store keeps its socket (it outlives a stop).
    pub held: bool,
    /// Instances already started for its leftover queue.
    pub spawns: u32,
    /// Its socket stays open until then (a stop's drain began then).
    pub linger_until: Instant,
    /// Its `stop-grace`.
    pub stop_grace: Duration,
}

/// What to do with one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing: it was asked to leave already.
    None,
    /// SIGUSR1: serve what is queued, finish, exit (SIGKILL after
    /// `stop-grace`).
    Drain(KillReason),
    /// SIGTERM: it never came up, so it serves nothing and stopping it
    /// loses nothing (SIGKILL after `stop-grace`).
    Stop(KillReason),
    /// Not up yet: look again soon.
    Wait,
    /// A pair that cannot happen: say so, and SIGKILL it (the manager
    /// stops now).
    Impossible(&'static str),
}

/// What is left of a draining generation's instances after their steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// None: its queue and socket are what remains.
    Nothing,
    /// Some, all asked to leave: their exits bring the next look.
    Leaving,
    /// Some still starting ([`Step::Wait`]).
    Starting,
}

/// The generation's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Wait for its instances' exits (no deadline).
    AwaitExits,
    /// Look again at this time.
    Recheck(Instant),
    /// Start one instance of its config for the leftover queue, then look
    /// again at this time.
    Spawn(Instant),
    /// Close the leftover connections unanswered (their clients retry once
    /// on the key's new socket), then look again at this time.
    CloseQueue(Instant),
    /// Free it: close its socket, free its scoreboard, fold its figures.
    Free,
}

/// What to do with one instance of a draining generation.
#[must_use]
pub(crate) fn instance(seen: Seen, look: &Look, now: Instant) -> Step {
    let reason = look.why.reason();
    match seen {
        Seen::Asked => Step::None,
        _ if look.why == Why::StopNow => {
            Step::Impossible("an instance not asked to leave after a second stop signal killed all")
        }
        Seen::Idle | Seen::Busy => Step::Drain(reason),
        Seen::Starting { since } if gives_up(since, look, now) => Step::Stop(reason),
        Seen::Starting { .. } => Step::Wait,
    }
}

/// An instance not yet up is not waited for: at a stop with nothing
/// queued it has nothing to serve (and a program that does not use the
/// service library never reports up); at a stop `stop-grace` after the
/// drain began it is overdue; and in any case past the ready deadline.
fn gives_up(since: Instant, look: &Look, now: Instant) -> bool {
    let idle_stop = look.why.stopping() && !look.queued;
    let stop_overdue = look.why.stopping() && now >= look.linger_until + look.stop_grace;
    idle_stop || stop_overdue || now.saturating_duration_since(since) > READY_DEADLINE
}

/// The generation's next move, once its instances had their steps.
#[must_use]
pub(crate) fn after(left: Left, look: &Look, now: Instant) -> Then {
    match left {
        Left::Starting => return Then::Recheck(now + RECHECK),
        Left::Leaving => return Then::AwaitExits,
        Left::Nothing => {}
    }
    // At a stop, a socket systemd keeps keeps its queue and its file: the
    // next charond serves them, so nothing is spawned and nothing closed.
    let kept = look.why.stopping() && look.held;
    if look.queued && !kept {
        // A graceful stop serves a leftover queue too; "now" does not.
        return if look.spawns < MAX_DRAIN_SPAWNS && look.why != Why::StopNow {
            Then::Spawn(now + RECHECK)
        } else {
            Then::CloseQueue(now + RECHECK)
        };
    }
    if now < look.linger_until {
        Then::Recheck(look.linger_until)
    } else {
        Then::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);
    const WHYS: [Why; 3] = [Why::Reload, Why::Stop, Why::StopNow];

    /// Where `now` stands against a look's linger and stop-grace.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Timing {
        Lingering,
        GraceRunning,
        GracePassed,
    }

    /// Every look, at `now`: why × queued × held × spawns × timing.
    fn looks(now: Instant) -> Vec<(Timing, Look)> {
        let mut v = Vec::new();
        for why in WHYS {
            for queued in [false, true] {
                for held in [false, true] {
                    for spawns in [MAX_DRAIN_SPAWNS - 1, MAX_DRAIN_SPAWNS] {
                        for (timing, linger_until) in [
                            (Timing::Lingering, now + RECHECK),
                            (Timing::GraceRunning, now),
                            (Timing::GracePassed, now - GRACE),
                        ] {
                            let look = Look {
                                why,
                                queued,
                                held,
                                spawns,
                                linger_until,
                                stop_grace: GRACE,
                            };
                            v.push((timing, look));
                        }
                    }
                }
            }
        }
        v
    }

    /// The whole instance table, spelled out.
    fn expected_step(seen: &str, timing: Timing, look: &Look) -> Step {
        let reason = match look.why {
            Why::Reload => KillReason::Reload,
            Why::Stop | Why::StopNow => KillReason::Shutdown,
        };
        let stop = look.why != Why::Reload;
        match seen {
            "asked" => Step::None,
            _ if look.why == Why::StopNow => Step::Impossible(
                "an instance not asked to leave after a second stop signal killed all",
            ),
            "idle" | "busy" => Step::Drain(reason),
            "starting" if stop && (!look.queued || timing == Timing::GracePassed) => {
                Step::Stop(reason)
            }
            "starting" => Step::Wait,
            _ => Step::Stop(reason), // past the ready deadline
        }
    }

    #[test]
    fn every_instance_state_and_look() {
        let t = Instant::now();
        let now = t + READY_DEADLINE + GRACE;
        let states = [
            ("asked", Seen::Asked),
            ("idle", Seen::Idle),
            ("busy", Seen::Busy),
            ("starting", Seen::Starting { since: now }),
            ("late", Seen::Starting { since: t }),
        ];
        let mut pairs = 0;
        for (timing, look) in looks(now) {
            for (name, seen) in states {
                let want = expected_step(name, timing, &look);
                assert_eq!(
                    instance(seen, &look, now),
                    want,
                    "{name} x {timing:?} {look:?}"
                );
                pairs += 1;
            }
        }
        assert_eq!(pairs, 5 * 72);
    }

    /// The whole generation table, spelled out.
    fn expected_then(left: Left, timing: Timing, look: &Look, now: Instant) -> Then {
        match left {
            Left::Starting => return Then::Recheck(now + RECHECK),
            Left::Leaving => return Then::AwaitExits,
            Left::Nothing => {}
        }
        let served_by_next_charond = look.why != Why::Reload && look.held;
        match (look.queued && !served_by_next_charond, look.why) {
            (true, Why::StopNow) => Then::CloseQueue(now + RECHECK),
            (true, _) if look.spawns == MAX_DRAIN_SPAWNS => Then::CloseQueue(now + RECHECK),
            (true, _) => Then::Spawn(now + RECHECK),
            (false, _) if timing == Timing::Lingering => Then::Recheck(look.linger_until),
            (false, _) => Then::Free,
        }
    }

    #[test]
    fn every_leftover_and_look() {
        let now = Instant::now() + GRACE;
        let mut pairs = 0;
        for (timing, look) in looks(now) {
            for left in [Left::Nothing, Left::Leaving, Left::Starting] {
                let want = expected_then(left, timing, &look, now);
                assert_eq!(
                    after(left, &look, now),
                    want,
                    "{left:?} x {timing:?} {look:?}"
                );
                pairs += 1;
            }
        }
        assert_eq!(pairs, 3 * 72);
    }

    fn look(why: Why, queued: bool, now: Instant) -> Look {
        Look {
            why,
            queued,
            held: false,
            spawns: 0,
            linger_until: now,
            stop_grace: GRACE,
        }
    }

    #[test]
    fn a_reload_drains_what_is_up_and_waits_for_what_starts() {
        let now = Instant::now();
        let l = look(Why::Reload, false, now);
        let drain = Step::Drain(KillReason::Reload);
        assert_eq!(instance(Seen::Idle, &l, now), drain);
        assert_eq!(instance(Seen::Busy, &l, now), drain);
        assert_eq!(instance(Seen::Starting { since: now }, &l, now), Step::Wait);
        let late = now + READY_DEADLINE + RECHECK;
        assert_eq!(
            instance(Seen::Starting { since: now }, &l, late),
            Step::Stop(KillReason::Reload),
            "not up by the ready deadline: stopped"
        );
    }

    #[test]
    fn a_stop_waits_for_a_starting_instance_only_while_it_has_a_queue_and_grace() {
        let t = Instant::now();
        let starting = Seen::Starting { since: t };
        let stop = Step::Stop(KillReason::Shutdown);
        assert_eq!(instance(starting, &look(Why::Stop, false, t), t), stop);
        let queued = look(Why::Stop, true, t);
        assert_eq!(instance(starting, &queued, t), Step::Wait);
        assert_eq!(instance(starting, &queued, t + GRACE), stop);
    }

    #[test]
    fn a_leftover_queue_gets_three_instances_then_is_closed() {
        let now = Instant::now();
        let mut l = look(Why::Reload, true, now);
        for spawns in 0..MAX_DRAIN_SPAWNS {
            l.spawns = spawns;
            assert_eq!(after(Left::Nothing, &l, now), Then::Spawn(now + RECHECK));
        }
        l.spawns = MAX_DRAIN_SPAWNS;
        assert_eq!(
            after(Left::Nothing, &l, now),
            Then::CloseQueue(now + RECHECK)
        );
        // A second stop signal closes it at once; a graceful stop serves it.
        let now_ = look(Why::StopNow, true, now);
        assert_eq!(
            after(Left::Nothing, &now_, now),
            Then::CloseQueue(now + RECHECK)
        );
        let graceful = look(Why::Stop, true, now);
        assert_eq!(
            after(Left::Nothing, &graceful, now),
            Then::Spawn(now + RECHECK)
        );
    }

    #[test]
    fn a_socket_systemd_keeps_is_left_to_the_next_charond_only_at_a_stop() {
        let now = Instant::now();
        let mut l = look(Why::Stop, true, now);
        l.held = true;
        assert_eq!(after(Left::Nothing, &l, now), Then::Free);
        l.why = Why::Reload;
        assert_eq!(after(Left::Nothing, &l, now), Then::Spawn(now + RECHECK));
    }

    #[test]
    fn an_empty_generation_lingers_then_is_freed() {
        let now = Instant::now();
        let mut l = look(Why::Reload, false, now);
        l.linger_until = now + GRACE;
        assert_eq!(after(Left::Nothing, &l, now), Then::Recheck(now + GRACE));
        assert_eq!(after(Left::Nothing, &l, now + GRACE), Then::Free);
        assert_eq!(after(Left::Leaving, &l, now + GRACE), Then::AwaitExits);
        assert_eq!(after(Left::Starting, &l, now), Then::Recheck(now + RECHECK));
    }
}
