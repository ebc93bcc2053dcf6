//! Report messages: what an instance tells the manager on its report channel.
//!
//! The channel is a `SOCK_SEQPACKET` socketpair, so each message arrives
//! whole. Instances batch per-request records (up to [`MAX_RECORDS`] a
//! message) and flush when the batch is full, when it is a second old, or
//! when they go idle, so the manager is not woken per request.
//!
//! Message layout (big-endian):
//!
//! ```text
//! u8  version (= 1)
//! u8  kind    (1 = records, 2 = saturated, 3 = retiring)
//! u16 count   (records that follow; 0 for kinds 2 and 3)
//! count x 16-byte record:
//!     u32 elapsed_us      accept to response written
//!     u32 request_bytes   whole request frame
//!     u32 response_bytes  whole response frame
//!     u8  outcome         0 ok, 1 fault, 2 framework error, 3 no answer
//!     u8  attempt         1 or 2
//!     u16 reserved        0
//! ```

use std::fmt;

/// Version byte of this layout.
pub const REPORT_VERSION: u8 = 1;
/// Most records a message carries.
pub const MAX_RECORDS: usize = 64;
/// Size of one record.
pub const RECORD_LEN: usize = 16;
/// Size of the message header.
pub const MESSAGE_HEADER_LEN: usize = 4;
/// Largest message.
pub const MAX_MESSAGE_LEN: usize = MESSAGE_HEADER_LEN + MAX_RECORDS * RECORD_LEN;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a body.
    Ok,
    /// Answered with a service fault.
    Fault,
    /// Answered with a framework error (malformed request, too large ...).
    Error,
    /// Dropped with no answer written (the client went away, or the write
    /// failed).
    NoAnswer,
}

impl Outcome {
    const fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Fault => 1,
            Outcome::Error => 2,
            Outcome::NoAnswer => 3,
        }
    }

    const fn from_code(c: u8) -> Option<Outcome> {
        Some(match c {
            0 => Outcome::Ok,
            1 => Outcome::Fault,
            2 => Outcome::Error,
            3 => Outcome::NoAnswer,
            _ => return None,
        })
    }
}

/// One served request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Microseconds from accept to response written.
    pub elapsed_us: u32,
    /// Bytes of the request frame.
    pub request_bytes: u32,
    /// Bytes of the response frame.
    pub response_bytes: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// 1, or 2 for a retry.
    pub attempt: u8,
}

impl Record {
    /// Packs into 16 bytes.
    #[must_use]
    pub fn pack(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&self.elapsed_us.to_be_bytes());
        b[4..8].copy_from_slice(&self.request_bytes.to_be_bytes());
        b[8..12].copy_from_slice(&self.response_bytes.to_be_bytes());
        b[12] = self.outcome.code();
        b[13] = self.attempt;
        b
    }

    /// Unpacks 16 bytes; `None` for an unknown outcome.
    #[must_use]
    pub fn unpack(b: &[u8; RECORD_LEN]) -> Option<Record> {
        Some(Record {
            elapsed_us: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            request_bytes: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            response_bytes: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            outcome: Outcome::from_code(b[12])?,
            attempt: b[13],
        })
    }
}

/// A decoded report message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Per-request records.
    Records(Vec<Record>),
    /// Every instance of the service is busy and the manager asked to be
    /// told (see [`crate::scoreboard::Header::want_hints`]).
    Saturated,
    /// The instance reached its request limit and would like to be replaced.
    Retiring,
}

/// Why a report message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportError(String);

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReportError {}

/// Encodes a records message; at most [`MAX_RECORDS`] are taken.
#[must_use]
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    let records = &records[..records.len().min(MAX_RECORDS)];
    let mut out = Vec::with_capacity(MESSAGE_HEADER_LEN + records.len() * RECORD_LEN);
    out.push(REPORT_VERSION);
    out.push(1);
    // At most MAX_RECORDS (64).
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    for r in records {
        out.extend_from_slice(&r.pack());
    }
    out
}

/// Encodes a message with no records (saturated or retiring).
#[must_use]
pub fn encode_signal(msg: &Message) -> [u8; MESSAGE_HEADER_LEN] {
    let kind = match msg {
        Message::Records(_) => 1,
        Message::Saturated => 2,
        Message::Retiring => 3,
    };
    [REPORT_VERSION, kind, 0, 0]
}

/// Decodes one message. The bytes come from an instance: untrusted.
///
/// # Errors
///
/// A [`ReportError`] saying what is wrong.
pub fn decode(b: &[u8]) -> Result<Message, ReportError> {
    if b.len() < MESSAGE_HEADER_LEN {
        return Err(ReportError(format!(
            "report message of {} bytes is shorter than its 4-byte header",
            b.len()
        )));
    }
    if b[0] != REPORT_VERSION {
        return Err(ReportError(format!("report version {} is not 1", b[0])));
    }
    let count = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let body = &b[MESSAGE_HEADER_LEN..];
    match b[1] {
        1 => {
            if count > MAX_RECORDS || body.len() != count * RECORD_LEN {
                return Err(ReportError(format!(
                    "report claims {count} records in {} bytes",
                    body.len()
                )));
            }
            let mut out = Vec::with_capacity(count);
            for chunk in body.chunks_exact(RECORD_LEN) {
                let mut rec = [0u8; RECORD_LEN];
                rec.copy_from_slice(chunk);
                out.push(Record::unpack(&rec).ok_or_else(|| {
                    ReportError(format!("report record has unknown outcome {}", rec[12]))
                })?);
            }
            Ok(Message::Records(out))
        }
        2 | 3 if count == 0 && body.is_empty() => Ok(if b[1] == 2 {
            Message::Saturated
        } else {
            Message::Retiring
        }),
        k => Err(ReportError(format!("report kind {k} is not 1, 2 or 3"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let recs: Vec<Record> = (0..70)
            .map(|i| Record {
                elapsed_us: i * 7,
                request_bytes: i,
                response_bytes: i + 1,
                outcome: [
                    Outcome::Ok,
                    Outcome::Fault,
                    Outcome::Error,
                    Outcome::NoAnswer,
                ][i as usize % 4],
                attempt: 1 + (i % 2) as u8,
            })
            .collect();
        let wire = encode_records(&recs);
        assert_eq!(wire.len(), MAX_MESSAGE_LEN);
        assert_eq!(
            decode(&wire).unwrap(),
            Message::Records(recs[..64].to_vec())
        );
        for m in [Message::Saturated, Message::Retiring] {
            assert_eq!(decode(&encode_signal(&m)).unwrap(), m);
        }
    }

    #[test]
    fn rejects_lies() {
        assert!(decode(&[1, 1, 0, 2]).is_err());
        assert!(decode(&[1, 9, 0, 0]).is_err());
        assert!(decode(&[2, 1, 0, 0]).is_err());
        assert!(decode(&[1]).is_err());
        let mut bad = encode_records(&[Record {
            elapsed_us: 1,
            request_bytes: 1,
            response_bytes: 1,
            outcome: Outcome::Ok,
            attempt: 1,
        }]);
        bad[4 + 12] = 77;
        assert!(decode(&bad).is_err());
    }
}
