//! Where settle records claims: the ledger database behind one interface, so the pass loop
//! ([`super::settle_pass`]) is the same for the embedded SQLite ledger ([`super::db`]) and for
//! PostgreSQL ([`super::pg`]). One call writes one batch of one log's claims and that log's
//! resume position in one transaction.

use crate::ledger::ClaimRecord;
use crate::store::LogPosition;

use super::db::{Ledger, Recorded, Totals};
use super::SettleError;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New claims recorded, and their cents.
    pub recorded: u64,
    pub cents: u64,
    /// Claims the ledger already had from the same position.
    pub again: u64,
    /// Claims of envelopes the ledger has from another position: held in `conflicts`.
    pub conflicts: u64,
    /// Of the recorded: big envelopes credited at once, and big ones held.
    pub credited: u64,
    pub held: u64,
}

pub trait Sink {
    /// Where reading the log of (`host`, `core`) resumes.
    fn position(&mut self, host: &str, core: u16) -> Result<LogPosition, SettleError>;

    /// Records `claims` (each with its position) read from the log of (`host`, `core`) and
    /// moves that log's position to `next`, all in one transaction: all or nothing.
    fn write_batch(
        &mut self,
        host: &str,
        core: u16,
        claims: &[(LogPosition, ClaimRecord)],
        next: LogPosition,
    ) -> Result<BatchOutcome, SettleError>;

    /// The money invariants over the whole ledger (docs/formats/ledger.md), and its totals.
    fn check(&mut self) -> Result<Totals, SettleError>;
}

impl Sink for Ledger {
    fn position(&mut self, host: &str, core: u16) -> Result<LogPosition, SettleError> {
        Ok(Ledger::position(self, host, core)?)
    }

    fn write_batch(
        &mut self,
        host: &str,
        core: u16,
        claims: &[(LogPosition, ClaimRecord)],
        next: LogPosition,
    ) -> Result<BatchOutcome, SettleError> {
        self.begin()?;
        let mut out = BatchOutcome::default();
        let mut write = || -> Result<(), SettleError> {
            for (at, c) in claims {
                let recorded = self.record(host, core, *at, c)?;
                if matches!(
                    recorded,
                    Recorded::New | Recorded::Credited | Recorded::Held
                ) {
                    out.recorded += 1;
                    out.cents += u64::from(c.amount_cents.get());
                }
                match recorded {
                    Recorded::New => {}
                    Recorded::Credited => out.credited += 1,
                    Recorded::Held => out.held += 1,
                    Recorded::Again => out.again += 1,
                    Recorded::Conflict => out.conflicts += 1,
                }
            }
            self.commit_at(host, core, next, claims.len() as u64)?;
            Ok(())
        };
        let result = write();
        if result.is_err() {
            self.rollback();
        }
        result.map(|()| out)
    }

    fn check(&mut self) -> Result<Totals, SettleError> {
        Ok(Ledger::check(self)?)
    }
}
