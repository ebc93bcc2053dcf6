//! Units in config values: durations (`"250ms"`, `"10s"`), sizes (`"512M"`)
//! and permission modes (`"0660"`).
//!
//! These functions only read text; which range a key allows, and what an
//! integer without a unit means, is decided by `validate.rs`. Errors are
//! messages without the key (the caller adds file, line and key).

use std::time::Duration;

/// The duration units, as the error messages list them.
const DURATION_UNITS: &str = "ms, s, m, h, d";

/// The size units, as the error messages list them.
const SIZE_UNITS: &str = "B, K, M, G, T (or KiB, MiB, GiB, TiB)";

/// Parses a duration: a whole number followed by a unit, `ms`, `s`, `m`,
/// `h` or `d`, with no space between (`"250ms"`, `"10s"`, `"2m"`, `"1h"`).
/// A number alone is seconds (`"0"`, `"30"`).
///
/// ```
/// use std::time::Duration;
/// use charon_manager::config::parse_duration;
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
/// assert!(parse_duration("10 sec").is_err());
/// ```
///
/// # Errors
///
/// A message saying what is wrong and which units are accepted, for a
/// missing number, an unknown unit, a fraction, a sign, or a value too
/// large to represent.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = split_number(s).ok_or_else(|| {
        format!(
            "{s:?} is not a duration: write a whole number and a unit ({DURATION_UNITS}), \
             e.g. \"250ms\", \"10s\" or \"2m\""
        )
    })?;
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is too large for a duration"))?;
    if unit.starts_with('.') {
        return Err(format!(
            "{s:?} is not a duration: use whole numbers only, with a smaller unit \
             (e.g. \"1500ms\" rather than \"1.5s\")"
        ));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: the unit must be one of {DURATION_UNITS}, \
                 right after the number with no space (e.g. \"10s\")"
            ))
        }
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("{s:?} is too large for a duration"))?;
    Ok(Duration::from_millis(millis))
}

/// Parses a size in bytes: a whole number, optionally followed by a unit.
/// Units are binary multiples: `K` = 1024, `M` = 1024², `G` = 1024³,
/// `T` = 1024⁴; `KiB`, `MiB`, `GiB`, `TiB` mean the same, and `B` (or no
/// unit) is bytes. Units are case-insensitive. `KB`, `MB`, `GB` and `TB`
/// are refused because readers disagree on whether they mean 1000 or 1024.
///
/// ```
/// use charon_manager::config::parse_size;
/// assert_eq!(parse_size("512K"), Ok(512 * 1024));
/// assert_eq!(parse_size("2GiB"), Ok(2 << 30));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("512MB").is_err());
/// ```
///
/// # Errors
///
/// A message saying what is wrong and which units are accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = split_number(s).ok_or_else(|| {
        format!(
            "{s:?} is not a size: write a whole number of bytes, optionally followed by \
             a unit ({SIZE_UNITS}), e.g. \"512M\""
        )
    })?;
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is too large for a size"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "{s:?} is ambiguous: sizes are binary multiples, so write {}{} or {}{}iB \
                 (1K = 1024 bytes)",
                number,
                &unit[..1].to_ascii_uppercase(),
                number,
                &unit[..1].to_ascii_uppercase(),
            ))
        }
        _ if unit.starts_with('.') => {
            return Err(format!(
                "{s:?} is not a size: use whole numbers only, with a smaller unit \
                 (e.g. \"1536M\" rather than \"1.5G\")"
            ))
        }
        _ => {
            return Err(format!(
                "{s:?} is not a size: the unit must be one of {SIZE_UNITS}, right after \
                 the number with no space (e.g. \"512M\")"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large for a size"))
}

/// Parses a permission mode written as octal digits: `"0660"`, `"660"` or
/// `"0o660"`. Range checks are the caller's.
///
/// # Errors
///
/// A message when the text is not 1 to 4 octal digits.
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let ok = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(format!(
            "{s:?} is not a mode: write octal permission digits such as \"0660\" or \"0600\""
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| format!("{s:?} is not a mode: {e}"))
}

/// Splits leading ASCII digits from the rest; `None` when there are none.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    (end > 0).then(|| s.split_at(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("30", Duration::from_secs(30)),
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("0ms", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_accepted() {
        let bad: &[(&str, &str)] = &[
            ("10 sec", "ms, s, m, h, d"),
            ("10sec", "ms, s, m, h, d"),
            ("10S", "ms, s, m, h, d"),
            ("", "whole number and a unit"),
            ("s", "whole number and a unit"),
            ("-1s", "whole number and a unit"),
            ("1.5s", "\"1500ms\""),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ];
        for (text, want) in bad {
            let msg = parse_duration(text).unwrap_err();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("10B", 10),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("512KiB", 512 << 10),
            ("512M", 512 << 20),
            ("512mib", 512 << 20),
            ("2G", 2 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn size_errors_say_what_is_accepted() {
        let bad: &[(&str, &str)] = &[
            ("512MB", "512M or 512MiB"),
            ("1kb", "1K or 1KiB"),
            ("512 M", "B, K, M, G, T"),
            ("512X", "B, K, M, G, T"),
            ("1.5G", "\"1536M\""),
            ("M", "whole number of bytes"),
            ("99999999T", "too large"),
        ];
        for (text, want) in bad {
            let msg = parse_size(text).unwrap_err();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_octal_mode("0660"), Ok(0o660));
        assert_eq!(parse_octal_mode("600"), Ok(0o600));
        assert_eq!(parse_octal_mode("0o777"), Ok(0o777));
        assert_eq!(parse_octal_mode("7777"), Ok(0o7777));
        for bad in ["", "0o", "0680", "rw-rw----", "01234", "-660"] {
            let msg = parse_octal_mode(bad).unwrap_err();
            assert!(msg.contains("octal permission digits"), "{bad}: {msg}");
        }
    }
}
