//! The services the loop runs: each generation's socket, scoreboard, state
//! and figures (`Svc`), kept in a slab: each configured
//! key has one live generation, and for a while after a reload also the
//! generation it replaced (draining) or the one about to replace it
//! (pending). An index names one generation for its whole life (its
//! instances, its socket token and its deadlines refer to it), and is
//! reused only after the generation is gone. What a generation does is
//! the loop's and `reload.rs`'s business.

use std::ops::{Index, IndexMut};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use charon_protocol::scoreboard::{Scoreboard, SlotState};

use crate::config::ServiceConfig;
use crate::generation::Gen;
use crate::process_table::ProcessTable;
use crate::service::backoff::{Backoff, CrashTally};
use crate::service::pacing::ForkPacer;
use crate::service::state::Mode;
use crate::service::state::ServiceState;
use crate::stats::Stats;
use crate::stderr::RateLimit;

/// What the manager does with a service's socket right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Not registered: instances accept on it.
    Off,
    /// Fork one on the first connect.
    Demand,
    /// Accept and answer Unavailable.
    FastFail,
    /// Every instance is busy below the maximum: a new connection means
    /// grow (the manager never accepts it).
    Saturated,
    /// No instance, for the manager's own resource failure: accept and
    /// answer Unavailable naming it (`starved.rs`).
    Starved,
}

/// One configured service at run time.
pub(crate) struct Svc {
    pub config: ServiceConfig,
    pub listen: OwnedFd,
    pub sock_path: PathBuf,
    pub board: Scoreboard,
    pub board_fd: OwnedFd,
    pub used_slots: Vec<bool>,
    pub state: ServiceState,
    pub watch: Watch,
    pub stats: Stats,
    pub stderr_limit: RateLimit,
    /// Replacements of dead instances, rate-limited.
    pub pacer: ForkPacer,
    /// How long instances took to become ready (smoothed), once seen.
    pub startup: Option<Duration>,
    /// Requests a second one instance served (smoothed), measured over
    /// the life of instances that reached their retirement notice.
    pub rate: f64,
    /// Inode of the listening socket, for queue-depth queries.
    pub ino: u64,
    /// Live, pending (a reload's replacement coming up) or draining.
    pub gen: Gen,
    /// Counts generations of all keys, for logs and `charon ps`.
    pub generation: u64,
    /// Instances started to serve a draining generation's queue.
    pub drain_spawns: u32,
    /// Why a pending generation cannot take over (an instance left early).
    pub gen_failure: Option<String>,
    /// The manager's own resource failure that kept an instance of it from
    /// starting, as its clients are told (`starved.rs`).
    pub starved: Option<String>,
}

impl Svc {
    pub(crate) fn key(&self) -> &str {
        self.config.key.as_str()
    }

    /// An instance became ready `took` after it was started.
    pub(crate) fn seen_ready(&mut self, took: Duration) {
        self.startup = Some(self.startup.map_or(took, |s| (s * 3 + took) / 4));
    }

    /// An instance served `requests` in `age`.
    pub(crate) fn seen_rate(&mut self, requests: u64, age: Duration) {
        let secs = age.as_secs_f64();
        if secs > 0.0 {
            let r = requests as f64 / secs;
            self.rate = if self.rate == 0.0 {
                r
            } else {
                (self.rate * 3.0 + r) / 4.0
            };
        }
    }

    /// A generation around a bound socket and scoreboard.
    pub(crate) fn new(b: Bound, gen: Gen, generation: u64, now: Instant) -> Svc {
        let Bound {
            config,
            listen,
            sock_path,
            board,
            board_fd,
        } = b;
        let state = ServiceState::new(
            config.minimum_processes,
            config.prestart_processes,
            Backoff::new(config.backoff_initial, config.exec_failure_backoff),
            CrashTally::new(config.crash_loop_count, config.crash_loop_interval),
        );
        let slots = board.slot_count() as usize;
        let ino = nix::sys::stat::fstat(&listen).map_or(0, |st| st.st_ino);
        Svc {
            config,
            listen,
            sock_path,
            board,
            board_fd,
            used_slots: vec![false; slots],
            state,
            watch: Watch::Off,
            stats: Stats::new(),
            stderr_limit: RateLimit::new(now),
            pacer: ForkPacer::new(now),
            startup: None,
            rate: 0.0,
            ino,
            gen,
            generation,
            drain_spawns: 0,
            gen_failure: None,
            starved: None,
        }
    }
}

/// A service ready to run: its config, bound socket and scoreboard.
pub(crate) struct Bound {
    pub config: ServiceConfig,
    pub listen: OwnedFd,
    pub sock_path: PathBuf,
    pub board: Scoreboard,
    pub board_fd: OwnedFd,
}

/// The slab.
#[derive(Default)]
pub(crate) struct Services {
    slab: Vec<Option<Svc>>,
}

impl Services {
    /// Adds a generation, returning its index.
    pub(crate) fn insert(&mut self, svc: Svc) -> usize {
        if let Some(i) = self.slab.iter().position(Option::is_none) {
            self.slab[i] = Some(svc);
            i
        } else {
            self.slab.push(Some(svc));
            self.slab.len() - 1
        }
    }

    /// Removes a generation (its socket and scoreboard close with it).
    pub(crate) fn remove(&mut self, s: usize) -> Option<Svc> {
        self.slab.get_mut(s).and_then(Option::take)
    }

    pub(crate) fn get(&self, s: usize) -> Option<&Svc> {
        self.slab.get(s).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, s: usize) -> Option<&mut Svc> {
        self.slab.get_mut(s).and_then(Option::as_mut)
    }

    /// The indices in use, in order.
    pub(crate) fn ids(&self) -> Vec<usize> {
        self.iter().map(|(s, _)| s).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Svc)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(s, v)| v.as_ref().map(|v| (s, v)))
    }

    /// Generations in use.
    pub(crate) fn len(&self) -> usize {
        self.slab.iter().filter(|v| v.is_some()).count()
    }

    /// No generation is left (the last one drained at stop).
    pub(crate) fn is_empty(&self) -> bool {
        self.slab.iter().all(Option::is_none)
    }

    /// Every wanted instance of generation `s` is up and waiting (or, on
    /// demand, none is wanted yet).
    pub(crate) fn is_ready(&self, s: usize, procs: &ProcessTable) -> bool {
        let svc = &self[s];
        match svc.state.mode {
            Mode::Watching => true,
            Mode::Running => {
                let mut up = 0;
                for (_, i) in procs.iter().filter(|(_, i)| i.service() == s) {
                    let st = svc.board.slot(i.slot()).and_then(|sl| sl.state());
                    if i.is_leaving() {
                        continue;
                    }
                    if !matches!(st, Some(SlotState::Idle | SlotState::Busy)) {
                        return false;
                    }
                    up += 1;
                }
                up >= svc.state.wanted()
            }
            Mode::Backoff { .. } | Mode::Trial { .. } | Mode::Stopped => false,
        }
    }
}

impl Index<usize> for Services {
    type Output = Svc;

    /// Indexing is for generations known to be alive: an index comes from
    /// an instance, a token or a deadline of a generation, and every one of
    /// those is gone before the generation is removed (`reload.rs`
    /// `free_generation`). Uncertain callers use [`Services::get`].
    #[allow(clippy::expect_used)]
    fn index(&self, s: usize) -> &Svc {
        self.get(s)
            .expect("a generation is removed only after its last user")
    }
}

impl IndexMut<usize> for Services {
    #[allow(clippy::expect_used)]
    fn index_mut(&mut self, s: usize) -> &mut Svc {
        self.get_mut(s)
            .expect("a generation is removed only after its last user")
    }
}
