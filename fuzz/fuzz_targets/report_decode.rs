//! Fuzzes the manager's side of the report channel: a message from an
//! untrusted instance. Whatever decodes must re-encode to the same bytes,
//! but for the reserved u16 of each record, which receivers ignore.

#![no_main]

use charon_protocol::report::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match report::decode(data) {
        Ok(Message::Records(recs)) => {
            assert!(recs.len() <= report::MAX_RECORDS);
            let mut want = data.to_vec();
            for rec in want[report::MESSAGE_HEADER_LEN..].chunks_exact_mut(report::RECORD_LEN) {
                rec[14..16].fill(0);
            }
            assert_eq!(report::encode_records(&recs), want);
        }
        Ok(m) => assert_eq!(&report::encode_signal(&m)[..], data),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
