//! Streaming multi-sponsor interleave (R2): decides, envelope by envelope, which batch the next
//! record of a shard file comes from, so that consecutive envelopes come from different sponsors.
//!
//! Runs inside one generator thread per shard file. Memory is O(k) for k batches in the file,
//! time O(log k) per envelope (a segment tree of counts; majority checks are amortised O(1)),
//! and nothing is buffered, so the event size never shows in RSS.
//!
//! # Rule
//! Sequential sampling without replacement: with `c_j` envelopes of batch `j` left, the next one
//! is batch `j` with probability proportional to `c_j`, except that
//! 1. the batch just placed is left out of the draw (no two neighbours from one batch), and
//! 2. a batch holding a strict majority of what is left (`2·c_j > total`) is placed at once when
//!    it was not just placed: otherwise it could only be finished with neighbours of its own;
//! 3. when the batch just placed holds a strict majority, its envelopes are laid out in runs of
//!    nearly equal length (the ceiling of what it has left over the runs left), each run ended
//!    by exactly one envelope of another batch.
//!
//! When no batch starts with more than half plus one of the file, this never places two
//! envelopes of one batch side by side (rule 2 fires before a majority can become unavoidable,
//! and a batch just placed can never hold a majority). When one batch `j` does dominate,
//! repeats are unavoidable; rule 3 makes their number the minimum, `c_j - (others + 1)`, and
//! keeps every run at most `ceil(c_j / (others + 1))` long.
//! Without rule 1 this is exactly a uniformly random interleave; with it, it is a uniformly
//! random choice among the other sponsors weighted by what they have left.

use rand::Rng;

/// Up to this many batches per file, draws scan the counts linearly instead of walking the tree.
const FLAT_BATCHES_MAX: usize = 16;

/// Sampler over the batches of one shard file.
#[derive(Debug, Clone)]
pub struct Interleaver {
    /// Number of batches, k.
    batches: usize,
    /// Number of leaves (a power of two >= max(k, 2)).
    leaves: usize,
    /// Remaining counts: leaves start at `leaves`, `sum[1]` is the total. Internal nodes hold
    /// subtree sums only when `flat` is false.
    sum: Vec<u64>,
    /// With few batches a linear scan of the leaves beats a tree walk; internal nodes other
    /// than the root are then left unmaintained.
    flat: bool,
    /// The batch that held the most at the last scan of the leaves; the only possible majority
    /// while `2 * others_bound <= total`.
    candidate: usize,
    /// Upper bound on every other batch's count: their exact maximum at the last scan (counts
    /// only shrink, so it stays an upper bound). Majority checks are O(1) until the total
    /// falls to twice this bound, and only then is the O(k) scan repeated.
    others_bound: u64,
    last: Option<usize>,
    /// Length of the current run of `last`.
    run: u64,
}

impl Interleaver {
    pub fn new(counts: &[u64]) -> Interleaver {
        let leaves = counts.len().max(2).next_power_of_two();
        let mut sum = vec![0u64; 2 * leaves];
        sum[leaves..leaves + counts.len()].copy_from_slice(counts);
        for node in (1..leaves).rev() {
            sum[node] = sum[2 * node] + sum[2 * node + 1];
        }
        let mut interleaver = Interleaver {
            batches: counts.len(),
            leaves,
            sum,
            flat: counts.len() <= FLAT_BATCHES_MAX,
            candidate: 0,
            others_bound: 0,
            last: None,
            run: 0,
        };
        interleaver.scan();
        interleaver
    }

    /// Envelopes still to place.
    pub fn remaining(&self) -> u64 {
        self.sum[1]
    }

    /// Finds the largest batch and the exact largest count among the others.
    fn scan(&mut self) {
        let counts = &self.sum[self.leaves..];
        let (mut best, mut best_count, mut second) = (0, 0, 0);
        for (i, &c) in counts.iter().enumerate() {
            if c > best_count {
                second = best_count;
                best = i;
                best_count = c;
            } else if c > second {
                second = c;
            }
        }
        self.candidate = best;
        self.others_bound = second;
    }

    /// The batch holding a strict majority of what is left, if one does.
    #[inline]
    fn majority(&mut self, total: u64) -> Option<(usize, u64)> {
        if 2 * self.others_bound > total {
            self.scan();
        }
        let count = self.sum[self.leaves + self.candidate];
        (2 * count > total).then_some((self.candidate, count))
    }

    /// Index of the batch the next envelope comes from, or `None` when all are placed.
    #[inline]
    pub fn next_batch<R: Rng>(&mut self, rng: &mut R) -> Option<usize> {
        let total = self.sum[1];
        if total == 0 {
            return None;
        }
        let last_count = self.last.map_or(0, |l| self.sum[self.leaves + l]);
        let chosen = if let Some((majority, largest)) = self.majority(total) {
            let others = total - largest;
            if Some(majority) != self.last {
                majority
            } else if others > 0 && self.run >= (largest + self.run).div_ceil(others + 1) {
                // The dominant batch's current run has its fair share of what is left for the
                // remaining `others + 1` runs: end it with one envelope from another batch.
                self.find_excluding(rng.random_range(0..others), majority, largest)
            } else {
                majority
            }
        } else if last_count > 0 {
            // Draw among everything but the batch just placed, as if its count were zero.
            let last = self.last.unwrap_or(0);
            self.find_excluding(rng.random_range(0..total - last_count), last, last_count)
        } else {
            self.find(rng.random_range(0..total))
        };
        self.take_one(chosen);
        self.run = if self.last == Some(chosen) {
            self.run + 1
        } else {
            1
        };
        self.last = Some(chosen);
        Some(chosen)
    }

    /// Batch whose cumulative range contains `target` (which must be < total), counting batch
    /// `excluded` as empty when given.
    #[inline]
    fn find_flat(&self, mut target: u64, excluded: Option<usize>) -> usize {
        let counts = &self.sum[self.leaves..self.leaves + self.batches];
        for (i, &count) in counts.iter().enumerate() {
            let count = if Some(i) == excluded { 0 } else { count };
            if target < count {
                return i;
            }
            target -= count;
        }
        panic!("interleave drew beyond the remaining total");
    }

    /// Leaf whose cumulative range contains `target` (which must be < total).
    #[inline]
    fn find(&self, mut target: u64) -> usize {
        if self.flat {
            return self.find_flat(target, None);
        }
        let mut node = 1;
        while node < self.leaves {
            let left = self.sum[2 * node];
            if target < left {
                node *= 2;
            } else {
                target -= left;
                node = 2 * node + 1;
            }
        }
        node - self.leaves
    }

    /// Like [`Interleaver::find`] with leaf `excluded` (holding `excluded_count`) counted as
    /// empty: one descent, subtracting the excluded count from every subtree that holds it.
    #[inline]
    fn find_excluding(&self, mut target: u64, excluded: usize, excluded_count: u64) -> usize {
        if self.flat {
            return self.find_flat(target, Some(excluded));
        }
        let excluded_leaf = self.leaves + excluded;
        let mut node = 1;
        let mut level = self.leaves.trailing_zeros();
        while node < self.leaves {
            level -= 1;
            let left_child = 2 * node;
            let mut left = self.sum[left_child];
            // The excluded leaf sits below the left child when its path goes left here.
            if excluded_leaf >> level == left_child {
                left -= excluded_count;
            }
            if target < left {
                node = left_child;
            } else {
                target -= left;
                node = left_child + 1;
            }
        }
        node - self.leaves
    }

    #[inline]
    fn take_one(&mut self, index: usize) {
        let mut node = self.leaves + index;
        assert!(self.sum[node] > 0, "interleave took from an empty batch");
        if self.flat {
            self.sum[node] -= 1;
            self.sum[1] -= 1;
            return;
        }
        while node >= 1 {
            self.sum[node] -= 1;
            node /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn run(counts: &[u64], seed: u64) -> Vec<usize> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut s = Interleaver::new(counts);
        let mut out = Vec::new();
        while let Some(j) = s.next_batch(&mut rng) {
            out.push(j);
        }
        out
    }

    proptest! {
        #[test]
        fn places_every_envelope_once(counts in proptest::collection::vec(0u64..200, 1..40), seed: u64) {
            let order = run(&counts, seed);
            let mut seen = vec![0u64; counts.len()];
            for &j in &order {
                seen[j] += 1;
            }
            prop_assert_eq!(seen, counts);
        }

        #[test]
        fn no_neighbours_from_one_batch_when_possible(
            counts in proptest::collection::vec(1u64..100, 2..40),
            seed: u64,
        ) {
            let total: u64 = counts.iter().sum();
            let largest = *counts.iter().max().unwrap();
            prop_assume!(largest <= total - largest + 1);
            let order = run(&counts, seed);
            prop_assert!(order.windows(2).all(|w| w[0] != w[1]), "{:?}", order);
        }
    }

    /// (same-batch neighbours, longest run of one batch) of an order.
    fn repeats(order: &[usize]) -> (u64, u64) {
        let (mut same, mut run, mut longest) = (0, 0, 0);
        for (i, &j) in order.iter().enumerate() {
            if i > 0 && order[i - 1] == j {
                same += 1;
                run += 1;
            } else {
                run = 1;
            }
            longest = longest.max(run);
        }
        (same, longest)
    }

    proptest! {
        #[test]
        fn dominant_batch_gets_fewest_and_shortest_runs(
            counts in proptest::collection::vec(0u64..60, 1..30),
            dominant in 1u64..2000,
            seed: u64,
        ) {
            let mut counts = counts;
            counts.push(dominant);
            let total: u64 = counts.iter().sum();
            let others = total - dominant;
            prop_assume!(dominant > others + 1);
            let order = run(&counts, seed);
            let (same, longest) = repeats(&order);
            prop_assert_eq!(same, dominant - (others + 1), "fewest possible repeats");
            prop_assert!(longest <= dominant.div_ceil(others + 1), "longest run {}", longest);
        }
    }

    #[test]
    fn dominant_batch_is_spread_evenly() {
        let order = run(&[100, 3], 1);
        assert_eq!(order.len(), 103);
        assert_eq!(order.iter().filter(|&&j| j == 1).count(), 3);
        assert_eq!(repeats(&order), (96, 25));
    }

    #[test]
    fn spread_is_fair_between_equal_batches() {
        // With three equal batches every batch should lead the first position about a third of
        // the time.
        let mut first = [0u32; 3];
        for seed in 0..3000 {
            first[run(&[50, 50, 50], seed)[0]] += 1;
        }
        for f in first {
            assert!((800..1200).contains(&f), "{first:?}");
        }
    }
}
