//! The second pass of reconciliation: every ledger row against its pre-generated ticket, in
//! envelope order (each ticket file mapped once and read front to back). The ticket at the
//! row's file and index is decrypted with the keyring: amount, batch and key must be the row's;
//! the file must be served by the row's host; the index must have been reserved for issuing on
//! that host; the key must not be denied; the envelope must not be claimed twice. Then the
//! envelopes never issued are counted per batch (money to return). Runs on the `reconcile`
//! command's thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

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

/// The ticket file being read, mapped, and what the previous row learnt of its host's
/// reservations (rows come in envelope order: long runs share both).
struct Current<'m> {
    file: Option<(&'m ShardEntry, ShardFile)>,
    /// (host, ordinal, the host's reservation end for it when its logs were read).
    issued: Option<(Arc<str>, u32, Option<u32>)>,
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
    let mut current = Current {
        file: None,
        issued: None,
    };
    let mut counts = TicketCounts::default();
    let mut found = Vec::new();
    for query in [book::BY_ENVELOPE, book::CONFLICTS_BY_ENVELOPE] {
        let mut conflicting = conflicting.iter().peekable();
        let mut stmt = conn.prepare(query)?;
        let mut rows = Cursor::new(&mut stmt)?;
        while let Some(row) = rows.next_if(|_| true) {
            counts.rows_checked += 1;
            while conflicting.next_if(|&&e| e < row.envelope_id).is_some() {}
            let twice = conflicting.next_if(|&&e| e == row.envelope_id).is_some();
            check_row(side, &by_ordinal, &mut current, &row, &mut found)?;
            // (A conflict row's own duplicate finding comes from the log pass.)
            if twice && !row.conflict {
                found.push((
                    FindingKind::Duplicate,
                    "this envelope is claimed again elsewhere (see the conflicts table)".into(),
                ));
            }
            for (kind, detail) in found.drain(..) {
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

/// The file of `ordinal`, mapped (the current one, or opened now).
fn file_of<'c, 'm>(
    by_ordinal: &HashMap<u32, &'m ShardEntry>,
    current: &'c mut Current<'m>,
    side: &TicketSide<'_>,
    ordinal: u32,
) -> Result<Option<&'c (&'m ShardEntry, ShardFile)>, ReconcileError> {
    if !current
        .file
        .as_ref()
        .is_some_and(|(s, _)| s.ordinal == ordinal)
    {
        let Some(&shard) = by_ordinal.get(&ordinal) else {
            return Ok(None);
        };
        let path = side.variant_dir.join(&shard.path);
        let file = ShardFile::open(&path).map_err(|e| ReconcileError::Data(e.to_string()))?;
        current.file = Some((shard, file));
    }
    Ok(current.file.as_ref())
}

/// The reservation end of the row's host for `ordinal`, None when its logs were not read.
fn issued_end(
    side: &TicketSide<'_>,
    current: &mut Current<'_>,
    host: &Arc<str>,
    ordinal: u32,
) -> Option<u32> {
    if let Some((h, o, end)) = &current.issued {
        if Arc::ptr_eq(h, host) && *o == ordinal {
            return *end;
        }
    }
    let end = side.hosts.contains(&**host).then(|| {
        side.reservations
            .get(&**host)
            .and_then(|m| m.get(&ordinal))
            .copied()
            .unwrap_or(0)
    });
    current.issued = Some((host.clone(), ordinal, end));
    end
}

/// Pushes the findings about one row to `found` (none when it is right).
fn check_row<'m>(
    side: &TicketSide<'_>,
    by_ordinal: &HashMap<u32, &'m ShardEntry>,
    current: &mut Current<'m>,
    row: &Row,
    found: &mut Vec<(FindingKind, String)>,
) -> Result<(), ReconcileError> {
    let id = EnvelopeId(row.envelope_id);
    let end = issued_end(side, current, &row.host, id.shard_ordinal());
    let Some((shard, file)) = file_of(by_ordinal, current, side, id.shard_ordinal())? else {
        found.push((
            FindingKind::UnknownShard,
            format!(
                "no file of variant {} has ordinal {:08x}",
                side.manifest.variant,
                id.shard_ordinal()
            ),
        ));
        return Ok(());
    };
    if *shard.host != *row.host {
        found.push((
            FindingKind::WrongHost,
            format!(
                "file {} is served by host {}, the claim is in the logs of {}",
                shard.path, shard.host, row.host
            ),
        ));
    }
    if let Some(end) = end.filter(|&end| id.index() >= end) {
        found.push((
            FindingKind::NeverIssued,
            format!(
                "host {} reserved tickets of {} only below index {end}",
                row.host, shard.path
            ),
        ));
    }
    let records = file.records();
    let Some(record) = records.get(id.index() as usize) else {
        found.push((
            FindingKind::NoSuchTicket,
            format!("{} holds {} tickets", shard.path, records.len()),
        ));
        return Ok(());
    };
    let ticket = match record.open(side.keyring) {
        Ok(t) if t.envelope_id == id => t,
        Ok(t) => {
            found.push((
                FindingKind::TicketUnreadable,
                format!("the record at this index is envelope {}", t.envelope_id),
            ));
            return Ok(());
        }
        Err(e) => {
            found.push((FindingKind::TicketUnreadable, e.to_string()));
            return Ok(());
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
    Ok(())
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
            .get(&shard.host)
            .and_then(|m| m.get(&shard.ordinal))
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
