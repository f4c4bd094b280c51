//! The amounts of one ticket file, in record order, and the batch each comes from: what the
//! generator draws from the event's seed (the interleave picks the batch, the batch's split
//! gives the amount; docs/ARCHITECTURE.md). `gen` seals them; `verify` draws them again from
//! the seed kept in the keyring and compares every record, so that any change to an amount
//! or a sponsor shows, even one that keeps every total (money moved between two envelopes).
//!
//! Pure and deterministic: the same plan, seed and file give the same draws on any machine.
//! Runs on the thread that writes or checks the file.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::plan::shuffle::Interleaver;
use crate::plan::split::Splitter;
use crate::plan::ShardPlan;

/// The random stream of a file: its own seed, derived from the master seed and its ordinal.
pub fn shard_seed(master: u64, ordinal: u32) -> u64 {
    master ^ (ordinal as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One file's draws; an iterator of `(part, amount_cents)` where `part` indexes the file's
/// `ShardPlan::parts` (its batch is `parts[part].batch_id`).
pub struct Draws {
    rng: Xoshiro256PlusPlus,
    splitters: Vec<Splitter>,
    interleaver: Interleaver,
}

impl Draws {
    pub fn new(shard: &ShardPlan, master_seed: u64) -> Draws {
        let counts: Vec<u64> = shard.parts.iter().map(|p| p.count).collect();
        Draws {
            rng: Xoshiro256PlusPlus::seed_from_u64(shard_seed(master_seed, shard.ordinal)),
            splitters: shard
                .parts
                .iter()
                .map(|p| Splitter::new(p.amount_cents, p.count, p.min_cents, p.max_cents))
                .collect(),
            interleaver: Interleaver::new(&counts),
        }
    }

    /// Every part fully drawn, to the last envelope and cent.
    pub fn exhausted(&self) -> bool {
        self.splitters
            .iter()
            .all(|s| (s.remaining_count(), s.remaining_cents()) == (0, 0))
    }
}

impl Iterator for Draws {
    type Item = (usize, u64);

    fn next(&mut self) -> Option<(usize, u64)> {
        let part = self.interleaver.next_batch(&mut self.rng)?;
        let amount = self.splitters[part]
            .next_amount(&mut self.rng)
            .expect("interleave and split agree on counts");
        Some((part, amount))
    }
}
