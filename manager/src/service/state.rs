//! The per-service state the transitions act on, and the vocabulary of
//! exits: why the manager stopped an instance, and how every exit is
//! classified (DESIGN.md's table). No I/O here.

use std::fmt;
use std::time::{Duration, Instant};

use super::backoff::{Backoff, CrashTally};
use crate::sys::{code, WaitStatus};

/// Why the manager stopped an instance; set before it signals, so the exit
/// is counted under this reason rather than as a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KillReason {
    Unresponsive,
    Idle,
    Excess,
    MaxRequests,
    MaxRss,
    Shutdown,
    /// Drained by a reload (or a removed config file).
    Reload,
    /// Recycled by `charon restart`.
    Restart,
    /// Not ready within `startup-timeout`: a young failure.
    StartupTimeout,
}

impl KillReason {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            KillReason::Unresponsive => "unresponsive",
            KillReason::Idle => "idle",
            KillReason::Excess => "excess",
            KillReason::MaxRequests => "max_requests",
            KillReason::MaxRss => "max_rss",
            KillReason::Shutdown => "shutdown",
            KillReason::Reload => "reload",
            KillReason::Restart => "restart",
            KillReason::StartupTimeout => "startup_timeout",
        }
    }
}

/// How an exit is counted and what it leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitClass {
    /// Exit 0, not asked for: replace when needed.
    Clean,
    /// Exit 1-10 or another non-reserved code: backoff.
    Failed(i32),
    /// Exit 11-30: the manager's own launch failure: backoff.
    LaunchFailure(i32),
    /// Killed by a signal the manager did not send.
    Crash(i32),
    /// Stopped by the manager for this reason.
    Killed(KillReason),
}

impl ExitClass {
    /// Classifies a wait status; `asked` is the reason the manager signalled
    /// the instance, if it did.
    pub(crate) fn of(status: WaitStatus, asked: Option<KillReason>) -> ExitClass {
        match (status, asked) {
            (_, Some(r)) => ExitClass::Killed(r),
            (WaitStatus::Exited(0), None) => ExitClass::Clean,
            (WaitStatus::Exited(c @ 11..=30), None) => ExitClass::LaunchFailure(c),
            (WaitStatus::Exited(c), None) => ExitClass::Failed(c),
            (WaitStatus::Signaled(s), None) => ExitClass::Crash(s),
        }
    }

    /// What this exit says about the service. `young`: the instance had
    /// not completed a request (for a clean exit: and it left within a
    /// second of starting), so its exit is evidence about the program, not
    /// about one request or an outside event.
    pub(crate) const fn blame(self, young: bool) -> Blame {
        match self {
            ExitClass::LaunchFailure(_) | ExitClass::Killed(KillReason::StartupTimeout) => {
                Blame::CannotRun
            }
            ExitClass::Failed(_) if young => Blame::CannotRun,
            ExitClass::Crash(_) | ExitClass::Clean if young => Blame::Crash,
            _ => Blame::None,
        }
    }

    /// True for exits logged at `warn`: the program failed (a non-zero
    /// exit, a launch failure, a crash, a hang the manager had to kill),
    /// not stopped by design or by a clean exit.
    pub(crate) const fn is_trouble(self) -> bool {
        matches!(
            self,
            ExitClass::Failed(_)
                | ExitClass::LaunchFailure(_)
                | ExitClass::Crash(_)
                | ExitClass::Killed(KillReason::StartupTimeout | KillReason::Unresponsive)
        )
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            ExitClass::Clean => "clean",
            ExitClass::Failed(_) => "nonzero",
            ExitClass::LaunchFailure(_) => "launch_failed",
            ExitClass::Crash(_) => "crashed",
            ExitClass::Killed(r) => r.name(),
        }
    }
}

impl fmt::Display for ExitClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitClass::Clean => f.write_str("exit 0 (clean)"),
            ExitClass::Failed(c) => write!(f, "exit {c} (nonzero)"),
            ExitClass::LaunchFailure(c) => write!(
                f,
                "exit {c} (launch_failed: {})",
                code::describe(c).unwrap_or("unknown")
            ),
            ExitClass::Crash(s) => write!(f, "killed by signal {s} (crashed)"),
            ExitClass::Killed(r) => write!(f, "stopped by the manager ({})", r.name()),
        }
    }
}

/// What an exit counts toward (DESIGN.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blame {
    /// A young failure that will not heal by retrying at once (non-zero
    /// exit, launch failure, start-up timeout): backoff now.
    CannotRun,
    /// A young crash (or a quick clean exit): counts toward the crash loop.
    Crash,
    /// A mature instance's exit or one the manager asked for: replace it,
    /// never a reason to stop launching.
    None,
}

/// Where a service is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No instance; the listening socket is watched for a first connect.
    Watching,
    /// Instances run (or are starting).
    Running,
    /// No launches until `until`; with no instance left, connections are
    /// answered with Unavailable.
    Backoff { until: Instant, wait: Duration },
    /// One trial instance runs after a backoff; no more launches until it
    /// proves healthy.
    Trial { since: Instant },
    /// Shutting down: nothing starts again.
    Stopped,
}

impl Mode {
    #[must_use]
    pub(crate) const fn is_backoff(&self) -> bool {
        matches!(self, Mode::Backoff { .. })
    }
}

/// A service's state as the transitions see it.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(in crate::service) mode: Mode,
    pub(in crate::service) backoff: Backoff,
    pub(in crate::service) crashes: CrashTally,
    /// Instances to keep when not in backoff.
    pub(in crate::service) minimum: u32,
    /// Start `minimum` without waiting for a connect.
    pub(in crate::service) prestart: bool,
    /// A connect has arrived once (on-demand services keep their minimum
    /// from then on).
    pub(in crate::service) demanded: bool,
}

impl ServiceState {
    pub(crate) fn new(minimum: u32, prestart: bool, backoff: Backoff, crashes: CrashTally) -> Self {
        ServiceState {
            mode: Mode::Watching,
            backoff,
            crashes,
            minimum,
            prestart,
            demanded: false,
        }
    }

    /// Where the automaton is.
    #[must_use]
    pub(crate) const fn mode(&self) -> Mode {
        self.mode
    }

    /// How many instances should exist at least.
    #[must_use]
    pub(crate) const fn wanted(&self) -> u32 {
        if self.prestart || self.demanded {
            self.minimum
        } else {
            0
        }
    }
}
