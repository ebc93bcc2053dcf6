//! A service generation's template (`template = true`) as a pure
//! automaton: `on_event(&mut Phase, Event, Instant) -> Actions`, like an
//! instance's life in `instance.rs`. A template is the program started
//! once with `CHARON_TEMPLATE` set; once READY it forks the generation's
//! instances on command (PROTOCOL.md section 10.4). Nothing ever waits on
//! it: a start it cannot take is done by exec, so its troubles are logged
//! and never counted against the service.
//!
//! The policy here: a template not READY within `startup-timeout` is
//! killed; one that dies is restarted after [`RESTART_PACE`]; one that
//! fails before READY [`GIVE_UP_AFTER`] times in a row, or says it cannot
//! be forked, is given up on for the generation (exec serves); a stopping
//! generation's template gets SIGTERM, then SIGKILL after `stop-grace`.
//! Which starts go to it, and the process, pipes and pending starts, are
//! the loop's (`runtime/template.rs`).

use std::time::{Duration, Instant};

/// The least time between a template's death and its next start.
pub(crate) const RESTART_PACE: Duration = Duration::from_secs(1);
/// Failures before READY, in a row, after which the generation does
/// without a template.
pub(crate) const GIVE_UP_AFTER: u32 = 2;

/// Where a generation's template is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No process: start one at `restart_at`. `fails` counts failures
    /// before READY in a row.
    Down { restart_at: Instant, fails: u32 },
    /// Started, not READY yet: killed at `ready_by`.
    Starting { ready_by: Instant, fails: u32 },
    /// Takes starts.
    Ready,
    /// Killed or hung up, its reaping awaited; `failed` if that counts as
    /// a failure before READY.
    Dying { failed: bool, fails: u32 },
    /// Its generation is going: SIGTERM sent, SIGKILL at `kill_at` (none
    /// once sent). Not restarted.
    Stopping { kill_at: Option<Instant> },
    /// Not used for this generation: given up on, or stopped and reaped.
    Off,
}

/// What happened to a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Its process was started, READY due within `timeout`.
    Launched { timeout: Duration },
    /// Its process could not be started.
    LaunchFailed,
    /// It said READY.
    Ready,
    /// It said it cannot be forked (it runs threads).
    NotForkable,
    /// Its READY deadline passed.
    StartupOver,
    /// A start it took was not answered in time.
    Stuck,
    /// Its control channel hung up or carried garbage.
    HungUp,
    /// It was reaped.
    Gone,
    /// Its generation is going: stop it, SIGKILL after `grace`.
    Stop { grace: Duration },
    /// Its stop's grace is over.
    GraceOver,
}

/// What the loop must do for a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Sigterm,
    Sigkill,
    /// Start by exec every start it has not answered.
    ExecPending,
    /// Log why it is killed or given up on.
    Warn(&'static str),
    /// Log a pair that cannot happen (the phase is left as it was).
    Impossible(&'static str),
}

/// Actions, none to three.
pub(crate) type Actions = Vec<Action>;

impl Phase {
    /// A generation's template before its first start: due at once.
    pub(crate) const fn new(now: Instant) -> Phase {
        Phase::Down {
            restart_at: now,
            fails: 0,
        }
    }

    /// It takes starts.
    #[must_use]
    pub(crate) const fn is_ready(&self) -> bool {
        matches!(self, Phase::Ready)
    }

    /// When the loop must next look at it.
    #[must_use]
    pub(crate) const fn deadline(&self) -> Option<Instant> {
        match *self {
            Phase::Down { restart_at, .. } => Some(restart_at),
            Phase::Starting { ready_by, .. } => Some(ready_by),
            Phase::Stopping { kill_at } => kill_at,
            Phase::Ready | Phase::Dying { .. } | Phase::Off => None,
        }
    }
}

/// Advances a template's automaton.
pub(crate) fn on_event(phase: &mut Phase, ev: Event, now: Instant) -> Actions {
    use Phase::*;
    match (*phase, ev) {
        (Down { fails, .. }, Event::Launched { timeout }) => set(
            phase,
            Starting {
                ready_by: now + timeout,
                fails,
            },
        ),
        (Down { fails, .. }, Event::LaunchFailed) => failed(phase, fails, now),
        (Starting { .. }, Event::Ready) => set(phase, Ready),
        (Starting { .. }, Event::NotForkable) => {
            *phase = Off;
            vec![Action::Warn("it cannot be forked")]
        }
        (Starting { fails, .. }, Event::StartupOver) => {
            *phase = Dying {
                failed: true,
                fails,
            };
            vec![
                Action::Sigkill,
                Action::Warn("not ready within startup-timeout"),
            ]
        }
        (Starting { fails, .. }, Event::HungUp) => {
            *phase = Dying {
                failed: true,
                fails,
            };
            vec![Action::Sigkill]
        }
        (Starting { fails, .. }, Event::Gone) => {
            let mut a = vec![Action::ExecPending];
            a.extend(failed(phase, fails, now));
            a
        }
        (Ready, Event::Stuck) => {
            *phase = Dying {
                failed: false,
                fails: 0,
            };
            vec![
                Action::ExecPending,
                Action::Sigkill,
                Action::Warn("a start went unanswered within startup-timeout"),
            ]
        }
        (Ready, Event::HungUp) => {
            *phase = Dying {
                failed: false,
                fails: 0,
            };
            vec![Action::ExecPending, Action::Sigkill]
        }
        (Ready, Event::Gone) => {
            *phase = Down {
                restart_at: now + RESTART_PACE,
                fails: 0,
            };
            vec![Action::ExecPending]
        }
        (
            Dying {
                failed: true,
                fails,
            },
            Event::Gone,
        ) => {
            let mut a = vec![Action::ExecPending];
            a.extend(failed(phase, fails, now));
            a
        }
        (
            Dying {
                failed: false,
                fails,
            },
            Event::Gone,
        ) => {
            *phase = Down {
                restart_at: now + RESTART_PACE,
                fails,
            };
            vec![Action::ExecPending]
        }
        (Starting { .. } | Ready | Dying { .. }, Event::Stop { grace }) => {
            *phase = Stopping {
                kill_at: Some(now + grace),
            };
            vec![Action::Sigterm]
        }
        (Down { .. }, Event::Stop { .. }) => set(phase, Off),
        (Stopping { .. } | Off, Event::Stop { .. }) => Vec::new(),
        (Stopping { kill_at: Some(_) }, Event::GraceOver) => {
            *phase = Stopping { kill_at: None };
            vec![
                Action::Sigkill,
                Action::Warn("still running after stop-grace"),
            ]
        }
        (Stopping { .. }, Event::Gone) => {
            *phase = Off;
            vec![Action::ExecPending]
        }
        // A template that exits after saying it cannot be forked, or
        // whose channel closes as it goes.
        (Off, Event::Gone | Event::HungUp) | (Stopping { .. } | Dying { .. }, Event::HungUp) => {
            vec![Action::ExecPending]
        }
        // Late words from a template already on its way out.
        (
            Dying { .. } | Stopping { .. } | Off,
            Event::Ready | Event::NotForkable | Event::Stuck,
        ) => Vec::new(),
        (Ready, Event::NotForkable) => impossible("not forkable after ready"),
        (Ready, Event::Ready) => impossible("ready twice"),
        (Down { .. }, Event::Ready | Event::NotForkable | Event::Stuck | Event::HungUp) => {
            impossible("a message from a template not running")
        }
        (Down { .. }, Event::Gone) => impossible("a template reaped twice"),
        (Starting { .. }, Event::Stuck) => impossible("a start sent before ready"),
        (_, Event::Launched { .. } | Event::LaunchFailed) => {
            impossible("a template started while one runs")
        }
        (_, Event::StartupOver) => impossible("a ready deadline after start-up"),
        (_, Event::GraceOver) => impossible("a stop's grace with no stop"),
    }
}

/// A failure before READY: restart after the pace, or give up after
/// [`GIVE_UP_AFTER`] in a row.
fn failed(phase: &mut Phase, fails: u32, now: Instant) -> Actions {
    let fails = fails + 1;
    if fails >= GIVE_UP_AFTER {
        *phase = Phase::Off;
        return vec![Action::Warn(
            "it failed before ready twice in a row; instances are started by exec",
        )];
    }
    *phase = Phase::Down {
        restart_at: now + RESTART_PACE,
        fails,
    };
    Vec::new()
}

fn set(phase: &mut Phase, to: Phase) -> Actions {
    *phase = to;
    Vec::new()
}

fn impossible(what: &'static str) -> Actions {
    vec![Action::Impossible(what)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn phases(t: Instant) -> Vec<Phase> {
        vec![
            Phase::Down {
                restart_at: t,
                fails: 0,
            },
            Phase::Down {
                restart_at: t,
                fails: 1,
            },
            Phase::Starting {
                ready_by: t,
                fails: 0,
            },
            Phase::Starting {
                ready_by: t,
                fails: 1,
            },
            Phase::Ready,
            Phase::Dying {
                failed: true,
                fails: 0,
            },
            Phase::Dying {
                failed: true,
                fails: 1,
            },
            Phase::Dying {
                failed: false,
                fails: 0,
            },
            Phase::Stopping { kill_at: Some(t) },
            Phase::Stopping { kill_at: None },
            Phase::Off,
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Launched { timeout: GRACE },
            Event::LaunchFailed,
            Event::Ready,
            Event::NotForkable,
            Event::StartupOver,
            Event::Stuck,
            Event::HungUp,
            Event::Gone,
            Event::Stop { grace: GRACE },
            Event::GraceOver,
        ]
    }

    /// The expected outcome of every pair, written out apart from the
    /// automaton.
    fn expected(from: Phase, ev: Event, t: Instant) -> (Phase, Actions) {
        use Phase::*;
        let restart = |fails| Down {
            restart_at: t + RESTART_PACE,
            fails,
        };
        let give_up =
            || Warn("it failed before ready twice in a row; instances are started by exec");
        let fail = |fails: u32| {
            if fails + 1 >= GIVE_UP_AFTER {
                (Off, vec![ExecPending, give_up()])
            } else {
                (restart(fails + 1), vec![ExecPending])
            }
        };
        let same = |a: Actions| (from, a);
        match (from, ev) {
            (Down { fails, .. }, Event::Launched { .. }) => (
                Starting {
                    ready_by: t + GRACE,
                    fails,
                },
                vec![],
            ),
            (Down { fails: 0, .. }, Event::LaunchFailed) => (restart(1), vec![]),
            (Down { .. }, Event::LaunchFailed) => (Off, vec![give_up()]),
            (Down { .. }, Event::Gone) => same(vec![Impossible("a template reaped twice")]),
            (Down { .. }, Event::Stop { .. }) => (Off, vec![]),
            (Down { .. }, Event::StartupOver) => {
                same(vec![Impossible("a ready deadline after start-up")])
            }
            (Down { .. }, Event::GraceOver) => {
                same(vec![Impossible("a stop's grace with no stop")])
            }
            (Down { .. }, _) => same(vec![Impossible("a message from a template not running")]),
            (Starting { fails, .. }, Event::Ready) => {
                let _ = fails;
                (Ready, vec![])
            }
            (Starting { .. }, Event::NotForkable) => (Off, vec![Warn("it cannot be forked")]),
            (Starting { fails, .. }, Event::StartupOver) => (
                Dying {
                    failed: true,
                    fails,
                },
                vec![Sigkill, Warn("not ready within startup-timeout")],
            ),
            (Starting { fails, .. }, Event::HungUp) => (
                Dying {
                    failed: true,
                    fails,
                },
                vec![Sigkill],
            ),
            (Starting { fails, .. }, Event::Gone) => fail(fails),
            (Starting { .. }, Event::Stuck) => same(vec![Impossible("a start sent before ready")]),
            (Starting { .. } | Ready | Dying { .. }, Event::Stop { grace }) => (
                Stopping {
                    kill_at: Some(t + grace),
                },
                vec![Sigterm],
            ),
            (Ready, Event::Stuck) => (
                Dying {
                    failed: false,
                    fails: 0,
                },
                vec![
                    ExecPending,
                    Sigkill,
                    Warn("a start went unanswered within startup-timeout"),
                ],
            ),
            (Ready, Event::HungUp) => (
                Dying {
                    failed: false,
                    fails: 0,
                },
                vec![ExecPending, Sigkill],
            ),
            (Ready, Event::Gone) => (restart(0), vec![ExecPending]),
            (Ready, Event::NotForkable) => same(vec![Impossible("not forkable after ready")]),
            (Ready, Event::Ready) => same(vec![Impossible("ready twice")]),
            (
                Dying {
                    failed: true,
                    fails,
                },
                Event::Gone,
            ) => fail(fails),
            (
                Dying {
                    failed: false,
                    fails,
                },
                Event::Gone,
            ) => (restart(fails), vec![ExecPending]),
            (Dying { .. } | Stopping { .. } | Off, Event::HungUp) => same(vec![ExecPending]),
            (
                Dying { .. } | Stopping { .. } | Off,
                Event::Ready | Event::NotForkable | Event::Stuck,
            ) => same(vec![]),
            (Stopping { kill_at: Some(_) }, Event::GraceOver) => (
                Stopping { kill_at: None },
                vec![Sigkill, Warn("still running after stop-grace")],
            ),
            (Stopping { .. }, Event::Gone) => (Off, vec![ExecPending]),
            (Off, Event::Gone) => same(vec![ExecPending]),
            (Stopping { .. } | Off, Event::Stop { .. }) => same(vec![]),
            (_, Event::Launched { .. } | Event::LaunchFailed) => {
                same(vec![Impossible("a template started while one runs")])
            }
            (_, Event::StartupOver) => same(vec![Impossible("a ready deadline after start-up")]),
            (_, Event::GraceOver) => same(vec![Impossible("a stop's grace with no stop")]),
        }
    }

    #[test]
    fn every_phase_and_event_pair() {
        let t = Instant::now();
        let mut pairs = 0;
        for from in phases(t) {
            for ev in events() {
                let mut phase = from;
                let actions = on_event(&mut phase, ev, t);
                let (want_phase, want_actions) = expected(from, ev, t);
                assert_eq!(phase, want_phase, "{from:?} x {ev:?}");
                assert_eq!(actions, want_actions, "{from:?} x {ev:?}");
                if actions.iter().any(|a| matches!(a, Impossible(_))) {
                    assert_eq!(phase, from, "{from:?} x {ev:?}");
                }
                pairs += 1;
            }
        }
        assert_eq!(pairs, 11 * 10);
    }

    #[test]
    fn a_template_that_keeps_failing_before_ready_is_given_up_but_a_ready_one_restarts() {
        let t = Instant::now();
        let mut p = Phase::new(t);
        assert_eq!(p.deadline(), Some(t));
        on_event(&mut p, Event::Launched { timeout: GRACE }, t);
        assert_eq!(p.deadline(), Some(t + GRACE));
        on_event(&mut p, Event::Ready, t);
        assert!(p.is_ready());
        // Killed from outside once ready: back after the pace, the tally
        // clean.
        assert_eq!(on_event(&mut p, Event::Gone, t), [ExecPending]);
        assert_eq!(p.deadline(), Some(t + RESTART_PACE));
        on_event(&mut p, Event::Launched { timeout: GRACE }, t);
        on_event(&mut p, Event::StartupOver, t);
        on_event(&mut p, Event::Gone, t);
        assert!(matches!(p, Phase::Down { fails: 1, .. }), "{p:?}");
        on_event(&mut p, Event::Launched { timeout: GRACE }, t);
        let a = on_event(&mut p, Event::Gone, t);
        assert_eq!(p, Phase::Off, "two failures before ready in a row");
        assert!(a.contains(&ExecPending));
        assert_eq!(p.deadline(), None);
    }
}
