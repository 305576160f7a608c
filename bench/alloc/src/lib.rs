//! A counting global allocator for benchmarks: [`System`] plus a live-byte
//! counter that costs one relaxed load per call until [`CountingAlloc::enable`]
//! is called, so timed runs in the same binary are not slowed by counting.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc::new();
//! ALLOC.enable();
//! let before = ALLOC.live_bytes();
//! ALLOC.reset_peak();
//! // ... work ...
//! let peak = ALLOC.peak_bytes() - before;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

/// [`System`] that, once enabled, tracks the bytes currently allocated
/// (requested sizes: the system allocator's own per-block overhead is not
/// seen).
#[derive(Debug)]
pub struct CountingAlloc {
    enabled: AtomicBool,
    live: AtomicIsize,
    peak: AtomicIsize,
}

impl CountingAlloc {
    /// A disabled counter at zero.
    pub const fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            live: AtomicIsize::new(0),
            peak: AtomicIsize::new(0),
        }
    }

    /// Starts counting. Blocks allocated earlier and freed afterwards make
    /// the count drift down, so enable it before the allocations of interest
    /// and compare [`live_bytes`](Self::live_bytes) before and after them.
    pub fn enable(&self) {
        self.enabled.store(true, Relaxed);
    }

    /// Whether counting is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Bytes allocated minus bytes freed since [`enable`](Self::enable).
    pub fn live_bytes(&self) -> isize {
        self.live.load(Relaxed)
    }

    /// The highest [`live_bytes`](Self::live_bytes) seen since the last
    /// [`reset_peak`](Self::reset_peak) (or since enabling).
    pub fn peak_bytes(&self) -> isize {
        self.peak.load(Relaxed)
    }

    /// Restarts peak tracking from the current live count.
    pub fn reset_peak(&self) {
        self.peak.store(self.live.load(Relaxed), Relaxed);
    }

    #[inline]
    fn count(&self, delta: isize) {
        if self.enabled.load(Relaxed) {
            let live = self.live.fetch_add(delta, Relaxed) + delta;
            if delta > 0 {
                self.peak.fetch_max(live, Relaxed);
            }
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// Sizes of live allocations never exceed `isize::MAX` bytes.
fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter only observes sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on to `System`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.count(signed(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.count(signed(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) };
        self.count(-signed(layout.size()));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` through this allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.count(signed(new_size) - signed(layout.size()));
        }
        p
    }
}
