//! One instance's lifecycle as a pure automaton: `on_event(&mut Life,
//! Event, Instant) -> Actions`, one named handler per (state, event) pair,
//! like the service automaton in `service/transition.rs`. Each state
//! carries its own data (the start-up deadline, the retirement's reason and
//! replacement, the stop's reason and kill deadline); the loop sends the
//! signals the actions name and asks [`Life::deadline`] when to wake.
//!
//! Whether an exit is a *young* failure (evidence that the program cannot
//! run) or a *mature* one (about one request, or an outside event) is
//! decided here too ([`young`], from how far the instance got: [`Reached`]).

use std::time::{Duration, Instant};

use crate::service::state::{ExitClass, KillReason};

/// A clean exit sooner than this after the fork, with no request
/// completed, says the program cannot run.
pub(crate) const QUICK_EXIT: Duration = Duration::from_secs(1);

/// How a retiring instance's replacement is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// Not started yet (the per-service cap, or no free slot).
    Wanted,
    /// Started: the instance with this id.
    Started(usize),
    /// Could not be started: the retiree is stopped without one.
    Unavailable,
}

/// How a stopping instance was asked to leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum How {
    /// SIGTERM: finish the request in hand, then exit.
    Term,
    /// SIGUSR1: serve what is queued, then exit.
    Drain,
    /// SIGKILL.
    Kill,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// Forked; not yet seen ready (its slot still says *starting*). Killed
    /// at `ready_by` (`startup-timeout`).
    Starting { ready_by: Instant },
    /// Ready: serving, or waiting for a connection.
    Serving,
    /// To be replaced (request notice reached, over `maximum-rss`, `charon
    /// restart`); serves on meanwhile.
    Retiring {
        reason: KillReason,
        replacement: Replacement,
    },
    /// Asked to leave; its exit counts under `reason`. SIGKILL at
    /// `kill_at` if still alive (none once SIGKILL was sent).
    Stopping {
        reason: KillReason,
        how: How,
        kill_at: Option<Instant>,
    },
}

/// What happened to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Its slot was seen out of *starting*.
    Ready,
    /// Its start-up deadline passed while its slot still said *starting*.
    StartupOver,
    /// It should be replaced for this reason.
    Retire(KillReason),
    /// Its replacement was started (`Some(id)`) or could not be (`None`).
    ReplacementStarted(Option<usize>),
    /// Its replacement exited before taking over.
    ReplacementGone,
    /// Stop it: SIGTERM, SIGKILL after `grace`.
    Stop { reason: KillReason, grace: Duration },
    /// Drain it: SIGUSR1, SIGKILL after `grace`.
    Drain { reason: KillReason, grace: Duration },
    /// SIGKILL it now.
    Kill(KillReason),
    /// Its stop's grace period is over.
    GraceOver,
}

/// What the loop must do for an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Sigterm,
    Sigusr1,
    Sigkill,
    /// Log that it was not ready within `startup-timeout`.
    WarnNotReady,
    /// Log that it outlived its stop's grace period.
    WarnGraceOver,
    /// Log a pair that cannot happen (the state is left as it was).
    Impossible(&'static str),
}

/// Actions, none to two.
pub(crate) type Actions = Vec<Action>;

impl Life {
    /// A just-forked instance.
    pub(crate) const fn new(ready_by: Instant) -> Life {
        Life::Starting { ready_by }
    }

    /// The reason the manager asked it to leave, if it did: its exit is
    /// counted under it.
    #[must_use]
    pub(crate) const fn asked(&self) -> Option<KillReason> {
        match *self {
            Life::Stopping { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Leaving (retiring or stopping): no longer counted as capacity.
    #[must_use]
    pub(crate) const fn is_leaving(&self) -> bool {
        matches!(self, Life::Retiring { .. } | Life::Stopping { .. })
    }

    /// Why it is being replaced, if it is.
    #[must_use]
    pub(crate) const fn retiring(&self) -> Option<(KillReason, Replacement)> {
        match *self {
            Life::Retiring {
                reason,
                replacement,
            } => Some((reason, replacement)),
            _ => None,
        }
    }

    /// When the loop must next look at it (start-up or kill deadline).
    #[must_use]
    pub(crate) const fn deadline(&self) -> Option<Instant> {
        match *self {
            Life::Starting { ready_by } => Some(ready_by),
            Life::Stopping { kill_at, .. } => kill_at,
            Life::Serving | Life::Retiring { .. } => None,
        }
    }

    /// The name `charon ps` shows for a leaving instance.
    #[must_use]
    pub(crate) const fn leaving_name(&self) -> Option<&'static str> {
        match *self {
            Life::Retiring { .. } => Some("retiring"),
            Life::Stopping {
                how: How::Drain, ..
            } => Some("draining"),
            Life::Stopping { .. } => Some("stopping"),
            Life::Starting { .. } | Life::Serving => None,
        }
    }
}

/// Advances an instance's automaton.
pub(crate) fn on_event(life: &mut Life, ev: Event, now: Instant) -> Actions {
    match (*life, ev) {
        (Life::Starting { .. }, Event::Ready) => set(life, Life::Serving),
        (Life::Serving | Life::Retiring { .. } | Life::Stopping { .. }, Event::Ready) => Vec::new(),
        (Life::Starting { .. }, Event::StartupOver) => not_ready(life),
        (_, Event::StartupOver) => impossible("start-up deadline after start-up"),
        (Life::Starting { .. } | Life::Serving, Event::Retire(reason)) => set(
            life,
            Life::Retiring {
                reason,
                replacement: Replacement::Wanted,
            },
        ),
        // Already leaving: the first reason stands.
        (Life::Retiring { .. } | Life::Stopping { .. }, Event::Retire(_)) => Vec::new(),
        (Life::Retiring { reason, .. }, Event::ReplacementStarted(rep)) => set(
            life,
            Life::Retiring {
                reason,
                replacement: rep.map_or(Replacement::Unavailable, Replacement::Started),
            },
        ),
        (_, Event::ReplacementStarted(_)) => {
            impossible("a replacement for an instance not retiring")
        }
        (
            Life::Retiring {
                reason,
                replacement: Replacement::Started(_),
            },
            Event::ReplacementGone,
        ) => set(
            life,
            Life::Retiring {
                reason,
                replacement: Replacement::Wanted,
            },
        ),
        (_, Event::ReplacementGone) => impossible("its replacement gone, but none was started"),
        (Life::Stopping { .. }, Event::Stop { reason, grace })
            if reason == KillReason::Shutdown =>
        {
            // The manager stops: its reason wins, with a fresh grace.
            stop(life, reason, How::Term, now + grace)
        }
        (Life::Stopping { .. }, Event::Stop { .. } | Event::Drain { .. }) => Vec::new(),
        (_, Event::Stop { reason, grace }) => stop(life, reason, How::Term, now + grace),
        (_, Event::Drain { reason, grace }) => stop(life, reason, How::Drain, now + grace),
        (_, Event::Kill(reason)) => kill(life, reason, How::Kill, Vec::new()),
        (
            Life::Stopping {
                reason,
                how,
                kill_at: Some(_),
            },
            Event::GraceOver,
        ) => kill(life, reason, how, vec![Action::WarnGraceOver]),
        (_, Event::GraceOver) => impossible("grace over, but no stop was under way"),
    }
}

fn set(life: &mut Life, to: Life) -> Actions {
    *life = to;
    Vec::new()
}

fn stop(life: &mut Life, reason: KillReason, how: How, kill_at: Instant) -> Actions {
    *life = Life::Stopping {
        reason,
        how,
        kill_at: Some(kill_at),
    };
    vec![match how {
        How::Term => Action::Sigterm,
        How::Drain => Action::Sigusr1,
        How::Kill => Action::Sigkill,
    }]
}

/// Not ready by the start-up deadline: killed, with a warning.
fn not_ready(life: &mut Life) -> Actions {
    let warn = vec![Action::WarnNotReady];
    kill(life, KillReason::StartupTimeout, How::Kill, warn)
}

/// Stopping with no deadline left: `first`, then SIGKILL.
fn kill(life: &mut Life, reason: KillReason, how: How, mut first: Actions) -> Actions {
    *life = Life::Stopping {
        reason,
        how,
        kill_at: None,
    };
    first.push(Action::Sigkill);
    first
}

fn impossible(what: &'static str) -> Actions {
    vec![Action::Impossible(what)]
}

/// How far an instance got before it exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reached {
    /// Never ready: its slot still said *starting*.
    Nothing,
    /// Ready (waiting for its first connection, or serving it), but no
    /// request completed.
    Ready,
    /// Ready, no request completed, and it died with a first attempt in
    /// hand.
    InHand,
    /// Ready, no request completed, and it died with a retried request
    /// (attempt 2) in hand: that request has already cost another
    /// instance, so this death is the request's, not the program's.
    Retry,
    /// Completed at least one request.
    Served,
}

/// True if an exit of class `class`, by an instance that `reached` this
/// far and lived `age`, is a young one: evidence about the program rather
/// than about one request or an outside event. `proven`: an instance of
/// the same generation (program and config) has completed a request.
///
/// An instance that completed a request is never young, nor one that died
/// serving a retry: a request that killed the instance it first landed on
/// and then the one its retry landed on is a poison request, and the
/// second death says no more about the program than the first (when the
/// pool is small, that second instance is often a fresh replacement).
/// Nor is one that died with a first attempt in hand once the generation
/// is proven: the program has shown it can serve, so the death is that
/// request's (a spare the pool grew, or a recycled instance's replacement,
/// is as able to serve as an instance that has served).
/// Before that, every failure is young, but for two: a clean exit after
/// `QUICK_EXIT` (the program ran a while and left on its own), and SIGKILL
/// once ready.
/// SIGKILL is never a program's own fault (its faults raise SEGV, BUS, ILL,
/// FPE or ABRT); it comes from outside (an operator's `kill -9`, the OOM
/// killer, a hard CPU limit). Before ready it may still be about the
/// program (one that needs too much memory to start), so it counts; once
/// ready, the program has shown that it starts, and an outside kill says
/// nothing about whether it can run.
#[must_use]
pub(crate) fn young(class: ExitClass, reached: Reached, age: Duration, proven: bool) -> bool {
    match (reached, class) {
        (Reached::Served | Reached::Retry, _) => false,
        (Reached::InHand, _) if proven => false,
        (_, ExitClass::Clean) => age < QUICK_EXIT,
        (Reached::Ready | Reached::InHand, ExitClass::Crash(libc::SIGKILL)) => false,
        (Reached::Nothing | Reached::Ready | Reached::InHand, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn states(t: Instant) -> [Life; 7] {
        [
            Life::Starting {
                ready_by: t + GRACE,
            },
            Life::Serving,
            Life::Retiring {
                reason: KillReason::MaxRequests,
                replacement: Replacement::Wanted,
            },
            Life::Retiring {
                reason: KillReason::MaxRss,
                replacement: Replacement::Started(7),
            },
            Life::Stopping {
                reason: KillReason::Idle,
                how: How::Term,
                kill_at: Some(t + GRACE),
            },
            Life::Stopping {
                reason: KillReason::Reload,
                how: How::Drain,
                kill_at: Some(t + GRACE),
            },
            Life::Stopping {
                reason: KillReason::Unresponsive,
                how: How::Kill,
                kill_at: None,
            },
        ]
    }

    fn events() -> [Event; 11] {
        [
            Event::Ready,
            Event::StartupOver,
            Event::Retire(KillReason::Restart),
            Event::ReplacementStarted(Some(3)),
            Event::ReplacementStarted(None),
            Event::ReplacementGone,
            Event::Stop {
                reason: KillReason::Excess,
                grace: GRACE,
            },
            Event::Stop {
                reason: KillReason::Shutdown,
                grace: GRACE,
            },
            Event::Drain {
                reason: KillReason::Reload,
                grace: GRACE,
            },
            Event::Kill(KillReason::Unresponsive),
            Event::GraceOver,
        ]
    }

    /// What every (state, event) pair must do: the whole table, spelled
    /// out, so a change to one pair shows here.
    fn expected(from: Life, ev: Event, t: Instant) -> (Life, Actions) {
        use Action::*;
        let stopping = |reason, how, kill_at| Life::Stopping {
            reason,
            how,
            kill_at,
        };
        let leaving = from.is_leaving();
        match ev {
            Event::Ready => match from {
                Life::Starting { .. } => (Life::Serving, vec![]),
                _ => (from, vec![]),
            },
            Event::StartupOver => match from {
                Life::Starting { .. } => (
                    stopping(KillReason::StartupTimeout, How::Kill, None),
                    vec![WarnNotReady, Sigkill],
                ),
                _ => (from, vec![Impossible("start-up deadline after start-up")]),
            },
            Event::Retire(reason) if !leaving => (
                Life::Retiring {
                    reason,
                    replacement: Replacement::Wanted,
                },
                vec![],
            ),
            Event::Retire(_) => (from, vec![]),
            Event::ReplacementStarted(rep) => match from {
                Life::Retiring { reason, .. } => (
                    Life::Retiring {
                        reason,
                        replacement: rep.map_or(Replacement::Unavailable, Replacement::Started),
                    },
                    vec![],
                ),
                _ => (
                    from,
                    vec![Impossible("a replacement for an instance not retiring")],
                ),
            },
            Event::ReplacementGone => match from {
                Life::Retiring {
                    reason,
                    replacement: Replacement::Started(_),
                } => (
                    Life::Retiring {
                        reason,
                        replacement: Replacement::Wanted,
                    },
                    vec![],
                ),
                _ => (
                    from,
                    vec![Impossible("its replacement gone, but none was started")],
                ),
            },
            Event::Stop { reason, grace } => match from {
                Life::Stopping { .. } if reason != KillReason::Shutdown => (from, vec![]),
                _ => (stopping(reason, How::Term, Some(t + grace)), vec![Sigterm]),
            },
            Event::Drain { reason, grace } => match from {
                Life::Stopping { .. } => (from, vec![]),
                _ => (stopping(reason, How::Drain, Some(t + grace)), vec![Sigusr1]),
            },
            Event::Kill(reason) => (stopping(reason, How::Kill, None), vec![Sigkill]),
            Event::GraceOver => match from {
                Life::Stopping {
                    reason,
                    how,
                    kill_at: Some(_),
                } => (stopping(reason, how, None), vec![WarnGraceOver, Sigkill]),
                _ => (
                    from,
                    vec![Impossible("grace over, but no stop was under way")],
                ),
            },
        }
    }

    #[test]
    fn every_state_and_event_pair() {
        let t = Instant::now();
        let mut pairs = 0;
        for from in states(t) {
            for ev in events() {
                let mut life = from;
                let actions = on_event(&mut life, ev, t);
                let (want_life, want_actions) = expected(from, ev, t);
                assert_eq!(life, want_life, "{from:?} x {ev:?}");
                assert_eq!(actions, want_actions, "{from:?} x {ev:?}");
                // An impossible pair changes nothing.
                if actions.iter().any(|a| matches!(a, Action::Impossible(_))) {
                    assert_eq!(life, from, "{from:?} x {ev:?}");
                }
                pairs += 1;
            }
        }
        assert_eq!(pairs, 7 * 11);
    }

    #[test]
    fn a_life_from_fork_to_recycle() {
        let t = Instant::now();
        let mut life = Life::new(t + GRACE);
        assert_eq!(life.deadline(), Some(t + GRACE));
        assert!(!life.is_leaving());
        on_event(&mut life, Event::Ready, t);
        assert_eq!(life.deadline(), None);
        on_event(&mut life, Event::Retire(KillReason::MaxRequests), t);
        assert!(life.is_leaving());
        assert_eq!(life.asked(), None, "a retiree serves on");
        assert_eq!(life.leaving_name(), Some("retiring"));
        on_event(&mut life, Event::ReplacementStarted(Some(4)), t);
        assert_eq!(
            life.retiring(),
            Some((KillReason::MaxRequests, Replacement::Started(4)))
        );
        let a = on_event(
            &mut life,
            Event::Stop {
                reason: KillReason::MaxRequests,
                grace: GRACE,
            },
            t,
        );
        assert_eq!(a, [Action::Sigterm]);
        assert_eq!(life.asked(), Some(KillReason::MaxRequests));
        assert_eq!(life.deadline(), Some(t + GRACE));
        assert_eq!(
            on_event(&mut life, Event::GraceOver, t + GRACE),
            [Action::WarnGraceOver, Action::Sigkill]
        );
        assert_eq!(life.deadline(), None);
    }

    const ALL_REACHED: [Reached; 5] = [
        Reached::Nothing,
        Reached::Ready,
        Reached::InHand,
        Reached::Retry,
        Reached::Served,
    ];

    /// Every (reached, class, proven) triple, against the table in
    /// doc/charond.md ("Instance lifecycle").
    #[test]
    fn young_is_no_request_completed_and_for_a_clean_exit_a_quick_one() {
        let second = Duration::from_secs(1);
        for class in [
            ExitClass::Failed(1),
            ExitClass::LaunchFailure(15),
            ExitClass::Crash(libc::SIGSEGV),
            ExitClass::Crash(libc::SIGABRT),
            ExitClass::Killed(KillReason::StartupTimeout),
        ] {
            for proven in [false, true] {
                for reached in ALL_REACHED {
                    let expect = match reached {
                        Reached::Nothing | Reached::Ready => true,
                        Reached::InHand => !proven,
                        Reached::Retry | Reached::Served => false,
                    };
                    assert_eq!(
                        young(class, reached, second * 100, proven),
                        expect,
                        "{class:?} {reached:?} proven={proven}"
                    );
                }
            }
        }
        for proven in [false, true] {
            for reached in ALL_REACHED {
                let counts = match reached {
                    Reached::Nothing | Reached::Ready => true,
                    Reached::InHand => !proven,
                    Reached::Retry | Reached::Served => false,
                };
                let quick = young(ExitClass::Clean, reached, second / 2, proven);
                assert_eq!(quick, counts, "{reached:?} proven={proven}");
                assert!(!young(ExitClass::Clean, reached, second * 2, proven));
            }
        }
    }

    #[test]
    fn sigkill_is_young_only_before_ready() {
        let kill = ExitClass::Crash(libc::SIGKILL);
        for proven in [false, true] {
            for reached in ALL_REACHED {
                for age in [Duration::ZERO, Duration::from_secs(100)] {
                    assert_eq!(
                        young(kill, reached, age, proven),
                        reached == Reached::Nothing,
                        "{reached:?} proven={proven} {age:?}"
                    );
                }
            }
        }
    }
}
