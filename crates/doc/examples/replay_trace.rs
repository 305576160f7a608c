//! Replays a sequential editing trace (josephg/editing-traces format,
//! gzipped JSON) through `Text`'s local-edit API, for profiling:
//!
//! ```sh
//! cargo build --release -p converge-doc --example replay_trace
//! valgrind --tool=callgrind target/release/examples/replay_trace \
//!     ../shared/traces/sequential/friendsforever_flat.json.gz 5
//! ```
//!
//! The second argument repeats the replay (default 1); a third, `floor`,
//! replays into a plain `JumpRopeBuf` instead (the bench's floor: the same
//! edits with no CRDT metadata), for comparing instruction counts. The
//! text is checked against the trace's `endContent`.

use std::io::Read;

use converge_crdt::ReplicaId;
use converge_doc::text::Text;

type Patch = (usize, usize, String);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: replay_trace TRACE.json.gz [REPEAT]")?;
    let repeat: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let floor = args.next().is_some_and(|s| s == "floor");
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path)?).read_to_string(&mut json)?;
    let trace: serde_json::Value = serde_json::from_str(&json)?;
    let end = trace["endContent"].as_str().ok_or("no endContent")?;
    let start = trace["startContent"].as_str().unwrap_or("");
    let mut patches: Vec<Patch> = Vec::new();
    if !start.is_empty() {
        patches.push((0, 0, start.to_owned()));
    }
    for txn in trace["txns"].as_array().ok_or("no txns")? {
        for p in txn["patches"].as_array().ok_or("no patches")? {
            patches.push(serde_json::from_value(p.clone())?);
        }
    }
    for _ in 0..repeat {
        let text = if floor {
            replay_floor(&patches).to_string()
        } else {
            replay(&patches)?.to_string()
        };
        if text != end {
            return Err("the replay does not reach endContent".into());
        }
    }
    println!("{} patches, {} chars", patches.len(), end.chars().count());
    Ok(())
}

#[inline(never)]
fn replay(patches: &[Patch]) -> Result<Text, converge_doc::DocError> {
    let mut text = Text::new(ReplicaId::from_u64(1));
    for (pos, del, ins) in patches {
        if *del > 0 {
            text.delete(*pos, *del)?;
        }
        text.insert(*pos, ins)?;
    }
    Ok(text)
}

#[inline(never)]
fn replay_floor(patches: &[Patch]) -> jumprope::JumpRopeBuf {
    let mut rope = jumprope::JumpRopeBuf::new();
    for (pos, del, ins) in patches {
        if *del > 0 {
            rope.remove(*pos..*pos + *del);
        }
        if !ins.is_empty() {
            rope.insert(*pos, ins);
        }
    }
    rope
}
