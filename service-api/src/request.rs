//! One request in hand: what the client sent, borrowed from the read
//! buffer, and the two ways to answer it, each consuming the request so it
//! is answered at most once. Dropping it unanswered answers for the
//! program (`core.rs` does the answering). Reading requests is left to
//! `read.rs` and `service.rs`.

use std::fmt;

use charon_protocol::report::Outcome;
use charon_protocol::{
    Attributes, ContextIter, ErrorCode, RequestView, Response, Serialization, MAX_TEXT,
};

use crate::core::Core;
use crate::error::{Error, ErrorKind};

/// A request, from [`crate::Service::next_request`].
///
/// Everything it returns borrows the service's read buffer for `'s`, not
/// the request itself, so the body can be passed straight back:
///
/// ```no_run
/// # fn main() -> Result<(), charon_service::Error> {
/// let mut svc = charon_service::Service::init("system.echo.0.raw")?;
/// while let Some(req) = svc.next_request()? {
///     let body = req.body();
///     req.respond(body)?; // zero copies: header and body go out in one writev
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Answering exactly once
///
/// [`Request::respond`] and [`Request::fault`] take the request by value,
/// so answering twice does not compile:
///
/// ```compile_fail
/// # fn f(req: charon_service::Request<'_>) -> Result<(), charon_service::Error> {
/// req.respond(b"one")?;
/// req.respond(b"two")?; // error: use of moved value `req`
/// # Ok(())
/// # }
/// ```
///
/// A request dropped without an answer (an early `return`, a `?` on the
/// program's own error, a panic that unwinds) sends the client a framework
/// error with code [`ErrorCode::NO_ANSWER`]: a client never hangs on a
/// request the program forgot.
pub struct Request<'s> {
    view: RequestView<'s>,
    parts: [&'s str; 4],
    core: &'s mut Core,
    answered: bool,
}

impl<'s> Request<'s> {
    pub(crate) fn new(
        view: RequestView<'s>,
        parts: [&'s str; 4],
        core: &'s mut Core,
    ) -> Request<'s> {
        Request {
            view,
            parts,
            core,
            answered: false,
        }
    }

    /// The service key the client asked for, e.g. `system.echo.0.raw`
    /// (concrete even when this service is a wildcard).
    #[must_use]
    pub fn key(&self) -> &'s str {
        self.view.head.key
    }

    /// The key's application part.
    #[must_use]
    pub fn application(&self) -> &'s str {
        self.parts[0]
    }

    /// The key's function part: what a wildcard service dispatches on.
    #[must_use]
    pub fn function(&self) -> &'s str {
        self.parts[1]
    }

    /// The key's version part, as a number.
    #[must_use]
    pub fn version(&self) -> u32 {
        // The decoder validated 1-6 decimal digits, so this cannot fail.
        self.parts[2].parse().unwrap_or(0)
    }

    /// The key's serialization part.
    #[must_use]
    pub fn serialization(&self) -> Serialization {
        // The decoder validated the name; Raw is never reached.
        Serialization::from_name(self.parts[3]).unwrap_or(Serialization::Raw)
    }

    /// The name the client gave itself.
    #[must_use]
    pub fn client(&self) -> &'s str {
        self.view.head.client
    }

    /// 1 for a first attempt, 2 for the client's automatic retry after a
    /// silent close.
    #[must_use]
    pub fn attempt(&self) -> u8 {
        self.view.head.attempt
    }

    /// The request's attributes (no-retry, no-wait, keep-affinity,
    /// need-affinity). The library acts on keep-affinity itself.
    #[must_use]
    pub fn attributes(&self) -> Attributes {
        self.view.head.attributes
    }

    /// The value of the first context entry named `name`.
    #[must_use]
    pub fn context(&self, name: &str) -> Option<&'s [u8]> {
        self.view.context.get(name)
    }

    /// Every context entry, in the order the client gave them.
    #[must_use]
    pub fn context_entries(&self) -> ContextIter<'s> {
        self.view.context.iter()
    }

    /// The request body, borrowed from the read buffer (no copy).
    #[must_use]
    pub fn body(&self) -> &'s [u8] {
        self.view.body
    }

    /// Answers with `body`, written after its header in one vectored call
    /// without copying it.
    ///
    /// A client that vanished before reading the answer is not an error:
    /// the request is counted as unanswered and the loop carries on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ResponseTooLarge`] if `body` exceeds the response
    /// limit; the client then got a `RESPONSE_TOO_LARGE` framework error.
    pub fn respond(mut self, body: &[u8]) -> Result<(), Error> {
        self.answered = true;
        self.core.answer_ok(body)
    }

    /// Answers with a fault: the request cannot be served, and the client
    /// will not retry it. Codes 1-99 are reserved ([`crate::fault`]);
    /// use 100 and up for the service's own. A `text` over 64 KiB is cut
    /// at a character boundary.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ZeroFaultCode`] for code 0, which is not a fault code;
    /// the client then got an `INTERNAL` framework error.
    pub fn fault(mut self, code: u32, text: &str) -> Result<(), Error> {
        self.answered = true;
        if code == 0 {
            let resp = Response::Error {
                code: ErrorCode::INTERNAL,
                text: "the service answered with fault code 0, which is not a fault code",
            };
            self.core.answer(&resp, Outcome::Error);
            return Err(Error::new(ErrorKind::ZeroFaultCode));
        }
        let text = truncate(text, MAX_TEXT as usize);
        self.core
            .answer(&Response::Fault { code, text }, Outcome::Fault);
        Ok(())
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        // A forked child's copy of the connection is not its to answer on.
        if !self.answered && !self.core.forked() {
            let resp = Response::Error {
                code: ErrorCode::NO_ANSWER,
                text: "the service dropped the request without answering it",
            };
            self.core.answer(&resp, Outcome::NoAnswer);
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("key", &self.key())
            .field("client", &self.client())
            .field("attempt", &self.attempt())
            .field("attributes", &self.attributes())
            .field("context", &self.view.context)
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// The four parts of a key the decoder has validated (four parts exactly).
pub(crate) fn split_key(key: &str) -> [&str; 4] {
    let mut parts = [""; 4];
    for (slot, part) in parts.iter_mut().zip(key.splitn(4, '.')) {
        *slot = part;
    }
    parts
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_key_into_its_parts() {
        assert_eq!(
            split_key("mail.send.12.JSON"),
            ["mail", "send", "12", "JSON"]
        );
        assert_eq!(split_key("a.b"), ["a", "b", "", ""]);
    }

    #[test]
    fn truncates_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
