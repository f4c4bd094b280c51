//! Each core's retention task (R24), every `im.compact_every_s`: drops the stream entries
//! older than `im.retention_s` from memory, then compacts the core's **expired** log segments
//! (sealed, and the next segment created before the cutoff, so everything IM in them is
//! older than the cutoff) with the rules of [`crate::im::retention`]. The file work (reading
//! a segment, writing its compacted copy, the rename) runs on a helper thread of its own, not
//! on glommio's blocking pool, whose one thread makes the core's group commits durable (a
//! second-long segment rewrite there would hold up every acknowledgement); the core's thread
//! only makes the decisions that need its engine (fan-outs in flight, stream heads). A failed
//! compaction changes nothing (the old segment stays) and is retried at the next pass.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::im::retention::{heads_of, ExpiredSegment};
use crate::store::compact::{compact_segment, scan_segment, segment_created, Compaction};
use crate::store::file::list_segments;

use super::Core;

pub(crate) async fn retention_loop(core: Rc<Core>, dir: PathBuf) {
    // Segments below this id were compacted by this process already.
    let mut done_below = 0u64;
    loop {
        glommio::timer::sleep(core.shared.compact_every).await;
        if core.stopping() {
            return;
        }
        let now_ms = crate::serve::setup::now_ms();
        let cutoff_ms = now_ms.saturating_sub(core.shared.retention.as_millis() as u64);
        let expired = core.im.borrow_mut().expire(cutoff_ms);
        core.metrics()
            .im_expired
            .fetch_add(expired, Ordering::Relaxed);
        match compact_expired(&core, &dir, cutoff_ms, &mut done_below).await {
            Ok(()) => {}
            Err(e) => eprintln!(
                "core {}: log compaction stopped for this pass: {e} (nothing was changed by \
                 the failed step; retried at the next pass)",
                core.id
            ),
        }
    }
}

/// Compacts every expired segment from `done_below` on, oldest first.
async fn compact_expired(
    core: &Rc<Core>,
    dir: &std::path::Path,
    cutoff_ms: u64,
    done_below: &mut u64,
) -> Result<(), String> {
    let id = core.id;
    let d = dir.to_path_buf();
    let ids = off_core(move || list_segments(&d).map_err(|e| e.to_string())).await?;
    for pair in ids.windows(2) {
        let (segment, next) = (pair[0], pair[1]);
        if segment < *done_below {
            continue;
        }
        let d = dir.to_path_buf();
        let created =
            off_core(move || segment_created(&d, id, next).map_err(|e| e.to_string())).await?;
        // The header has whole seconds: the next segment was started before created + 1.
        if created < 0 || (created as u64 + 1) * 1000 > cutoff_ms {
            break; // this segment, and every later one, may hold messages still retained
        }
        let c = compact_one(core, dir, segment).await?;
        core.metrics()
            .log_compactions
            .fetch_add(u64::from(c.dropped > 0), Ordering::Relaxed);
        core.metrics()
            .log_compacted_bytes
            .fetch_add(c.bytes_before - c.bytes_after, Ordering::Relaxed);
        *done_below = segment + 1;
        if core.stopping() {
            break;
        }
    }
    Ok(())
}

async fn compact_one(
    core: &Rc<Core>,
    dir: &std::path::Path,
    segment: u64,
) -> Result<Compaction, String> {
    let id = core.id;
    // 1. The streams whose newest seq in this segment may be their newest of all.
    let d = dir.to_path_buf();
    let heads = off_core(move || {
        let mut heads = std::collections::HashMap::new();
        scan_segment(&d, id, segment, |_, v| {
            for (uid, seq) in heads_of(&v) {
                let h: &mut u64 = heads.entry(uid).or_default();
                *h = (*h).max(seq);
            }
        })
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(heads)
    })
    .await?;
    // 2. What the engine knows: fan-outs in flight, and which of those heads are still the
    //    newest (a stream not homed here keeps its head, to be safe).
    let mut x = {
        let im = core.im.borrow();
        ExpiredSegment {
            open: im.open_fanouts(),
            heads: heads
                .into_iter()
                .filter(|&(uid, seq)| im.head(uid).map_or(true, |h| h <= seq))
                .collect(),
        }
    };
    // 3. The rewrite.
    let d = dir.to_path_buf();
    off_core(move || {
        compact_segment(&d, id, segment, |v, extra| x.keep(v, extra)).map_err(|e| e.to_string())
    })
    .await
}

/// Runs `f` on a helper thread and waits for it without blocking the core (checking every
/// 10 ms: compaction is rare and slow, its latency does not matter).
async fn off_core<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hongbao-compact".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a compaction thread: {e}"))?;
    loop {
        match rx.try_recv() {
            Ok(v) => return v,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err("the compaction thread stopped without an answer".into())
            }
        }
    }
}
