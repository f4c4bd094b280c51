//! What changes while the server runs, on each core: the key allow/deny lists (re-read when
//! their file changes, looked at every [`KEY_LISTS_POLL`], and at once on SIGHUP) and the
//! settings a SIGHUP reloads from the settings file ([`Reloadable`]). The main thread
//! publishes a reload ([`Reloads::publish`]); each core's ticker applies it
//! ([`Watcher::tick`]) within a tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Core;
use crate::admission::PacingConfig;
use crate::ticket::lists::KeyLists;

/// Key lists are re-read (when changed) this often.
const KEY_LISTS_POLL: Duration = Duration::from_secs(1);

/// The settings a SIGHUP changes in a running server (docs/formats/serve-config.md).
#[derive(Debug, Clone, Copy)]
pub struct Reloadable {
    pub pacing_enabled: bool,
    pub pacing: PacingConfig,
    /// `store.disk_free_min_mb`, in bytes.
    pub disk_free_min: u64,
}

/// The latest reload, shared by the cores.
#[derive(Default)]
pub struct Reloads {
    generation: AtomicU64,
    latest: Mutex<Option<Reloadable>>,
}

impl Reloads {
    /// A SIGHUP: `settings` when the settings file was read again (None: only the key lists).
    pub fn publish(&self, settings: Option<Reloadable>) {
        if let Some(s) = settings {
            *self.latest.lock().expect("not poisoned") = Some(s);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A core's view of what changed.
pub(crate) struct Watcher {
    lists_mtime: Option<std::time::SystemTime>,
    last_check: Instant,
    seen: u64,
}

impl Watcher {
    pub fn new(core: &Core) -> Watcher {
        Watcher {
            lists_mtime: core.shared.key_lists_path.as_ref().and_then(|p| mtime(p)),
            last_check: Instant::now(),
            seen: 0,
        }
    }

    /// Applies a reload published since the last call, and key lists whose file changed.
    pub fn tick(&mut self, core: &Core) {
        let generation = core.shared.reloads.generation.load(Ordering::Acquire);
        let hup = generation != self.seen;
        if hup {
            self.seen = generation;
            let settings = *core.shared.reloads.latest.lock().expect("not poisoned");
            if let Some(s) = settings {
                core.engine
                    .borrow_mut()
                    .set_pacing(s.pacing_enabled, s.pacing);
            }
        }
        let Some(path) = &core.shared.key_lists_path else {
            return;
        };
        if !hup && self.last_check.elapsed() < KEY_LISTS_POLL {
            return;
        }
        self.last_check = Instant::now();
        let now = mtime(path);
        if !hup && now == self.lists_mtime {
            return;
        }
        self.lists_mtime = now;
        match KeyLists::load(path) {
            Ok(lists) => {
                *core.lists.borrow_mut() = lists;
                core.metrics()
                    .key_list_reloads
                    .fetch_add(1, Ordering::Relaxed);
                if core.id == 0 {
                    eprintln!("key lists reloaded from {}", path.display());
                }
            }
            Err(e) => {
                core.metrics()
                    .key_list_errors
                    .fetch_add(1, Ordering::Relaxed);
                if core.id == 0 {
                    eprintln!("key lists not reloaded (keeping the old ones): {e}");
                }
            }
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
