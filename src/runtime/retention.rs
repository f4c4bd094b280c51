//! Each core's retention task (R24), every `im.compact_every_s`: finds the **expired** log
//! segments (sealed, and the next segment created before the cutoff, so everything IM in them
//! is older than the cutoff), drops the stream entries older than `im.retention_s` (cold ones
//! by those segments, so none is left pointing into a segment about to be compacted), moves
//! the entries older than `im.hot_s` out of memory (the cold tier: only their log positions
//! stay), then compacts the core's expired segments with the rules of
//! [`crate::im::retention`]. The file work (reading
//! a segment, writing its compacted copy, the rename) runs on a helper thread of its own, not
//! on glommio's blocking pool, whose one thread makes the core's group commits durable (a
//! second-long segment rewrite there would hold up every acknowledgement); the core's thread
//! only makes the decisions that need its engine (fan-outs in flight, stream heads, group
//! snapshots). Before compacting, a pass runs a floor round of the groups homed here (their
//! past memberships no retained message needs are forgotten, [`crate::im::groups`]) and
//! writes a snapshot of every group with change records in a segment about to be compacted,
//! so those records can go once it is durable. A failed compaction changes nothing (the old
//! segment stays) and is retried at the next pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::im::record::KIND_GROUP;
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
        let hot_cutoff_ms = now_ms.saturating_sub(core.shared.hot.as_millis() as u64);
        // The expired segments of every log present: after a change of the core count,
        // streams homed here may have cold entries in other cores' logs.
        let data = dir.parent().map_or_else(|| dir.clone(), Path::to_path_buf);
        let bounds = match off_core(move || expired_bounds(&data, cutoff_ms)).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "core {}: cannot tell which log segments expired ({e}); cold entries and \
                     segments stay until the next pass",
                    core.id
                );
                HashMap::new()
            }
        };
        let expired = core.im.borrow_mut().expire_segments(cutoff_ms, |at| {
            bounds
                .get(&at.core())
                .is_some_and(|&below| at.position().segment < below)
        });
        core.metrics()
            .im_expired
            .fetch_add(expired, Ordering::Relaxed);
        core.im.borrow_mut().cool(hot_cutoff_ms);
        let (_, cold) = core.im.borrow().entry_counts();
        core.metrics()
            .im_cold_entries
            .store(cold, Ordering::Relaxed);
        // The groups homed here forget the memberships no retained message needs (after
        // the expiry above, so the other cores' answers reflect it as far as their passes
        // ran; a later pass catches up).
        floor_round(&core).await;
        let own = bounds.get(&core.id).copied().unwrap_or(0);
        let compacted = compact_expired(&core, &dir, own, &mut done_below).await;
        // Compaction renamed new files over old ones: reopen on the next cold read.
        core.cold.forget();
        core.im.borrow().forget_cold_files();
        match compacted {
            Ok(()) => {}
            Err(e) => eprintln!(
                "core {}: log compaction stopped for this pass: {e} (nothing was changed by \
                 the failed step; retried at the next pass)",
                core.id
            ),
        }
    }
}

/// How long a pass waits for a floor round's answers or a snapshot's commit before going
/// on without them (nothing is dropped without them; the next pass tries again).
const ROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a floor round of the groups homed here (im::groups) and waits for its answers.
async fn floor_round(core: &Rc<Core>) {
    core.im_run(|im, _, fx| im.start_floor_round(fx));
    core.flush();
    let started = std::time::Instant::now();
    while core.im.borrow().floor_round_pending() {
        if core.stopping() {
            return;
        }
        if started.elapsed() > ROUND_WAIT {
            eprintln!(
                "core {}: a floor round of its groups got no answer from every core in {:?};                  group histories stay as they are until the next pass",
                core.id, ROUND_WAIT
            );
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    let past = core.im.borrow().group_past_total();
    core.metrics().im_group_past.store(past, Ordering::Relaxed);
}

/// For every core log in `data`, the first segment that is not expired: every segment below
/// it is sealed and its successor was created before `cutoff_ms`, so everything in it was
/// written before the cutoff.
fn expired_bounds(data: &Path, cutoff_ms: u64) -> Result<HashMap<u16, u64>, String> {
    let mut bounds = HashMap::new();
    for (k, dir) in crate::claims::core_dirs(data).map_err(|e| e.to_string())? {
        let ids = list_segments(&dir).map_err(|e| e.to_string())?;
        let mut below = ids.first().copied().unwrap_or(0);
        for pair in ids.windows(2) {
            let created = segment_created(&dir, k, pair[1]).map_err(|e| e.to_string())?;
            // The header has whole seconds: the next segment was started before created + 1.
            if created < 0 || (created as u64 + 1) * 1000 > cutoff_ms {
                break; // this segment, and every later one, may hold messages still retained
            }
            below = pair[1];
        }
        bounds.insert(k, below);
    }
    Ok(bounds)
}

/// Compacts every expired segment (below `below`) from `done_below` on, oldest first.
async fn compact_expired(
    core: &Rc<Core>,
    dir: &std::path::Path,
    below: u64,
    done_below: &mut u64,
) -> Result<(), String> {
    let d = dir.to_path_buf();
    let ids = off_core(move || list_segments(&d).map_err(|e| e.to_string())).await?;
    for segment in ids {
        if segment < *done_below {
            continue;
        }
        if segment >= below {
            break;
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
    // 1. The streams whose newest seq in this segment may be their newest of all, and the
    //    groups with change records in it.
    let d = dir.to_path_buf();
    let (heads, groups) = off_core(move || {
        let mut heads = std::collections::HashMap::new();
        let mut groups = std::collections::BTreeSet::new();
        scan_segment(&d, id, segment, |_, v| {
            for (uid, seq) in heads_of(&v) {
                let h: &mut u64 = heads.entry(uid).or_default();
                *h = (*h).max(seq);
            }
            if v.kind == KIND_GROUP {
                groups.insert(v.stream);
            }
        })
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((heads, groups))
    })
    .await?;
    // 2. Those groups' histories collapse (R24: final states): a snapshot of each (if its
    //    changes go past its newest one) must be durable before the changes it covers go.
    //    Without it (the log behind, no commit in time) they simply stay this time.
    if !groups.is_empty() {
        let gids: Vec<u64> = groups.into_iter().collect();
        let mut wait = Vec::new();
        core.im_run(|im, log, _| wait = im.write_snapshots(&gids, log));
        let started = std::time::Instant::now();
        while !wait
            .iter()
            .all(|&(gid, at)| core.im.borrow().group_snapshot(gid) >= Some(at))
        {
            if started.elapsed() > ROUND_WAIT || core.stopping() {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    // 3. What the engine knows: fan-outs in flight, which of those heads are still the
    //    newest (a stream not homed here keeps its head, to be safe), and the groups'
    //    durable snapshots.
    let mut x = {
        let im = core.im.borrow();
        ExpiredSegment {
            open: im.open_fanouts(),
            heads: heads
                .into_iter()
                .filter(|&(uid, seq)| im.head(uid).map_or(true, |h| h <= seq))
                .collect(),
            snapshots: im.group_snapshots(),
        }
    };
    // 4. The rewrite. Its copy of the segment is written before the old file goes, so it
    //    needs that much room above the disk's watermark.
    let bytes =
        std::fs::metadata(crate::store::file::segment_path(dir, segment)).map_or(0, |m| m.len());
    if !core.shared.disk.has_room_for(bytes) {
        return Err(format!(
            "compacting segment {segment:016x}.log needs {} MiB more than the watermark leaves \
             ({})",
            bytes >> 20,
            core.shared.disk.describe()
        ));
    }
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
