//! The Charon manager (`charond`): it binds each configured service's
//! rendezvous socket, forks instances on demand or in advance, scales them
//! between a minimum and a maximum, recycles and kills them, tells their
//! exits apart, backs off and fast-fails clients while a service cannot run.
//!
//! The binary (`src/bin/charond.rs`) turns arguments into [`Options`] and
//! calls [`run`] or [`check`]; it alone turns errors into exit codes.
//!
//! # Theory of operation
//!
//! One thread runs a mio loop (`runtime`) over a signalfd, the sockets
//! the manager currently watches, and each instance's stderr pipe and report
//! channel; every deadline (the tick, a backoff's end, an instance's grace,
//! an orphan's SIGKILL, a control connection's idle time...) lives in
//! `timers`, whose earliest entry sets the poll timeout. The `runtime`'s
//! `Manager` is a struct of owned parts with private fields: the services
//! (`services`), the process table (`process_table`), the control socket
//! (`control`), the timers, the orphans (`orphans`), the manager's own
//! resource failures (`starved`) and the reloads waiting for an answer
//! (`reload`). The parts never see the `Manager`: it calls their small
//! APIs and performs what they return. Each service is a small pure
//! automaton (`service::transition`): the loop feeds it events (a first
//! connect, an exit, the end of a backoff) and performs the actions it
//! returns. Each instance is one too (`instance`: starting, serving,
//! retiring, stopping, and whether its exit was young or mature), and so is
//! each generation (`generation`). Scaling is a pure function of the
//! scoreboard (`calibrate`).
//! The only `unsafe` code (fork/exec, wait4, accept4, sigaction) lives in
//! `sys`.
//!
//! Each service runs as one or more *generations* (`services`): a reload
//! (`reload`) brings up a changed service's new generation at a temporary
//! socket name and renames it over the old socket once it is ready, then
//! drains the old one (`runtime::drain`), as its automaton (`generation`) says;
//! which instances a draining generation signals is pure policy
//! (`drain_policy`). Operators read the figures (`runtime::snapshot`)
//! through the control socket ([`control`], `<run-dir>/charond.sock`) or as
//! Prometheus text ([`metrics`]).
//!
//! ```no_run
//! let opts = charon_manager::Options {
//!     config_dir: "demo".into(),
//!     run_dir: "/tmp/charon-demo".into(),
//!     stats_interval: std::time::Duration::from_secs(600),
//!     log_file: None,
//!     metrics_listen: None,
//! };
//! if let Err(e) = charon_manager::run(&opts) {
//!     eprintln!("charond: {e}");
//!     std::process::exit(1);
//! }
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod broken;
mod calibrate;
pub mod config;
pub mod control;
mod daemon;
mod drain_policy;
mod fdstore;
mod generation;
mod health;
mod instance;
mod jitter;
pub mod latency;
mod log;
pub mod metrics;
mod notify;
mod notify_policy;
mod orphans;
mod process_table;
mod queue;
mod refuse;
mod reload;
mod runtime;
mod service;
mod services;
mod signals;
mod spawn;
mod startup;
mod starved;
mod stats;
mod stderr;
mod svc;
mod sys;
mod template;
mod templates;
mod timers;
mod tokens;

pub use daemon::{check, run, CheckReport, Fatal, Options, Stop};
