//! Template messages: the control channel between the manager and a
//! service's *template*, a pre-initialised instance that forks new
//! instances instead of the manager exec'ing the program for each.
//!
//! The channel is a `SOCK_SEQPACKET` socketpair at [`crate::managed::CONTROL_FD`]
//! in the template, so each message arrives whole. The manager sends
//! [`Command::Start`] with two fds attached (`SCM_RIGHTS`: the new
//! instance's stderr pipe's write end, then its report channel end); the
//! template answers every start, in order, with [`Reply::Started`] or
//! [`Reply::Failed`]. Before the first start it says [`Reply::Ready`]
//! once, or [`Reply::NotForkable`] and exits.
//!
//! Message layout (big-endian):
//!
//! ```text
//! u8  version (= 1)
//! u8  kind    (1 start, 2 ready, 3 started, 4 failed, 5 not forkable)
//! u16 reserved (0)
//! kind 1: u32 slot
//! kind 2: nothing
//! kind 3: u32 slot, u32 pid
//! kind 4: u32 slot, i32 errno
//! kind 5: the reason, UTF-8, 1 to MAX_REASON bytes
//! ```

use std::fmt;

/// Version byte of this layout.
pub const TEMPLATE_VERSION: u8 = 1;
/// Size of the message header.
pub const HEADER_LEN: usize = 4;
/// Longest reason a not-forkable message carries.
pub const MAX_REASON: usize = 256;
/// Largest message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_REASON;
/// The fds a start carries, in this order.
pub const START_FDS: usize = 2;

const START: u8 = 1;
const READY: u8 = 2;
const STARTED: u8 = 3;
const FAILED: u8 = 4;
const NOT_FORKABLE: u8 = 5;

/// What the manager asks of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Fork an instance for this scoreboard slot, with the stderr pipe and
    /// report channel attached to the message.
    Start {
        /// The new instance's scoreboard slot.
        slot: u32,
    },
}

/// What a template tells the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Initialised and single-threaded: it takes starts from now on.
    Ready,
    /// The instance for `slot` runs as `pid`, a child of the manager.
    Started {
        /// The slot of the start it answers.
        slot: u32,
        /// The new instance's pid.
        pid: u32,
    },
    /// The fork for `slot` failed with `errno`; nothing runs for it.
    Failed {
        /// The slot of the start it answers.
        slot: u32,
        /// The error of `clone(2)` (or of taking the fds).
        errno: i32,
    },
    /// The program cannot be forked (it runs threads): the template exits.
    NotForkable(String),
}

/// Why a template message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

fn header(kind: u8) -> Vec<u8> {
    vec![TEMPLATE_VERSION, kind, 0, 0]
}

/// Encodes a command.
#[must_use]
pub fn encode_command(cmd: Command) -> Vec<u8> {
    let Command::Start { slot } = cmd;
    let mut out = header(START);
    out.extend_from_slice(&slot.to_be_bytes());
    out
}

/// Encodes a reply; a reason longer than [`MAX_REASON`] is cut at a
/// character boundary, an empty one says "unknown".
#[must_use]
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let (kind, a, b) = match reply {
        Reply::Ready => return header(READY),
        Reply::Started { slot, pid } => (STARTED, *slot, pid.to_be_bytes()),
        Reply::Failed { slot, errno } => (FAILED, *slot, errno.to_be_bytes()),
        Reply::NotForkable(reason) => {
            let mut out = header(NOT_FORKABLE);
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let text = if end == 0 { "unknown" } else { &reason[..end] };
            out.extend_from_slice(text.as_bytes());
            return out;
        }
    };
    let mut out = header(kind);
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b);
    out
}

fn split(b: &[u8]) -> Result<(u8, &[u8]), TemplateError> {
    if b.len() < HEADER_LEN {
        return Err(TemplateError(format!(
            "template message of {} bytes is shorter than its 4-byte header",
            b.len()
        )));
    }
    if b[0] != TEMPLATE_VERSION {
        return Err(TemplateError(format!(
            "template message version {} is not 1",
            b[0]
        )));
    }
    Ok((b[1], &b[HEADER_LEN..]))
}

fn words(kind: u8, body: &[u8]) -> Result<(u32, [u8; 4]), TemplateError> {
    match body {
        [a0, a1, a2, a3, b0, b1, b2, b3] => Ok((
            u32::from_be_bytes([*a0, *a1, *a2, *a3]),
            [*b0, *b1, *b2, *b3],
        )),
        _ => Err(TemplateError(format!(
            "template message kind {kind} has {} bytes after its header, not 8",
            body.len()
        ))),
    }
}

/// Decodes a command (in the template). The bytes come from the manager.
///
/// # Errors
///
/// A [`TemplateError`] saying what is wrong.
pub fn decode_command(b: &[u8]) -> Result<Command, TemplateError> {
    match split(b)? {
        (START, [s0, s1, s2, s3]) => Ok(Command::Start {
            slot: u32::from_be_bytes([*s0, *s1, *s2, *s3]),
        }),
        (START, body) => Err(TemplateError(format!(
            "template start has {} bytes after its header, not 4",
            body.len()
        ))),
        (k, _) => Err(TemplateError(format!("template command kind {k} is not 1"))),
    }
}

/// Decodes a reply (in the manager). The bytes come from a template, which
/// runs the service's code: untrusted.
///
/// # Errors
///
/// A [`TemplateError`] saying what is wrong.
pub fn decode_reply(b: &[u8]) -> Result<Reply, TemplateError> {
    match split(b)? {
        (READY, []) => Ok(Reply::Ready),
        (READY, body) => Err(TemplateError(format!(
            "template ready has {} bytes after its header, not 0",
            body.len()
        ))),
        (STARTED, body) => {
            let (slot, pid) = words(STARTED, body)?;
            Ok(Reply::Started {
                slot,
                pid: u32::from_be_bytes(pid),
            })
        }
        (FAILED, body) => {
            let (slot, errno) = words(FAILED, body)?;
            Ok(Reply::Failed {
                slot,
                errno: i32::from_be_bytes(errno),
            })
        }
        (NOT_FORKABLE, body) if !body.is_empty() && body.len() <= MAX_REASON => Ok(
            Reply::NotForkable(String::from_utf8_lossy(body).into_owned()),
        ),
        (NOT_FORKABLE, body) => Err(TemplateError(format!(
            "template not-forkable reason of {} bytes is not 1 to {MAX_REASON}",
            body.len()
        ))),
        (k, _) => Err(TemplateError(format!(
            "template reply kind {k} is not 2, 3, 4 or 5"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cmd = Command::Start { slot: 70_000 };
        assert_eq!(decode_command(&encode_command(cmd)).unwrap(), cmd);
        for r in [
            Reply::Ready,
            Reply::Started {
                slot: 3,
                pid: 4_194_304,
            },
            Reply::Failed {
                slot: 0,
                errno: -11,
            },
            Reply::NotForkable("3 threads".into()),
        ] {
            assert_eq!(decode_reply(&encode_reply(&r)).unwrap(), r);
        }
    }

    #[test]
    fn wire_bytes_are_the_documented_ones() {
        assert_eq!(
            encode_command(Command::Start { slot: 2 }),
            [1, 1, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(encode_reply(&Reply::Ready), [1, 2, 0, 0]);
        assert_eq!(
            encode_reply(&Reply::Started {
                slot: 2,
                pid: 0x0102
            }),
            [1, 3, 0, 0, 0, 0, 0, 2, 0, 0, 1, 2]
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_and_empty_ones_named() {
        let long = "é".repeat(MAX_REASON);
        let wire = encode_reply(&Reply::NotForkable(long));
        assert!(wire.len() <= MAX_MESSAGE_LEN);
        let Reply::NotForkable(back) = decode_reply(&wire).unwrap() else {
            panic!("not a not-forkable reply");
        };
        assert!(back.chars().all(|c| c == 'é'), "{back}");
        let empty = encode_reply(&Reply::NotForkable(String::new()));
        assert_eq!(
            decode_reply(&empty).unwrap(),
            Reply::NotForkable("unknown".into())
        );
    }

    #[test]
    fn rejects_lies() {
        for bad in [
            &[1u8][..],
            &[2, 2, 0, 0],
            &[1, 9, 0, 0],
            &[1, 2, 0, 0, 7],
            &[1, 3, 0, 0, 0, 0, 0, 1],
            &[1, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 9],
            &[1, 5, 0, 0],
            &[1, 1, 0, 0, 0, 0, 0, 1],
        ] {
            assert!(decode_reply(bad).is_err(), "{bad:?}");
        }
        assert!(decode_command(&[1, 1, 0, 0, 0]).is_err());
        assert!(decode_command(&[1, 2, 0, 0]).is_err());
        assert!(decode_command(&[3, 1, 0, 0, 0, 0, 0, 1]).is_err());
    }
}
