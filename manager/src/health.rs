//! Health for probes (`{"cmd":"health"}`, `charon health`): is every
//! configured service able to take requests now? A service is healthy when
//! it is ready (a prestarted service with its minimum of instances past
//! start-up) or on demand (its socket listens; the first connect forks an
//! instance); it is not while it is in backoff, on trial after one, still
//! starting its minimum, or starved of the manager's own resources. A
//! config file that failed to load at the last scan (start or reload) is
//! a problem too: that service runs on an old config or not at all. The
//! verdict per service is the pure [`judge`]; the JSON answer is built from
//! the services as they are, without a syscall, so a probe costs the loop
//! next to nothing. The field names are a contract
//! (doc/control-protocol.md); the exit codes are the CLI's.

use std::time::{Duration, Instant};

use charon_protocol::scoreboard::SlotState;
use serde_json::{json, Value};

use crate::config::load::key_from_path;
use crate::config::ConfigError;
use crate::generation::Gen;
use crate::process_table::ProcessTable;
use crate::service::state::Mode;
use crate::services::{Services, Svc};

/// What the loop knows of one service, for a verdict.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Look {
    pub mode: Mode,
    /// `prestart-processes`: the minimum is started without a connect.
    pub prestart: bool,
    pub minimum: u32,
    /// Instances past start-up (idle or busy), all generations.
    pub ready: u32,
    /// The manager could not start an instance for its own lack of
    /// resources (`starved.rs`).
    pub starved: bool,
}

/// A service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Prestarted, with its minimum ready.
    Ready,
    /// Not prestarted: instances are forked when connections come.
    OnDemand,
    /// Prestarted, fewer than its minimum ready yet.
    Starting { ready: u32, minimum: u32 },
    /// No launch until the backoff ends; clients get Unavailable.
    Backoff { left: Duration },
    /// One trial instance after a backoff; not yet proven.
    Trial,
    /// charond cannot start an instance (fds, memory, fork refused).
    Starved,
    /// The manager is stopping.
    Stopped,
}

impl Verdict {
    /// The name in the JSON answer.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Verdict::Ready => "ready",
            Verdict::OnDemand => "on_demand",
            Verdict::Starting { .. } => "starting",
            Verdict::Backoff { .. } => "backoff",
            Verdict::Trial => "trial",
            Verdict::Starved => "starved",
            Verdict::Stopped => "stopped",
        }
    }

    /// True when the service can take requests now.
    #[must_use]
    pub(crate) const fn is_healthy(self) -> bool {
        matches!(self, Verdict::Ready | Verdict::OnDemand)
    }
}

/// The verdict on one service: trouble first (backoff, trial, stop,
/// starvation), then whether a prestarted service has its minimum.
pub(crate) fn judge(look: &Look, now: Instant) -> Verdict {
    match look.mode {
        Mode::Backoff { until, .. } => Verdict::Backoff {
            left: until.saturating_duration_since(now),
        },
        Mode::Trial { .. } => Verdict::Trial,
        Mode::Stopped => Verdict::Stopped,
        Mode::Watching | Mode::Running if look.starved => Verdict::Starved,
        Mode::Watching | Mode::Running if !look.prestart => Verdict::OnDemand,
        Mode::Watching | Mode::Running if look.ready >= look.minimum => Verdict::Ready,
        Mode::Watching | Mode::Running => Verdict::Starting {
            ready: look.ready,
            minimum: look.minimum,
        },
    }
}

/// `{"ok":true,"healthy":B,"stopping":B,"services":[...],"broken":[...]}`:
/// every live service with its verdict and, when unhealthy, a detail
/// line; every config file that failed to load at the last scan.
pub(crate) fn answer(
    services: &Services,
    procs: &ProcessTable,
    stopping: bool,
    broken: &[ConfigError],
) -> Value {
    let now = Instant::now();
    let mut entries = Vec::new();
    let mut healthy = !stopping;
    for (s, svc) in services.iter().filter(|(_, v)| v.gen() == Gen::Live) {
        let look = Look {
            mode: svc.mode(),
            prestart: svc.config().prestart_processes,
            minimum: svc.config().minimum_processes,
            ready: ready_instances(services, procs, s),
            starved: svc.starved().is_some(),
        };
        let verdict = judge(&look, now);
        healthy &= verdict.is_healthy();
        entries.push(json!({
            "key": svc.key(),
            "health": verdict.name(),
            "detail": detail(verdict, svc),
        }));
    }
    entries.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    let broken = broken_json(broken);
    healthy &= broken.is_empty();
    json!({
        "ok": true,
        "healthy": healthy,
        "stopping": stopping,
        "services": entries,
        "broken": broken,
    })
}

/// What an operator reads beside a verdict that is not plainly ready: how
/// far start-up got, or why the service cannot serve.
fn detail(verdict: Verdict, svc: &Svc) -> Option<String> {
    let last = svc.stats().last_exit().map(|e| e.reason());
    match verdict {
        Verdict::Ready | Verdict::OnDemand => None,
        Verdict::Starting { ready, minimum } => Some(format!(
            "starting: {ready} of its minimum {minimum} instance(s) ready"
        )),
        Verdict::Backoff { left } => Some(format!(
            "in backoff for {:.1}s more: {}",
            left.as_secs_f64(),
            last.unwrap_or_else(|| "no exit recorded".into())
        )),
        Verdict::Trial => Some(format!(
            "on trial after a backoff: {}",
            last.unwrap_or_else(|| "no exit recorded".into())
        )),
        Verdict::Starved => svc
            .starved()
            .map(|why| format!("charond cannot start an instance: {why}")),
        Verdict::Stopped => Some("stopped: charond is stopping".into()),
    }
}

/// Instances of `s`'s key (every generation) past start-up: their
/// scoreboard slot says idle or busy.
fn ready_instances(services: &Services, procs: &ProcessTable, s: usize) -> u32 {
    let key = services[s].key();
    let mut n = 0;
    for (_, i) in procs.iter() {
        let svc = &services[i.service()];
        if svc.key() != key {
            continue;
        }
        if matches!(
            svc.slot_state(i.slot()),
            Some(SlotState::Idle | SlotState::Busy)
        ) {
            n += 1;
        }
    }
    n
}

/// One entry per config file that failed to load: the file, its key
/// (when the name is a valid one), the first error and how many.
fn broken_json(broken: &[ConfigError]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut last_file = None;
    for e in broken {
        if last_file == Some(&e.file) {
            if let Some(n) = out.last_mut().and_then(|v| v.get_mut("errors")) {
                *n = json!(n.as_u64().unwrap_or(0) + 1);
            }
            continue;
        }
        last_file = Some(&e.file);
        out.push(json!({
            "file": e.file.display().to_string(),
            "key": key_from_path(&e.file).ok().map(|k| k.as_str().to_string()),
            "error": e.to_string(),
            "errors": 1,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(mode: Mode) -> Look {
        Look {
            mode,
            prestart: true,
            minimum: 2,
            ready: 2,
            starved: false,
        }
    }

    #[test]
    fn a_prestarted_service_is_ready_once_its_minimum_is() {
        let now = Instant::now();
        for mode in [Mode::Watching, Mode::Running] {
            assert_eq!(judge(&look(mode), now), Verdict::Ready);
            let one = Look {
                ready: 1,
                ..look(mode)
            };
            assert_eq!(
                judge(&one, now),
                Verdict::Starting {
                    ready: 1,
                    minimum: 2
                }
            );
            let more = Look {
                ready: 3,
                ..look(mode)
            };
            assert_eq!(judge(&more, now), Verdict::Ready);
        }
        let none_wanted = Look {
            minimum: 0,
            ready: 0,
            ..look(Mode::Watching)
        };
        assert_eq!(judge(&none_wanted, now), Verdict::Ready);
    }

    #[test]
    fn an_on_demand_service_is_healthy_with_or_without_instances() {
        let now = Instant::now();
        for (mode, ready) in [(Mode::Watching, 0), (Mode::Running, 0), (Mode::Running, 5)] {
            let l = Look {
                prestart: false,
                ready,
                ..look(mode)
            };
            assert_eq!(judge(&l, now), Verdict::OnDemand);
            assert!(judge(&l, now).is_healthy());
        }
    }

    #[test]
    fn backoff_and_trial_are_unhealthy_whatever_the_instances() {
        let now = Instant::now();
        let backoff = Mode::Backoff {
            until: now + Duration::from_secs(3),
            wait: Duration::from_secs(3),
        };
        for prestart in [true, false] {
            let l = Look {
                prestart,
                ..look(backoff)
            };
            assert_eq!(
                judge(&l, now),
                Verdict::Backoff {
                    left: Duration::from_secs(3)
                }
            );
            let t = Look {
                prestart,
                ..look(Mode::Trial { since: now })
            };
            assert_eq!(judge(&t, now), Verdict::Trial);
            assert!(!judge(&l, now).is_healthy() && !judge(&t, now).is_healthy());
        }
        // A backoff already over (the loop has not yet ended it) says 0s.
        let over = look(Mode::Backoff {
            until: now,
            wait: Duration::from_secs(1),
        });
        assert_eq!(
            judge(&over, now + Duration::from_secs(1)),
            Verdict::Backoff {
                left: Duration::ZERO
            }
        );
    }

    #[test]
    fn starvation_and_stop_are_unhealthy() {
        let now = Instant::now();
        for (mode, prestart) in [
            (Mode::Watching, false),
            (Mode::Running, true),
            (Mode::Running, false),
        ] {
            let l = Look {
                starved: true,
                prestart,
                ..look(mode)
            };
            assert_eq!(judge(&l, now), Verdict::Starved);
        }
        assert_eq!(judge(&look(Mode::Stopped), now), Verdict::Stopped);
        // A backoff says more than the starvation behind it.
        let both = Look {
            starved: true,
            ..look(Mode::Trial { since: now })
        };
        assert_eq!(judge(&both, now), Verdict::Trial);
    }

    #[test]
    fn only_ready_and_on_demand_are_healthy() {
        let all = [
            Verdict::Ready,
            Verdict::OnDemand,
            Verdict::Starting {
                ready: 0,
                minimum: 1,
            },
            Verdict::Backoff {
                left: Duration::ZERO,
            },
            Verdict::Trial,
            Verdict::Starved,
            Verdict::Stopped,
        ];
        let healthy: Vec<&str> = all
            .iter()
            .filter(|v| v.is_healthy())
            .map(|v| v.name())
            .collect();
        assert_eq!(healthy, ["ready", "on_demand"]);
    }
}
