//! Scaling decisions: a pure `(limits, instance views, why) -> Decision`
//! with no syscalls, so that its rules can be property-tested. Growing is
//! driven by saturation hints while connections wait; shrinking by
//! `idle-timeout` and by occupancy (busy time over wall time) with a
//! hysteresis margin. Recycling is timed here too: [`retire_notice`] says
//! when an instance should announce its coming retirement so that its
//! replacement is ready when it leaves. The loop gathers the views and
//! carries out the decision.

use std::time::Duration;

use charon_protocol::scoreboard::SlotState;

use crate::service::state::KillReason;

/// Most instances started for one saturation hint (fork-storm guard; the
/// loop also rate-limits hints).
pub(crate) const MAX_BURST: u32 = 16;
/// Occupancy points below the target before an instance counts as excess.
pub(crate) const HYSTERESIS_PERCENT: f64 = 15.0;
/// An instance idle for less than this is never stopped as excess.
pub(crate) const EXCESS_MIN_IDLE: Duration = Duration::from_secs(2);

/// The configured bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub minimum: u32,
    pub maximum: u32,
    pub occupancy_percent: u8,
    pub idle_timeout: Duration,
}

/// What the loop knows of one instance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    /// The loop's handle for it.
    pub id: usize,
    /// Scoreboard state (`None`: garbage in the slot).
    pub state: Option<SlotState>,
    /// Already being stopped or replaced: not capacity any more.
    pub leaving: bool,
    /// Time since it last served or started.
    pub idle_for: Duration,
    /// Busy fraction (0..=1) over the last measuring window.
    pub busy: f64,
}

/// Why the decision is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The periodic tick.
    Tick,
    /// An instance said every instance is busy (or the loop re-checks);
    /// `waiting` connections wait in the socket's queue, an exact count if
    /// `exact`, else "at least this many".
    Saturated { waiting: u32, exact: bool },
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Nothing,
    Start(u32),
    Stop(usize, KillReason),
}

/// Decides.
pub(crate) fn decide(l: &Limits, views: &[View], why: Why) -> Decision {
    let live: Vec<&View> = views.iter().filter(|v| !v.leaving).collect();
    let n = live.len() as u32;
    match why {
        Why::Saturated { waiting: 0, .. } => Decision::Nothing,
        Why::Saturated { waiting, exact } => {
            if n >= l.maximum {
                return Decision::Nothing;
            }
            // Instances starting, or idle and about to accept, will take
            // waiting clients too.
            let coming = live
                .iter()
                .filter(|v| matches!(v.state, Some(SlotState::Starting | SlotState::Idle)))
                .count() as u32;
            // One per waiting client when the count is known, else double;
            // less what is coming; then capped by the maximum and the burst
            // guard. (Capping before subtracting lost clients: 7 waiting, 6
            // starting, room for 1 gave min(7, 1) - 6 = nothing, and the
            // seventh waited for a whole request to finish.)
            let want = if exact { waiting } else { n.max(1) };
            match want
                .saturating_sub(coming)
                .min(l.maximum - n)
                .min(MAX_BURST)
            {
                0 => Decision::Nothing,
                k => Decision::Start(k),
            }
        }
        Why::Tick => shrink(l, &live),
    }
}

fn shrink(l: &Limits, live: &[&View]) -> Decision {
    let n = live.len() as u32;
    if n <= l.minimum {
        return Decision::Nothing;
    }
    let idle = live
        .iter()
        .filter(|v| v.state == Some(SlotState::Idle))
        .max_by_key(|v| v.idle_for);
    let Some(victim) = idle else {
        return Decision::Nothing;
    };
    if victim.idle_for >= l.idle_timeout {
        return Decision::Stop(victim.id, KillReason::Idle);
    }
    let busy: f64 = live.iter().map(|v| v.busy.clamp(0.0, 1.0)).sum();
    let with_one_fewer = 100.0 * busy / f64::from(n - 1);
    if victim.idle_for >= EXCESS_MIN_IDLE
        && with_one_fewer < f64::from(l.occupancy_percent) - HYSTERESIS_PERCENT
    {
        return Decision::Stop(victim.id, KillReason::Excess);
    }
    Decision::Nothing
}

/// Start-up time assumed for a service whose instances have not been seen
/// coming up yet.
pub(crate) const ASSUMED_STARTUP: Duration = Duration::from_millis(100);
/// The manager's own delay in noticing a retiring instance and a ready
/// replacement (its recycle re-check runs every 20 ms).
const RECYCLE_REACTION: Duration = Duration::from_millis(40);

/// The request count at which an instance limited to `limit` requests
/// should say it is retiring: early enough that a replacement, taking
/// `startup` to come up, is ready before the instance serves its last
/// request at `rate` requests a second. 0 when there is no limit.
pub(crate) fn retire_notice(limit: u64, rate: f64, startup: Duration) -> u64 {
    if limit == 0 {
        return 0;
    }
    let during = rate.max(0.0) * (startup + RECYCLE_REACTION).as_secs_f64() * 1.5;
    // f64 -> u64 saturates; NaN becomes 0.
    let ahead = (during.ceil() as u64).saturating_add(1);
    limit.saturating_sub(ahead).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(min: u32, max: u32) -> Limits {
        Limits {
            minimum: min,
            maximum: max,
            occupancy_percent: 70,
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn view(id: usize, state: SlotState, idle_s: u64, busy: f64) -> View {
        View {
            id,
            state: Some(state),
            leaving: false,
            idle_for: Duration::from_secs(idle_s),
            busy,
        }
    }

    #[test]
    fn exact_queue_depth_starts_one_per_waiting_client() {
        let l = limits(1, 8);
        let exact = |waiting| Why::Saturated {
            waiting,
            exact: true,
        };
        let v = [view(0, SlotState::Busy, 0, 1.0)];
        assert_eq!(decide(&l, &v, exact(7)), Decision::Start(7));
        assert_eq!(decide(&l, &v, exact(30)), Decision::Start(7));
        let v = [
            view(0, SlotState::Busy, 0, 1.0),
            view(1, SlotState::Starting, 0, 0.0),
        ];
        assert_eq!(decide(&l, &v, exact(3)), Decision::Start(2));
        assert_eq!(decide(&l, &v, exact(1)), Decision::Nothing);
        // Room for one more, and one more client than is coming: start it.
        let mut v = vec![view(0, SlotState::Busy, 0, 1.0)];
        v.extend((1..7).map(|i| view(i, SlotState::Starting, 0, 0.0)));
        assert_eq!(decide(&l, &v, exact(7)), Decision::Start(1));
        assert_eq!(decide(&l, &v, exact(6)), Decision::Nothing);
        // An idle instance about to accept is capacity too.
        let v = [view(0, SlotState::Idle, 0, 0.0)];
        assert_eq!(decide(&l, &v, exact(1)), Decision::Nothing);
        assert_eq!(decide(&l, &v, exact(3)), Decision::Start(2));
    }

    #[test]
    fn saturation_with_waiters_doubles() {
        let l = limits(1, 8);
        let v = [view(0, SlotState::Busy, 0, 1.0)];
        assert_eq!(
            decide(
                &l,
                &v,
                Why::Saturated {
                    waiting: 1,
                    exact: false
                }
            ),
            Decision::Start(1)
        );
        let v: Vec<View> = (0..3).map(|i| view(i, SlotState::Busy, 0, 1.0)).collect();
        assert_eq!(
            decide(
                &l,
                &v,
                Why::Saturated {
                    waiting: 1,
                    exact: false
                }
            ),
            Decision::Start(3)
        );
        assert_eq!(
            decide(
                &l,
                &v,
                Why::Saturated {
                    waiting: 0,
                    exact: false
                }
            ),
            Decision::Nothing
        );
        let v: Vec<View> = (0..6).map(|i| view(i, SlotState::Busy, 0, 1.0)).collect();
        assert_eq!(
            decide(
                &l,
                &v,
                Why::Saturated {
                    waiting: 1,
                    exact: false
                }
            ),
            Decision::Start(2)
        );
    }

    #[test]
    fn idle_timeout_stops_the_longest_idle() {
        let l = limits(1, 8);
        let v = [
            view(0, SlotState::Idle, 61, 0.0),
            view(1, SlotState::Idle, 70, 0.0),
        ];
        assert_eq!(
            decide(&l, &v, Why::Tick),
            Decision::Stop(1, KillReason::Idle)
        );
    }

    #[test]
    fn low_occupancy_stops_excess_with_hysteresis() {
        let l = limits(1, 8);
        // 2 instances, 0.6 busy in total: 60% with one fewer, above 55%.
        let v = [
            view(0, SlotState::Busy, 0, 0.6),
            view(1, SlotState::Idle, 5, 0.0),
        ];
        assert_eq!(decide(&l, &v, Why::Tick), Decision::Nothing);
        let v = [
            view(0, SlotState::Busy, 0, 0.3),
            view(1, SlotState::Idle, 5, 0.0),
        ];
        assert_eq!(
            decide(&l, &v, Why::Tick),
            Decision::Stop(1, KillReason::Excess)
        );
        // Just went idle: not yet.
        let v = [
            view(0, SlotState::Busy, 0, 0.3),
            view(1, SlotState::Idle, 1, 0.0),
        ];
        assert_eq!(decide(&l, &v, Why::Tick), Decision::Nothing);
    }

    fn arb_state() -> impl Strategy<Value = Option<SlotState>> {
        prop_oneof![
            Just(None),
            Just(Some(SlotState::Starting)),
            Just(Some(SlotState::Idle)),
            Just(Some(SlotState::Busy)),
            Just(Some(SlotState::Exiting)),
        ]
    }

    proptest! {
        #[test]
        fn never_past_the_bounds(
            min in 0u32..5, extra in 0u32..20,
            states in prop::collection::vec((arb_state(), any::<bool>(), 0u64..200, 0.0f64..1.5), 0..30),
            saturated in any::<bool>(), waiting in 0u32..50, exact in any::<bool>(),
        ) {
            let l = limits(min, min + extra.max(1));
            let views: Vec<View> = states.iter().enumerate().map(|(i, &(state, leaving, idle, busy))| View {
                id: i, state, leaving, idle_for: Duration::from_secs(idle), busy,
            }).collect();
            let live = views.iter().filter(|v| !v.leaving).count() as u32;
            let why = if saturated { Why::Saturated { waiting, exact } } else { Why::Tick };
            match decide(&l, &views, why) {
                Decision::Nothing => {}
                Decision::Start(k) => {
                    prop_assert!(saturated && waiting > 0);
                    prop_assert!(k >= 1 && live + k <= l.maximum && k <= MAX_BURST);
                    let coming = views.iter().filter(|v| !v.leaving && matches!(v.state, Some(SlotState::Starting | SlotState::Idle))).count() as u32;
                    prop_assert!(!exact || k + coming <= waiting);
                }
                Decision::Stop(id, _) => {
                    prop_assert!(!saturated);
                    prop_assert!(live > l.minimum);
                    let v = &views[id];
                    prop_assert!(!v.leaving && v.state == Some(SlotState::Idle));
                }
            }
        }
    }

    #[test]
    fn retire_notice_leaves_room_for_the_replacement_to_start() {
        let ms = Duration::from_millis;
        // No limit, no notice.
        assert_eq!(retire_notice(0, 1000.0, ms(100)), 0);
        // Idle: one request ahead.
        assert_eq!(retire_notice(100, 0.0, ms(100)), 99);
        // 100 requests a second, 160 ms to be ready with the reaction:
        // 24 requests, plus one.
        assert_eq!(retire_notice(1000, 100.0, ms(120)), 1000 - 25);
        // Faster than a start-up can follow: announce at the first request.
        assert_eq!(retire_notice(50, 10_000.0, ms(1000)), 1);
        assert_eq!(retire_notice(1, 0.0, ms(1)), 1);
        // Garbage rates are not trusted.
        assert_eq!(retire_notice(100, f64::NAN, ms(100)), 99);
        assert_eq!(retire_notice(100, -5.0, ms(100)), 99);
        assert_eq!(retire_notice(100, f64::INFINITY, ms(100)), 1);
    }
}
