//! A service generation's life as a pure automaton: a reload's new
//! generation comes up *pending* at a temporary socket name, becomes *live*
//! once its instances are ready (its socket renamed over the key's path),
//! and the generation it replaced, or one that failed to come up, or one
//! whose file was removed, *drains* until it is freed. `on_event(&mut Gen,
//! Event, Instant) -> Action`; the loop gathers what a look needs
//! ([`Look`]) and carries out the action (`reload.rs`, `runtime/drain.rs`).

use std::time::{Duration, Instant};

/// A new generation must be ready within this, or the reload of its key
/// fails and the old generation keeps serving.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(20);
/// While instances of a pending or draining generation start, look again
/// this often.
pub(crate) const RECHECK: Duration = Duration::from_millis(20);

/// Where a generation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gen {
    /// Serving the key's socket path.
    Live,
    /// Coming up at a temporary socket name; must be ready by `deadline`.
    Pending { deadline: Instant },
    /// Replaced or removed: serving what is left, then freed.
    Draining { linger_until: Instant },
}

impl Gen {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Gen::Live => "live",
            Gen::Pending { .. } => "pending",
            Gen::Draining { .. } => "draining",
        }
    }
}

/// What the loop saw of a pending generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Look {
    /// The manager is stopping: nothing is renamed into place any more.
    pub stopping: bool,
    /// One of its instances left before it was ready: why.
    pub failure: Option<String>,
    /// It went into backoff: the last exit's reason.
    pub backoff: Option<String>,
    /// Every wanted instance is up and waiting.
    pub ready: bool,
}

/// What happened to a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Its deadline or re-check came: here is what the loop saw.
    Look(Look),
    /// Its socket was renamed over the key's path: it serves now.
    Promoted,
    /// It stops serving the key's path (replaced, removed, the manager
    /// stopping, or it failed to come up): it drains, its socket kept open
    /// until `linger_until`.
    Drain { linger_until: Instant },
}

/// What the loop must do for a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing now.
    None,
    /// Look again at this time.
    Recheck(Instant),
    /// Rename its socket into place (then send [`Event::Promoted`]).
    Promote,
    /// It cannot take over: say why, stop its instances, drain it.
    Fail(String),
    /// Advance its draining (`runtime/drain.rs`), lingering until this time.
    DrainStep(Instant),
    /// A pair that cannot happen (the state is left as it was).
    Impossible(&'static str),
}

/// Advances a generation's automaton.
pub(crate) fn on_event(gen: &mut Gen, ev: Event, now: Instant) -> Action {
    match (*gen, ev) {
        (Gen::Live, Event::Look(_)) => Action::None,
        (Gen::Pending { deadline }, Event::Look(look)) => pending_look(deadline, look, now),
        (Gen::Draining { linger_until }, Event::Look(_)) => Action::DrainStep(linger_until),
        (Gen::Pending { .. }, Event::Promoted) => {
            *gen = Gen::Live;
            Action::None
        }
        (Gen::Live | Gen::Draining { .. }, Event::Promoted) => {
            Action::Impossible("promoted, but it was not pending")
        }
        (Gen::Live | Gen::Pending { .. }, Event::Drain { linger_until }) => {
            *gen = Gen::Draining { linger_until };
            Action::DrainStep(linger_until)
        }
        (Gen::Draining { .. }, Event::Drain { .. }) => Action::Impossible("drained twice"),
    }
}

fn pending_look(deadline: Instant, look: Look, now: Instant) -> Action {
    if look.stopping {
        // Its socket is already removed and its instances told to stop; it
        // must not be renamed into place.
        Action::None
    } else if let Some(why) = look.failure {
        Action::Fail(why)
    } else if let Some(reason) = look.backoff {
        Action::Fail(format!("the new generation could not start: {reason}"))
    } else if now >= deadline {
        Action::Fail(format!(
            "the new generation was not ready within {}s",
            READY_DEADLINE.as_secs()
        ))
    } else if look.ready {
        Action::Promote
    } else {
        Action::Recheck(now + RECHECK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks() -> [(&'static str, Look); 5] {
        [
            (
                "stopping",
                Look {
                    stopping: true,
                    failure: Some("gone".into()),
                    ready: true,
                    ..Look::default()
                },
            ),
            (
                "failure",
                Look {
                    failure: Some("exit 1 before it was ready".into()),
                    backoff: Some("ignored".into()),
                    ready: true,
                    ..Look::default()
                },
            ),
            (
                "backoff",
                Look {
                    backoff: Some("exit 2 (nonzero)".into()),
                    ready: true,
                    ..Look::default()
                },
            ),
            (
                "ready",
                Look {
                    ready: true,
                    ..Look::default()
                },
            ),
            ("starting", Look::default()),
        ]
    }

    #[test]
    fn every_state_and_event_pair() {
        let t = Instant::now();
        let later = t + Duration::from_secs(1);
        let states = [
            Gen::Live,
            Gen::Pending {
                deadline: t + READY_DEADLINE,
            },
            Gen::Draining {
                linger_until: later,
            },
        ];
        for from in states {
            // Looks.
            for (name, look) in looks() {
                let mut g = from;
                let a = on_event(&mut g, Event::Look(look), t);
                assert_eq!(g, from, "a look changes no state: {from:?} x {name}");
                let want = match (from, name) {
                    (Gen::Live, _) => Action::None,
                    (Gen::Draining { .. }, _) => Action::DrainStep(later),
                    (_, "stopping") => Action::None,
                    (_, "failure") => Action::Fail("exit 1 before it was ready".into()),
                    (_, "backoff") => {
                        Action::Fail("the new generation could not start: exit 2 (nonzero)".into())
                    }
                    (_, "ready") => Action::Promote,
                    _ => Action::Recheck(t + RECHECK),
                };
                assert_eq!(a, want, "{from:?} x {name}");
            }
            // Promoted.
            let mut g = from;
            let a = on_event(&mut g, Event::Promoted, t);
            match from {
                Gen::Pending { .. } => assert_eq!((g, a), (Gen::Live, Action::None)),
                _ => {
                    assert_eq!(g, from);
                    assert!(matches!(a, Action::Impossible(_)), "{from:?}");
                }
            }
            // Drain.
            let mut g = from;
            let a = on_event(
                &mut g,
                Event::Drain {
                    linger_until: later,
                },
                t,
            );
            match from {
                Gen::Draining { .. } => {
                    assert_eq!(g, from);
                    assert!(matches!(a, Action::Impossible(_)));
                }
                _ => assert_eq!(
                    (g, a),
                    (
                        Gen::Draining {
                            linger_until: later
                        },
                        Action::DrainStep(later)
                    )
                ),
            }
        }
    }

    #[test]
    fn a_pending_generation_not_ready_by_its_deadline_fails() {
        let t = Instant::now();
        let mut g = Gen::Pending { deadline: t };
        assert_eq!(
            on_event(&mut g, Event::Look(Look::default()), t),
            Action::Fail("the new generation was not ready within 20s".into())
        );
        // Ready in time wins over a deadline not yet passed.
        let mut g = Gen::Pending {
            deadline: t + RECHECK,
        };
        let ready = Look {
            ready: true,
            ..Look::default()
        };
        assert_eq!(on_event(&mut g, Event::Look(ready), t), Action::Promote);
    }
}
