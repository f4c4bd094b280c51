//! The second pass of reconciliation: every ledger row against its pre-generated ticket, in
//! envelope order (each ticket file mapped once and read front to back). The ticket at the
//! row's file and index is decrypted with the keyring: amount, batch and key must be the row's;
//! the file must be served by the row's host; the index must have been reserved for issuing on
//! that host; the key must not be denied; the envelope must not be claimed twice. Then the
//! envelopes never issued are counted per batch (money to return). Runs on the `reconcile`
//! command's thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use super::book::{self, Amount, Cursor, Row};
use super::findings::{Finding, FindingKind, Findings, Place};
use super::logs::Reservations;
use super::ReconcileError;
use crate::manifest::{Manifest, ShardEntry};
use crate::ticket::lists::KeyLists;
use crate::ticket::shard::ShardFile;
use crate::ticket::{EnvelopeId, Keyring};

/// What the ticket pass reads besides the ledger.
pub struct TicketSide<'a> {
    pub variant_dir: &'a Path,
    pub manifest: &'a Manifest,
    pub keyring: &'a Keyring,
    pub lists: Option<&'a KeyLists>,
    /// Hosts whose logs were read: their reservations are known.
    pub hosts: &'a HashSet<String>,
    pub reservations: &'a Reservations,
}

/// Counts of the ticket pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TicketCounts {
    /// Ledger rows checked against their tickets.
    pub rows_checked: u64,
}

/// The ticket file being read, mapped.
struct Open {
    ordinal: u32,
    file: ShardFile,
}

/// Checks every row of `claims`, then of `conflicts`; findings are held (book::hold).
pub fn check_tickets(
    conn: &Connection,
    side: &TicketSide<'_>,
    findings: &mut Findings,
) -> Result<TicketCounts, ReconcileError> {
    let by_ordinal: HashMap<u32, &ShardEntry> = side
        .manifest
        .shards
        .iter()
        .map(|s| (s.ordinal, s))
        .collect();
    let conflicting = book::conflicting_envelopes(conn)?;
    let mut open: Option<Open> = None;
    let mut counts = TicketCounts::default();
    for query in [book::BY_ENVELOPE, book::CONFLICTS_BY_ENVELOPE] {
        let mut conflicting = conflicting.iter().peekable();
        let mut stmt = conn.prepare(query)?;
        let mut rows = Cursor::new(&mut stmt)?;
        while let Some(row) = rows.next_if(|_| true) {
            counts.rows_checked += 1;
            while conflicting.next_if(|&&e| e < row.envelope_id).is_some() {}
            let twice = conflicting.next_if(|&&e| e == row.envelope_id).is_some();
            let mut found = check_row(side, &by_ordinal, &mut open, &row)?;
            // (A conflict row's own duplicate finding comes from the log pass.)
            if twice && !row.conflict {
                found.push((
                    FindingKind::Duplicate,
                    "this envelope is claimed again elsewhere (see the conflicts table)".into(),
                ));
            }
            for (kind, detail) in found {
                let f = Finding {
                    kind,
                    place: Place::new(EnvelopeId(row.envelope_id), &row.host, row.core, row.at),
                    detail,
                };
                book::hold(conn, &f, row.envelope_id, row.at)?;
                findings.add(f);
            }
        }
        rows.finish()?;
    }
    Ok(counts)
}

/// The findings about one row (none when it is right).
fn check_row(
    side: &TicketSide<'_>,
    by_ordinal: &HashMap<u32, &ShardEntry>,
    open: &mut Option<Open>,
    row: &Row,
) -> Result<Vec<(FindingKind, String)>, ReconcileError> {
    let id = EnvelopeId(row.envelope_id);
    let mut found = Vec::new();
    let Some(shard) = by_ordinal.get(&id.shard_ordinal()) else {
        found.push((
            FindingKind::UnknownShard,
            format!(
                "no file of variant {} has ordinal {:08x}",
                side.manifest.variant,
                id.shard_ordinal()
            ),
        ));
        return Ok(found);
    };
    if shard.host != row.host {
        found.push((
            FindingKind::WrongHost,
            format!(
                "file {} is served by host {}, the claim is in the logs of {}",
                shard.path, shard.host, row.host
            ),
        ));
    }
    if side.hosts.contains(&row.host) {
        let end = side
            .reservations
            .get(&(row.host.clone(), id.shard_ordinal()))
            .copied()
            .unwrap_or(0);
        if id.index() >= end {
            found.push((
                FindingKind::NeverIssued,
                format!(
                    "host {} reserved tickets of {} only below index {end}",
                    row.host, shard.path
                ),
            ));
        }
    }
    if !open.as_ref().is_some_and(|o| o.ordinal == shard.ordinal) {
        let path = side.variant_dir.join(&shard.path);
        let file = ShardFile::open(&path).map_err(|e| ReconcileError::Data(e.to_string()))?;
        *open = Some(Open {
            ordinal: shard.ordinal,
            file,
        });
    }
    let records = open.as_ref().expect("opened above").file.records();
    let Some(record) = records.get(id.index() as usize) else {
        found.push((
            FindingKind::NoSuchTicket,
            format!("{} holds {} tickets", shard.path, records.len()),
        ));
        return Ok(found);
    };
    let ticket = match record.open(side.keyring) {
        Ok(t) if t.envelope_id == id => t,
        Ok(t) => {
            found.push((
                FindingKind::TicketUnreadable,
                format!("the record at this index is envelope {}", t.envelope_id),
            ));
            return Ok(found);
        }
        Err(e) => {
            found.push((FindingKind::TicketUnreadable, e.to_string()));
            return Ok(found);
        }
    };
    if (ticket.amount_cents, ticket.batch_id, ticket.key_id)
        != (row.amount_cents, row.batch_id, row.key_id)
    {
        found.push((
            FindingKind::TicketMismatch,
            format!(
                "the claim says {} cents, batch {}, key {}; the ticket says {} cents, batch {}, \
                 key {}",
                row.amount_cents,
                row.batch_id,
                row.key_id,
                ticket.amount_cents,
                ticket.batch_id,
                ticket.key_id
            ),
        ));
    }
    if side.lists.is_some_and(|l| !l.allows(ticket.key_id)) {
        found.push((
            FindingKind::DeniedKey,
            format!("key {} is refused by the key lists", ticket.key_id),
        ));
    }
    Ok(found)
}

/// Envelopes never issued (at or past the host's highest reservation), per batch, over the
/// files of the hosts whose logs were read; and how many files could not be counted (their
/// host's logs were not given).
pub fn unissued(side: &TicketSide<'_>) -> Result<(BTreeMap<u16, Amount>, usize), ReconcileError> {
    let mut per_batch: BTreeMap<u16, Amount> = BTreeMap::new();
    let mut unknown = 0;
    for shard in &side.manifest.shards {
        if !side.hosts.contains(&shard.host) {
            unknown += 1;
            continue;
        }
        let end = side
            .reservations
            .get(&(shard.host.clone(), shard.ordinal))
            .copied()
            .unwrap_or(0) as usize;
        let path = side.variant_dir.join(&shard.path);
        let file = ShardFile::open(&path).map_err(|e| ReconcileError::Data(e.to_string()))?;
        for record in file.records().iter().skip(end) {
            // verify has opened every record before this runs; one that does not open here
            // was changed since, and is counted under no batch.
            if let Ok(t) = record.open(side.keyring) {
                let a = per_batch.entry(t.batch_id).or_default();
                a.claims += 1;
                a.cents += u64::from(t.amount_cents);
            }
        }
    }
    Ok((per_batch, unknown))
}
