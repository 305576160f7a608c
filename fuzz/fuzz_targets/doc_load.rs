//! Arbitrary bytes as an encoded document: an error or a document that
//! re-encodes to something that loads to the same JSON. Never a panic.
#![no_main]

use converge_crdt::ReplicaId;
use converge_doc::Doc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Doc::load(data, ReplicaId::from_u64(1));
    // With a valid header, so the fuzzer reaches the body's decoders.
    let mut framed = b"CVch\x01\x00\0\0\0\0".to_vec();
    framed.extend_from_slice(data);
    let crc = crc32(&framed[10..]);
    framed[6..10].copy_from_slice(&crc.to_le_bytes());
    if let Ok(doc) = Doc::load(&framed, ReplicaId::from_u64(1)) {
        let again = Doc::load(&doc.encode(), ReplicaId::from_u64(2)).expect("re-encoding loads");
        assert_eq!(again.to_json(), doc.to_json());
    }
});

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
