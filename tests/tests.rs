//! Integration tests: one binary, one module per area, each starting real
//! processes (services, clients, the manager) in a unique temp dir.
//!
//! `unsafe` lives in `util/fds.rs` alone (passing fds between processes).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod util;

// Service library: standalone and accept mode, via charon-echo.
mod service;
// Client library and the `charon` command line.
mod client;
// The manager: charond with real instances.
mod manager;
// Operators: reload, the control socket, `charon stats` / `ps` / ...
mod operators;
// The instance lifecycle rules on the default config: mature deaths,
// maximum-requests, start-up timeout, busy from accept, backoff.
mod lifecycle;
// `charon top` under a terminal (tmux) and without one.
mod top;
// Failure as the normal case: chaos, leaks, hostile input, security.
mod reliability;
// Nothing lost at the edges: stop, manager death, reload, restart.
mod edges;
// Probes: `charon health` for containers and Kubernetes.
mod probes;
// The first hour of a new user: command-line edges, messages, defaults.
mod firsthour;
// The container image's entrypoint and health check, without the image.
mod image;
// Under systemd: notify, the fd store, socket activation.
mod systemd;
// Templates: instances forked from a pre-initialised program.
mod template;
