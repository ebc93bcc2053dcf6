//! The frame header: the 8 bytes (magic, version, kind, payload length)
//! before every request and response payload. What the payload holds is
//! `request.rs`'s and `response.rs`'s.

use super::DecodeError;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"CH";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request, client to service.
    Request,
    /// A response, service (or manager) to client.
    Response,
}

impl FrameKind {
    const fn code(self) -> u8 {
        match self {
            FrameKind::Request => 1,
            FrameKind::Response => 2,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Request or response.
    pub kind: FrameKind,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Packs the header into its 8 bytes.
    #[must_use]
    pub fn pack(&self) -> [u8; HEADER_LEN] {
        let l = self.payload_len.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            VERSION,
            self.kind.code(),
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }

    /// Unpacks and checks a header: magic, version, kind.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadMagic`], [`DecodeError::UnsupportedVersion`] or
    /// [`DecodeError::BadKind`].
    pub fn unpack(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, DecodeError> {
        if b[0..2] != MAGIC {
            return Err(DecodeError::BadMagic([b[0], b[1]]));
        }
        if b[2] != VERSION {
            return Err(DecodeError::UnsupportedVersion(b[2]));
        }
        let kind = match b[3] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            other => return Err(DecodeError::BadKind(other)),
        };
        Ok(FrameHeader {
            kind,
            payload_len: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}
