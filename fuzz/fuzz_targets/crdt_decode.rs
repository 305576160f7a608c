//! Arbitrary bytes decoded as CRDT states: an error or a valid value.
#![no_main]

use converge_crdt::{codec, CounterStore, Crdt, MvRegStore, ORMap, ORSet, OrMapStore, PNCounter};
use libfuzzer_sys::fuzz_target;

type Nested = ORMap<u8, OrMapStore<u8, MvRegStore<u32>>>;

fuzz_target!(|data: &[u8]| {
    let mut framed = b"CVcr\x01\x00\0\0\0\0".to_vec();
    framed.extend_from_slice(data);
    let crc = crc32(&framed[10..]);
    framed[6..10].copy_from_slice(&crc.to_le_bytes());
    if let Ok(mut v) = codec::decode::<Nested>(&framed) {
        let w = v.clone();
        v.merge(&w);
        assert_eq!(v, w, "merge is idempotent on any valid input");
    }
    let _ = codec::decode::<ORSet<String>>(&framed);
    let _ = codec::decode::<ORMap<String, CounterStore>>(&framed);
    let _ = codec::decode::<PNCounter>(&framed);
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
