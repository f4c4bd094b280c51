//! Heap accounting: a global allocator that wraps the system allocator and counts the bytes
//! in use, so the server can report its heap (`hongbao_heap_bytes`) and refuse new IM
//! messages before memory runs out (`im.memory_max_mb`) instead of being killed by the
//! kernel. Installed by the `hongbao` binary (`src/main.rs`); in other programs (the library's
//! tests) the counters stay at zero. Runs on every thread that allocates.
//!
//! Crates that count allocations keep one global counter, which every core would update on
//! every allocation: one cache line bouncing between all cores. Here each thread adds to a
//! counter of its own (64 cache-padded slots; threads beyond 64 share, still exact because
//! every update is atomic), and a reader sums the slots. Memory freed on another thread than
//! the one that allocated it makes single slots drift, never the sum.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use crossbeam::utils::CachePadded;

const SLOTS: usize = 64;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: CachePadded<AtomicIsize> = CachePadded::new(AtomicIsize::new(0));
static COUNTS: [CachePadded<AtomicIsize>; SLOTS] = [ZERO; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot (usize::MAX until its first allocation). Constant-initialised and
    /// without a destructor, so it is usable inside the allocator at any point of a thread's
    /// life.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn count(delta: isize) {
    let slot = SLOT.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
            s.set(v);
        }
        v
    });
    COUNTS[slot].fetch_add(delta, Ordering::Relaxed);
}

/// The system allocator, counted.
pub struct Counting;

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the
// counting touches only atomics and a constant-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes the program asked the allocator for and has not freed (not counting the
/// allocator's own overhead and free lists); 0 when [`Counting`] is not installed.
pub fn in_use() -> u64 {
    let sum: isize = COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    sum.max(0) as u64
}

/// Physical memory of the machine (`MemTotal` of /proc/meminfo), if readable.
pub fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_across_threads_and_reallocations() {
        // The library's tests do not install the allocator: drive it directly.
        let a = Counting;
        let before = in_use() as isize;
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: plain allocator calls with a valid layout; every block is freed once.
        unsafe {
            let p = a.alloc(layout);
            assert_eq!(in_use() as isize - before, 1000);
            let p = a.realloc(p, layout, 3000);
            assert_eq!(in_use() as isize - before, 3000);
            // Freed on another thread: the sum is still right.
            let addr = p as usize;
            std::thread::spawn(move || {
                a_free(addr, Layout::from_size_align(3000, 8).unwrap());
            })
            .join()
            .unwrap();
        }
        assert_eq!(in_use() as isize, before);
        fn a_free(addr: usize, layout: Layout) {
            // SAFETY: `addr` came from `Counting::realloc` with this layout.
            unsafe { Counting.dealloc(addr as *mut u8, layout) }
        }
    }

    #[test]
    fn memory_total_is_read() {
        assert!(mem_total().is_some_and(|b| b > 1 << 20));
    }
}
