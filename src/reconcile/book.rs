//! Reconciliation's reads and writes of the ledger database (docs/formats/ledger.md): its rows
//! in log-position order and in envelope order, the findings held for the run (a temporary
//! table, so memory stays flat whatever their number), and the state changes at the end
//! (held rows, then credit of every pending row that passed), all inside the one transaction
//! the run holds. Runs on the `reconcile` command's thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{params, Connection, Row as SqlRow, Rows};
use serde::Serialize;

use super::findings::Finding;
use crate::store::LogPosition;

/// A claim row (or a row of `conflicts`) as reconciliation reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub envelope_id: u64,
    pub uid: u64,
    pub amount_cents: u32,
    pub batch_id: u16,
    pub key_id: u16,
    pub claimed_unix: u32,
    pub issuing_core: u16,
    /// Shared between the rows of one host (a cursor keeps one copy of each name).
    pub host: Arc<str>,
    pub core: u16,
    pub at: LogPosition,
    /// From `conflicts`: a second claim of an envelope `claims` holds.
    pub conflict: bool,
}

/// Reads a row of [`BY_POSITION`] or [`BY_ENVELOPE`]; `hosts` keeps each host name once.
fn read_row(r: &SqlRow<'_>, hosts: &mut Vec<Arc<str>>) -> rusqlite::Result<Row> {
    let name = r.get_ref(7)?.as_str()?;
    let host = match hosts.iter().find(|h| &***h == name) {
        Some(h) => h.clone(),
        None => {
            let h: Arc<str> = Arc::from(name);
            hosts.push(h.clone());
            h
        }
    };
    Ok(Row {
        envelope_id: r.get::<_, i64>(0)? as u64,
        uid: r.get::<_, i64>(1)? as u64,
        amount_cents: r.get(2)?,
        batch_id: r.get(3)?,
        key_id: r.get(4)?,
        claimed_unix: r.get(5)?,
        issuing_core: r.get(6)?,
        host,
        core: r.get(8)?,
        at: LogPosition {
            segment: r.get::<_, i64>(9)? as u64,
            offset: r.get::<_, i64>(10)? as u64,
        },
        conflict: r.get::<_, i64>(11)? != 0,
    })
}

/// Every row of `claims` and `conflicts` in (host, core, segment, offset) order: the order of
/// the logs, for the merge with them. SQLite sorts on disk past its cache: memory stays flat.
pub const BY_POSITION: &str = "SELECT envelope_id, uid, amount_cents, batch_id, key_id, \
    claimed_unix, issuing_core, host, core, segment, offset, 0 FROM claims \
    UNION ALL SELECT envelope_id, uid, amount_cents, batch_id, key_id, claimed_unix, \
    issuing_core, host, core, segment, offset, 1 FROM conflicts \
    ORDER BY 8, 9, 10, 11";

/// Every row of `claims` in envelope order (the table's own order: no sort), for the check
/// against the tickets, which then reads each ticket file once, front to back.
pub const BY_ENVELOPE: &str = "SELECT envelope_id, uid, amount_cents, batch_id, key_id, \
    claimed_unix, issuing_core, host, core, segment, offset, 0 FROM claims \
    ORDER BY envelope_id";

/// The rows of `conflicts` in envelope order (a sort of a table that is small unless
/// something is badly wrong).
pub const CONFLICTS_BY_ENVELOPE: &str = "SELECT envelope_id, uid, amount_cents, batch_id, \
    key_id, claimed_unix, issuing_core, host, core, segment, offset, 1 FROM conflicts \
    ORDER BY envelope_id";

/// A forward cursor over rows with one row of look-ahead; a read error ends it and is kept.
pub struct Cursor<'s> {
    rows: Rows<'s>,
    ahead: Option<Row>,
    done: bool,
    hosts: Vec<Arc<str>>,
    error: Option<rusqlite::Error>,
}

impl<'s> Cursor<'s> {
    pub fn new(stmt: &'s mut rusqlite::Statement<'_>) -> rusqlite::Result<Cursor<'s>> {
        Ok(Cursor {
            rows: stmt.query([])?,
            ahead: None,
            done: false,
            hosts: Vec::new(),
            error: None,
        })
    }

    fn fill(&mut self) {
        if self.ahead.is_some() || self.done {
            return;
        }
        let next = match self.rows.next() {
            Ok(Some(r)) => read_row(r, &mut self.hosts).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match next {
            Ok(Some(row)) => self.ahead = Some(row),
            Ok(None) => self.done = true,
            Err(e) => {
                self.error = Some(e);
                self.done = true;
            }
        }
    }

    /// Takes the next row when `take` says so.
    pub fn next_if(&mut self, take: impl FnOnce(&Row) -> bool) -> Option<Row> {
        self.fill();
        if self.ahead.as_ref().is_some_and(take) {
            self.ahead.take()
        } else {
            None
        }
    }

    /// The end of the cursor: its read error, if any.
    pub fn finish(self) -> rusqlite::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Envelope ids that have a row in `conflicts`, ascending.
pub fn conflicting_envelopes(conn: &Connection) -> rusqlite::Result<Vec<u64>> {
    let mut stmt = conn.prepare("SELECT DISTINCT envelope_id FROM conflicts ORDER BY 1")?;
    let ids = stmt.query_map([], |r| r.get::<_, i64>(0).map(|v| v as u64))?;
    ids.collect()
}

/// Creates the run's temporary tables: `held` (findings), `hosts` (whose logs were read) and
/// `scope` (the files whose claims may be credited).
pub fn prepare(conn: &Connection, hosts: &[String], scope: &[u32]) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE held (envelope_id INTEGER NOT NULL, host TEXT NOT NULL, \
         core INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL, \
         finding TEXT NOT NULL, detail TEXT NOT NULL); \
         CREATE TEMP TABLE hosts (host TEXT PRIMARY KEY); \
         CREATE TEMP TABLE scope (ordinal INTEGER PRIMARY KEY);",
    )?;
    let mut add_host = conn.prepare("INSERT OR IGNORE INTO temp.hosts (host) VALUES (?1)")?;
    for h in hosts {
        add_host.execute([h])?;
    }
    let mut add_file = conn.prepare("INSERT OR IGNORE INTO temp.scope (ordinal) VALUES (?1)")?;
    for o in scope {
        add_file.execute([o])?;
    }
    Ok(())
}

/// Keeps a finding for the end of the run.
pub fn hold(
    conn: &Connection,
    f: &Finding,
    envelope: u64,
    at: LogPosition,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO temp.held (envelope_id, host, core, segment, offset, finding, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        envelope as i64,
        f.place.host,
        f.place.core,
        at.segment as i64,
        at.offset as i64,
        f.kind.label(),
        f.detail
    ])?;
    Ok(())
}

/// Claims and cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub claims: u64,
    pub cents: u64,
}

/// What the state changes of a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Rows moved from pending to held.
    pub held: Amount,
    /// Rows moved from pending to credited.
    pub credited: Amount,
}

fn amount(conn: &Connection, sql: &str) -> rusqlite::Result<Amount> {
    conn.query_row(sql, [], |r| {
        Ok(Amount {
            claims: r.get::<_, i64>(0)? as u64,
            cents: r.get::<_, i64>(1)? as u64,
        })
    })
}

/// The pending rows whose envelope has a finding.
const HELD_PENDING: &str =
    "state = 'pending' AND envelope_id IN (SELECT envelope_id FROM temp.held)";
/// The pending rows that passed: of a host whose logs were read, of a file in scope.
const PASSED_PENDING: &str = "state = 'pending' AND host IN (SELECT host FROM temp.hosts) \
    AND (envelope_id >> 32) IN (SELECT ordinal FROM temp.scope)";

/// The end of a run: findings into `holds`, their pending rows to `held`, then every other
/// pending row of the hosts read and files in scope to `credited`, the users' totals moved
/// with them. Inside the run's transaction.
pub fn apply(conn: &Connection, run: i64) -> rusqlite::Result<Applied> {
    conn.execute(
        "INSERT OR IGNORE INTO holds \
         (envelope_id, host, core, segment, offset, finding, detail, run) \
         SELECT envelope_id, host, core, segment, offset, finding, detail, ?1 FROM temp.held",
        [run],
    )?;
    let any_held: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM temp.held)", [], |r| r.get(0))?;
    let held = if any_held {
        move_state(conn, HELD_PENDING, "held_cents", "held")?
    } else {
        Amount::default()
    };
    let credited = move_state(conn, PASSED_PENDING, "credited_cents", "credited")?;
    Ok(Applied { held, credited })
}

/// Moves the pending rows matching `rows` to `state`, and their cents in `users` from
/// `pending_cents` to `column`.
fn move_state(
    conn: &Connection,
    rows: &str,
    column: &str,
    state: &str,
) -> rusqlite::Result<Amount> {
    let moved = amount(
        conn,
        &format!("SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM claims WHERE {rows}"),
    )?;
    conn.execute(
        &format!(
            "UPDATE users SET pending_cents = pending_cents - t.cents, \
             {column} = {column} + t.cents \
             FROM (SELECT uid, SUM(amount_cents) AS cents FROM claims WHERE {rows} \
             GROUP BY uid) AS t WHERE users.uid = t.uid"
        ),
        [],
    )?;
    conn.execute(
        &format!("UPDATE claims SET state = '{state}' WHERE {rows}"),
        [],
    )?;
    Ok(moved)
}

/// Claims and cents per (batch, state) over the whole ledger.
pub fn by_batch(conn: &Connection) -> rusqlite::Result<BTreeMap<(u16, String), Amount>> {
    let mut stmt = conn
        .prepare("SELECT batch_id, state, COUNT(*), SUM(amount_cents) FROM claims GROUP BY 1, 2")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, u16>(0)?, r.get::<_, String>(1)?),
            Amount {
                claims: r.get::<_, i64>(2)? as u64,
                cents: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    rows.collect()
}

/// Numbers the next run.
pub fn next_run(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(run), 0) + 1 FROM reconciliations",
        [],
        |r| r.get(0),
    )
}

/// What a run keeps of itself in `reconciliations`.
pub struct RunRow<'a> {
    pub run: i64,
    pub started_unix: i64,
    pub seconds: f64,
    pub consistent: bool,
    pub applied: Applied,
    pub findings: u64,
    pub report: &'a str,
}

pub fn record_run(conn: &Connection, r: &RunRow<'_>) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO reconciliations (run, started_unix, seconds, consistent, credited, \
         credited_cents, held, findings, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            r.run,
            r.started_unix,
            r.seconds,
            r.consistent,
            r.applied.credited.claims as i64,
            r.applied.credited.cents as i64,
            r.applied.held.claims as i64,
            r.findings as i64,
            r.report
        ],
    )?;
    Ok(())
}
