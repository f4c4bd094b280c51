//! The first pass of reconciliation: every host's logs against the ledger, in log order. Each
//! claim record must have the ledger row that names its position, with the same fields; each
//! row must name a claim record; a claim the settle position has passed must be in the ledger.
//! The logs' reservation records are gathered on the way (which tickets each host may have
//! issued). Runs on the `reconcile` command's thread; memory is one log segment and one row of
//! look-ahead, whatever the event's size.

use std::collections::HashMap;
use std::path::PathBuf;

use rusqlite::Connection;
use serde::Serialize;
use zerocopy::FromBytes;

use super::book::{self, Cursor, Row};
use super::findings::{Finding, FindingKind, Findings, Place};
use super::ReconcileError;
use crate::ledger::{ClaimRecord, ReservationRecord, KIND_CLAIM, KIND_RESERVATION};
use crate::store::file::read_log;
use crate::store::LogPosition;
use crate::ticket::EnvelopeId;

/// One host's data directory: its name (from event.json) and its core logs, by core.
#[derive(Debug, Clone)]
pub struct HostLogs {
    pub host: String,
    pub data: PathBuf,
    pub cores: Vec<(u16, PathBuf)>,
}

/// Highest reservation end per host and shard ordinal: tickets below it may have been issued.
pub type Reservations = HashMap<String, HashMap<u32, u32>>;

/// Counts of the log pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogCounts {
    /// Claim records read from the logs.
    pub claims_read: u64,
    /// Of them, with a ledger row that matches.
    pub matched: u64,
    /// Past their log's settle position: not settled yet (not a finding; not credited).
    pub unsettled: u64,
    /// Ledger rows of hosts whose data directory was not given: left as they are.
    pub rows_of_other_hosts: u64,
}

/// The state of the pass: the ledger cursor, findings, counts.
struct Pass<'c, 's> {
    conn: &'c Connection,
    rows: Cursor<'s>,
    findings: &'c mut Findings,
    counts: LogCounts,
    failure: Option<ReconcileError>,
}

/// Runs the pass over `hosts` (sorted by name, as the ledger's rows are).
pub fn check_logs(
    conn: &Connection,
    hosts: &[HostLogs],
    findings: &mut Findings,
) -> Result<(LogCounts, Reservations), ReconcileError> {
    let mut stmt = conn.prepare(book::BY_POSITION)?;
    let mut pass = Pass {
        conn,
        rows: Cursor::new(&mut stmt)?,
        findings,
        counts: LogCounts::default(),
        failure: None,
    };
    let mut reservations = Reservations::new();
    for h in hosts {
        pass.skip_rows_while(|r| *r.host < *h.host);
        for (core, dir) in &h.cores {
            // Rows of cores with no log here: their claims cannot be seen.
            pass.no_claim_while(|r| *r.host == *h.host && r.core < *core);
            let settled = settle_position(conn, &h.host, *core)?;
            read_log(dir, *core, LogPosition::default(), |at, view| {
                match view.kind {
                    KIND_RESERVATION => {
                        if let Ok(r) = ReservationRecord::read_from_bytes(view.payload) {
                            let end = reservations
                                .entry(h.host.clone())
                                .or_default()
                                .entry(r.shard_ordinal.get())
                                .or_default();
                            *end = (*end).max(r.end.get());
                        }
                    }
                    KIND_CLAIM => pass.claim(&h.host, *core, at, view.payload, settled),
                    _ => {}
                }
            })
            .map_err(|e| ReconcileError::Data(format!("{}: {e}", h.data.display())))?;
            if let Some(e) = pass.failure.take() {
                return Err(e);
            }
            pass.no_claim_while(|r| *r.host == *h.host && r.core == *core);
        }
        pass.no_claim_while(|r| *r.host == *h.host);
    }
    pass.skip_rows_while(|_| true);
    let counts = pass.counts;
    pass.rows.finish()?;
    Ok((counts, reservations))
}

fn settle_position(
    conn: &Connection,
    host: &str,
    core: u16,
) -> Result<LogPosition, ReconcileError> {
    use rusqlite::OptionalExtension;
    let found = conn
        .query_row(
            "SELECT segment, offset FROM positions WHERE host = ?1 AND core = ?2",
            rusqlite::params![host, core],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
    Ok(found.map_or(LogPosition::default(), |(s, o)| LogPosition {
        segment: s as u64,
        offset: o as u64,
    }))
}

impl Pass<'_, '_> {
    /// Rows of hosts not being read: counted, left alone.
    fn skip_rows_while(&mut self, skip: impl Fn(&Row) -> bool) {
        while self.rows.next_if(&skip).is_some() {
            self.counts.rows_of_other_hosts += 1;
        }
    }

    /// Rows that name no claim record: each a finding.
    fn no_claim_while(&mut self, orphan: impl Fn(&Row) -> bool) {
        while let Some(r) = self.rows.next_if(&orphan) {
            let detail = format!(
                "the ledger credits uid {} with {} cents for a claim its log does not hold",
                r.uid, r.amount_cents
            );
            self.finding(FindingKind::NoClaim, &r, detail);
        }
    }

    fn finding(&mut self, kind: FindingKind, r: &Row, detail: String) {
        let f = Finding {
            kind,
            place: Place::new(EnvelopeId(r.envelope_id), &r.host, r.core, r.at),
            detail,
        };
        if let Err(e) = book::hold(self.conn, &f, r.envelope_id, r.at) {
            self.failure.get_or_insert(e.into());
        }
        self.findings.add(f);
    }

    /// One claim record at `at` in the log of (`host`, `core`).
    fn claim(
        &mut self,
        host: &str,
        core: u16,
        at: LogPosition,
        payload: &[u8],
        settled: LogPosition,
    ) {
        let Ok(c) = ClaimRecord::read_from_bytes(payload) else {
            self.failure.get_or_insert(ReconcileError::Data(format!(
                "host {host} core {core} position {at}: a claim record of {} bytes is malformed",
                payload.len()
            )));
            return;
        };
        self.counts.claims_read += 1;
        self.no_claim_while(|r| &*r.host == host && r.core == core && r.at < at);
        match self
            .rows
            .next_if(|r| &*r.host == host && r.core == core && r.at == at)
        {
            Some(r) => self.compare(&r, &c),
            None if at < settled => {
                let row = claim_row(host, core, at, &c);
                let detail = format!(
                    "uid {} claimed {} cents; settle has passed this position but the ledger \
                     has no row for it",
                    row.uid, row.amount_cents
                );
                self.finding(FindingKind::MissingFromLedger, &row, detail);
            }
            None => self.counts.unsettled += 1,
        }
    }

    /// A row at a claim's position: the same claim, or a finding.
    fn compare(&mut self, r: &Row, c: &ClaimRecord) {
        let claim = claim_row(&r.host, r.core, r.at, c);
        let mut differ = Vec::new();
        let mut field = |name: &str, row: u64, log: u64| {
            if row != log {
                differ.push(format!("{name} {row} in the ledger, {log} in the log"));
            }
        };
        field("envelope", r.envelope_id, claim.envelope_id);
        field("uid", r.uid, claim.uid);
        field(
            "amount_cents",
            r.amount_cents.into(),
            claim.amount_cents.into(),
        );
        field("batch_id", r.batch_id.into(), claim.batch_id.into());
        field("key_id", r.key_id.into(), claim.key_id.into());
        field(
            "claimed_unix",
            r.claimed_unix.into(),
            claim.claimed_unix.into(),
        );
        field(
            "issuing_core",
            r.issuing_core.into(),
            claim.issuing_core.into(),
        );
        if !differ.is_empty() {
            self.finding(FindingKind::RowDiffers, r, differ.join(", "));
        } else if r.conflict {
            let detail = format!(
                "a second claim of this envelope, by uid {} for {} cents",
                r.uid, r.amount_cents
            );
            self.finding(FindingKind::Duplicate, r, detail);
        } else {
            self.counts.matched += 1;
        }
    }
}

/// A claim record as a row (for findings about claims the ledger lacks).
fn claim_row(host: &str, core: u16, at: LogPosition, c: &ClaimRecord) -> Row {
    Row {
        envelope_id: c.envelope_id.get(),
        uid: c.uid.get(),
        amount_cents: c.amount_cents.get(),
        batch_id: c.batch_id.get(),
        key_id: c.key_id.get(),
        claimed_unix: c.claimed_unix.get(),
        issuing_core: c.issuing_core.get(),
        host: host.into(),
        core,
        at,
        conflict: false,
    }
}
