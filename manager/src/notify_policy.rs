//! What charond tells systemd over `NOTIFY_SOCKET`, and when: a pure
//! automaton over the manager's phases (starting, ready, reloading,
//! stopping) fed by what the loop sees, returning the messages to send.
//! Sending them, and reading the figures from the services, is
//! `notify.rs`'s job; sd_notify(3) and systemd.service(5) (`Type=notify`,
//! `Type=notify-reload`, `WatchdogSec=`) are the source of truth for the
//! messages.

use std::time::{Duration, Instant};

/// STATUS= is sent at most this often.
pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(1);
/// While starting, look at the services this often: an instance becomes
/// ready by writing its scoreboard slot, which wakes no poll.
pub(crate) const START_RECHECK: Duration = Duration::from_millis(20);

/// Where the manager is, as systemd sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not yet ready: READY=1 not sent.
    Starting,
    /// READY=1 sent.
    Ready,
    /// RELOADING=1 sent; READY=1 follows when every reload is answered.
    Reloading,
    /// STOPPING=1 sent; nothing else but watchdog pings follows.
    Stopping,
}

/// One notification (a line of the datagram).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Msg {
    Ready,
    /// RELOADING=1 with MONOTONIC_USEC= (systemd requires both in one
    /// datagram for `Type=notify-reload`).
    Reloading {
        monotonic_usec: i128,
    },
    Stopping,
    Status(String),
    Watchdog,
}

/// What the loop sees, each time it looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    /// Configured keys served.
    pub services: usize,
    /// Instances busy with a request, and all instances.
    pub busy: u32,
    pub total: u32,
    /// Requests answered since the manager started (all keys).
    pub requests: u64,
    /// Keys in backoff.
    pub backoff: usize,
    /// Every socket listens and every prestarted service has its minimum
    /// ready, or is in backoff (its failure is in the status line: one
    /// broken service must not hold the whole unit in "activating").
    pub settled: bool,
    /// Some reload has not been answered yet.
    pub reloading: bool,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Event {
    /// The loop went round: the current figures.
    Look(Figures),
    /// A reload (SIGHUP or `charon reload`) begins.
    ReloadBegun { monotonic_usec: i128 },
    /// SIGTERM/SIGINT: the stop begins.
    Stop,
}

/// The automaton's state.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    phase: Phase,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    status_at: Option<Instant>,
    status: String,
    /// Requests counted at the last status, for the rate.
    rate_base: Option<(Instant, u64)>,
}

impl Policy {
    /// `watchdog`: systemd's `WATCHDOG_USEC`, when set for this process.
    pub(crate) fn new(watchdog: Option<Duration>) -> Policy {
        Policy {
            phase: Phase::Starting,
            watchdog: watchdog.filter(|w| !w.is_zero()),
            last_ping: None,
            status_at: None,
            status: String::new(),
            rate_base: None,
        }
    }

    #[cfg(test)]
    pub(crate) const fn phase(&self) -> Phase {
        self.phase
    }

    /// Feeds one event; returns the messages to send, in order, as one
    /// datagram.
    pub(crate) fn on_event(&mut self, ev: Event, now: Instant) -> Vec<Msg> {
        let mut out = Vec::new();
        match (self.phase, ev) {
            (Phase::Stopping, Event::Stop | Event::ReloadBegun { .. }) => {}
            (_, Event::Stop) => {
                self.phase = Phase::Stopping;
                out.push(Msg::Stopping);
            }
            // systemd does not reload a unit that is not active yet, and
            // a reload during start is part of getting ready.
            (Phase::Starting | Phase::Reloading, Event::ReloadBegun { .. }) => {}
            (Phase::Ready, Event::ReloadBegun { monotonic_usec }) => {
                self.phase = Phase::Reloading;
                out.push(Msg::Reloading { monotonic_usec });
            }
            (Phase::Starting, Event::Look(f)) if f.settled => {
                self.phase = Phase::Ready;
                out.push(Msg::Ready);
                self.status_due(f, now, true, &mut out);
            }
            (Phase::Reloading, Event::Look(f)) if !f.reloading => {
                self.phase = Phase::Ready;
                out.push(Msg::Ready);
                self.status_due(f, now, false, &mut out);
            }
            (_, Event::Look(f)) => self.status_due(f, now, false, &mut out),
        }
        if self.ping_due(now) {
            self.last_ping = Some(now);
            out.push(Msg::Watchdog);
        }
        out
    }

    /// When the loop must look again at the latest: half the watchdog
    /// interval after the last ping (sd_watchdog_enabled(3)'s advice), the
    /// next status, and soon while starting.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let ping = self
            .watchdog
            .map(|w| self.last_ping.map_or(now, |t| t + w / 2));
        let status = self.status_at.map(|t| t + STATUS_EVERY);
        let start = (self.phase == Phase::Starting).then(|| now + START_RECHECK);
        [ping, status, start].into_iter().flatten().min()
    }

    fn ping_due(&self, now: Instant) -> bool {
        match (self.watchdog, self.last_ping) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(w), Some(t)) => now >= t + w / 2,
        }
    }

    /// A STATUS= line when a second has passed since the last one (or
    /// `force`) and the line changed.
    fn status_due(&mut self, f: Figures, now: Instant, force: bool, out: &mut Vec<Msg>) {
        if !force && self.status_at.is_some_and(|t| now < t + STATUS_EVERY) {
            return;
        }
        let rps = match self.rate_base {
            Some((t, n)) if now > t => {
                f.requests.saturating_sub(n) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        self.rate_base = Some((now, f.requests));
        self.status_at = Some(now);
        let line = status_line(self.phase, f, rps);
        if line != self.status {
            self.status.clone_from(&line);
            out.push(Msg::Status(line));
        }
    }
}

/// The one short STATUS= line: `3 services, 2/8 instances busy, 120 req/s,
/// 1 in backoff`, with a `starting: ` or `stopping: ` prefix outside the
/// ready phases.
pub(crate) fn status_line(phase: Phase, f: Figures, rps: f64) -> String {
    let prefix = match phase {
        Phase::Starting => "starting: ",
        Phase::Stopping => "stopping: ",
        Phase::Ready | Phase::Reloading => "",
    };
    format!(
        "{prefix}{} service{}, {}/{} instances busy, {:.0} req/s, {} in backoff",
        f.services,
        if f.services == 1 { "" } else { "s" },
        f.busy,
        f.total,
        rps,
        f.backoff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(settled: bool, reloading: bool) -> Figures {
        Figures {
            services: 2,
            busy: 1,
            total: 4,
            requests: 0,
            backoff: 0,
            settled,
            reloading,
        }
    }

    const RELOAD: Event = Event::ReloadBegun { monotonic_usec: 7 };

    /// Every (phase, event) pair: the messages (without watchdog) and the
    /// next phase.
    #[test]
    fn every_phase_and_event() {
        let t = Instant::now();
        let look = |s, r| Event::Look(fig(s, r));
        let status = |p| Msg::Status(status_line(p, fig(true, false), 0.0));
        let cases: Vec<(Phase, Event, Vec<Msg>, Phase)> = vec![
            (Phase::Starting, look(false, false), vec![], Phase::Starting),
            (
                Phase::Starting,
                look(true, false),
                vec![Msg::Ready, status(Phase::Ready)],
                Phase::Ready,
            ),
            (Phase::Starting, RELOAD, vec![], Phase::Starting),
            (
                Phase::Starting,
                Event::Stop,
                vec![Msg::Stopping],
                Phase::Stopping,
            ),
            (Phase::Ready, look(true, false), vec![], Phase::Ready),
            (
                Phase::Ready,
                RELOAD,
                vec![Msg::Reloading { monotonic_usec: 7 }],
                Phase::Reloading,
            ),
            (
                Phase::Ready,
                Event::Stop,
                vec![Msg::Stopping],
                Phase::Stopping,
            ),
            (Phase::Reloading, look(true, true), vec![], Phase::Reloading),
            (
                Phase::Reloading,
                look(true, false),
                vec![Msg::Ready],
                Phase::Ready,
            ),
            (Phase::Reloading, RELOAD, vec![], Phase::Reloading),
            (
                Phase::Reloading,
                Event::Stop,
                vec![Msg::Stopping],
                Phase::Stopping,
            ),
            (Phase::Stopping, look(true, false), vec![], Phase::Stopping),
            (Phase::Stopping, RELOAD, vec![], Phase::Stopping),
            (Phase::Stopping, Event::Stop, vec![], Phase::Stopping),
        ];
        for (from, ev, want, to) in cases {
            let mut p = Policy::new(None);
            p.phase = from;
            // A status just went out with these figures in this phase, so
            // only a forced one (at READY) shows.
            p.status_at = Some(t);
            p.status = status_line(from, fig(true, false), 0.0);
            let got = p.on_event(ev, t);
            assert_eq!(got, want, "{from:?} x {ev:?}");
            assert_eq!(p.phase(), to, "{from:?} x {ev:?}");
        }
    }

    #[test]
    fn status_at_most_once_a_second_and_only_when_changed() {
        let t = Instant::now();
        let mut p = Policy::new(None);
        let mut f = fig(true, false);
        assert_eq!(
            p.on_event(Event::Look(f), t),
            vec![Msg::Ready, Msg::Status(status_line(Phase::Ready, f, 0.0))]
        );
        f.busy = 3;
        assert!(p.on_event(Event::Look(f), t + STATUS_EVERY / 2).is_empty());
        f.requests = 200;
        let out = p.on_event(Event::Look(f), t + STATUS_EVERY * 2);
        assert_eq!(
            out,
            vec![Msg::Status(
                "2 services, 3/4 instances busy, 100 req/s, 0 in backoff".into()
            )]
        );
        // Same line a second later (the rate is now 0): 0 req/s differs.
        let out = p.on_event(Event::Look(f), t + STATUS_EVERY * 3);
        assert_eq!(out.len(), 1);
        // And unchanged after that: nothing.
        assert!(p.on_event(Event::Look(f), t + STATUS_EVERY * 4).is_empty());
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_in_every_phase() {
        let t = Instant::now();
        let w = Duration::from_secs(10);
        let mut p = Policy::new(Some(w));
        assert_eq!(p.next_deadline(t), Some(t));
        let f = fig(false, false);
        let out = p.on_event(Event::Look(f), t);
        let status = Msg::Status(status_line(Phase::Starting, f, 0.0));
        assert_eq!(out, vec![status, Msg::Watchdog]);
        // Starting: look again soon, whatever the watchdog.
        assert_eq!(p.next_deadline(t), Some(t + START_RECHECK));
        let out = p.on_event(Event::Look(fig(true, false)), t + Duration::from_secs(1));
        assert!(!out.contains(&Msg::Watchdog));
        let d = p.next_deadline(t + Duration::from_secs(1)).unwrap();
        assert_eq!(d, t + STATUS_EVERY + Duration::from_secs(1));
        let out = p.on_event(Event::Stop, t + w / 2);
        assert_eq!(out, vec![Msg::Stopping, Msg::Watchdog]);
        // The status deadline (a second after the last) comes first.
        assert_eq!(p.next_deadline(t + w / 2), Some(t + Duration::from_secs(2)));
    }

    #[test]
    fn no_watchdog_no_ping_and_a_zero_interval_is_none() {
        let t = Instant::now();
        for w in [None, Some(Duration::ZERO)] {
            let mut p = Policy::new(w);
            p.phase = Phase::Ready;
            p.status_at = Some(t);
            assert!(p.on_event(Event::Look(fig(true, false)), t).is_empty());
            assert_eq!(p.next_deadline(t), Some(t + STATUS_EVERY));
        }
    }

    #[test]
    fn status_line_reads_well() {
        let f = Figures {
            services: 1,
            busy: 0,
            total: 2,
            requests: 0,
            backoff: 1,
            settled: false,
            reloading: false,
        };
        assert_eq!(
            status_line(Phase::Starting, f, 0.4),
            "starting: 1 service, 0/2 instances busy, 0 req/s, 1 in backoff"
        );
        assert_eq!(
            status_line(Phase::Stopping, f, 12.6),
            "stopping: 1 service, 0/2 instances busy, 13 req/s, 1 in backoff"
        );
    }
}
