//! The appinfo memory of stored sends (R18): which (sender, appinfo, kind) was stored at which
//! seq of the sender's stream, for the dedupe window. Owned by one core's IM engine
//! ([`super::engine::ImCore`]), for the senders homed on that core; no I/O.
//!
//! Compact on purpose: at tens of thousands of sends per second a day of sends is billions of
//! entries. An entry is a 64-bit hash of the key and the seq (16 bytes in the map, 24 with the
//! sender in the expiry queue); the key itself is not kept, because the message at that seq of the sender's
//! stream carries it. A lookup whose hash matches is confirmed by the caller against that
//! stream entry, so a hash collision can never answer a new send as a duplicate; the rare
//! second key of a colliding hash goes to a small side list. The hash is keyed per process
//! (clients cannot make collisions on purpose), and the index is rebuilt from the log at
//! start.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use foldhash::{HashMap, HashMapExt};

/// What an entry is keyed by: sender, appinfo, entry kind (a receipt and a withdrawal derive
/// their appinfo from the message they refer to).
pub type SendKey = (u64, u128, u8);

pub struct DoneIndex<S = foldhash::quality::RandomState> {
    hasher: S,
    /// Key hash -> seq in the sender's stream.
    map: HashMap<u64, u64>,
    /// Keys whose hash was taken by another key: (key, seq).
    overflow: Vec<(SendKey, u64)>,
    /// (key hash, sender, seq) in insertion order, for expiry.
    order: VecDeque<(u64, u64, u64)>,
    /// (second, entries of `order` stored in it), oldest first; an entry older than the
    /// newest second counts in the newest (remembered a little longer, never shorter).
    marks: VecDeque<(u64, u32)>,
}

impl<S: BuildHasher + Default> Default for DoneIndex<S> {
    fn default() -> DoneIndex<S> {
        DoneIndex {
            hasher: S::default(),
            map: HashMap::new(),
            overflow: Vec::new(),
            order: VecDeque::new(),
            marks: VecDeque::new(),
        }
    }
}

impl<S: BuildHasher> DoneIndex<S> {
    fn hash(&self, key: &SendKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Send time (ms) of the oldest entry remembered, to the second.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.marks.front().map(|&(s, _)| s * 1000)
    }

    /// Where `key` was stored, if remembered: `at(seq)` looks at the entry at `seq` of the
    /// key's sender and gives it back only if it is that key (which rules out hash
    /// collisions).
    pub fn get<T>(&self, key: &SendKey, at: impl Fn(u64) -> Option<T>) -> Option<T> {
        let h = self.hash(key);
        let seq = *self.map.get(&h)?;
        if let Some(found) = at(seq) {
            return Some(found);
        }
        let &(_, seq) = self.overflow.iter().find(|(k, _)| k == key)?;
        at(seq)
    }

    /// Remembers that `key`, sent at `sent_ms`, was stored at `seq`. The caller checked that
    /// it is not remembered already.
    pub fn insert(&mut self, key: SendKey, seq: u64, sent_ms: u64) {
        let h = self.hash(&key);
        match self.map.entry(h) {
            // Another key with the same hash: keep both.
            std::collections::hash_map::Entry::Occupied(_) => self.overflow.push((key, seq)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(seq);
            }
        }
        self.order.push_back((h, key.0, seq));
        let sec = sent_ms / 1000;
        match self.marks.back_mut() {
            Some((last, n)) if *last >= sec => *n += 1,
            _ => self.marks.push_back((sec, 1)),
        }
    }

    /// Forgets entries sent before `cutoff_ms` (to the second). Returns how many.
    pub fn expire(&mut self, cutoff_ms: u64) -> usize {
        let mut forgotten = 0;
        while let Some(&(sec, n)) = self.marks.front() {
            if sec.saturating_add(1) * 1000 > cutoff_ms {
                break;
            }
            self.marks.pop_front();
            for _ in 0..n {
                let (h, sender, seq) = self.order.pop_front().expect("marks count order entries");
                self.forget(h, sender, seq);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Forgets the entry of `sender`'s stream at `seq` (which identifies the key exactly): from
    /// the side list if it is there, else from the map.
    fn forget(&mut self, h: u64, sender: u64, seq: u64) {
        if let Some(i) = self
            .overflow
            .iter()
            .position(|&(k, s)| k.0 == sender && s == seq)
        {
            self.overflow.swap_remove(i);
            return;
        }
        if self.map.get(&h) == Some(&seq) {
            self.map.remove(&h);
            // A colliding key waiting in the side list takes the slot.
            if let Some(i) = self
                .overflow
                .iter()
                .position(|(k, _)| self.hasher.hash_one(k) == h)
            {
                let (_, s) = self.overflow.swap_remove(i);
                self.map.insert(h, s);
            }
        }
    }

    /// Heap bytes the index holds (capacity, not length), for the memory gauge.
    pub fn bytes(&self) -> usize {
        self.map.capacity() * 17
            + self.order.capacity() * 24
            + self.marks.capacity() * 16
            + self.overflow.capacity() * std::mem::size_of::<(SendKey, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as StdMap;

    /// A stand-in for the streams: (sender, seq) -> key stored there.
    struct Streams(StdMap<(u64, u64), SendKey>);

    impl Streams {
        fn is(&self, key: SendKey) -> impl Fn(u64) -> Option<u64> + '_ {
            move |seq| (self.0.get(&(key.0, seq)) == Some(&key)).then_some(seq)
        }
    }

    #[test]
    fn remembers_confirms_and_expires_by_send_time() {
        let mut d: DoneIndex = DoneIndex::default();
        let mut s = Streams(StdMap::new());
        for i in 0..1000u64 {
            let key = (i % 7, u128::from(i) << 64 | 5, 1);
            s.0.insert((key.0, i + 1), key);
            d.insert(key, i + 1, 10_000 + i * 10);
        }
        assert_eq!(d.len(), 1000);
        let key = (3, u128::from(500u64) << 64 | 5, 1);
        assert_eq!(d.get(&key, s.is(key)), Some(501));
        // Same appinfo, other kind or sender: not remembered.
        let other = (3, key.1, 2);
        assert_eq!(d.get(&other, s.is(other)), None);
        let other = (4, key.1, 1);
        assert_eq!(d.get(&other, s.is(other)), None);
        // Sent at 10,000 + i*10 ms: everything before 15,000 ms (i < 500) goes.
        assert_eq!(d.expire(15_000), 500);
        assert_eq!(d.get(&key, s.is(key)), Some(501));
        let early = (0, u128::from(497u64) << 64 | 5, 1);
        assert_eq!(d.get(&early, s.is(early)), None);
        assert_eq!(d.oldest_ms(), Some(15_000));
        assert_eq!(d.expire(u64::MAX), 500);
        assert!(d.is_empty());
    }

    #[test]
    fn out_of_order_send_times_are_kept_at_least_as_long() {
        let mut d: DoneIndex = DoneIndex::default();
        let s = Streams(StdMap::from([((1, 1), (1, 1, 1)), ((1, 2), (1, 2, 1))]));
        d.insert((1, 1, 1), 1, 50_000);
        // A send parked long ago, stored now: counts with the newer second.
        d.insert((1, 2, 1), 2, 20_000);
        assert_eq!(d.expire(40_000), 0);
        assert_eq!(d.get(&(1, 2, 1), s.is((1, 2, 1))), Some(2));
        assert_eq!(d.expire(51_000), 2);
    }

    /// A hasher under which every key collides.
    #[derive(Default)]
    struct Constant;
    impl std::hash::Hasher for Constant {
        fn finish(&self) -> u64 {
            42
        }
        fn write(&mut self, _: &[u8]) {}
    }
    type Colliding = DoneIndex<std::hash::BuildHasherDefault<Constant>>;

    #[test]
    fn colliding_hashes_never_answer_the_wrong_key_and_expire_in_order() {
        let mut d = Colliding::default();
        // Different senders, some at the same seq.
        let keys: Vec<(SendKey, u64)> = (0..50u64)
            .map(|i| ((i % 5, i as u128, 1), i / 5 + 1))
            .collect();
        let mut s = Streams(StdMap::new());
        for (i, &(k, seq)) in keys.iter().enumerate() {
            s.0.insert((k.0, seq), k);
            d.insert(k, seq, 1000 * i as u64);
        }
        for &(k, seq) in &keys {
            assert_eq!(d.get(&k, s.is(k)), Some(seq), "{k:?}");
        }
        let stranger = (1, 999, 1);
        assert_eq!(d.get(&stranger, s.is(stranger)), None);
        // Forget them oldest first; the rest stay findable each step.
        for i in 0..keys.len() {
            assert_eq!(d.expire(1000 * (i as u64 + 1)), 1);
            for &(k, seq) in &keys[i + 1..] {
                assert_eq!(d.get(&k, s.is(k)), Some(seq), "after {i}: {k:?}");
            }
            // A forgotten key may still be found through a colliding key's seq only if that
            // seq holds this very key: never a wrong answer.
            let (k, seq) = keys[i];
            assert!(d.get(&k, s.is(k)).map_or(true, |x| x == seq));
        }
        assert!(d.is_empty() && d.map.is_empty() && d.overflow.is_empty());
    }
}
