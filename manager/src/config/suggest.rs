//! Suggestions for misspelt keys: "did you mean `maximum-processes`?".
//!
//! Given an unknown key, finds the valid key it most likely meant, or
//! falls back to listing them all. Knows nothing of TOML, of where the
//! key was written, or which keys are valid: `raw.rs` passes its list and
//! reports the error.

/// "unknown key", with the closest of the valid `keys` or their list.
pub(crate) fn unknown_key_message(name: &str, keys: &[&'static str]) -> String {
    match suggest(name, keys) {
        Some(key) => format!("unknown key; did you mean `{key}`?"),
        None => format!("unknown key; valid keys are {}", keys.join(", ")),
    }
}

/// The valid key a misspelt one most likely meant: same letters in another
/// case or with `_` for `-`, `max`/`min` for `maximum`/`minimum`, the only
/// key it is a prefix of, or the nearest by edit distance if that is close.
fn suggest(name: &str, keys: &[&'static str]) -> Option<&'static str> {
    let mut norm = name.to_ascii_lowercase().replace(['_', ' '], "-");
    for (short, long) in [("max-", "maximum-"), ("min-", "minimum-")] {
        if let Some(rest) = norm.strip_prefix(short) {
            norm = format!("{long}{rest}");
        }
    }
    if let Some(key) = keys.iter().find(|k| **k == norm) {
        return Some(key);
    }
    let mut prefixed = keys
        .iter()
        .filter(|k| norm.len() >= 3 && k.starts_with(&norm));
    if let (Some(key), None) = (prefixed.next(), prefixed.next()) {
        return Some(key);
    }
    // Each word abbreviated (same first letter, then a subsequence):
    // `max-procs`, `exec-fail-backoff`.
    let words: Vec<&str> = norm.split('-').collect();
    let mut abbreviated = keys.iter().filter(|k| {
        let key_words: Vec<&str> = k.split('-').collect();
        key_words.len() == words.len()
            && words.iter().zip(&key_words).all(|(w, k)| abbreviates(w, k))
    });
    if let (Some(key), None) = (abbreviated.next(), abbreviated.next()) {
        return Some(key);
    }
    let (distance, key) = keys.iter().map(|k| (edit_distance(&norm, k), *k)).min()?;
    (distance <= 1 + norm.len() / 5).then_some(key)
}

/// True when `short` starts like `long` and its letters all appear in
/// `long`, in order.
fn abbreviates(short: &str, long: &str) -> bool {
    let mut rest = long.chars();
    short.chars().next() == long.chars().next() && short.chars().all(|c| rest.any(|l| l == c))
}

/// Levenshtein distance over bytes (keys are ASCII; anything else is far
/// from every key anyway).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Never empty (it holds b.len() + 1 entries), so row[0] exists.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("exec", "exec"), 0);
    }
}
