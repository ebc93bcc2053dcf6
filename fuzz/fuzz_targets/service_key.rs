//! Fuzzes service key parsing, which sees untrusted text twice: in every
//! request frame and in config file names. The concrete and config parsers
//! and the allocation-free check must agree, and a key that parses must
//! keep its text and its wildcard must parse as a config key.

#![no_main]

use charon_protocol::{check_concrete, ServiceKey, MAX_KEY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let concrete = ServiceKey::parse(s);
    let config = ServiceKey::parse_config(s);
    assert_eq!(concrete.is_ok(), check_concrete(s).is_ok());
    match (concrete, config) {
        (Ok(k), Ok(c)) => {
            assert_eq!(k, c);
            assert_eq!(k.as_str(), s);
            assert!(s.len() <= MAX_KEY_LEN);
            assert_eq!(k.socket_file_name(), format!("{s}.sock"));
            let w = k.wildcard().expect("a concrete key has a wildcard");
            assert_eq!(ServiceKey::parse_config(w.as_str()).as_ref(), Ok(&w));
            assert_eq!(w.application(), k.application());
            assert_eq!(w.version(), k.version());
            assert_eq!(w.serialization(), k.serialization());
        }
        (Err(_), Ok(c)) => assert!(c.is_wildcard() && c.wildcard().is_none()),
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(!a.to_string().is_empty());
        }
        (Ok(_), Err(_)) => panic!("a concrete key must also be a config key"),
    }
});
