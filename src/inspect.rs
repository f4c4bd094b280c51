//! `hongbao inspect`: what one ticket file holds, decoded with the keyring: its header, its
//! first records, and per-batch amount statistics and sponsor-neighbour statistics, so an
//! operator can see the random split and the interleave (R2) on real output.
//!
//! Streams the file with [`ShardReader`] on the calling thread; memory is one HdrHistogram per
//! batch in the file.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::ticket::shard::ShardReader;
use crate::ticket::{Keyring, ShardError, Ticket};

/// Amount statistics of one batch within a file.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub batch_id: u16,
    pub envelopes: u64,
    pub amount_cents: u64,
    pub min_cents: u64,
    pub max_cents: u64,
    /// (percentile, value in cents) for p1, p10, p50, p90, p99.
    pub percentiles: Vec<(f64, u64)>,
}

#[derive(Debug, Clone)]
pub struct Inspection {
    pub header: crate::ticket::ShardHeader,
    /// The first records, decoded (or the reason one did not open).
    pub first: Vec<(u64, Result<Ticket, String>)>,
    pub batches: Vec<BatchStats>,
    /// Records whose neighbour before them is from the same batch.
    pub same_batch_neighbours: u64,
    pub longest_same_batch_run: u64,
    pub records_not_opened: u64,
    pub body_crc_ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Shard(#[from] ShardError),
}

const PERCENTILES: [f64; 5] = [1.0, 10.0, 50.0, 90.0, 99.0];

/// Reads the whole file once, decrypting every record.
pub fn inspect(path: &Path, keyring: &Keyring, first: usize) -> Result<Inspection, InspectError> {
    let mut reader = ShardReader::open(path)?;
    let header = *reader.header();
    // Per batch: amounts, envelopes, money, exact min and max.
    type Stats = (Histogram<u64>, u64, u64, u64, u64);
    let mut histograms: BTreeMap<u16, Stats> = BTreeMap::new();
    let mut decoded = Vec::new();
    let (mut same, mut run, mut longest, mut not_opened) = (0u64, 0u64, 0u64, 0u64);
    let mut previous: Option<u16> = None;
    let mut index = 0u64;
    let mut buffer = Vec::new();
    while reader.next_chunk(&mut buffer, 4096)? {
        for record in &buffer {
            let opened = record.open(keyring);
            if decoded.len() < first {
                decoded.push((index, opened.map_err(|e| e.to_string())));
            }
            index += 1;
            let Ok(ticket) = opened else {
                not_opened += 1;
                previous = None;
                continue;
            };
            let entry = histograms.entry(ticket.batch_id).or_insert_with(|| {
                // Amounts are u32 cents; percentiles to 3 significant digits (min and max are
                // kept exactly beside them).
                let h = Histogram::new_with_bounds(1, u32::MAX as u64, 3).expect("static bounds");
                (h, 0, 0, u64::MAX, 0)
            });
            let amount = ticket.amount_cents as u64;
            entry.0.saturating_record(amount.max(1));
            entry.1 += 1;
            entry.2 += amount;
            entry.3 = entry.3.min(amount);
            entry.4 = entry.4.max(amount);
            if previous == Some(ticket.batch_id) {
                same += 1;
                run += 1;
            } else {
                run = 1;
            }
            longest = longest.max(run);
            previous = Some(ticket.batch_id);
        }
    }
    let batches = histograms
        .into_iter()
        .map(
            |(batch_id, (h, envelopes, amount_cents, min, max))| BatchStats {
                batch_id,
                envelopes,
                amount_cents,
                min_cents: min,
                max_cents: max,
                // Within the exact bounds (a bucket's highest equivalent value can pass them).
                percentiles: PERCENTILES
                    .iter()
                    .map(|&p| (p, h.value_at_percentile(p).clamp(min, max)))
                    .collect(),
            },
        )
        .collect();
    Ok(Inspection {
        header,
        first: decoded,
        batches,
        same_batch_neighbours: same,
        longest_same_batch_run: longest,
        records_not_opened: not_opened,
        body_crc_ok: reader.body_crc() == header.body_crc32c.get(),
    })
}
