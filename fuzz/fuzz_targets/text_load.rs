//! Arbitrary bytes as an encoded text (the header is prepended, as format
//! versions 3 and 2, so the fuzzer reaches the decoders past the checksum).
//! A version 3 history is decoded only when first needed: the target asks
//! for it, and checks that a history that does not decode refuses edits.
#![no_main]

#[path = "common.rs"]
mod common;

use converge_crdt::ReplicaId;
use converge_doc::DocError;
use converge_doc::text::Text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Text::load(data, ReplicaId::from_u64(1));
    for version in [3, 2] {
        let framed = common::framed(b"CVtx", version, data);
        let Ok(mut text) = Text::load(&framed, ReplicaId::from_u64(1)) else {
            continue;
        };
        let shown = text.to_string();
        if text.oplog().is_ok() {
            let again =
                Text::load(&text.encode(), ReplicaId::from_u64(2)).expect("re-encoding loads");
            assert_eq!(again.to_string(), shown);
            assert!(again.oplog().is_ok(), "a re-encoded history decodes");
        } else {
            assert!(matches!(text.insert(0, "x"), Err(DocError::History(_))));
            assert_eq!(text.to_string(), shown, "a refused edit changes nothing");
        }
    }
});
