//! The binary encoding of a text with its whole history.
//!
//! Layout (fixed-width integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"CVtx"` |
//! | 2 | format version (3) |
//! | 4 | CRC-32 of the body |
//! | n | body |
//!
//! Version 3's body (integers are LEB128 varints unless said otherwise)
//! is a *summary*, then two blobs:
//!
//! 1. the number of operations;
//! 2. the replicas: a count, then per replica its id (8 bytes) and how
//!    many operations it wrote (at least one). Together they are the
//!    version vector; the counts add up to the number of operations;
//! 3. the length in bytes of the text at the whole version;
//! 4. blob `texts`: that text (UTF-8), then the text of every insert in LV
//!    order. One DEFLATE stream, so that inserted text still in the
//!    document costs little more than a back-reference when it is within
//!    DEFLATE's window; loading inflates only the first part;
//! 5. blob `columns`: the history's columns, see below.
//!
//! A blob is a codec (0 = stored as is, 1 = raw DEFLATE), its decoded
//! length and its stored length, then the stored bytes. The columns are
//! length-prefixed sections, run-length encoded
//! with varints (signed values zigzag-encoded), in the spirit of
//! diamond-types' format:
//!
//! 1. `agents`: who wrote which operations, one varint per run:
//!    `len * replicas + index` (index into the summary's replicas).
//!    Counters are implied: each replica's operations are numbered
//!    1, 2, 3… in LV order;
//! 2. `graph`: the causal graph, one entry per run whose first
//!    operation's parents are not just the operation before it:
//!    `len << 2 | n` (`n` = number of parents, 3 = a count follows), then
//!    the parents, newest first, each as a distance back from the entry's
//!    start (the first) or from the previous parent. Linear history is one
//!    entry;
//! 3. `ops`: the operation runs, positions as deltas from where the
//!    previous run left the cursor (0 for uninterrupted typing, and for
//!    backspacing); see [`put_op_run`].
//!
//! **Loading is lazy.** [`decode`] checks the header and checksum (of the
//! whole body: any corruption in transit or on disk is caught here), reads
//! the summary, inflates the text (the head of `texts`), and checks that
//! the blobs are framed right and within [`LoadLimits`], but decompresses
//! nothing more.
//! The history ([`Lazy`]) is decoded and validated in full the first time
//! it is needed (merging, editing, exporting changes); a history that is
//! well-framed and checksummed yet describes an impossible log (only a
//! hand-made file can) is refused then, with the [`LoadError`] that an
//! eager load would have given: `Text::oplog` and `Text::changes_since`
//! return it, and edits and merges return it as `DocError::History`,
//! changing nothing. The stored text is trusted like version 2's checkout:
//! it is checked against the history for its length when the history is
//! one chain, and a merge that does not fit it is refused. An unchanged
//! loaded text re-encodes to the bytes it was loaded from.
//!
//! Version 2 (the same columns, with the replicas inside them, and a
//! checkout of LV runs instead of the text) still loads, eagerly. Version
//! 1 (postcard columns, LZ4 content) is refused with
//! [`LoadError::UnsupportedVersion`].

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use converge_crdt::{Dot, ReplicaId, VersionVector};

use crate::error::LoadError;
use crate::framing;
use crate::graph::{Frontier, Lv};
use crate::text::oplog::{OpKind, OpLog, OpRun};

/// Magic prefix of an encoded text.
pub(crate) const MAGIC: [u8; 4] = *b"CVtx";
/// Format version written by this build.
pub(crate) const VERSION: u16 = 3;
/// The previous version, still read.
const VERSION_2: u16 = 2;

/// Blob codec: the bytes as they are.
const CODEC_RAW: u64 = 0;
/// Blob codec: raw DEFLATE (RFC 1951; the CRC in the header covers it).
const CODEC_DEFLATE: u64 = 1;
/// Blobs shorter than this are stored raw: compression cannot win much.
const MIN_COMPRESSED: usize = 32;

/// Limits applied when loading.
#[derive(Debug, Clone)]
pub struct LoadLimits {
    /// Most encoded bytes accepted.
    pub max_bytes: usize,
    /// Most operations in the history.
    pub max_ops: u64,
    /// Most bytes of text, of inserted text and of the columns, once
    /// decompressed.
    pub max_content_bytes: usize,
    /// Most graph runs visited, in total, checking that each replica's
    /// operations form a causal chain (each made after its previous one).
    ///
    /// A check walks back from an operation to its replica's previous one,
    /// past whatever other replicas did in between, so the total is about
    /// the graph's runs times the number of replicas editing at once: a few
    /// million for a large document edited live by a hundred people. A
    /// hostile file of thousands of replicas taking turns would need
    /// billions; it is refused with [`LoadError::TooLarge`] instead.
    pub max_chain_check: u64,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_ops: 1 << 32,
            max_content_bytes: 1 << 30,
            max_chain_check: 1 << 25,
        }
    }
}

/// Encodes `oplog`, whose text at the whole version is `text`.
pub(crate) fn encode(oplog: &OpLog, text: &str) -> Vec<u8> {
    // Replicas holding the same ops must write the same bytes. Renumbering
    // the ops does not change the text. One chain has a single causal
    // order, its LV order: no need to work the canonical one out.
    if !oplog.graph.is_chain()
        && let Some((canonical, _)) = oplog.canonical()
    {
        return encode(&canonical, text);
    }
    framing::frame(MAGIC, VERSION, |mut out| {
        put(&mut out, oplog.len() as u64);

        // Replicas in order of first appearance, each with its index.
        let mut replicas: Vec<ReplicaId> = Vec::new();
        let mut index: HashMap<ReplicaId, u64> = HashMap::new();
        let mut agents = Vec::new();
        let runs: Vec<_> = oplog.agents.runs().collect();
        for (_, replica, _) in &runs {
            index.entry(*replica).or_insert_with(|| {
                replicas.push(*replica);
                replicas.len() as u64 - 1
            });
        }
        let n = replicas.len() as u64;
        for (lvs, replica, _) in &runs {
            // Replica ids were collected from these very runs.
            let idx = index.get(replica).copied().unwrap_or(0);
            put(&mut agents, (lvs.end - lvs.start) as u64 * n + idx);
        }
        put(&mut out, n);
        for r in &replicas {
            out.extend_from_slice(&r.as_u64().to_le_bytes());
            put(&mut out, oplog.version().get(*r));
        }
        put(&mut out, text.len() as u64);
        let mut texts = Vec::with_capacity(text.len() + oplog.text.len());
        texts.extend_from_slice(text.as_bytes());
        texts.extend_from_slice(oplog.text.as_bytes());
        put_blob(&mut out, &texts);

        let mut cols = Vec::new();
        put_section(&mut cols, &agents);

        let mut graph = Vec::new();
        for (span, parents) in oplog.graph.entries() {
            let len = (span.end - span.start) as u64;
            let code = parents.len().min(3) as u64;
            put(&mut graph, len << 2 | code);
            if code == 3 {
                put(&mut graph, parents.len() as u64);
            }
            // Newest first: each distance is from the previous point.
            let mut from = span.start;
            for &p in parents.iter().rev() {
                put(&mut graph, (from - p) as u64);
                from = p;
            }
        }
        put_section(&mut cols, &graph);

        let mut ops = Vec::with_capacity(oplog.runs.len() * 2);
        let mut cursor = 0i64;
        for run in &oplog.runs {
            put_op_run(&mut ops, run, &mut cursor);
        }
        put_section(&mut cols, &ops);

        put_blob(&mut out, &cols);
        out
    })
}

/// Writes one op run, moving `cursor` to where the run leaves it.
///
/// The first varint carries two flags in its low bits: bit 0 = more than
/// one operation, bit 1 = delete. A single operation stores the zigzag
/// delta of its position from the cursor in the rest (one byte for
/// positions within 15 of the cursor). A longer run stores bit 2 = the
/// position moved (then a zigzag delta varint follows), for deletes bit 3 =
/// forward (delete key; else backspace), and `len - 2` in the rest.
///
/// The cursor is where the run starts: an insert's first position, a
/// forward delete's position, and for a backspace run the position just
/// after the last character it deleted first; it ends after the inserted
/// text, at the forward delete's position, or at the last character a
/// backspace run deleted.
fn put_op_run(out: &mut Vec<u8>, run: &OpRun, cursor: &mut i64) {
    let len = run.len() as u64;
    let del = run.kind == OpKind::Delete;
    let multi = len > 1;
    let fwd = run.fwd || !multi;
    let pos = run.pos as i64;
    let (start, end) = match (run.kind, fwd) {
        (OpKind::Insert, _) => (pos, pos + len as i64),
        (OpKind::Delete, true) => (pos, pos),
        (OpKind::Delete, false) => (pos + 1, pos + 1 - len as i64),
    };
    let diff = start - *cursor;
    *cursor = end;
    let flags = u64::from(multi) | u64::from(del) << 1;
    if !multi {
        put(out, zigzag(diff) << 2 | flags);
        return;
    }
    let mut head = (len - 2) << 1 | u64::from(diff != 0);
    if del {
        head = head << 1 | u64::from(fwd);
    }
    put(out, head << 2 | flags);
    if diff != 0 {
        put(out, zigzag(diff));
    }
}

/// A decoded text.
pub(crate) enum Decoded {
    /// Version 3: the text, and its history still encoded.
    Lazy { text: String, history: Box<Lazy> },
    /// Version 2: the log, and the text its checkout spells when the
    /// encoding holds one.
    Eager {
        oplog: OpLog,
        checkout: Option<String>,
    },
}

/// The history of a loaded text, kept encoded until first needed.
#[derive(Debug, Clone)]
pub(crate) struct Lazy {
    /// The whole encoding, as loaded (an unchanged text re-encodes to it).
    bytes: Vec<u8>,
    /// Where the `texts` blob starts in `bytes` (the columns follow).
    history: usize,
    /// The length of the text, in bytes (where the inserted text starts).
    text_len: usize,
    replicas: Vec<ReplicaId>,
    version: VersionVector,
    total: usize,
    limits: LoadLimits,
    /// The log, once decoded (by a `&self` reader such as `changes_since`).
    decoded: OnceLock<Result<OpLog, LoadError>>,
}

impl Lazy {
    /// The version vector, from the summary.
    pub(crate) fn version(&self) -> &VersionVector {
        &self.version
    }

    /// The encoding this history was loaded from.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded log (decoded on the first call). `chars` is the length
    /// of the loaded text, checked against the history.
    pub(crate) fn oplog(&self, chars: usize) -> Result<&OpLog, LoadError> {
        self.decoded
            .get_or_init(|| self.decode(chars))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The decoded log, by value.
    pub(crate) fn into_oplog(mut self, chars: usize) -> Result<OpLog, LoadError> {
        match self.decoded.take() {
            Some(result) => result,
            None => self.decode(chars),
        }
    }

    /// Decodes and validates the history blobs.
    fn decode(&self, chars: usize) -> Result<OpLog, LoadError> {
        let limit = self.limits.max_content_bytes;
        let mut r = Reader::new(&self.bytes[self.history..], "history");
        let mut texts = take_blob(&mut r, "texts", limit)?;
        let cols = take_blob(&mut r, "columns", limit)?;
        // The text's length was checked on load.
        let inserted = texts.split_off(self.text_len);
        let inserted =
            String::from_utf8(inserted).map_err(|_| malformed("inserted text is not UTF-8"))?;
        let mut cols = Reader::new(&cols, "columns");
        let total = self.total;
        let mut oplog = OpLog::default();
        decode_agents(
            &mut cols.section("agents")?,
            &self.replicas,
            total,
            &mut oplog,
        )?;
        if oplog.version() != &self.version {
            return Err(malformed("authors do not match the summary's version"));
        }
        let frontier = decode_graph(&mut cols.section("graph")?, total, &mut oplog)?;
        check_chains(&oplog, self.limits.max_chain_check)?;
        decode_ops(&mut cols.section("ops")?, total, &inserted, &mut oplog)?;
        if !cols.is_empty() {
            return Err(malformed("trailing bytes after the columns"));
        }
        oplog.text = inserted;
        oplog.frontier = frontier;
        if oplog.graph.is_chain() {
            // One chain: every op must fit the text its predecessors left,
            // which must end as long as the loaded text. Lengths only, no
            // rope: a few integer steps per run.
            let mut len = 0usize;
            for run in &oplog.runs {
                let (pos, n) = (run.pos, run.len());
                len = match (run.kind, run.fwd) {
                    (OpKind::Insert, _) if pos <= len => len.checked_add(n),
                    (OpKind::Delete, true) if pos.checked_add(n).is_some_and(|e| e <= len) => {
                        Some(len - n)
                    }
                    (OpKind::Delete, false) if pos < len && pos + 1 >= n => Some(len - n),
                    _ => None,
                }
                .ok_or_else(|| {
                    LoadError::Malformed(format!(
                        "history does not replay: operation {} at position {pos} is past the end ({len})",
                        run.lvs.start
                    ))
                })?;
            }
            if len != chars {
                return Err(malformed("the text does not match the history's length"));
            }
        } else {
            let inserted: usize = (oplog.runs.iter())
                .filter(|r| r.kind == OpKind::Insert)
                .map(OpRun::len)
                .sum();
            if chars > inserted {
                return Err(malformed("the text is longer than the history inserted"));
            }
        }
        Ok(oplog)
    }
}

/// Decodes an encoding of version 3 (history left encoded) or 2.
/// The operation count that opens a body, within [`LoadLimits::max_ops`].
fn op_count(r: &mut Reader<'_>, limits: &LoadLimits) -> Result<usize, LoadError> {
    let total = r.varint()?;
    if total > limits.max_ops {
        return Err(LoadError::TooLarge(format!(
            "{total} operations, limit {}",
            limits.max_ops
        )));
    }
    usize::try_from(total).map_err(|_| malformed("too many operations"))
}

pub(crate) fn decode(bytes: &[u8], limits: &LoadLimits) -> Result<Decoded, LoadError> {
    if bytes.get(..4) == Some(&MAGIC[..]) && bytes.get(4..6) == Some(&VERSION_2.to_le_bytes()[..]) {
        return decode_v2(bytes, limits);
    }
    let body = framing::unframe(MAGIC, VERSION, bytes, limits.max_bytes)?;
    let mut r = Reader::new(body, "body");
    let total = op_count(&mut r, limits)?;
    let n_replicas = r.varint()?;
    // Each replica takes at least nine bytes.
    if n_replicas > (r.remaining() / 9) as u64 || (n_replicas == 0) != (total == 0) {
        return Err(malformed("bad replica count"));
    }
    let mut replicas = Vec::with_capacity(n_replicas as usize);
    let mut seen = HashSet::with_capacity(n_replicas as usize);
    let mut version = VersionVector::new();
    let mut sum = 0u64;
    for _ in 0..n_replicas {
        let id = ReplicaId::from_u64(u64::from_le_bytes(r.array()?));
        let count = r.varint()?;
        if !seen.insert(id) {
            return Err(malformed("a replica is listed twice"));
        }
        sum = sum
            .checked_add(count)
            .filter(|_| count > 0)
            .ok_or_else(|| malformed("bad operation count for a replica"))?;
        replicas.push(id);
        version.set(id, count);
    }
    if sum != total as u64 {
        return Err(malformed("replicas' operations do not add up to the log"));
    }
    let text_len = r.varint()?;
    let history = bytes.len() - r.remaining();
    let (codec, size, stored) = blob_parts(&mut r, "texts", limits.max_content_bytes)?;
    let text_len = usize::try_from(text_len)
        .ok()
        .filter(|n| *n <= size)
        .ok_or_else(|| malformed("the text is longer than its blob"))?;
    let text = match codec {
        CODEC_RAW => stored[..text_len].to_vec(),
        _ => inflate_prefix(stored, text_len).map_err(|why| malformed_in("texts", &why))?,
    };
    let text = String::from_utf8(text).map_err(|_| malformed("text is not UTF-8"))?;
    // The history stays encoded; its framing is checked now.
    blob_parts(&mut r, "columns", limits.max_content_bytes)?;
    if !r.is_empty() {
        return Err(malformed("trailing bytes after the body"));
    }
    let history = Box::new(Lazy {
        bytes: bytes.to_vec(),
        history,
        text_len,
        replicas,
        version,
        total,
        limits: limits.clone(),
        decoded: OnceLock::new(),
    });
    Ok(Decoded::Lazy { text, history })
}

/// Decodes a version 2 encoding, eagerly.
fn decode_v2(bytes: &[u8], limits: &LoadLimits) -> Result<Decoded, LoadError> {
    let body = framing::unframe(MAGIC, VERSION_2, bytes, limits.max_bytes)?;
    let mut body = Reader::new(body, "body");
    let cols = take_blob(&mut body, "columns", limits.max_content_bytes)?;
    let text = take_blob(&mut body, "inserted text", limits.max_content_bytes)?;
    if !body.is_empty() {
        return Err(malformed("trailing bytes after the body"));
    }
    let text = String::from_utf8(text).map_err(|_| malformed("inserted text is not UTF-8"))?;
    let mut body = Reader::new(&cols, "columns");
    let total = op_count(&mut body, limits)?;

    let n_replicas = body.varint()?;
    if n_replicas > (body.remaining() / 8) as u64 || (n_replicas == 0) != (total == 0) {
        return Err(malformed("bad replica count"));
    }
    let mut replicas = Vec::with_capacity(n_replicas as usize);
    let mut seen = HashSet::with_capacity(n_replicas as usize);
    for _ in 0..n_replicas {
        let id = ReplicaId::from_u64(u64::from_le_bytes(body.array()?));
        if !seen.insert(id) {
            return Err(malformed("a replica is listed twice"));
        }
        replicas.push(id);
    }

    let mut oplog = OpLog::default();
    decode_agents(&mut body.section("agents")?, &replicas, total, &mut oplog)?;
    let frontier = decode_graph(&mut body.section("graph")?, total, &mut oplog)?;
    check_chains(&oplog, limits.max_chain_check)?;
    decode_ops(&mut body.section("ops")?, total, &text, &mut oplog)?;
    let mut spans = body.section("checkout")?;
    if !body.is_empty() {
        return Err(malformed("trailing bytes after the columns"));
    }
    oplog.text = text;
    oplog.frontier = frontier;
    let checkout = if spans.is_empty() {
        None
    } else {
        Some(decode_checkout(&mut spans, &oplog)?)
    };
    Ok(Decoded::Eager { oplog, checkout })
}

/// A version 2 checkout: disjoint runs of insert ops, in document order;
/// returns the text they spell.
fn decode_checkout(r: &mut Reader<'_>, oplog: &OpLog) -> Result<String, LoadError> {
    let total = oplog.len();
    let count = r.varint()?;
    if count > r.remaining() as u64 {
        return Err(malformed("checkout is truncated"));
    }
    let mut spans = Vec::with_capacity(count as usize);
    let mut prev: i64 = 0;
    for _ in 0..count {
        let start = prev
            .checked_add(unzigzag(r.varint()?))
            .and_then(|s| usize::try_from(s).ok());
        let len = r.varint()?;
        let span = start
            .zip(usize::try_from(len).ok())
            .and_then(|(s, l)| Some(s..s.checked_add(l)?.checked_add(1)?))
            .filter(|span| span.end <= total)
            .ok_or_else(|| malformed("checkout names ops the log lacks"))?;
        prev = span.end as i64;
        spans.push(span);
    }
    if !r.is_empty() {
        return Err(malformed("trailing bytes after the checkout"));
    }
    let mut sorted = spans.clone();
    sorted.sort_unstable_by_key(|s| s.start);
    if sorted.windows(2).any(|w| w[0].end > w[1].start) {
        return Err(malformed("checkout names an op twice"));
    }
    let mut text = String::new();
    for span in &spans {
        let mut lv = span.start;
        while lv < span.end {
            let (run, k) = oplog.run_at(lv);
            if run.kind != OpKind::Insert {
                return Err(malformed("checkout names a delete"));
            }
            let n = (run.lvs.end - lv).min(span.end - lv);
            text.push_str(oplog.run_text(run, k, n));
            lv += n;
        }
    }
    Ok(text)
}

/// Authors: runs must cover `0..total`; counters follow from LV order.
fn decode_agents(
    r: &mut Reader<'_>,
    replicas: &[ReplicaId],
    total: Lv,
    oplog: &mut OpLog,
) -> Result<(), LoadError> {
    let n = replicas.len() as u64;
    let mut next: Lv = 0;
    while !r.is_empty() {
        let v = r.varint()?;
        // `n > 0` whenever there are operations (checked by the caller).
        let (len, idx) = (v / n.max(1), v % n.max(1));
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| next.checked_add(len))
            .filter(|end| len > 0 && *end <= total)
            .ok_or_else(|| malformed("authors do not cover the log"))?;
        let replica = replicas[idx as usize];
        let counter = oplog.agents.version().get(replica) + 1;
        oplog.agents.push(next..end, replica, counter);
        next = end;
    }
    if next != total {
        return Err(malformed("authors do not cover the log"));
    }
    Ok(())
}

/// Graph: entries cover `0..total`, parents point strictly back. Returns
/// the frontier of the whole log.
///
/// The frontier is worked out once at the end, in time linear in the
/// entries and parents: the last op of each entry, unless a later entry
/// names it as a parent (an op inside an entry always has a successor).
/// Keeping it up to date entry by entry would cost the frontier's width per
/// entry, which a hostile file of many concurrent roots makes quadratic.
fn decode_graph(r: &mut Reader<'_>, total: Lv, oplog: &mut OpLog) -> Result<Frontier, LoadError> {
    let mut start: Lv = 0;
    // Per decoded entry: its end, and whether a later entry names its last op.
    let mut ends: Vec<Lv> = Vec::new();
    let mut named: Vec<bool> = Vec::new();
    let mut parents = Frontier::new();
    while !r.is_empty() {
        let head = r.varint()?;
        let end = usize::try_from(head >> 2)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end > start && *end <= total)
            .ok_or_else(|| malformed("graph does not cover the log"))?;
        let count = match head & 3 {
            3 => r.varint()?,
            n => n,
        };
        if count > start as u64 {
            return Err(malformed("more parents than operations before them"));
        }
        parents.clear();
        let mut from = start;
        for _ in 0..count {
            let d = r.varint()?;
            from = usize::try_from(d)
                .ok()
                .filter(|d| *d >= 1 && *d <= from)
                .map(|d| from - d)
                .ok_or_else(|| malformed("a parent points forward"))?;
            parents.push(from);
        }
        parents.reverse();
        for p in &parents {
            if let Ok(i) = ends.binary_search(&(p + 1)) {
                named[i] = true;
            }
        }
        oplog.graph.push(&parents, start..end);
        ends.push(end);
        named.push(false);
        start = end;
    }
    if start != total {
        return Err(malformed("graph does not cover the log"));
    }
    Ok(ends
        .iter()
        .zip(&named)
        .filter(|(_, named)| !**named)
        .map(|(end, _)| end - 1)
        .collect())
}

/// Each replica's operations must form a causal chain; the checks visit at
/// most `budget` graph runs in all.
fn check_chains(oplog: &OpLog, budget: u64) -> Result<(), LoadError> {
    let mut left = budget;
    for (lvs, replica, counter) in oplog.agents.runs() {
        if counter == 1 {
            continue;
        }
        let prev = oplog.agents.lv(Dot::new(replica, counter - 1));
        let parents = oplog.graph.parents_of(lvs.start);
        let extends = oplog
            .graph
            .extends_own_chain_within(&parents, prev, &mut left)
            .ok_or_else(|| {
                LoadError::TooLarge(format!(
                    "checking that each replica's operations form a causal chain \
                     visits more than {budget} graph runs (LoadLimits::max_chain_check)"
                ))
            })?;
        if !extends {
            return Err(malformed(
                "an operation has not seen its replica's previous operation",
            ));
        }
    }
    Ok(())
}

/// Reads a blob written by [`put_blob`]: at most `limit` bytes once decoded.
fn take_blob(r: &mut Reader<'_>, what: &str, limit: usize) -> Result<Vec<u8>, LoadError> {
    let (codec, size, stored) = blob_parts(r, what, limit)?;
    match codec {
        CODEC_RAW => Ok(stored.to_vec()),
        _ => inflate(stored, size).map_err(|why| malformed_in(what, &why)),
    }
}

/// A blob's codec, decoded length and stored bytes, checked for what can
/// be checked without decoding.
fn blob_parts<'a>(
    r: &mut Reader<'a>,
    what: &str,
    limit: usize,
) -> Result<(u64, usize, &'a [u8]), LoadError> {
    let codec = r.varint()?;
    let size = r.varint()?;
    if size > limit as u64 {
        return Err(LoadError::TooLarge(format!(
            "{size} bytes of {what}, limit {limit}"
        )));
    }
    let size = size as usize;
    let stored = r.section("blob")?.rest();
    match codec {
        CODEC_RAW if stored.len() != size => Err(malformed_in(what, "length does not match")),
        CODEC_RAW | CODEC_DEFLATE => Ok((codec, size, stored)),
        _ => Err(malformed_in(what, &format!("unknown codec {codec}"))),
    }
}

fn malformed_in(what: &str, why: &str) -> LoadError {
    LoadError::Malformed(format!("{what}: {why}"))
}

/// Op runs: they cover `0..total`, and inserts consume `text` in order.
fn decode_ops(
    r: &mut Reader<'_>,
    total: Lv,
    text: &str,
    oplog: &mut OpLog,
) -> Result<(), LoadError> {
    let ascii = text.is_ascii();
    let mut byte = 0usize;
    let mut lv: Lv = 0;
    let mut cursor: i64 = 0;
    while !r.is_empty() {
        let head = r.varint()?;
        let (multi, del) = (head & 1 == 1, head & 2 == 2);
        let mut rest = head >> 2;
        let (len, diff, fwd) = if multi {
            let fwd = if del {
                let fwd = rest & 1 == 1;
                rest >>= 1;
                fwd
            } else {
                true
            };
            let moved = rest & 1 == 1;
            let len = (rest >> 1)
                .checked_add(2)
                .ok_or_else(|| malformed("run too long"))?;
            let diff = if moved { unzigzag(r.varint()?) } else { 0 };
            (len, diff, fwd)
        } else {
            (1, unzigzag(rest), true)
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| lv.checked_add(len))
            .filter(|end| *end <= total)
            .ok_or_else(|| malformed("ops do not cover the log"))?;
        let n = end - lv;
        let start = cursor
            .checked_add(diff)
            .filter(|s| *s >= 0)
            .ok_or_else(|| malformed("negative position"))?;
        let kind = if del { OpKind::Delete } else { OpKind::Insert };
        let (pos, after) = match (kind, fwd) {
            (OpKind::Insert, _) => (start, start.checked_add(n as i64)),
            (OpKind::Delete, true) => (start, Some(start)),
            (OpKind::Delete, false) => {
                if start < n as i64 {
                    return Err(malformed("backspace run past the start"));
                }
                (start - 1, Some(start - n as i64))
            }
        };
        cursor = after.ok_or_else(|| malformed("position overflows"))?;
        let content = if kind == OpKind::Insert {
            let from = byte;
            byte = if ascii {
                Some(from + n).filter(|b| *b <= text.len())
            } else {
                advance_chars(text, from, n)
            }
            .ok_or_else(|| malformed("inserted text is shorter than the inserts"))?;
            from..byte
        } else {
            byte..byte
        };
        let pos = usize::try_from(pos).map_err(|_| malformed("position overflows"))?;
        let run_ascii = ascii || text[content.clone()].is_ascii();
        oplog.push_decoded(lv..end, kind, pos, fwd, content, run_ascii);
        lv = end;
    }
    if lv != total || byte != text.len() {
        return Err(malformed("ops do not match the log or the text"));
    }
    Ok(())
}

/// The byte offset `n` characters after byte offset `from` of `s`.
fn advance_chars(s: &str, from: usize, n: usize) -> Option<usize> {
    let mut count = 0;
    for (off, _) in s[from..].char_indices() {
        if count == n {
            return Some(from + off);
        }
        count += 1;
    }
    (count == n).then_some(s.len())
}

fn malformed(why: &str) -> LoadError {
    LoadError::Malformed(why.to_string())
}

/// Appends `v` as a LEB128 varint.
fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a blob: codec, decoded length, stored length, stored bytes
/// (DEFLATE when that is smaller).
fn put_blob(out: &mut Vec<u8>, raw: &[u8]) {
    let packed = (raw.len() >= MIN_COMPRESSED)
        .then(|| deflate(raw))
        .filter(|p| p.len() < raw.len());
    put(
        out,
        if packed.is_some() {
            CODEC_DEFLATE
        } else {
            CODEC_RAW
        },
    );
    put(out, raw.len() as u64);
    let stored = packed.as_deref().unwrap_or(raw);
    put_section(out, stored);
}

/// Appends `bytes` prefixed with their length.
fn put_section(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    (u >> 1) as i64 ^ -((u & 1) as i64)
}

fn deflate(raw: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(raw.len() / 2 + 64);
    loop {
        let before = c.total_in() as usize;
        out.reserve(raw.len() / 4 + 64);
        // Compressing into a growing Vec only fails on a full output,
        // which the reserve above rules out.
        match c.compress_vec(&raw[before..], &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => return out,
            Ok(_) => continue,
            Err(e) => unreachable!("in-memory DEFLATE cannot fail: {e}"),
        }
    }
}

/// Decompresses `packed`, which must decode to exactly `size` bytes. The
/// output grows as data arrives, so a false `size` cannot make it allocate
/// much more than the data warrants.
fn inflate(packed: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(size.min(packed.len().saturating_mul(4) + 1024));
    loop {
        if out.len() == out.capacity() {
            let room = size - out.len().min(size);
            if room == 0 {
                return Err("decompresses to more than its length".into());
            }
            out.reserve_exact(room.min(out.len().max(1 << 16)));
        }
        let (was_in, was_out) = (d.total_in(), d.total_out());
        let rest = packed.get(was_in as usize..).unwrap_or_default();
        let status = d
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .map_err(|e| e.to_string())?;
        if status == flate2::Status::StreamEnd {
            break;
        }
        if d.total_in() == was_in && d.total_out() == was_out && out.len() < out.capacity() {
            return Err("compressed data is truncated".into());
        }
    }
    if out.len() != size || d.total_in() != packed.len() as u64 {
        return Err("does not decompress to its length".into());
    }
    Ok(out)
}

/// The first `n` bytes that `packed` decompresses to (it must hold at
/// least that many), decompressing no further.
fn inflate_prefix(packed: &[u8], n: usize) -> Result<Vec<u8>, String> {
    let mut d = flate2::Decompress::new(false);
    // Output grows as data arrives: a false `n` cannot make it allocate
    // much more than the data warrants.
    let mut out = Vec::with_capacity(n.min(packed.len().saturating_mul(8) + 1024));
    while out.len() < n {
        if out.len() == out.capacity() {
            out.reserve_exact((n - out.len()).min(out.len().max(1 << 16)));
        }
        let (was_in, was_out) = (d.total_in(), d.total_out());
        let rest = packed.get(was_in as usize..).unwrap_or_default();
        let status = d
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .map_err(|e| e.to_string())?;
        if out.len() > n {
            out.truncate(n);
        }
        let stuck = d.total_in() == was_in && d.total_out() == was_out;
        if out.len() < n && (status == flate2::Status::StreamEnd || stuck) {
            return Err("decompresses to less than its text".into());
        }
    }
    Ok(out)
}

/// Reads varints and slices off a byte slice; every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    fn truncated(&self) -> LoadError {
        LoadError::Malformed(format!("{} is truncated", self.what))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, LoadError> {
        let mut v = 0u64;
        for (i, &b) in self.bytes.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(LoadError::Malformed(format!(
                    "{}: varint overflows",
                    self.what
                )));
            }
            v |= bits << (7 * i);
            if b < 0x80 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(v);
            }
        }
        Err(self.truncated())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated())?;
        self.bytes = rest;
        Ok(*head)
    }

    /// A length-prefixed section.
    fn section(&mut self, what: &'static str) -> Result<Self, LoadError> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.bytes.len())
            .ok_or_else(|| LoadError::Malformed(format!("{what} is truncated")))?;
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(Self::new(head, what))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, v);
            let mut r = Reader::new(&out, "test");
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Eleven bytes, or a tenth byte above 1, overflow; a cut one is truncated.
        assert!(Reader::new(&[0xff; 11], "t").varint().is_err());
        assert!(
            Reader::new(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2],
                "t"
            )
            .varint()
            .is_err()
        );
        assert!(Reader::new(&[0x80], "t").varint().is_err());
    }

    #[test]
    fn inflate_checks_the_declared_length() {
        let raw = "the quick brown fox jumps over the lazy dog; ".repeat(5000);
        let packed = deflate(raw.as_bytes());
        assert!(packed.len() * 10 < raw.len());
        assert_eq!(inflate(&packed, raw.len()).unwrap(), raw.as_bytes());
        assert!(
            inflate(&packed, raw.len() - 1).is_err(),
            "longer than declared"
        );
        assert!(
            inflate(&packed, raw.len() + 1).is_err(),
            "shorter than declared"
        );
        assert!(
            inflate(&packed[..packed.len() / 2], raw.len()).is_err(),
            "cut"
        );
        let mut trailing = packed.clone();
        trailing.push(0);
        assert!(inflate(&trailing, raw.len()).is_err(), "trailing bytes");
    }

    #[test]
    fn op_runs_round_trip_through_the_cursor() {
        let runs = [
            (OpKind::Insert, 5, 3, true),
            (OpKind::Delete, 7, 3, false),
            (OpKind::Delete, 4, 2, true),
            (OpKind::Insert, 4, 1, true),
            (OpKind::Delete, 0, 1, true),
            (OpKind::Insert, 1000, 40, true),
        ];
        let text = "abc".to_string() + "d" + &"x".repeat(40);
        let mut oplog = OpLog::default();
        let mut lv = 0;
        let mut byte = 0;
        let mut out = Vec::new();
        let mut cursor = 0;
        for (kind, pos, len, fwd) in runs {
            let content = if kind == OpKind::Insert {
                byte += len;
                byte - len..byte
            } else {
                byte..byte
            };
            let run = OpRun {
                lvs: lv..lv + len,
                kind,
                pos,
                fwd,
                content,
                ascii: true,
            };
            put_op_run(&mut out, &run, &mut cursor);
            oplog.runs.push(run);
            lv += len;
        }
        // Backspacing right after typing, and typing where deleting stopped, cost one byte.
        let mut decoded = OpLog::default();
        decode_ops(&mut Reader::new(&out, "ops"), lv, &text, &mut decoded).unwrap();
        assert_eq!(decoded.runs, oplog.runs);
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    /// A hand-built encoding of `n` single-character inserts at position 0
    /// by `replicas` replicas, op `i` written by replica `author(i)` and made
    /// on `parents(i)` (ascending), with the text they make ("x" n times).
    pub(super) fn build(
        n: usize,
        replicas: usize,
        author: impl Fn(usize) -> usize,
        parents: impl Fn(usize) -> Vec<Lv>,
    ) -> Vec<u8> {
        framing::frame(MAGIC, VERSION, |mut out| {
            put(&mut out, n as u64);
            put(&mut out, replicas as u64);
            let mut counts = vec![0u64; replicas];
            for i in 0..n {
                counts[author(i)] += 1;
            }
            for (r, count) in counts.iter().enumerate() {
                out.extend_from_slice(&(r as u64 + 1).to_le_bytes());
                put(&mut out, *count);
            }
            let (mut agents, mut graph, mut ops) = (Vec::new(), Vec::new(), Vec::new());
            let mut cursor = 0;
            for i in 0..n {
                put(&mut agents, (replicas + author(i)) as u64);
                let ps = parents(i);
                put(&mut graph, 1 << 2 | ps.len().min(3) as u64);
                if ps.len() >= 3 {
                    put(&mut graph, ps.len() as u64);
                }
                let mut from = i;
                for &p in ps.iter().rev() {
                    put(&mut graph, (from - p) as u64);
                    from = p;
                }
                let run = OpRun {
                    lvs: i..i + 1,
                    kind: OpKind::Insert,
                    pos: 0,
                    fwd: true,
                    content: i..i + 1,
                    ascii: true,
                };
                put_op_run(&mut ops, &run, &mut cursor);
            }
            let mut cols = Vec::new();
            put_section(&mut cols, &agents);
            put_section(&mut cols, &graph);
            put_section(&mut cols, &ops);
            put(&mut out, n as u64);
            put_blob(&mut out, "x".repeat(2 * n).as_bytes());
            put_blob(&mut out, &cols);
            out
        })
    }

    /// Loads `bytes` and decodes the history too.
    pub(super) fn full(bytes: &[u8], limits: &LoadLimits) -> Result<OpLog, LoadError> {
        match decode(bytes, limits)? {
            Decoded::Lazy { text, history } => history.into_oplog(text.chars().count()),
            Decoded::Eager { oplog, .. } => Ok(oplog),
        }
    }

    /// `n` concurrent roots, each by its own replica.
    pub(super) fn concurrent_roots(n: usize) -> Vec<u8> {
        build(n, n, |i| i, |_| Vec::new())
    }

    /// `2 * k` ops by `k` replicas taking turns, each op made on the two
    /// before it: every replica's second op is `k` entries after its first.
    pub(super) fn interleaved(k: usize) -> Vec<u8> {
        build(
            2 * k,
            k,
            |i| i % k,
            |i| match i {
                0 => Vec::new(),
                1 => vec![0],
                _ => vec![i - 2, i - 1],
            },
        )
    }

    // Many concurrent roots used to make loading quadratic (a scan of the
    // frontier per entry, and of the replica list per replica): 50 000
    // took a second in release, 200 000 nineteen.
    #[test]
    fn concurrent_roots_load() {
        let n = 50_000;
        let decoded = full(&concurrent_roots(n), &LoadLimits::default()).unwrap();
        assert!(decoded.frontier.iter().copied().eq(0..n));
        assert_eq!(decoded.version().iter().count(), n);
        let text = crate::text::Text::load(&concurrent_roots(n), ReplicaId::from_u64(0)).unwrap();
        assert_eq!(text.to_string(), "x".repeat(n));
    }

    #[test]
    fn frontier_is_what_no_later_entry_names() {
        // 0 and 1 are roots; 2 is made on 0; 3 on 2 and 1; 4 is a root.
        let parents = [vec![], vec![], vec![0], vec![1, 2], vec![]];
        let bytes = build(5, 5, |i| i, |i| parents[i].clone());
        let decoded = full(&bytes, &LoadLimits::default()).unwrap();
        assert_eq!(decoded.frontier.as_slice(), &[3, 4]);
        let bytes = build(3, 3, |i| i, |i| if i == 2 { vec![0, 1] } else { vec![] });
        let decoded = full(&bytes, &LoadLimits::default()).unwrap();
        assert_eq!(decoded.frontier.as_slice(), &[2]);
    }

    // Replicas taking turns make the causal-chain check cost replicas ×
    // runs: 20 000 of them took twenty seconds. The check is bounded by
    // `LoadLimits::max_chain_check`.
    #[test]
    fn interleaved_replicas_are_bounded_by_the_chain_check_limit() {
        let k = 1_000;
        let bytes = interleaved(k);
        let decoded = full(&bytes, &LoadLimits::default()).unwrap();
        assert_eq!(decoded.frontier.as_slice(), &[2 * k - 1]);
        // Each replica's second op walks back past the k ops in between.
        let tight = LoadLimits {
            max_chain_check: 100_000,
            ..LoadLimits::default()
        };
        assert!(matches!(full(&bytes, &tight), Err(LoadError::TooLarge(_))));
        // A replica whose second op has not seen its first is still refused.
        let bytes = build(3, 2, |i| i % 2, |i| if i == 2 { vec![1] } else { vec![] });
        assert!(matches!(
            full(&bytes, &LoadLimits::default()),
            Err(LoadError::Malformed(_))
        ));
    }
}
