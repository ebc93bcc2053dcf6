//! Service keys: `Application.Function.Version.Serialization`.
//!
//! A key names a service and, through [`ServiceKey::socket_file_name`], its
//! rendezvous socket in the run dir. This module validates keys and computes
//! the wildcard a lookup falls back to; it does not touch the file system
//! (finding the socket is the client's job).
//!
//! Rules (each broken rule has its own [`KeyError`] variant):
//!
//! - exactly four parts separated by `.`;
//! - each part at most [`MAX_PART_LEN`] bytes of `[A-Za-z0-9_-]`;
//! - Application is never empty;
//! - Function is empty only in a config key, where it makes a *wildcard*
//!   service (`mail..1.JSON` serves every function of `mail` version 1 JSON
//!   that has no service of its own);
//! - Version is a decimal of 1 to 6 digits with no leading zero unless it is
//!   `0`;
//! - Serialization is one of [`Serialization`]'s names, spelled exactly.

use std::fmt;
use std::str::FromStr;

/// Maximum length in bytes of each of the four parts of a key.
pub const MAX_PART_LEN: usize = 32;

/// Maximum length in bytes of a whole key (four full parts and three dots).
pub const MAX_KEY_LEN: usize = 4 * MAX_PART_LEN + 3;

/// Suffix of a rendezvous socket's file name in the run dir.
pub const SOCKET_SUFFIX: &str = ".sock";

/// The serialization named by a key's last part.
///
/// The first nine are Pluton's set, spelled as Pluton spelled them. The
/// framework never looks inside a body; the serialization is part of the
/// contract between a client and a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Serialization {
    /// Opaque bytes (`raw`).
    Raw,
    /// `JSON`.
    Json,
    /// `XML`.
    Xml,
    /// `NETSTRING`.
    Netstring,
    /// `HTML`.
    Html,
    /// `PHP` (PHP's serialize()).
    Php,
    /// `SOAP`.
    Soap,
    /// `COBOL`.
    Cobol,
    /// `JMS`.
    Jms,
    /// `MSGPACK` (MessagePack).
    Msgpack,
    /// `PROTOBUF` (Protocol Buffers).
    Protobuf,
    /// `CBOR` (RFC 8949).
    Cbor,
}

impl Serialization {
    /// Every serialization, in documentation order.
    pub const ALL: [Serialization; 12] = [
        Serialization::Raw,
        Serialization::Json,
        Serialization::Xml,
        Serialization::Netstring,
        Serialization::Html,
        Serialization::Php,
        Serialization::Soap,
        Serialization::Cobol,
        Serialization::Jms,
        Serialization::Msgpack,
        Serialization::Protobuf,
        Serialization::Cbor,
    ];

    /// The name as it appears in a key.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Serialization::Raw => "raw",
            Serialization::Json => "JSON",
            Serialization::Xml => "XML",
            Serialization::Netstring => "NETSTRING",
            Serialization::Html => "HTML",
            Serialization::Php => "PHP",
            Serialization::Soap => "SOAP",
            Serialization::Cobol => "COBOL",
            Serialization::Jms => "JMS",
            Serialization::Msgpack => "MSGPACK",
            Serialization::Protobuf => "PROTOBUF",
            Serialization::Cbor => "CBOR",
        }
    }

    /// Looks a name up, spelled exactly.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Serialization> {
        Serialization::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn valid_list() -> String {
        let names: Vec<&str> = Serialization::ALL.iter().map(|s| s.as_str()).collect();
        names.join(", ")
    }
}

impl fmt::Display for Serialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a key's four parts a [`KeyError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The first part.
    Application,
    /// The second part.
    Function,
    /// The third part.
    Version,
    /// The fourth part.
    Serialization,
}

impl Part {
    const ALL: [Part; 4] = [
        Part::Application,
        Part::Function,
        Part::Version,
        Part::Serialization,
    ];
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Application => "application",
            Part::Function => "function",
            Part::Version => "version",
            Part::Serialization => "serialization",
        })
    }
}

/// Why a string is not a valid service key. Each variant is one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key does not have exactly four `.`-separated parts.
    PartCount {
        /// How many parts the string had.
        found: usize,
    },
    /// A part is longer than [`MAX_PART_LEN`] bytes.
    PartTooLong {
        /// The part.
        part: Part,
        /// Its length in bytes.
        len: usize,
    },
    /// A part holds a character outside `[A-Za-z0-9_-]`.
    BadCharacter {
        /// The part.
        part: Part,
        /// The first offending character.
        ch: char,
    },
    /// The application part is empty.
    EmptyApplication,
    /// The function part is empty where a concrete key is needed.
    EmptyFunction,
    /// The version is not a decimal of 1-6 digits without a leading zero.
    BadVersion {
        /// The version part as written.
        found: String,
    },
    /// The serialization is not one of the documented names.
    UnknownSerialization {
        /// The serialization part as written.
        found: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::PartCount { found } => write!(
                f,
                "a service key has exactly 4 parts separated by '.' \
                 (Application.Function.Version.Serialization), but this one has {found}"
            ),
            KeyError::PartTooLong { part, len } => write!(
                f,
                "the {part} part is at most {MAX_PART_LEN} bytes long, but this one is {len}"
            ),
            KeyError::BadCharacter { part, ch } => write!(
                f,
                "the {part} part may hold only letters, digits, '_' and '-', but it holds {ch:?}"
            ),
            KeyError::EmptyApplication => f.write_str("the application part must not be empty"),
            KeyError::EmptyFunction => f.write_str(
                "the function part must not be empty (only a config file name \
                 may leave it empty, to define a wildcard service)",
            ),
            KeyError::BadVersion { found } => write!(
                f,
                "the version part must be a decimal of 1 to 6 digits with no leading \
                 zero unless it is 0, but it is {found:?}"
            ),
            KeyError::UnknownSerialization { found } => write!(
                f,
                "the serialization part must be one of {}, but it is {found:?}",
                Serialization::valid_list()
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// A validated service key.
///
/// ```
/// use charon_protocol::ServiceKey;
/// let key: ServiceKey = "mail.send.1.JSON".parse()?;
/// assert_eq!(key.function(), "send");
/// assert_eq!(key.wildcard().unwrap().as_str(), "mail..1.JSON");
/// assert_eq!(key.socket_file_name(), "mail.send.1.JSON.sock");
/// # Ok::<(), charon_protocol::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    text: String,
    // Byte offsets of the three dots.
    dots: [usize; 3],
    version: u32,
    serialization: Serialization,
}

impl ServiceKey {
    /// Parses a concrete key, as a client names a service: the function part
    /// must not be empty.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] naming the first rule the string breaks.
    pub fn parse(s: &str) -> Result<ServiceKey, KeyError> {
        let key = ServiceKey::parse_config(s)?;
        if key.is_wildcard() {
            return Err(KeyError::EmptyFunction);
        }
        Ok(key)
    }

    /// Parses a key as a config file names a service: the function part may
    /// be empty, which makes a wildcard service.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] naming the first rule the string breaks.
    pub fn parse_config(s: &str) -> Result<ServiceKey, KeyError> {
        let scan = scan(s)?;
        Ok(ServiceKey {
            text: s.to_string(),
            dots: scan.dots,
            version: scan.version,
            serialization: scan.serialization,
        })
    }

    /// The whole key as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The application part.
    #[must_use]
    pub fn application(&self) -> &str {
        &self.text[..self.dots[0]]
    }

    /// The function part (empty for a wildcard key).
    #[must_use]
    pub fn function(&self) -> &str {
        &self.text[self.dots[0] + 1..self.dots[1]]
    }

    /// The version part as a number.
    #[must_use]
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// The serialization part.
    #[must_use]
    pub const fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// True when the function part is empty (a wildcard config key).
    #[must_use]
    pub fn is_wildcard(&self) -> bool {
        self.dots[1] == self.dots[0] + 1
    }

    /// The wildcard key a lookup falls back to when this exact key has no
    /// service: the same key with the function part emptied. `None` if this
    /// key is already a wildcard.
    #[must_use]
    pub fn wildcard(&self) -> Option<ServiceKey> {
        if self.is_wildcard() {
            return None;
        }
        let text = format!("{}..{}", self.application(), &self.text[self.dots[1] + 1..]);
        let app = self.dots[0];
        Some(ServiceKey {
            dots: [app, app + 1, app + 1 + (self.dots[2] - self.dots[1])],
            text,
            version: self.version,
            serialization: self.serialization,
        })
    }

    /// The candidates a lookup tries, in order: the exact key, then its
    /// wildcard.
    #[must_use]
    pub fn lookup_order(&self) -> Vec<ServiceKey> {
        let mut out = vec![self.clone()];
        out.extend(self.wildcard());
        out
    }

    /// The rendezvous socket's file name in the run dir: `<key>.sock`.
    #[must_use]
    pub fn socket_file_name(&self) -> String {
        format!("{}{SOCKET_SUFFIX}", self.text)
    }
}

struct Scan {
    dots: [usize; 3],
    version: u32,
    serialization: Serialization,
}

/// Validates without allocating (the frame decoder calls this per request).
fn scan(s: &str) -> Result<Scan, KeyError> {
    match scan_fast(s.as_bytes()) {
        Some(scan) => Ok(scan),
        None => scan_rules(s),
    }
}

/// One pass over the bytes for the common case, a valid key; `None` for
/// anything else, which [`scan_rules`] then explains rule by rule. The
/// rule-by-rule scan cost about 1,200 of an instance's 4,100 instructions
/// per request (callgrind, roundtrip benchmark).
fn scan_fast(b: &[u8]) -> Option<Scan> {
    let mut dots = [0usize; 3];
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'.' {
            *dots.get_mut(n)? = i;
            n += 1;
        } else if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            return None;
        }
    }
    let [d0, d1, d2] = dots;
    let parts_ok = n == 3
        && (1..=MAX_PART_LEN).contains(&d0)
        && d1 - d0 - 1 <= MAX_PART_LEN
        && d2 - d1 - 1 <= MAX_PART_LEN
        && b.len() - d2 - 1 <= MAX_PART_LEN;
    if !parts_ok {
        return None;
    }
    // The bytes are ASCII (checked above), so these slices are UTF-8.
    let version = parse_version(std::str::from_utf8(&b[d1 + 1..d2]).ok()?)?;
    let serialization = Serialization::from_name(std::str::from_utf8(&b[d2 + 1..]).ok()?)?;
    Some(Scan {
        dots,
        version,
        serialization,
    })
}

/// Checks each rule in the documented order and names the first broken.
fn scan_rules(s: &str) -> Result<Scan, KeyError> {
    let mut parts: [&str; 4] = [""; 4];
    let mut count = 0;
    for piece in s.split('.') {
        if count < 4 {
            parts[count] = piece;
        }
        count += 1;
    }
    if count != 4 {
        return Err(KeyError::PartCount { found: count });
    }
    for (part, text) in Part::ALL.iter().zip(&parts) {
        if text.len() > MAX_PART_LEN {
            return Err(KeyError::PartTooLong {
                part: *part,
                len: text.len(),
            });
        }
        if let Some(ch) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(KeyError::BadCharacter { part: *part, ch });
        }
    }
    if parts[0].is_empty() {
        return Err(KeyError::EmptyApplication);
    }
    let version = parse_version(parts[2]).ok_or_else(|| KeyError::BadVersion {
        found: parts[2].to_string(),
    })?;
    let serialization =
        Serialization::from_name(parts[3]).ok_or_else(|| KeyError::UnknownSerialization {
            found: parts[3].to_string(),
        })?;
    let d0 = parts[0].len();
    let d1 = d0 + 1 + parts[1].len();
    let d2 = d1 + 1 + parts[2].len();
    Ok(Scan {
        dots: [d0, d1, d2],
        version,
        serialization,
    })
}

/// Checks that `s` is a valid concrete key (function part not empty) without
/// allocating.
///
/// # Errors
///
/// The [`KeyError`] naming the first broken rule.
pub fn check_concrete(s: &str) -> Result<(), KeyError> {
    let scan = scan(s)?;
    if scan.dots[1] == scan.dots[0] + 1 {
        return Err(KeyError::EmptyFunction);
    }
    Ok(())
}

fn parse_version(s: &str) -> Option<u32> {
    let ok = !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

impl FromStr for ServiceKey {
    type Err = KeyError;

    /// Same as [`ServiceKey::parse`] (a concrete key).
    fn from_str(s: &str) -> Result<ServiceKey, KeyError> {
        ServiceKey::parse(s)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceKey({:?})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let k = ServiceKey::parse("system.echo.0.raw").unwrap();
        assert_eq!(k.application(), "system");
        assert_eq!(k.function(), "echo");
        assert_eq!(k.version(), 0);
        assert_eq!(k.serialization(), Serialization::Raw);
        assert!(!k.is_wildcard());
        assert_eq!(k.to_string(), "system.echo.0.raw");
    }

    #[test]
    fn wildcard_resolution_order() {
        let k = ServiceKey::parse("mail.send.12.JSON").unwrap();
        let order: Vec<String> = k.lookup_order().iter().map(|k| k.to_string()).collect();
        assert_eq!(order, ["mail.send.12.JSON", "mail..12.JSON"]);
        let w = k.wildcard().unwrap();
        assert!(w.is_wildcard());
        assert_eq!(w.application(), "mail");
        assert_eq!(w.function(), "");
        assert_eq!(w.version(), 12);
        assert_eq!(w, ServiceKey::parse_config("mail..12.JSON").unwrap());
        assert!(w.wildcard().is_none());
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: &[(&str, KeyError)] = &[
            ("a.b.0", KeyError::PartCount { found: 3 }),
            ("a.b.0.raw.x", KeyError::PartCount { found: 5 }),
            (
                &format!("{}.b.0.raw", "a".repeat(33)),
                KeyError::PartTooLong {
                    part: Part::Application,
                    len: 33,
                },
            ),
            (
                "a.b c.0.raw",
                KeyError::BadCharacter {
                    part: Part::Function,
                    ch: ' ',
                },
            ),
            (".b.0.raw", KeyError::EmptyApplication),
            ("a..0.raw", KeyError::EmptyFunction),
            ("a.b.01.raw", KeyError::BadVersion { found: "01".into() }),
            (
                "a.b.1234567.raw",
                KeyError::BadVersion {
                    found: "1234567".into(),
                },
            ),
            ("a.b..raw", KeyError::BadVersion { found: "".into() }),
            (
                "a.b.0.json",
                KeyError::UnknownSerialization {
                    found: "json".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&ServiceKey::parse(input).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn messages_say_what_is_valid() {
        let msg = ServiceKey::parse("a.b.0.yaml").unwrap_err().to_string();
        assert!(msg.contains("raw, JSON, XML"), "{msg}");
        let msg = ServiceKey::parse("a.b.0").unwrap_err().to_string();
        assert!(msg.contains("exactly 4 parts"), "{msg}");
    }

    #[test]
    fn config_keys_may_be_wildcards() {
        assert!(ServiceKey::parse_config("mail..1.JSON")
            .unwrap()
            .is_wildcard());
        assert_eq!(
            ServiceKey::parse_config(".x.1.JSON").unwrap_err(),
            KeyError::EmptyApplication
        );
    }

    #[test]
    fn fast_scan_agrees_with_the_rules() {
        let p = "a".repeat(32);
        let q = "a".repeat(33);
        let inputs = [
            "system.echo.0.raw".to_string(),
            "mail..1.JSON".into(),
            ".x.0.raw".into(),
            "a.b.01.raw".into(),
            "a.b.0.json".into(),
            "a.b.0".into(),
            "a.b.c.d.e".into(),
            "a.b c.0.raw".into(),
            "a.b.0.raw.".into(),
            "...".into(),
            "".into(),
            "a.é.0.raw".into(),
            format!("{p}.{p}.999999.PROTOBUF"),
            format!("{q}.b.0.raw"),
            format!("a.{q}.0.raw"),
            format!("a.b.0.{q}"),
        ];
        for s in &inputs {
            let fast = scan_fast(s.as_bytes()).map(|k| (k.dots, k.version, k.serialization));
            let rules = scan_rules(s).map(|k| (k.dots, k.version, k.serialization));
            match fast {
                Some(f) => assert_eq!(Ok(f), rules, "{s:?}"),
                None => assert!(rules.is_err(), "fast path refused valid {s:?}"),
            }
        }
    }

    #[test]
    fn longest_key_fits() {
        let p = "a".repeat(32);
        let k = format!("{p}.{p}.999999.PROTOBUF");
        assert!(ServiceKey::parse(&k).unwrap().as_str().len() <= MAX_KEY_LEN);
    }
}
