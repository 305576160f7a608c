//! The store's write-ahead log: the durability point of appends.
//!
//! A redb commit that is durable writes about ten scattered pages and syncs
//! the file (measured with strace: the 1-writer and batch-100 workloads ran at
//! 0.4–0.6× SQLite, see `FORMAT.md`, *Choice of engine*). So an append is made
//! durable here instead, the way SQLite's WAL does it: the writer appends one
//! CRC-framed record holding the whole group commit's new entries to this
//! file, syncs it once, and answers; a background applier later commits the
//! same changes to redb with [`redb::Durability::None`] (see
//! `redb_store.rs`, *Appends*). redb is made durable at *checkpoints*: a
//! redb commit with `Durability::Immediate` that also stores the sequence
//! number (LSN) of the last log record it covers. When the log is full,
//! redb is brought up to date and checkpointed, and the log is written from
//! its start again, over the old records, so the file is reused and its
//! syncs never change its size.
//!
//! On open, the records after the checkpoint are replayed into redb (records
//! with an LSN the checkpoint covers are skipped: replay is idempotent), and
//! the first record that is torn, damaged or out of sequence ends the log: it
//! was never acknowledged, because its sync never completed.
//!
//! The log is zero-filled to [`CAPACITY`] when it is created (so that a sync
//! after a write inside it has no file size or block allocation to record,
//! and no append pays for the fill); a batch
//! that is larger than [`DIRECT_MAX`], or does more than append, is committed
//! to redb durably instead, which is a checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::StorageBackend;

use crate::StoreError;
use crate::format::{self, WAL_HEADER_LEN, WalHeader, WalRecord};

/// The size the log is filled to before it is checkpointed and rewound.
pub(crate) const CAPACITY: u64 = 8 << 20;
/// The largest record written to the log; a larger batch is committed to redb
/// durably (it would be written twice for little gain).
pub(crate) const DIRECT_MAX: usize = 1 << 20;

/// The write-ahead log file of a store, as the writer thread sees it.
pub(crate) struct Wal {
    file: Box<dyn StorageBackend>,
    /// The file's length: zero-filled up to here.
    len: u64,
    /// Where the next record goes.
    offset: u64,
    /// The LSN of the last record written (or covered by the checkpoint).
    last_lsn: u64,
}

/// What was found in the log on open.
pub(crate) struct Recovered {
    /// The log, positioned at its start (the caller checkpoints the replay).
    pub(crate) wal: Wal,
    /// The records to replay, in order: LSNs `checkpoint + 1 ..`.
    pub(crate) records: Vec<WalRecord>,
}

impl Wal {
    /// Opens the log of the store `store_id`, whose durable state covers
    /// `checkpoint`. A log that is blank is initialised; so is any log of a
    /// store that was just created or upgraded (`fresh`), which cannot have
    /// records of its own yet.
    pub(crate) fn open(
        file: Box<dyn StorageBackend>,
        store_id: u64,
        checkpoint: u64,
        fresh: bool,
        shown: &str,
    ) -> Result<Recovered, StoreError> {
        let io = |context| move |e: io::Error| StoreError::backend(context, e);
        let len = file.len().map_err(io("reading the write-ahead log"))?;
        // The log never grows past its capacity, so no record lies beyond it
        // (and a foreign file of any size costs no more memory than that).
        let mut bytes = vec![0; usize::try_from(len.min(CAPACITY)).map_err(|_| too_large(len))?];
        file.read(0, &mut bytes)
            .map_err(io("reading the write-ahead log"))?;
        let header = format::decode_wal_header(&bytes);
        let mut wal = Self {
            file,
            len,
            offset: WAL_HEADER_LEN as u64,
            last_lsn: checkpoint,
        };
        match header {
            WalHeader::Log {
                version,
                store_id: id,
            } if version == format::WAL_FORMAT_VERSION && id == store_id && !fresh => {}
            WalHeader::Log { .. } | WalHeader::Damaged if !fresh => {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "the write-ahead log {shown} {}; if the store was moved, move its log with it",
                        match header {
                            WalHeader::Damaged => "has a damaged header",
                            _ => "belongs to another store",
                        }
                    ),
                });
            }
            _ => {
                // Nothing acknowledged can be in it: start it afresh, zero-filled
                // to its capacity now, so that no append pays for the fill.
                let mut fresh_log =
                    vec![0; usize::try_from(CAPACITY).map_err(|_| too_large(CAPACITY))?];
                fresh_log[..WAL_HEADER_LEN].copy_from_slice(&format::encode_wal_header(store_id));
                wal.file
                    .set_len(0)
                    .map_err(io("initialising the write-ahead log"))?;
                wal.file
                    .write(0, &fresh_log)
                    .map_err(io("initialising the write-ahead log"))?;
                wal.file
                    .sync_data()
                    .map_err(io("initialising the write-ahead log"))?;
                wal.len = CAPACITY;
                return Ok(Recovered {
                    wal,
                    records: Vec::new(),
                });
            }
        }

        // The chain of intact records with consecutive LSNs from the start.
        let mut records = Vec::new();
        let mut at = WAL_HEADER_LEN;
        let mut previous = None;
        while let Some((record, size)) = format::decode_wal_record(&bytes[at..])? {
            if previous.is_some_and(|p: u64| p.checked_add(1) != Some(record.lsn)) {
                break; // An older record the current round has not overwritten yet.
            }
            previous = Some(record.lsn);
            at += size;
            if record.lsn <= checkpoint {
                continue; // Already in redb, durably.
            }
            if records.is_empty() && record.lsn != checkpoint + 1 {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "the write-ahead log {shown} continues at record {}, but the database \
                         holds records up to {checkpoint} only (was an older copy of the \
                         database restored?)",
                        record.lsn
                    ),
                });
            }
            wal.last_lsn = record.lsn;
            records.push(record);
        }
        Ok(Recovered { wal, records })
    }

    /// The LSN the next record takes.
    pub(crate) fn next_lsn(&self) -> u64 {
        self.last_lsn + 1
    }

    /// The LSN a checkpoint made now covers.
    pub(crate) fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Whether a record of `size` bytes fits before the log is full.
    pub(crate) fn fits(&self, size: usize) -> bool {
        size <= DIRECT_MAX && self.offset + size as u64 <= CAPACITY
    }

    /// Writes a record (encoded with [`Wal::next_lsn`]) and syncs it: when
    /// this returns, the record is durable.
    pub(crate) fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let end = self.offset + record.len() as u64;
        if end > self.len {
            // A log cut short (by damage, or by a crash while it was created):
            // zero-fill it to its capacity at once, so that the syncs of all
            // later records find the blocks allocated and the size unchanged.
            let target = end.max(CAPACITY);
            let zeros = vec![0; usize::try_from(target - end).map_err(io::Error::other)?];
            self.file.write(end, &zeros)?;
            self.len = target;
        }
        self.file.write(self.offset, record)?;
        self.file.sync_data()?;
        self.offset = end;
        self.last_lsn += 1;
        Ok(())
    }

    /// Records that the database now durably holds everything up to
    /// [`Wal::last_lsn`]: the log is written from its start again.
    pub(crate) fn checkpointed(&mut self) {
        self.offset = WAL_HEADER_LEN as u64;
    }
}

fn too_large(len: u64) -> StoreError {
    StoreError::backend(
        "reading the write-ahead log",
        format!("the log is {len} bytes, more than fits in memory"),
    )
}

/// The write-ahead log as a plain file (the storage backend interface is
/// redb's, so that [`crate::crash::CrashBackend`] can stand in for it).
#[derive(Debug)]
pub(crate) struct WalFile {
    file: Mutex<File>,
}

impl WalFile {
    /// Opens (or creates) the log file at `path`.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    fn file(&self) -> MutexGuard<'_, File> {
        // Every operation seeks before it reads or writes: no state to corrupt.
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for WalFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file().metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut file = self.file();
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file().set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file().sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut file = self.file();
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)
    }
}
