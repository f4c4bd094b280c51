//! The ledger in PostgreSQL (`hongbao settle --db postgres://...`), for events whose hosts
//! settle into one shared database. The same tables and invariants as the embedded SQLite
//! ledger (docs/formats/ledger.md); each batch is one transaction: the claims arrive by binary
//! `COPY` into a temporary table, then a few set-based statements insert the new ones, add them
//! to the users' totals, keep second claims of an envelope in `conflicts`, and move the log's
//! resume position.
//!
//! Uses the synchronous `postgres` client on the thread of the `settle` command (its own
//! process, never a server's).

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, NoTls};

use super::db::{LedgerIdentity, Totals, LEDGER_FORMAT};
use super::sink::{BatchOutcome, Sink};
use super::SettleError;
use crate::ledger::ClaimRecord;
use crate::store::LogPosition;

/// PostgreSQL's schema: the SQLite ledger's, in PostgreSQL's types (`offset` is a reserved
/// word there, so it is quoted).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    envelope_id BIGINT PRIMARY KEY, uid BIGINT NOT NULL, amount_cents BIGINT NOT NULL,
    batch_id INTEGER NOT NULL, key_id INTEGER NOT NULL, claimed_unix BIGINT NOT NULL,
    issuing_core INTEGER NOT NULL, host TEXT NOT NULL, core INTEGER NOT NULL,
    segment BIGINT NOT NULL, "offset" BIGINT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    uid BIGINT PRIMARY KEY, claims BIGINT NOT NULL, pending_cents BIGINT NOT NULL,
    credited_cents BIGINT NOT NULL, held_cents BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    host TEXT NOT NULL, core INTEGER NOT NULL, segment BIGINT NOT NULL,
    "offset" BIGINT NOT NULL, claims BIGINT NOT NULL, PRIMARY KEY (host, core));
CREATE TABLE IF NOT EXISTS conflicts (
    envelope_id BIGINT NOT NULL, uid BIGINT NOT NULL, amount_cents BIGINT NOT NULL,
    batch_id INTEGER NOT NULL, key_id INTEGER NOT NULL, claimed_unix BIGINT NOT NULL,
    issuing_core INTEGER NOT NULL, host TEXT NOT NULL, core INTEGER NOT NULL,
    segment BIGINT NOT NULL, "offset" BIGINT NOT NULL,
    PRIMARY KEY (host, core, segment, "offset"));
"#;

/// The claims of one batch, as they arrive by COPY.
const INCOMING: &str = r#"
CREATE TEMP TABLE IF NOT EXISTS incoming (
    envelope_id BIGINT, uid BIGINT, amount_cents BIGINT, batch_id INTEGER, key_id INTEGER,
    claimed_unix BIGINT, issuing_core INTEGER, host TEXT, core INTEGER, segment BIGINT,
    "offset" BIGINT) ON COMMIT DELETE ROWS;
"#;

const INCOMING_TYPES: [Type; 11] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::INT4,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT8,
];

/// New claims into `claims`, their cents into `users`; answers (count, cents) of the new.
const INSERT_NEW: &str = r#"
WITH new AS (
    INSERT INTO claims SELECT *, 'pending' FROM incoming ORDER BY segment, "offset"
    ON CONFLICT (envelope_id) DO NOTHING RETURNING uid, amount_cents),
totals AS (
    INSERT INTO users (uid, claims, pending_cents, credited_cents, held_cents)
    SELECT uid, COUNT(*), SUM(amount_cents), 0, 0 FROM new GROUP BY uid ORDER BY uid
    ON CONFLICT (uid) DO UPDATE SET claims = users.claims + excluded.claims,
        pending_cents = users.pending_cents + excluded.pending_cents)
SELECT COUNT(*), COALESCE(SUM(amount_cents), 0)::BIGINT FROM new
"#;

/// Claims of envelopes `claims` has from another position, into `conflicts`; answers how many
/// of the batch are such.
const HOLD_CONFLICTS: &str = r#"
WITH other AS (
    SELECT i.* FROM incoming i JOIN claims c ON c.envelope_id = i.envelope_id
    WHERE (c.host, c.core, c.segment, c."offset") <> (i.host, i.core, i.segment, i."offset")),
kept AS (INSERT INTO conflicts SELECT * FROM other ON CONFLICT DO NOTHING)
SELECT COUNT(*) FROM other
"#;

const MOVE_POSITION: &str = r#"
INSERT INTO positions (host, core, segment, "offset", claims) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (host, core) DO UPDATE SET segment = excluded.segment,
    "offset" = excluded."offset", claims = positions.claims + excluded.claims
"#;

/// A ledger in a PostgreSQL database.
pub struct PgLedger {
    client: Client,
    url: String,
}

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// An error with the server's own message (the client's Display says only "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => e.to_string(),
    }
}

/// The URL without its password, for messages.
pub fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl PgLedger {
    /// Connects, creates the tables when absent, and claims the ledger for `identity`
    /// (refusing one of another event, variant or generation).
    pub fn open(url: &str, identity: &LedgerIdentity) -> Result<PgLedger, SettleError> {
        let client = Client::connect(url, NoTls)
            .map_err(|e| SettleError::Pg(format!("{}: {}", shown(url), describe(&e))))?;
        let mut ledger = PgLedger {
            client,
            url: shown(url),
        };
        ledger.batch(SCHEMA)?;
        ledger.batch(INCOMING)?;
        ledger.claim_identity(identity)?;
        Ok(ledger)
    }

    fn err(&self, e: postgres::Error) -> SettleError {
        SettleError::Pg(format!("{}: {}", self.url, describe(&e)))
    }

    fn batch(&mut self, sql: &str) -> Result<(), SettleError> {
        let r = self.client.batch_execute(sql);
        r.map_err(|e| self.err(e))
    }

    fn claim_identity(&mut self, identity: &LedgerIdentity) -> Result<(), SettleError> {
        let expected = [
            ("format", LEDGER_FORMAT),
            ("event", identity.event.as_str()),
            ("variant", identity.variant.as_str()),
            ("generation", identity.generation.as_str()),
        ];
        for (key, value) in expected {
            // Inserted when absent (the first settle of the ledger), then read back.
            let found: String = {
                let r = self.client.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &value],
                );
                r.map_err(|e| self.err(e))?;
                let r = self
                    .client
                    .query_one("SELECT value FROM meta WHERE key = $1", &[&key]);
                r.map_err(|e| self.err(e))?.get(0)
            };
            if found != value {
                return Err(SettleError::Pg(format!(
                    "{}: this ledger's {key} is {found:?}, the data directory's is {value:?}",
                    self.url
                )));
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        host: &str,
        core: u16,
        claims: &[(LogPosition, ClaimRecord)],
        next: LogPosition,
    ) -> Result<BatchOutcome, postgres::Error> {
        let mut tx = self.client.transaction()?;
        {
            let sink = tx.copy_in("COPY incoming FROM STDIN (FORMAT binary)")?;
            let mut w = BinaryCopyInWriter::new(sink, &INCOMING_TYPES);
            let core = i32::from(core);
            for (at, c) in claims {
                w.write(&[
                    &(c.envelope_id.get() as i64),
                    &(c.uid.get() as i64),
                    &i64::from(c.amount_cents.get()),
                    &i32::from(c.batch_id.get()),
                    &i32::from(c.key_id.get()),
                    &i64::from(c.claimed_unix.get()),
                    &i32::from(c.issuing_core.get()),
                    &host,
                    &core,
                    &(at.segment as i64),
                    &(at.offset as i64),
                ])?;
            }
            w.finish()?;
        }
        let new = tx.query_one(INSERT_NEW, &[])?;
        let recorded = new.get::<_, i64>(0) as u64;
        let cents = new.get::<_, i64>(1) as u64;
        // Claims not inserted are read again or second claims (rare): only then the join.
        let conflicts = if recorded < claims.len() as u64 {
            tx.query_one(HOLD_CONFLICTS, &[])?.get::<_, i64>(0) as u64
        } else {
            0
        };
        tx.execute(
            MOVE_POSITION,
            &[
                &host,
                &i32::from(core),
                &(next.segment as i64),
                &(next.offset as i64),
                &(claims.len() as i64),
            ],
        )?;
        tx.commit()?;
        let n = claims.len() as u64;
        Ok(BatchOutcome {
            recorded,
            cents,
            again: n.saturating_sub(recorded + conflicts),
            conflicts,
            credited: 0,
            held: 0,
        })
    }
}

impl Sink for PgLedger {
    fn position(&mut self, host: &str, core: u16) -> Result<LogPosition, SettleError> {
        let r = self.client.query_opt(
            r#"SELECT segment, "offset" FROM positions WHERE host = $1 AND core = $2"#,
            &[&host, &i32::from(core)],
        );
        let row = r.map_err(|e| self.err(e))?;
        Ok(row.map_or(LogPosition::default(), |r| LogPosition {
            segment: r.get::<_, i64>(0) as u64,
            offset: r.get::<_, i64>(1) as u64,
        }))
    }

    fn write_batch(
        &mut self,
        host: &str,
        core: u16,
        claims: &[(LogPosition, ClaimRecord)],
        next: LogPosition,
    ) -> Result<BatchOutcome, SettleError> {
        let r = self.write(host, core, claims, next);
        r.map_err(|e| self.err(e))
    }

    fn check(&mut self) -> Result<Totals, SettleError> {
        let r = self.client.query_one(CHECK, &[]);
        let row = r.map_err(|e| self.err(e))?;
        let v = |i: usize| row.get::<_, i64>(i);
        let (claims, cents, user_claims, user_cents, wrong_users, strange, counted, conflicts) =
            (v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7));
        let broken = |message: String| {
            Err(SettleError::Pg(format!(
                "{}: the ledger is inconsistent: {message}",
                self.url
            )))
        };
        if claims != user_claims || cents != user_cents || wrong_users != 0 {
            return broken(format!(
                "{claims} claims of {cents} cents, but the users' totals say {user_claims} \
                 claims of {user_cents} cents ({wrong_users} users differ)"
            ));
        }
        if strange != 0 {
            return broken(format!(
                "{strange} claims are in a state that is not pending, credited or held"
            ));
        }
        if counted < claims {
            return broken(format!(
                "{claims} claims, but the positions account for reading only {counted}"
            ));
        }
        Ok(Totals {
            claims: claims as u64,
            cents: cents as u64,
            conflicts: conflicts as u64,
        })
    }
}

/// The invariants of docs/formats/ledger.md in one query.
const CHECK: &str = r#"
SELECT
  (SELECT COUNT(*) FROM claims),
  (SELECT COALESCE(SUM(amount_cents), 0)::BIGINT FROM claims),
  (SELECT COALESCE(SUM(claims), 0)::BIGINT FROM users),
  (SELECT COALESCE(SUM(pending_cents + credited_cents + held_cents), 0)::BIGINT FROM users),
  (SELECT COUNT(*) FROM users u LEFT JOIN (
      SELECT uid, COUNT(*) AS n,
        SUM(CASE WHEN state = 'pending' THEN amount_cents ELSE 0 END) AS pending,
        SUM(CASE WHEN state = 'credited' THEN amount_cents ELSE 0 END) AS credited,
        SUM(CASE WHEN state = 'held' THEN amount_cents ELSE 0 END) AS held
      FROM claims GROUP BY uid) c ON c.uid = u.uid
    WHERE u.claims <> COALESCE(c.n, 0) OR u.pending_cents <> COALESCE(c.pending, 0)
      OR u.credited_cents <> COALESCE(c.credited, 0) OR u.held_cents <> COALESCE(c.held, 0)),
  (SELECT COUNT(*) FROM claims WHERE state NOT IN ('pending', 'credited', 'held')),
  (SELECT COALESCE(SUM(claims), 0)::BIGINT FROM positions),
  (SELECT COUNT(*) FROM conflicts)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown("postgres://hb:secret@127.0.0.1:5432/ledger"),
            "postgres://hb@127.0.0.1:5432/ledger"
        );
        assert_eq!(shown("postgres://127.0.0.1/x"), "postgres://127.0.0.1/x");
        assert!(is_postgres("postgresql://x/y"));
        assert!(!is_postgres("ledger.sqlite"));
    }
}
