//! The free space of the data directory's file system, against its watermark
//! (`store.disk_free_min_mb`). The main thread reads it ([`DiskWatch::check`], a `statvfs`
//! every [`DISK_CHECK`]); the cores read the verdict, a relaxed atomic, off their hot path (the
//! ticker hands it to their logs and IM engines).
//!
//! Below the watermark the cores refuse every write that grows the log with a retryable
//! answer (`busy`, with a back-off): opens, IM sends, receipts, withdrawals and group changes.
//! Shakes go on (their reservations are a few bytes per 4,096 tickets), and so does what is
//! already on its way to the disk. The watermark leaves room for that, so the log never meets
//! a full disk: a failed write or fdatasync stops the server (it cannot be retried safely).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the main thread reads the free space.
pub const DISK_CHECK: Duration = Duration::from_millis(100);

pub struct DiskWatch {
    path: PathBuf,
    min: AtomicU64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskWatch {
    /// Watches the file system holding `path`, with watermark `min` bytes; reads it once.
    pub fn new(path: PathBuf, min: u64) -> DiskWatch {
        let watch = DiskWatch {
            path,
            min: AtomicU64::new(min),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        watch.check();
        watch
    }

    /// Reads the free space again; returns the new verdict when it changed. A file system
    /// that cannot be read keeps the last verdict.
    pub fn check(&self) -> Option<bool> {
        let free = crate::fsutil::free_bytes(&self.path).ok()?;
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min.load(Ordering::Relaxed);
        (self.low.swap(low, Ordering::Relaxed) != low).then_some(low)
    }

    /// Below the watermark (as of the last check).
    pub fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn min(&self) -> u64 {
        self.min.load(Ordering::Relaxed)
    }

    /// A new watermark (a reload); takes effect at the next check.
    pub fn set_min(&self, min: u64) {
        self.min.store(min, Ordering::Relaxed);
    }

    /// Whether a write of `bytes` more leaves the free space at or above the watermark (a
    /// compaction's copy of a segment asks before it writes).
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.free() >= self.min().saturating_add(bytes)
    }

    /// For `/metrics`.
    pub fn gauges(&self) -> crate::metrics::ProcessGauges {
        crate::metrics::ProcessGauges {
            disk_free_bytes: self.free(),
            disk_free_min_bytes: self.min(),
            disk_low: self.low(),
        }
    }

    /// Where it is, in words (for the operator's lines).
    pub fn describe(&self) -> String {
        format!(
            "{} MiB free on the file system of {}, watermark store.disk_free_min_mb = {} MiB",
            self.free() >> 20,
            self.path.display(),
            self.min() >> 20
        )
    }
}
