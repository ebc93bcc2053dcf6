//! The byte-level primitives frames are made of: length-prefixed strings
//! and bytes written big-endian, and a bounds-checked [`Reader`] over
//! untrusted input, so no length in it can cause a panic or an allocation.

use crate::limits::MAX_TEXT;

use super::DecodeError;

/// Writes `s` with its 2-byte length before it.
pub(super) fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Callers check every such field against a limit below u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes `b` with its 4-byte length before it.
pub(super) fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    // Callers check every such field against a limit below u32::MAX.
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A decoded field of `len` bytes (or entries) within `limit`, or
/// [`DecodeError::FieldTooLarge`] naming it.
pub(super) fn check_len(field: &'static str, len: usize, limit: u64) -> Result<(), DecodeError> {
    if len as u64 > limit {
        Err(DecodeError::FieldTooLarge {
            field,
            len: len as u64,
            limit,
        })
    } else {
        Ok(())
    }
}

/// A bounds-checked cursor over untrusted bytes. Every read checks the
/// remaining length first, so no length in the input can cause a panic or
/// an allocation.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) const fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn str16(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.u16(what)?;
        let b = self.take(usize::from(n), what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8(what))
    }

    pub(super) fn bytes32(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)?;
        self.take(n as usize, what)
    }

    pub(super) fn text32(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes32(what)?;
        check_len(what, b.len(), u64::from(MAX_TEXT))?;
        std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8(what))
    }

    /// How many bytes have been read.
    pub(super) const fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes read since position `start`.
    pub(super) fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
