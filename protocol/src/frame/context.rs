//! A request's context: named byte-string entries, checked against
//! [`Limits`] when encoded and when decoded, then kept encoded and read
//! lazily through [`Context`].

use std::fmt;

use crate::limits::Limits;

use super::wire::{check_len, Reader};
use super::{DecodeError, EncodeError};

/// A request's context entries, validated at decode time and read lazily.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    raw: &'a [u8],
    count: u16,
}

impl<'a> Context<'a> {
    /// An empty context.
    pub const EMPTY: Context<'static> = Context { raw: &[], count: 0 };

    /// Number of entries.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there is no entry.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The value of the first entry named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The entries in the order the client gave them.
    #[must_use]
    pub fn iter(&self) -> ContextIter<'a> {
        ContextIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<'a> IntoIterator for Context<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = ContextIter<'a>;
    fn into_iter(self) -> ContextIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Context`]'s entries.
#[derive(Clone, Debug)]
pub struct ContextIter<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for ContextIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<(&'a str, &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        // The bytes were validated by decode_request; a failure here would be
        // a bug, and ends iteration rather than panicking.
        let mut r = Reader::new(self.rest);
        let name = r.str16("context name").ok()?;
        let value = r.bytes32("context value").ok()?;
        self.rest = r.rest();
        self.left -= 1;
        Some((name, value))
    }
}

/// Checks context entries against [`Limits`]; their encoded length.
pub(super) fn check_context<K: AsRef<str>, V: AsRef<[u8]>>(
    context: &[(K, V)],
    limits: &Limits,
) -> Result<usize, EncodeError> {
    if context.len() > usize::from(limits.max_context_entries) {
        return Err(EncodeError::TooManyContextEntries {
            count: context.len(),
            limit: limits.max_context_entries,
        });
    }
    let mut ctx_len = 0usize;
    for (name, value) in context {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name.is_empty() || name.len() > usize::from(limits.max_context_name) {
            return Err(EncodeError::ContextName {
                name: name.to_string(),
                limit: limits.max_context_name,
            });
        }
        if value.len() > limits.max_context_value as usize {
            return Err(EncodeError::ContextValueTooLarge {
                name: name.to_string(),
                len: value.len(),
                limit: limits.max_context_value,
            });
        }
        ctx_len += 2 + name.len() + 4 + value.len();
    }
    Ok(ctx_len)
}

/// Reads and checks the context entries, leaving them encoded: a
/// [`Context`] reads them again when asked.
pub(super) fn read_context<'a>(
    r: &mut Reader<'a>,
    limits: &Limits,
) -> Result<Context<'a>, DecodeError> {
    let count = r.u16("context count")?;
    check_len(
        "context count",
        usize::from(count),
        u64::from(limits.max_context_entries),
    )?;
    let ctx_start = r.pos();
    for _ in 0..count {
        let name = r.str16("context name")?;
        if name.is_empty() {
            return Err(DecodeError::EmptyContextName {
                limit: limits.max_context_name,
            });
        }
        check_len(
            "context name",
            name.len(),
            u64::from(limits.max_context_name),
        )?;
        let value = r.bytes32("context value")?;
        check_len(
            "context value",
            value.len(),
            u64::from(limits.max_context_value),
        )?;
    }
    Ok(Context {
        raw: r.since(ctx_start),
        count,
    })
}
