//! The byte layout of every record this crate writes (see `FORMAT.md`).
//!
//! All integers are little-endian. Every record carries a CRC-32 (IEEE,
//! `crc32fast`) over its own bytes *and its key*, so that a record that is
//! damaged, or that ended up under the wrong key, is detected when read.
//! The encodings here are the contract of the on-disk format: the golden-bytes
//! tests at the bottom pin them, and any change needs a new format version.

use converge_crdt::{ReplicaId, VersionVector};

use crate::StoreError;

/// The eight bytes that open the meta record.
pub const MAGIC: [u8; 8] = *b"CNVGSTOR";
/// The on-disk format version this build writes.
pub const FORMAT_VERSION: u16 = 2;
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

/// Encodes a log entry record: `crc32 u32 | payload`. The checksum covers
/// `len(object) u32 | object | replica u64 | seq u64 | payload`.
pub fn encode_entry(object: &str, replica: ReplicaId, seq: u64, payload: &[u8]) -> Vec<u8> {
    let crc = entry_crc(object, replica, seq, payload);
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn entry_crc(object: &str, replica: ReplicaId, seq: u64, payload: &[u8]) -> u32 {
    crc_of(&[
        &object_key(object),
        object.as_bytes(),
        &replica.as_u64().to_le_bytes(),
        &seq.to_le_bytes(),
        payload,
    ])
}

/// Checks an entry record against its key and returns its payload.
pub fn decode_entry<'a>(
    object: &str,
    replica: ReplicaId,
    seq: u64,
    record: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    let Some((crc, payload)) = split_crc(record) else {
        return Err(corrupt(format!(
            "entry {object}/{replica}/{seq} is truncated ({} bytes)",
            record.len()
        )));
    };
    if crc != entry_crc(object, replica, seq, payload) {
        return Err(corrupt(format!(
            "entry {object}/{replica}/{seq} fails its checksum"
        )));
    }
    Ok(payload)
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
    let mut out = Vec::with_capacity(28 + record.object.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.replica.as_u64().to_le_bytes());
    out.extend_from_slice(&record.first.to_le_bytes());
    out.extend_from_slice(&record.last.to_le_bytes());
    out.extend_from_slice(record.object.as_bytes());
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

#[cfg(test)]
mod tests {
    //! Golden bytes: these pin format version 2 (and the version 1 records
    //! it still reads). If one fails, the on-disk format changed: bump
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
        let meta = encode_meta(FORMAT_VERSION);
        assert_eq!(hex(&meta), "434e564753544f52020000005fdc08ac");
        assert_eq!(decode_meta(&meta), Meta::Store { version: 2 });
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
