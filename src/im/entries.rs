//! The entries of one user's stream in memory: a sequence that grows at the back, is trimmed
//! at the front (retention) and is read by position, stored in chunks so that it never moves
//! as a whole. Owned by the stream's home core (`engine::ImCore`), on that core's thread;
//! the core's table of kept messages ([`super::kept`]) is held the same way.
//!
//! Why not a `Vec`: a group message appends one entry to each member's stream, so the streams
//! of a big group's members have the same length and double their vectors at the same
//! moment. At 8,192 entries that is 10,000 copies of 64 KiB in one commit cycle: a 120-200 ms
//! stall of the whole core in the isolation benchmark (docs/BENCHMARKS.md). Here only the
//! first chunk grows by doubling (a stream of a few messages stays small); beyond it new
//! chunks of [`CHUNK`] entries are allocated full-sized and nothing already stored is copied.
//! Trimming drops whole chunks, or shifts at most one chunk's entries.
//!
//! The first chunk ends at a length between `CHUNK / 2` and `CHUNK` that depends on the
//! stream's key ([`Entries::staggered`]): streams that grow in lockstep (a big group's
//! members) then take their next chunks at different messages, a few dozen per message for a
//! 10,000-member group, instead of all 10,000 (and their page faults) in one delivery.

use std::collections::VecDeque;

/// Entries per chunk (8 bytes each: 4 KiB).
pub const CHUNK: usize = 512;

/// See the module docs. The chunks in order are `full` then `last`; every chunk but the first
/// and the last holds exactly `CHUNK` entries, and only `last` may be empty (then all are).
/// The last chunk is kept inline: an append touches the stream and its chunk, nothing else
/// (a group delivery appends to 10,000 streams: one more cache miss each is a millisecond).
#[derive(Debug, Clone)]
pub struct Entries<T> {
    full: VecDeque<Vec<T>>,
    last: Vec<T>,
    len: usize,
    /// Where the first chunk ends while it is the only one (module docs).
    first_max: u16,
}

impl<T> Default for Entries<T> {
    fn default() -> Entries<T> {
        Entries::new()
    }
}

impl<T> Entries<T> {
    pub fn new() -> Entries<T> {
        Entries {
            full: VecDeque::new(),
            last: Vec::new(),
            len: 0,
            first_max: CHUNK as u16,
        }
    }

    /// Empty, with the first chunk's end chosen from `key` (module docs).
    pub fn staggered(key: u64) -> Entries<T> {
        let mix = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize;
        Entries {
            first_max: (CHUNK / 2 + mix % (CHUNK / 2)) as u16,
            ..Entries::new()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the last chunk ends: the first chunk's own end while it is the only one.
    fn last_max(&self) -> usize {
        if self.full.is_empty() {
            self.first_max as usize
        } else {
            CHUNK
        }
    }

    #[inline]
    pub fn push(&mut self, value: T) {
        // Room in the last chunk: a store (a big group's delivery makes one per member).
        if self.last.len() < self.last_max().min(self.last.capacity()) {
            self.last.push(value);
            self.len += 1;
        } else {
            self.push_slow(value);
        }
    }

    /// Pushes `values` in order (a merged delivery gives each member several entries).
    #[inline]
    pub fn extend_from_slice(&mut self, values: &[T])
    where
        T: Copy,
    {
        if self.last.len() + values.len() <= self.last_max().min(self.last.capacity()) {
            self.last.extend_from_slice(values);
            self.len += values.len();
        } else {
            for &v in values {
                self.push(v);
            }
        }
    }

    /// [`Entries::push`] when the last chunk must grow or a new one begin.
    #[cold]
    #[inline(never)]
    fn push_slow(&mut self, value: T) {
        let only = self.full.is_empty();
        if self.last.len() >= self.last_max() {
            if only {
                // Give back what doubling reserved past the end (a copy of at most one chunk,
                // once per stream).
                self.last.shrink_to_fit();
            }
            // Later chunks are born full-sized.
            let done = std::mem::replace(&mut self.last, Vec::with_capacity(CHUNK));
            self.full.push_back(done);
        }
        // The only chunk grows like a vector up to its end.
        self.last.push(value);
        self.len += 1;
    }

    /// Where entry `index` is: the chunk (`full.len()` for `last`) and the place in it.
    fn locate(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len {
            return None;
        }
        let Some(first) = self.full.front() else {
            return Some((0, index));
        };
        if index < first.len() {
            return Some((0, index));
        }
        let j = index - first.len();
        Some(((1 + j / CHUNK).min(self.full.len()), j % CHUNK))
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        let (k, i) = self.locate(index)?;
        self.full.get(k).unwrap_or(&self.last).get(i)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        let (k, i) = self.locate(index)?;
        match self.full.get_mut(k) {
            Some(chunk) => chunk.get_mut(i),
            None => self.last.get_mut(i),
        }
    }

    /// Drops the first `n` entries (all of them if `n` is larger).
    pub fn drop_front(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let first = match self.full.front_mut() {
                Some(f) => f,
                None => {
                    self.last.drain(..n);
                    return;
                }
            };
            if n >= first.len() {
                n -= first.len();
                self.full.pop_front();
            } else {
                first.drain(..n);
                n = 0;
            }
        }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.full.iter().flatten().chain(self.last.iter())
    }

    /// The chunks in order (tests).
    #[cfg(test)]
    fn chunks(&self) -> Vec<&Vec<T>> {
        self.full
            .iter()
            .chain(std::iter::once(&self.last))
            .filter(|c| !c.is_empty())
            .collect()
    }
}

impl<T> FromIterator<T> for Entries<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Entries<T> {
        let mut e = Entries::new();
        for v in iter {
            e.push(v);
        }
        e
    }
}

impl<T> std::ops::Index<usize> for Entries<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        match self.get(index) {
            Some(v) => v,
            None => panic!("entry {index} of {}", self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Extend(Vec<u32>),
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => any::<u32>().prop_map(Op::Push),
            2 => proptest::collection::vec(any::<u32>(), 0..40).prop_map(Op::Extend),
            1 => (0usize..3 * CHUNK).prop_map(Op::Drop),
        ]
    }

    proptest! {
        /// Any sequence of pushes and front trims reads back exactly as a plain vector would.
        #[test]
        fn behaves_like_a_vector(key: u64, ops in proptest::collection::vec(op(), 0..4000)) {
            let mut e = Entries::staggered(key);
            let mut v: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(x) => {
                        e.push(x);
                        v.push(x);
                    }
                    Op::Extend(xs) => {
                        e.extend_from_slice(&xs);
                        v.extend_from_slice(&xs);
                    }
                    Op::Drop(n) => {
                        e.drop_front(n);
                        v.drain(..n.min(v.len()));
                    }
                }
                prop_assert_eq!(e.len(), v.len());
            }
            prop_assert!(e.iter().eq(v.iter()));
            for (i, x) in v.iter().enumerate() {
                prop_assert_eq!(e.get(i), Some(x));
            }
            for (i, x) in v.iter_mut().enumerate() {
                *x = x.wrapping_add(1);
                let y = e.get_mut(i).expect("in range");
                *y = y.wrapping_add(1);
            }
            prop_assert!(e.iter().eq(v.iter()));
            prop_assert_eq!(e.get_mut(v.len()), None);
            prop_assert_eq!(e.get(v.len()), None);
            // The invariant the indexing relies on.
            let chunks = e.chunks();
            let n = chunks.len();
            prop_assert!(e.full.iter().all(|c| !c.is_empty()));
            for (k, c) in chunks.iter().enumerate() {
                if k > 0 && k + 1 < n {
                    prop_assert_eq!(c.len(), CHUNK);
                }
            }
        }
    }

    #[test]
    fn streams_in_lockstep_take_new_chunks_at_different_lengths() {
        let ends: std::collections::HashSet<u16> = (0..1000u64)
            .map(|k| Entries::<u8>::staggered(k).first_max)
            .collect();
        assert!(ends.len() > 200, "{} distinct ends", ends.len());
        assert!(ends
            .iter()
            .all(|&m| (CHUNK / 2..CHUNK).contains(&(m as usize))));
        let mut e = Entries::staggered(7);
        let end = e.first_max as usize;
        for i in 0..=end {
            e.push(i);
        }
        let chunks = e.chunks();
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].len(), chunks[0].capacity()), (end, end));
    }

    #[test]
    fn a_long_stream_is_never_copied_whole() {
        let mut e = Entries::new();
        for i in 0..10 * CHUNK {
            e.push(i);
        }
        // Full chunks after the first, each allocated once at its final size.
        assert_eq!(e.chunks().len(), 10);
        assert!(e.chunks().iter().skip(1).all(|c| c.capacity() == CHUNK));
        let at = e.chunks()[3].as_ptr();
        for i in 0..5 * CHUNK {
            e.push(i);
        }
        e.drop_front(2 * CHUNK + 7);
        assert_eq!(e.chunks()[1].as_ptr(), at, "stored entries did not move");
        assert_eq!(e[0], 2 * CHUNK + 7);
        assert_eq!(e.len(), 13 * CHUNK - 7);
    }
}
