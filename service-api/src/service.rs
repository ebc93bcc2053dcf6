//! The public face of the library: [`Service::init`] sets the mode up and
//! [`Service::next_request`] hands the program one request at a time,
//! refusing bad input with a framework error before it gets there.
//!
//! Accepting connections and answering are `core.rs`; reading a request
//! frame under the read timeout is `read.rs`; the request itself is
//! `request.rs`; which mode runs is `mode.rs`; the manager's side channels
//! are `managed.rs`.

use std::io;
use std::os::fd::AsFd;

use charon_protocol::{decode_request, Attributes, FrameBuf, FrameKind};

use crate::core::Core;
use crate::error::{Error, ErrorKind};
use crate::idle::IdleWait;
use crate::managed::Managed;
use crate::mode::{self, Mode, Source};
use crate::options::Options;
use crate::peer::Allowed;
use crate::request::{split_key, Request};
use crate::sys;

/// A service instance: the request loop a service program runs.
///
/// See the [crate documentation](crate) for the theory of operation.
#[derive(Debug)]
pub struct Service {
    buf: FrameBuf,
    core: Core,
}

impl Service {
    /// Starts the service, choosing the mode from the environment with
    /// default [`Options`].
    ///
    /// `name` only labels this program in the library's own messages (a
    /// refused peer, a panic); any short name does, such as the program's
    /// name or the key it is written for. It does not choose which requests
    /// come: the manager's config file (or the socket path in accept mode)
    /// decides that, and the key of each request is in [`Request::key`].
    ///
    /// Call it first thing in `main`: in managed and standalone mode it
    /// takes ownership of the inherited fds 3 to 5, which the program must
    /// not have used. It installs a SIGTERM and SIGINT handler, and a panic
    /// hook that prints one line, `NAME: panicked at FILE:LINE:COL:
    /// MESSAGE`, as the program's last stderr line (the one the manager
    /// shows in `charon stats` and in the reason of a fast fail).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoMode`] if none of the three ways to run applies (the
    /// message names all three); [`ErrorKind::BadEnv`] or
    /// [`ErrorKind::BadFd`] if the environment or an inherited fd is not
    /// what its mode needs; [`ErrorKind::Socket`] if accept mode cannot bind
    /// its path; [`ErrorKind::AlreadyInitialized`] on a second call.
    pub fn init(name: &str) -> Result<Service, Error> {
        Service::init_with(name, Options::default())
    }

    /// As [`Service::init`], with the program's own [`Options`]. The
    /// `CHARON_READ_TIMEOUT_MS` and `CHARON_AFFINITY_TIMEOUT_MS`
    /// environment variables override them.
    ///
    /// # Errors
    ///
    /// As [`Service::init`].
    pub fn init_with(name: &str, opts: Options) -> Result<Service, Error> {
        let env = |k: &str| std::env::var(k).ok();
        let opts = opts.with_env(env)?;
        let allowed = Allowed::from_env(env)?;
        if !sys::claim_process() {
            return Err(Error::new(ErrorKind::AlreadyInitialized));
        }
        // The mode first: it looks at fds 3 and 4, which the wake-up eventfd
        // would otherwise take.
        let setup = mode::setup(&env)?;
        crate::panic::install(name);
        let stop_fd =
            sys::install_stop_handler().map_err(|e| Error::io("install the SIGTERM handler", e))?;
        let idle = match &setup.source {
            // A template's instances make their own wait set: an epoll set
            // made here would be shared by all of them.
            Source::Listener(_) if setup.template.is_some() => None,
            Source::Listener(l) => Some(
                IdleWait::new(
                    l.as_fd(),
                    stop_fd,
                    setup.managed.as_ref().map(Managed::report_fd),
                )
                .map_err(|e| Error::io("set up waiting for connections", e))?,
            ),
            Source::Standalone { .. } => None,
        };
        let max = opts.limits.max_request_payload();
        Ok(Service {
            buf: FrameBuf::new(FrameKind::Request, max),
            core: Core::new(name, setup, opts, stop_fd, allowed, idle),
        })
    }

    /// The name given to [`Service::init`].
    #[must_use]
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// How this process is being run.
    #[must_use]
    pub const fn mode(&self) -> Mode {
        self.core.mode
    }

    /// Waits for the next request. `Ok(None)` means "stop now and exit 0":
    /// SIGTERM or SIGINT arrived, SIGUSR1 arrived or the manager is gone
    /// and no connection is left queued on the socket, standalone mode's
    /// one request was served, or the program should otherwise leave.
    ///
    /// Bad input (garbage, a truncated or oversized frame, a client that
    /// sends nothing within the read timeout) is answered with a framework
    /// error and dropped here; it never reaches the program.
    ///
    /// In a template (`CHARON_TEMPLATE`), the first call never returns in
    /// the template itself: it forks instances on the manager's command
    /// and returns in each of them (see the crate docs); the process must
    /// be single-threaded then.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] if accepting or waiting fails in a way that will
    /// not heal (the listening socket was closed under us, for instance),
    /// or if an instance forked by a template cannot take its fds.
    pub fn next_request(&mut self) -> Result<Option<Request<'_>>, Error> {
        self.core.become_instance()?;
        let limits = self.core.opts.limits;
        self.clear_buf();
        let frame_len = loop {
            if !self.core.take_frame(&mut self.buf)? {
                self.core.leave();
                return Ok(None);
            }
            match decode_request(self.buf.payload(), &limits) {
                Ok(_) if self.core.conn.as_ref().is_some_and(|c| c.refused.is_some()) => {
                    self.core.refuse_peer(self.buf.received());
                    self.clear_buf();
                }
                Ok(_) => break self.buf.frame().len(),
                Err(e) => {
                    self.core.refuse_decode_at(&e, self.buf.received());
                    self.clear_buf();
                }
            }
        };
        let view = decode_request(self.buf.payload(), &limits).map_err(|e| {
            // Decoded successfully just above: the bytes have not changed.
            Error::io("decode a request", io::Error::other(e))
        })?;
        let keep = view.head.attributes.contains(Attributes::KEEP_AFFINITY)
            && self.core.mode != Mode::Standalone;
        self.core.begin(&view, frame_len, keep);
        let parts = split_key(view.head.key);
        Ok(Some(Request::new(view, parts, &mut self.core)))
    }

    /// Forgets the last frame; bytes a client pipelined after it are kept
    /// only while its connection is.
    fn clear_buf(&mut self) {
        if self.core.conn.is_none() && self.buf.surplus() > 0 {
            self.buf = FrameBuf::new(
                FrameKind::Request,
                self.core.opts.limits.max_request_payload(),
            );
        } else {
            self.buf.reset();
        }
    }
}
