//! The messages a core keeps for the hot entries of its streams: one slot per message per
//! delivery record, shared by every entry of that record that holds the message, counted by
//! those entries. Owned by each core's engine ([`super::engine::ImCore`]), on that core's
//! thread; no I/O.
//!
//! Why not an `Arc` in every entry: a message to a 10,000-member group is one entry in each
//! member's stream. As `(Arc<Message>, ColdRef)` an entry is 16 bytes and costs an atomic
//! increment (and, when it goes, an atomic decrement) on the message's count; as a [`Kept`]
//! it is 8 bytes, the count is raised once per delivery by the number of entries, and the
//! record's position is stored once instead of in every entry. The streams of a flooded big
//! group grow by half as much memory, so the core spends half as long faulting in new pages
//! (32% of the server's time in the last rounds of the isolation benchmark,
//! docs/BENCHMARKS.md).
//!
//! Slots are numbered in the order they were added and never renumbered: a [`Kept`] is the
//! number, so it cannot come to mean another message. Freed slots leave the table from the
//! front (entries leave their streams oldest first, by retention and cooling, so the slots
//! freed are mostly the oldest); a freed slot behind a live one waits, empty, for it. The
//! table is held in [`Entries`] chunks, so it neither keeps a doubled buffer's spare half
//! while it grows nor its peak size once its slots are freed.
//!
//! The price: a message now costs a slot (20 bytes) on each core per record that carries it.
//! Against 8 bytes saved per entry, that is a gain from the third entry on; a single chat
//! (two entries, two records: the sender's SENT and the recipient's DELIVERY) costs 24 bytes
//! more than with an `Arc` per entry (docs/BENCHMARKS.md).

use super::cold::ColdRef;
use super::entries::Entries;
use super::model::MessageRef;

/// A hot stream entry: the number of the slot holding its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept(u64);

impl Kept {
    /// No slot: a placeholder that no entry holds (reading it is a bug, and panics).
    pub const NONE: Kept = Kept(u64::MAX);

    /// The slot's number (tests).
    #[cfg(test)]
    pub fn number(self) -> u64 {
        self.0
    }
}

// What the module is for: an entry of a stream is one word.
const _: () = assert!(std::mem::size_of::<Kept>() == 8);

/// See the module docs. Slot `first + i` is `slots[i]` (the message, None when the entry is
/// read back from its record like a cold one, as an old entry that recovery found among newer
/// ones, or when the slot is free; and where the record lies) with `refs[i]` entries holding
/// it (0: free). Two sequences, so a slot is 20 bytes, not 24.
#[derive(Debug, Default)]
pub struct KeptMessages {
    slots: Entries<(Option<MessageRef>, ColdRef)>,
    refs: Entries<u32>,
    /// Number of `slots[0]`.
    first: u64,
    /// Slots not free.
    live: usize,
}

impl KeptMessages {
    /// A new slot for `msg` (None: read from `at`) held by `refs` entries (at least one).
    pub fn add(&mut self, msg: Option<MessageRef>, at: ColdRef, refs: u32) -> Kept {
        assert!(refs > 0, "a kept message is held by at least one entry");
        let k = Kept(self.first + self.slots.len() as u64);
        self.slots.push((msg, at));
        self.refs.push(refs);
        self.live += 1;
        k
    }

    /// Where slot `k` is, if it is held.
    fn index(&self, k: Kept) -> Option<usize> {
        let i = usize::try_from(k.0.checked_sub(self.first)?).ok()?;
        (self.refs.get(i).is_some_and(|&r| r > 0)).then_some(i)
    }

    fn held_at(&self, k: Kept) -> usize {
        match self.index(k) {
            Some(i) => i,
            None => panic!("kept message {} is not held", k.0),
        }
    }

    /// One more entry holds `k`.
    pub fn hold(&mut self, k: Kept) {
        let i = self.held_at(k);
        let r = self.refs.get_mut(i).expect("held");
        *r = r.checked_add(1).expect("fewer than 2^32 entries per slot");
    }

    /// An entry holding `k` went; the slot is freed with the last one.
    pub fn release(&mut self, k: Kept) {
        let i = self.held_at(k);
        let r = self.refs.get_mut(i).expect("held");
        *r -= 1;
        if *r > 0 {
            return;
        }
        self.slots.get_mut(i).expect("held").0 = None;
        self.live -= 1;
        if i == 0 {
            let free = self.refs.iter().take_while(|&&r| r == 0).count();
            self.refs.drop_front(free);
            self.slots.drop_front(free);
            self.first += free as u64;
        }
    }

    /// The message of `k` (None: read it from its record) and where its record lies.
    pub fn get(&self, k: Kept) -> (Option<&MessageRef>, ColdRef) {
        let (msg, at) = &self.slots[self.held_at(k)];
        (msg.as_ref(), *at)
    }

    /// Slots held.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots in the table, free ones behind live ones included.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Every held slot and its count (tests).
    #[cfg(test)]
    pub fn held(&self) -> impl Iterator<Item = (Kept, u32)> + '_ {
        (self.first..)
            .zip(self.refs.iter())
            .filter(|(_, &r)| r > 0)
            .map(|(i, &r)| (Kept(i), r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::model::{Class, EntryKind, Message, MsgId, Target};
    use crate::store::LogPosition;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn msg(seq: u64) -> MessageRef {
        Arc::new(Message {
            id: MsgId { sender: 1, seq },
            kind: EntryKind::Message,
            refer: None,
            appinfo: u128::from(seq),
            to: Target::User(2),
            class: Class::Chat,
            sent_ms: seq,
            body: Box::new([]),
        })
    }

    fn at(offset: u64) -> ColdRef {
        ColdRef::new(0, LogPosition { segment: 1, offset })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u32),
        Hold(usize),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (1u32..4).prop_map(Op::Add),
            1 => any::<usize>().prop_map(Op::Hold),
            3 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Against a model (per slot number: message, position, holders): every held slot
        /// reads back what was added, the counts agree, and the table holds no slot before
        /// the oldest held one.
        #[test]
        fn behaves_like_counted_slots(ops in proptest::collection::vec(op(), 0..400)) {
            let mut t = KeptMessages::default();
            let mut model: Vec<(Kept, u64, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Add(refs) => {
                        let n = model.len() as u64;
                        let k = t.add(Some(msg(n)), at(n), refs);
                        model.push((k, n, refs));
                    }
                    Op::Hold(i) | Op::Release(i) if model.iter().all(|m| m.2 == 0) => {
                        let _ = i;
                    }
                    Op::Hold(i) => {
                        let held: Vec<usize> =
                            (0..model.len()).filter(|&j| model[j].2 > 0).collect();
                        let j = held[i % held.len()];
                        t.hold(model[j].0);
                        model[j].2 += 1;
                    }
                    Op::Release(i) => {
                        let held: Vec<usize> =
                            (0..model.len()).filter(|&j| model[j].2 > 0).collect();
                        let j = held[i % held.len()];
                        t.release(model[j].0);
                        model[j].2 -= 1;
                    }
                }
                for &(k, n, refs) in &model {
                    if refs > 0 {
                        let (m, a) = t.get(k);
                        prop_assert_eq!(m.map(|m| m.id.seq), Some(n));
                        prop_assert_eq!(a, at(n));
                    }
                }
                prop_assert_eq!(t.live(), model.iter().filter(|m| m.2 > 0).count());
                let oldest = model.iter().position(|m| m.2 > 0).unwrap_or(model.len());
                prop_assert_eq!(t.slots(), model.len() - oldest);
            }
        }
    }

    #[test]
    fn a_freed_number_is_never_reused() {
        let mut t = KeptMessages::default();
        let a = t.add(Some(msg(1)), at(1), 1);
        t.release(a);
        assert_eq!((t.live(), t.slots()), (0, 0));
        let b = t.add(Some(msg(2)), at(2), 1);
        assert_ne!(a, b);
        assert_eq!(t.get(b).0.map(|m| m.id.seq), Some(2));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.get(a)));
        assert!(
            caught.is_err(),
            "a freed slot must not read as another message"
        );
    }

    #[test]
    fn a_free_slot_behind_a_held_one_waits_and_reads_as_not_held() {
        let mut t = KeptMessages::default();
        let a = t.add(Some(msg(1)), at(1), 1);
        let b = t.add(None, at(2), 2);
        t.release(b);
        t.release(b);
        assert_eq!((t.live(), t.slots()), (1, 2));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.hold(b)));
        assert!(caught.is_err());
        t.release(a);
        assert_eq!((t.live(), t.slots()), (0, 0));
    }
}
