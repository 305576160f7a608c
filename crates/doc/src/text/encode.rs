//! The binary encoding of a text with its whole history.
//!
//! Layout (integers little-endian; see `FORMAT.md` in this crate):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"CVtx"` |
//! | 2 | format version (1) |
//! | 4 | CRC-32 of the body |
//! | n | body: [`Columns`] in postcard encoding (varint integers) |
//!
//! The history is stored column by column, each run-length encoded: who
//! wrote which operations, the causal graph, the operations, and the
//! inserted text (LZ4-compressed when that is smaller). Loading replays the
//! log; sequential history replays a run at a time.

use serde::{Deserialize, Serialize};

use converge_crdt::ReplicaId;

use crate::error::LoadError;
use crate::framing;
use crate::graph::{Frontier, Graph, Lv};
use crate::text::oplog::{OpKind, OpLog};

/// Magic prefix of an encoded text.
pub(crate) const MAGIC: [u8; 4] = *b"CVtx";
/// Format version written and read by this build.
pub(crate) const VERSION: u16 = 1;

/// The encoded body: the log, column by column.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Columns {
    /// Distinct replicas, in order of first appearance.
    replicas: Vec<ReplicaId>,
    /// Runs of LVs: (replica index, first counter, length).
    agents: Vec<(u32, u64, u64)>,
    /// Graph entries: (length, parents as distances back from the entry's start).
    graph: Vec<(u64, Vec<u64>)>,
    /// Op runs: (length << 2 | flags, where bit 0 = delete and bit 1 =
    /// forward; position as a signed delta from where the previous run left
    /// the cursor, which is 0 for uninterrupted typing).
    ops: Vec<(u64, i64)>,
    /// Whether `content` is LZ4-compressed (size-prepended).
    compressed: bool,
    /// Inserted text, UTF-8.
    content: Vec<u8>,
}

/// Limits applied when loading.
#[derive(Debug, Clone)]
pub struct LoadLimits {
    /// Most encoded bytes accepted.
    pub max_bytes: usize,
    /// Most operations in the history.
    pub max_ops: u64,
    /// Most bytes of inserted text (after decompression).
    pub max_content_bytes: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_ops: 1 << 32,
            max_content_bytes: 1 << 30,
        }
    }
}

pub(crate) fn encode(oplog: &OpLog) -> Vec<u8> {
    // Replicas holding the same ops must write the same bytes.
    if let Some(canonical) = oplog.canonical() {
        return encode(&canonical);
    }
    let mut replicas: Vec<ReplicaId> = Vec::new();
    let mut agents = Vec::new();
    for (lvs, replica, counter) in oplog.agents.runs() {
        let idx = match replicas.iter().position(|r| *r == replica) {
            Some(i) => i,
            None => {
                replicas.push(replica);
                replicas.len() - 1
            }
        };
        agents.push((idx as u32, counter, (lvs.end - lvs.start) as u64));
    }
    let graph = oplog
        .graph
        .entries()
        .map(|(span, parents)| {
            (
                (span.end - span.start) as u64,
                parents.iter().map(|p| (span.start - p) as u64).collect(),
            )
        })
        .collect();
    let mut cursor = 0i64;
    let ops = oplog
        .runs
        .iter()
        .map(|r| {
            let flags = u64::from(r.kind == OpKind::Delete) | (u64::from(r.fwd) << 1);
            let pos = r.pos as i64;
            let delta = pos - cursor;
            cursor = cursor_after(r.kind, r.fwd, pos, r.len() as i64);
            (((r.len() as u64) << 2) | flags, delta)
        })
        .collect();
    let raw = oplog.text.as_bytes();
    let packed = lz4_flex::compress_prepend_size(raw);
    let (compressed, content) = if packed.len() < raw.len() {
        (true, packed)
    } else {
        (false, raw.to_vec())
    };
    let columns = Columns {
        replicas,
        agents,
        graph,
        ops,
        compressed,
        content,
    };
    framing::frame(MAGIC, VERSION, |out| {
        framing::postcard_extend(&columns, out)
    })
}

pub(crate) fn decode(bytes: &[u8], limits: &LoadLimits) -> Result<OpLog, LoadError> {
    let body = framing::unframe(MAGIC, VERSION, bytes, limits.max_bytes)?;
    let bad = |why: &str| LoadError::Malformed(why.to_string());
    let (cols, rest) = postcard::take_from_bytes::<Columns>(body)
        .map_err(|e| LoadError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the body"));
    }
    let content = if cols.compressed {
        let Some(size) = cols
            .content
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
        else {
            return Err(bad("compressed content has no size"));
        };
        if size > limits.max_content_bytes {
            return Err(LoadError::TooLarge(format!(
                "{size} bytes of text, limit {}",
                limits.max_content_bytes
            )));
        }
        lz4_flex::decompress_size_prepended(&cols.content)
            .map_err(|e| LoadError::Malformed(e.to_string()))?
    } else {
        cols.content
    };
    let text = String::from_utf8(content).map_err(|_| bad("inserted text is not UTF-8"))?;

    let mut oplog = OpLog::default();
    // Authors: runs must cover 0..n and keep each replica's counters contiguous.
    let mut next: Lv = 0;
    for &(idx, counter, len) in &cols.agents {
        let replica = *cols
            .replicas
            .get(idx as usize)
            .ok_or_else(|| bad("unknown replica index"))?;
        if len == 0 || counter != oplog.agents.version().get(replica) + 1 {
            return Err(bad("a replica's operation counters are not contiguous"));
        }
        let end = (next as u64)
            .checked_add(len)
            .filter(|e| *e <= limits.max_ops)
            .ok_or_else(|| bad("too many operations"))?;
        oplog.agents.push(next..end as Lv, replica, counter);
        next = end as Lv;
    }
    let total = next;
    // Graph: entries cover 0..n, parents point strictly back.
    let mut start: Lv = 0;
    let mut frontier = Frontier::new();
    for (len, parents) in &cols.graph {
        let end = (start as u64)
            .checked_add(*len)
            .filter(|e| *len > 0 && *e <= total as u64)
            .ok_or_else(|| bad("graph does not cover the log"))? as Lv;
        let mut ps: Frontier = Frontier::new();
        for d in parents {
            let d = usize::try_from(*d)
                .ok()
                .filter(|d| *d >= 1 && *d <= start)
                .ok_or_else(|| bad("a parent points forward"))?;
            ps.push(start - d);
        }
        ps.sort_unstable();
        ps.dedup();
        oplog.graph.push(&ps, start..end);
        Graph::advance_frontier(&mut frontier, &ps, &(start..end));
        start = end;
    }
    if start != total {
        return Err(bad("graph does not cover the log"));
    }
    // Each replica's ops must form a causal chain.
    for (lvs, replica, counter) in oplog.agents.runs().collect::<Vec<_>>() {
        let prev = (counter > 1)
            .then(|| {
                oplog
                    .agents
                    .lv(converge_crdt::Dot::new(replica, counter - 1))
            })
            .flatten();
        if !oplog
            .graph
            .extends_own_chain(&oplog.graph.parents_of(lvs.start), prev)
        {
            return Err(bad(
                "an operation has not seen its replica's previous operation",
            ));
        }
    }
    // Ops: runs cover 0..n; inserts consume the text in order.
    let mut chars = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()));
    // The iterator yields char boundaries; skip the first (0) so that
    // `nth(n - 1)` gives the boundary `n` characters on.
    let _ = chars.next();
    let mut byte = 0usize;
    let mut lv: Lv = 0;
    let mut cursor: i64 = 0;
    for &(len_flags, delta) in &cols.ops {
        let (flags, len) = (len_flags & 3, len_flags >> 2);
        let pos = cursor
            .checked_add(delta)
            .filter(|p| *p >= 0)
            .ok_or_else(|| bad("negative position"))?;
        let end = (lv as u64)
            .checked_add(len)
            .filter(|e| len > 0 && *e <= total as u64)
            .ok_or_else(|| bad("ops do not cover the log"))? as Lv;
        let kind = if flags & 1 == 1 {
            OpKind::Delete
        } else {
            OpKind::Insert
        };
        let fwd = flags & 2 == 2;
        let n = end - lv;
        if kind == OpKind::Delete && !fwd && (pos as usize) + 1 < n {
            return Err(bad("backspace run past the start"));
        }
        let content = if kind == OpKind::Insert {
            let from = byte;
            byte = chars
                .nth(n - 1)
                .ok_or_else(|| bad("inserted text is shorter than the inserts"))?;
            from..byte
        } else {
            byte..byte
        };
        oplog.push_decoded(lv..end, kind, pos as usize, fwd, content, &text);
        cursor = cursor_after(kind, fwd, pos, n as i64);
        lv = end;
    }
    if lv != total || byte != text.len() {
        return Err(bad("ops do not match the log or the text"));
    }
    oplog.text = text;
    oplog.frontier = frontier;
    Ok(oplog)
}

/// Where the cursor is after a run: the base for the next run's position.
fn cursor_after(kind: OpKind, fwd: bool, pos: i64, len: i64) -> i64 {
    match (kind, fwd) {
        (OpKind::Insert, _) => pos + len,
        (OpKind::Delete, true) => pos,
        (OpKind::Delete, false) => pos - len + 1,
    }
}
