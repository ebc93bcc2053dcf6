//! Reserved service fault codes.
//!
//! A *fault* is a service's answer that the request itself cannot be served
//! (bad input, unknown function): it reaches the client as
//! `Fault { code, text }` and is never retried. Codes 1 to 99 are reserved
//! for the meanings below so that clients can act on them generically;
//! services use 100 and up for their own. Code 0 is not a fault code.
//!
//! The first three are Pluton's.

/// The request body could not be deserialized.
pub const DESERIALIZATION_FAILED: u32 = 1;
/// The service does not implement the requested function (typical of a
/// wildcard service).
pub const UNKNOWN_FUNCTION: u32 = 2;
/// The request is larger than the service accepts.
pub const REQUEST_TOO_LARGE: u32 = 3;
/// The request is well formed but an argument is invalid.
pub const INVALID_ARGUMENT: u32 = 4;
/// A required context entry is missing or invalid.
pub const BAD_CONTEXT: u32 = 5;
/// The service failed internally in a way a retry will not fix.
pub const INTERNAL: u32 = 6;
/// The service does not support this version of the request.
pub const UNSUPPORTED_VERSION: u32 = 7;

/// The first code a service may use for its own faults.
pub const FIRST_APPLICATION_CODE: u32 = 100;

/// A short name for a reserved code, `None` for others.
#[must_use]
pub const fn reserved_name(code: u32) -> Option<&'static str> {
    Some(match code {
        DESERIALIZATION_FAILED => "deserialization failed",
        UNKNOWN_FUNCTION => "unknown function",
        REQUEST_TOO_LARGE => "request too large",
        INVALID_ARGUMENT => "invalid argument",
        BAD_CONTEXT => "bad context",
        INTERNAL => "internal error",
        UNSUPPORTED_VERSION => "unsupported version",
        _ => return None,
    })
}
