//! `settle --preload`: the big-envelope list (docs/formats/big.md) loaded into the ledger's
//! `big` table before the event, and the check of each new claim against it: a claim of a
//! listed envelope whose amount, batch and key are the listed ones is credited at once (no
//! wait for reconciliation); one that differs is held. Runs inside settle's transactions.

use rusqlite::{params, OptionalExtension};

use super::db::{int, sql, DbError, Ledger};
use crate::big::BigList;
use crate::ledger::ClaimRecord;
use crate::store::LogPosition;

impl Ledger {
    /// Loads `list` (of this ledger's generation) into `big`; returns the envelopes added.
    pub fn preload(&mut self, list: &BigList) -> Result<u64, DbError> {
        let generation: String = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })
            .map_err(sql(&self.path))?;
        let listed = hex::encode(list.generation);
        if listed != generation {
            return Err(DbError::Foreign {
                path: self.path.clone(),
                message: format!(
                    "the big-envelope list is of generation {listed}, this ledger of {generation}"
                ),
            });
        }
        let tx = self.conn.transaction().map_err(sql(&self.path))?;
        let mut added = 0;
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR IGNORE INTO big (envelope_id, amount_cents, batch_id, key_id) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql(&self.path))?;
            for e in &list.entries {
                added += insert
                    .execute(params![
                        int(e.envelope_id.get()),
                        e.amount_cents.get(),
                        e.batch_id.get(),
                        e.key_id.get()
                    ])
                    .map_err(sql(&self.path))? as u64;
            }
        }
        tx.commit().map_err(sql(&self.path))?;
        self.has_big = self.has_big || !list.entries.is_empty();
        Ok(added)
    }

    /// None when the claim's envelope is not a big one; Ok when it is and the claim matches
    /// the list; Err(why) when it differs.
    pub(super) fn big_verdict(
        &self,
        c: &ClaimRecord,
    ) -> Result<Option<Result<(), String>>, DbError> {
        let listed: Option<(u32, u16, u16)> = self
            .conn
            .prepare_cached("SELECT amount_cents, batch_id, key_id FROM big WHERE envelope_id = ?1")
            .and_then(|mut s| {
                s.query_row([int(c.envelope_id.get())], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(sql(&self.path))?;
        let claimed = (c.amount_cents.get(), c.batch_id.get(), c.key_id.get());
        Ok(listed.map(|l| {
            if l == claimed {
                Ok(())
            } else {
                Err(format!(
                    "big envelope: the claim says {} cents, batch {}, key {}; the preloaded \
                     ticket says {} cents, batch {}, key {}",
                    claimed.0, claimed.1, claimed.2, l.0, l.1, l.2
                ))
            }
        }))
    }

    /// Keeps why a big envelope's claim was held (run 0: held by settle, not reconcile).
    pub(super) fn hold_big(
        &self,
        host: &str,
        core: u16,
        at: LogPosition,
        c: &ClaimRecord,
        detail: &str,
    ) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO holds (envelope_id, host, core, segment, offset, finding, \
                 detail, run) VALUES (?1, ?2, ?3, ?4, ?5, 'ticket_mismatch', ?6, 0)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    int(c.envelope_id.get()),
                    host,
                    core,
                    int(at.segment),
                    int(at.offset),
                    detail
                ])
            })
            .map_err(sql(&self.path))?;
        Ok(())
    }
}
