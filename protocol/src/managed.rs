//! The contract between the manager and the instances it starts.
//!
//! An instance started by `charond` (*managed mode*) finds, at fixed fd
//! numbers, exactly these and nothing else besides 0, 1 and 2:
//!
//! | fd | what | how the instance uses it |
//! |----|------|---------------------------|
//! | 3  | [`LISTEN_FD`]: the service's rendezvous socket, listening (`AF_UNIX`, `SOCK_STREAM`) | `accept()`s connections on it, one at a time |
//! | 4  | [`SCOREBOARD_FD`]: the service's scoreboard, a sealed memfd (see [`crate::scoreboard`]) | maps it shared and updates its own slot |
//! | 5  | [`REPORT_FD`]: its end of a `SOCK_SEQPACKET` socketpair to the manager | sends [`crate::report`] messages, never blocks on it |
//!
//! and these environment variables:
//!
//! | variable | value |
//! |----------|-------|
//! | [`ENV_SLOT`] | its slot index in the scoreboard (decimal); its presence means managed mode |
//! | [`ENV_SERVICE_KEY`] | the configured key it serves (may be a wildcard) |
//! | [`ENV_RUN_DIR`] | the run dir, so it can call other services |
//! | [`ENV_AFFINITY_TIMEOUT_MS`] | how long a kept (affinity) connection may sit idle |
//! | [`ENV_READ_TIMEOUT_MS`] | how long an accepted connection may take to send its request |
//! | [`ENV_DRAIN_TIMEOUT_MS`] | how long a drain may keep taking connections (the service's `stop-grace`) |
//! | [`ENV_ALLOWED_UIDS`], [`ENV_ALLOWED_GIDS`] | if set, the peer uids / gids (`SO_PEERCRED`) allowed to call |
//!
//! Signals an instance honours (the service library implements them):
//!
//! | signal | meaning |
//! |--------|---------|
//! | `SIGTERM`, `SIGINT` | [`STOP_SIGNAL`]: finish the request in hand, then exit 0 |
//! | `SIGUSR1` | [`DRAIN_SIGNAL`]: finish the request in hand, serve the connections already queued on the socket, then exit 0 (a reload's old generation, a stopping manager's instances, and the death signal the manager arms, so its death loses no queued request) |
//!
//! A service configured with `template = true` has one more process per
//! generation, its *template*, started like an instance but with
//! [`ENV_TEMPLATE`] set instead of [`ENV_SLOT`] and, at fd 5,
//! [`CONTROL_FD`]: a `SOCK_SEQPACKET` control channel over which the
//! manager asks it to fork instances (see [`crate::template`]).
//!
//! Standalone and accept mode use other variables, listed here so that all
//! names live in one place.

use std::os::fd::RawFd;

/// The rendezvous socket in managed mode.
pub const LISTEN_FD: RawFd = 3;
/// The scoreboard memfd in managed mode.
pub const SCOREBOARD_FD: RawFd = 4;
/// The report channel in managed mode.
pub const REPORT_FD: RawFd = 5;
/// A template's control channel (in place of the report channel).
pub const CONTROL_FD: RawFd = 5;

/// Standalone mode: the request packet is read from this fd.
pub const STANDALONE_REQUEST_FD: RawFd = 3;
/// Standalone mode: the response packet is written to this fd.
pub const STANDALONE_RESPONSE_FD: RawFd = 4;

/// Managed mode: the instance's scoreboard slot. Set only by the manager.
pub const ENV_SLOT: &str = "CHARON_SLOT";
/// Set (to `1`) in a template, which has no slot: the process initialises,
/// then forks instances on the manager's command (see [`crate::template`]).
/// Set only by the manager.
pub const ENV_TEMPLATE: &str = "CHARON_TEMPLATE";
/// Managed mode: the configured service key.
pub const ENV_SERVICE_KEY: &str = "CHARON_SERVICE_KEY";
/// The run dir holding the rendezvous sockets (also read by clients).
pub const ENV_RUN_DIR: &str = "CHARON_RUN_DIR";
/// Accept mode: the service binds and listens on this socket path itself.
pub const ENV_ACCEPT_SOCKET: &str = "CHARON_ACCEPT_SOCKET";
/// How long, in milliseconds, an instance waits for a request's bytes after
/// accepting a connection before giving up on it (default in the service
/// library).
pub const ENV_READ_TIMEOUT_MS: &str = "CHARON_READ_TIMEOUT_MS";
/// How long, in milliseconds, an instance drains (takes connections from
/// its socket's queue after SIGUSR1 or its manager's death) before it stops
/// taking new ones: the service's `stop-grace`, after which a manager would
/// SIGKILL it. Bounds a drain that new clients keep feeding (a dead
/// manager's socket file stays in place).
pub const ENV_DRAIN_TIMEOUT_MS: &str = "CHARON_DRAIN_TIMEOUT_MS";
/// How long, in milliseconds, an instance keeps an affinity connection open
/// waiting for the client's next request.
pub const ENV_AFFINITY_TIMEOUT_MS: &str = "CHARON_AFFINITY_TIMEOUT_MS";
/// Comma-separated decimal uids allowed to call the service (checked with
/// `SO_PEERCRED` on each accepted connection); absent means everyone who
/// can reach the socket. A refused peer gets an `ERROR NOT_PERMITTED`.
pub const ENV_ALLOWED_UIDS: &str = "CHARON_ALLOWED_UIDS";
/// Comma-separated decimal gids allowed to call the service; a peer is
/// allowed if its uid or its gid is listed (when both lists are set).
pub const ENV_ALLOWED_GIDS: &str = "CHARON_ALLOWED_GIDS";

/// The signal that asks an instance to finish the request in hand and exit 0.
pub const STOP_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGTERM;
/// The signal that asks an instance to drain its socket's queue, then exit 0.
pub const DRAIN_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;
