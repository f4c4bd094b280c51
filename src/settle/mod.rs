//! `hongbao settle`: the consumer of claims. Reads the durable claims of a host's data
//! directory (the per-core logs, as `hongbao claims` does) and records each in the ledger
//! database exactly once, with each log's resume position in the same transaction
//! (docs/formats/ledger.md). Claims enter the ledger `pending`; reconciliation against the
//! tickets moves them on.
//!
//! A process apart from the server, on its own thread: serving never waits for it. When it is
//! slower than opens, the backlog waits in the logs and crediting is late; nothing else.

pub mod cli;
pub mod db;
pub mod metrics;
pub mod pg;
pub mod preload;
pub mod sink;

use std::collections::BTreeMap;
use std::path::Path;

use zerocopy::FromBytes;

use crate::ledger::{ClaimRecord, KIND_CLAIM};
use crate::serve::setup::{DataIdentity, EVENT_FILE};
use crate::store::file::read_log;
use crate::store::record::encoded_len;
use crate::store::{LogPosition, StoreError};
use db::{DbError, Ledger, LedgerIdentity};
use sink::Sink;

/// Claims per transaction unless told otherwise.
pub const BATCH_DEFAULT: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Pg(String),
    #[error("{0}")]
    Data(String),
    /// A claim record whose payload is not a claim.
    #[error("core {core} position {position}: claim record of {bytes} bytes is malformed")]
    Malformed {
        core: u16,
        position: LogPosition,
        bytes: usize,
    },
}

/// What one pass over a data directory did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// New claims recorded.
    pub recorded: u64,
    /// Their cents.
    pub cents: u64,
    /// Claims read again (already recorded from the same position).
    pub again: u64,
    /// Claims of envelopes the ledger has from another position: held.
    pub conflicts: u64,
    /// Of the new claims, big envelopes credited at once, and big ones held (they differ from
    /// the preloaded list).
    pub credited: u64,
    pub held: u64,
    /// Each core's resume position after the pass.
    pub positions: BTreeMap<u16, LogPosition>,
    /// Durable claims left past the positions by a pass with a budget (`--rate`): the lag.
    pub behind: u64,
    /// When the oldest of them was claimed (Unix seconds).
    pub oldest_behind_unix: Option<u32>,
}

/// Reads `<data>/event.json`: which event, variant, generation and host the logs belong to.
pub fn data_identity(data: &Path) -> Result<DataIdentity, SettleError> {
    let path = data.join(EVENT_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SettleError::Data(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        SettleError::Data(format!(
            "{}: not a data directory's identity: {e}",
            path.display()
        ))
    })
}

/// The ledger for the event of `data`, opened or created at `db`.
pub fn open_ledger(data: &Path, db: &Path) -> Result<(Ledger, String), SettleError> {
    let id = data_identity(data)?;
    let ledger = Ledger::open(
        db,
        &LedgerIdentity {
            event: id.event,
            variant: id.variant,
            generation: id.generation,
        },
    )?;
    Ok((ledger, id.host))
}

/// The core log directories of `data`, by core, after checking that every core its
/// cores.json lists is there.
pub fn log_dirs(data: &Path) -> Result<Vec<(u16, std::path::PathBuf)>, SettleError> {
    let dirs = crate::claims::core_dirs(data).map_err(|e| SettleError::Data(e.to_string()))?;
    if let Some(listed) = crate::serve::cores::read(data).map_err(SettleError::Data)? {
        let present: Vec<u16> = dirs.iter().map(|(k, _)| *k).collect();
        crate::serve::cores::check_listed(data, &listed, &present).map_err(SettleError::Data)?;
    }
    Ok(dirs)
}

/// One pass: every durable claim of every core log of `data` past the ledger's positions is
/// recorded, `batch` claims per transaction.
pub fn settle_pass(
    sink: &mut dyn Sink,
    host: &str,
    data: &Path,
    batch: usize,
) -> Result<Pass, SettleError> {
    settle_pass_limited(sink, host, data, batch, u64::MAX)
}

/// As [`settle_pass`], recording at most `budget` claims; the rest are counted as behind.
pub fn settle_pass_limited(
    sink: &mut dyn Sink,
    host: &str,
    data: &Path,
    batch: usize,
    mut budget: u64,
) -> Result<Pass, SettleError> {
    let dirs = log_dirs(data)?;
    let mut pass = Pass::default();
    for (core, dir) in dirs {
        let log = Log {
            host,
            core,
            dir: &dir,
        };
        let end = settle_core(sink, &log, batch.max(1), &mut budget, &mut pass)?;
        pass.positions.insert(core, end);
    }
    Ok(pass)
}

/// One core's log of a host.
struct Log<'a> {
    host: &'a str,
    core: u16,
    dir: &'a Path,
}

/// Records the claims of one core's log past its position, up to `budget` of them; returns
/// the new position. Claims past the budget are counted in `pass.behind`.
fn settle_core(
    sink: &mut dyn Sink,
    log: &Log<'_>,
    batch: usize,
    budget: &mut u64,
    pass: &mut Pass,
) -> Result<LogPosition, SettleError> {
    let (host, core) = (log.host, log.core);
    let from = sink.position(host, core)?;
    let mut failure: Option<SettleError> = None;
    let mut claims: Vec<(LogPosition, ClaimRecord)> = Vec::with_capacity(batch.min(1 << 16));
    // Where the budget ran out: the position is written there, and no further.
    let mut stopped: Option<LogPosition> = (*budget == 0).then_some(from);
    let mut write = |claims: &mut Vec<(LogPosition, ClaimRecord)>, next: LogPosition| {
        let out = sink.write_batch(host, core, claims, next)?;
        pass.recorded += out.recorded;
        pass.cents += out.cents;
        pass.again += out.again;
        pass.conflicts += out.conflicts;
        pass.credited += out.credited;
        pass.held += out.held;
        claims.clear();
        Ok::<(), SettleError>(())
    };
    let end = read_log(log.dir, core, from, |position, view| {
        if view.kind != KIND_CLAIM || failure.is_some() {
            return;
        }
        let Ok(c) = ClaimRecord::read_from_bytes(view.payload) else {
            failure = Some(SettleError::Malformed {
                core,
                position,
                bytes: view.payload.len(),
            });
            return;
        };
        if stopped.is_some() {
            pass.behind += 1;
            let t = c.claimed_unix.get();
            pass.oldest_behind_unix = Some(pass.oldest_behind_unix.map_or(t, |o| o.min(t)));
            return;
        }
        claims.push((position, c));
        *budget -= 1;
        let next = LogPosition {
            segment: position.segment,
            offset: position.offset + encoded_len(view.payload.len()) as u64,
        };
        if *budget == 0 {
            stopped = Some(next);
        }
        if claims.len() >= batch || *budget == 0 {
            if let Err(e) = write(&mut claims, next) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(at) = stopped {
        return Ok(at);
    }
    let end = end.max(from);
    write(&mut claims, end)?;
    Ok(end)
}
