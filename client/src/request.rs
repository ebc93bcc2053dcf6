//! One request as the caller describes it: key, body, context, attributes.
//!
//! A [`Request`] is plain data; it is checked (key rules, reserved context
//! names, limits) and encoded only when it is sent, by
//! [`Request::encode_head`]. Connecting and sending are left to the
//! exchange and to [`crate::Client`] / [`crate::Batch`].

use charon_protocol::{check_concrete, encode_request_head, Attributes, Limits, RequestHead};

use crate::error::{Error, ErrorKind};

/// The prefix of context names that belong to the framework.
pub const RESERVED_CONTEXT_PREFIX: &str = "charon.";

/// A request to one service: its key, body, context entries and attributes.
///
/// ```
/// use charon_client::Request;
/// let req = Request::new("system.echo.0.raw", b"hello".to_vec())
///     .context("echo.sleep-ms", "10")
///     .no_retry();
/// assert_eq!(req.key(), "system.echo.0.raw");
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    key: String,
    body: Vec<u8>,
    context: Vec<(String, Vec<u8>)>,
    attributes: Attributes,
}

impl Request {
    /// A request for `key` carrying `body`. The key is checked when the
    /// request is sent or added to a batch.
    #[must_use]
    pub fn new(key: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
        Request {
            key: key.into(),
            body: body.into(),
            context: Vec::new(),
            attributes: Attributes::NONE,
        }
    }

    /// Adds a context entry sent beside the body. Names starting with
    /// `charon.` are reserved: such a request is refused when sent.
    #[must_use]
    pub fn context(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Request {
        self.context.push((name.into(), value.into()));
        self
    }

    /// No-wait: the request is done once it is fully sent; no response is
    /// read and the result is an empty body.
    #[must_use]
    pub fn no_wait(mut self) -> Request {
        self.attributes.set(Attributes::NO_WAIT, true);
        self
    }

    /// No-retry: a silent close is reported as
    /// [`ErrorKind::Disconnected`] instead of being resent once.
    #[must_use]
    pub fn no_retry(mut self) -> Request {
        self.attributes.set(Attributes::NO_RETRY, true);
        self
    }

    /// Keep-affinity: after the response, the client keeps the connection
    /// for this key so that the next affinity request reaches the same
    /// instance. If a kept connection exists, this request uses it.
    #[must_use]
    pub fn keep_affinity(mut self) -> Request {
        self.attributes.set(Attributes::KEEP_AFFINITY, true);
        self
    }

    /// Need-affinity: the request must go over the connection kept by an
    /// earlier keep-affinity request; without one it fails with
    /// [`ErrorKind::NoAffinity`].
    #[must_use]
    pub fn need_affinity(mut self) -> Request {
        self.attributes.set(Attributes::NEED_AFFINITY, true);
        self
    }

    /// The service key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The body.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The attributes.
    #[must_use]
    pub const fn attributes(&self) -> Attributes {
        self.attributes
    }

    /// The context entries, in the order they were added.
    #[must_use]
    pub fn context_entries(&self) -> &[(String, Vec<u8>)] {
        &self.context
    }

    /// Checks the key, context names and limits, and encodes the request
    /// head (everything before the body) into `out`, replacing its contents.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`], [`ErrorKind::ReservedContext`] or
    /// [`ErrorKind::InvalidRequest`] (body, context too large); nothing is
    /// sent in any of these cases.
    pub fn encode_head(
        &self,
        client: &str,
        attempt: u8,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        encode_parts(
            &self.key,
            client,
            &self.context,
            self.body.len(),
            self.attributes,
            attempt,
            limits,
            out,
        )
    }
}

/// Encodes a request head from its parts; shared by [`Request`] and the
/// borrowed-body fast path of [`crate::Client::call`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_parts<K: AsRef<str>, V: AsRef<[u8]>>(
    key: &str,
    client: &str,
    context: &[(K, V)],
    body_len: usize,
    attributes: Attributes,
    attempt: u8,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    check_concrete(key).map_err(|e| Error::with_key(ErrorKind::InvalidKey(e), key))?;
    if let Some((name, _)) = context
        .iter()
        .find(|(n, _)| n.as_ref().starts_with(RESERVED_CONTEXT_PREFIX))
    {
        return Err(Error::with_key(
            ErrorKind::ReservedContext {
                name: name.as_ref().to_string(),
            },
            key,
        ));
    }
    out.clear();
    let head = RequestHead {
        key,
        client,
        attempt,
        attributes,
    };
    encode_request_head(&head, context, body_len, limits, out)
        .map_err(|e| Error::with_key(ErrorKind::InvalidRequest(e), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_context_is_refused() {
        let req = Request::new("a.b.0.raw", Vec::new()).context("charon.attempt", "1");
        let err = req
            .encode_head("t", 1, &Limits::default(), &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::ReservedContext { name } if name == "charon.attempt")
        );
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn oversize_body_is_refused_with_the_limit() {
        let limits = Limits {
            max_request_body: 10,
            ..Limits::default()
        };
        let req = Request::new("a.b.0.raw", vec![0u8; 11]);
        let err = req
            .encode_head("t", 1, &limits, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidRequest(_)));
        assert!(err.to_string().contains("limit of 10 bytes"), "{err}");
    }

    #[test]
    fn bad_key_names_the_rule() {
        let req = Request::new("a.b.01.raw", Vec::new());
        let err = req
            .encode_head("t", 1, &Limits::default(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidKey(_)));
        assert!(err.to_string().contains("version"), "{err}");
    }

    #[test]
    fn attributes_accumulate() {
        let req = Request::new("a.b.0.raw", Vec::new())
            .no_retry()
            .keep_affinity();
        assert!(req.attributes().contains(Attributes::NO_RETRY));
        assert!(req.attributes().contains(Attributes::KEEP_AFFINITY));
        assert!(!req.attributes().contains(Attributes::NO_WAIT));
    }
}
