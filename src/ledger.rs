//! The money state of one ticket shard (issue once, claim once), as a sans-IO state
//! machine: which tickets may be issued (the issuing cursor, advanced only through durable
//! reservation records) and which are claimed (a bitmap, rebuilt from claim records).
//!
//! Owned by the core that owns the shard; fed log records at recovery and driven by shakes,
//! opens and commit completions afterwards. Records go through the core's log
//! ([`crate::store`]); this module only says what to append and what may be answered.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ticket::EnvelopeId;

/// Log record kind: "tickets below `end` of shard `shard` may have been issued".
pub const KIND_RESERVATION: u8 = 2;
/// Log record kind: an envelope claimed by a user.
pub const KIND_CLAIM: u8 = 3;
/// Tickets covered by one reservation. After a crash at most this many tickets of a shard are
/// skipped (never issued, reported unissued by reconciliation); the next reservation is asked
/// for when half of the current one is used, so issuing never waits on the disk in steady state.
pub const RESERVATION_TICKETS: u32 = 4096;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReservationRecord {
    pub shard_ordinal: U32,
    pub end: U32,
}

/// A durable claim: what settlement pays (R8, R11). 32 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ClaimRecord {
    pub envelope_id: U64,
    pub uid: U64,
    pub amount_cents: U32,
    pub batch_id: U16,
    pub key_id: U16,
    pub claimed_unix: U32,
    pub issuing_core: U16,
    pub reserved: U16,
}

const _: () = assert!(std::mem::size_of::<ClaimRecord>() == 32);

/// Why a record or request does not fit the shard's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The envelope was claimed before (by a durable or pending claim).
    #[error("envelope {0} is already claimed")]
    AlreadyClaimed(EnvelopeId),
    /// The envelope is not in this shard or beyond its last ticket.
    #[error("envelope {0} is not a ticket of this shard")]
    NotInShard(EnvelopeId),
    /// The envelope was never issued (beyond the issuing cursor): a forged token.
    #[error("envelope {0} was never issued")]
    NotIssued(EnvelopeId),
    /// A log record that cannot be decoded: refuse to start rather than guess.
    #[error("log record of kind {kind} has a malformed payload of {bytes} bytes")]
    MalformedRecord { kind: u8, bytes: usize },
    /// Two claim records for one envelope in the log: a money invariant was broken before.
    #[error("the log holds two claims for envelope {0}")]
    DuplicateClaimInLog(EnvelopeId),
}

/// What `issue` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// Hand out this ticket index.
    Ticket(u32),
    /// No durable reservation covers the next ticket yet; try again after the next commit.
    Waiting,
    /// Every ticket of the shard has been issued (or skipped after a crash).
    Exhausted,
}

pub struct ShardLedger {
    ordinal: u32,
    tickets: u32,
    /// Next ticket index to issue.
    next: u32,
    /// Tickets below this are covered by a durable reservation.
    durable_end: u32,
    /// The highest reservation appended (durable or not).
    requested_end: u32,
    claimed: Vec<u64>,
    claims: u64,
}

impl ShardLedger {
    /// A shard of `tickets` tickets with nothing issued or claimed; feed it the log with
    /// [`ShardLedger::replay`] before use.
    pub fn new(ordinal: u32, tickets: u32) -> ShardLedger {
        ShardLedger {
            ordinal,
            tickets,
            next: 0,
            durable_end: 0,
            requested_end: 0,
            claimed: vec![0; (tickets as usize).div_ceil(64)],
            claims: 0,
        }
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    pub fn claims(&self) -> u64 {
        self.claims
    }

    /// Next ticket index to issue (tickets below it were issued or skipped).
    pub fn cursor(&self) -> u32 {
        self.next
    }

    fn index_of(&self, envelope: EnvelopeId) -> Result<u32, LedgerError> {
        if envelope.shard_ordinal() != self.ordinal || envelope.index() >= self.tickets {
            return Err(LedgerError::NotInShard(envelope));
        }
        Ok(envelope.index())
    }

    fn is_claimed(&self, index: u32) -> bool {
        self.claimed[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Replays one durable log record (recovery). Records of other shards are ignored.
    pub fn replay(&mut self, kind: u8, payload: &[u8]) -> Result<(), LedgerError> {
        let malformed = LedgerError::MalformedRecord {
            kind,
            bytes: payload.len(),
        };
        match kind {
            KIND_RESERVATION => {
                let r = ReservationRecord::read_from_bytes(payload).map_err(|_| malformed)?;
                if r.shard_ordinal.get() == self.ordinal {
                    // Everything below a durable reservation may have been handed out before
                    // the crash: never issue it again.
                    let end = r.end.get().min(self.tickets);
                    self.durable_end = self.durable_end.max(end);
                    self.requested_end = self.requested_end.max(end);
                    self.next = self.next.max(end);
                }
            }
            KIND_CLAIM => {
                let c = ClaimRecord::read_from_bytes(payload).map_err(|_| malformed)?;
                let envelope = EnvelopeId(c.envelope_id.get());
                if envelope.shard_ordinal() == self.ordinal {
                    let index = self.index_of(envelope)?;
                    if self.is_claimed(index) {
                        return Err(LedgerError::DuplicateClaimInLog(envelope));
                    }
                    self.set(index);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn set(&mut self, index: u32) {
        self.claimed[index as usize / 64] |= 1 << (index % 64);
        self.claims += 1;
    }

    /// The next ticket to hand out, if a durable reservation covers it.
    pub fn issue(&mut self) -> Issue {
        if self.next >= self.tickets {
            return Issue::Exhausted;
        }
        if self.next >= self.durable_end {
            return Issue::Waiting;
        }
        let index = self.next;
        self.next += 1;
        // Money invariant: a ticket is issued only under a durable reservation.
        assert!(
            index < self.durable_end,
            "issued beyond the durable reservation"
        );
        Issue::Ticket(index)
    }

    /// A reservation to append now, when the durable window is half used (or empty) and none
    /// is already on its way.
    pub fn reservation_to_append(&mut self) -> Option<ReservationRecord> {
        if self.requested_end >= self.tickets || self.requested_end > self.durable_end {
            return None;
        }
        let left = self.durable_end - self.next;
        if left > RESERVATION_TICKETS / 2 {
            return None;
        }
        let end = self
            .requested_end
            .max(self.next)
            .saturating_add(RESERVATION_TICKETS)
            .min(self.tickets);
        self.requested_end = end;
        Some(ReservationRecord {
            shard_ordinal: U32::new(self.ordinal),
            end: U32::new(end),
        })
    }

    /// The reservation up to `end` is durable: tickets below it may be issued.
    pub fn reservation_durable(&mut self, end: u32) {
        assert!(
            end <= self.requested_end,
            "durable reservation never requested"
        );
        self.durable_end = self.durable_end.max(end);
    }

    /// Marks an envelope claimed (before its claim record is durable, so a second open in the
    /// same batch is refused). The answer to the user waits for the record to be durable.
    pub fn claim(&mut self, envelope: EnvelopeId) -> Result<(), LedgerError> {
        let index = self.index_of(envelope)?;
        if index >= self.next {
            return Err(LedgerError::NotIssued(envelope));
        }
        if self.is_claimed(index) {
            return Err(LedgerError::AlreadyClaimed(envelope));
        }
        self.set(index);
        Ok(())
    }

    /// Undoes [`ShardLedger::claim`] when its record could not be appended (the log refused it),
    /// so the user can retry and nothing was answered.
    pub fn unclaim(&mut self, envelope: EnvelopeId) {
        let index = self
            .index_of(envelope)
            .expect("unclaim of an envelope of this shard");
        assert!(self.is_claimed(index), "unclaim of an unclaimed envelope");
        self.claimed[index as usize / 64] &= !(1 << (index % 64));
        self.claims -= 1;
    }

    pub fn is_envelope_claimed(&self, envelope: EnvelopeId) -> bool {
        self.index_of(envelope)
            .map(|i| self.is_claimed(i))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::scan;
    use crate::store::{Appended, LogWriter};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    const TICKETS: u32 = 20_000;

    /// A core with one shard, its log writer and an in-memory "disk" of durable batches.
    struct Core {
        ledger: ShardLedger,
        writer: LogWriter,
        disk: Vec<Vec<u8>>,
        /// Reservations and claims appended and not yet durable.
        pending_reservations: Vec<(Appended, u32)>,
        pending_claims: Vec<(Appended, EnvelopeId)>,
    }

    impl Core {
        fn boot(disk: Vec<Vec<u8>>) -> Core {
            let mut ledger = ShardLedger::new(5, TICKETS);
            let mut segment = 0;
            let mut end = 0;
            for (id, bytes) in disk.iter().enumerate() {
                let s = scan(id as u64, bytes, |_, v| {
                    ledger.replay(v.kind, v.payload).unwrap()
                })
                .unwrap();
                segment = id as u64;
                end = s.valid_end;
            }
            Core {
                ledger,
                writer: LogWriter::new(0, segment, end, 1 << 22, 1 << 22, 0),
                disk,
                pending_reservations: Vec::new(),
                pending_claims: Vec::new(),
            }
        }

        fn maybe_reserve(&mut self) {
            if let Some(r) = self.ledger.reservation_to_append() {
                let a = self
                    .writer
                    .append(KIND_RESERVATION, 5, 0, r.as_bytes())
                    .unwrap();
                self.pending_reservations.push((a, r.end.get()));
            }
        }

        /// Writes one batch to the disk and returns the claims it made durable.
        fn commit(&mut self) -> Vec<EnvelopeId> {
            let Some(batch) = self.writer.take_batch() else {
                return Vec::new();
            };
            if batch.create {
                self.disk.push(Vec::new());
            }
            self.disk[batch.segment as usize].extend_from_slice(&batch.bytes);
            self.writer.complete(batch.end);
            let writer = &self.writer;
            let (done, rest): (Vec<_>, Vec<_>) = self
                .pending_reservations
                .drain(..)
                .partition(|(a, _)| writer.durable(a, ()).is_some());
            self.pending_reservations = rest;
            for (_, end) in done {
                self.ledger.reservation_durable(end);
            }
            let (done, rest): (Vec<_>, Vec<_>) = self
                .pending_claims
                .drain(..)
                .partition(|(a, _)| writer.durable(a, ()).is_some());
            self.pending_claims = rest;
            done.into_iter().map(|(_, e)| e).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Shake,
        Open(u16),
        Commit,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Shake),
            4 => any::<u16>().prop_map(Op::Open),
            3 => Just(Op::Commit),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Deterministic simulation: shakes, opens, commits and crashes (which lose everything
        /// not yet durable) in any order. Invariants: no ticket is issued twice, ever; no
        /// envelope is claimed twice; every claim answered (durable) survives every crash.
        #[test]
        fn money_invariants_hold_across_crashes(ops in proptest::collection::vec(op(), 1..400)) {
            let mut core = Core::boot(Vec::new());
            let mut issued_ever: HashSet<u32> = HashSet::new();
            let mut issued_now: Vec<u32> = Vec::new();
            let mut answered: BTreeMap<u32, ()> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Shake => {
                        core.maybe_reserve();
                        if let Issue::Ticket(i) = core.ledger.issue() {
                            prop_assert!(issued_ever.insert(i), "ticket {} issued twice", i);
                            issued_now.push(i);
                        }
                    }
                    Op::Open(pick) => {
                        if issued_now.is_empty() { continue; }
                        let i = issued_now[pick as usize % issued_now.len()];
                        let e = EnvelopeId::new(5, i);
                        match core.ledger.claim(e) {
                            Ok(()) => {
                                prop_assert!(!answered.contains_key(&i), "claimed twice");
                                let rec = ClaimRecord {
                                    envelope_id: U64::new(e.0), uid: U64::new(i as u64),
                                    amount_cents: U32::new(1), batch_id: U16::new(1),
                                    key_id: U16::new(1), claimed_unix: U32::new(0),
                                    issuing_core: U16::new(0), reserved: U16::new(0),
                                };
                                let a = core.writer.append(KIND_CLAIM, 5, i as u64, rec.as_bytes()).unwrap();
                                core.pending_claims.push((a, e));
                            }
                            Err(LedgerError::AlreadyClaimed(_)) => {}
                            Err(other) => prop_assert!(false, "{}", other),
                        }
                    }
                    Op::Commit => {
                        for e in core.commit() {
                            answered.insert(e.index(), ());
                        }
                    }
                    Op::Crash => {
                        core = Core::boot(std::mem::take(&mut core.disk));
                        issued_now.clear();
                        for &i in answered.keys() {
                            prop_assert!(core.ledger.is_envelope_claimed(EnvelopeId::new(5, i)),
                                "answered claim {} lost in a crash", i);
                        }
                        prop_assert_eq!(core.ledger.claims(), answered.len() as u64,
                            "only answered claims survive (pending ones were never answered)");
                        prop_assert!(issued_ever.iter().all(|&i| i < core.ledger.cursor()),
                            "the cursor is past everything issued before the crash");
                    }
                }
            }
        }
    }

    #[test]
    fn issuing_waits_for_a_durable_reservation_and_skips_after_restart() {
        let mut core = Core::boot(Vec::new());
        assert_eq!(core.ledger.issue(), Issue::Waiting);
        core.maybe_reserve();
        assert_eq!(core.ledger.issue(), Issue::Waiting, "not durable yet");
        core.commit();
        assert_eq!(core.ledger.issue(), Issue::Ticket(0));
        assert_eq!(core.ledger.issue(), Issue::Ticket(1));
        // A crash: the reservation covered 0..4096, so the restart skips to 4096.
        let disk = std::mem::take(&mut core.disk);
        let mut core = Core::boot(disk);
        assert_eq!(core.ledger.cursor(), RESERVATION_TICKETS);
        core.maybe_reserve();
        core.commit();
        assert_eq!(core.ledger.issue(), Issue::Ticket(RESERVATION_TICKETS));
    }

    #[test]
    fn claims_are_checked() {
        let mut l = ShardLedger::new(5, 100);
        l.reservation_to_append().unwrap();
        l.reservation_durable(100);
        assert_eq!(l.issue(), Issue::Ticket(0));
        let e = EnvelopeId::new(5, 0);
        assert_eq!(l.claim(e), Ok(()));
        assert_eq!(l.claim(e), Err(LedgerError::AlreadyClaimed(e)));
        l.unclaim(e);
        assert_eq!(l.claim(e), Ok(()));
        assert_eq!(
            l.claim(EnvelopeId::new(5, 1)),
            Err(LedgerError::NotIssued(EnvelopeId::new(5, 1)))
        );
        assert!(matches!(
            l.claim(EnvelopeId::new(6, 0)),
            Err(LedgerError::NotInShard(_))
        ));
        assert!(matches!(
            l.claim(EnvelopeId::new(5, 100)),
            Err(LedgerError::NotInShard(_))
        ));
        assert!(matches!(
            l.replay(KIND_CLAIM, &[1, 2, 3]),
            Err(LedgerError::MalformedRecord { .. })
        ));
    }
}
