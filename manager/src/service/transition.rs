//! The service automaton: `on_event(&mut ServiceState, Event, Instant) ->
//! Actions`, one named handler per (mode, event) pair. Pure: the event loop
//! performs the actions (forks, socket registration) and feeds back events.
//! Scaling between minimum and maximum is `calibrate.rs`'s job.

use std::time::{Duration, Instant};

use super::state::{Blame, ExitClass, Mode, ServiceState};

/// Why an instance is started (logged with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartWhy {
    Prestart,
    OnDemand,
    /// For an instance that died unasked: paced (`pacing.rs`).
    Replace,
    /// For an instance the manager stopped (recycled, drained, idle) or
    /// could not start for its own lack of resources: not paced.
    Refill,
    Trial,
    Grow,
    Recycle,
    /// To serve a draining generation's queued connections.
    Drain,
}

impl StartWhy {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            StartWhy::Prestart => "prestart",
            StartWhy::OnDemand => "on demand",
            StartWhy::Replace => "replacement",
            StartWhy::Refill => "refill",
            StartWhy::Trial => "trial after backoff",
            StartWhy::Grow => "grow",
            StartWhy::Recycle => "recycle",
            StartWhy::Drain => "drain the old generation's queue",
        }
    }
}

/// What happened to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The manager has started (or the service was just configured).
    Begin,
    /// A connection waits on the socket while no instance exists.
    Demand,
    /// An instance exited; `remaining` instances of the service are left.
    /// `young`: it had not completed a request (and, for a clean exit, it
    /// left within a second of starting): only a young exit is evidence
    /// that the program cannot run (see [`ExitClass::blame`]).
    Exited {
        class: ExitClass,
        remaining: u32,
        young: bool,
    },
    /// The backoff deadline passed.
    BackoffOver,
    /// The trial instance served a request or stayed up a while.
    Healthy,
    /// The manager is stopping.
    Shutdown,
    /// `charon restart`: the operator fixed what kept the service failing.
    /// The backoff and the crash-loop tally reset; a backoff in effect
    /// ends now (a trial starts).
    Restart,
    /// The manager's own resource failure kept instances from starting;
    /// its retry is due. `remaining` instances exist.
    Resume { remaining: u32 },
}

/// What the loop must do for a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start this many instances.
    Spawn { count: u32, why: StartWhy },
    /// Watch the socket for a first connect (on demand).
    WatchDemand,
    /// Accept and answer every connection with Unavailable.
    WatchFastFail,
    /// Stop watching the socket.
    Unwatch,
    /// Backoff entered for this long.
    BackoffEntered(Duration),
    /// The service is healthy again after a backoff.
    Recovered,
}

/// Actions, usually none or one or two.
pub(crate) type Actions = Vec<Action>;

/// Advances the automaton.
pub(crate) fn on_event(s: &mut ServiceState, ev: Event, now: Instant) -> Actions {
    match (s.mode, ev) {
        (Mode::Stopped, _) => Vec::new(),
        (_, Event::Shutdown) => shutdown(s),
        (Mode::Watching, Event::Begin) => begin(s),
        (Mode::Watching, Event::Demand) => demand(s),
        (Mode::Backoff { .. }, Event::Demand) => Vec::new(),
        (Mode::Backoff { .. }, Event::BackoffOver) => trial(s, now),
        (_, Event::Restart) => restart(s, now),
        (Mode::Trial { .. }, Event::Healthy) => recovered(s, 0),
        (
            Mode::Trial { .. },
            Event::Exited {
                class,
                remaining,
                young,
            },
        ) => trial_exited(s, class.blame(young), remaining, now),
        (
            Mode::Running | Mode::Watching,
            Event::Exited {
                class,
                remaining,
                young,
            },
        ) => exited(s, class, young, remaining, now),
        (Mode::Running | Mode::Watching, Event::Resume { remaining }) => {
            resume(s, remaining, StartWhy::Refill)
        }
        (Mode::Trial { .. }, Event::Resume { remaining: 0 }) => vec![Action::Spawn {
            count: 1,
            why: StartWhy::Trial,
        }],
        // A trial under way, or backoff: its own rules decide.
        (Mode::Trial { .. } | Mode::Backoff { .. }, Event::Resume { .. }) => Vec::new(),
        (Mode::Backoff { .. }, Event::Exited { remaining, .. }) => {
            if remaining == 0 {
                vec![Action::WatchFastFail]
            } else {
                Vec::new()
            }
        }
        // Can't happen: these events are only sent in the modes above.
        // Ignoring them keeps the state consistent.
        (Mode::Running | Mode::Trial { .. } | Mode::Backoff { .. }, Event::Begin)
        | (Mode::Running | Mode::Trial { .. }, Event::Demand)
        | (Mode::Watching | Mode::Running | Mode::Trial { .. }, Event::BackoffOver)
        | (Mode::Watching | Mode::Running | Mode::Backoff { .. }, Event::Healthy) => Vec::new(),
    }
}

fn shutdown(s: &mut ServiceState) -> Actions {
    s.mode = Mode::Stopped;
    vec![Action::Unwatch]
}

fn begin(s: &mut ServiceState) -> Actions {
    if s.prestart && s.minimum > 0 {
        s.mode = Mode::Running;
        vec![Action::Spawn {
            count: s.minimum,
            why: StartWhy::Prestart,
        }]
    } else {
        vec![Action::WatchDemand]
    }
}

fn demand(s: &mut ServiceState) -> Actions {
    s.demanded = true;
    s.mode = Mode::Running;
    vec![
        Action::Unwatch,
        Action::Spawn {
            count: s.minimum.max(1),
            why: StartWhy::OnDemand,
        },
    ]
}

fn trial(s: &mut ServiceState, now: Instant) -> Actions {
    s.mode = Mode::Trial { since: now };
    vec![
        Action::Unwatch,
        Action::Spawn {
            count: 1,
            why: StartWhy::Trial,
        },
    ]
}

fn restart(s: &mut ServiceState, now: Instant) -> Actions {
    s.backoff.reset();
    s.crashes.clear();
    if s.mode.is_backoff() {
        trial(s, now)
    } else {
        Vec::new()
    }
}

fn recovered(s: &mut ServiceState, remaining: u32) -> Actions {
    s.backoff.reset();
    s.mode = Mode::Running;
    let mut a = vec![Action::Recovered];
    // The trial instance is one of `remaining + 1`.
    let have = remaining + 1;
    if s.wanted() > have {
        a.push(Action::Spawn {
            count: s.wanted() - have,
            why: StartWhy::Replace,
        });
    }
    a
}

fn enter_backoff(s: &mut ServiceState, remaining: u32, now: Instant) -> Actions {
    let wait = s.backoff.next_wait();
    s.mode = Mode::Backoff {
        until: now + wait,
        wait,
    };
    let mut a = vec![Action::BackoffEntered(wait)];
    if remaining == 0 {
        a.push(Action::WatchFastFail);
    }
    a
}

/// After the manager's own resource failure, or an exit that says nothing
/// against the program: start what is still wanted, or watch for demand
/// again; never a reason for backoff.
fn resume(s: &mut ServiceState, remaining: u32, why: StartWhy) -> Actions {
    let wanted = s.wanted();
    if remaining < wanted {
        s.mode = Mode::Running;
        vec![Action::Spawn {
            count: wanted - remaining,
            why,
        }]
    } else if remaining == 0 {
        s.mode = Mode::Watching;
        vec![Action::WatchDemand]
    } else {
        Vec::new()
    }
}

/// An exit while running. Only young failures stop launches: a mature
/// instance's death (a poison request, an outside kill) is replaced, so one
/// bad process stays one bad process.
fn exited(
    s: &mut ServiceState,
    class: ExitClass,
    young: bool,
    remaining: u32,
    now: Instant,
) -> Actions {
    let why = if matches!(class, ExitClass::Killed(_)) {
        StartWhy::Refill
    } else {
        StartWhy::Replace
    };
    match class.blame(young) {
        Blame::CannotRun => enter_backoff(s, remaining, now),
        Blame::Crash if s.crashes.crash(now) => enter_backoff(s, remaining, now),
        Blame::Crash | Blame::None => resume(s, remaining, why),
    }
}

/// An exit during a trial: any young failure fails the trial (the backoff
/// doubles); any other exit leaves the trial running, or starts it again
/// if nothing is left.
fn trial_exited(s: &mut ServiceState, blame: Blame, remaining: u32, now: Instant) -> Actions {
    match blame {
        Blame::CannotRun | Blame::Crash => enter_backoff(s, remaining, now),
        Blame::None if remaining == 0 => vec![Action::Spawn {
            count: 1,
            why: StartWhy::Trial,
        }],
        Blame::None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::backoff::{Backoff, CrashTally};
    use super::super::state::KillReason;
    use super::*;

    fn state(min: u32, prestart: bool) -> ServiceState {
        ServiceState::new(
            min,
            prestart,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)),
            CrashTally::new(3, Duration::from_secs(10)),
        )
    }

    fn running(min: u32) -> ServiceState {
        let mut s = state(min, true);
        s.mode = Mode::Running;
        s
    }

    /// A mature instance's exit: it had served.
    fn exit(class: ExitClass, remaining: u32) -> Event {
        Event::Exited {
            class,
            remaining,
            young: false,
        }
    }

    /// A young instance's exit: it had not completed a request.
    fn young(class: ExitClass, remaining: u32) -> Event {
        Event::Exited {
            class,
            remaining,
            young: true,
        }
    }

    const ALL_EVENTS: [Event; 8] = [
        Event::Begin,
        Event::Demand,
        Event::Exited {
            class: ExitClass::Clean,
            remaining: 0,
            young: false,
        },
        Event::BackoffOver,
        Event::Healthy,
        Event::Shutdown,
        Event::Restart,
        Event::Resume { remaining: 0 },
    ];

    #[test]
    fn watching_begin_prestarts_or_watches() {
        let now = Instant::now();
        let mut s = state(3, true);
        assert_eq!(
            on_event(&mut s, Event::Begin, now),
            [Action::Spawn {
                count: 3,
                why: StartWhy::Prestart
            }]
        );
        assert_eq!(s.mode, Mode::Running);
        let mut s = state(3, false);
        assert_eq!(on_event(&mut s, Event::Begin, now), [Action::WatchDemand]);
        assert_eq!(s.mode, Mode::Watching);
    }

    #[test]
    fn watching_demand_starts_the_minimum() {
        let mut s = state(2, false);
        let a = on_event(&mut s, Event::Demand, Instant::now());
        assert_eq!(
            a,
            [
                Action::Unwatch,
                Action::Spawn {
                    count: 2,
                    why: StartWhy::OnDemand
                }
            ]
        );
        assert!(s.demanded);
        let mut s = state(0, false);
        let a = on_event(&mut s, Event::Demand, Instant::now());
        assert_eq!(
            a[1],
            Action::Spawn {
                count: 1,
                why: StartWhy::OnDemand
            }
        );
    }

    #[test]
    fn clean_exit_is_replaced_up_to_the_minimum() {
        let now = Instant::now();
        let mut s = running(2);
        assert_eq!(
            on_event(&mut s, exit(ExitClass::Clean, 0), now),
            [Action::Spawn {
                count: 2,
                why: StartWhy::Replace
            }]
        );
        let mut s = running(2);
        assert_eq!(on_event(&mut s, exit(ExitClass::Clean, 3), now), []);
        // On demand, never demanded, none left: watch again.
        let mut s = state(1, false);
        s.mode = Mode::Running;
        assert_eq!(
            on_event(&mut s, exit(ExitClass::Killed(KillReason::Idle), 0), now),
            [Action::WatchDemand]
        );
        assert_eq!(s.mode, Mode::Watching);
    }

    #[test]
    fn young_failures_enter_backoff_and_fast_fail_when_none_left() {
        let now = Instant::now();
        for class in [
            ExitClass::Failed(1),
            ExitClass::LaunchFailure(15),
            ExitClass::Killed(KillReason::StartupTimeout),
        ] {
            let mut s = running(1);
            let a = on_event(&mut s, young(class, 0), now);
            assert_eq!(
                a,
                [
                    Action::BackoffEntered(Duration::from_secs(1)),
                    Action::WatchFastFail
                ]
            );
            assert!(s.mode.is_backoff());
            let mut s = running(1);
            let a = on_event(&mut s, young(class, 2), now);
            assert_eq!(a, [Action::BackoffEntered(Duration::from_secs(1))]);
        }
    }

    #[test]
    fn launch_failures_and_startup_timeouts_are_young_whatever_the_flag() {
        let now = Instant::now();
        for class in [
            ExitClass::LaunchFailure(15),
            ExitClass::Killed(KillReason::StartupTimeout),
        ] {
            let mut s = running(1);
            assert!(on_event(&mut s, exit(class, 0), now)
                .contains(&Action::BackoffEntered(Duration::from_secs(1))));
        }
    }

    #[test]
    fn mature_deaths_are_replaced_and_never_back_off() {
        let now = Instant::now();
        let mut s = running(2);
        // However many: a mature instance's death is about one request or
        // an outside kill, not the program.
        for _ in 0..100 {
            for class in [
                ExitClass::Failed(1),
                ExitClass::Crash(9),
                ExitClass::Crash(11),
            ] {
                assert_eq!(
                    on_event(&mut s, exit(class, 1), now),
                    [Action::Spawn {
                        count: 1,
                        why: StartWhy::Replace
                    }]
                );
                assert_eq!(s.mode, Mode::Running);
            }
        }
        // One the manager stopped is refilled without pacing.
        assert_eq!(
            on_event(
                &mut s,
                exit(ExitClass::Killed(KillReason::MaxRequests), 1),
                now
            ),
            [Action::Spawn {
                count: 1,
                why: StartWhy::Refill
            }]
        );
        // Above the minimum nothing is owed (growth is calibrate's job).
        assert_eq!(on_event(&mut s, exit(ExitClass::Failed(1), 3), now), []);
        assert_eq!(s.backoff.entries, 0);
    }

    #[test]
    fn crashes_are_replaced_until_a_loop() {
        let now = Instant::now();
        let mut s = running(1);
        for _ in 0..2 {
            assert_eq!(
                on_event(&mut s, young(ExitClass::Crash(11), 0), now),
                [Action::Spawn {
                    count: 1,
                    why: StartWhy::Replace
                }]
            );
        }
        let a = on_event(&mut s, young(ExitClass::Crash(11), 0), now);
        assert_eq!(a[0], Action::BackoffEntered(Duration::from_secs(1)));
    }

    #[test]
    fn backoff_then_trial_then_recovery_resets() {
        let now = Instant::now();
        let mut s = running(2);
        on_event(&mut s, young(ExitClass::Failed(1), 0), now);
        // Demand during backoff: fast fail is the loop's job, no change.
        assert_eq!(on_event(&mut s, Event::Demand, now), []);
        assert_eq!(
            on_event(&mut s, Event::BackoffOver, now),
            [
                Action::Unwatch,
                Action::Spawn {
                    count: 1,
                    why: StartWhy::Trial
                }
            ]
        );
        assert!(matches!(s.mode, Mode::Trial { .. }));
        // The trial fails: the backoff doubles.
        assert_eq!(
            on_event(&mut s, young(ExitClass::Failed(1), 0), now)[0],
            Action::BackoffEntered(Duration::from_secs(2))
        );
        on_event(&mut s, Event::BackoffOver, now);
        let a = on_event(&mut s, Event::Healthy, now);
        assert_eq!(
            a,
            [
                Action::Recovered,
                Action::Spawn {
                    count: 1,
                    why: StartWhy::Replace
                }
            ]
        );
        assert_eq!(s.mode, Mode::Running);
        // Reset: the next failure waits the initial backoff again.
        assert_eq!(
            on_event(&mut s, young(ExitClass::Failed(1), 0), now)[0],
            Action::BackoffEntered(Duration::from_secs(1))
        );
    }

    #[test]
    fn quick_clean_exits_count_toward_the_crash_loop() {
        let now = Instant::now();
        let quick = young(ExitClass::Clean, 0);
        let mut s = running(1);
        for _ in 0..2 {
            assert_eq!(
                on_event(&mut s, quick, now),
                [Action::Spawn {
                    count: 1,
                    why: StartWhy::Replace
                }]
            );
        }
        assert_eq!(
            on_event(&mut s, quick, now)[0],
            Action::BackoffEntered(Duration::from_secs(1))
        );
        // A quick clean exit fails a trial.
        on_event(&mut s, Event::BackoffOver, now);
        assert_eq!(
            on_event(&mut s, quick, now)[0],
            Action::BackoffEntered(Duration::from_secs(2))
        );
        // Slow clean exits never do.
        let mut s = running(1);
        for _ in 0..10 {
            assert_eq!(on_event(&mut s, exit(ExitClass::Clean, 0), now).len(), 1);
        }
        assert_eq!(s.mode, Mode::Running);
    }

    #[test]
    fn trial_clean_exit_retries_the_trial() {
        let now = Instant::now();
        let mut s = running(1);
        s.mode = Mode::Trial { since: now };
        assert_eq!(
            on_event(&mut s, exit(ExitClass::Clean, 0), now),
            [Action::Spawn {
                count: 1,
                why: StartWhy::Trial
            }]
        );
        // An older instance leaving while the trial runs changes nothing.
        assert_eq!(on_event(&mut s, exit(ExitClass::Crash(9), 1), now), []);
        assert!(matches!(s.mode, Mode::Trial { .. }));
        assert_eq!(
            on_event(&mut s, young(ExitClass::Crash(9), 0), now)[0],
            Action::BackoffEntered(Duration::from_secs(1))
        );
    }

    #[test]
    fn exits_during_backoff_only_fast_fail_when_none_left() {
        let now = Instant::now();
        let mut s = running(1);
        s.mode = Mode::Backoff {
            until: now,
            wait: Duration::from_secs(1),
        };
        assert_eq!(on_event(&mut s, exit(ExitClass::Clean, 1), now), []);
        assert_eq!(
            on_event(&mut s, exit(ExitClass::Crash(9), 0), now),
            [Action::WatchFastFail]
        );
    }

    #[test]
    fn shutdown_from_every_mode_stops_everything() {
        let now = Instant::now();
        let modes = [
            Mode::Watching,
            Mode::Running,
            Mode::Backoff {
                until: now,
                wait: Duration::ZERO,
            },
            Mode::Trial { since: now },
        ];
        for m in modes {
            let mut s = running(1);
            s.mode = m;
            assert_eq!(on_event(&mut s, Event::Shutdown, now), [Action::Unwatch]);
            assert_eq!(s.mode, Mode::Stopped);
            for ev in ALL_EVENTS {
                assert_eq!(on_event(&mut s, ev, now), [], "{ev:?} after shutdown");
            }
        }
    }

    #[test]
    fn impossible_pairs_change_nothing() {
        let now = Instant::now();
        let cases = [
            (Mode::Running, Event::Begin),
            (Mode::Running, Event::Demand),
            (Mode::Running, Event::BackoffOver),
            (Mode::Running, Event::Healthy),
            (Mode::Watching, Event::BackoffOver),
            (Mode::Watching, Event::Healthy),
            (Mode::Trial { since: now }, Event::Begin),
            (Mode::Trial { since: now }, Event::Demand),
            (Mode::Trial { since: now }, Event::BackoffOver),
            (
                Mode::Backoff {
                    until: now,
                    wait: Duration::ZERO,
                },
                Event::Begin,
            ),
            (
                Mode::Backoff {
                    until: now,
                    wait: Duration::ZERO,
                },
                Event::Healthy,
            ),
        ];
        for (m, ev) in cases {
            let mut s = running(1);
            s.mode = m;
            assert_eq!(on_event(&mut s, ev, now), [], "{m:?} x {ev:?}");
            assert_eq!(s.mode, m);
        }
    }

    #[test]
    fn resume_starts_what_is_wanted_and_never_backs_off() {
        let now = Instant::now();
        // Running, 1 of 3 wanted: start 2.
        let mut s = running(3);
        assert_eq!(
            on_event(&mut s, Event::Resume { remaining: 1 }, now),
            [Action::Spawn {
                count: 2,
                why: StartWhy::Refill
            }]
        );
        assert_eq!(s.mode, Mode::Running);
        // Everything wanted is there: nothing.
        assert_eq!(on_event(&mut s, Event::Resume { remaining: 3 }, now), []);
        // On demand, never demanded, none left: watch again.
        let mut s = state(1, false);
        s.mode = Mode::Running;
        assert_eq!(
            on_event(&mut s, Event::Resume { remaining: 0 }, now),
            [Action::WatchDemand]
        );
        assert_eq!(s.mode, Mode::Watching);
        // Watching with a demand that failed to start: start the minimum.
        let mut s = state(2, false);
        s.demanded = true;
        assert_eq!(
            on_event(&mut s, Event::Resume { remaining: 0 }, now),
            [Action::Spawn {
                count: 2,
                why: StartWhy::Refill
            }]
        );
        // A trial that could not start: try it again; one running: wait.
        let mut s = running(1);
        s.mode = Mode::Trial { since: now };
        assert_eq!(
            on_event(&mut s, Event::Resume { remaining: 0 }, now),
            [Action::Spawn {
                count: 1,
                why: StartWhy::Trial
            }]
        );
        assert_eq!(on_event(&mut s, Event::Resume { remaining: 1 }, now), []);
        // Backoff keeps its own rules.
        let backoff = Mode::Backoff {
            until: now,
            wait: Duration::ZERO,
        };
        let mut s = running(1);
        s.mode = backoff;
        assert_eq!(on_event(&mut s, Event::Resume { remaining: 0 }, now), []);
        assert_eq!(s.mode, backoff);
    }

    #[test]
    fn restart_in_backoff_starts_a_trial_and_forgets_the_failures() {
        let now = Instant::now();
        let mut s = running(1);
        // Two backoffs: the next wait would be 4 s.
        on_event(&mut s, young(ExitClass::Failed(1), 0), now);
        on_event(&mut s, Event::BackoffOver, now);
        on_event(&mut s, young(ExitClass::Failed(1), 0), now);
        assert!(s.mode.is_backoff());
        assert_eq!(
            on_event(&mut s, Event::Restart, now),
            [
                Action::Unwatch,
                Action::Spawn {
                    count: 1,
                    why: StartWhy::Trial
                }
            ]
        );
        assert_eq!(s.mode, Mode::Trial { since: now });
        // The trial fails: the backoff starts from its initial wait again.
        assert_eq!(
            on_event(&mut s, young(ExitClass::Failed(1), 0), now)[0],
            Action::BackoffEntered(Duration::from_secs(1))
        );
    }

    #[test]
    fn restart_elsewhere_resets_the_tallies_and_keeps_the_mode() {
        let now = Instant::now();
        for m in [Mode::Watching, Mode::Running, Mode::Trial { since: now }] {
            let mut s = running(1);
            s.mode = Mode::Running;
            // Two young crashes of three: one more would be a crash loop.
            on_event(&mut s, young(ExitClass::Crash(11), 1), now);
            on_event(&mut s, young(ExitClass::Crash(11), 1), now);
            s.backoff.next_wait();
            s.mode = m;
            assert_eq!(on_event(&mut s, Event::Restart, now), [], "{m:?}");
            assert_eq!(s.mode, m);
            // The tally starts afresh: two more crashes are no loop.
            s.mode = Mode::Running;
            for _ in 0..2 {
                assert_eq!(
                    on_event(&mut s, young(ExitClass::Crash(11), 1), now),
                    [],
                    "{m:?}"
                );
            }
            // The backoff was reset too: the loop waits the initial time.
            assert_eq!(
                on_event(&mut s, young(ExitClass::Crash(11), 1), now)[0],
                Action::BackoffEntered(Duration::from_secs(1)),
                "{m:?}"
            );
        }
    }
}
