//! Arbitrary bytes as an encoded text (the header is prepended so the
//! fuzzer reaches the column decoders past the checksum).
#![no_main]

#[path = "common.rs"]
mod common;

use converge_crdt::ReplicaId;
use converge_doc::text::Text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Text::load(data, ReplicaId::from_u64(1));
    let framed = common::framed(b"CVtx", 2, data);
    if let Ok(text) = Text::load(&framed, ReplicaId::from_u64(1)) {
        let again = Text::load(&text.encode(), ReplicaId::from_u64(2)).expect("re-encoding loads");
        assert_eq!(again.to_string(), text.to_string());
    }
});
