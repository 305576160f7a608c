//! A storage test double for crash testing in memory (STYLE.md habit 6).
//!
//! [`CrashBackend`] is a redb [`StorageBackend`] that keeps two images of
//! the file: `live`, where every write lands at once, and `durable`, the
//! contents as of the last completed sync. [`CrashBackend::crashed`] gives a
//! fresh backend holding only the durable image: exactly what a machine that
//! lost power would find on disk. Open a [`crate::RedbStore`] on it with
//! [`crate::RedbStore::open_with_backends`] to test recovery without processes.
//!
//! [`CrashBackend::fail_after`] makes the backend "lose power" after a number
//! of mutating calls: from then on every write and sync fails, so the store
//! under test sees the crash mid-operation, at a point a seed can choose.
//! [`CrashBackend::set_sync_delay`] makes each sync slow, like a real disk.
//!
//! A store has two files, the redb database and its write-ahead log; both
//! live on one simulated disk. [`CrashBackend::wal`] gives the handle of the
//! log file on the same disk: the same power (a crash or a power loss hits
//! both files at the same instant) and the same sync counter.
//!
//! [`CrashBackend::crashed`] follows the model redb tests itself with:
//! unsynced writes are lost whole. [`CrashBackend::crashed_torn`] is harsher:
//! each unsynced write may survive whole, in part (whole sectors) or not at
//! all. Both are reusable by the sync simulator to crash-restart replicas.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redb::StorageBackend;

/// A redb storage backend in memory that separates written from synced bytes.
/// Clones share the same images, so a test can keep a handle while the
/// database owns another.
#[derive(Debug, Clone, Default)]
pub struct CrashBackend {
    state: Arc<Mutex<State>>,
    /// Which file of the disk this handle reads and writes.
    file: usize,
}

/// The index of the database file; the write-ahead log is the other one.
const DATABASE: usize = 0;
const WAL: usize = 1;

/// The simulated disk: its files, and what is shared by all of them.
#[derive(Debug, Default)]
struct State {
    files: [Image; 2],
    syncs: u64,
    /// Mutating calls left before the simulated power loss; `None` for no limit.
    budget: Option<u64>,
    sync_delay: Duration,
}

/// One file's bytes, as written and as synced.
#[derive(Debug, Default, Clone)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last completed sync: what a crash may or may not keep.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// Writes and completed syncs of this file (see [`CrashBackend::file_io`]).
    io: FileIo,
}

/// How many writes and syncs one file of a [`CrashBackend`] disk has had.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileIo {
    /// `write` calls that succeeded.
    pub writes: u64,
    /// `sync_data` calls that completed.
    pub syncs: u64,
}

impl CrashBackend {
    /// An empty disk; this handle is its database file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of the write-ahead log file on the same disk (from either
    /// handle). Pass it with the database handle to
    /// [`crate::RedbStore::open_with_backends`].
    pub fn wal(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            file: WAL,
        }
    }

    /// The handle of the database file on the same disk.
    pub fn database(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            file: DATABASE,
        }
    }

    /// A new disk holding what survives a crash now: every file as of its
    /// last completed sync; the handle is of the same file as this one. This
    /// disk is unchanged.
    pub fn crashed(&self) -> Self {
        let files = self.state().files.clone().map(|image| Image {
            live: image.durable.clone(),
            durable: image.durable,
            unsynced: Vec::new(),
            io: FileIo::default(),
        });
        self.with_files(files)
    }

    fn with_files(&self, files: [Image; 2]) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                files,
                ..State::default()
            })),
            file: self.file,
        }
    }

    /// The size of this file as written (not necessarily synced).
    pub fn file_len(&self) -> usize {
        self.state().files[self.file].live.len()
    }

    /// Changes this file's bytes in place, written and synced alike, as
    /// damage on the disk would (for tests of damage detection).
    pub fn tamper(&self, change: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.state();
        let image = &mut state.files[self.file];
        change(&mut image.live);
        image.durable = image.live.clone();
        image.unsynced.clear();
    }

    /// Like [`CrashBackend::crashed`], but harsher, as a real disk may be: each
    /// write since the last sync survives whole, survives only up to a 512-byte
    /// sector boundary, or is lost, chosen by `seed`; and each file's length is
    /// either the synced or the written one.
    pub fn crashed_torn(&self, seed: u64) -> Self {
        let state = self.state();
        let mut rng = seed;
        let mut next = move || {
            // splitmix64: deterministic per seed, no dependency.
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let files = state.files.clone().map(|file| {
            let mut image = file.durable.clone();
            let len = if next() % 2 == 0 {
                file.durable.len()
            } else {
                file.live.len()
            };
            image.resize(len, 0);
            for (offset, data) in &file.unsynced {
                let kept = match next() % 3 {
                    0 => 0,
                    1 => data.len(),
                    _ => {
                        let sectors = data.len().div_ceil(512) as u64;
                        (next() % (sectors + 1)) as usize * 512
                    }
                };
                let end = (offset + kept.min(data.len())).min(len);
                if *offset < end {
                    image[*offset..end].copy_from_slice(&data[..end - offset]);
                }
            }
            Image {
                live: image.clone(),
                durable: image,
                unsynced: Vec::new(),
                io: FileIo::default(),
            }
        });
        drop(state);
        self.with_files(files)
    }

    /// Lets `calls` more mutating calls (write, set_len, sync) succeed, then
    /// fails every later one, as if the power went out.
    pub fn fail_after(&self, calls: u64) {
        self.state().budget = Some(calls);
    }

    /// Makes every sync take at least `delay`, like a real disk.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.state().sync_delay = delay;
    }

    /// How many syncs have completed, of every file of the disk.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// The writes and syncs of this handle's file alone (the database's or
    /// the log's), e.g. to check that an operation wrote its log once.
    pub fn file_io(&self) -> FileIo {
        self.state().files[self.file].io
    }

    /// Whether the simulated power loss has happened.
    pub fn is_down(&self) -> bool {
        self.state().budget == Some(0)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each method leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends one mutating call of the budget, or fails if it is exhausted.
    fn spend(state: &mut State) -> io::Result<()> {
        match &mut state.budget {
            Some(0) => Err(io::Error::other("simulated power loss")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn index(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::other("offset does not fit in memory"))
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().files[self.file].live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state();
        let start = index(offset)?;
        let Some(bytes) = state.files[self.file].live.get(start..start + out.len()) else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        Self::spend(&mut state)?;
        state.files[self.file].live.resize(index(len)?, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = {
            let mut state = self.state();
            Self::spend(&mut state)?;
            state.sync_delay
        };
        // Sleep outside the lock, so reads proceed during a slow sync.
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.state();
        let image = &mut state.files[self.file];
        image.durable = image.live.clone();
        image.unsynced.clear();
        image.io.syncs += 1;
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        Self::spend(&mut state)?;
        let image = &mut state.files[self.file];
        let start = index(offset)?;
        let end = start + data.len();
        if end > image.live.len() {
            image.live.resize(end, 0);
        }
        image.live[start..end].copy_from_slice(data);
        image.unsynced.push((start, data.to_vec()));
        image.io.writes += 1;
        Ok(())
    }
}
