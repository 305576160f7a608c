//! Arbitrary changes (postcard-decoded from the input) applied to a document
//! that already has content: they apply or are refused whole, never panic.
#![no_main]

use converge_crdt::ReplicaId;
use converge_doc::{Change, Doc, PathChange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(changes) = postcard::from_bytes::<Vec<Change>>(data) else {
        return;
    };
    let mut doc = Doc::new(ReplicaId::from_u64(7));
    let base: Vec<PathChange> = serde_json_changes();
    doc.apply(&base).expect("base applies");
    let before = doc.to_json();
    let version = doc.version().clone();
    match doc.apply_changes(&changes) {
        Ok(_) => {
            let again = Doc::load(&doc.encode(), ReplicaId::from_u64(8)).expect("re-encoding loads");
            assert_eq!(again.to_json(), doc.to_json());
        }
        Err(_) => {
            assert_eq!(doc.to_json(), before, "a refused import changes nothing");
            assert_eq!(doc.version(), &version);
        }
    }
});

fn serde_json_changes() -> Vec<PathChange> {
    use converge_doc::PathSeg;
    vec![
        PathChange::Set { path: vec![PathSeg::Key("list".into())], value: serde_json::json!([1, 2, 3]) },
        PathChange::Splice { path: vec![PathSeg::Key("text".into())], index: 0, delete: 0, insert: serde_json::json!("abc") },
        PathChange::Increment { path: vec![PathSeg::Key("n".into())], by: 1 },
    ]
}
