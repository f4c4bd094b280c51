//! The order rules of a ticket file, checked record by record as `verify` reads it
//! (docs/formats/tickets.md):
//! - **keys fill greedily**: the generator seals records with one key until the next amount
//!   would take it over the cap, then with the next key id (next fit). So every key is one
//!   contiguous run, keys follow in id order, and a run ends only where the next amount does
//!   not fit. Given the amounts, the key of every record is determined: moving a record to a
//!   neighbouring key (re-sealing it, totals adjusted) breaks the rule at the boundary.
//! - **sponsors interleave** (no two envelopes of one sponsor side by side where avoidable): two neighbours come from one batch only as often as the
//!   file's mix forces it: `max(0, c - (n - c) - 1)` times for a file of `n` records whose
//!   largest batch has `c` of them.
//!
//! Pure bookkeeping over the valid records (a record that does not open or belongs elsewhere
//! is reported by the record checks, and the rules are not judged across it).

use crate::gen::format_cents;

/// Where the previous valid record left off.
#[derive(Debug, Clone, Copy)]
struct Previous {
    index: u64,
    key: u16,
    /// Cents sealed with `key` so far (over consecutive valid records).
    key_money: u64,
    batch: u16,
}

#[derive(Debug, Default)]
pub struct Order {
    cap: u64,
    previous: Option<Previous>,
    /// Each key of the file with the index of its first record, in order of first use.
    pub first_index: Vec<(u16, u64)>,
    /// Pairs of consecutive valid records of one batch.
    pub same_batch_pairs: u64,
}

impl Order {
    pub fn new(cap: u64) -> Order {
        Order {
            cap,
            ..Order::default()
        }
    }

    /// A valid record at `index`; what breaks the key rule there, if anything.
    pub fn record(&mut self, index: u64, key: u16, amount: u64, batch: u16) -> Option<String> {
        let previous = self.previous.filter(|p| p.index + 1 == index);
        let mut problem = None;
        let key_money = match previous {
            Some(p) if p.key == key => {
                if p.batch == batch {
                    self.same_batch_pairs += 1;
                }
                p.key_money + amount
            }
            Some(p) => {
                if p.batch == batch {
                    self.same_batch_pairs += 1;
                }
                problem = if key != p.key.wrapping_add(1) {
                    Some(format!(
                        "starts key {key} after key {}: keys follow one another in id order",
                        p.key
                    ))
                } else if p.key_money + amount <= self.cap {
                    Some(format!(
                        "is sealed with key {key}, but key {} (holding {}) had room for its {} \
                         under the cap of {}: the generator fills a key until the next amount \
                         does not fit, so this record belongs to key {} (re-sealed?)",
                        p.key,
                        format_cents(p.key_money),
                        format_cents(amount),
                        format_cents(self.cap),
                        p.key
                    ))
                } else {
                    None
                };
                amount
            }
            None => amount,
        };
        let new_key =
            previous.map_or(true, |p| p.key != key) && self.previous.map_or(true, |p| p.key != key);
        if new_key {
            if self.first_index.iter().any(|&(k, _)| k == key) {
                problem.get_or_insert_with(|| {
                    format!("uses key {key} again after other keys: a key seals one run")
                });
            } else {
                self.first_index.push((key, index));
            }
        }
        self.previous = Some(Previous {
            index,
            key,
            key_money,
            batch,
        });
        problem
    }

    /// After the last record: what breaks the interleave rule, given the file's records per
    /// batch.
    pub fn interleave_problem(&self, per_batch: impl Iterator<Item = u64>) -> Option<String> {
        let counts: Vec<u64> = per_batch.collect();
        let n: u64 = counts.iter().sum();
        let c = counts.iter().copied().max().unwrap_or(0);
        let forced = c.saturating_sub(n - c + 1);
        (self.same_batch_pairs > forced).then(|| {
            format!(
                "{} pairs of neighbouring records share a sponsor, where the file's mix forces \
                 {forced} (largest batch {c} of {n} records): records were reordered",
                self.same_batch_pairs
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_keys_pass_and_moved_records_fail() {
        // Cap 10: amounts 4 4 | 4 4 | 9 under keys 1 1 2 2 3.
        let amounts = [4, 4, 4, 4, 9];
        let keys = [1, 1, 2, 2, 3];
        let mut o = Order::new(10);
        for (i, (&a, &k)) in amounts.iter().zip(&keys).enumerate() {
            assert_eq!(o.record(i as u64, k, a, (i % 2) as u16 + 1), None);
        }
        assert_eq!(o.first_index, vec![(1, 0), (2, 2), (3, 4)]);
        // The last record of key 1 moved to key 2: key 1 had room for it.
        let mut o = Order::new(10);
        let keys = [1, 2, 2, 2, 3];
        let problems: Vec<_> = (0..5)
            .filter_map(|i| o.record(i, keys[i as usize], amounts[i as usize], 1))
            .collect();
        assert!(problems[0].contains("had room"), "{problems:?}");
        // A key used again, and keys out of order.
        let mut o = Order::new(10);
        assert_eq!(o.record(0, 1, 9, 1), None);
        assert_eq!(o.record(1, 2, 9, 2), None);
        assert!(o.record(2, 1, 9, 1).unwrap().contains("id order"));
        let mut o = Order::new(10);
        assert_eq!(o.record(0, 5, 9, 1), None);
        assert!(o.record(1, 7, 9, 2).unwrap().contains("id order"));
    }

    #[test]
    fn interleave_allows_only_forced_neighbours() {
        let mut o = Order::new(100);
        // 1 2 1 2 1: no pair, nothing forced.
        for (i, b) in [1, 2, 1, 2, 1].iter().enumerate() {
            o.record(i as u64, 1, 1, *b);
        }
        assert_eq!(o.interleave_problem([3, 2].into_iter()), None);
        // 1 1 2 2 1: two pairs where none is forced.
        let mut o = Order::new(100);
        for (i, b) in [1, 1, 2, 2, 1].iter().enumerate() {
            o.record(i as u64, 1, 1, *b);
        }
        assert!(o.interleave_problem([3, 2].into_iter()).is_some());
        // 1 1 2 1 1: batch 1 holds 4 of 5: two pairs are forced.
        let mut o = Order::new(100);
        for (i, b) in [1, 1, 2, 1, 1].iter().enumerate() {
            o.record(i as u64, 1, 1, *b);
        }
        assert_eq!(o.interleave_problem([4, 1].into_iter()), None);
    }
}
