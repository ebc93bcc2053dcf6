//! Limits on what a peer may send.
//!
//! Every length in a frame is checked against these before it is trusted, so
//! an oversized or lying frame gives a typed error, and no allocation is ever
//! sized by a length a peer claimed (see [`crate::FrameBuf`]).

/// Default maximum body size of a request or a response: 64 MiB.
pub const DEFAULT_MAX_BODY: u32 = 64 * 1024 * 1024;
/// Default maximum number of context entries in a request.
pub const DEFAULT_MAX_CONTEXT_ENTRIES: u16 = 64;
/// Default maximum length of a context name, in bytes.
pub const DEFAULT_MAX_CONTEXT_NAME: u16 = 128;
/// Default maximum length of a context value, in bytes.
pub const DEFAULT_MAX_CONTEXT_VALUE: u32 = 64 * 1024;
/// Maximum length of a client name, in bytes.
pub const MAX_CLIENT_NAME: u16 = 256;
/// Maximum length of a fault text, unavailable reason or error text, in bytes.
pub const MAX_TEXT: u32 = 64 * 1024;

/// The limits a decoder enforces and an encoder respects.
///
/// Both ends should use the same limits; the defaults are the documented
/// ones. A receiver refuses a frame whose header announces a payload larger
/// than [`Limits::max_request_payload`] / [`Limits::max_response_payload`]
/// before reading the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum request body, in bytes.
    pub max_request_body: u32,
    /// Maximum response body, in bytes.
    pub max_response_body: u32,
    /// Maximum number of context entries.
    pub max_context_entries: u16,
    /// Maximum context name length, in bytes.
    pub max_context_name: u16,
    /// Maximum context value length, in bytes.
    pub max_context_value: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_body: DEFAULT_MAX_BODY,
            max_response_body: DEFAULT_MAX_BODY,
            max_context_entries: DEFAULT_MAX_CONTEXT_ENTRIES,
            max_context_name: DEFAULT_MAX_CONTEXT_NAME,
            max_context_value: DEFAULT_MAX_CONTEXT_VALUE,
        }
    }
}

impl Limits {
    /// The largest request payload these limits allow: the body plus the
    /// largest possible metadata.
    #[must_use]
    pub fn max_request_payload(&self) -> u64 {
        let per_entry =
            2 + u64::from(self.max_context_name) + 4 + u64::from(self.max_context_value);
        let meta = 1 + 1 // attempt, flags
            + 2 + crate::key::MAX_KEY_LEN as u64
            + 2 + u64::from(MAX_CLIENT_NAME)
            + 2 + u64::from(self.max_context_entries) * per_entry
            + 4;
        meta + u64::from(self.max_request_body)
    }

    /// The largest response payload these limits allow.
    #[must_use]
    pub fn max_response_payload(&self) -> u64 {
        // status + the largest of: body, or code + text.
        1 + 4 + u64::from(self.max_response_body).max(4 + u64::from(MAX_TEXT))
    }
}
