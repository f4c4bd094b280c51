//! Unit tests of the IM engine, and a simulation of several cores exchanging messages in
//! random order, writing their logs in random batches and crashing at random moments (with torn
//! writes), checked against what the clients were told.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::store::segment::{scan, SEGMENT_HEADER_BYTES};
use crate::store::WriteBatch;

const SEGMENT_BYTES: u64 = 4 << 20;

struct Node {
    im: ImCore,
    log: LogWriter,
    files: Vec<Vec<u8>>,
    in_flight: Option<WriteBatch>,
}

/// Several cores with in-memory disks, and the clients' view.
struct Sim {
    cores: u16,
    nodes: Vec<Node>,
    /// FIFO per (source, destination), as the runtime's queues are.
    queues: BTreeMap<(u16, u16), VecDeque<ImMsg>>,
    replies: Vec<(Route, ImReply)>,
    pushes: Vec<(u64, u64)>,
    /// Milliseconds (the engine is given microseconds).
    now: u64,
    fanouts: Vec<u64>,
    backlog_max: usize,
    /// Member appends of huge-group deliveries per flush, on every core.
    huge_budget: usize,
    next_route: u64,
    /// Recovery moves entries out of memory (R24's cold tier), as the server does with a hot
    /// window shorter than the time since the sends.
    cold_recovery: bool,
    /// Huge-group deliveries are deferred (as in the server) and written at each flush in
    /// slices of this many member appends; 0: inline.
    bulk_slice: usize,
    /// Over the cores' lives so far: floor rounds completed, past memberships forgotten,
    /// group snapshots written, group records a simulated compaction dropped.
    history: [u64; 4],
    /// Every crash is followed by a simulated compaction (else half of them are).
    always_compact: bool,
    /// Messages sent before this (milliseconds) are past retention: recovery drops them, as
    /// the server's does.
    retention_cutoff: u64,
}

/// Cold entries read back from a copy of every core's simulated disk ([core][segment]).
struct SimCold(std::sync::Arc<Vec<Vec<Vec<u8>>>>);

impl ColdSource for SimCold {
    fn read(&self, at: ColdRef, uid: u64, seq: u64) -> Result<MessageRef, String> {
        let p = at.position();
        let bytes = self
            .0
            .get(at.core() as usize)
            .and_then(|files| files.get(p.segment as usize))
            .and_then(|f| f.get(p.offset as usize..))
            .ok_or_else(|| format!("{at}: not on the disk"))?;
        crate::im::cold::entry_in_bytes(p.segment, bytes, uid, seq).map(Arc::new)
    }
}

fn writer(core: u16, files: &[Vec<u8>], backlog_max: usize) -> LogWriter {
    let (segment, end) = match files.len() {
        0 => (0, 0),
        n => ((n - 1) as u64, files[n - 1].len() as u64),
    };
    LogWriter::new(core, segment, end, SEGMENT_BYTES, backlog_max, 0)
}

impl Sim {
    fn new(cores: u16, backlog_max: usize) -> Sim {
        let nodes = (0..cores)
            .map(|k| Node {
                // Simulated time stands still between batches: every batch gets a full
                // bucket of member appends (a test below checks the refill with time).
                im: {
                    let mut im = ImCore::new(k, cores);
                    im.set_huge_rate(u64::MAX, HUGE_APPENDS_BURST);
                    im
                },
                log: writer(k, &[], backlog_max),
                files: Vec::new(),
                in_flight: None,
            })
            .collect();
        Sim {
            cores,
            nodes,
            queues: BTreeMap::new(),
            replies: Vec::new(),
            pushes: Vec::new(),
            now: 1_700_000_000_000,
            fanouts: Vec::new(),
            huge_budget: HUGE_BYTES_PER_COMMIT,
            backlog_max,
            next_route: 1,
            cold_recovery: false,
            bulk_slice: 0,
            history: [0; 4],
            always_compact: false,
            retention_cutoff: 0,
        }
    }

    /// Defers huge-group deliveries to slices of `slice` member appends (0: inline).
    fn set_bulk_slice(&mut self, slice: usize) {
        self.bulk_slice = slice;
        for n in &mut self.nodes {
            n.im.set_huge_deferred(slice > 0);
        }
    }

    /// Gives every core a cold reader over what the disks hold now (durable records never
    /// change, so a copy serves every entry cold so far).
    fn cold_source(&mut self) {
        let disks = std::sync::Arc::new(
            self.nodes
                .iter()
                .map(|n| n.files.clone())
                .collect::<Vec<_>>(),
        );
        for n in &mut self.nodes {
            n.im.set_cold_source(Box::new(SimCold(disks.clone())));
        }
    }

    /// Every durable entry leaves memory (a hot window that ends now).
    fn cool_all(&mut self) -> u64 {
        self.cold_source();
        let cutoff = self.now + 1;
        self.nodes.iter_mut().map(|n| n.im.cool(cutoff)).sum()
    }

    fn route(&mut self) -> Route {
        self.next_route += 1;
        Route::Local(self.next_route)
    }

    fn absorb(&mut self, from: u16, fx: Effects) {
        self.replies.extend(fx.replies);
        self.pushes.extend(fx.pushes);
        self.fanouts.extend(fx.fanout_us);
        for (dst, msg) in fx.messages {
            self.queues.entry((from, dst)).or_default().push_back(msg);
        }
    }

    fn send(&mut self, sender: u64, appinfo: u128, to: Target, class: Class, body: &[u8]) -> Route {
        let route = self.route();
        let k = home(sender, self.cores);
        let mut fx = Effects::default();
        let n = &mut self.nodes[k as usize];
        let req = SendRequest {
            sender,
            appinfo,
            to,
            class,
            body: body.into(),
        };
        n.im.send(req, route, self.now * 1000, &mut n.log, &mut fx);
        self.absorb(k, fx);
        route
    }

    fn group(&mut self, gid: u64, owner: u64, members: &[u64]) -> Route {
        let route = self.route();
        let k = home(gid, self.cores);
        let mut fx = Effects::default();
        let n = &mut self.nodes[k as usize];
        n.im.create_group(gid, owner, members, route, &mut n.log, &mut fx);
        self.absorb(k, fx);
        route
    }

    fn update(&mut self, gid: u64, actor: u64, add: bool, members: &[u64]) -> Route {
        let route = self.route();
        let k = home(gid, self.cores);
        let mut fx = Effects::default();
        let n = &mut self.nodes[k as usize];
        let members = members.to_vec();
        let change = if add {
            GroupChange::Add { actor, members }
        } else {
            GroupChange::Remove { actor, members }
        };
        n.im.update_group(gid, change, route, &mut n.log, &mut fx);
        self.absorb(k, fx);
        route
    }

    fn reply(&self, route: Route) -> Option<&ImReply> {
        self.replies
            .iter()
            .find(|(r, _)| *r == route)
            .map(|(_, r)| r)
    }

    /// Hands every message queued now to its destination (per pair in order, pairs
    /// interleaved at random), as a core's bus drains its queues before it flushes.
    fn drain(&mut self, rng: &mut impl RngCore) -> bool {
        let n: usize = self.queues.values().map(|q| q.len()).sum();
        for _ in 0..n {
            self.step_message(rng);
        }
        n > 0
    }

    /// Hands queued messages over until none is left (no log batch runs meanwhile).
    fn quiesce_messages(&mut self, rng: &mut impl RngCore) {
        while self.drain(rng) {}
    }

    /// Hands one queued message to its destination. False if none is queued.
    fn step_message(&mut self, rng: &mut impl RngCore) -> bool {
        let keys: Vec<(u16, u16)> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return false;
        }
        let key = keys[rng.random_range(0..keys.len())];
        let msg = self.queues.get_mut(&key).unwrap().pop_front().unwrap();
        let dst = key.1;
        let mut fx = Effects::default();
        let n = &mut self.nodes[dst as usize];
        n.im.handle(msg, self.now * 1000, &mut n.log, &mut fx);
        self.absorb(dst, fx);
        true
    }

    fn flush(&mut self, k: u16) {
        let n = &mut self.nodes[k as usize];
        n.im.flush(&mut n.log);
        if self.bulk_slice > 0 {
            n.im.write_huge_slice(&mut n.log, self.bulk_slice);
        }
    }

    /// Starts a batch if none is in flight, else completes the one in flight.
    fn step_disk(&mut self, k: u16) -> bool {
        let n = &mut self.nodes[k as usize];
        match n.in_flight.take() {
            None => {
                n.in_flight = n.log.take_batch();
                n.in_flight.is_some()
            }
            Some(batch) => {
                if batch.create {
                    assert_eq!(batch.segment as usize, n.files.len());
                    n.files.push(Vec::new());
                }
                n.files[batch.segment as usize].extend_from_slice(&batch.bytes);
                n.log.complete(batch.end);
                let mut fx = Effects::default();
                n.im.batch_done(batch.end, self.now * 1000, &mut n.log, &mut fx);
                self.absorb(k, fx);
                true
            }
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for k in 0..self.cores {
            let n = &mut self.nodes[k as usize];
            n.im.tick(self.now * 1000, &mut n.log);
        }
    }

    /// Runs until nothing is in flight anywhere.
    fn quiesce(&mut self, rng: &mut impl RngCore) {
        for _ in 0..1_000_000 {
            let mut busy = self.drain(rng);
            for k in 0..self.cores {
                self.flush(k);
                busy |= self.step_disk(k);
            }
            let idle = self
                .nodes
                .iter()
                .all(|n| n.im.is_idle() && n.in_flight.is_none());
            if !busy && idle {
                for n in &self.nodes {
                    n.im.check_kept();
                }
                return;
            }
            if !busy {
                self.tick(PARK_RETRY_MAX_MS);
            }
        }
        panic!("the simulation did not settle");
    }

    /// Core `k` starts a floor round of its groups (the answers travel with the rest).
    fn floor_round(&mut self, k: u16) {
        let mut fx = Effects::default();
        self.nodes[k as usize].im.start_floor_round(&mut fx);
        self.absorb(k, fx);
    }

    /// Core `k` writes a snapshot of each of its groups whose changes go past its newest.
    fn snapshot(&mut self, k: u16, gids: &[u64]) -> Vec<(u64, (u64, u64))> {
        let n = &mut self.nodes[k as usize];
        n.im.write_snapshots(gids, &mut n.log)
    }

    /// Every core dies; a torn part of each in-flight batch may reach the disk. Then every
    /// core recovers from what its disk holds.
    fn crash(&mut self, rng: &mut impl RngCore, torn: bool) {
        // Half the time, as if compaction had run over every segment: group changes and
        // snapshots covered by a durable snapshot are gone (R24, final states only).
        let compacted: Vec<HashMap<u64, (u64, u64)>> =
            if self.always_compact || rng.random_bool(0.5) {
                self.nodes.iter().map(|n| n.im.group_snapshots()).collect()
            } else {
                vec![HashMap::new(); self.nodes.len()]
            };
        self.queues.clear();
        self.count_history();
        let mut dropped = 0;
        let mut recovery = if self.cold_recovery {
            ImRecovery::with_hot_cutoff(self.now + 1, self.now)
        } else {
            ImRecovery::new()
        };
        for n in &mut self.nodes {
            let core = n.im.core();
            if let Some(batch) = n.in_flight.take() {
                if torn {
                    let cut = rng.random_range(0..=batch.bytes.len());
                    if batch.create {
                        n.files.push(Vec::new());
                    }
                    n.files[batch.segment as usize].extend_from_slice(&batch.bytes[..cut]);
                }
            }
            // What recovery does to the files: drop a partial header, cut a torn tail.
            if n.files
                .last()
                .is_some_and(|f| f.len() < SEGMENT_HEADER_BYTES)
            {
                n.files.pop();
            }
            let last = n.files.len();
            let mut covered = crate::im::retention::ExpiredSegment {
                snapshots: compacted[core as usize].clone(),
                ..Default::default()
            };
            for (id, file) in n.files.iter_mut().enumerate() {
                let s = scan(id as u64, file, |position, v| {
                    let group = matches!(v.kind, KIND_GROUP | KIND_GROUP_SNAPSHOT);
                    if group && !covered.keep(&v, &mut Vec::new()) {
                        dropped += 1;
                        return;
                    }
                    recovery
                        .replay(
                            v.kind,
                            v.stream,
                            v.seq,
                            v.payload,
                            ColdRef::new(core, position),
                        )
                        .expect("records replay")
                })
                .expect("no damage in the middle");
                if id + 1 == last {
                    file.truncate(s.valid_end as usize);
                } else {
                    assert_eq!(s.valid_end as usize, file.len());
                }
            }
        }
        self.history[3] += dropped;
        let cores = recovery
            .finish(self.cores, self.now, self.retention_cutoff)
            .expect("recovers");
        for (n, im) in self.nodes.iter_mut().zip(cores) {
            n.im = im;
            n.im.set_huge_budget(self.huge_budget);
            n.im.set_huge_rate(u64::MAX, HUGE_APPENDS_BURST);
            n.log = writer(n.im.core(), &n.files, self.backlog_max);
        }
        self.cold_source();
        self.set_bulk_slice(self.bulk_slice);
        for k in 0..self.cores {
            let mut fx = Effects::default();
            let n = &mut self.nodes[k as usize];
            n.im.start(&mut n.log, &mut fx);
            self.absorb(k, fx);
        }
    }

    /// Retention: every core drops what was sent before `cutoff`, and recovery will too.
    fn expire_before(&mut self, cutoff: u64) {
        self.retention_cutoff = cutoff;
        for n in &mut self.nodes {
            n.im.expire(cutoff);
        }
    }

    /// Adds the cores' floor rounds, forgotten memberships and snapshots to `history`.
    fn count_history(&mut self) {
        for n in &self.nodes {
            let s = n.im.stats;
            self.history[0] += s.floor_rounds;
            self.history[1] += s.history_forgotten;
            self.history[2] += s.snapshots;
        }
    }

    fn stream(&self, uid: u64) -> Vec<(u64, MessageRef)> {
        let n = &self.nodes[home(uid, self.cores) as usize];
        n.im.sync(uid, 0, usize::MAX).entries
    }
}

#[test]
fn single_chat_is_stored_once_in_both_streams_and_visible_only_when_durable() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut sim = Sim::new(2, 1 << 20);
    let r = sim.send(10, 1, Target::User(20), Class::Chat, b"hello");
    assert!(sim.reply(r).is_none(), "answered only once durable");
    assert!(
        sim.stream(10).is_empty(),
        "nothing visible before it is durable"
    );
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.reply(r),
        Some(&ImReply::Sent {
            seq: 1,
            sent_ms: sim.now,
            duplicate: false
        })
    );
    let a = sim.stream(10);
    let b = sim.stream(20);
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].1.id, MsgId { sender: 10, seq: 1 });
    assert_eq!(b[0].1.id, a[0].1.id);
    assert_eq!(&*b[0].1.body, b"hello");
    assert!(
        sim.pushes.contains(&(20, 1)),
        "the recipient is told to pull"
    );
    // A retry: the original result, nothing stored.
    let again = sim.send(10, 1, Target::User(20), Class::Chat, b"hello");
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(again),
        Some(ImReply::Sent {
            seq: 1,
            duplicate: true,
            ..
        })
    ));
    assert_eq!((sim.stream(10).len(), sim.stream(20).len()), (1, 1));
    // The same appinfo for another message is refused.
    let other = sim.send(10, 1, Target::User(20), Class::Chat, b"other");
    assert_eq!(
        sim.reply(other),
        Some(&ImReply::Error(ImError::AppinfoReused))
    );
}

/// Users homed on core 0 and on core 1 of two.
fn on_cores_0_and_1() -> (Vec<u64>, Vec<u64>) {
    let (mut zero, mut one) = (Vec::new(), Vec::new());
    for uid in 1..100 {
        if home(uid, 2) == 0 {
            zero.push(uid);
        } else {
            one.push(uid);
        }
    }
    (zero, one)
}

/// Runs one commit of core `k`: flushes, starts a batch and completes it.
fn one_commit(sim: &mut Sim, k: u16) {
    sim.flush(k);
    assert!(sim.step_disk(k), "a batch starts");
    assert!(sim.step_disk(k), "and completes");
}

#[test]
fn recipients_on_the_senders_core_are_written_in_the_sends_commit() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let (zero, one) = on_cores_0_and_1();
    let mut sim = Sim::new(2, 1 << 20);
    // A single chat within core 0: answered and pushed to the recipient after one commit.
    let r = sim.send(zero[0], 1, Target::User(zero[1]), Class::Chat, b"near");
    one_commit(&mut sim, 0);
    assert!(matches!(sim.reply(r), Some(ImReply::Sent { seq: 1, .. })));
    assert!(
        sim.pushes.contains(&(zero[1], 1)),
        "the recipient on the sender's core is pushed after the send's own commit"
    );
    assert_eq!(sim.stream(zero[1]).len(), 1);
    // To a user on core 1: only once the SENT record is durable is the message handed over,
    // so that core's commit comes after the sender's.
    let r = sim.send(zero[0], 2, Target::User(one[0]), Class::Chat, b"far");
    one_commit(&mut sim, 0);
    assert!(matches!(sim.reply(r), Some(ImReply::Sent { seq: 2, .. })));
    assert!(sim.stream(one[0]).is_empty());
    assert_eq!(sim.queues.get(&(0, 1)).map_or(0, |q| q.len()), 1);
    sim.drain(&mut rng);
    one_commit(&mut sim, 1);
    assert!(sim.pushes.contains(&(one[0], 1)));
    // A group with members on both cores: core 0's in the send's commit, core 1's after it.
    sim.group(7, zero[0], &[zero[0], zero[1], zero[2], one[0], one[1]]);
    sim.quiesce(&mut rng);
    sim.pushes.clear();
    let r = sim.send(zero[0], 3, Target::Group(7), Class::Chat, b"all");
    // The expansion (core 7 homes the group) comes back first.
    sim.quiesce_messages(&mut rng);
    one_commit(&mut sim, 0);
    assert!(matches!(sim.reply(r), Some(ImReply::Sent { .. })));
    assert!(sim.pushes.contains(&(zero[1], 2)) && sim.pushes.contains(&(zero[2], 1)));
    assert!(!sim.pushes.iter().any(|&(u, _)| u == one[0] || u == one[1]));
    sim.quiesce(&mut rng);
    assert!(sim.pushes.contains(&(one[0], 2)) && sim.pushes.contains(&(one[1], 1)));
    // Every fan-out was confirmed by every core (FANOUT_DONE written, nothing open).
    for n in &sim.nodes {
        assert!(n.im.open_fanouts().is_empty());
    }
}

#[test]
fn a_torn_commit_of_a_chat_and_its_delivery_loses_and_duplicates_nothing() {
    // The SENT record and the DELIVERY after it in one batch, torn anywhere (or not written):
    // the client was not answered, retries with its appinfo, and both streams end with the
    // message once.
    for seed in 0..200 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut sim = Sim::new(1, 1 << 20);
        sim.send(10, 1, Target::User(20), Class::Chat, b"first");
        sim.quiesce(&mut rng);
        let r = sim.send(10, 2, Target::User(20), Class::Chat, b"torn");
        sim.flush(0);
        assert!(sim.step_disk(0), "the batch is in flight");
        assert!(sim.reply(r).is_none());
        sim.crash(&mut rng, seed % 10 != 0);
        sim.quiesce(&mut rng);
        let again = sim.send(10, 2, Target::User(20), Class::Chat, b"torn");
        sim.quiesce(&mut rng);
        assert!(
            matches!(sim.reply(again), Some(ImReply::Sent { seq: 2, .. })),
            "seed {seed}: {:?}",
            sim.reply(again)
        );
        for uid in [10, 20] {
            let s = sim.stream(uid);
            let seqs: Vec<u64> = s.iter().map(|(q, _)| *q).collect();
            let bodies: Vec<&[u8]> = s.iter().map(|(_, m)| &*m.body).collect();
            assert_eq!(seqs, [1, 2], "seed {seed}, user {uid}");
            assert_eq!(bodies, [&b"first"[..], b"torn"], "seed {seed}, user {uid}");
        }
    }
}

#[test]
fn over_the_memory_limit_new_writes_are_busy_and_stored_sends_still_answer() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
    let mut sim = Sim::new(2, 64 << 20);
    let first = sim.send(10, 1, Target::User(20), Class::Chat, b"hello");
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(first),
        Some(ImReply::Sent { seq: 1, .. })
    ));
    for n in &mut sim.nodes {
        n.im.set_memory_full(true);
    }
    let new = sim.send(10, 2, Target::User(20), Class::Chat, b"more");
    let group = sim.group(7, 10, &[10, 20]);
    let retry = sim.send(10, 1, Target::User(20), Class::Chat, b"hello");
    sim.quiesce(&mut rng);
    assert_eq!(sim.reply(new), Some(&ImReply::Error(ImError::Busy)));
    assert_eq!(sim.reply(group), Some(&ImReply::Error(ImError::Busy)));
    assert!(matches!(
        sim.reply(retry),
        Some(ImReply::Sent {
            seq: 1,
            duplicate: true,
            ..
        })
    ));
    let refused: u64 = sim.nodes.iter().map(|n| n.im.stats.memory_refused).sum();
    assert_eq!(refused, 2);
    assert_eq!((sim.stream(10).len(), sim.stream(20).len()), (1, 1));
    // Memory freed: the same send goes through.
    for n in &mut sim.nodes {
        n.im.set_memory_full(false);
    }
    let again = sim.send(10, 2, Target::User(20), Class::Chat, b"more");
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(again),
        Some(ImReply::Sent {
            seq: 2,
            duplicate: false,
            ..
        })
    ));
    assert_eq!(sim.stream(20).len(), 2);
}

#[test]
fn recovery_keeps_one_copy_of_a_message_for_all_its_streams() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    for cores in [1, 2] {
        let mut sim = Sim::new(cores, 64 << 20);
        sim.group(7, 10, &[10, 20, 30, 40]);
        sim.quiesce(&mut rng);
        sim.send(10, 1, Target::Group(7), Class::Chat, b"to all");
        sim.quiesce(&mut rng);
        sim.send(10, 2, Target::User(20), Class::Chat, b"to one");
        sim.quiesce(&mut rng);
        sim.crash(&mut rng, false);
        sim.quiesce(&mut rng);
        // Every stream holding a message points at the same copy, as before the restart (and
        // across cores: recovery reads all logs at once).
        let first = sim.stream(10)[0].1.clone();
        for u in [20, 30, 40] {
            assert!(
                Arc::ptr_eq(&sim.stream(u)[0].1, &first),
                "{cores} cores, user {u}"
            );
        }
        assert!(Arc::ptr_eq(&sim.stream(20)[1].1, &sim.stream(10)[1].1));
    }
}

#[test]
fn group_send_reaches_every_member_once_and_merges_backlogged_messages() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut sim = Sim::new(2, 64 << 20);
    let members: Vec<u64> = (100..2100).collect();
    let g = sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.reply(g),
        Some(&ImReply::Group {
            gid: 7,
            version: 1,
            members: 2001
        })
    );
    // Ten messages queued before any core runs: the deliveries merge.
    let routes: Vec<Route> = (0..10u128)
        .map(|i| sim.send(1, 100 + i, Target::Group(7), Class::Chat, b"to all"))
        .collect();
    sim.quiesce(&mut rng);
    for (i, r) in routes.iter().enumerate() {
        assert!(
            matches!(sim.reply(*r), Some(ImReply::Sent { seq, .. }) if *seq == i as u64 + 1),
            "{:?}",
            sim.reply(*r)
        );
    }
    for &m in members.iter().step_by(97) {
        let s = sim.stream(m);
        let ids: Vec<u64> = s.iter().map(|(_, msg)| msg.id.seq).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "member {m}");
    }
    // Every fan-out was timed (the simulated clock stands still: 0 us).
    assert_eq!(sim.fanouts.len(), 10);
    let stats: Vec<ImStats> = sim.nodes.iter().map(|n| n.im.stats).collect();
    let appends: u64 = stats.iter().map(|s| s.stream_appends).sum();
    assert_eq!(appends, 10 + 10 * 2000);
    let records: u64 = stats.iter().map(|s| s.delivery_records).sum();
    assert!(
        records < 20,
        "{records} delivery records for 10 messages x 2 cores"
    );
    // A control message to a huge group is dropped; a non-member cannot send.
    let c = sim.send(1, 500, Target::Group(7), Class::Control, b"typing");
    let n = sim.send(5, 501, Target::Group(7), Class::Chat, b"hi");
    let x = sim.send(1, 502, Target::Group(8), Class::Chat, b"hi");
    sim.quiesce(&mut rng);
    assert_eq!(sim.reply(c), Some(&ImReply::Error(ImError::ControlDropped)));
    assert_eq!(sim.reply(n), Some(&ImReply::Error(ImError::NotMember)));
    assert_eq!(sim.reply(x), Some(&ImReply::Error(ImError::NoSuchGroup)));
    // The sender's stream got the refused appinfos back: a later retry may succeed.
    assert_eq!(sim.stream(1).len(), 10);
}

#[test]
fn group_changes_follow_the_rules() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut sim = Sim::new(3, 1 << 20);
    sim.group(9, 1, &[2, 3]);
    sim.quiesce(&mut rng);
    let dup = sim.group(9, 4, &[]);
    let add = sim.update(9, 2, true, &[4, 5]);
    let outsider = sim.update(9, 6, true, &[6]);
    let kick = sim.update(9, 3, false, &[2]);
    let leave = sim.update(9, 3, false, &[3]);
    let owner_out = sim.update(9, 1, false, &[1]);
    let remove = sim.update(9, 1, false, &[4]);
    sim.quiesce(&mut rng);
    assert_eq!(sim.reply(dup), Some(&ImReply::Error(ImError::GroupExists)));
    assert!(matches!(
        sim.reply(add),
        Some(ImReply::Group {
            version: 2,
            members: 5,
            ..
        })
    ));
    assert_eq!(
        sim.reply(outsider),
        Some(&ImReply::Error(ImError::NotMember))
    );
    assert_eq!(sim.reply(kick), Some(&ImReply::Error(ImError::NotOwner)));
    assert!(matches!(
        sim.reply(leave),
        Some(ImReply::Group {
            version: 3,
            members: 4,
            ..
        })
    ));
    assert_eq!(
        sim.reply(owner_out),
        Some(&ImReply::Error(ImError::NotOwner))
    );
    assert!(matches!(
        sim.reply(remove),
        Some(ImReply::Group {
            version: 4,
            members: 3,
            ..
        })
    ));
    let home = home(9, 3) as usize;
    assert_eq!(
        sim.nodes[home].im.group_members(9),
        Some((4, vec![1, 2, 5]))
    );
    // Membership survives a restart.
    sim.crash(&mut rng, false);
    assert_eq!(
        sim.nodes[home].im.group_members(9),
        Some((4, vec![1, 2, 5]))
    );
    let big: Vec<u64> = (1000..1000 + GROUP_MEMBERS_MAX as u64).collect();
    let full = sim.update(9, 1, true, &big);
    assert_eq!(sim.reply(full), Some(&ImReply::Error(ImError::GroupFull)));
    // A change that changes nothing writes no version. Behind a change still on its way to
    // the disk, it is answered once that change is durable, with its version.
    let again = sim.update(9, 1, true, &[2]);
    assert!(matches!(
        sim.reply(again),
        Some(ImReply::Group {
            version: 4,
            members: 3,
            ..
        })
    ));
    let add = sim.update(9, 1, true, &[7]);
    let same = sim.update(9, 1, true, &[7, 2]);
    let gone = sim.update(9, 1, false, &[8]);
    assert_eq!(sim.reply(same), None, "not before the add is durable");
    sim.quiesce(&mut rng);
    for r in [add, same, gone] {
        assert!(
            matches!(
                sim.reply(r),
                Some(ImReply::Group {
                    version: 5,
                    members: 4,
                    ..
                })
            ),
            "{:?}",
            sim.reply(r)
        );
    }
    assert_eq!(
        sim.nodes[home].im.group_members(9),
        Some((5, vec![1, 2, 5, 7]))
    );
}

#[test]
fn a_core_whose_log_is_behind_holds_deliveries_and_writes_them_in_send_order() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let mut sim = Sim::new(2, 4096);
    let members: Vec<u64> = (100..300).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    let sender_core = home(1, 2);
    let other = 1 - sender_core;
    // The other core's log is behind (other work filled its backlog): deliveries reaching
    // it wait there, while the sender's core goes on storing sends.
    sim.nodes[other as usize]
        .log
        .append(99, 0, 0, &[0; 5000])
        .unwrap();
    for k in 0..3u8 {
        let r = sim.send(
            1,
            1000 + u128::from(k),
            Target::Group(7),
            Class::Chat,
            &[k; 300],
        );
        for _ in 0..20 {
            sim.drain(&mut rng);
            sim.flush(sender_core);
            sim.flush(other);
            sim.step_disk(sender_core);
        }
        assert!(
            matches!(sim.reply(r), Some(ImReply::Sent { .. })),
            "send {k}: {:?}",
            sim.reply(r)
        );
    }
    assert!(sim.nodes[other as usize].im.stats.held_deliveries >= 1);
    let (mine, theirs): (Vec<u64>, Vec<u64>) =
        members.iter().partition(|&&m| home(m, 2) == sender_core);
    assert_eq!(sim.stream(mine[0]).len(), 3);
    assert!(sim.stream(theirs[0]).is_empty());
    // Once the log catches up, every member has the three messages in send order.
    sim.quiesce(&mut rng);
    for &m in &members {
        let bodies: Vec<u8> = sim.stream(m).iter().map(|(_, e)| e.body[0]).collect();
        assert_eq!(bodies, [0, 1, 2], "member {m}");
    }
}

/// A send, receipt or withdrawal as the appinfo memory knows it: (user, appinfo, kind).
type Key = (u64, u128, u8);

/// What a client asked for.
#[derive(Clone)]
struct Ask {
    to: Target,
    body: Vec<u8>,
    /// Receipts and withdrawals: the seq of the entry in the asker's own stream.
    entry: Option<u64>,
}

/// What the clients were told and asked for in a simulation run.
#[derive(Default)]
struct Ledger {
    asked: BTreeMap<Key, Ask>,
    /// Seq from every successful reply.
    acked: BTreeMap<Key, u64>,
    /// Sends to a group refused because the sender was not a member (nothing stored).
    refused: BTreeSet<Key>,
}

/// A group's memberships as the test made them: `versions[v - 1]` is the membership at
/// version v (the changes the group's core appended, durable or not; a crash cuts it back
/// to what recovery found).
struct Timeline {
    gid: u64,
    owner: u64,
    versions: Vec<BTreeSet<u64>>,
}

impl Timeline {
    fn now(&self) -> &BTreeSet<u64> {
        self.versions.last().expect("created")
    }
}

impl Sim {
    fn own(&mut self, uid: u64, seq: u64, read: bool) -> Route {
        let route = self.route();
        let k = home(uid, self.cores);
        let mut fx = Effects::default();
        let n = &mut self.nodes[k as usize];
        if read {
            n.im.ack_read(uid, seq, route, self.now * 1000, &mut n.log, &mut fx);
        } else {
            n.im.withdraw(uid, seq, route, self.now * 1000, &mut n.log, &mut fx);
        }
        self.absorb(k, fx);
        route
    }

    /// A withdrawal, answered after the cores exchange what it needs.
    fn withdraw_reply(&mut self, rng: &mut impl RngCore, uid: u64, seq: u64) -> Option<ImReply> {
        let route = self.own(uid, seq, false);
        self.quiesce(rng);
        self.reply(route).cloned()
    }

    /// The first page of a read list (answered after the cores exchange what it needs).
    fn read_list(&mut self, rng: &mut impl RngCore, uid: u64, seq: u64) -> ImReply {
        let route = self.route();
        let k = home(uid, self.cores);
        let mut fx = Effects::default();
        self.nodes[k as usize]
            .im
            .read_list(uid, seq, 0, route, &mut fx);
        self.absorb(k, fx);
        self.quiesce(rng);
        self.reply(route).cloned().expect("read lists are answered")
    }

    fn ask(&mut self, key: Key, ask: &Ask) -> Route {
        match (key.2, ask.entry) {
            (2, Some(seq)) => self.own(key.0, seq, true),
            (3, Some(seq)) => self.own(key.0, seq, false),
            _ => self.send(key.0, key.1, ask.to, Class::Chat, &ask.body),
        }
    }
}

/// Runs one random schedule; returns (requests acknowledged, receipts and withdrawals among
/// them, crashes, cold entries read back, [`Sim::history`]).
fn run_simulation(seed: u64) -> (usize, usize, usize, u64, [u64; 4]) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let cores = rng.random_range(1..=3u16);
    let backlog = if rng.random_bool(0.5) { 1 << 20 } else { 3000 };
    let mut sim = Sim::new(cores, backlog);
    // Half the runs move entries out of memory now and then, and recover them cold (R24):
    // every check below then reads them back from the disks.
    let cold = rng.random_bool(0.5);
    sim.cold_recovery = cold;
    // Half the runs write huge-group deliveries deferred, in random slices (as the server's
    // bulk task does).
    if rng.random_bool(0.5) {
        sim.set_bulk_slice(rng.random_range(1..12_000));
    }
    let users: Vec<u64> = (1..=12).collect();
    // Two small groups and a huge one (fan-out held per group and budgeted per flush).
    let huge: Vec<u64> = [1, 3, 5, 8, 9, 11]
        .into_iter()
        .chain(1000..1000 + HUGE_GROUP as u64)
        .collect();
    let groups: Vec<(u64, Vec<u64>)> = vec![
        (500, vec![1, 2, 3, 4, 5, 6, 7]),
        (501, vec![2, 4, 6, 8, 10, 12]),
        (502, huge),
    ];
    sim.huge_budget = if rng.random_bool(0.5) {
        HUGE_BYTES_PER_COMMIT
    } else {
        rng.random_range(2_000..40_000)
    };
    for n in &mut sim.nodes {
        n.im.set_huge_budget(sim.huge_budget);
    }
    for (gid, members) in &groups {
        sim.group(*gid, members[0], &members[1..]);
    }
    sim.quiesce(&mut rng);
    // The small groups' memberships change during the run (the huge one's stay).
    let mut timelines: Vec<Timeline> = groups
        .iter()
        .map(|(gid, members)| Timeline {
            gid: *gid,
            owner: members[0],
            versions: vec![members.iter().copied().collect()],
        })
        .collect();
    let mut ledger = Ledger::default();
    let mut open: Vec<(Route, Key)> = Vec::new();
    let mut next_appinfo = 1u128;
    let mut crashed = false;
    let mut crashes = 0;
    let steps = rng.random_range(200..600);
    for _ in 0..steps {
        match rng.random_range(0..110) {
            106..=107 => sim.floor_round(rng.random_range(0..cores)),
            108.. => {
                let k = rng.random_range(0..cores);
                sim.snapshot(k, &[500, 501, 502]);
            }
            104..=105 => {
                if cold {
                    sim.cool_all();
                }
            }
            0..=21 => {
                let sender = users[rng.random_range(0..users.len())];
                let to = if rng.random_bool(0.4) {
                    let t = &timelines[rng.random_range(0..timelines.len())];
                    if !t.now().contains(&sender) {
                        continue;
                    }
                    Target::Group(t.gid)
                } else {
                    Target::User(users[rng.random_range(0..users.len())])
                };
                // Sometimes a client retries an earlier request instead.
                let key = if rng.random_bool(0.15) && !ledger.asked.is_empty() {
                    let mine: Vec<Key> = ledger
                        .asked
                        .keys()
                        .filter(|k| k.0 == sender)
                        .copied()
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    mine[rng.random_range(0..mine.len())]
                } else {
                    next_appinfo += 1;
                    (sender, next_appinfo, 1)
                };
                let ask = ledger
                    .asked
                    .entry(key)
                    .or_insert_with(|| Ask {
                        to,
                        body: format!("m{}", key.1).into_bytes(),
                        entry: None,
                    })
                    .clone();
                let r = sim.ask(key, &ask);
                open.push((r, key));
            }
            22..=24 => {
                // A receipt for a message the user has (R19), or a withdrawal of one of its
                // own (R20).
                let uid = users[rng.random_range(0..users.len())];
                let read = rng.random_bool(0.6);
                let candidates: Vec<(u64, MessageRef)> = sim
                    .stream(uid)
                    .into_iter()
                    .filter(|(_, m)| m.kind == EntryKind::Message && (m.id.sender != uid) == read)
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let (seq, m) = candidates[rng.random_range(0..candidates.len())].clone();
                let (key, to) = if read {
                    let appinfo = u128::from(m.id.sender) << 64 | u128::from(m.id.seq);
                    ((uid, appinfo, 2), Target::User(m.id.sender))
                } else {
                    ((uid, m.appinfo, 3), m.to)
                };
                let ask = Ask {
                    to,
                    body: Vec::new(),
                    entry: Some(seq),
                };
                ledger.asked.entry(key).or_insert(ask.clone());
                let r = sim.ask(key, &ask);
                open.push((r, key));
            }
            25..=59 => {
                sim.step_message(&mut rng);
            }
            60..=69 => {
                let k = rng.random_range(0..cores);
                sim.flush(k);
            }
            70..=94 => {
                let k = rng.random_range(0..cores);
                sim.step_disk(k);
            }
            95..=97 => sim.tick(rng.random_range(1..50)),
            98..=102 => {
                // A member joins, leaves or is removed by the owner (small groups only).
                let t = &mut timelines[rng.random_range(0..2)];
                let uid = users[rng.random_range(0..users.len())];
                if uid == t.owner {
                    continue;
                }
                let leave = t.now().contains(&uid);
                let actor = if leave && rng.random_bool(0.5) {
                    uid
                } else {
                    t.owner
                };
                let r = sim.update(t.gid, actor, !leave, &[uid]);
                match sim.reply(r) {
                    // Refused on the spot (the log is behind): nothing appended.
                    Some(ImReply::Error(ImError::Busy)) => {}
                    Some(other) => panic!("seed {seed}: group change answered {other:?}"),
                    None => {
                        let mut next = t.now().clone();
                        if leave {
                            next.remove(&uid);
                        } else {
                            next.insert(uid);
                        }
                        t.versions.push(next);
                    }
                }
            }
            _ => {
                let torn = rng.random_bool(0.7);
                crashed = true;
                crashes += 1;
                collect(&mut sim, &mut open, &mut ledger);
                sim.crash(&mut rng, torn);
                // Changes not durable are gone; the recovered membership is the one the test
                // made at that version.
                for t in &mut timelines {
                    let n = &sim.nodes[home(t.gid, sim.cores) as usize];
                    let (version, members) = n.im.group_members(t.gid).expect("recovered");
                    assert!(version as usize <= t.versions.len(), "seed {seed}");
                    t.versions.truncate(version as usize);
                    let members: BTreeSet<u64> = members.into_iter().collect();
                    assert_eq!(&members, t.now(), "seed {seed}: group {}", t.gid);
                }
            }
        }
        collect(&mut sim, &mut open, &mut ledger);
    }
    sim.quiesce(&mut rng);
    collect(&mut sim, &mut open, &mut ledger);
    // Every client retries what it has no answer for (or was told busy) until it has one.
    for _ in 0..20 {
        let unacked: Vec<Key> = ledger
            .asked
            .keys()
            .filter(|k| !ledger.acked.contains_key(k) && !ledger.refused.contains(k))
            .copied()
            .collect();
        if unacked.is_empty() {
            break;
        }
        for key in unacked {
            let ask = ledger.asked[&key].clone();
            let r = sim.ask(key, &ask);
            open.push((r, key));
        }
        sim.quiesce(&mut rng);
        collect(&mut sim, &mut open, &mut ledger);
    }
    assert!(
        ledger
            .asked
            .keys()
            .all(|k| ledger.acked.contains_key(k) || ledger.refused.contains(k)),
        "seed {seed}: requests left unanswered"
    );
    // A sender's messages arrive in order unless a crash interrupted a delivery (it is
    // delivered again later); deliveries held while a log was behind keep their order.
    let ordered = !crashed;
    check(&mut sim, &mut rng, &ledger, &timelines, seed, ordered);
    // A clean restart changes nothing, read lists included.
    let before: Vec<Vec<(u64, MsgId)>> = users.iter().map(|&u| ids(&sim, u)).collect();
    let reads_before = read_lists(&sim, &users);
    sim.crash(&mut rng, false);
    sim.quiesce(&mut rng);
    let after: Vec<Vec<(u64, MsgId)>> = users.iter().map(|&u| ids(&sim, u)).collect();
    assert_eq!(before, after, "seed {seed}");
    assert_eq!(reads_before, read_lists(&sim, &users), "seed {seed}");
    let own = ledger.acked.keys().filter(|k| k.2 != 1).count();
    let (reads, errors) = sim
        .nodes
        .iter()
        .map(|n| n.im.cold_counts())
        .fold((0, 0), |(r, e), (a, b)| (r + a, e + b));
    assert_eq!(
        errors, 0,
        "seed {seed}: cold entries that could not be read back"
    );
    (ledger.acked.len(), own, crashes, reads, sim.history)
}

/// Every (message, readers) of the users' own messages.
fn read_lists(sim: &Sim, users: &[u64]) -> Vec<(u64, u64, Vec<u64>)> {
    let mut out = Vec::new();
    for &u in users {
        let n = &sim.nodes[home(u, sim.cores) as usize];
        for (seq, m) in sim.stream(u) {
            if m.id.sender == u && m.kind == EntryKind::Message {
                out.push((u, seq, n.im.readers(u, seq).unwrap()));
            }
        }
    }
    out
}

fn ids(sim: &Sim, uid: u64) -> Vec<(u64, MsgId)> {
    sim.stream(uid)
        .into_iter()
        .map(|(s, m)| (s, m.id))
        .collect()
}

/// Moves answers into the ledger, checking each against earlier ones.
fn collect(sim: &mut Sim, open: &mut Vec<(Route, Key)>, ledger: &mut Ledger) {
    open.retain(|(route, key)| {
        let Some(reply) = sim.reply(*route) else {
            return true;
        };
        match reply {
            ImReply::Sent { seq, .. } => {
                let prev = ledger.acked.insert(*key, *seq);
                assert!(
                    prev.map_or(true, |p| p == *seq),
                    "{key:?} answered with seq {prev:?} then {seq}"
                );
            }
            // Not stored (yet): the client retries until it has the stored result.
            ImReply::Error(ImError::Busy) | ImReply::Accepted { .. } => {}
            // A send to a group the sender is not a member of (yet, or any more).
            ImReply::Error(ImError::NotMember) => {
                ledger.refused.insert(*key);
            }
            other => panic!("unexpected answer {other:?} to {key:?}"),
        }
        false
    });
    sim.replies.clear();
}

fn check(
    sim: &mut Sim,
    rng: &mut impl RngCore,
    ledger: &Ledger,
    timelines: &[Timeline],
    seed: u64,
    ordered: bool,
) {
    // Who holds each message, among the users whose streams are checked (1..=12).
    let mut holders: BTreeMap<MsgId, BTreeSet<u64>> = BTreeMap::new();
    for uid in 1..=12u64 {
        for (_, m) in sim.stream(uid) {
            if m.id.sender != uid {
                holders.entry(m.id).or_default().insert(uid);
            }
        }
    }
    // Expected: each acked request once in the asker's stream at its acked seq, once in each
    // recipient's stream, and nowhere else. A message to a group goes to the members at one
    // membership version the group had (the sender among them); a receipt to its message's
    // sender; a withdrawal to exactly the recipients of its message (R20), also those who
    // left the group since.
    let mut expected: BTreeMap<u64, Vec<MsgId>> = BTreeMap::new();
    let mut readers: BTreeMap<MsgId, Vec<u64>> = BTreeMap::new();
    // Every recipient of each message (all members, not only users 1..=12).
    let mut recipients: BTreeMap<MsgId, BTreeSet<u64>> = BTreeMap::new();
    let mut withdrawals = Vec::new();
    for (&(sender, appinfo, kind), &seq) in &ledger.acked {
        let id = MsgId { sender, seq };
        let ask = &ledger.asked[&(sender, appinfo, kind)];
        let s = sim.stream(sender);
        let (_, m) = &s[(seq - 1) as usize];
        assert_eq!(m.id, id, "seed {seed}");
        assert_eq!(m.kind as u8, kind, "seed {seed}");
        assert_eq!(
            (&m.to, &*m.body, m.appinfo),
            (&ask.to, &ask.body[..], appinfo)
        );
        expected.entry(sender).or_default().push(id);
        if let Some(entry) = ask.entry {
            let (_, original) = &s[(entry - 1) as usize];
            assert_eq!(m.refer, Some(original.id), "seed {seed}");
            if m.kind == EntryKind::Read {
                readers.entry(original.id).or_default().push(sender);
            } else {
                assert_eq!(
                    m.sent_ms, original.sent_ms,
                    "a withdrawal carries the send time"
                );
                withdrawals.push((id, original.id));
                continue;
            }
        }
        let to: BTreeSet<u64> = match ask.to {
            Target::User(u) => [u].into_iter().filter(|&u| u != sender).collect(),
            Target::Group(g) => {
                let t = timelines.iter().find(|t| t.gid == g).unwrap();
                let held = holders.get(&id).cloned().unwrap_or_default();
                let at = t.versions.iter().find(|v| {
                    v.contains(&sender)
                        && v.iter()
                            .filter(|&&u| u <= 12 && u != sender)
                            .eq(held.iter())
                });
                let at = at.unwrap_or_else(|| {
                    panic!("seed {seed}: {id} to group {g} reached {held:?}, no membership of it")
                });
                at.iter().copied().filter(|&u| u != sender).collect()
            }
        };
        recipients.insert(id, to);
    }
    for (id, original) in withdrawals {
        let to = recipients[&original].clone();
        recipients.insert(id, to);
    }
    for (id, to) in &recipients {
        for &r in to.iter().filter(|&&r| r <= 12) {
            expected.entry(r).or_default().push(*id);
        }
    }
    // Read lists (R19): the readers, and as unread exactly the other recipients.
    for uid in 1..=12u64 {
        for (seq, m) in sim.stream(uid) {
            if m.id.sender != uid || m.kind != EntryKind::Message {
                continue;
            }
            let mut want = readers.get(&m.id).cloned().unwrap_or_default();
            want.sort_unstable();
            let unread: Vec<u64> = recipients[&m.id]
                .iter()
                .copied()
                .filter(|r| want.binary_search(r).is_err())
                .collect();
            let ImReply::Readers {
                read,
                unread: n_unread,
                from: 0,
                uids,
                ..
            } = sim.read_list(rng, uid, seq)
            else {
                panic!("seed {seed}: read list of {}", m.id);
            };
            assert_eq!(
                (read as usize, n_unread as usize),
                (want.len(), unread.len()),
                "seed {seed}: read list of {}",
                m.id
            );
            assert_eq!(
                uids[..want.len()],
                want[..],
                "seed {seed}: readers of {}",
                m.id
            );
            assert_eq!(
                uids[want.len()..],
                unread[..],
                "seed {seed}: unread of {}",
                m.id
            );
        }
    }
    for uid in 1..=12u64 {
        let s = sim.stream(uid);
        for (i, (seq, _)) in s.iter().enumerate() {
            assert_eq!(
                *seq,
                i as u64 + 1,
                "seed {seed}: seqs of {uid} are contiguous"
            );
        }
        let mut got: Vec<MsgId> = s.iter().map(|(_, m)| m.id).collect();
        got.sort();
        let mut want = expected.remove(&uid).unwrap_or_default();
        want.sort();
        assert_eq!(got, want, "seed {seed}: stream of user {uid}");
        // Each sender's messages to one target keep their order in every stream.
        let mut last: BTreeMap<(u64, Target), u64> = BTreeMap::new();
        for (_, m) in &s {
            let prev = last.insert((m.id.sender, m.to), m.id.seq).unwrap_or(0);
            assert!(
                !ordered || prev < m.id.seq,
                "seed {seed}: {} out of order in {uid}",
                m.id
            );
        }
    }
}

#[test]
fn random_schedules_with_crashes_lose_and_duplicate_nothing() {
    let (mut acked, mut own, mut crashes, mut cold) = (0, 0, 0, 0);
    let mut history = [0u64; 4];
    for seed in 0..300 {
        let (a, o, c, r, h) = run_simulation(seed);
        acked += a;
        own += o;
        crashes += c;
        cold += r;
        for (t, x) in history.iter_mut().zip(h) {
            *t += x;
        }
    }
    // Floor rounds ran and let memberships go; snapshots were written and let a simulated
    // compaction drop the group records they cover (the checks read every message's
    // recipients at its version after that).
    assert!(
        history[0] > 300 && history[1] > 100 && history[2] > 500 && history[3] > 1000,
        "rounds, forgotten, snapshots, dropped records: {history:?}"
    );
    // The schedules did something: many sends, receipts and withdrawals, many crashes, and
    // many entries read back from the disks after they left memory.
    assert!(
        acked > 10_000 && own > 1_000 && crashes > 300 && cold > 10_000,
        "{acked} requests ({own} receipts and withdrawals), {crashes} crashes, {cold} cold reads"
    );
}

#[test]
fn receipts_and_withdrawals_refuse_what_they_must() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    let mut sim = Sim::new(2, 1 << 20);
    sim.send(1, 10, Target::User(2), Class::Chat, b"hello");
    sim.quiesce(&mut rng);
    // User 2 holds 1's message at seq 1; user 1 holds it at seq 1 too (its own).
    let own_ack = sim.own(1, 1, true);
    let none = sim.own(2, 9, true);
    let not_mine = sim.own(2, 1, false);
    sim.quiesce(&mut rng);
    for r in [own_ack, none, not_mine] {
        assert_eq!(sim.reply(r), Some(&ImReply::Error(ImError::NoSuchMessage)));
    }
    let read = sim.own(2, 1, true);
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(read),
        Some(ImReply::Sent {
            seq: 2,
            duplicate: false,
            ..
        })
    ));
    let again = sim.own(2, 1, true);
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(again),
        Some(ImReply::Sent {
            seq: 2,
            duplicate: true,
            ..
        })
    ));
    let home1 = home(1, 2) as usize;
    assert_eq!(sim.nodes[home1].im.readers(1, 1), Ok(vec![2]));
    // The receipt is in both streams, referring to the message.
    let s1 = sim.stream(1);
    assert_eq!(s1.len(), 2);
    assert_eq!(
        (s1[1].1.kind, s1[1].1.refer),
        (EntryKind::Read, Some(MsgId { sender: 1, seq: 1 }))
    );
    // A withdrawal after 24 hours is refused; within them it reaches both streams.
    sim.now += WITHDRAW_WINDOW_MS + 1;
    let late = sim.own(1, 1, false);
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.reply(late),
        Some(&ImReply::Error(ImError::WithdrawExpired))
    );
    sim.now -= 2;
    let w = sim.own(1, 1, false);
    sim.quiesce(&mut rng);
    assert!(matches!(sim.reply(w), Some(ImReply::Sent { seq: 3, .. })));
    let s2 = sim.stream(2);
    let last = &s2.last().unwrap().1;
    assert_eq!(
        (last.kind, last.refer, last.appinfo),
        (EntryKind::Withdraw, Some(MsgId { sender: 1, seq: 1 }), 10)
    );
    assert_eq!(
        last.sent_ms, s1[0].1.sent_ms,
        "it carries the original send time"
    );
}

#[test]
fn a_read_list_pages_through_readers_then_the_unread_at_the_send() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
    let mut sim = Sim::new(2, 64 << 20);
    let members: Vec<u64> = (100..100 + 9_000).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    sim.send(1, 1, Target::Group(7), Class::Chat, b"all");
    sim.quiesce(&mut rng);
    // After the send one member leaves and another joins; three members read it.
    sim.update(7, 1, false, &[150]);
    sim.update(7, 1, true, &[20_000]);
    sim.quiesce(&mut rng);
    for reader in [9_099u64, 100, 150] {
        sim.own(reader, 1, true);
    }
    sim.quiesce(&mut rng);
    let home1 = home(1, 2) as usize;
    let mut got = Vec::new();
    let mut from = 0;
    loop {
        let route = sim.route();
        let mut fx = Effects::default();
        sim.nodes[home1].im.read_list(1, 1, from, route, &mut fx);
        sim.absorb(home1 as u16, fx);
        sim.quiesce(&mut rng);
        let Some(ImReply::Readers {
            read: 3,
            unread: 8_997,
            from: f,
            uids,
            ..
        }) = sim.reply(route).cloned()
        else {
            panic!("{:?}", sim.reply(route));
        };
        assert_eq!(f, from);
        assert!(uids.len() <= READ_LIST_PAGE);
        if uids.is_empty() {
            break;
        }
        from += uids.len() as u32;
        got.extend(uids);
    }
    assert_eq!(from, 9_000);
    // Readers first (the member who left since among them), then everyone else who had it
    // at the send: not the sender, not the member who joined after.
    assert_eq!(got[..3], [100, 150, 9_099]);
    let unread: Vec<u64> = (101..9_099).filter(|&u| u != 150).collect();
    assert_eq!(got[3..], unread[..]);
    // A message of someone else is not the user's to ask about.
    let route = sim.route();
    let mut fx = Effects::default();
    let home100 = home(100, 2) as usize;
    sim.nodes[home100].im.read_list(100, 1, 0, route, &mut fx);
    sim.absorb(home100 as u16, fx);
    assert_eq!(
        sim.reply(route),
        Some(&ImReply::Error(ImError::NoSuchMessage))
    );
}

#[test]
fn huge_group_member_appends_follow_a_token_bucket_refilled_with_time() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    let mut sim = Sim::new(1, 64 << 20);
    let members: Vec<u64> = (100..100 + 10_000).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    // 1 M appends/s, at most 4,000 at once; the bucket starts full.
    sim.nodes[0].im.set_huge_rate(1_000_000, 4_000);
    sim.send(1, 1, Target::Group(7), Class::Chat, b"to all");
    let written = |sim: &Sim| sim.nodes[0].im.huge_queue.front().map_or(0, |r| r.next);
    // The send's record, then its delivery: the first chunk spends the full bucket.
    while written(&sim) == 0 {
        sim.drain(&mut rng);
        sim.flush(0);
        sim.step_disk(0);
    }
    assert_eq!(written(&sim), 4_000);
    // Batches while no time passes: one member each (progress), not more.
    for _ in 0..3 {
        let before = written(&sim);
        while written(&sim) == before {
            sim.step_disk(0);
        }
        assert_eq!(written(&sim), before + 1);
    }
    // 2 ms later a batch may write 2,000 more (plus the one-member floor's rounding).
    sim.now += 2;
    let before = written(&sim);
    while written(&sim) == before {
        sim.step_disk(0);
    }
    let step = written(&sim) - before;
    assert!((2_000..=2_002).contains(&step), "{step}");
    // Everything arrives in the end.
    sim.nodes[0].im.set_huge_rate(u64::MAX, HUGE_APPENDS_BURST);
    sim.quiesce(&mut rng);
    assert!(members.iter().all(|&m| sim.stream(m).len() == 1));
}

#[test]
fn a_flooded_huge_group_is_held_merged_and_budgeted_but_loses_nothing() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
    let mut sim = Sim::new(2, 64 << 20);
    sim.huge_budget = 6_000;
    for n in &mut sim.nodes {
        n.im.set_huge_budget(sim.huge_budget);
    }
    let members: Vec<u64> = (100..100 + HUGE_GROUP as u64 + 500).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    let sender_home = home(1, 2) as usize;
    let mut held_seen = 0;
    for i in 0..40u128 {
        sim.send(1, 1000 + i, Target::Group(7), Class::Chat, b"flood");
        // A chat between two users outside the group, interleaved.
        sim.send(50, 5000 + i, Target::User(51), Class::Chat, b"hi");
        sim.drain(&mut rng);
        for k in 0..2 {
            sim.flush(k);
            sim.step_disk(k);
        }
        held_seen = held_seen.max(sim.nodes[sender_home].im.held());
    }
    sim.quiesce(&mut rng);
    assert!(held_seen > 0, "the group's fan-out was never held");
    for &m in members.iter().step_by(211) {
        let seqs: Vec<u64> = sim.stream(m).iter().map(|(_, msg)| msg.id.seq).collect();
        assert_eq!(
            seqs,
            (1..=40).collect::<Vec<_>>(),
            "member {m}: all, once, in order"
        );
    }
    assert_eq!(sim.stream(51).len(), 40);
    let records: u64 = sim.nodes.iter().map(|n| n.im.stats.delivery_records).sum();
    let merged: u64 = sim.nodes.iter().map(|n| n.im.stats.merged_messages).sum();
    assert!(
        merged > 0,
        "held messages were not merged ({records} records)"
    );
    assert!(sim.nodes.iter().all(|n| n.im.is_idle()));
}

#[test]
fn huge_group_records_and_fanout_bookkeeping_are_bulk_chats_are_not() {
    // What the commit loop may hold back for a chat's commit (R22): a huge group's SENT and
    // member deliveries and every FANOUT_DONE; a chat's SENT and delivery never.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut sim = Sim::new(1, 64 << 20);
    let members: Vec<u64> = (100..100 + HUGE_GROUP as u64).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    let only_bulk = |sim: &Sim| sim.nodes[0].log.holds_only_bulk();
    // Runs the disk until a batch completes, then hands messages on and flushes.
    let commit = |sim: &mut Sim, rng: &mut Xoshiro256PlusPlus| {
        assert!(sim.step_disk(0), "a batch to write");
        assert!(sim.step_disk(0), "and to complete");
        sim.drain(rng);
        sim.flush(0);
    };
    let chat = sim.send(50, 1, Target::User(51), Class::Chat, b"hi");
    sim.drain(&mut rng);
    assert!(!only_bulk(&sim), "a chat's SENT is urgent");
    commit(&mut sim, &mut rng);
    assert!(sim.reply(chat).is_some());
    assert!(!only_bulk(&sim), "a chat's delivery is urgent");
    commit(&mut sim, &mut rng);
    assert_eq!(sim.stream(51).len(), 1);
    assert!(only_bulk(&sim), "FANOUT_DONE is bulk");
    commit(&mut sim, &mut rng);
    let group = sim.send(1, 2, Target::Group(7), Class::Chat, b"all");
    // The expansion, then its answer.
    while sim.drain(&mut rng) {}
    assert!(only_bulk(&sim), "a huge group's SENT is bulk");
    commit(&mut sim, &mut rng);
    assert!(sim.reply(group).is_some());
    assert!(only_bulk(&sim), "a huge group's delivery is bulk");
    sim.quiesce(&mut rng);
    assert_eq!(sim.stream(members[0]).len(), 1);
}

#[test]
fn api_and_app_messages_are_rate_limited_per_sender() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut sim = Sim::new(1, 64 << 20);
    let routes: Vec<Route> = (0..MACHINE_BURST as u128 + 50)
        .map(|i| sim.send(1, i, Target::User(2), Class::Api, b"notice"))
        .collect();
    // A person chatting is not limited, and neither is another API sender.
    let chat = sim.send(1, 9_999, Target::User(2), Class::Chat, b"hi");
    let other = sim.send(3, 1, Target::User(2), Class::App, b"bot");
    sim.quiesce(&mut rng);
    let busy = routes
        .iter()
        .filter(|r| sim.reply(**r) == Some(&ImReply::Error(ImError::Busy)))
        .count();
    assert_eq!(busy, 50);
    assert!(matches!(sim.reply(chat), Some(ImReply::Sent { .. })));
    assert!(matches!(sim.reply(other), Some(ImReply::Sent { .. })));
    // A second later the bucket has refilled by the rate.
    sim.now += 1000;
    let later: Vec<Route> = (0..MACHINE_PER_SECOND as u128 + 1)
        .map(|i| sim.send(1, 10_000 + i, Target::User(2), Class::App, b"notice"))
        .collect();
    sim.quiesce(&mut rng);
    let busy = later
        .iter()
        .filter(|r| sim.reply(**r) == Some(&ImReply::Error(ImError::Busy)))
        .count();
    assert_eq!(busy, 1);
}

fn stamped(sender: u64, seq: u64, sent_ms: u64) -> Message {
    Message {
        id: MsgId { sender, seq },
        kind: EntryKind::Message,
        refer: None,
        appinfo: u128::from(seq),
        to: Target::User(sender),
        class: Class::Chat,
        sent_ms,
        body: Box::from(&b"x"[..]),
    }
}

/// A recovery of one core from SENT records (sender 5, to itself) and stream heads.
fn recover(sent: &[(u64, u64)], heads: &[u64], cutoff_ms: u64) -> Result<ImCore, String> {
    let mut r = ImRecovery::new();
    for &(seq, sent_ms) in sent {
        let mut p = Vec::new();
        crate::im::record::encode_sent(&stamped(5, seq, sent_ms), None, &mut p);
        r.replay(KIND_SENT, 5, seq, &p, ColdRef::NONE)?;
        r.replay(KIND_FANOUT_DONE, 5, seq, &[], ColdRef::NONE)?;
    }
    for &seq in heads {
        r.replay(KIND_STREAM_HEAD, 5, seq, &[], ColdRef::NONE)?;
    }
    Ok(r.finish(1, 10_000, cutoff_ms)?.remove(0))
}

fn seqs(core: &ImCore) -> (u64, Vec<u64>) {
    let page = core.sync(5, 0, 1000);
    (page.max_seq, page.entries.iter().map(|(s, _)| *s).collect())
}

#[test]
fn streams_go_on_after_compaction_dropped_their_start() {
    // Only a head: the stream is empty and goes on at 8.
    assert_eq!(seqs(&recover(&[], &[7], 0).unwrap()), (7, vec![]));
    // A head, then newer records (and records at or below the head are ignored).
    let c = recover(&[(6, 100), (8, 100), (9, 100)], &[7], 0).unwrap();
    assert_eq!(seqs(&c), (9, vec![8, 9]));
    // No head: the oldest records went, the stream starts at its first record.
    assert_eq!(
        seqs(&recover(&[(10, 100), (11, 100)], &[], 0).unwrap()).1,
        vec![10, 11]
    );
    // A gap after entries that all expired (a record kept for an open fan-out): accepted,
    // the expired ones dropped; a gap after a retained entry is damage.
    let c = recover(&[(3, 1), (10, 1000), (11, 1000)], &[], 500).unwrap();
    assert_eq!(seqs(&c), (11, vec![10, 11]));
    let e = recover(&[(3, 1), (10, 1000)], &[], 0).err().expect("a gap");
    assert!(e.contains("seq 10 where 4 belongs"), "{e}");
    let e = recover(&[(4, 1), (4, 1)], &[], 0).err().expect("a double");
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn retention_trims_the_front_of_streams_only() {
    let mut c = recover(&[(1, 100), (2, 900), (3, 100), (4, 900)], &[], 0).unwrap();
    // Entry 3 is old but behind a retained one: the stream stays one run of seqs.
    assert_eq!((c.kept.live(), c.kept.slots()), (4, 4));
    assert_eq!(c.expire(500), 1);
    assert_eq!(seqs(&c), (4, vec![2, 3, 4]));
    // The expired entry's message is let go with it.
    assert_eq!((c.kept.live(), c.kept.slots()), (3, 3));
    c.check_kept();
    assert_eq!(c.expire(1000), 3);
    assert_eq!(seqs(&c), (4, vec![]));
    assert_eq!((c.kept.live(), c.kept.slots()), (0, 0));
    assert_eq!(c.head(5), Some(4));
    assert_eq!(c.stats.expired, 4);
}

#[test]
fn a_full_log_parks_sends_and_stores_them_in_order_later() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut sim = Sim::new(1, 4096);
    // Other work fills the log's backlog: the sends are accepted and parked (R23).
    sim.nodes[0].log.append(99, 0, 0, &[0; 4000]).unwrap();
    let r1 = sim.send(1, 10, Target::User(2), Class::Chat, b"first");
    let accepted = match sim.reply(r1) {
        Some(ImReply::Accepted { accepted_ms }) => *accepted_ms,
        other => panic!("{other:?}"),
    };
    // The user's next send waits behind its parked one, even if the log had room.
    let r2 = sim.send(1, 11, Target::User(2), Class::Chat, b"second");
    assert!(matches!(sim.reply(r2), Some(ImReply::Accepted { .. })));
    // A retry while parked answers the same; another body under the appinfo is refused.
    let again = sim.send(1, 10, Target::User(2), Class::Chat, b"first");
    assert_eq!(
        sim.reply(again),
        Some(&ImReply::Accepted {
            accepted_ms: accepted
        })
    );
    let other = sim.send(1, 10, Target::User(2), Class::Chat, b"else");
    assert_eq!(
        sim.reply(other),
        Some(&ImReply::Error(ImError::AppinfoReused))
    );
    assert_eq!(sim.nodes[0].im.parked(), 2);
    // The log catches up; the parked sends are stored in order, with their acceptance time.
    sim.quiesce(&mut rng);
    assert_eq!(sim.nodes[0].im.parked(), 0);
    for uid in [1, 2] {
        let bodies: Vec<Vec<u8>> = sim
            .stream(uid)
            .iter()
            .map(|(_, m)| m.body.to_vec())
            .collect();
        assert_eq!(
            bodies,
            vec![b"first".to_vec(), b"second".to_vec()],
            "user {uid}"
        );
    }
    assert_eq!(sim.stream(1)[0].1.sent_ms, accepted);
    // Now a retry answers the stored result.
    let done = sim.send(1, 10, Target::User(2), Class::Chat, b"first");
    assert!(matches!(
        sim.reply(done),
        Some(ImReply::Sent {
            seq: 1,
            duplicate: true,
            ..
        })
    ));
    assert_eq!(sim.nodes[0].im.stats.parked, 2);
}

#[test]
fn a_parked_send_is_dropped_after_its_time_and_can_be_sent_again() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(10);
    let mut sim = Sim::new(1, 4096);
    sim.nodes[0].im.set_limits(WorkLimits {
        park_for_ms: 1_000,
        ..WorkLimits::default()
    });
    sim.nodes[0].log.append(99, 0, 0, &[0; 4000]).unwrap();
    let r = sim.send(1, 10, Target::User(2), Class::Chat, b"m");
    assert!(matches!(sim.reply(r), Some(ImReply::Accepted { .. })));
    // The disk never takes the batch: retries fail, then the send is given up.
    for _ in 0..30 {
        sim.tick(100);
    }
    assert_eq!(sim.nodes[0].im.parked(), 0);
    assert_eq!(sim.nodes[0].im.stats.park_dropped, 1);
    // The client, not finding its message, sends it again with its appinfo: stored once.
    sim.quiesce(&mut rng);
    let r = sim.send(1, 10, Target::User(2), Class::Chat, b"m");
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(r),
        Some(ImReply::Sent {
            seq: 1,
            duplicate: false,
            ..
        })
    ));
    assert_eq!(sim.stream(2).len(), 1);
}

#[test]
fn one_user_or_tenant_cannot_take_more_than_its_share_of_a_core() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut sim = Sim::new(1, 1 << 20);
    // 10 sends in progress per core; a user, or a tenant (uid >> 8), 20% of it: 2.
    sim.nodes[0].im.set_limits(WorkLimits {
        work_max: 10,
        share_percent: 20,
        tenant_shift: Some(8),
        ..WorkLimits::default()
    });
    let a = sim.send(1, 1, Target::User(9), Class::Chat, b"1");
    let b = sim.send(1, 2, Target::User(9), Class::Chat, b"2");
    let c = sim.send(1, 3, Target::User(9), Class::Chat, b"3");
    assert_eq!(sim.reply(c), Some(&ImReply::Error(ImError::Busy)));
    // User 2 is in user 1's tenant (0): its share is taken too. User 300 (tenant 1) is not.
    let d = sim.send(2, 4, Target::User(9), Class::Chat, b"4");
    assert_eq!(sim.reply(d), Some(&ImReply::Error(ImError::Busy)));
    let e = sim.send(300, 5, Target::User(9), Class::Chat, b"5");
    assert_eq!(sim.reply(e), None, "in flight until durable");
    assert_eq!(sim.nodes[0].im.stats.work_refused, 2);
    // Once durable, the work is given back.
    sim.quiesce(&mut rng);
    for r in [a, b, e] {
        assert!(matches!(sim.reply(r), Some(ImReply::Sent { .. })), "{r:?}");
    }
    let c = sim.send(1, 3, Target::User(9), Class::Chat, b"3");
    sim.quiesce(&mut rng);
    assert!(matches!(sim.reply(c), Some(ImReply::Sent { seq: 3, .. })));
}

/// The streams of some users, as their clients would read them.
fn streams(sim: &Sim, users: &[u64]) -> Vec<Vec<(u64, MessageRef)>> {
    users.iter().map(|&u| sim.stream(u)).collect()
}

#[test]
fn cold_entries_read_back_as_they_were_for_pages_receipts_withdrawals_and_retries() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let mut sim = Sim::new(2, 1 << 20);
    sim.group(500, 1, &[2, 3]);
    sim.quiesce(&mut rng);
    sim.send(1, 10, Target::User(2), Class::Chat, b"one");
    sim.send(2, 11, Target::Group(500), Class::Chat, b"two");
    sim.send(3, 12, Target::User(1), Class::Chat, b"three");
    sim.quiesce(&mut rng);
    let users = [1, 2, 3];
    let before = streams(&sim, &users);
    // 1: one, two, three; 2: one, two; 3: two, three.
    assert_eq!(sim.cool_all(), 7);
    for n in &sim.nodes {
        assert_eq!(n.im.entry_counts().0, 0, "nothing durable stays in memory");
    }
    assert_eq!(
        streams(&sim, &users),
        before,
        "pages read back the same entries"
    );
    // A page stops after COLD_PAGE_MAX cold entries; the client pulls on from its end.
    let k = home(1, 2) as usize;
    assert_eq!(sim.nodes[k].im.sync_plan(1, 0, 2).entries.len(), 2);
    // A retried send is confirmed against its cold entry: the original answer, nothing new.
    let retry = sim.send(1, 10, Target::User(2), Class::Chat, b"one");
    sim.quiesce(&mut rng);
    assert!(matches!(
        sim.reply(retry),
        Some(ImReply::Sent {
            seq: 1,
            duplicate: true,
            ..
        })
    ));
    assert_eq!(streams(&sim, &users), before);
    let seq_of = |stream: &[(u64, MessageRef)], body: &[u8]| {
        stream
            .iter()
            .find(|(_, m)| &*m.body == body)
            .map(|(seq, _)| *seq)
            .expect("there")
    };
    // A receipt for a cold entry: user 2 read 1's message.
    let ack = sim.own(2, seq_of(&before[1], b"one"), true);
    sim.quiesce(&mut rng);
    assert!(
        matches!(sim.reply(ack), Some(ImReply::Sent { .. })),
        "{:?}",
        sim.reply(ack)
    );
    assert_eq!(sim.nodes[k].im.readers(1, 1), Ok(vec![2]));
    // A withdrawal of a cold message: user 3's own, which reaches user 1.
    let three = seq_of(&before[2], b"three");
    let w = sim.withdraw_reply(&mut rng, 3, three);
    assert!(matches!(w, Some(ImReply::Sent { .. })), "{w:?}");
    let last = sim.stream(1).last().expect("entries").1.clone();
    assert_eq!(last.kind, EntryKind::Withdraw);
    assert_eq!(
        last.refer,
        Some(MsgId {
            sender: 3,
            seq: three
        })
    );
    let (reads, errors) = sim
        .nodes
        .iter()
        .map(|n| n.im.cold_counts())
        .fold((0, 0), |(r, e), (a, b)| (r + a, e + b));
    assert!(reads > 7 && errors == 0, "{reads} reads, {errors} errors");
}

#[test]
fn cold_entries_that_cannot_be_read_end_the_page_and_are_counted() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(22);
    let mut sim = Sim::new(1, 1 << 20);
    sim.send(1, 10, Target::User(2), Class::Chat, b"one");
    sim.quiesce(&mut rng);
    sim.cool_all();
    // A reader over empty disks: nothing can be read back.
    sim.nodes[0]
        .im
        .set_cold_source(Box::new(SimCold(std::sync::Arc::new(vec![Vec::new()]))));
    let page = sim.nodes[0].im.sync(2, 0, 10);
    assert!(page.entries.is_empty());
    assert_eq!(page.max_seq, 1, "the stream still says how far it goes");
    assert_eq!(sim.nodes[0].im.cold_counts(), (1, 1));
    // A receipt for it is refused as for a message that is not there (nothing appended).
    let ack = sim.own(2, 1, true);
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.reply(ack),
        Some(&ImReply::Error(ImError::NoSuchMessage))
    );
}

#[test]
fn retention_drops_cold_entries_by_their_segments() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
    let mut sim = Sim::new(1, 1 << 20);
    sim.send(1, 10, Target::User(2), Class::Chat, b"one");
    sim.quiesce(&mut rng);
    sim.cool_all();
    sim.send(1, 11, Target::User(2), Class::Chat, b"two");
    sim.quiesce(&mut rng);
    let im = &mut sim.nodes[0].im;
    // A cutoff before every send: only a segment said to be expired takes cold entries.
    assert_eq!(im.expire_segments(0, |_| false), 0);
    assert_eq!(im.expire_segments(0, |at| at.position().segment == 0), 2);
    let page = im.sync(2, 0, 10);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].0, 2, "seqs go on where they were");
    assert_eq!(&*page.entries[0].1.body, b"two");
}

#[test]
fn recovery_keeps_messages_older_than_the_hot_window_out_of_memory() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(24);
    let mut sim = Sim::new(2, 1 << 20);
    sim.group(500, 1, &[2, 3, 4]);
    sim.quiesce(&mut rng);
    for i in 0..20u64 {
        let to = if i % 3 == 0 {
            Target::Group(500)
        } else {
            Target::User(1 + (i % 4))
        };
        sim.send(
            1 + (i + 1) % 4,
            100 + u128::from(i),
            to,
            Class::Chat,
            b"old",
        );
    }
    sim.quiesce(&mut rng);
    let users = [1, 2, 3, 4];
    let before = streams(&sim, &users);
    // Two days later (beyond the dedupe window, so recovery keeps none of them) the server
    // restarts with a hot window that ended before now.
    sim.now += 2 * DEDUPE_WINDOW_MS;
    sim.cold_recovery = true;
    sim.crash(&mut rng, false);
    sim.quiesce(&mut rng);
    for n in &sim.nodes {
        assert_eq!(
            n.im.entry_counts().0,
            0,
            "no message of two days ago in memory"
        );
    }
    assert_eq!(streams(&sim, &users), before);
    // The streams go on, the new entries in memory.
    sim.send(2, 999, Target::User(3), Class::Chat, b"new");
    sim.quiesce(&mut rng);
    let s3 = sim.stream(3);
    assert_eq!(s3.len(), before[2].len() + 1);
    assert_eq!(&*s3.last().unwrap().1.body, b"new");
    let hot: u64 = sim.nodes.iter().map(|n| n.im.entry_counts().0).sum();
    assert_eq!(hot, 2);
}

#[test]
fn deferred_huge_deliveries_wait_for_their_slices_and_keep_to_them() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(31);
    let mut sim = Sim::new(1, 1 << 20);
    let members: Vec<u64> = (100..100 + HUGE_GROUP as u64).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    sim.nodes[0].im.set_huge_deferred(true);
    // Runs the core without the bulk task: no slice is written.
    let run = |sim: &mut Sim, rng: &mut Xoshiro256PlusPlus| {
        for _ in 0..10 {
            sim.drain(rng);
            sim.flush(0);
            sim.step_disk(0);
        }
    };
    let r = sim.send(1, 5, Target::Group(7), Class::Chat, b"big");
    run(&mut sim, &mut rng);
    assert!(matches!(sim.reply(r), Some(ImReply::Sent { .. })));
    // Nobody wrote a slice: the members have nothing yet, and the engine says it could.
    assert!(sim.stream(100).is_empty());
    assert!(sim.nodes[0].im.huge_writable());
    assert_eq!(sim.nodes[0].im.huge_backlog(), 1, "queued for the budget");
    // A second message waits behind the first's fan-out: held, and counted as well.
    let r2 = sim.send(1, 6, Target::Group(7), Class::Chat, b"bigger");
    run(&mut sim, &mut rng);
    assert!(matches!(sim.reply(r2), Some(ImReply::Sent { .. })));
    assert_eq!(sim.nodes[0].im.huge_backlog(), 2, "one queued, one held");
    let n = &mut sim.nodes[0];
    let before = n.im.stats.stream_appends;
    // 500 members, the sender (user 1, the first of them) among them: it has its own copy.
    assert!(n.im.write_huge_slice(&mut n.log, 500));
    assert_eq!(n.im.stats.stream_appends - before, 499);
    // A slice smaller than one member's share still writes one member.
    assert!(n.im.write_huge_slice(&mut n.log, 0));
    assert_eq!(n.im.stats.stream_appends - before, 500);
    // The rest goes in slices; every member gets the message once.
    sim.set_bulk_slice(700);
    sim.quiesce(&mut rng);
    for &m in &members {
        let s = sim.stream(m);
        assert_eq!(s.len(), 2, "member {m}");
        assert_eq!(&*s[0].1.body, b"big");
        assert_eq!(&*s[1].1.body, b"bigger");
    }
    assert!(!sim.nodes[0].im.huge_writable());
    assert_eq!(sim.nodes[0].im.huge_backlog(), 0, "every copy written");
}

#[test]
fn group_history_is_forgotten_only_below_what_messages_still_need() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let mut sim = Sim::new(2, 4096);
    sim.always_compact = true;
    let gid = 500;
    let g_home = home(gid, 2);
    // The sender of the parked message lives on the other core than the group.
    let away: Vec<u64> = (1..100).filter(|&u| home(u, 2) != g_home).collect();
    let (owner, sender, gone, joiner) = (away[3], away[0], away[1], away[2]);
    let read_list = |sim: &mut Sim, rng: &mut Xoshiro256PlusPlus, uid, seq| -> (u32, Vec<u64>) {
        match sim.read_list(rng, uid, seq) {
            ImReply::Readers { read, uids, .. } => (read, uids),
            other => panic!("{other:?}"),
        }
    };
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let history = |sim: &Sim| sim.nodes[g_home as usize].im.group_history(gid).unwrap();
    sim.group(gid, owner, &[sender, gone]); // v1
    sim.quiesce(&mut rng);
    sim.send(owner, 1, Target::Group(gid), Class::Chat, b"at v1");
    sim.quiesce(&mut rng);
    sim.update(gid, owner, false, &[gone]); // v2: {owner, sender}
    sim.quiesce(&mut rng);
    // A message sent at v1 still needs who was a member then.
    sim.floor_round(g_home);
    sim.quiesce(&mut rng);
    assert_eq!(history(&sim), (1, 1));
    let owner_seq = sim.stream(owner)[0].0;
    assert_eq!(
        read_list(&mut sim, &mut rng, owner, owner_seq),
        (0, sorted(vec![gone, sender]))
    );
    // Retention drops it: nothing refers to v1 any more, so the ended membership goes.
    sim.tick(10);
    let cutoff = sim.now;
    for n in &mut sim.nodes {
        n.im.expire(cutoff);
    }
    sim.floor_round(g_home);
    sim.quiesce(&mut rng);
    assert_eq!(history(&sim), (0, 2));
    // A send parked (its log full) holds version 3 while the member who joined at 3 leaves
    // at 4: a round meanwhile must keep that membership for it.
    sim.update(gid, owner, true, &[joiner]); // v3
    sim.quiesce(&mut rng);
    let k = home(sender, 2) as usize;
    sim.nodes[k].log.append(99, 0, 0, &[0; 4096]).unwrap();
    let r = sim.send(sender, 2, Target::Group(gid), Class::Chat, b"parked at v3");
    while sim.drain(&mut rng) {}
    assert!(
        matches!(sim.reply(r), Some(ImReply::Accepted { .. })),
        "{:?}",
        sim.reply(r)
    );
    sim.update(gid, owner, false, &[joiner]); // v4
    while sim.step_disk(g_home) {}
    assert_eq!(
        sim.nodes[g_home as usize].im.group_members(gid).unwrap().0,
        4
    );
    sim.floor_round(g_home);
    while sim.drain(&mut rng) {}
    assert_eq!(history(&sim), (1, 3), "the parked send refers to version 3");
    sim.quiesce(&mut rng);
    let seq = sim.stream(sender).last().unwrap().0;
    assert_eq!(
        read_list(&mut sim, &mut rng, sender, seq),
        (0, sorted(vec![owner, joiner]))
    );
    // A snapshot, then a restart after a compaction that dropped every change it covers:
    // the same members, history and answers.
    let wait = sim.snapshot(g_home, &[gid, 999]);
    assert_eq!(wait, vec![(gid, (4, 3))]);
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.nodes[g_home as usize].im.group_snapshot(gid),
        Some((4, 3))
    );
    assert!(
        sim.snapshot(g_home, &[gid]).is_empty(),
        "nothing new to snapshot"
    );
    sim.crash(&mut rng, false);
    sim.quiesce(&mut rng);
    assert_eq!(sim.history[3], 4, "the four change records went");
    assert_eq!(history(&sim), (1, 3));
    let n = &sim.nodes[g_home as usize];
    assert_eq!(
        n.im.group_members(gid).unwrap(),
        (4, sorted(vec![owner, sender]))
    );
    assert_eq!(
        read_list(&mut sim, &mut rng, sender, seq),
        (0, sorted(vec![owner, joiner]))
    );
    // The group goes on from the snapshot: version 5, and a snapshot at 5 covers it.
    sim.update(gid, owner, true, &[gone]);
    sim.quiesce(&mut rng);
    assert_eq!(
        sim.nodes[g_home as usize].im.group_members(gid).unwrap().0,
        5
    );
    assert_eq!(sim.snapshot(g_home, &[gid]), vec![(gid, (5, 3))]);
    sim.quiesce(&mut rng);
    sim.crash(&mut rng, false);
    let n = &sim.nodes[g_home as usize];
    assert_eq!(
        n.im.group_members(gid).unwrap(),
        (5, sorted(vec![owner, sender, gone]))
    );
    assert_eq!(n.im.group_snapshot(gid), Some((5, 3)));
}

#[test]
fn a_big_group_snapshot_takes_several_records_and_restores_whole() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(22);
    let mut sim = Sim::new(2, 64 << 20);
    sim.always_compact = true;
    let gid = 700;
    let members: Vec<u64> = (10_000..10_000 + GROUP_MEMBERS_MAX as u64 - 1).collect();
    sim.group(gid, 1, &members);
    sim.quiesce(&mut rng);
    // 1,000 leave: 50,000 members and past memberships in all, two records' worth.
    sim.update(gid, 1, false, &members[..1000]);
    sim.quiesce(&mut rng);
    let k = home(gid, 2);
    assert_eq!(sim.snapshot(k, &[gid]), vec![(gid, (2, 0))]);
    sim.quiesce(&mut rng);
    let parts = sim.nodes[k as usize]
        .files
        .iter()
        .enumerate()
        .map(|(id, f)| {
            let mut n = 0;
            scan(id as u64, f, |_, v| {
                n += usize::from(v.kind == KIND_GROUP_SNAPSHOT)
            })
            .unwrap();
            n
        })
        .sum::<usize>();
    assert_eq!(parts, 2);
    sim.crash(&mut rng, false);
    assert_eq!(sim.history[3], 2, "both changes went");
    let n = &sim.nodes[k as usize];
    let (version, now) = n.im.group_members(gid).unwrap();
    assert_eq!((version, now.len()), (2, GROUP_MEMBERS_MAX - 1000));
    assert_eq!(n.im.group_history(gid), Some((1000, 0)));
    assert_eq!(n.im.group_snapshot(gid), Some((2, 0)));
}

/// `uid` joins group `gid` or is removed from it by its `owner`; the change is durable and pushed
/// onto `timeline` (the membership at each version).
fn toggle_member(
    sim: &mut Sim,
    rng: &mut impl RngCore,
    timeline: &mut Vec<BTreeSet<u64>>,
    (gid, owner): (u64, u64),
    uid: u64,
) {
    let mut next = timeline.last().unwrap().clone();
    let leave = !next.insert(uid);
    if leave {
        next.remove(&uid);
    }
    let r = sim.update(gid, owner, !leave, &[uid]);
    sim.quiesce(rng);
    assert!(
        matches!(sim.reply(r), Some(ImReply::Group { .. })),
        "{:?}",
        sim.reply(r)
    );
    timeline.push(next);
}

/// Checks the read list of `sender`'s message `seq` sent at `version`: nobody read it, and
/// the unread are exactly the other members at that version. False if the message expired.
fn read_list_matches(
    sim: &mut Sim,
    rng: &mut impl RngCore,
    timeline: &[BTreeSet<u64>],
    (sender, seq, version): (u64, u64, u64),
    seed: u64,
) -> bool {
    if !sim.stream(sender).iter().any(|(s, _)| *s == seq) {
        return false;
    }
    let want: Vec<u64> = timeline[version as usize - 1]
        .iter()
        .copied()
        .filter(|&u| u != sender)
        .collect();
    match sim.read_list(rng, sender, seq) {
        ImReply::Readers { read: 0, uids, .. } => {
            assert_eq!(uids, want, "seed {seed}: {sender}#{seq} at v{version}")
        }
        other => panic!("seed {seed}: {sender}#{seq} at v{version}: {other:?}"),
    }
    true
}

/// Random group histories under retention: members come and go, messages are sent, expire,
/// and the group's core runs floor rounds (with sends in flight), writes snapshots and
/// restarts after compactions. Every message still retained must keep exactly its
/// recipients (its read list's unread, asked of the group's core at its version as a
/// withdrawal's are); only expired ones may not.
fn run_history(seed: u64) -> [u64; 4] {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let cores = rng.random_range(1..=3u16);
    let mut sim = Sim::new(cores, 1 << 20);
    let (gid, owner) = (900, 1);
    let users: Vec<u64> = (1..=10).collect();
    let retention_ms = 5_000;
    sim.group(gid, owner, &[2, 3, 4]);
    sim.quiesce(&mut rng);
    let mut timeline: Vec<BTreeSet<u64>> = vec![[1, 2, 3, 4].into_iter().collect()];
    // (sender, seq, membership version) of every group message acknowledged.
    let mut sent: Vec<(u64, u64, u64)> = Vec::new();
    let mut appinfo = 0u128;
    let g_home = home(gid, cores);
    let mut send = |sim: &mut Sim, timeline: &Vec<BTreeSet<u64>>, rng: &mut Xoshiro256PlusPlus| {
        let now = timeline.last().unwrap();
        let members: Vec<u64> = now.iter().copied().collect();
        let sender = members[rng.random_range(0..members.len())];
        appinfo += 1;
        let r = sim.send(sender, appinfo, Target::Group(gid), Class::Chat, b"m");
        (r, sender)
    };
    for _ in 0..rng.random_range(100..300) {
        match rng.random_range(0..100) {
            0..=29 => {
                let (r, sender) = send(&mut sim, &timeline, &mut rng);
                sim.quiesce(&mut rng);
                let Some(ImReply::Sent { seq, .. }) = sim.reply(r).cloned() else {
                    panic!("seed {seed}: {:?}", sim.reply(r));
                };
                sent.push((sender, seq, timeline.len() as u64));
            }
            30..=44 => {
                let uid = users[rng.random_range(1..users.len())];
                toggle_member(&mut sim, &mut rng, &mut timeline, (gid, owner), uid);
            }
            45..=59 => sim.tick(rng.random_range(1..2_000)),
            60..=69 => sim.expire_before(sim.now.saturating_sub(retention_ms)),
            70..=79 => {
                if rng.random_bool(0.5) {
                    // Nothing older left to hold the floor down.
                    sim.tick(retention_ms + 1);
                    sim.expire_before(sim.now - retention_ms);
                }
                // A round with a send racing it: the send's expansion may be answered before
                // or after the question reaches its core.
                let (r, sender) = send(&mut sim, &timeline, &mut rng);
                for _ in 0..rng.random_range(0..2) {
                    sim.step_message(&mut rng);
                }
                sim.floor_round(g_home);
                if rng.random_bool(0.7) {
                    // A member leaves while the round is out: the version the round started
                    // at is what bounds the send's, if its expansion came after the question.
                    let now = timeline.last().unwrap();
                    let others: Vec<u64> = now
                        .iter()
                        .copied()
                        .filter(|&u| u != owner && u != sender)
                        .collect();
                    let uid = if others.is_empty() || rng.random_bool(0.2) {
                        users[rng.random_range(1..users.len())]
                    } else {
                        others[rng.random_range(0..others.len())]
                    };
                    toggle_member(&mut sim, &mut rng, &mut timeline, (gid, owner), uid);
                }
                sim.quiesce(&mut rng);
                let seq = match sim.reply(r).cloned() {
                    Some(ImReply::Sent { seq, .. }) => seq,
                    // The change removed the sender before its send was expanded.
                    Some(ImReply::Error(ImError::NotMember)) => continue,
                    other => panic!("seed {seed}: {other:?}"),
                };
                // Its version is the one its expansion saw (before or after the change).
                let version = {
                    let n = &sim.nodes[home(sender, cores) as usize];
                    n.im.versions.get(&MsgId { sender, seq }).unwrap()
                };
                sent.push((sender, seq, version));
            }
            80..=89 => {
                sim.snapshot(g_home, &[gid]);
                sim.quiesce(&mut rng);
            }
            90..=94 => {
                sim.crash(&mut rng, false);
                sim.quiesce(&mut rng);
            }
            _ => {
                // A retained message's read list.
                if sent.is_empty() {
                    continue;
                }
                let m = sent[rng.random_range(0..sent.len())];
                read_list_matches(&mut sim, &mut rng, &timeline, m, seed);
            }
        }
    }
    // Every retained message, at the end.
    sim.quiesce(&mut rng);
    for &m in &sent {
        read_list_matches(&mut sim, &mut rng, &timeline, m, seed);
    }
    sim.count_history();
    sim.history
}

#[test]
fn group_histories_under_retention_keep_what_retained_messages_need() {
    let mut history = [0u64; 4];
    for seed in 0..200 {
        for (t, x) in history.iter_mut().zip(run_history(seed)) {
            *t += x;
        }
    }
    assert!(
        history[0] > 500 && history[1] > 500 && history[2] > 500 && history[3] > 1000,
        "rounds, forgotten, snapshots, dropped records: {history:?}"
    );
}

/// Found by the `recovery` fuzz target: a CRC-valid stream head or group change at the last
/// seq made recovery panic on an overflow instead of refusing the log (group versions past the
/// last one are refused the same way).
#[test]
fn recovery_refuses_a_stream_past_the_last_seq() {
    let mut r = ImRecovery::new();
    r.replay(KIND_STREAM_HEAD, 7, u64::MAX, &[], ColdRef::NONE)
        .unwrap();
    let e = r.finish(2, 1_000, 0).err().unwrap();
    assert!(e.contains("past"), "{e}");
}
