//! Streaming random split of a money amount into envelopes (R2): exact sum, every amount within
//! `[min, max]`, O(1) time and memory per envelope, so a billion envelopes need no buffer.
//!
//! Runs inside one generator thread per shard file.
//!
//! # Distribution
//! With `n` envelopes and `B` cents left, the mean of what is left is `B / n`. The next amount is
//! drawn uniformly from the widest interval centred on that mean that stays inside
//! `[min, max]`, i.e. `mean ± min(mean - min, max - mean)` (the WeChat "double mean" rule,
//! extended with an upper bound), with the fractional cent of the mean resolved at random so the
//! expectation is exact. The draw is then clamped to the interval that keeps the rest
//! satisfiable, `[max(min, B - (n-1)·max), min(max, B - (n-1)·min)]`, which also pins the last
//! envelope to exactly what is left. Every amount therefore has expectation `B / n` whatever
//! its position (the remaining mean is a martingale), amounts are spread roughly uniformly over
//! `[min, 2·mean - min]` when `max` allows it, and the sum is exact by construction.

use rand::Rng;

/// State of one split: what is left to hand out.
#[derive(Debug, Clone)]
pub struct Splitter {
    remaining_cents: u64,
    remaining_count: u64,
    min_cents: u64,
    max_cents: u64,
}

impl Splitter {
    /// A split of `amount_cents` into `count` envelopes each within `[min_cents, max_cents]`.
    ///
    /// Panics when that is unsatisfiable: callers get these numbers from a validated
    /// allocation, and handing out money that cannot add up is a bug to stop on.
    pub fn new(amount_cents: u64, count: u64, min_cents: u64, max_cents: u64) -> Splitter {
        assert!(min_cents >= 1 && min_cents <= max_cents, "bad bounds");
        assert!(
            count as u128 * min_cents as u128 <= amount_cents as u128
                && amount_cents as u128 <= count as u128 * max_cents as u128,
            "unsatisfiable split: {amount_cents} cents into {count} envelopes of [{min_cents}, {max_cents}]"
        );
        Splitter {
            remaining_cents: amount_cents,
            remaining_count: count,
            min_cents,
            max_cents,
        }
    }

    pub fn remaining_count(&self) -> u64 {
        self.remaining_count
    }

    pub fn remaining_cents(&self) -> u64 {
        self.remaining_cents
    }

    /// The next envelope's amount, or `None` when every envelope has been handed out.
    #[inline]
    pub fn next_amount<R: Rng>(&mut self, rng: &mut R) -> Option<u64> {
        let n = self.remaining_count;
        if n == 0 {
            return None;
        }
        let left = self.remaining_cents;
        let (min, max) = (self.min_cents, self.max_cents);
        let amount = if n == 1 {
            left
        } else {
            let mean = left / n;
            let fraction = left % n;
            let span = (mean - min).min(max - mean);
            let mut amount = mean - span + rng.random_range(0..=2 * span);
            if fraction != 0 && rng.random_range(0..n) < fraction {
                amount += 1;
            }
            // Keep what is left satisfiable; u128 because (n - 1) * max may exceed u64.
            let others = (n - 1) as u128;
            let low = (left as u128)
                .saturating_sub(others * max as u128)
                .max(min as u128) as u64;
            let high = (left as u128 - others * min as u128).min(max as u128) as u64;
            amount.clamp(low, high)
        };
        // Money invariant, always checked: every envelope is within its batch bounds.
        assert!(
            amount >= min && amount <= max && amount <= left,
            "split produced {amount} outside [{min}, {max}] with {left} left"
        );
        self.remaining_cents = left - amount;
        self.remaining_count = n - 1;
        if self.remaining_count == 0 {
            assert_eq!(
                self.remaining_cents, 0,
                "split finished with cents left over"
            );
        }
        Some(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn split_all(amount: u64, count: u64, min: u64, max: u64, seed: u64) -> Vec<u64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut s = Splitter::new(amount, count, min, max);
        let mut out = Vec::new();
        while let Some(a) = s.next_amount(&mut rng) {
            out.push(a);
        }
        out
    }

    proptest! {
        #[test]
        fn exact_sum_and_bounds(
            count in 1u64..2000,
            min in 1u64..1000,
            width in 0u64..5000,
            fill in 0.0f64..=1.0,
            seed: u64,
        ) {
            let max = min + width;
            let lo = count * min;
            let hi = count * max;
            let amount = lo + ((hi - lo) as f64 * fill) as u64;
            let amounts = split_all(amount, count, min, max, seed);
            prop_assert_eq!(amounts.len() as u64, count);
            prop_assert_eq!(amounts.iter().sum::<u64>(), amount);
            prop_assert!(amounts.iter().all(|&a| a >= min && a <= max));
        }

        #[test]
        fn huge_counts_do_not_overflow(seed: u64) {
            let count = u32::MAX as u64;
            let max = u32::MAX as u64;
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let amount = count * max;
            let mut s = Splitter::new(amount, count, 1, max);
            for _ in 0..1000 {
                let a = s.next_amount(&mut rng).unwrap();
                prop_assert!(a >= 1 && a <= max);
            }
        }
    }

    #[test]
    fn reproducible_for_a_seed() {
        assert_eq!(
            split_all(100_000, 1000, 1, 500, 7),
            split_all(100_000, 1000, 1, 500, 7)
        );
        assert_ne!(
            split_all(100_000, 1000, 1, 500, 7),
            split_all(100_000, 1000, 1, 500, 8)
        );
    }

    #[test]
    fn mean_is_flat_over_positions() {
        // Expectation of every position is B / n: compare the first and last tenth over many runs.
        let (count, amount) = (100u64, 100 * 1000u64);
        let (mut first, mut last) = (0u64, 0u64);
        for seed in 0..2000 {
            let a = split_all(amount, count, 1, 5000, seed);
            first += a[..10].iter().sum::<u64>();
            last += a[90..].iter().sum::<u64>();
        }
        let expected = 2000 * 10 * 1000;
        for got in [first, last] {
            let error = (got as f64 - expected as f64).abs() / expected as f64;
            assert!(error < 0.05, "positional mean off by {error}");
        }
    }

    #[test]
    #[should_panic(expected = "unsatisfiable split")]
    fn refuses_unsatisfiable() {
        Splitter::new(10, 100, 1, 5);
    }
}
