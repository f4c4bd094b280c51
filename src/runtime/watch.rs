//! The main thread while the cores serve: acts on signals (a stop, a SIGHUP reload, a SIGUSR1
//! status line), checks the data directory's free space against its watermark, and returns
//! when the server is to stop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::reload::Reloadable;
use super::{Shared, Signals};
use crate::serve::config::ServeConfig;

/// How often the main thread looks at the signals' flags.
const POLL: Duration = Duration::from_millis(20);

/// Runs until a stop signal, or until `run_for` has passed.
pub(super) fn serve_until_stopped(
    shared: &Shared,
    signals: &Signals,
    reload: Option<&dyn Fn() -> Result<ServeConfig, String>>,
    run_for: Option<Duration>,
) {
    let deadline = run_for.map(|d| Instant::now() + d);
    let mut disk_checked = Instant::now();
    while !signals.shutdown.load(Ordering::Relaxed) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if signals.take_hup() {
            hangup(shared, reload);
        }
        if signals.take_usr1() {
            eprintln!("{}", status(shared));
        }
        if disk_checked.elapsed() >= super::disk::DISK_CHECK {
            disk_checked = Instant::now();
            match shared.disk.check() {
                Some(true) => eprintln!(
                    "disk space low: {}; opens and IM writes are answered busy until space is \
                     freed",
                    shared.disk.describe()
                ),
                Some(false) => eprintln!(
                    "disk space above the watermark again: {}; opens and IM writes are served",
                    shared.disk.describe()
                ),
                None => {}
            }
        }
        std::thread::sleep(POLL);
    }
}

/// SIGHUP: the key lists are read again on every core; with a settings file, its reloadable
/// settings too. A file that does not read or validate keeps every current setting.
fn hangup(shared: &Shared, reload: Option<&dyn Fn() -> Result<ServeConfig, String>>) {
    let settings = match reload.map(|r| r()) {
        None => None,
        Some(Ok(c)) => {
            let disk_free_min = c.disk_free_min.unwrap_or_else(|| {
                crate::serve::config::disk_free_min_default(shared.cores, c.pending_bytes)
            });
            shared.disk.set_min(disk_free_min);
            eprintln!(
                "SIGHUP: reloaded the key lists, [pacing] and store.disk_free_min_mb ({} MiB); \
                 other changed settings take effect at the next start",
                disk_free_min >> 20
            );
            Some(Reloadable {
                pacing_enabled: c.pacing_enabled,
                pacing: c.pacing,
                disk_free_min,
            })
        }
        Some(Err(e)) => {
            eprintln!("SIGHUP: settings not reloaded (keeping the current ones): {e}");
            None
        }
    };
    if reload.is_none() {
        eprintln!("SIGHUP: reloading the key lists");
    }
    shared.reloads.publish(settings);
}

/// One line for SIGUSR1: what the server has done and where it stands.
fn status(shared: &Shared) -> String {
    let sum = |f: &dyn Fn(&crate::metrics::CoreMetrics) -> u64| -> u64 {
        shared.metrics.iter().map(|m| f(m)).sum()
    };
    let r = Ordering::Relaxed;
    format!(
        "hongbao serve: status: {} cores, {} connections open, {} shakes, {} opens ({} again), \
         {} cents claimed, {} log commits, {} cores degraded, {} IM sends, heap {} MiB, {}{}",
        shared.cores,
        sum(&|m| m.connections_open.load(r)),
        sum(&|m| m.shakes.iter().map(|c| c.load(r)).sum()),
        sum(&|m| m.opens.load(r)),
        sum(&|m| m.opens_again.load(r)),
        sum(&|m| m.claimed_cents.load(r)),
        sum(&|m| m.commits.load(r)),
        sum(&|m| m.degraded.load(r)),
        sum(&|m| m.im_sends.load(r)),
        crate::heap::in_use() >> 20,
        shared.disk.describe(),
        if shared.disk.low() { " (low)" } else { "" },
    )
}
