//! Arbitrary bytes decoded as CRDT states: an error or a valid value.
#![no_main]

#[path = "common.rs"]
mod common;

use converge_crdt::{codec, CounterStore, Crdt, MvRegStore, ORMap, ORSet, OrMapStore, PNCounter};
use libfuzzer_sys::fuzz_target;

type Nested = ORMap<u8, OrMapStore<u8, MvRegStore<u32>>>;

fuzz_target!(|data: &[u8]| {
    let framed = common::framed(b"CVcr", 1, data);
    if let Ok(mut v) = codec::decode::<Nested>(&framed) {
        let w = v.clone();
        v.merge(&w);
        assert_eq!(v, w, "merge is idempotent on any valid input");
    }
    let _ = codec::decode::<ORSet<String>>(&framed);
    let _ = codec::decode::<ORMap<String, CounterStore>>(&framed);
    let _ = codec::decode::<PNCounter>(&framed);
});
