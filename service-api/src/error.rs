//! The library's error type: what can go wrong starting a service or
//! serving it, each kind with a lowercase message that says what would be
//! valid. Errors a client causes (garbage, timeouts, vanishing) are not
//! here: the library answers or drops such connections itself and carries
//! on.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error from [`crate::Service`] or [`crate::Request`].
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// None of the three ways to run applies.
    NoMode,
    /// `Service::init` was called a second time in this process.
    AlreadyInitialized,
    /// An environment variable has a value the library cannot use.
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// An inherited file descriptor is missing or is not what the mode
    /// needs.
    BadFd {
        /// The fd number.
        fd: i32,
        /// What it should be.
        expected: &'static str,
        /// What was found instead.
        found: String,
    },
    /// Accept mode: the socket path cannot be used.
    Socket {
        /// The path from `CHARON_ACCEPT_SOCKET`.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call the library cannot do without failed.
    Io {
        /// What the library was doing, e.g. "accept a connection".
        action: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The response body exceeds the response size limit; the client got
    /// a `RESPONSE_TOO_LARGE` framework error instead.
    ResponseTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// A fault with code 0, which is not a fault code; the client got an
    /// `INTERNAL` framework error instead.
    ZeroFaultCode,
}

impl Error {
    pub(crate) const fn new(kind: ErrorKind) -> Error {
        Error { kind }
    }

    pub(crate) const fn io(action: &'static str, source: io::Error) -> Error {
        Error {
            kind: ErrorKind::Io { action, source },
        }
    }

    /// What went wrong.
    #[must_use]
    pub const fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::NoMode => f.write_str(
                "no way to run this service: set CHARON_SLOT and pass fds 3-5 (managed, \
                 as charond does), set CHARON_ACCEPT_SOCKET=PATH (accept mode), or open \
                 fd 3 on a request and fd 4 for the response (standalone: \
                 `PROGRAM 3<request 4>response`)",
            ),
            ErrorKind::AlreadyInitialized => f.write_str(
                "Service::init was already called in this process; a process serves \
                 through exactly one Service",
            ),
            ErrorKind::BadEnv {
                var,
                value,
                expected,
            } => write!(f, "{var} must be {expected}, but it is {value:?}"),
            ErrorKind::BadFd {
                fd,
                expected,
                found,
            } => write!(f, "fd {fd} must be {expected}, but it is {found}"),
            ErrorKind::Socket { path, reason } => {
                write!(f, "cannot listen on {}: {reason}", path.display())
            }
            ErrorKind::Io { action, source } => write!(f, "unable to {action}: {source}"),
            ErrorKind::ResponseTooLarge { len, limit } => write!(
                f,
                "response body of {len} bytes exceeds the limit of {limit} bytes \
                 (the client got a response-too-large error)"
            ),
            ErrorKind::ZeroFaultCode => f.write_str(
                "fault code 0 is not a fault code: use 1-99 for the reserved meanings \
                 or 100 and up (the client got an internal error)",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
