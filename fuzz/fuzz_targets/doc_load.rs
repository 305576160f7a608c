//! Arbitrary bytes as an encoded document: an error or a document that
//! re-encodes to something that loads to the same JSON. Never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use converge_crdt::ReplicaId;
use converge_doc::Doc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Doc::load(data, ReplicaId::from_u64(1));
    // With a valid header, so the fuzzer reaches the body's decoders.
    let framed = common::framed(b"CVch", 1, data);
    if let Ok(doc) = Doc::load(&framed, ReplicaId::from_u64(1)) {
        let again = Doc::load(&doc.encode(), ReplicaId::from_u64(2)).expect("re-encoding loads");
        assert_eq!(again.to_json(), doc.to_json());
    }
});
