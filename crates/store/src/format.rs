//! The byte layout of every record this crate writes (see `FORMAT.md`).
//!
//! All integers are little-endian. Every record carries a CRC-32 (IEEE,
//! `crc32fast`) over its own bytes *and its key*, so that a record that is
//! damaged, or that ended up under the wrong key, is detected when read.
//! The encodings here are the contract of the on-disk format: the golden-bytes
//! tests at the bottom pin them, and any change needs a new format version.

use converge_crdt::{ReplicaId, VersionVector};

use crate::{Entry, StoreError};

/// The eight bytes that open the meta record.
pub const MAGIC: [u8; 8] = *b"CNVGSTOR";
/// The on-disk format version this build writes.
pub const FORMAT_VERSION: u16 = 4;
/// The version in the write-ahead log's header: its layout has not changed
/// since format version 3 (version 4 changed only how redb holds a log).
pub const WAL_FORMAT_VERSION: u16 = 3;
/// The oldest format version this build opens (and upgrades in place on open).
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Length of the meta record.
pub const META_LEN: usize = 16;

fn crc_of(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

fn object_key(object: &str) -> [u8; 4] {
    // Object ids are at most MAX_OBJECT_ID_BYTES long, so the length fits a u32.
    u32::try_from(object.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes()
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt { what }
}

fn split_crc(record: &[u8]) -> Option<(u32, &[u8])> {
    let (crc, rest) = record.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*crc), rest))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

/// What the meta record says about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// A converge store of the given format version.
    Store {
        /// The format version.
        version: u16,
    },
    /// Not a converge meta record (wrong length, magic or checksum).
    Foreign(&'static str),
}

/// Encodes the meta record: `magic[8] | version u16 | reserved u16 = 0 | crc32 u32`.
pub fn encode_meta(version: u16) -> [u8; META_LEN] {
    let mut out = [0u8; META_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&version.to_le_bytes());
    let crc = crc_of(&[&out[..12]]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the meta record. The version is checked by the caller, so that an
/// unknown version is reported as such rather than as corruption.
pub fn decode_meta(bytes: &[u8]) -> Meta {
    if bytes.len() != META_LEN {
        return Meta::Foreign("the meta record has the wrong length");
    }
    if bytes[..8] != MAGIC {
        return Meta::Foreign("the meta record lacks the converge magic bytes");
    }
    let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if stored != crc_of(&[&bytes[..12]]) {
        return Meta::Foreign("the meta record fails its checksum");
    }
    Meta::Store {
        version: u16::from_le_bytes([bytes[8], bytes[9]]),
    }
}

/// Encodes a log entry record of format versions 1 to 3 (one row per
/// entry; read only to upgrade such a file): `crc32 u32 | payload`. The checksum covers
/// `len(object) u32 | object | replica u64 | seq u64 | payload`.
pub fn encode_entry(object: &str, replica: ReplicaId, seq: u64, payload: &[u8]) -> Vec<u8> {
    LogRecords::new(object, replica).encode(seq, payload)
}

/// Checks an entry record against its key and returns its payload.
pub fn decode_entry<'a>(
    object: &str,
    replica: ReplicaId,
    seq: u64,
    record: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    LogRecords::new(object, replica).decode(seq, record)
}

/// Encodes and checks the entry records of one log: the part of each
/// record's checksum that covers the log's key (object id and replica) is
/// computed once, not once per entry (a scan spent a tenth of its time
/// hashing the same object id again).
#[derive(Clone)]
pub struct LogRecords<'o> {
    object: &'o str,
    replica: ReplicaId,
    prefix: crc32fast::Hasher,
}

impl<'o> LogRecords<'o> {
    /// For the log of `replica` in `object`.
    pub fn new(object: &'o str, replica: ReplicaId) -> Self {
        Self {
            object,
            replica,
            prefix: log_key_hasher(b"", object, replica),
        }
    }

    fn crc(&self, seq: u64, payload: &[u8]) -> u32 {
        let mut hasher = self.prefix.clone();
        hasher.update(&seq.to_le_bytes());
        hasher.update(payload);
        hasher.finalize()
    }

    /// The record of entry `seq` (see [`encode_entry`]).
    pub fn encode(&self, seq: u64, payload: &[u8]) -> Vec<u8> {
        let crc = self.crc(seq, payload);
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Checks the record of entry `seq` and returns its payload (see
    /// [`decode_entry`]).
    pub fn decode<'a>(&self, seq: u64, record: &'a [u8]) -> Result<&'a [u8], StoreError> {
        let (object, replica) = (self.object, self.replica);
        let Some((crc, payload)) = split_crc(record) else {
            return Err(corrupt(format!(
                "entry {object}/{replica}/{seq} is truncated ({} bytes)",
                record.len()
            )));
        };
        if crc != self.crc(seq, payload) {
            return Err(corrupt(format!(
                "entry {object}/{replica}/{seq} fails its checksum"
            )));
        }
        Ok(payload)
    }
}

/// A CRC state over `domain | len(object) u32 | object | replica u64`: the
/// part of a log record's checksum that is the same for every record of
/// the log, computed once per log.
fn log_key_hasher(domain: &[u8], object: &str, replica: ReplicaId) -> crc32fast::Hasher {
    let mut prefix = crc32fast::Hasher::new();
    prefix.update(domain);
    prefix.update(&object_key(object));
    prefix.update(object.as_bytes());
    prefix.update(&replica.as_u64().to_le_bytes());
    prefix
}

/// Most entries one chunk record holds (format version 4).
pub const CHUNK_MAX_ENTRIES: usize = 1024;
/// Most bytes one chunk record takes (its header, and each entry's length
/// field and bytes), unless its single entry is larger: a read of one entry
/// never checks more than this. With its key and redb's leaf header it fits
/// in 4 pages of 4 KiB. redb gives a value larger than a page a run of
/// pages rounded up to a power of two, and larger chunks left more of those
/// runs part empty: 1M entries of 100 B in appends of 1,000 took a 205 MB
/// file with chunks of up to 62 KiB (340 MB just over 64 KiB), 143 MB with
/// 15 KiB, as in version 3 (one row per entry), while loading ~2× faster
/// than version 3 either way (see FORMAT.md).
pub const CHUNK_MAX_BYTES: usize = 15 << 10;
/// A chunk record's bytes before its first entry (checksum and count).
const CHUNK_HEADER: usize = 8;

/// Whether a chunk of `count` entries, whose record takes `record` bytes so
/// far, takes one more entry of `len` bytes (see [`CHUNK_MAX_ENTRIES`] and
/// [`CHUNK_MAX_BYTES`]; a first entry is always taken).
pub fn chunk_takes(count: usize, record: usize, len: usize) -> bool {
    count == 0
        || (count < CHUNK_MAX_ENTRIES
            && record.saturating_add(4).saturating_add(len) <= CHUNK_MAX_BYTES)
}
/// What a chunk record's checksum starts with, so that an entry record of
/// format version 3 never passes as a chunk.
const CHUNK_DOMAIN: &[u8] = b"chunk";

/// How many entries of a run, given their lengths in order, make its first
/// chunk: at least one (if any), and more while the chunk stays within
/// [`CHUNK_MAX_ENTRIES`] and [`CHUNK_MAX_BYTES`].
pub fn chunk_len(lens: impl IntoIterator<Item = usize>) -> usize {
    let mut record = CHUNK_HEADER;
    let mut count = 0;
    for len in lens {
        if !chunk_takes(count, record, len) {
            break;
        }
        record = record.saturating_add(4).saturating_add(len);
        count += 1;
    }
    count
}

/// The size of the chunk record that starts with an entry of `len` bytes,
/// before any more are added (for callers that build a run with
/// [`chunk_takes`]).
pub fn chunk_record_start(len: usize) -> usize {
    CHUNK_HEADER.saturating_add(4).saturating_add(len)
}

/// Splits a run of consecutive entries into the runs that each make one
/// chunk record (see [`chunk_len`]), in order.
pub fn chunk_runs(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (run, tail) = rest.split_at(chunk_len(rest.iter().map(|e| e.bytes.len())));
        rest = tail;
        Some(run)
    })
}

/// Encodes and checks the chunk records of one log (format version 4): the
/// part of each checksum that covers the log's key is computed once.
#[derive(Clone)]
pub struct LogChunks<'o> {
    object: &'o str,
    replica: ReplicaId,
    prefix: crc32fast::Hasher,
}

/// A chunk record whose checksum and structure were checked: `n` entries
/// from seq `first` on.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    first: u64,
    n: u64,
    body: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// The seq of its first entry.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The seq of its last entry.
    pub fn last(&self) -> u64 {
        self.first + (self.n - 1)
    }

    /// How many entries it holds (at least one).
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Never true: a chunk holds at least one entry.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Its entries as `(seq, bytes)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &'a [u8])> + use<'a> {
        let mut body = Reader(self.body);
        // The lengths were checked by `LogChunks::decode`.
        (self.first..=self.last()).map_while(move |seq| {
            let len = body.u32()? as usize;
            Some((seq, body.take(len)?))
        })
    }
}

impl<'o> LogChunks<'o> {
    /// For the log of `replica` in `object`.
    pub fn new(object: &'o str, replica: ReplicaId) -> Self {
        Self {
            object,
            replica,
            prefix: log_key_hasher(CHUNK_DOMAIN, object, replica),
        }
    }

    fn crc(&self, first: u64, body: &[u8]) -> u32 {
        let mut hasher = self.prefix.clone();
        hasher.update(&first.to_le_bytes());
        hasher.update(body);
        hasher.finalize()
    }

    /// The chunk record of `payloads`, the entries `first`, `first + 1`, ...:
    /// `crc32 u32 | n u32 | n × (len u32 | bytes)`, the checksum covering
    /// `"chunk" | len(object) u32 | object | replica u64 | first u64` and
    /// everything after itself. The caller keeps within the cap (see
    /// [`chunk_len`]) and passes at least one entry.
    pub fn encode<'p>(
        &self,
        first: u64,
        payloads: impl Iterator<Item = &'p [u8]> + Clone,
    ) -> Vec<u8> {
        let size = 8 + payloads.clone().map(|p| 4 + p.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&[0; 8]);
        let mut n = 0;
        for payload in payloads {
            out.extend_from_slice(&len_u32(payload.len()));
            out.extend_from_slice(payload);
            n += 1;
        }
        out[4..8].copy_from_slice(&len_u32(n));
        let crc = self.crc(first, &out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks the chunk record stored under `first` (its checksum, and that
    /// it holds exactly its `n` entries) and returns it.
    pub fn decode<'a>(&self, first: u64, record: &'a [u8]) -> Result<Chunk<'a>, StoreError> {
        let (object, replica) = (self.object, self.replica);
        let bad = |why: &str| corrupt(format!("log chunk {object}/{replica}/{first} {why}"));
        let Some((crc, rest)) = split_crc(record) else {
            return Err(bad("is truncated"));
        };
        if crc != self.crc(first, rest) {
            return Err(bad("fails its checksum"));
        }
        let mut reader = Reader(rest);
        let n = u64::from(reader.u32().ok_or_else(|| bad("is truncated"))?);
        if n == 0 || first == 0 || first.checked_add(n - 1).is_none() {
            return Err(bad("has an empty or impossible seq range"));
        }
        let body = reader.0;
        for _ in 0..n {
            let len = reader.u32().ok_or_else(|| bad("is truncated"))? as usize;
            reader.take(len).ok_or_else(|| bad("is truncated"))?;
        }
        if !reader.0.is_empty() {
            return Err(bad("has bytes after its last entry"));
        }
        Ok(Chunk { first, n, body })
    }
}

/// The entry count of a chunk record, unchecked (for totals only: reads go
/// through [`LogChunks::decode`]).
pub fn chunk_entry_count(record: &[u8]) -> Option<u64> {
    let count = record.get(4..8)?;
    Some(u64::from(u32::from_le_bytes([
        count[0], count[1], count[2], count[3],
    ])))
}

/// The state of one (object, replica) log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// The last seq held (in the log or covered by a snapshot); 0 for none.
    pub last: u64,
    /// The last seq dropped by compaction; entries `compacted + 1 ..= last` are in the log.
    pub compacted: u64,
}

/// Encodes a head record: `crc32 u32 | last u64 | compacted u64`. The checksum
/// covers `len(object) u32 | object | replica u64 | last u64 | compacted u64`.
pub fn encode_head(object: &str, replica: ReplicaId, head: Head) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[4..12].copy_from_slice(&head.last.to_le_bytes());
    out[12..20].copy_from_slice(&head.compacted.to_le_bytes());
    let crc = head_crc(object, replica, &out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

fn head_crc(object: &str, replica: ReplicaId, body: &[u8]) -> u32 {
    crc_of(&[
        &object_key(object),
        object.as_bytes(),
        &replica.as_u64().to_le_bytes(),
        body,
    ])
}

/// Checks and decodes a head record.
pub fn decode_head(object: &str, replica: ReplicaId, record: &[u8]) -> Result<Head, StoreError> {
    let bad = |why: &str| corrupt(format!("head of log {object}/{replica} {why}"));
    let Some((crc, body)) = split_crc(record) else {
        return Err(bad("is truncated"));
    };
    if body.len() != 16 {
        return Err(bad("has the wrong length"));
    }
    if crc != head_crc(object, replica, body) {
        return Err(bad("fails its checksum"));
    }
    let head = Head {
        last: read_u64(body, 0),
        compacted: read_u64(body, 8),
    };
    if head.compacted > head.last {
        return Err(bad("says more was compacted than was ever held"));
    }
    Ok(head)
}

/// One item of the change feed, as stored. A deletion (format version 2)
/// is stored with replica 0 and `first == last == 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRecord {
    /// The replica whose log grew.
    pub replica: ReplicaId,
    /// First new seq.
    pub first: u64,
    /// Last new seq.
    pub last: u64,
    /// The object.
    pub object: String,
}

impl FeedRecord {
    /// Whether the record is a deletion.
    pub fn is_deletion(&self) -> bool {
        self.first == 0
    }
}

/// Encodes a feed record: `crc32 u32 | replica u64 | first u64 | last u64 | object (UTF-8, rest)`.
/// The checksum covers `position u64` and everything after the checksum.
pub fn encode_feed(position: u64, record: &FeedRecord) -> Vec<u8> {
    encode_feed_item(
        position,
        record.replica,
        record.first,
        record.last,
        &record.object,
    )
}

/// [`encode_feed`] from the record's fields, without an owned object id.
pub fn encode_feed_item(
    position: u64,
    replica: ReplicaId,
    first: u64,
    last: u64,
    object: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + object.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&replica.as_u64().to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(object.as_bytes());
    let crc = crc_of(&[&position.to_le_bytes(), &out[4..]]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and decodes a feed record.
pub fn decode_feed(position: u64, record: &[u8]) -> Result<FeedRecord, StoreError> {
    let bad = |why: &str| corrupt(format!("change feed record {position} {why}"));
    let Some((crc, body)) = split_crc(record) else {
        return Err(bad("is truncated"));
    };
    if body.len() < 24 {
        return Err(bad("is truncated"));
    }
    if crc != crc_of(&[&position.to_le_bytes(), body]) {
        return Err(bad("fails its checksum"));
    }
    let object = std::str::from_utf8(&body[24..]).map_err(|_| bad("has a non-UTF-8 object id"))?;
    let replica = read_u64(body, 0);
    let first = read_u64(body, 8);
    let last = read_u64(body, 16);
    let deletion = first == 0 && last == 0 && replica == 0;
    if !deletion && (first == 0 || first > last) {
        return Err(bad("has an empty seq range"));
    }
    Ok(FeedRecord {
        replica: ReplicaId::from_u64(replica),
        first,
        last,
        object: object.to_owned(),
    })
}

/// Encodes a snapshot record:
/// `crc32 u32 | n u32 | n × (replica u64 | seq u64), replicas ascending | payload (rest)`.
/// The checksum covers `len(object) u32 | object` and everything after the checksum.
pub fn encode_snapshot(object: &str, vv: &VersionVector, payload: &[u8]) -> Vec<u8> {
    let pairs: Vec<(ReplicaId, u64)> = vv.iter().filter(|&(_, seq)| seq > 0).collect();
    let mut out = Vec::with_capacity(8 + 16 * pairs.len() + payload.len());
    out.extend_from_slice(&[0; 4]);
    // A version vector with 2^32 replicas would not fit in memory, so the count fits a u32.
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (replica, seq) in pairs {
        out.extend_from_slice(&replica.as_u64().to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out.extend_from_slice(payload);
    let crc = crc_of(&[&object_key(object), object.as_bytes(), &out[4..]]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and decodes a snapshot record into its version vector and payload.
pub fn decode_snapshot<'a>(
    object: &str,
    record: &'a [u8],
) -> Result<(VersionVector, &'a [u8]), StoreError> {
    let bad = |why: &str| corrupt(format!("snapshot of {object:?} {why}"));
    let Some((crc, body)) = split_crc(record) else {
        return Err(bad("is truncated"));
    };
    if crc != crc_of(&[&object_key(object), object.as_bytes(), body]) {
        return Err(bad("fails its checksum"));
    }
    let Some((count, rest)) = body.split_first_chunk::<4>() else {
        return Err(bad("is truncated"));
    };
    let count = u32::from_le_bytes(*count) as usize;
    let Some(pairs_len) = count.checked_mul(16).filter(|&n| n <= rest.len()) else {
        return Err(bad("is truncated"));
    };
    let (pairs, payload) = rest.split_at(pairs_len);
    let mut vv = VersionVector::new();
    let mut previous = None;
    for pair in pairs.chunks_exact(16) {
        let replica = read_u64(pair, 0);
        if previous.is_some_and(|p| p >= replica) {
            return Err(bad("has replicas out of order"));
        }
        previous = Some(replica);
        vv.set(ReplicaId::from_u64(replica), read_u64(pair, 8));
    }
    Ok((vv, payload))
}

/// What a tombstone's checksum starts with, so that a snapshot record
/// (whose layout it shares) is never taken for a tombstone.
const TOMBSTONE_DOMAIN: &[u8] = b"tombstone";

/// Encodes a tombstone record:
/// `crc32 u32 | n u32 | n × (replica u64 | seq u64), replicas ascending`.
/// The checksum covers `"tombstone" | len(object) u32 | object` and
/// everything after the checksum.
pub fn encode_tombstone(object: &str, vv: &VersionVector) -> Vec<u8> {
    let pairs: Vec<(ReplicaId, u64)> = vv.iter().filter(|&(_, seq)| seq > 0).collect();
    let mut out = Vec::with_capacity(8 + 16 * pairs.len());
    out.extend_from_slice(&[0; 4]);
    // As for snapshots, the count of replicas fits a u32.
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (replica, seq) in pairs {
        out.extend_from_slice(&replica.as_u64().to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    let crc = crc_of(&[
        TOMBSTONE_DOMAIN,
        &object_key(object),
        object.as_bytes(),
        &out[4..],
    ]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and decodes a tombstone record into its version vector.
pub fn decode_tombstone(object: &str, record: &[u8]) -> Result<VersionVector, StoreError> {
    let bad = |why: &str| corrupt(format!("tombstone of {object:?} {why}"));
    let Some((crc, body)) = split_crc(record) else {
        return Err(bad("is truncated"));
    };
    if crc
        != crc_of(&[
            TOMBSTONE_DOMAIN,
            &object_key(object),
            object.as_bytes(),
            body,
        ])
    {
        return Err(bad("fails its checksum"));
    }
    let Some((count, pairs)) = body.split_first_chunk::<4>() else {
        return Err(bad("is truncated"));
    };
    let count = u32::from_le_bytes(*count) as usize;
    if count.checked_mul(16) != Some(pairs.len()) {
        return Err(bad("has the wrong length"));
    }
    let mut vv = VersionVector::new();
    let mut previous = None;
    for pair in pairs.chunks_exact(16) {
        let replica = read_u64(pair, 0);
        if previous.is_some_and(|p| p >= replica) {
            return Err(bad("has replicas out of order"));
        }
        previous = Some(replica);
        vv.set(ReplicaId::from_u64(replica), read_u64(pair, 8));
    }
    Ok(vv)
}

/// The key of the checkpoint record in the `meta` table (format version 3).
pub const CHECKPOINT_KEY: &str = "wal";
/// Length of the checkpoint record.
pub const CHECKPOINT_LEN: usize = 20;
/// What the checkpoint record's checksum starts with.
const CHECKPOINT_DOMAIN: &[u8] = b"wal";

/// What the durable database holds of the write-ahead log (format version 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// A random id chosen when the store was created (or upgraded); the
    /// write-ahead log carries it too, so a log is never replayed into
    /// another store.
    pub store_id: u64,
    /// The sequence number of the last write-ahead log record whose effects
    /// the database holds durably; later records are replayed on open.
    pub lsn: u64,
}

/// Encodes the checkpoint record: `store id u64 | lsn u64 | crc32 u32`, the
/// checksum covering `"wal" | bytes 0..16`.
pub fn encode_checkpoint(checkpoint: Checkpoint) -> [u8; CHECKPOINT_LEN] {
    let mut out = [0u8; CHECKPOINT_LEN];
    out[..8].copy_from_slice(&checkpoint.store_id.to_le_bytes());
    out[8..16].copy_from_slice(&checkpoint.lsn.to_le_bytes());
    let crc = crc_of(&[CHECKPOINT_DOMAIN, &out[..16]]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and decodes the checkpoint record.
pub fn decode_checkpoint(record: &[u8]) -> Result<Checkpoint, StoreError> {
    if record.len() != CHECKPOINT_LEN {
        return Err(corrupt("the checkpoint record has the wrong length".into()));
    }
    let stored = u32::from_le_bytes([record[16], record[17], record[18], record[19]]);
    if stored != crc_of(&[CHECKPOINT_DOMAIN, &record[..16]]) {
        return Err(corrupt("the checkpoint record fails its checksum".into()));
    }
    Ok(Checkpoint {
        store_id: read_u64(record, 0),
        lsn: read_u64(record, 8),
    })
}

/// The eight bytes that open the write-ahead log file.
pub const WAL_MAGIC: [u8; 8] = *b"CNVGSWAL";
/// Length of the write-ahead log header; records start right after it.
pub const WAL_HEADER_LEN: usize = 24;
/// Length of a write-ahead log record's header (before its body).
pub const WAL_RECORD_HEADER_LEN: usize = 16;

/// What the write-ahead log header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalHeader {
    /// Zeros, or too short: a log that was never written (or whose creation
    /// was cut short before anything was acknowledged).
    Blank,
    /// The log of the store with this id, in this format version.
    Log {
        /// The format version that wrote the log.
        version: u16,
        /// The id of the store the log belongs to (see [`Checkpoint::store_id`]).
        store_id: u64,
    },
    /// Neither blank nor a valid header.
    Damaged,
}

/// Encodes the write-ahead log header:
/// `magic[8] | version u16 | reserved u16 = 0 | store id u64 | crc32 u32`, the
/// checksum covering bytes 0..20.
pub fn encode_wal_header(store_id: u64) -> [u8; WAL_HEADER_LEN] {
    let mut out = [0u8; WAL_HEADER_LEN];
    out[..8].copy_from_slice(&WAL_MAGIC);
    out[8..10].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&store_id.to_le_bytes());
    let crc = crc_of(&[&out[..20]]);
    out[20..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the write-ahead log header from the start of the file.
pub fn decode_wal_header(bytes: &[u8]) -> WalHeader {
    let Some(header) = bytes.get(..WAL_HEADER_LEN) else {
        return WalHeader::Blank;
    };
    if header.iter().all(|&b| b == 0) {
        return WalHeader::Blank;
    }
    let stored = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    if header[..8] != WAL_MAGIC || stored != crc_of(&[&header[..20]]) {
        return WalHeader::Damaged;
    }
    WalHeader::Log {
        version: u16::from_le_bytes([header[8], header[9]]),
        store_id: read_u64(header, 12),
    }
}

/// One append as the write-ahead log records it: the entries that were new,
/// and the change feed position the append was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalAppend<'a> {
    /// The object.
    pub object: &'a str,
    /// The replica whose log grew.
    pub replica: ReplicaId,
    /// The change feed position of the append.
    pub position: u64,
    /// The new entries, consecutive seqs.
    pub entries: &'a [Entry],
}

/// One append decoded from the write-ahead log (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalAppendOwned {
    /// The object.
    pub object: String,
    /// The replica whose log grew.
    pub replica: ReplicaId,
    /// The change feed position of the append.
    pub position: u64,
    /// The new entries, consecutive seqs.
    pub entries: Vec<Entry>,
}

/// A write-ahead log record: one group commit's appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// The record's sequence number: one more than the record before it.
    pub lsn: u64,
    /// The appends, in the order they were applied.
    pub appends: Vec<WalAppendOwned>,
}

fn len_u32(len: usize) -> [u8; 4] {
    // Entries are bounded by the store's limits and batches by the writer's,
    // far below 4 GiB; saturating keeps a bug from wrapping silently.
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// How many bytes [`encode_wal_record`] writes for these appends.
pub fn wal_record_len(appends: &[WalAppend<'_>]) -> usize {
    WAL_RECORD_HEADER_LEN
        + 4
        + appends
            .iter()
            .map(|a| {
                32 + a.object.len() + a.entries.iter().map(|e| 4 + e.bytes.len()).sum::<usize>()
            })
            .sum::<usize>()
}

/// Encodes a write-ahead log record:
/// `crc32 u32 | body length u32 | lsn u64 | body`, the checksum covering
/// everything after itself. The body is `count u32` then per append
/// `len(object) u32 | object | replica u64 | position u64 | first seq u64 |
/// n u32 | n × (len u32 | bytes)`.
pub fn encode_wal_record(lsn: u64, appends: &[WalAppend<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wal_record_len(appends));
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&len_u32(appends.len()));
    for append in appends {
        out.extend_from_slice(&object_key(append.object));
        out.extend_from_slice(append.object.as_bytes());
        out.extend_from_slice(&append.replica.as_u64().to_le_bytes());
        out.extend_from_slice(&append.position.to_le_bytes());
        let first = append.entries.first().map_or(0, |e| e.seq);
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&len_u32(append.entries.len()));
        for entry in append.entries {
            out.extend_from_slice(&len_u32(entry.bytes.len()));
            out.extend_from_slice(&entry.bytes);
        }
    }
    let body = out.len() - WAL_RECORD_HEADER_LEN;
    out[4..8].copy_from_slice(&len_u32(body));
    let crc = crc_of(&[&out[4..]]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the write-ahead log record at the start of `bytes`, returning it
/// and its length. `Ok(None)` means there is no intact record there: the end
/// of the log, a torn write, or damage (the checksum decides). A record whose
/// checksum holds but whose body is malformed is an error.
pub fn decode_wal_record(bytes: &[u8]) -> Result<Option<(WalRecord, usize)>, StoreError> {
    let Some(header) = bytes.get(..WAL_RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let body_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let Some(record) = WAL_RECORD_HEADER_LEN
        .checked_add(body_len)
        .and_then(|end| bytes.get(..end))
    else {
        return Ok(None);
    };
    let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if stored != crc_of(&[&record[4..]]) {
        return Ok(None);
    }
    let lsn = read_u64(header, 8);
    let bad = |why: &str| corrupt(format!("write-ahead log record {lsn} {why}"));
    let mut body = Reader(&record[WAL_RECORD_HEADER_LEN..]);
    let truncated = || bad("is truncated");
    let count = body.u32().ok_or_else(truncated)?;
    let mut appends = Vec::new();
    for _ in 0..count {
        let len = body.u32().ok_or_else(truncated)? as usize;
        let object = body.take(len).ok_or_else(truncated)?;
        let object = std::str::from_utf8(object).map_err(|_| bad("has a non-UTF-8 object id"))?;
        let replica = ReplicaId::from_u64(body.u64().ok_or_else(truncated)?);
        let position = body.u64().ok_or_else(truncated)?;
        let first = body.u64().ok_or_else(truncated)?;
        let n = body.u32().ok_or_else(truncated)?;
        if first == 0 || n == 0 || first.checked_add(u64::from(n)).is_none() {
            return Err(bad("has an empty or impossible seq range"));
        }
        let mut entries = Vec::new();
        for seq in first..first + u64::from(n) {
            let len = body.u32().ok_or_else(truncated)? as usize;
            let bytes = body.take(len).ok_or_else(truncated)?;
            entries.push(Entry::new(seq, bytes));
        }
        appends.push(WalAppendOwned {
            object: object.to_owned(),
            replica,
            position,
            entries,
        });
    }
    if !body.0.is_empty() {
        return Err(bad("has bytes after its last append"));
    }
    Ok(Some((WalRecord { lsn, appends }, record.len())))
}

/// A cursor over a record body whose every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let bytes = self.take(8)?;
        Some(read_u64(bytes, 0))
    }
}

#[cfg(test)]
mod tests {
    //! Golden bytes: these pin format version 4 (and the version 1 to 3
    //! records it still reads, to upgrade them). If one fails, the on-disk format changed: bump
    //! FORMAT_VERSION, write a migration, update FORMAT.md.
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const R: ReplicaId = ReplicaId::from_u64(0x0102_0304_0506_0708);

    #[test]
    fn meta_record_golden() {
        let v1 = encode_meta(1);
        assert_eq!(hex(&v1), "434e564753544f5201000000b173bdbe");
        assert_eq!(decode_meta(&v1), Meta::Store { version: 1 });
        let v2 = encode_meta(2);
        assert_eq!(hex(&v2), "434e564753544f52020000005fdc08ac");
        assert_eq!(decode_meta(&v2), Meta::Store { version: 2 });
        let v3 = encode_meta(3);
        assert_eq!(hex(&v3), "434e564753544f52030000003abbb414");
        assert_eq!(decode_meta(&v3), Meta::Store { version: 3 });
        let meta = encode_meta(FORMAT_VERSION);
        assert_eq!(hex(&meta), "434e564753544f520400000083836389");
        assert_eq!(decode_meta(&meta), Meta::Store { version: 4 });
    }

    #[test]
    fn checkpoint_record_golden() {
        let checkpoint = Checkpoint {
            store_id: 0x0102_0304_0506_0708,
            lsn: 9,
        };
        let bytes = encode_checkpoint(checkpoint);
        assert_eq!(hex(&bytes), "080706050403020109000000000000002748469d");
        assert_eq!(decode_checkpoint(&bytes).unwrap(), checkpoint);
        for len in 0..bytes.len() {
            assert!(decode_checkpoint(&bytes[..len]).is_err());
        }
        for byte in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[byte] ^= 0x04;
            assert!(decode_checkpoint(&damaged).is_err());
        }
    }

    #[test]
    fn wal_header_golden() {
        let bytes = encode_wal_header(0x0102_0304_0506_0708);
        assert_eq!(
            hex(&bytes),
            "434e56475357414c030000000807060504030201784c8f13"
        );
        assert_eq!(
            decode_wal_header(&bytes),
            WalHeader::Log {
                version: 3,
                store_id: 0x0102_0304_0506_0708
            }
        );
        assert_eq!(decode_wal_header(&[0; 40]), WalHeader::Blank);
        assert_eq!(decode_wal_header(&bytes[..10]), WalHeader::Blank);
        for byte in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[byte] ^= 0x01;
            assert_eq!(decode_wal_header(&damaged), WalHeader::Damaged);
        }
    }

    fn wal_sample() -> (Vec<Entry>, Vec<u8>) {
        let entries = vec![
            Entry::new(3, b"abc".to_vec()),
            Entry::new(4, b"de".to_vec()),
        ];
        let bytes = encode_wal_record(
            5,
            &[WalAppend {
                object: "todos",
                replica: R,
                position: 7,
                entries: &entries,
            }],
        );
        (entries, bytes)
    }

    #[test]
    fn wal_record_golden() {
        let (entries, bytes) = wal_sample();
        assert_eq!(
            bytes.len(),
            wal_record_len(&[WalAppend {
                object: "todos",
                replica: R,
                position: 7,
                entries: &entries,
            }])
        );
        assert_eq!(
            hex(&bytes),
            "9ae321983600000005000000000000000100000005000000746f646f7308070605040302010700000000000000\
             03000000000000000200000003000000616263020000006465"
        );
        let (record, len) = decode_wal_record(&bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(
            record,
            WalRecord {
                lsn: 5,
                appends: vec![WalAppendOwned {
                    object: "todos".into(),
                    replica: R,
                    position: 7,
                    entries,
                }],
            }
        );
        // Followed by more bytes (the next record, or zeros), it reads the same.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 40]);
        assert_eq!(decode_wal_record(&longer).unwrap().unwrap().1, bytes.len());
        // Zeros (the preallocated tail of the log) are no record.
        assert_eq!(decode_wal_record(&[0; 64]).unwrap(), None);
    }

    #[test]
    fn a_torn_or_damaged_wal_record_is_the_end_of_the_log() {
        let (_, bytes) = wal_sample();
        for len in 0..bytes.len() {
            assert_eq!(
                decode_wal_record(&bytes[..len]).unwrap(),
                None,
                "cut at {len}"
            );
        }
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert_eq!(
                    decode_wal_record(&damaged).unwrap(),
                    None,
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_wal_decoders() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(0..120);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = decode_wal_header(&bytes);
            let _ = decode_checkpoint(&bytes);
            assert_eq!(decode_wal_record(&bytes).ok().flatten(), None);
            // With a valid checksum and length, the body is still checked.
            let mut sealed = vec![0; 16];
            sealed[8..16].copy_from_slice(&1u64.to_le_bytes());
            sealed.extend_from_slice(&bytes);
            let body = len_u32(bytes.len());
            sealed[4..8].copy_from_slice(&body);
            let crc = crc_of(&[&sealed[4..]]);
            sealed[..4].copy_from_slice(&crc.to_le_bytes());
            if let Ok(Some((record, size))) = decode_wal_record(&sealed) {
                assert_eq!(size, sealed.len());
                assert!(record.appends.iter().all(|a| !a.entries.is_empty()));
            }
        }
    }

    #[test]
    fn deletion_feed_record_golden() {
        let record = FeedRecord {
            replica: ReplicaId::from_u64(0),
            first: 0,
            last: 0,
            object: "todos".into(),
        };
        let bytes = encode_feed(8, &record);
        assert_eq!(
            hex(&bytes),
            "5247d7f3000000000000000000000000000000000000000000000000746f646f73"
        );
        let back = decode_feed(8, &bytes).unwrap();
        assert!(back.is_deletion());
        assert_eq!(back, record);
        // Only the all-zero form is a deletion; other empty ranges stay corrupt.
        let odd = FeedRecord {
            replica: R,
            ..record
        };
        assert!(decode_feed(8, &encode_feed(8, &odd)).is_err());
    }

    #[test]
    fn tombstone_record_golden() {
        let vv: VersionVector = [(R, 9), (ReplicaId::from_u64(1), 2)].into_iter().collect();
        let bytes = encode_tombstone("todos", &vv);
        assert_eq!(
            hex(&bytes),
            "d591a74e020000000100000000000000020000000000000008070605040302010900000000000000"
        );
        assert_eq!(decode_tombstone("todos", &bytes).unwrap(), vv);
        let empty = encode_tombstone("todos", &VersionVector::new());
        assert_eq!(hex(&empty), "9d7eb71300000000");
        assert_eq!(
            decode_tombstone("todos", &empty).unwrap(),
            VersionVector::new()
        );
        // A snapshot record is not a tombstone, even with an empty payload.
        assert!(decode_tombstone("todos", &encode_snapshot("todos", &vv, b"")).is_err());
        assert!(decode_tombstone("other", &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(decode_tombstone("todos", &bytes[..len]).is_err());
        }
    }

    #[test]
    fn chunk_record_golden() {
        let chunks = LogChunks::new("todos", R);
        let bytes = chunks.encode(3, [&b"abc"[..], b"de"].into_iter());
        assert_eq!(hex(&bytes), "a3f4237a0200000003000000616263020000006465");
        let chunk = chunks.decode(3, &bytes).unwrap();
        assert_eq!((chunk.first(), chunk.last(), chunk.len()), (3, 4, 2));
        assert_eq!(
            chunk.iter().collect::<Vec<_>>(),
            vec![(3, &b"abc"[..]), (4, &b"de"[..])]
        );
        assert_eq!(chunk_entry_count(&bytes), Some(2));
        // Under another key (first seq, replica, object), it fails its check.
        assert!(chunks.decode(4, &bytes).is_err());
        assert!(
            LogChunks::new("todos", ReplicaId::from_u64(1))
                .decode(3, &bytes)
                .is_err()
        );
        assert!(LogChunks::new("other", R).decode(3, &bytes).is_err());
        // A version 3 entry record is no chunk, nor a chunk an entry record.
        assert!(
            chunks
                .decode(3, &encode_entry("todos", R, 3, b"abc"))
                .is_err()
        );
        assert!(decode_entry("todos", R, 3, &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(chunks.decode(3, &bytes[..len]).is_err(), "cut at {len}");
        }
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    chunks.decode(3, &damaged).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_sealed_chunk_with_a_bad_structure_is_corrupt() {
        let chunks = LogChunks::new("o", R);
        let seal = |body: &[u8]| {
            let mut record = vec![0; 4];
            record.extend_from_slice(body);
            let crc = chunks.crc(1, body);
            record[..4].copy_from_slice(&crc.to_le_bytes());
            record
        };
        // No entries; a length past the end; bytes after the last entry.
        assert!(chunks.decode(1, &seal(&0u32.to_le_bytes())).is_err());
        let mut long = 1u32.to_le_bytes().to_vec();
        long.extend_from_slice(&9u32.to_le_bytes());
        long.extend_from_slice(b"abc");
        assert!(chunks.decode(1, &seal(&long)).is_err());
        let mut trailing = 1u32.to_le_bytes().to_vec();
        trailing.extend_from_slice(&1u32.to_le_bytes());
        trailing.extend_from_slice(b"ab");
        assert!(chunks.decode(1, &seal(&trailing)).is_err());
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..20_000 {
            let len = rng.usize(0..80);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            assert!(chunks.decode(1, &bytes).is_err() || bytes.len() >= 8);
            if let Ok(chunk) = chunks.decode(1, &seal(&bytes)) {
                assert_eq!(chunk.iter().count() as u64, chunk.len());
            }
        }
    }

    #[test]
    fn chunks_are_capped_by_count_and_bytes() {
        let small: Vec<Entry> = (1..=2500).map(|s| Entry::new(s, vec![1; 10])).collect();
        let runs: Vec<usize> = chunk_runs(&small).map(<[Entry]>::len).collect();
        assert_eq!(runs, vec![1024, 1024, 452]);
        // 15 KiB of record: 14 entries of 1 KiB (and their length fields)
        // fill a chunk, the 15th starts the next.
        let mid: Vec<Entry> = (1..=40).map(|s| Entry::new(s, vec![2; 1024])).collect();
        let runs: Vec<usize> = chunk_runs(&mid).map(<[Entry]>::len).collect();
        assert_eq!(runs, vec![14, 14, 12]);
        let sizes: Vec<usize> = chunk_runs(&mid)
            .map(|run| {
                LogChunks::new("x", R)
                    .encode(run[0].seq, run.iter().map(|e| e.bytes.as_slice()))
                    .len()
            })
            .collect();
        assert!(sizes.iter().all(|&n| n <= CHUNK_MAX_BYTES), "{sizes:?}");
        // An entry larger than the cap is a chunk of its own.
        let big = vec![
            Entry::new(1, vec![3; 10]),
            Entry::new(2, vec![3; 100_000]),
            Entry::new(3, vec![3; 10]),
        ];
        let runs: Vec<usize> = chunk_runs(&big).map(<[Entry]>::len).collect();
        assert_eq!(runs, vec![1, 1, 1]);
        assert_eq!(chunk_runs(&[]).count(), 0);
        assert_eq!(chunk_len([]), 0);
        // The boundary: a record of exactly the cap takes its last entry.
        assert_eq!(chunk_len([CHUNK_MAX_BYTES - 16, 0, 0]), 2);
        assert_eq!(chunk_len([CHUNK_MAX_BYTES - 15, 0]), 1);
    }

    #[test]
    fn entry_record_golden() {
        let record = encode_entry("todos", R, 3, b"abc");
        assert_eq!(hex(&record), "4ebcfc02616263");
        assert_eq!(decode_entry("todos", R, 3, &record).unwrap(), b"abc");
    }

    #[test]
    fn head_record_golden() {
        let head = Head {
            last: 9,
            compacted: 4,
        };
        let record = encode_head("todos", R, head);
        assert_eq!(hex(&record), "ea3c5c0609000000000000000400000000000000");
        assert_eq!(decode_head("todos", R, &record).unwrap(), head);
    }

    #[test]
    fn feed_record_golden() {
        let record = FeedRecord {
            replica: R,
            first: 2,
            last: 5,
            object: "todos".into(),
        };
        let bytes = encode_feed(7, &record);
        assert_eq!(
            hex(&bytes),
            "183eb060080706050403020102000000000000000500000000000000746f646f73"
        );
        assert_eq!(decode_feed(7, &bytes).unwrap(), record);
    }

    #[test]
    fn snapshot_record_golden() {
        let vv: VersionVector = [(R, 9), (ReplicaId::from_u64(1), 2)].into_iter().collect();
        let bytes = encode_snapshot("todos", &vv, b"state");
        assert_eq!(
            hex(&bytes),
            "ead78e9c0200000001000000000000000200000000000000\
             080706050403020109000000000000007374617465"
        );
        let (decoded, payload) = decode_snapshot("todos", &bytes).unwrap();
        assert_eq!(decoded, vv);
        assert_eq!(payload, b"state");
    }

    #[test]
    fn a_record_under_the_wrong_key_is_corrupt() {
        let record = encode_entry("todos", R, 3, b"abc");
        assert!(matches!(
            decode_entry("todos", R, 4, &record),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_entry("other", R, 3, &record),
            Err(StoreError::Corrupt { .. })
        ));
        let head = encode_head(
            "todos",
            R,
            Head {
                last: 1,
                compacted: 0,
            },
        );
        assert!(decode_head("todos", ReplicaId::from_u64(5), &head).is_err());
        let feed = encode_feed(
            1,
            &FeedRecord {
                replica: R,
                first: 1,
                last: 1,
                object: "x".into(),
            },
        );
        assert!(decode_feed(2, &feed).is_err());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let record = encode_entry("todos", R, 3, b"hello, world");
        for byte in 0..record.len() {
            for bit in 0..8 {
                let mut damaged = record.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_entry("todos", R, 3, &damaged).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
        let meta = encode_meta(FORMAT_VERSION);
        for byte in 0..meta.len() {
            let mut damaged = meta;
            damaged[byte] ^= 0x10;
            assert!(matches!(decode_meta(&damaged), Meta::Foreign(_)));
        }
    }

    #[test]
    fn truncated_records_are_corrupt_not_panics() {
        let vv: VersionVector = [(R, 9)].into_iter().collect();
        let snapshot = encode_snapshot("o", &vv, b"p");
        for len in 0..snapshot.len() {
            assert!(decode_snapshot("o", &snapshot[..len]).is_err());
        }
        let head = encode_head(
            "o",
            R,
            Head {
                last: 2,
                compacted: 1,
            },
        );
        for len in 0..head.len() {
            assert!(decode_head("o", R, &head[..len]).is_err());
        }
        for len in 0..4 {
            assert!(decode_entry("o", R, 1, &[0u8; 4][..len]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic_a_decoder() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..80);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = decode_meta(&bytes);
            assert!(decode_entry("o", R, 1, &bytes).is_err() || bytes.len() >= 4);
            let _ = decode_head("o", R, &bytes);
            let _ = decode_feed(1, &bytes);
            let _ = decode_snapshot("o", &bytes);
            let _ = decode_tombstone("o", &bytes);
            // With a valid checksum, the structure is still checked.
            let mut sealed = vec![0; 4];
            sealed.extend_from_slice(&bytes);
            let crc = crc_of(&[&object_key("o"), b"o", &sealed[4..]]);
            sealed[..4].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_snapshot("o", &sealed);
            let crc = crc_of(&[&1u64.to_le_bytes(), &sealed[4..]]);
            sealed[..4].copy_from_slice(&crc.to_le_bytes());
            if let Ok(item) = decode_feed(1, &sealed) {
                assert!(item.first >= 1 && item.first <= item.last);
            }
        }
    }
}
