//! The money of a reconciliation report, per sponsor, batch and slot: what the plan put in,
//! what the ledger holds in each state, what was never issued, and what goes back to the
//! sponsor. Pure arithmetic over counts the passes gathered; no IO.

use std::collections::BTreeMap;

use serde::Serialize;

use super::book::Amount;
use crate::manifest::{BatchConfig, Manifest};

/// Money of one sponsor, batch or slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Money {
    /// What the plan and the tickets hold.
    pub planned: Amount,
    pub credited: Amount,
    pub pending: Amount,
    pub held: Amount,
    /// Never handed out by a shake (counted on the files of the hosts whose logs were read).
    pub unissued: Amount,
    /// Cents not claimed at all: planned minus credited, pending and held. Returned to the
    /// sponsor once the event is over.
    pub unclaimed_cents: u64,
}

impl Money {
    fn add_state(&mut self, state: &str, a: Amount) {
        let slot = match state {
            "credited" => &mut self.credited,
            "held" => &mut self.held,
            _ => &mut self.pending,
        };
        slot.claims += a.claims;
        slot.cents += a.cents;
    }

    fn add(&mut self, other: &Money) {
        for (mine, theirs) in [
            (&mut self.planned, other.planned),
            (&mut self.credited, other.credited),
            (&mut self.pending, other.pending),
            (&mut self.held, other.held),
            (&mut self.unissued, other.unissued),
        ] {
            mine.claims += theirs.claims;
            mine.cents += theirs.cents;
        }
    }

    fn settle_unclaimed(&mut self) {
        let claimed = self.credited.cents + self.pending.cents + self.held.cents;
        self.unclaimed_cents = self.planned.cents.saturating_sub(claimed);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SponsorMoney {
    pub merchant_id: u64,
    pub name: String,
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchMoney {
    pub batch_id: u16,
    pub merchant_id: u64,
    pub slot: String,
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotMoney {
    pub slot: String,
    #[serde(flatten)]
    pub money: Money,
}

/// The report's money section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub event: Money,
    pub sponsors: Vec<SponsorMoney>,
    pub batches: Vec<BatchMoney>,
    pub slots: Vec<SlotMoney>,
    /// Ledger rows whose batch id is not in batches.toml (each also a finding of its ticket).
    pub unknown_batch: Amount,
}

/// Builds the totals from the ledger's (batch, state) counts and the unissued counts.
pub fn totals(
    manifest: &Manifest,
    batches: &BatchConfig,
    by_state: &BTreeMap<(u16, String), Amount>,
    unissued: &BTreeMap<u16, Amount>,
) -> Totals {
    let mut out = Totals::default();
    let mut per_batch: BTreeMap<u16, Money> = BTreeMap::new();
    for b in &batches.batches {
        let m = per_batch.entry(b.id).or_default();
        m.planned = Amount {
            claims: b.envelopes,
            cents: b.amount_cents,
        };
        m.unissued = unissued.get(&b.id).copied().unwrap_or_default();
    }
    for ((batch, state), a) in by_state {
        match per_batch.get_mut(batch) {
            Some(m) => m.add_state(state, *a),
            None => {
                out.unknown_batch.claims += a.claims;
                out.unknown_batch.cents += a.cents;
            }
        }
    }
    let mut sponsors: BTreeMap<u64, Money> = BTreeMap::new();
    let mut slots: BTreeMap<&str, Money> = BTreeMap::new();
    for b in &batches.batches {
        let m = &per_batch[&b.id];
        sponsors.entry(b.merchant_id).or_default().add(m);
        slots.entry(b.slot.as_str()).or_default().add(m);
        out.event.add(m);
        let mut m = m.clone();
        m.settle_unclaimed();
        out.batches.push(BatchMoney {
            batch_id: b.id,
            merchant_id: b.merchant_id,
            slot: b.slot.clone(),
            money: m,
        });
    }
    out.event.settle_unclaimed();
    for merchant in &manifest.merchants {
        let mut money = sponsors.remove(&merchant.id).unwrap_or_default();
        money.settle_unclaimed();
        out.sponsors.push(SponsorMoney {
            merchant_id: merchant.id,
            name: merchant.name.clone(),
            money,
        });
    }
    for slot in &manifest.slots {
        let mut money = slots.remove(slot.name.as_str()).unwrap_or_default();
        money.settle_unclaimed();
        out.slots.push(SlotMoney {
            slot: slot.name.clone(),
            money,
        });
    }
    out
}
