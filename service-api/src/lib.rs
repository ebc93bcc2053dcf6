//! The Charon service library: the request loop a service program links.
//!
//! A service is a plain program that serves one request at a time:
//!
//! ```no_run
//! use charon_service::{fault, Service};
//!
//! fn main() {
//!     let mut svc = match Service::init("demo.upper.1.raw") {
//!         Ok(svc) => svc,
//!         Err(e) => {
//!             eprintln!("demo: cannot start: {e}");
//!             std::process::exit(2);
//!         }
//!     };
//!     loop {
//!         let req = match svc.next_request() {
//!             Ok(Some(req)) => req,
//!             Ok(None) => break, // told to stop: exit 0
//!             Err(e) => {
//!                 eprintln!("demo: {e}");
//!                 std::process::exit(1);
//!             }
//!         };
//!         let answered = match std::str::from_utf8(req.body()) {
//!             Ok(text) => req.respond(text.to_uppercase().as_bytes()),
//!             Err(_) => req.fault(fault::DESERIALIZATION_FAILED, "the body is not UTF-8"),
//!         };
//!         if let Err(e) = answered {
//!             eprintln!("demo: {e}");
//!         }
//!     }
//! }
//! ```
//!
//! # Brief overview
//!
//! - [`Service`]: [`Service::init`] picks the mode and sets it up;
//!   [`Service::next_request`] waits for the next request and returns
//!   `None` when the program should exit 0.
//! - [`Request`]: the key and its parts, the client's name, the attempt,
//!   the attributes, the context and the body, all borrowed from the read
//!   buffer; answered once with [`Request::respond`] or [`Request::fault`].
//! - [`Options`]: size limits and timeouts; [`Error`] / [`ErrorKind`].
//! - [`fault`]: the reserved fault codes.
//!
//! # Theory of operation
//!
//! ## Three ways to run
//!
//! [`Service::init`] chooses, in this order, and the program never needs to
//! know which ([`Service::mode`] tells, for logs):
//!
//! 1. **Managed**: `CHARON_SLOT` is set. The manager (`charond`) started
//!    the process with fd 3 = the service's listening rendezvous socket,
//!    fd 4 = the service's scoreboard (a sealed memfd), fd 5 = a
//!    `SOCK_SEQPACKET` report channel (see [`charon_protocol::managed`]).
//!    Each is checked (fd 3 must be a listening `AF_UNIX` stream socket) and
//!    made close-on-exec, so the service's own children do not inherit
//!    them. Instances share the listening socket and `accept()` on it
//!    directly: the manager is not in the data path. The instance keeps its
//!    scoreboard slot current (idle while waiting in accept, busy with the
//!    request's start time, client and size while serving, exiting when
//!    leaving) and batches one record per request (time, sizes, outcome,
//!    attempt) on the report channel, sent without blocking when 64 are
//!    batched or when the oldest is a second old (an idle instance wakes up
//!    to send it then), and at `exit()`: an instance wakes the manager
//!    about once a second at most, never per request, and a full channel
//!    loses a batch rather than delay a client. The slot says *busy* from
//!    `accept()` until the answer is written or the connection ends. When
//!    the manager asks for hints and no instance is idle, the instance says
//!    it is saturated as it accepts (rate-limited across instances). When
//!    the slot's retirement notice point is reached it says it is retiring,
//!    once, so that the manager starts a replacement; at the slot's request
//!    limit (a hard bound) it accepts nothing more and `next_request`
//!    returns `None`, so the program exits 0. If the manager goes away (its
//!    end of the report channel closes, or its death signal, SIGUSR1,
//!    arrives), the instance drains: it finishes the request in hand,
//!    serves the connections already queued on its socket, and stops once
//!    the queue is empty. It also points its stderr at /dev/null then:
//!    nobody reads the pipe any more, and `eprintln!` would panic on the
//!    failed write, costing the request in hand.
//!
//!    A service configured with `template = true` also has a *template*:
//!    the program started with `CHARON_TEMPLATE` set (and no slot). Its
//!    `init` sets up as in managed mode; its first
//!    [`Service::next_request`] turns it into a fork server that never
//!    returns there: it forks each new instance on the manager's command,
//!    and the call returns in each forked child, now an ordinary managed
//!    instance. The program's own initialisation (before or after `init`)
//!    is thus done once, not at every instance start. The program must be
//!    single-threaded when it first calls `next_request` (the template
//!    checks, and refuses to fork otherwise; the manager then execs
//!    instances as usual). See PROTOCOL.md section 10.4.
//! 2. **Accept mode**: `CHARON_ACCEPT_SOCKET=PATH`. The service binds and
//!    listens on PATH itself, to run one instance by hand. A stale socket
//!    file there (nobody listening) is replaced; a live one, or a file that
//!    is not a socket, is an error. The socket listens at a temporary name
//!    first and is renamed over PATH, so a client never finds PATH missing
//!    during a restart; services starting on one path at once take turns
//!    (PROTOCOL.md section 10.2). The socket file is removed when the
//!    [`Service`] is dropped.
//! 3. **Standalone**: neither variable is set and fds 3 and 4 are open. One
//!    request frame is read from fd 3 (up to the end of the frame or of
//!    the input), its response frame is written to fd 4, and then
//!    [`Service::next_request`] returns `None`; so `service 3<request
//!    4>response` is a regression test, and `charon test` wraps it.
//!
//! Otherwise `init` fails with a message naming the three ways.
//!
//! ## One request at a time
//!
//! The instance accepts one connection, reads one request frame within the
//! read timeout, hands it to the program and writes the response with one
//! `sendmsg` (header and body, the body not copied; `MSG_NOSIGNAL`, so a
//! client that vanished gives `EPIPE`, counted as unanswered, and never
//! kills the instance with SIGPIPE). The connection is then closed, unless
//! the request carried the keep-affinity attribute: then the next request
//! is read from the same connection, before any new connection is accepted,
//! for as long as the client sends it within the affinity timeout. While it
//! waits on such a connection the slot stays busy (with no request start
//! time), since the instance is not available to other clients.
//!
//! ## Bad input
//!
//! Bad input never reaches the program and never stops the instance:
//!
//! | input | answer |
//! |-------|--------|
//! | bytes that are not a frame, a truncated frame, a bad field | `ERROR MALFORMED_REQUEST`, connection closed |
//! | a frame over the size limits (even one claiming 4 GiB: nothing is allocated for it) | `ERROR REQUEST_TOO_LARGE` |
//! | another protocol version | `ERROR UNSUPPORTED_VERSION` |
//! | no whole request within the read timeout (`CHARON_READ_TIMEOUT_MS`, default 10 000) | `ERROR READ_TIMEOUT` |
//! | a connection closed before any byte | nothing: closed |
//! | a request from a peer that `CHARON_ALLOWED_UIDS` / `_GIDS` do not list | `ERROR NOT_PERMITTED` naming its uid and gid, after reading the request |
//!
//! ## Stopping
//!
//! SIGTERM or SIGINT means: finish the request in hand, then
//! [`Service::next_request`] returns `None` and the program exits 0. The
//! handler only sets a flag and writes to an eventfd that every wait polls
//! beside the listening socket, so a signal arriving just before the wait is
//! never lost. The handler uses `SA_RESTART`, so the program's own blocking
//! calls are not disturbed.
//!
//! SIGUSR1 means *drain*: finish the request in hand, serve the connections
//! already queued on the listening socket, then return `None` once the
//! queue is empty. It is for an old generation whose socket has just been
//! replaced (a reload), for every instance when the manager stops (its
//! socket unlinked), and it is the death signal the manager arms: nothing
//! queued on the socket is lost. A drain takes connections for at most
//! [`Options::drain_timeout`] (`CHARON_DRAIN_TIMEOUT_MS`, the manager's
//! `stop-grace`): a dead manager's socket stays in place, and new clients
//! could otherwise keep its queue from ever emptying. A
//! connection kept for affinity is closed instead of waited on.
//!
//! ## Answering
//!
//! [`Request::respond`] and [`Request::fault`] consume the request: a
//! second answer does not compile. A request dropped unanswered sends the
//! client `ERROR NO_ANSWER` at once. A program that exits mid-request
//! (`std::process::exit`) sends nothing: the client sees a silent close,
//! which it retries once on a new connection, as the framework intends for
//! an instance that leaves. A child the program forks (without exec)
//! answers nothing and leaves the parent's slot and socket file alone,
//! even if its panic unwinds through its copies of the request and the
//! service.
//!
//! # Reserved fault codes
//!
//! Faults are the program's answer that a request cannot be served; they
//! reach the client as a fault with code and text, and are never retried.
//! Codes 1-99 are reserved, 100 and up are the service's own, 0 is not a
//! fault code:
//!
//! | code | constant | meaning |
//! |------|----------|---------|
//! | 1 | [`fault::DESERIALIZATION_FAILED`] | the body could not be deserialized |
//! | 2 | [`fault::UNKNOWN_FUNCTION`] | the service does not implement the requested function |
//! | 3 | [`fault::REQUEST_TOO_LARGE`] | the request is larger than the service accepts |
//! | 4 | [`fault::INVALID_ARGUMENT`] | an argument is invalid |
//! | 5 | [`fault::BAD_CONTEXT`] | a context entry is missing or invalid |
//! | 6 | [`fault::INTERNAL`] | the service failed in a way a retry will not fix |
//! | 7 | [`fault::UNSUPPORTED_VERSION`] | the service does not support this version |
//!
//! # Environment
//!
//! | variable | meaning |
//! |----------|---------|
//! | `CHARON_SLOT` | managed mode: the scoreboard slot (set by the manager) |
//! | `CHARON_TEMPLATE` | managed mode: this process is the service's template (set by the manager) |
//! | `CHARON_ACCEPT_SOCKET` | accept mode: the socket path to listen on |
//! | `CHARON_READ_TIMEOUT_MS` | [`Options::read_timeout`] in ms (default 10000) |
//! | `CHARON_AFFINITY_TIMEOUT_MS` | [`Options::affinity_timeout`] in ms (default 60000) |
//! | `CHARON_DRAIN_TIMEOUT_MS` | [`Options::drain_timeout`] in ms (default 10000) |
//! | `CHARON_ALLOWED_UIDS`, `CHARON_ALLOWED_GIDS` | comma-separated ids: if either is set, only a peer (`SO_PEERCRED`) whose uid or gid is listed may call (managed and accept mode) |
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bind;
mod core;
mod error;
mod idle;
mod io;
mod managed;
mod mode;
mod options;
mod panic;
mod peer;
mod read;
mod request;
mod service;
mod sys;
mod template;

pub use charon_protocol::fault;
pub use charon_protocol::{Attributes, ContextIter, Limits, Serialization};
pub use error::{Error, ErrorKind};
pub use mode::Mode;
pub use options::{Options, DEFAULT_AFFINITY_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT};
pub use request::Request;
pub use service::Service;
