//! Arbitrary bytes as an encoded text (the header is prepended so the
//! fuzzer reaches the column decoders past the checksum).
#![no_main]

use converge_crdt::ReplicaId;
use converge_doc::text::Text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Text::load(data, ReplicaId::from_u64(1));
    let mut framed = b"CVtx\x01\x00\0\0\0\0".to_vec();
    framed.extend_from_slice(data);
    let crc = crc32(&framed[10..]);
    framed[6..10].copy_from_slice(&crc.to_le_bytes());
    if let Ok(text) = Text::load(&framed, ReplicaId::from_u64(1)) {
        let again = Text::load(&text.encode(), ReplicaId::from_u64(2)).expect("re-encoding loads");
        assert_eq!(again.to_string(), text.to_string());
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
