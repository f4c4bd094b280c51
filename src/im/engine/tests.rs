//! Unit tests of the IM engine, and a simulation of several cores exchanging messages in
//! random order, writing their logs in random batches and crashing at random moments (with torn
//! writes), checked against what the clients were told.

use std::collections::{BTreeMap, VecDeque};

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
    next_route: u64,
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
                im: ImCore::new(k, cores),
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
            backlog_max,
            next_route: 1,
        }
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
        let mut fx = Effects::default();
        let n = &mut self.nodes[k as usize];
        n.im.flush(&mut n.log, &mut fx);
        self.absorb(k, fx);
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
            let mut fx = Effects::default();
            self.nodes[k as usize].im.tick(self.now * 1000, &mut fx);
            self.absorb(k, fx);
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
                return;
            }
            if !busy {
                self.tick(RETRY_MAX_MS);
            }
        }
        panic!("the simulation did not settle");
    }

    /// Every core dies; a torn part of each in-flight batch may reach the disk. Then every
    /// core recovers from what its disk holds.
    fn crash(&mut self, rng: &mut impl RngCore, torn: bool) {
        self.queues.clear();
        let mut recovery = ImRecovery::new();
        for n in &mut self.nodes {
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
            for (id, file) in n.files.iter_mut().enumerate() {
                let s = scan(id as u64, file, |_, v| {
                    recovery
                        .replay(v.kind, v.stream, v.seq, v.payload)
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
        let cores = recovery.finish(self.cores, self.now).expect("recovers");
        for (n, im) in self.nodes.iter_mut().zip(cores) {
            n.im = im;
            n.log = writer(n.im.core(), &n.files, self.backlog_max);
        }
        for k in 0..self.cores {
            let mut fx = Effects::default();
            let n = &mut self.nodes[k as usize];
            n.im.start(&mut n.log, &mut fx);
            self.absorb(k, fx);
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
}

#[test]
fn a_busy_core_refuses_deliveries_and_the_sender_retries_them() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let mut sim = Sim::new(2, 4096);
    let members: Vec<u64> = (100..300).collect();
    sim.group(7, 1, &members);
    sim.quiesce(&mut rng);
    let r = sim.send(1, 1000, Target::Group(7), Class::Chat, &[7; 300]);
    let home = home(1, 2);
    // The group's members come back; the send becomes durable; its deliveries are queued.
    while sim.drain(&mut rng) {}
    assert!(sim.step_disk(home) && sim.step_disk(home));
    assert!(matches!(sim.reply(r), Some(ImReply::Sent { seq: 1, .. })));
    // Meanwhile other work fills both logs' backlogs: the deliveries are refused.
    for n in &mut sim.nodes {
        n.log.append(99, 0, 0, &[0; 5000]).unwrap();
    }
    assert!(sim.drain(&mut rng));
    sim.flush(0);
    sim.flush(1);
    assert!(sim.drain(&mut rng));
    let refused: u64 = sim
        .nodes
        .iter()
        .map(|n| n.im.stats.refused_deliveries)
        .sum();
    assert_eq!(refused, 2);
    assert!(sim.stream(100).is_empty());
    // Refused again while still busy: the back-off doubles, then the retry goes through.
    sim.tick(RETRY_FIRST_MS);
    assert!(sim.drain(&mut rng));
    sim.flush(0);
    sim.flush(1);
    assert!(sim.drain(&mut rng));
    let k = home as usize;
    assert_eq!(
        sim.nodes[k].im.backoffs.values().max(),
        Some(&(2 * RETRY_FIRST_MS))
    );
    sim.quiesce(&mut rng);
    for m in [100, 199, 299] {
        assert_eq!(sim.stream(m).len(), 1, "member {m}");
    }
    assert!(sim.nodes[k].im.backoffs.is_empty());
}

/// What the clients were told and asked for in a simulation run.
#[derive(Default)]
struct Ledger {
    /// (sender, appinfo) -> (target, body) of every send asked for.
    asked: BTreeMap<(u64, u128), (Target, Vec<u8>)>,
    /// (sender, appinfo) -> seq, from every successful reply.
    acked: BTreeMap<(u64, u128), u64>,
}

/// Runs one random schedule; returns (sends acknowledged, crashes).
fn run_simulation(seed: u64) -> (usize, usize) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let cores = rng.random_range(1..=3u16);
    let backlog = if rng.random_bool(0.5) { 1 << 20 } else { 3000 };
    let mut sim = Sim::new(cores, backlog);
    let users: Vec<u64> = (1..=12).collect();
    let groups: [(u64, &[u64]); 2] = [(500, &[1, 2, 3, 4, 5, 6, 7]), (501, &[2, 4, 6, 8, 10, 12])];
    for (gid, members) in groups {
        sim.group(gid, members[0], &members[1..]);
    }
    sim.quiesce(&mut rng);
    let mut ledger = Ledger::default();
    let mut open: Vec<(Route, u64, u128)> = Vec::new();
    let mut next_appinfo = 1u128;
    let mut crashed = false;
    let mut crashes = 0;
    let steps = rng.random_range(200..600);
    for _ in 0..steps {
        match rng.random_range(0..100) {
            0..=24 => {
                let sender = users[rng.random_range(0..users.len())];
                let to = if rng.random_bool(0.4) {
                    let (gid, members) = groups[rng.random_range(0..2)];
                    if !members.contains(&sender) {
                        continue;
                    }
                    Target::Group(gid)
                } else {
                    Target::User(users[rng.random_range(0..users.len())])
                };
                // Sometimes a client retries an earlier send instead.
                let appinfo = if rng.random_bool(0.15) && !ledger.asked.is_empty() {
                    let mine: Vec<u128> = ledger
                        .asked
                        .keys()
                        .filter(|(s, _)| *s == sender)
                        .map(|(_, a)| *a)
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    mine[rng.random_range(0..mine.len())]
                } else {
                    next_appinfo += 1;
                    next_appinfo
                };
                let (to, body) = ledger
                    .asked
                    .entry((sender, appinfo))
                    .or_insert_with(|| (to, format!("m{appinfo}").into_bytes()))
                    .clone();
                let r = sim.send(sender, appinfo, to, Class::Chat, &body);
                open.push((r, sender, appinfo));
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
            _ => {
                let torn = rng.random_bool(0.7);
                crashed = true;
                crashes += 1;
                collect(&mut sim, &mut open, &mut ledger);
                sim.crash(&mut rng, torn);
            }
        }
        collect(&mut sim, &mut open, &mut ledger);
    }
    sim.quiesce(&mut rng);
    collect(&mut sim, &mut open, &mut ledger);
    // Every client retries what it has no answer for (or was told busy) until it has one.
    for _ in 0..20 {
        let unacked: Vec<(u64, u128)> = ledger
            .asked
            .keys()
            .filter(|k| !ledger.acked.contains_key(k))
            .copied()
            .collect();
        if unacked.is_empty() {
            break;
        }
        for (sender, appinfo) in unacked {
            let (to, body) = ledger.asked[&(sender, appinfo)].clone();
            let r = sim.send(sender, appinfo, to, Class::Chat, &body);
            open.push((r, sender, appinfo));
        }
        sim.quiesce(&mut rng);
        collect(&mut sim, &mut open, &mut ledger);
    }
    assert_eq!(
        ledger.acked.len(),
        ledger.asked.len(),
        "seed {seed}: sends left unanswered"
    );
    // A sender's messages arrive in order unless a delivery was refused or a crash
    // interrupted one (both deliver again later).
    let ordered = !crashed && sim.nodes.iter().all(|n| n.im.stats.refused_deliveries == 0);
    check(&sim, &ledger, &groups, seed, ordered);
    // A clean restart changes nothing.
    let before: Vec<Vec<(u64, MsgId)>> = users.iter().map(|&u| ids(&sim, u)).collect();
    sim.crash(&mut rng, false);
    sim.quiesce(&mut rng);
    let after: Vec<Vec<(u64, MsgId)>> = users.iter().map(|&u| ids(&sim, u)).collect();
    assert_eq!(before, after, "seed {seed}");
    (ledger.acked.len(), crashes)
}

fn ids(sim: &Sim, uid: u64) -> Vec<(u64, MsgId)> {
    sim.stream(uid)
        .into_iter()
        .map(|(s, m)| (s, m.id))
        .collect()
}

/// Moves answers into the ledger, checking each against earlier ones.
fn collect(sim: &mut Sim, open: &mut Vec<(Route, u64, u128)>, ledger: &mut Ledger) {
    open.retain(|(route, sender, appinfo)| {
        let Some(reply) = sim.reply(*route) else {
            return true;
        };
        match reply {
            ImReply::Sent { seq, .. } => {
                let prev = ledger.acked.insert((*sender, *appinfo), *seq);
                assert!(
                    prev.map_or(true, |p| p == *seq),
                    "appinfo {appinfo} of {sender} answered with seq {prev:?} then {seq}"
                );
            }
            ImReply::Error(ImError::Busy) => {}
            other => panic!("unexpected answer {other:?}"),
        }
        false
    });
    sim.replies.clear();
}

fn check(sim: &Sim, ledger: &Ledger, groups: &[(u64, &[u64])], seed: u64, ordered: bool) {
    // Expected: each acked send once in the sender's stream at its acked seq, once in each
    // recipient's stream, and nowhere else.
    let mut expected: BTreeMap<u64, Vec<MsgId>> = BTreeMap::new();
    for (&(sender, appinfo), &seq) in &ledger.acked {
        let id = MsgId { sender, seq };
        let (to, body) = &ledger.asked[&(sender, appinfo)];
        let s = sim.stream(sender);
        let (_, m) = &s[(seq - 1) as usize];
        assert_eq!(m.id, id, "seed {seed}");
        assert_eq!((&m.to, &*m.body, m.appinfo), (to, &body[..], appinfo));
        expected.entry(sender).or_default().push(id);
        let recipients: Vec<u64> = match to {
            Target::User(u) => vec![*u],
            Target::Group(g) => groups.iter().find(|(gid, _)| gid == g).unwrap().1.to_vec(),
        };
        for r in recipients {
            if r != sender {
                expected.entry(r).or_default().push(id);
            }
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
        // Each sender's messages keep their order in every stream.
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, m) in &s {
            let prev = last.insert(m.id.sender, m.id.seq).unwrap_or(0);
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
    let (mut acked, mut crashes) = (0, 0);
    for seed in 0..300 {
        let (a, c) = run_simulation(seed);
        acked += a;
        crashes += c;
    }
    // The schedules did something: many sends, many crashes among them.
    assert!(
        acked > 10_000 && crashes > 300,
        "{acked} sends, {crashes} crashes"
    );
}
