//! A storage test double for crash testing in memory (STYLE.md habit 6).
//!
//! [`CrashBackend`] is a redb [`StorageBackend`] that keeps two images of
//! the file: `live`, where every write lands at once, and `durable`, the
//! contents as of the last completed sync. [`CrashBackend::crashed`] gives a
//! fresh backend holding only the durable image: exactly what a machine that
//! lost power would find on disk. Open a [`crate::RedbStore`] on it with
//! [`crate::RedbStore::open_with_backend`] to test recovery without processes.
//!
//! [`CrashBackend::fail_after`] makes the backend "lose power" after a number
//! of mutating calls: from then on every write and sync fails, so the store
//! under test sees the crash mid-operation, at a point a seed can choose.
//! [`CrashBackend::set_sync_delay`] makes each sync slow, like a real disk.
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
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    syncs: u64,
    /// Writes since the last completed sync: what a crash may or may not keep.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// Mutating calls left before the simulated power loss; `None` for no limit.
    budget: Option<u64>,
    sync_delay: Duration,
}

impl CrashBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new backend holding what survives a crash now: the image as of the
    /// last completed sync. This backend is unchanged.
    pub fn crashed(&self) -> Self {
        let durable = self.state().durable.clone();
        Self {
            state: Arc::new(Mutex::new(State {
                live: durable.clone(),
                durable,
                ..State::default()
            })),
        }
    }

    /// Like [`CrashBackend::crashed`], but harsher, as a real disk may be: each
    /// write since the last sync survives whole, survives only up to a 512-byte
    /// sector boundary, or is lost, chosen by `seed`; and the file length is
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
        let mut image = state.durable.clone();
        let len = if next() % 2 == 0 {
            state.durable.len()
        } else {
            state.live.len()
        };
        image.resize(len, 0);
        for (offset, data) in &state.unsynced {
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
        Self {
            state: Arc::new(Mutex::new(State {
                live: image.clone(),
                durable: image,
                ..State::default()
            })),
        }
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

    /// How many syncs have completed.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
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
        Ok(self.state().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state();
        let start = index(offset)?;
        let Some(bytes) = state.live.get(start..start + out.len()) else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        Self::spend(&mut state)?;
        state.live.resize(index(len)?, 0);
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
        state.durable = state.live.clone();
        state.unsynced.clear();
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        Self::spend(&mut state)?;
        let start = index(offset)?;
        let end = start + data.len();
        if end > state.live.len() {
            state.live.resize(end, 0);
        }
        state.live[start..end].copy_from_slice(data);
        state.unsynced.push((start, data.to_vec()));
        Ok(())
    }
}
