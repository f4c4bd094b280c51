//! One core's shake/open engine (R7-R11), sans-IO: the shards this core owns (mmap'd tickets
//! and their ledgers), the slot schedule with a pacer per slot, the per-user caps of the users
//! homed here, the shake-token keys, and the core's log writer.
//!
//! The runtime feeds it requests with `now` and a [`Route`] saying who waits for the answer,
//! executes the log's write batches, and reports their completion; the engine answers at once
//! (most shakes, every refusal) or later from [`Engine::batch_done`] (opens, whose claims must be
//! durable first, and shakes that wait for an issuing reservation). No glommio, no clock, no
//! sockets: unit tests and the in-process benchmark drive it with an in-memory disk.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

use super::caps::{Refusal, UserCaps};
use crate::admission::{Outcome, Pacer, PacingConfig};
use crate::ledger::{ClaimRecord, Issue, LedgerError, ShardLedger, KIND_CLAIM, KIND_RESERVATION};
use crate::metrics::CoreMetrics;
use crate::store::{AppendError, Appended, LogPosition, LogWriter, WriteBatch};
use crate::ticket::{EnvelopeId, ShardFile, Ticket, TicketRecord};
use crate::token::{Shake, TokenKeys};
use crate::wire::ops::{ErrorCode, OpResult, OpenReply, ShakeOutcome, ShakeReply};

/// Shakes waiting for an issuing reservation to become durable, per core. Beyond it shakes
/// are refused as busy: the disk is not keeping up.
pub const PENDING_SHAKES_MAX: usize = 65_536;
/// Longest back-off hint sent while no slot is open.
pub const CLOSED_BACKOFF_MAX_MS: u64 = 60_000;

/// One slot's time window, in Unix milliseconds (already shifted for rehearsals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWindow {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A shard owned by this core: its mapped tickets and its money state (replayed from the log).
pub struct OwnedShard {
    pub file: ShardFile,
    pub ledger: ShardLedger,
    /// Index into the slot list.
    pub slot: usize,
}

/// Who waits for an answer: a request of this core (by its local id) or of another core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local(u64),
    Remote { core: u16, id: u64 },
}

/// An open that passed the checks that need no shard state (token tag, uid, keyring, key
/// lists), on whichever core received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    pub uid: u64,
    /// The record as carried by the token.
    pub record: TicketRecord,
    /// The record opened with the keyring.
    pub ticket: Ticket,
    pub issuing_core: u16,
    pub now_unix: u32,
}

pub struct EngineParts {
    pub core: u16,
    pub slots: Vec<SlotWindow>,
    pub shards: Vec<OwnedShard>,
    pub log: LogWriter,
    pub token_keys: TokenKeys,
    pub pacing: PacingConfig,
    /// Off: every shake wins while tickets last (benchmarks, drills). On: slot pacing and quota.
    pub pacing_enabled: bool,
    pub caps: UserCaps,
    pub seed: u64,
    pub metrics: Arc<CoreMetrics>,
}

enum Waiter {
    Reservation {
        shard: usize,
        end: u32,
    },
    Claim {
        route: Route,
        reply: OpenReply,
    },
    /// A repeated open of a claimed envelope, answered once everything appended before it
    /// (the claim itself, if it is not durable yet) is durable.
    Again {
        route: Route,
        reply: OpenReply,
    },
}

struct PendingShake {
    uid: u64,
    slot: usize,
    route: Route,
    backoff_ms: u32,
}

struct SlotState {
    window: SlotWindow,
    pacer: Pacer,
    /// Indices into `shards`, issued from in order.
    shards: Vec<usize>,
    remaining: u64,
}

pub struct Engine {
    core: u16,
    slots: Vec<SlotState>,
    shards: Vec<OwnedShard>,
    by_ordinal: HashMap<u32, usize>,
    log: LogWriter,
    waiters: VecDeque<(Appended, Waiter)>,
    pending_shakes: Vec<PendingShake>,
    token_keys: TokenKeys,
    pacing_enabled: bool,
    caps: UserCaps,
    rng: Xoshiro256PlusPlus,
    metrics: Arc<CoreMetrics>,
}

fn shake_reply(outcome: ShakeOutcome, backoff_ms: u32) -> OpResult {
    OpResult::Shake(ShakeReply {
        outcome,
        backoff_ms,
        token: None,
    })
}

impl Engine {
    pub fn new(parts: EngineParts) -> Engine {
        let mut slots: Vec<SlotState> = parts
            .slots
            .into_iter()
            .map(|window| SlotState {
                pacer: Pacer::new(parts.pacing, window.start_ms, window.end_ms),
                window,
                shards: Vec::new(),
                remaining: 0,
            })
            .collect();
        let mut by_ordinal = HashMap::new();
        for (i, shard) in parts.shards.iter().enumerate() {
            let slot = &mut slots[shard.slot];
            slot.shards.push(i);
            slot.remaining +=
                (shard.file.records().len() as u64).saturating_sub(shard.ledger.cursor() as u64);
            let previous = by_ordinal.insert(shard.ledger.ordinal(), i);
            assert!(previous.is_none(), "shard owned twice by one core");
        }
        Engine {
            core: parts.core,
            slots,
            shards: parts.shards,
            by_ordinal,
            log: parts.log,
            waiters: VecDeque::new(),
            pending_shakes: Vec::new(),
            token_keys: parts.token_keys,
            pacing_enabled: parts.pacing_enabled,
            caps: parts.caps,
            rng: Xoshiro256PlusPlus::seed_from_u64(parts.seed),
            metrics: parts.metrics,
        }
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    pub fn metrics(&self) -> &Arc<CoreMetrics> {
        &self.metrics
    }

    fn slot_at(&self, now_ms: u64) -> Result<usize, u64> {
        let mut next_start = u64::MAX;
        for (i, s) in self.slots.iter().enumerate() {
            if (s.window.start_ms..s.window.end_ms).contains(&now_ms) {
                return Ok(i);
            }
            if s.window.start_ms > now_ms {
                next_start = next_start.min(s.window.start_ms);
            }
        }
        Err(next_start.saturating_sub(now_ms).min(CLOSED_BACKOFF_MAX_MS))
    }

    /// Tickets this core can still issue in the slot open at `now_ms`.
    pub fn remaining_at(&self, now_ms: u64) -> u64 {
        self.slot_at(now_ms)
            .map(|i| self.slots[i].remaining)
            .unwrap_or(0)
    }

    /// Overloaded: the disk is behind or shakes are queueing for reservations (R10).
    pub fn degraded(&self) -> bool {
        self.log.backlog_bytes() > self.log_backlog_limit() / 2
            || self.pending_shakes.len() > PENDING_SHAKES_MAX / 2
    }

    fn log_backlog_limit(&self) -> usize {
        self.log.pending_bytes_max()
    }

    /// Decides one shake of `uid`, homed on this core. `None`: the answer comes later from
    /// [`Engine::batch_done`] (the ticket waits for its reservation to become durable).
    pub fn shake(&mut self, uid: u64, now_ms: u64, route: Route) -> Option<OpResult> {
        let result = self.shake_inner(uid, now_ms, route);
        if let Some(OpResult::Shake(s)) = &result {
            self.metrics.shake(s.outcome);
        }
        result
    }

    fn shake_inner(&mut self, uid: u64, now_ms: u64, route: Route) -> Option<OpResult> {
        let degraded = self.degraded();
        let config = self
            .slots
            .first()
            .map(|s| s.pacer.config())
            .unwrap_or_default();
        let base_backoff = if degraded {
            config.degrade_backoff_ms
        } else {
            config.backoff_ms
        };
        let slot = match self.slot_at(now_ms) {
            Ok(slot) => slot,
            Err(wait) => {
                return Some(shake_reply(
                    ShakeOutcome::Closed,
                    base_backoff.max(wait as u32),
                ))
            }
        };
        if let Err(refusal) = self.caps.shake(uid, now_ms) {
            let (outcome, backoff) = match refusal {
                Refusal::TooSoon { wait_ms } => (ShakeOutcome::TooSoon, base_backoff.max(wait_ms)),
                Refusal::Capped => (ShakeOutcome::Capped, base_backoff),
                Refusal::TableFull => (ShakeOutcome::Nothing, base_backoff),
            };
            return Some(shake_reply(outcome, backoff));
        }
        let roll = self.rng.next_u32();
        let remaining = self.slots[slot].remaining;
        let decision = if self.pacing_enabled {
            self.slots[slot]
                .pacer
                .decide(now_ms, remaining, degraded, roll)
        } else {
            crate::admission::Decision {
                outcome: if remaining > 0 {
                    Outcome::Envelope
                } else {
                    Outcome::Nothing
                },
                backoff_ms: base_backoff,
            }
        };
        match decision.outcome {
            Outcome::Envelope => {
                if self.pending_shakes.len() >= PENDING_SHAKES_MAX {
                    return Some(OpResult::Error {
                        code: ErrorCode::Busy,
                        backoff_ms: config.degrade_backoff_ms,
                    });
                }
                self.issue(uid, slot, now_ms, route, decision.backoff_ms)
            }
            Outcome::Sponsor => Some(shake_reply(ShakeOutcome::Sponsor, decision.backoff_ms)),
            Outcome::Nothing => Some(shake_reply(ShakeOutcome::Nothing, decision.backoff_ms)),
            Outcome::SlotClosed => Some(shake_reply(ShakeOutcome::Closed, decision.backoff_ms)),
        }
    }

    fn issue(
        &mut self,
        uid: u64,
        slot: usize,
        now_ms: u64,
        route: Route,
        backoff_ms: u32,
    ) -> Option<OpResult> {
        for k in 0..self.slots[slot].shards.len() {
            let i = self.slots[slot].shards[k];
            let issued = self.shards[i].ledger.issue();
            self.request_reservation(i);
            match issued {
                Issue::Ticket(index) => {
                    let record = self.shards[i].file.records()[index as usize];
                    let token = Shake {
                        uid,
                        issuing_core: self.core,
                        issued_unix: (now_ms / 1000) as u32,
                        ticket: record,
                    }
                    .body(self.token_keys.current());
                    let s = &mut self.slots[slot];
                    s.remaining -= 1;
                    self.metrics
                        .tickets_remaining
                        .store(s.remaining, std::sync::atomic::Ordering::Relaxed);
                    self.caps.won(uid);
                    return Some(OpResult::Shake(ShakeReply {
                        outcome: ShakeOutcome::Envelope,
                        backoff_ms,
                        token: Some(token),
                    }));
                }
                Issue::Waiting => {
                    self.pending_shakes.push(PendingShake {
                        uid,
                        slot,
                        route,
                        backoff_ms,
                    });
                    return None;
                }
                Issue::Exhausted => continue,
            }
        }
        Some(shake_reply(ShakeOutcome::Nothing, backoff_ms))
    }

    fn request_reservation(&mut self, shard: usize) {
        let ledger = &mut self.shards[shard].ledger;
        if let Some(r) = ledger.reservation_to_append() {
            let appended = self
                .log
                .append_control(
                    KIND_RESERVATION,
                    ledger.ordinal() as u64,
                    r.end.get() as u64,
                    r.as_bytes(),
                )
                .expect("an 8-byte record is never too large");
            self.waiters.push_back((
                appended,
                Waiter::Reservation {
                    shard,
                    end: r.end.get(),
                },
            ));
        }
    }

    /// Prepares every shard's first reservation so the first shakes need not wait (start-up).
    pub fn warm_up(&mut self) {
        for i in 0..self.shards.len() {
            self.request_reservation(i);
        }
    }

    /// Does this core own the shard with this ordinal?
    pub fn owns(&self, ordinal: u32) -> bool {
        self.by_ordinal.contains_key(&ordinal)
    }

    /// Claims an envelope of a shard this core owns. Refusals come back at once (counted by
    /// the connection's core, which answers them); success comes from [`Engine::batch_done`]
    /// once the claim record is durable.
    pub fn open(&mut self, req: OpenRequest, route: Route) -> Option<OpResult> {
        let envelope = req.ticket.envelope_id;
        let Some(&i) = self.by_ordinal.get(&envelope.shard_ordinal()) else {
            return Some(OpResult::error(ErrorCode::UnknownShard));
        };
        let shard = &mut self.shards[i];
        let Some(stored) = shard.file.records().get(envelope.index() as usize) else {
            return Some(OpResult::error(ErrorCode::UnknownShard));
        };
        if *stored != req.record {
            return Some(OpResult::error(ErrorCode::TicketInvalid));
        }
        match shard.ledger.claim(envelope) {
            Ok(()) => {}
            Err(LedgerError::AlreadyClaimed(_)) => return self.open_again(&req, route),
            Err(LedgerError::NotIssued(_)) => return Some(OpResult::error(ErrorCode::NotIssued)),
            Err(_) => return Some(OpResult::error(ErrorCode::UnknownShard)),
        }
        let record = ClaimRecord {
            envelope_id: U64::new(envelope.0),
            uid: U64::new(req.uid),
            amount_cents: U32::new(req.ticket.amount_cents),
            batch_id: U16::new(req.ticket.batch_id),
            key_id: U16::new(req.ticket.key_id),
            claimed_unix: U32::new(req.now_unix),
            issuing_core: U16::new(req.issuing_core),
            reserved: U16::new(0),
        };
        match self.log.append(
            KIND_CLAIM,
            envelope.shard_ordinal() as u64,
            envelope.index() as u64,
            record.as_bytes(),
        ) {
            Ok(appended) => {
                self.waiters.push_back((
                    appended,
                    Waiter::Claim {
                        route,
                        reply: OpenReply {
                            envelope_id: envelope.0,
                            amount_cents: req.ticket.amount_cents,
                            batch_id: req.ticket.batch_id,
                            claimed_unix: req.now_unix,
                            again: false,
                        },
                    },
                ));
                None
            }
            Err(AppendError::Backlog(_) | AppendError::DiskLow | AppendError::TooLarge(_)) => {
                // Nothing was appended: undo, so the user's retry can succeed.
                self.shards[i].ledger.unclaim(envelope);
                let backoff_ms = self
                    .slots
                    .first()
                    .map(|s| s.pacer.config().degrade_backoff_ms)
                    .unwrap_or(1000);
                Some(OpResult::Error {
                    code: ErrorCode::Busy,
                    backoff_ms,
                })
            }
        }
    }

    /// A repeated open of an envelope that is claimed: the answer the user may have lost
    /// (a connection cut before the reply, a server stopped or killed after the claim was
    /// durable). It is this user's claim: an envelope is issued once, in one shake token,
    /// which names its user (`issue`); the token's MAC and the runtime's `wrong_user` check
    /// mean only that user can present it, so only that user can have claimed it. The
    /// amount and batch are the ticket's own (its record matched the shard above). The answer
    /// waits until everything appended so far is durable, so it never runs ahead of the
    /// claim it repeats (which may still be on its way to the disk).
    fn open_again(&mut self, req: &OpenRequest, route: Route) -> Option<OpResult> {
        let reply = OpenReply {
            envelope_id: req.ticket.envelope_id.0,
            amount_cents: req.ticket.amount_cents,
            batch_id: req.ticket.batch_id,
            // The claim's own time is in its record (`hongbao claims`), not in memory.
            claimed_unix: 0,
            again: true,
        };
        let at = self.log.appended_end();
        let behind = Appended { start: at, end: at };
        match self.log.durable(&behind, reply) {
            Some(durable) => {
                self.metrics
                    .opens_again
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(OpResult::Open(durable.into_inner()))
            }
            None => {
                self.waiters
                    .push_back((behind, Waiter::Again { route, reply }));
                None
            }
        }
    }

    /// Is the envelope claimed (durably or pending)? For tests and tools.
    pub fn is_claimed(&self, envelope: EnvelopeId) -> bool {
        self.by_ordinal
            .get(&envelope.shard_ordinal())
            .is_some_and(|&i| self.shards[i].ledger.is_envelope_claimed(envelope))
    }

    /// The next write for the runtime, if none is in flight and anything was appended.
    /// The core's log, for the other state machines of the core (IM) that append to it.
    pub fn log(&self) -> &LogWriter {
        &self.log
    }

    pub fn log_mut(&mut self) -> &mut LogWriter {
        &mut self.log
    }

    pub fn take_batch(&mut self) -> Option<WriteBatch> {
        self.log.take_batch()
    }

    /// Work waiting for the disk (appended records not yet durable, a batch in flight, or
    /// answers pending).
    pub fn has_pending(&self) -> bool {
        !self.waiters.is_empty()
            || !self.pending_shakes.is_empty()
            || self.log.backlog_bytes() > 0
            || self.log.appended_end() > self.log.durable_position()
    }

    pub fn durable_position(&self) -> LogPosition {
        self.log.durable_position()
    }

    /// The batch ending at `end` is durable: answers every request it made answerable.
    pub fn batch_done(&mut self, end: LogPosition, now_ms: u64, out: &mut Vec<(Route, OpResult)>) {
        self.log.complete(end);
        let mut reservations = false;
        while let Some((appended, _)) = self.waiters.front() {
            if appended.end > end {
                break;
            }
            let (appended, waiter) = self.waiters.pop_front().expect("front exists");
            match waiter {
                Waiter::Reservation { shard, end } => {
                    self.shards[shard].ledger.reservation_durable(end);
                    reservations = true;
                }
                Waiter::Claim { route, reply } => {
                    // Money invariant: an open is answered only with proof its claim is durable.
                    let durable = self
                        .log
                        .durable(&appended, reply)
                        .expect("claim answered before its record was durable");
                    let reply = durable.into_inner();
                    self.metrics
                        .opens
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.claimed_cents.fetch_add(
                        reply.amount_cents as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    out.push((route, OpResult::Open(reply)));
                }
                Waiter::Again { route, reply } => {
                    let durable = self
                        .log
                        .durable(&appended, reply)
                        .expect("repeated open answered before the log behind it was durable");
                    self.metrics
                        .opens_again
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out.push((route, OpResult::Open(durable.into_inner())));
                }
            }
        }
        if reservations && !self.pending_shakes.is_empty() {
            for p in std::mem::take(&mut self.pending_shakes) {
                if let Some(result) = self.issue(p.uid, p.slot, now_ms, p.route, p.backoff_ms) {
                    if let OpResult::Shake(s) = &result {
                        self.metrics.shake(s.outcome);
                    }
                    out.push((p.route, result));
                }
            }
        }
    }

    /// Users held by the caps table.
    pub fn caps_users(&self) -> usize {
        self.caps.users()
    }

    /// Replaces the pacing settings of every slot (operator change at run time); `enabled`
    /// false lets every shake win while tickets last.
    pub fn set_pacing(&mut self, enabled: bool, config: PacingConfig) {
        self.pacing_enabled = enabled;
        for s in &mut self.slots {
            s.pacer.set_config(config);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shake::caps::CapsConfig;
    use crate::store::segment::{scan, SEGMENT_HEADER_BYTES};
    use crate::ticket::shard::{ShardHeader, ShardWriter, HEADER_BYTES};
    use crate::ticket::{Keyring, RECORD_BYTES};
    use crate::token::TokenBody;
    use aes::cipher::KeyInit;
    use aes::Aes128;
    use zerocopy::little_endian::I64;

    pub(crate) struct Fixture {
        pub _dir: tempfile::TempDir,
        pub keyring: Keyring,
        pub path: std::path::PathBuf,
    }

    /// A shard file of `n` tickets (ordinal 0, key 1) in a temporary directory.
    pub(crate) fn shard_fixture(n: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 16];
        let keyring = Keyring::new(
            [0; 32],
            0,
            vec![crate::ticket::KeyEntry {
                key_id: 1,
                shard_ordinal: 0,
                key,
            }],
        )
        .unwrap();
        let cipher = Aes128::new(&key.into());
        let path = dir.path().join("0.tix");
        let mut w = ShardWriter::create(&path).unwrap();
        let records: Vec<TicketRecord> = (0..n)
            .map(|i| {
                TicketRecord::seal(
                    &Ticket {
                        envelope_id: EnvelopeId::new(0, i),
                        amount_cents: 100 + i,
                        batch_id: 3,
                        key_id: 1,
                    },
                    &cipher,
                )
            })
            .collect();
        w.write(&records).unwrap();
        let mut header = ShardHeader {
            magic: crate::ticket::shard::SHARD_MAGIC,
            version: U16::new(crate::ticket::shard::SHARD_VERSION),
            header_bytes: U16::new(HEADER_BYTES as u16),
            record_bytes: U16::new(RECORD_BYTES as u16),
            variant: 0,
            reserved0: 0,
            shard_ordinal: U32::new(0),
            slot_index: U16::new(0),
            host_index: U16::new(0),
            core: U16::new(0),
            backup_host_index: U16::new(0),
            record_count: U64::new(n as u64),
            amount_cents: U64::new(0),
            plan_fingerprint: [0; 16],
            slot_start_unix: I64::new(0),
            slot_end_unix: I64::new(0),
            body_crc32c: U32::new(0),
            generation: [0; 16],
            reserved1: [0; 28],
            header_crc32c: U32::new(0),
        };
        header.seal_crc();
        w.finish(header).unwrap();
        Fixture {
            _dir: dir,
            keyring,
            path,
        }
    }

    fn engine(f: &Fixture, n: u32, caps: CapsConfig, pacing: bool) -> Engine {
        Engine::new(EngineParts {
            core: 0,
            slots: vec![SlotWindow {
                name: "s".into(),
                start_ms: 1_000,
                end_ms: 1_000_000,
            }],
            shards: vec![OwnedShard {
                file: ShardFile::open(&f.path).unwrap(),
                ledger: ShardLedger::new(0, n),
                slot: 0,
            }],
            log: LogWriter::new(0, 0, 0, 64 << 20, 1 << 20, 0),
            token_keys: TokenKeys::new(&[(1, [9; 16])], 1).unwrap(),
            pacing: PacingConfig::default(),
            pacing_enabled: pacing,
            caps: UserCaps::new(caps),
            seed: 1,
            metrics: Arc::new(CoreMetrics::default()),
        })
    }

    /// Runs every batch "to disk" (a byte vector) and collects the answers.
    fn drain(e: &mut Engine, disk: &mut Vec<u8>, now: u64) -> Vec<(Route, OpResult)> {
        let mut out = Vec::new();
        while let Some(b) = e.take_batch() {
            assert_eq!(b.offset as usize, disk.len());
            disk.extend_from_slice(&b.bytes);
            e.batch_done(b.end, now, &mut out);
        }
        out
    }

    /// The open of an issued token, signed as the connection's core signs it.
    fn open_req(f: &Fixture, e: &Engine, token: &TokenBody, uid: u64) -> OpenRequest {
        let shake = Shake::decode(&e.token_keys.sign(token), &e.token_keys).unwrap();
        OpenRequest {
            uid,
            record: shake.ticket,
            ticket: shake.ticket.open(&f.keyring).unwrap(),
            issuing_core: shake.issuing_core,
            now_unix: 5,
        }
    }

    #[test]
    fn shake_waits_for_reservation_then_open_waits_for_claim() {
        let f = shard_fixture(10_000);
        let mut e = engine(&f, 10_000, CapsConfig::default(), false);
        let mut disk = Vec::new();
        // Nothing reserved yet: the first shake waits for the disk.
        assert_eq!(e.shake(42, 2_000, Route::Local(1)), None);
        let out = drain(&mut e, &mut disk, 2_000);
        assert_eq!(out.len(), 1);
        let OpResult::Shake(ShakeReply {
            outcome: ShakeOutcome::Envelope,
            token: Some(token),
            ..
        }) = out[0].1
        else {
            panic!("{:?}", out)
        };
        assert_eq!(out[0].0, Route::Local(1));
        // Open: not answered until the claim is durable.
        let req = open_req(&f, &e, &token, 42);
        assert_eq!(e.open(req, Route::Remote { core: 1, id: 9 }), None);
        // A second open of the same token in the same batch waits for the same commit and
        // answers the claim again (never before the claim is durable).
        assert_eq!(e.open(req, Route::Local(3)), None);
        let claim = OpenReply {
            envelope_id: req.ticket.envelope_id.0,
            amount_cents: req.ticket.amount_cents,
            batch_id: 3,
            claimed_unix: 5,
            again: false,
        };
        let again = OpenReply {
            claimed_unix: 0,
            again: true,
            ..claim
        };
        let out = drain(&mut e, &mut disk, 2_000);
        assert_eq!(
            out,
            vec![
                (Route::Remote { core: 1, id: 9 }, OpResult::Open(claim)),
                (Route::Local(3), OpResult::Open(again)),
            ]
        );
        // Once durable, a repeat is answered at once.
        assert_eq!(e.open(req, Route::Local(4)), Some(OpResult::Open(again)));
        assert_eq!(
            e.metrics().opens.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            e.metrics()
                .opens_again
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // The disk holds the reservation and the claim, in order, intact.
        let mut kinds = Vec::new();
        let s = scan(0, &disk, |_, v| kinds.push(v.kind)).unwrap();
        assert_eq!(kinds, vec![KIND_RESERVATION, KIND_CLAIM]);
        assert!(s.valid_end as usize == disk.len() && disk.len() > SEGMENT_HEADER_BYTES);
    }

    #[test]
    fn issues_each_ticket_once_and_runs_dry() {
        let n = 9_000;
        let f = shard_fixture(n);
        let mut e = engine(&f, n, CapsConfig::default(), false);
        e.warm_up();
        let mut disk = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut nothing = 0;
        for uid in 0..n as u64 + 50 {
            let mut answers = Vec::new();
            if let Some(r) = e.shake(uid, 2_000, Route::Local(uid)) {
                answers.push(r);
            }
            answers.extend(drain(&mut e, &mut disk, 2_000).into_iter().map(|(_, r)| r));
            for r in answers {
                match r {
                    OpResult::Shake(ShakeReply {
                        outcome: ShakeOutcome::Envelope,
                        token: Some(t),
                        ..
                    }) => {
                        let s = Shake::decode(&e.token_keys.sign(&t), &e.token_keys).unwrap();
                        assert!(seen.insert(s.envelope_id()), "issued twice");
                    }
                    OpResult::Shake(ShakeReply {
                        outcome: ShakeOutcome::Nothing,
                        ..
                    }) => nothing += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(seen.len(), n as usize);
        assert_eq!(nothing, 50);
        assert_eq!(e.remaining_at(2_000), 0);
    }

    #[test]
    fn caps_closed_slot_and_refusals() {
        let f = shard_fixture(100);
        let caps = CapsConfig {
            envelopes_per_user: 1,
            min_interval_ms: 10,
            users_max: 100,
        };
        let mut e = engine(&f, 100, caps, false);
        e.warm_up();
        let mut disk = Vec::new();
        drain(&mut e, &mut disk, 0);
        let closed = e.shake(1, 500, Route::Local(0)).unwrap();
        assert_eq!(closed, shake_reply(ShakeOutcome::Closed, 500));
        let Some(OpResult::Shake(ShakeReply {
            outcome: ShakeOutcome::Envelope,
            token: Some(token),
            ..
        })) = e.shake(1, 2_000, Route::Local(0))
        else {
            panic!()
        };
        assert_eq!(
            e.shake(1, 2_005, Route::Local(0)),
            Some(shake_reply(ShakeOutcome::TooSoon, 5))
        );
        assert_eq!(
            e.shake(1, 2_010, Route::Local(0)),
            Some(shake_reply(ShakeOutcome::Capped, 0))
        );
        // Another user's claim of this token is the runtime's to refuse (uid check); a ticket
        // that is not the stored record is refused here.
        let mut req = open_req(&f, &e, &token, 1);
        req.record.sealed[0] ^= 1;
        assert_eq!(
            e.open(req, Route::Local(1)),
            Some(OpResult::error(ErrorCode::TicketInvalid))
        );
        // Never issued.
        let mut forged = open_req(&f, &e, &token, 1);
        forged.ticket.envelope_id = EnvelopeId::new(0, 99);
        forged.record = ShardFile::open(&f.path).unwrap().records()[99];
        assert_eq!(
            e.open(forged, Route::Local(1)),
            Some(OpResult::error(ErrorCode::NotIssued))
        );
        forged.ticket.envelope_id = EnvelopeId::new(5, 1);
        assert_eq!(
            e.open(forged, Route::Local(1)),
            Some(OpResult::error(ErrorCode::UnknownShard))
        );
    }

    #[test]
    fn backlog_refuses_claims_and_undoes_them() {
        let f = shard_fixture(5_000);
        let mut e = engine(&f, 5_000, CapsConfig::default(), false);
        e.warm_up();
        let mut disk = Vec::new();
        drain(&mut e, &mut disk, 0);
        let mut tokens = Vec::new();
        for uid in 0..2_000 {
            if let Some(OpResult::Shake(ShakeReply { token: Some(t), .. })) =
                e.shake(uid, 2_000, Route::Local(uid))
            {
                tokens.push((uid, t));
            }
            drain(&mut e, &mut disk, 2_000);
        }
        // 1 MiB of backlog allowed: 64-byte claims fill it after 16,384; use a tiny writer.
        e.log = LogWriter::new(0, 1, 0, 64 << 20, 200, 0);
        let (uid, t) = tokens[0];
        let req = open_req(&f, &e, &t, uid);
        let mut busy = None;
        for (uid, t) in &tokens[1..] {
            let r = open_req(&f, &e, t, *uid);
            if let Some(OpResult::Error { code, .. }) = e.open(r, Route::Local(*uid)) {
                assert_eq!(code, ErrorCode::Busy);
                busy = Some(r);
                break;
            }
        }
        let refused = busy.expect("the backlog bound refuses claims");
        assert!(
            !e.is_claimed(refused.ticket.envelope_id),
            "refused claim undone"
        );
        assert!(!e.is_claimed(req.ticket.envelope_id));
    }
}
