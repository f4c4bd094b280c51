//! The ledger database of `hongbao settle` (docs/formats/ledger.md): SQLite through rusqlite
//! with its bundled library (a fresh machine needs nothing installed). One row per claimed
//! envelope, per-user totals, and each (host, core) log's resume position, written in the same
//! transaction as the rows it covers: a settle killed at any moment resumes where its last
//! commit ended, so every claim is recorded exactly once.
//!
//! Runs on the thread of the `settle` command, never in a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ledger::ClaimRecord;
use crate::store::LogPosition;

/// The `format` row of the `meta` table.
pub const LEDGER_FORMAT: &str = "hongbao-ledger-2";

/// How long a writer waits for another's transaction (a reconciliation holds the ledger for
/// its whole run) before giving up with an error.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1800);

/// No CHECK constraints: with one, SQLite journals every INSERT on its own, which cost 40% of
/// the rate (268 k against 412 k claims/s in bench/settle.rs). Amounts come from unsigned
/// fixed-width fields, and states are written by this module only.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    envelope_id INTEGER PRIMARY KEY,
    uid INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    claimed_unix INTEGER NOT NULL,
    issuing_core INTEGER NOT NULL,
    host TEXT NOT NULL,
    core INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    uid INTEGER PRIMARY KEY,
    claims INTEGER NOT NULL,
    pending_cents INTEGER NOT NULL,
    credited_cents INTEGER NOT NULL,
    held_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    host TEXT NOT NULL,
    core INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    claims INTEGER NOT NULL,
    PRIMARY KEY (host, core)
);
CREATE TABLE IF NOT EXISTS conflicts (
    envelope_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    claimed_unix INTEGER NOT NULL,
    issuing_core INTEGER NOT NULL,
    host TEXT NOT NULL,
    core INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (host, core, segment, offset)
);
CREATE TABLE IF NOT EXISTS big (
    envelope_id INTEGER PRIMARY KEY,
    amount_cents INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    envelope_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    core INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    finding TEXT NOT NULL,
    detail TEXT NOT NULL,
    run INTEGER NOT NULL,
    PRIMARY KEY (host, core, segment, offset, finding)
);
CREATE TABLE IF NOT EXISTS reconciliations (
    run INTEGER PRIMARY KEY,
    started_unix INTEGER NOT NULL,
    seconds REAL NOT NULL,
    consistent INTEGER NOT NULL,
    credited INTEGER NOT NULL,
    credited_cents INTEGER NOT NULL,
    held INTEGER NOT NULL,
    findings INTEGER NOT NULL,
    report TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database belongs to another event, variant or generation, or another format.
    #[error("{path}: {message}")]
    Foreign { path: PathBuf, message: String },
    /// A money invariant does not hold: nothing more is written.
    #[error("{path}: the ledger is inconsistent: {message}")]
    Inconsistent { path: PathBuf, message: String },
}

/// What the ledger is for: the `meta` rows besides the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerIdentity {
    pub event: String,
    pub variant: String,
    pub generation: String,
}

/// What became of one claim read from a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new row, pending.
    New,
    /// The same claim (same log position) is in the ledger already: read again after a resume
    /// from an older position.
    Again,
    /// Another claim of an envelope the ledger has from elsewhere: held in `conflicts`, not
    /// credited (reconciliation decides).
    Conflict,
    /// A new row of a preloaded big envelope whose claim matches its ticket: credited at once.
    Credited,
    /// A new row of a preloaded big envelope whose claim differs from its ticket: held.
    Held,
}

/// What the open transaction adds to one user's totals.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UserDelta {
    pub claims: u64,
    pub pending: u64,
    pub credited: u64,
    pub held: u64,
}

/// Totals over the whole ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub claims: u64,
    pub cents: u64,
    pub conflicts: u64,
}

/// An open ledger database.
pub struct Ledger {
    pub(super) path: PathBuf,
    pub(super) conn: Connection,
    /// Per-user totals of the open transaction, written at its commit in uid order
    /// (neighbouring rows of the users table, not random ones).
    pub(super) users: BTreeMap<u64, UserDelta>,
    pub(super) open: bool,
    /// Big envelopes are preloaded (`big` has rows): each new claim is looked up there.
    pub(super) has_big: bool,
}

/// A u64 as SQLite's INTEGER with the same 64 bits (docs/formats/ledger.md).
pub(super) fn int(v: u64) -> i64 {
    v as i64
}

impl Ledger {
    /// Opens (creating when absent) the ledger at `path` for `identity`; refuses a ledger of
    /// another event, variant or generation.
    pub fn open(path: &Path, identity: &LedgerIdentity) -> Result<Ledger, DbError> {
        let conn = Connection::open(path).map_err(sql(path))?;
        // WAL with full syncs: a commit is on the disk when it returns.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sql(path))?;
        // Settle and reconcile take turns at writing: each waits for the other's transaction.
        conn.busy_timeout(BUSY_WAIT).map_err(sql(path))?;
        conn.execute_batch(SCHEMA).map_err(sql(path))?;
        let ledger = Ledger {
            path: path.to_path_buf(),
            conn,
            users: BTreeMap::new(),
            open: false,
            has_big: false,
        };
        ledger.claim_identity(identity)?;
        let mut ledger = ledger;
        ledger.has_big = ledger
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM big)", [], |r| r.get(0))
            .map_err(sql(path))?;
        Ok(ledger)
    }

    fn claim_identity(&self, identity: &LedgerIdentity) -> Result<(), DbError> {
        let expected = [
            ("format", LEDGER_FORMAT),
            ("event", identity.event.as_str()),
            ("variant", identity.variant.as_str()),
            ("generation", identity.generation.as_str()),
        ];
        for (key, value) in expected {
            let found: Option<String> = self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(sql(&self.path))?;
            match found {
                None => {
                    self.conn
                        .execute(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                            [key, value],
                        )
                        .map_err(sql(&self.path))?;
                }
                Some(v) if v == value => {}
                Some(v) => {
                    return Err(DbError::Foreign {
                        path: self.path.clone(),
                        message: format!(
                            "this ledger's {key} is {v:?}, the data directory's is {value:?}"
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// Where reading the log of (`host`, `core`) resumes.
    pub fn position(&self, host: &str, core: u16) -> Result<LogPosition, DbError> {
        let found = self
            .conn
            .query_row(
                "SELECT segment, offset FROM positions WHERE host = ?1 AND core = ?2",
                params![host, core],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(sql(&self.path))?;
        Ok(found.map_or(LogPosition::default(), |(s, o)| LogPosition {
            segment: s as u64,
            offset: o as u64,
        }))
    }

    /// Starts a transaction (one per batch of claims).
    pub fn begin(&mut self) -> Result<(), DbError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sql(&self.path))?;
        self.open = true;
        Ok(())
    }

    /// Records one claim read at `at` in the log of (`host`, `core`).
    pub fn record(
        &mut self,
        host: &str,
        core: u16,
        at: LogPosition,
        c: &ClaimRecord,
    ) -> Result<Recorded, DbError> {
        debug_assert!(self.open);
        let big = if self.has_big {
            self.big_verdict(c)?
        } else {
            None
        };
        let (state, recorded) = match &big {
            None => ("pending", Recorded::New),
            Some(Ok(())) => ("credited", Recorded::Credited),
            Some(Err(_)) => ("held", Recorded::Held),
        };
        let inserted = self.insert_claim(
            &format!(
                "INSERT INTO claims (envelope_id, uid, amount_cents, batch_id, key_id, \
                 claimed_unix, issuing_core, host, core, segment, offset, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, '{state}') \
                 ON CONFLICT (envelope_id) DO NOTHING"
            ),
            host,
            core,
            at,
            c,
        )?;
        if inserted == 1 {
            let cents = u64::from(c.amount_cents.get());
            let u = self.users.entry(c.uid.get()).or_default();
            u.claims += 1;
            match recorded {
                Recorded::Credited => u.credited += cents,
                Recorded::Held => u.held += cents,
                _ => u.pending += cents,
            }
            if let Some(Err(detail)) = big {
                self.hold_big(host, core, at, c, &detail)?;
            }
            return Ok(recorded);
        }
        let same: bool = self
            .conn
            .prepare_cached(
                "SELECT host = ?2 AND core = ?3 AND segment = ?4 AND offset = ?5 \
                 FROM claims WHERE envelope_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        int(c.envelope_id.get()),
                        host,
                        core,
                        int(at.segment),
                        int(at.offset)
                    ],
                    |r| r.get(0),
                )
            })
            .map_err(sql(&self.path))?;
        if same {
            return Ok(Recorded::Again);
        }
        self.insert_claim(
            "INSERT OR IGNORE INTO conflicts (envelope_id, uid, amount_cents, batch_id, key_id, \
             claimed_unix, issuing_core, host, core, segment, offset) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            host,
            core,
            at,
            c,
        )?;
        Ok(Recorded::Conflict)
    }

    /// Runs `insert` (claims or conflicts) with a claim's eleven columns as ?1..?11; returns
    /// the rows inserted.
    fn insert_claim(
        &self,
        insert: &str,
        host: &str,
        core: u16,
        at: LogPosition,
        c: &ClaimRecord,
    ) -> Result<usize, DbError> {
        self.conn
            .prepare_cached(insert)
            .and_then(|mut s| {
                s.execute(params![
                    int(c.envelope_id.get()),
                    int(c.uid.get()),
                    c.amount_cents.get(),
                    c.batch_id.get(),
                    c.key_id.get(),
                    c.claimed_unix.get(),
                    c.issuing_core.get(),
                    host,
                    core,
                    int(at.segment),
                    int(at.offset),
                ])
            })
            .map_err(sql(&self.path))
    }

    /// Writes the user totals of the open transaction and the resume position `next` of
    /// (`host`, `core`), with `claims` more read from it, then commits: all or nothing.
    pub fn commit_at(
        &mut self,
        host: &str,
        core: u16,
        next: LogPosition,
        claims: u64,
    ) -> Result<(), DbError> {
        debug_assert!(self.open);
        {
            let mut upsert = self
                .conn
                .prepare_cached(
                    "INSERT INTO users (uid, claims, pending_cents, credited_cents, held_cents) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (uid) DO UPDATE SET \
                     claims = claims + excluded.claims, \
                     pending_cents = pending_cents + excluded.pending_cents, \
                     credited_cents = credited_cents + excluded.credited_cents, \
                     held_cents = held_cents + excluded.held_cents",
                )
                .map_err(sql(&self.path))?;
            for (&uid, d) in &self.users {
                upsert
                    .execute(params![
                        int(uid),
                        int(d.claims),
                        int(d.pending),
                        int(d.credited),
                        int(d.held)
                    ])
                    .map_err(sql(&self.path))?;
            }
        }
        self.users.clear();
        self.conn
            .prepare_cached(
                "INSERT INTO positions (host, core, segment, offset, claims) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (host, core) DO UPDATE SET \
                 segment = excluded.segment, offset = excluded.offset, \
                 claims = claims + excluded.claims",
            )
            .and_then(|mut s| {
                s.execute(params![
                    host,
                    core,
                    int(next.segment),
                    int(next.offset),
                    int(claims)
                ])
            })
            .map_err(sql(&self.path))?;
        self.conn.execute_batch("COMMIT").map_err(sql(&self.path))?;
        self.open = false;
        Ok(())
    }

    /// Commits the open transaction (reconciliation's state changes).
    pub fn commit(&mut self) -> Result<(), DbError> {
        self.conn.execute_batch("COMMIT").map_err(sql(&self.path))?;
        self.open = false;
        Ok(())
    }

    /// Abandons the open transaction (nothing of it is written).
    pub fn rollback(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.users.clear();
            self.open = false;
        }
    }

    /// The ledger's totals, after checking its money invariants: each user's count and
    /// pending, credited and held sums are those of the user's claim rows in each state, and
    /// the positions account for at least as many claims as there are rows.
    pub fn check(&self) -> Result<Totals, DbError> {
        check_ledger(&self.conn).map_err(|e| match e {
            Broken::Sql(source) => DbError::Sql {
                path: self.path.clone(),
                source,
            },
            Broken::Invariant(message) => DbError::Inconsistent {
                path: self.path.clone(),
                message,
            },
        })
    }

    /// The connection, for reconciliation's reads and its state changes (inside a
    /// transaction it opens with [`Ledger::begin`]).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Why [`check_ledger`] failed.
pub enum Broken {
    Sql(rusqlite::Error),
    Invariant(String),
}

/// The money invariants of a ledger (see [`Ledger::check`]), on any connection to it.
pub fn check_ledger(conn: &Connection) -> Result<Totals, Broken> {
    let q = |text: &str| -> Result<i64, Broken> {
        conn.query_row(text, [], |r| r.get(0)).map_err(Broken::Sql)
    };
    let claims = q("SELECT COUNT(*) FROM claims")?;
    let cents = q("SELECT COALESCE(SUM(amount_cents), 0) FROM claims")?;
    let user_claims = q("SELECT COALESCE(SUM(claims), 0) FROM users")?;
    let user_cents =
        q("SELECT COALESCE(SUM(pending_cents + credited_cents + held_cents), 0) FROM users")?;
    let wrong_users = q("SELECT COUNT(*) FROM users u LEFT JOIN \
         (SELECT uid, COUNT(*) AS n, \
          SUM(CASE WHEN state = 'pending' THEN amount_cents ELSE 0 END) AS pending, \
          SUM(CASE WHEN state = 'credited' THEN amount_cents ELSE 0 END) AS credited, \
          SUM(CASE WHEN state = 'held' THEN amount_cents ELSE 0 END) AS held \
          FROM claims GROUP BY uid) c ON c.uid = u.uid \
         WHERE u.claims != COALESCE(c.n, 0) \
         OR u.pending_cents != COALESCE(c.pending, 0) \
         OR u.credited_cents != COALESCE(c.credited, 0) \
         OR u.held_cents != COALESCE(c.held, 0)")?;
    let strange_states =
        q("SELECT COUNT(*) FROM claims WHERE state NOT IN ('pending', 'credited', 'held')")?;
    let counted = q("SELECT COALESCE(SUM(claims), 0) FROM positions")?;
    let conflicts = q("SELECT COUNT(*) FROM conflicts")?;
    if claims != user_claims || cents != user_cents || wrong_users != 0 {
        return Err(Broken::Invariant(format!(
            "{claims} claims of {cents} cents, but the users' totals say {user_claims} \
             claims of {user_cents} cents ({wrong_users} users differ)"
        )));
    }
    if strange_states != 0 {
        return Err(Broken::Invariant(format!(
            "{strange_states} claims are in a state that is not pending, credited or held"
        )));
    }
    if counted < claims {
        return Err(Broken::Invariant(format!(
            "{claims} claims, but the positions account for reading only {counted}"
        )));
    }
    Ok(Totals {
        claims: claims as u64,
        cents: cents as u64,
        conflicts: conflicts as u64,
    })
}

pub(super) fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |source| DbError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::little_endian::{U16, U32, U64};

    fn identity() -> LedgerIdentity {
        LedgerIdentity {
            event: "e".into(),
            variant: "A".into(),
            generation: "g".into(),
        }
    }

    fn claim(envelope: u64, uid: u64, cents: u32) -> ClaimRecord {
        ClaimRecord {
            envelope_id: U64::new(envelope),
            uid: U64::new(uid),
            amount_cents: U32::new(cents),
            batch_id: U16::new(1),
            key_id: U16::new(2),
            claimed_unix: U32::new(1_800_000_000),
            issuing_core: U16::new(0),
            reserved: U16::new(0),
        }
    }

    fn at(offset: u64) -> LogPosition {
        LogPosition { segment: 0, offset }
    }

    #[test]
    fn a_claim_is_recorded_once_and_a_second_claim_elsewhere_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut l = Ledger::open(&path, &identity()).unwrap();
        l.begin().unwrap();
        assert_eq!(
            l.record("h1", 0, at(64), &claim(5, 9, 100)).unwrap(),
            Recorded::New
        );
        assert_eq!(
            l.record("h1", 0, at(96), &claim(6, 9, 50)).unwrap(),
            Recorded::New
        );
        l.commit_at("h1", 0, at(128), 2).unwrap();
        l.begin().unwrap();
        assert_eq!(
            l.record("h1", 0, at(64), &claim(5, 9, 100)).unwrap(),
            Recorded::Again
        );
        let other = claim(5, 11, 100);
        assert_eq!(
            l.record("h2", 0, at(64), &other).unwrap(),
            Recorded::Conflict
        );
        l.commit_at("h2", 0, at(96), 1).unwrap();
        let t = l.check().unwrap();
        assert_eq!((t.claims, t.cents, t.conflicts), (2, 150, 1));
        assert_eq!(l.position("h1", 0).unwrap(), at(128));
        assert_eq!(l.position("h1", 1).unwrap(), LogPosition::default());
    }

    #[test]
    fn a_rolled_back_batch_leaves_nothing_and_the_position_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut l = Ledger::open(&path, &identity()).unwrap();
        l.begin().unwrap();
        l.record("h1", 0, at(64), &claim(5, 9, 100)).unwrap();
        l.rollback();
        assert_eq!(l.check().unwrap(), Totals::default());
        assert_eq!(l.position("h1", 0).unwrap(), LogPosition::default());
    }

    #[test]
    fn a_ledger_of_another_generation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        drop(Ledger::open(&path, &identity()).unwrap());
        let mut other = identity();
        other.generation = "h".into();
        let e = Ledger::open(&path, &other).err().unwrap();
        assert!(e.to_string().contains("generation"), "{e}");
    }

    #[test]
    fn an_edited_total_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut l = Ledger::open(&path, &identity()).unwrap();
        l.begin().unwrap();
        l.record("h1", 0, at(64), &claim(5, 9, 100)).unwrap();
        l.commit_at("h1", 0, at(96), 1).unwrap();
        l.conn
            .execute("UPDATE claims SET amount_cents = 10000", [])
            .unwrap();
        let e = l.check().err().unwrap();
        assert!(e.to_string().contains("inconsistent"), "{e}");
    }
}
