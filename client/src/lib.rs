//! The Charon client library: call services by key, one request at a time
//! or many in parallel, without threads.
//!
//! # Overview
//!
//! - [`Client`] holds the options (run dir, timeout, limits, client name,
//!   built with [`ClientBuilder`]) and makes blocking calls:
//!   [`Client::call`] for a body, [`Client::call_request`] for a
//!   [`Request`] with context and attributes.
//! - [`Batch`] (from [`Client::batch`]) runs many requests at once, to one
//!   service or several: [`Batch::add`], then [`Batch::wait_all`],
//!   [`Batch::wait_any`], [`Batch::wait_one`] or [`Batch::wait_sent`];
//!   results are kept per [`RequestId`].
//! - [`Error`] and its [`ErrorKind`] say why a request has no response
//!   body, telling the service's own faults
//!   ([`ErrorKind::ServiceFault`], [`Error::is_service_fault`]) apart from
//!   framework failures (unavailable, overloaded, not found, timeout, lost
//!   connection, protocol and I/O errors).
//!
//! # Theory of operation
//!
//! A service listens on its *rendezvous socket*, `<run dir>/<key>.sock`;
//! the run dir is the builder's, else `$CHARON_RUN_DIR`, else `/run/charon`
//! for root, else `$XDG_RUNTIME_DIR/charon`, else `/tmp/charon-$UID`
//! ([`default_run_dir`]). Lookup tries the exact key, then its wildcard
//! (`app..1.raw` serves every function of `app` version 1 without a
//! service of its own).
//!
//! A request costs one non-blocking connect, one `sendmsg` of the encoded
//! head and the body together, reads until one response frame is complete,
//! and a close. A response body larger than the first 4 KiB read is
//! received straight into the `Vec` returned to the caller, so it is
//! copied once, by the kernel. Nothing is relayed: the instance that accepted the
//! connection answers it. A service whose listen backlog is full refuses the
//! non-blocking connect at once, which is [`ErrorKind::Overloaded`], never a
//! wait. Writes use `MSG_NOSIGNAL`, so a closed peer never raises `SIGPIPE`
//! and the crate changes no signal disposition.
//!
//! [`Client::call`] waits for the response in a blocking read with the
//! time left as the socket's read timeout (measured faster than `poll(2)`
//! then a read). A [`Batch`] owns one `mio::Poll`: every request's socket is registered in
//! it and each readiness event advances that exchange, so all requests
//! progress in parallel in the calling thread.
//!
//! # Retries
//!
//! An instance may exit between requests or be stopped by the manager while
//! a connection waits for it: the client then sees the connection close
//! with no response at all (a *silent close*: end of file or a reset before
//! any response byte). Such a request is resent once, on a new connection,
//! with its attempt number set to 2 so that services and statistics see the
//! retry, unless the request says [`Request::no_retry`] (then
//! [`ErrorKind::Disconnected`]). Nothing else is retried: a fault, an
//! unavailable or overloaded answer, a timeout, a protocol error, or a close
//! after part of a response arrived. [`Error::is_retryable`] tells a caller
//! whether its own later attempt could help.
//!
//! # Timeouts
//!
//! A call must complete within the client's timeout (default 4 s,
//! [`ClientBuilder::timeout`]), retry included, else
//! [`ErrorKind::Timeout`]. A batch has one clock for all its requests,
//! starting at its first [`Batch::add`] ([`Batch::set_timeout`] changes it
//! and restarts it); when it runs out, every unfinished request times out.
//!
//! # Example
//!
//! ```no_run
//! use charon_client::{Client, ErrorKind, Request};
//!
//! let mut client = Client::builder().run_dir("/tmp/charon-demo").build()?;
//! match client.call("system.echo.0.raw", b"hello") {
//!     Ok(body) => println!("{}", String::from_utf8_lossy(&body)),
//!     Err(e) if e.is_service_fault() => eprintln!("the service refused: {e}"),
//!     Err(e) => eprintln!("no answer: {e}"),
//! }
//!
//! let mut batch = client.batch();
//! let ids: Vec<_> = (0..8)
//!     .map(|i| batch.add(Request::new("system.echo.0.raw", vec![i; 16]).context("echo.sleep-ms", "10")))
//!     .collect::<Result<_, _>>()?;
//! while let Some(id) = batch.wait_any() {
//!     match batch.take(id) {
//!         Some(Ok(body)) => println!("{} answered {} bytes", id.index(), body.len()),
//!         Some(Err(e)) if matches!(e.kind(), ErrorKind::Overloaded) => eprintln!("busy: {e}"),
//!         Some(Err(e)) => eprintln!("{e}"),
//!         None => {}
//!     }
//! }
//! # let _ = ids;
//! # Ok::<(), charon_client::Error>(())
//! ```
// `unsafe` lives in `sys.rs` alone (reading a large body straight into the
// caller's Vec); everything else is safe code.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod batch;
mod client;
mod error;
mod exchange;
mod locate;
mod request;
mod sys;

pub use batch::{Batch, Outcome, RequestId};
pub use charon_protocol::Limits;
pub use client::{Client, ClientBuilder, DEFAULT_TIMEOUT};
pub use error::{Error, ErrorKind};
pub use locate::{default_run_dir, resolve, RUN_DIR_ENV};
pub use request::{Request, RESERVED_CONTEXT_PREFIX};

/// The workspace README's code blocks, compiled as doc-tests so that its
/// examples cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
