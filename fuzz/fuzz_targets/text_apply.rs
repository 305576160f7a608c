//! Arbitrary text changes applied to a text with history: applied or
//! refused whole, never a panic.
#![no_main]

use converge_crdt::ReplicaId;
use converge_doc::text::{Text, TextChange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(changes) = postcard::from_bytes::<Vec<TextChange>>(data) else {
        return;
    };
    let mut t = Text::new(ReplicaId::from_u64(7));
    t.insert(0, "hello world").expect("in bounds");
    t.delete(2, 3).expect("in bounds");
    let before = t.to_string();
    match t.apply_changes(&changes) {
        Ok(()) => {
            let again = Text::load(&t.encode(), ReplicaId::from_u64(8)).expect("re-encoding loads");
            assert_eq!(again.to_string(), t.to_string());
        }
        Err(_) => assert_eq!(t.to_string(), before),
    }
});
