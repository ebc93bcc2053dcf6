//! A validated service configuration: what the rest of the manager uses.
//!
//! Built from one TOML file by `config::load_file` (parsing and validation
//! live in `raw.rs` and `mod.rs`); every field here is already checked, so
//! the event loop never re-validates. Defaults are documented in CONFIG.md
//! and live in [`ServiceConfig::defaults`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use charon_protocol::ServiceKey;

/// Everything the manager needs to run one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service key, from the file name (may be a wildcard).
    pub key: ServiceKey,
    /// The file it was read from.
    pub file: PathBuf,
    /// `exec`: program and arguments (a string split on white space, or an
    /// array). Never empty.
    pub exec: Vec<String>,
    /// `cd`: working directory of instances (default: the config dir).
    pub cd: Option<PathBuf>,
    /// `env`: extra environment for instances.
    pub env: BTreeMap<String, String>,
    /// `user`: run instances as this user (only when the manager is root).
    pub user: Option<String>,
    /// `group`: run instances as this group (only when the manager is root).
    pub group: Option<String>,
    /// `minimum-processes` (default 1).
    pub minimum_processes: u32,
    /// `maximum-processes` (default 10, at most 10000).
    pub maximum_processes: u32,
    /// `prestart-processes` (default false): start the minimum at once
    /// instead of on the first connect.
    pub prestart_processes: bool,
    /// `template` (default false): start instances by forking a
    /// pre-initialised template of the program instead of exec'ing it.
    pub template: bool,
    /// `occupancy-percent` (default 70, 1-100): shrink when busy time over
    /// wall time stays below this (with hysteresis).
    pub occupancy_percent: u8,
    /// `idle-timeout` (default 120s): an instance idle this long may exit
    /// (never below the minimum).
    pub idle_timeout: Duration,
    /// `maximum-requests` (default 10000, 0 = no limit): recycle after this
    /// many requests.
    pub maximum_requests: u64,
    /// `maximum-requests-jitter` (default 10, percent 0-50).
    pub maximum_requests_jitter: u8,
    /// `unresponsive-timeout` (default 10s; 0 = off, stored as None).
    pub unresponsive_timeout: Option<Duration>,
    /// `exec-failure-backoff` (default 60s): the backoff's cap.
    pub exec_failure_backoff: Duration,
    /// `backoff-initial` (default 1s): the first backoff.
    pub backoff_initial: Duration,
    /// `crash-loop-count` (default 5): this many crashes ...
    pub crash_loop_count: u32,
    /// `crash-loop-interval` (default 10s): ... within this interval enter
    /// backoff.
    pub crash_loop_interval: Duration,
    /// `listen-backlog` (default 128, 1-65535).
    pub listen_backlog: u32,
    /// `affinity-timeout` (default 60s): an idle kept connection is closed
    /// after this long.
    pub affinity_timeout: Duration,
    /// `read-timeout` (default 10s): an accepted connection that sends no
    /// complete request within this long is dropped by the instance.
    pub read_timeout: Duration,
    /// `stop-grace` (default 10s): after SIGTERM, SIGKILL once this passes.
    pub stop_grace: Duration,
    /// `startup-timeout` (default 30s): an instance not ready (waiting for
    /// its first request) this long after it was started is killed, as a
    /// young failure.
    pub startup_timeout: Duration,
    /// `ulimit-cpu-milliseconds` (RLIMIT_CPU, rounded up to seconds).
    pub ulimit_cpu_milliseconds: Option<u64>,
    /// `ulimit-data-memory` in bytes (RLIMIT_DATA).
    pub ulimit_data_memory: Option<u64>,
    /// `ulimit-open-files` (RLIMIT_NOFILE).
    pub ulimit_open_files: Option<u64>,
    /// `maximum-rss` in bytes: recycle an instance whose resident memory
    /// passes this.
    pub maximum_rss: Option<u64>,
    /// `socket-mode` (default 0o660): permission bits of the rendezvous
    /// socket.
    pub socket_mode: u32,
    /// `socket-group`: group owner of the rendezvous socket.
    pub socket_group: Option<String>,
    /// `allowed-uids`: if set, only these peer uids may connect (checked by
    /// the instance with SO_PEERCRED).
    pub allowed_uids: Option<Vec<u32>>,
    /// `allowed-gids`: if set, only these peer gids may connect.
    pub allowed_gids: Option<Vec<u32>>,
}

impl ServiceConfig {
    /// A config with every default and the given key, file and exec.
    #[must_use]
    pub fn defaults(key: ServiceKey, file: PathBuf, exec: Vec<String>) -> ServiceConfig {
        ServiceConfig {
            key,
            file,
            exec,
            cd: None,
            env: BTreeMap::new(),
            user: None,
            group: None,
            minimum_processes: 1,
            maximum_processes: 10,
            prestart_processes: false,
            template: false,
            occupancy_percent: 70,
            idle_timeout: Duration::from_secs(120),
            maximum_requests: 10_000,
            maximum_requests_jitter: 10,
            unresponsive_timeout: Some(Duration::from_secs(10)),
            exec_failure_backoff: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            crash_loop_count: 5,
            crash_loop_interval: Duration::from_secs(10),
            listen_backlog: 128,
            affinity_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            ulimit_cpu_milliseconds: None,
            ulimit_data_memory: None,
            ulimit_open_files: None,
            maximum_rss: None,
            socket_mode: 0o660,
            socket_group: None,
            allowed_uids: None,
            allowed_gids: None,
        }
    }
}
