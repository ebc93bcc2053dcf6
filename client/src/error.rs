//! The one error type of the client: why a request got no response body.
//!
//! [`ErrorKind`] separates a service's own answer (a fault) from everything
//! the framework can say (unavailable, overloaded, not found, timeout, lost
//! connection, protocol trouble). Deciding what to do about it is left to
//! the caller; [`Error::is_retryable`] only says whether trying later could
//! help.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use charon_protocol::{DecodeError, EncodeError, ErrorCode, KeyError};

/// Why a request has no response body.
///
/// The key the request named (when there was one) is kept beside the kind so
/// that messages can say which service was meant.
///
/// `{:?}` prints the same sentence as `{}`, so that `fn main() -> Result<(),
/// Error>` reports a failure readably; `{:#?}` prints the fields.
pub struct Error {
    kind: ErrorKind,
    key: Option<Box<str>>,
}

/// What went wrong, one variant per outcome the caller may act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The service answered with a fault: the request itself cannot be
    /// served. Never retried.
    ServiceFault {
        /// The service's fault code (1-99 reserved, see
        /// [`charon_protocol::fault`]).
        code: u32,
        /// The service's explanation.
        text: String,
    },
    /// The service is in backoff: the manager answered for it at once.
    Unavailable {
        /// Seconds after which a new attempt may succeed.
        retry_after: u32,
        /// Why, naming the last exit of the service.
        reason: String,
    },
    /// The service's listen backlog is full: the connect was refused at once.
    Overloaded,
    /// No socket for the key, nor for its wildcard, in the run dir. Never
    /// the answer to a request already written: a retry that finds nobody
    /// is [`ErrorKind::Disconnected`].
    NotFound {
        /// The run dir that was searched.
        run_dir: PathBuf,
        /// A socket file that exists but that nobody listens on, if one was
        /// met.
        stale: Option<PathBuf>,
    },
    /// No complete response before the deadline.
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// The connection closed after part of a response arrived, or closed
    /// silently on a request that may not be retried (or was already
    /// retried, or whose retry found nobody listening).
    Disconnected {
        /// Response bytes received before the close.
        received: usize,
    },
    /// The framework (service library or manager) answered with an error of
    /// its own, such as `NO_ANSWER` or `REQUEST_TOO_LARGE`.
    Framework {
        /// The framework's error code.
        code: ErrorCode,
        /// Its explanation.
        text: String,
    },
    /// The peer sent bytes that are not a valid response frame.
    Protocol(DecodeError),
    /// A system call failed.
    Io {
        /// What the client was doing.
        op: &'static str,
        /// The failure.
        source: io::Error,
    },
    /// A need-affinity request found no kept connection for its key.
    NoAffinity,
    /// The key breaks one of the service key rules.
    InvalidKey(KeyError),
    /// The request cannot be encoded within the limits (body, context
    /// entries, names or values too large). Nothing was sent.
    InvalidRequest(EncodeError),
    /// A context name starts with the reserved prefix `charon.`.
    ReservedContext {
        /// The refused name.
        name: String,
    },
    /// A client or batch option is out of range.
    InvalidOption(String),
}

impl Error {
    /// Builds an error of `kind` about no particular key.
    #[must_use]
    pub fn new(kind: ErrorKind) -> Error {
        Error { kind, key: None }
    }

    pub(crate) fn with_key(kind: ErrorKind, key: &str) -> Error {
        Error {
            kind,
            key: Some(key.into()),
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> ErrorKind {
        ErrorKind::Io { op, source }
    }

    /// What went wrong.
    #[must_use]
    pub const fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The service key the request named, if any.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Consumes the error, returning its kind.
    #[must_use]
    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }

    /// True when the service itself answered with a fault, as opposed to
    /// every failure of the framework.
    #[must_use]
    pub const fn is_service_fault(&self) -> bool {
        matches!(self.kind, ErrorKind::ServiceFault { .. })
    }

    /// True when the same request may succeed if the caller sends it again
    /// later: unavailable (after `retry_after`), overloaded, timeout, a lost
    /// connection. The client has already done the one retry the protocol
    /// allows; this is about the caller's own policy.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable { .. }
                | ErrorKind::Overloaded
                | ErrorKind::Timeout { .. }
                | ErrorKind::Disconnected { .. }
        )
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key.as_deref().unwrap_or("(none)");
        match &self.kind {
            ErrorKind::ServiceFault { code, text } => {
                write!(f, "service {key} answered fault {code}: {text}")
            }
            ErrorKind::Unavailable {
                retry_after,
                reason,
            } => write!(
                f,
                "service {key} is unavailable (retry after {retry_after} s): {reason}"
            ),
            ErrorKind::Overloaded => {
                write!(f, "service {key} is overloaded: its listen backlog is full")
            }
            ErrorKind::NotFound { run_dir, stale } => not_found(f, key, run_dir, stale.as_deref()),
            ErrorKind::Timeout { after } => write!(
                f,
                "service {key} did not answer within {} ms",
                after.as_millis()
            ),
            ErrorKind::Disconnected { received } => disconnected(f, key, *received),
            ErrorKind::Framework { code, text } => {
                write!(f, "framework error from service {key}: {code}: {text}")
            }
            ErrorKind::Protocol(e) => write!(f, "bad response from service {key}: {e}"),
            ErrorKind::Io { op, source } => {
                write!(f, "unable to {op} for service {key}: {source}")
            }
            ErrorKind::NoAffinity => write!(
                f,
                "need-affinity request for service {key} has no kept connection \
                 (send a keep-affinity request first)"
            ),
            ErrorKind::InvalidKey(e) => write!(f, "invalid service key {key:?}: {e}"),
            ErrorKind::InvalidRequest(e) => {
                write!(f, "request for service {key} refused before sending: {e}")
            }
            ErrorKind::ReservedContext { name } => write!(
                f,
                "context name {name:?} is reserved: names starting with \"charon.\" \
                 belong to the framework"
            ),
            ErrorKind::InvalidOption(msg) => f.write_str(msg),
        }
    }
}

/// [`ErrorKind::NotFound`]'s sentence: a stale socket, or none at all.
fn not_found(
    f: &mut fmt::Formatter<'_>,
    key: &str,
    run_dir: &Path,
    stale: Option<&Path>,
) -> fmt::Result {
    let dir = run_dir.display();
    match stale {
        Some(path) => write!(
            f,
            "no service {key} in {dir}: socket {} is stale (nobody listens on it)",
            path.display()
        ),
        None => write!(
            f,
            "no service {key} in {dir}: neither the key nor its wildcard has a socket"
        ),
    }
}

/// [`ErrorKind::Disconnected`]'s sentence: before the response, or how far
/// into it.
fn disconnected(f: &mut fmt::Formatter<'_>, key: &str, received: usize) -> fmt::Result {
    if received == 0 {
        write!(f, "connection to service {key} closed before any response")
    } else {
        write!(
            f,
            "connection to service {key} closed after {received} bytes of a response"
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("Error")
                .field("kind", &self.kind)
                .field("key", &self.key)
                .finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io { source, .. } => Some(source),
            ErrorKind::Protocol(e) => Some(e),
            ErrorKind::InvalidKey(e) => Some(e),
            ErrorKind::InvalidRequest(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_told_apart_from_framework_failures() {
        let fault = Error::with_key(
            ErrorKind::ServiceFault {
                code: 100,
                text: "no such user".into(),
            },
            "a.b.0.raw",
        );
        assert!(fault.is_service_fault());
        assert!(!fault.is_retryable());
        assert_eq!(
            fault.to_string(),
            "service a.b.0.raw answered fault 100: no such user"
        );
        let over = Error::with_key(ErrorKind::Overloaded, "a.b.0.raw");
        assert!(!over.is_service_fault());
        assert!(over.is_retryable());
        let nf = Error::with_key(
            ErrorKind::NotFound {
                run_dir: "/r".into(),
                stale: Some("/r/a.b.0.raw.sock".into()),
            },
            "a.b.0.raw",
        );
        assert!(!nf.is_retryable());
        assert!(nf.to_string().contains("stale"), "{nf}");
    }

    #[test]
    fn debug_is_the_sentence_and_alternate_debug_the_fields() {
        // What `fn main() -> Result<(), Error>` prints after "Error: ".
        let nf = Error::with_key(
            ErrorKind::NotFound {
                run_dir: "/r".into(),
                stale: None,
            },
            "a.b.0.raw",
        );
        assert_eq!(format!("{nf:?}"), nf.to_string());
        assert_eq!(
            format!("{nf:?}"),
            "no service a.b.0.raw in /r: neither the key nor its wildcard has a socket"
        );
        let fields = format!("{nf:#?}");
        assert!(
            fields.contains("NotFound") && fields.contains("run_dir"),
            "{fields}"
        );
    }
}
