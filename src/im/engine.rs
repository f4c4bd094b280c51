//! One core's IM engine (R16-R18, R21, R23), sans-IO: the message streams of the users homed
//! on this core, the groups homed here, the appinfo memory of senders homed here, and the
//! fan-outs this core still owes.
//!
//! A send runs on the sender's home core: a retried appinfo is answered with the original
//! result (R18); a group target is expanded by the group's home core, which names the
//! membership version (kept in the SENT record: the message's withdrawal, unread list and
//! redelivery after a crash go to the members at that version); the message is appended
//! to the sender's own stream (a SENT record) and answered once that is durable; only then is
//! it handed to every other core that homes recipients (the sender's own core appends its
//! recipients' DELIVERY right after the SENT record: in the same log it cannot be durable
//! without it, and a chat within one core takes one commit). Each such core appends the
//! messages waiting for the same recipients as one DELIVERY record (R21: backlogged messages
//! to the same members merge into one insert), exposes the new seqs once durable, announces them (push, R17), and
//! tells the sender's core, which logs FANOUT_DONE when every core has. After a crash, SENT
//! records without FANOUT_DONE are delivered again, to exactly the recipients whose streams
//! lack them ([`ImRecovery`]).
//!
//! The runtime (or a test) feeds requests and cross-core messages in, executes the log's
//! batches, and carries out the [`Effects`]: replies, messages to cores (this one included),
//! and pushes. Seqs of a stream are contiguous from 1, and nothing is visible before it is
//! durable, so no client ever sees a seq that a crash could take back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use smallvec::{smallvec, SmallVec};

use super::cold::{ColdRef, ColdSource};
use super::dedupe::{DoneIndex, SendKey};
use super::entries::Entries;
use super::groups::{FloorRound, Group, VersionIndex};
use super::kept::{Kept, KeptMessages};
use super::model::*;
use super::record::{
    decode_delivery, decode_group, decode_sent, decode_snapshot, delivery_len, encode_delivery,
    encode_group, encode_sent, encode_snapshot, message_len, Delivery, GroupChange, SnapshotPart,
    KIND_DELIVERY, KIND_FANOUT_DONE, KIND_GROUP, KIND_GROUP_SNAPSHOT, KIND_SENT, KIND_STREAM_HEAD,
};
use crate::serve::setup::home_core;
use crate::shake::engine::Route;
use crate::store::record::RECORD_PAYLOAD_MAX;
use crate::store::{AppendError, LogPosition, LogWriter};

/// Groups of this many members or more are huge (R22): control messages to them are dropped.
pub const HUGE_GROUP: usize = 2000;
/// Bytes of huge-group delivery records one log batch may carry (R21's global limit):
/// deliveries to small targets always go first and in full (R22); a huge group's members are
/// written in chunks within this and the core's member-append tokens
/// ([`HUGE_APPENDS_PER_SECOND`]), the rest waits for the next batch.
pub const HUGE_BYTES_PER_COMMIT: usize = 256 << 10;
/// Member-stream appends of huge-group deliveries per second and core (the CPU side of the
/// same limit), as a token bucket refilled with time and spent by the log batches: a flooded
/// 10k group gets about 600 messages/s, and a single chat's p99 stays within about 2x of
/// unloaded meanwhile (bench/im.rs part 3, docs/BENCHMARKS.md). A fixed number per commit
/// did the same for the flood but tied the groups' throughput to the commit rate: under a
/// heavy chat load (fewer, longer commits) 10k groups sent 60 messages/s each fell seconds
/// behind (bench/load-im.sh).
pub const HUGE_APPENDS_PER_SECOND: u64 = 6_000_000;
/// Most tokens the bucket holds: the most member appends one batch may carry (a message to
/// 10,000 members in one commit when the core was not busy with huge groups before).
pub const HUGE_APPENDS_BURST: u64 = 10_000;
/// Most messages merged into one huge-group delivery: each chunk of members repeats the
/// messages, so long merged runs would write their messages again and again.
pub const HUGE_MERGE_MAX: usize = 16;
/// API and app messages (R22): each sender may send this many per second, in bursts of up
/// to [`MACHINE_BURST`]; beyond, sends are refused as busy (retry after the back-off hint).
pub const MACHINE_PER_SECOND: u64 = 100;
pub const MACHINE_BURST: u64 = 200;

/// Messages a core holds for one huge group while that group's fan-out is in flight (R21's
/// per-group limit); beyond it sends to the group are refused as busy.
pub const HELD_PER_GROUP_MAX: usize = 100_000;
/// Soft failure (R23): a send the log cannot take now is parked and retried, the interval
/// doubling from RETRY_FIRST_MS up to PARK_RETRY_MAX_MS.
pub const RETRY_FIRST_MS: u64 = 10;
pub const PARK_RETRY_MAX_MS: u64 = 5_000;

/// Single-chat partitions cached per core: 2^12 slots (about 0.5 MB with their partitions).
const CHAT_PARTITIONS_BITS: u32 = 12;

/// The recipients of a message, by home core: `partition[core]` (the sender may be among
/// them; a core skips a recipient's own messages).
pub type Partition = Vec<Arc<[u64]>>;

/// Whether a message to these recipients is a huge group's (R21, R22).
fn is_huge(partition: &Partition) -> bool {
    partition.iter().map(|p| p.len()).sum::<usize>() >= HUGE_GROUP
}

/// The home core of a user's stream or of a group.
pub fn home(id: u64, cores: u16) -> u16 {
    home_core(id, cores as usize) as u16
}

/// A message between cores' IM engines.
#[derive(Debug, Clone)]
pub enum ImMsg {
    /// To a group's home core: the members to send to, or why not.
    /// `at`: the members at that membership version (a message's recipients, for its
    /// withdrawal, its unread list or its delivery after a restart); None: the members now.
    Expand {
        gid: u64,
        sender: u64,
        class: Class,
        at: Option<u64>,
        token: u64,
        from: u16,
    },
    /// The membership version and its members by core.
    Expanded {
        token: u64,
        result: Result<(u64, Arc<Partition>), ImError>,
    },
    /// Append `msg` to the streams of `recipients` (all homed on the receiving core).
    Deliver {
        msg: MessageRef,
        recipients: Arc<[u64]>,
        origin: u16,
    },
    /// To the sender's core: the receiving core holds the message durably.
    Delivered { id: MsgId },
    /// A floor round of the groups homed on core `from` (see [`super::groups`]): which of
    /// them do messages here still refer to, and at which oldest version?
    FloorAsk { round: u64, from: u16 },
    /// The answer: (gid, oldest version referred to) of the asking core's groups.
    Floors { round: u64, floors: Vec<(u64, u64)> },
}

/// What a call asks the runtime to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub replies: Vec<(Route, ImReply)>,
    /// Messages to cores, this core included.
    pub messages: Vec<(u16, ImMsg)>,
    /// (uid, newest durable seq): tell the user's connections to pull (R17).
    pub pushes: Vec<(u64, u64)>,
    /// Fan-outs completed: microseconds from accepting the send to the last recipient copy
    /// being durable.
    pub fanout_us: Vec<u64>,
}

/// One page of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// (seq, message), ascending.
    pub entries: Vec<(u64, MessageRef)>,
    /// Newest durable seq of the stream (0: empty).
    pub max_seq: u64,
}

/// An entry of a page being answered: in memory, or to be read back from the log (R24).
#[derive(Debug, Clone)]
pub enum PageEntry {
    Hot(MessageRef),
    Cold(ColdRef),
}

/// A page of a stream as its core has it: [`Page`] once the cold entries are read.
#[derive(Debug, Clone, Default)]
pub struct PagePlan {
    /// (seq, entry), ascending.
    pub entries: Vec<(u64, PageEntry)>,
    pub max_seq: u64,
}

impl PagePlan {
    pub fn has_cold(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, e)| matches!(e, PageEntry::Cold(_)))
    }
}

/// Most entries of one page read back from the log: a SYNC deep in the cold part gets a
/// shorter page (the client pulls on from its end).
pub const COLD_PAGE_MAX: usize = 256;

/// One user's stream: seqs `base..` are the cold entries (only their records' positions in
/// memory, R24) then the hot ones (their messages, and the positions, in the core's
/// [`KeptMessages`]).
struct Stream {
    /// Seq of the first entry.
    base: u64,
    cold: Entries<ColdRef>,
    hot: Entries<Kept>,
    /// Newest seq that is durable (0: none).
    durable: u64,
}

/// A core's streams. A stream never goes away (retention empties it, its seqs go on), so
/// they live in one vector, found by uid through a map of 16-byte entries: a member append
/// touches the map's small buckets and then the stream, not 170-byte buckets holding the
/// streams themselves, and a delivery remembers where its streams are, so marking them
/// durable takes no lookup at all.
#[derive(Default)]
struct Streams {
    list: Vec<Stream>,
    uids: Vec<u64>,
    index: HashMap<u64, u32>,
}

impl Streams {
    fn get(&self, uid: &u64) -> Option<&Stream> {
        self.index.get(uid).map(|&i| &self.list[i as usize])
    }

    fn get_mut(&mut self, uid: &u64) -> Option<&mut Stream> {
        self.index.get(uid).map(|&i| &mut self.list[i as usize])
    }

    /// Where `uid`'s stream is, if it has one.
    fn find(&self, uid: u64) -> Option<u32> {
        self.index.get(&uid).copied()
    }

    /// Where `uid`'s stream is, made empty if it has none.
    fn slot(&mut self, uid: u64) -> u32 {
        let next = self.list.len();
        let i = *self
            .index
            .entry(uid)
            .or_insert_with(|| u32::try_from(next).expect("fewer than 2^32 streams per core"));
        if i as usize == next {
            self.list.push(Stream::new(uid));
            self.uids.push(uid);
        }
        i
    }

    fn at(&mut self, i: u32) -> &mut Stream {
        &mut self.list[i as usize]
    }

    fn uid(&self, i: u32) -> u64 {
        self.uids[i as usize]
    }

    fn insert(&mut self, uid: u64, stream: Stream) {
        let i = self.slot(uid);
        self.list[i as usize] = stream;
    }

    fn values(&self) -> impl Iterator<Item = &Stream> {
        self.list.iter()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.list.iter_mut()
    }

    fn len(&self) -> usize {
        self.list.len()
    }
}

/// A stream entry as found in memory.
enum Found<'a> {
    Hot(&'a MessageRef),
    Cold(ColdRef),
}

impl Stream {
    fn new(uid: u64) -> Stream {
        Stream {
            base: 1,
            cold: Entries::new(),
            hot: Entries::staggered(uid),
            durable: 0,
        }
    }

    fn len(&self) -> usize {
        self.cold.len() + self.hot.len()
    }

    fn next_seq(&self) -> u64 {
        self.base + self.len() as u64
    }

    /// The entry at `seq`, if the stream has it (durable or not).
    fn find<'a>(&self, seq: u64, kept: &'a KeptMessages) -> Option<Found<'a>> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        if i < self.cold.len() {
            return self.cold.get(i).map(|&at| Found::Cold(at));
        }
        let &k = self.hot.get(i - self.cold.len())?;
        Some(match kept.get(k) {
            (Some(m), _) => Found::Hot(m),
            (None, at) => Found::Cold(at),
        })
    }

    /// Moves the durable entries sent before `cutoff_ms` from the front of the hot part to
    /// the cold part (only their positions stay); stops at the first that must stay (newer,
    /// not durable, or without a position). Returns how many moved.
    fn cool(&mut self, cutoff_ms: u64, kept: &mut KeptMessages) -> usize {
        let durable = (self.durable + 1).saturating_sub(self.base + self.cold.len() as u64);
        let mut n = 0;
        for &k in self.hot.iter().take(durable as usize) {
            let (msg, at) = kept.get(k);
            if !at.is_some() || msg.is_some_and(|m| m.sent_ms >= cutoff_ms) {
                break;
            }
            self.cold.push(at);
            kept.release(k);
            n += 1;
        }
        self.hot.drop_front(n);
        n
    }

    /// Retention: drops from the front the durable entries that expired, cold ones by the
    /// segment their record is in (`expired(at)`: a segment whose whole content is older than
    /// the cutoff), hot ones by their send time. Returns how many went.
    fn expire(
        &mut self,
        cutoff_ms: u64,
        expired: &impl Fn(ColdRef) -> bool,
        kept: &mut KeptMessages,
    ) -> usize {
        let visible = (self.durable + 1).saturating_sub(self.base) as usize;
        let cold = self
            .cold
            .iter()
            .take(visible)
            .take_while(|&&at| expired(at))
            .count();
        let mut n = cold;
        if cold == self.cold.len() {
            for &k in self.hot.iter().take(visible.saturating_sub(cold)) {
                let gone = match kept.get(k) {
                    (Some(m), _) => m.sent_ms < cutoff_ms,
                    (None, at) => expired(at),
                };
                if !gone {
                    break;
                }
                kept.release(k);
                n += 1;
            }
        }
        if n > 0 {
            self.cold.drop_front(cold);
            self.hot.drop_front(n - cold);
            self.base += n as u64;
        }
        n
    }
}

/// A send not stored yet (stored ones are in the [`DoneIndex`]).
enum SendState {
    InFlight {
        /// Who waits for the answer (almost always one connection: no allocation).
        routes: SmallVec<[Route; 1]>,
        fingerprint: u32,
    },
    /// Accepted and parked (soft failure, R23): not in the log yet.
    Parked { fingerprint: u32, accepted_ms: u64 },
}

/// Limits of one core's send work (R23): sends accepted and not yet durable, in flight or
/// parked. One user, and one tenant, may hold at most `share_percent` of `work_max`, so an
/// abuser cannot take the core; parked sends are retried for `park_for_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    pub work_max: u32,
    pub share_percent: u32,
    /// A user's tenant is `uid >> tenant_shift` (None: no tenants).
    pub tenant_shift: Option<u8>,
    pub park_for_ms: u64,
}

impl Default for WorkLimits {
    fn default() -> WorkLimits {
        WorkLimits {
            work_max: 50_000,
            share_percent: 20,
            tenant_shift: None,
            park_for_ms: 30 * 60 * 1000,
        }
    }
}

impl WorkLimits {
    fn share(&self) -> u32 {
        (u64::from(self.work_max) * u64::from(self.share_percent) / 100).max(1) as u32
    }
}

/// A send the log could not take: retried in order (per core, so per sender too).
struct Parked {
    key: SendKey,
    draft: Draft,
    partition: Arc<Partition>,
    since_us: u64,
}

/// A send to be stored: a client's message, or a receipt or withdrawal the server makes.
struct Draft {
    req: SendRequest,
    kind: EntryKind,
    refer: Option<MsgId>,
    /// A withdrawal carries the original's send time (R20).
    sent_ms: Option<u64>,
    /// For a group target: the membership version the recipients are taken at (a
    /// withdrawal's is its original's; a new message's is set when the group answers).
    version: Option<u64>,
}

impl Draft {
    fn key(&self) -> SendKey {
        (self.req.sender, self.req.appinfo, self.kind as u8)
    }
}

enum Pending {
    /// A new send waiting for its group's members.
    Fresh { draft: Draft, now_us: u64 },
    /// A recovered send being delivered again: skip who has it.
    Redrive { msg: MessageRef, have: HashSet<u64> },
    /// A read list (R19) waiting for the recipients of its group message.
    Readers {
        sender: u64,
        seq: u64,
        from: u32,
        route: Route,
    },
}

struct Outbox {
    /// Cores that still have to confirm.
    remaining: usize,
    /// The huge group whose one fan-out in flight (per sender core) this is.
    group: Option<u64>,
    /// When the send was accepted (None for a fan-out resumed after a restart).
    accepted_us: Option<u64>,
}

enum Waiter {
    Sent {
        key: SendKey,
        msg: MessageRef,
        partition: Arc<Partition>,
        /// When the send was accepted (its fan-out time is measured from here).
        accepted_us: u64,
        /// The recipients homed on this core were handed the message when its SENT record
        /// was appended (their DELIVERY follows it in the log, often in the same commit).
        early: bool,
    },
    Delivery {
        /// (where the stream is in [`Streams`], newest seq written for it).
        streams: Vec<(u32, u64)>,
        messages: Vec<(MsgId, u16)>,
        /// (message read, reader): receipts reaching their message's sender.
        reads: Vec<(MsgId, u64)>,
    },
    Group {
        gid: u64,
        version: u64,
        snapshot: Arc<Partition>,
        members: usize,
        route: Route,
    },
    /// A group snapshot's last part: (version, floor) durable.
    Snapshot { gid: u64, at: (u64, u64) },
    /// A group change that changes nothing (adding members, removing non-members): answered
    /// with the durable membership once the changes appended before it are durable.
    GroupSame { gid: u64, route: Route },
}

/// Messages to a huge group's members homed here, written `next..` onwards.
struct HugeRun {
    messages: Vec<MessageRef>,
    recipients: Arc<[u64]>,
    next: usize,
    origins: Vec<(MsgId, u16)>,
}

/// Deliveries merged into one record (see `ImCore::flush`).
struct Run {
    recipients: Arc<[u64]>,
    messages: Vec<MessageRef>,
    origins: Vec<(MsgId, u16)>,
    bytes: usize,
}

/// Counters of one core's IM engine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImStats {
    pub sends: u64,
    pub duplicates: u64,
    pub delivery_records: u64,
    pub stream_appends: u64,
    pub merged_messages: u64,
    /// Deliveries held because the log was behind (written in order once it has room).
    pub held_deliveries: u64,
    /// Entries dropped by retention.
    pub expired: u64,
    /// Sends parked by soft failure (R23), dropped after the parking limit, and refused for
    /// being beyond a work limit.
    pub parked: u64,
    pub park_dropped: u64,
    pub work_refused: u64,
    /// New sends and group changes refused while the process's heap was over its limit.
    pub memory_refused: u64,
    /// New writes refused while the disk was below its watermark.
    pub disk_refused: u64,
    /// Entries moved to the cold part (R24).
    pub cooled: u64,
    /// Floor rounds of the groups homed here completed, the past memberships they let go,
    /// and group snapshots appended.
    pub floor_rounds: u64,
    pub history_forgotten: u64,
    pub snapshots: u64,
}

pub struct ImCore {
    core: u16,
    cores: u16,
    streams: Streams,
    /// The messages of the streams' hot entries.
    kept: KeptMessages,
    groups: HashMap<u64, Group>,
    /// Sends of users homed here not stored yet.
    sends: HashMap<SendKey, SendState>,
    /// Stored sends of users homed here, for the dedupe window (R18).
    done: DoneIndex,
    /// API/app send buckets per sender: (tokens in millionths, last refill in microseconds).
    machine: HashMap<u64, (u64, u64)>,
    /// Readers of messages sent by users homed here, from the receipts in their streams.
    reads: HashMap<MsgId, Vec<u64>>,
    /// The membership version of each group message (and withdrawal) sent by users homed
    /// here: whom it went to, for its withdrawal and unread list (from SENT records).
    versions: VersionIndex,
    /// The floor round of the groups homed here in progress, and the next round's id.
    floor_round: Option<FloorRound>,
    next_round: u64,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    outbox: HashMap<MsgId, Outbox>,
    waiters: VecDeque<(LogPosition, Waiter)>,
    /// Deliveries received since the last flush, merged by recipient list at the flush.
    inbox: Vec<(MessageRef, Arc<[u64]>, u16)>,
    /// Deliveries (merged runs) the log could not take when they came, in arrival order:
    /// written before any later one, so a recipient sees each sender's messages in send
    /// order.
    blocked: VecDeque<Run>,
    /// Huge groups with a fan-out in flight from this core: messages in it.
    group_in_flight: HashMap<u64, usize>,
    /// Messages to huge groups waiting for the group's fan-out in flight to finish; released
    /// together, so the receiving cores merge them into one insert (R21).
    held: HashMap<u64, VecDeque<(MessageRef, Arc<Partition>, u64)>>,
    /// Bytes of huge-group delivery records per log batch, and those appended since the last
    /// batch completed.
    huge_budget: usize,
    huge_used: usize,
    /// Member-append tokens of huge-group deliveries: held, refill rate per second, most
    /// held, and when last refilled (microseconds).
    huge_tokens: u64,
    huge_rate: u64,
    huge_burst: u64,
    /// See [`ImCore::set_huge_deferred`].
    huge_deferred: bool,
    huge_refilled_us: u64,
    /// Huge-group deliveries being written chunk by chunk, in order.
    huge_queue: VecDeque<HugeRun>,
    /// Recovered sends to deliver again at start.
    redrive: Vec<(MessageRef, HashSet<u64>)>,
    /// Soft failure and fair shares (R23).
    limits: WorkLimits,
    work_total: u32,
    work_by_user: HashMap<u64, u32>,
    work_by_tenant: HashMap<u64, u32>,
    parked: VecDeque<Parked>,
    parked_by_user: HashMap<u64, u32>,
    park_due_us: u64,
    park_backoff_ms: u64,
    /// One empty member slice, shared by every partition that needs one.
    empty: Arc<[u64]>,
    /// Single-chat partitions of recent recipients, direct-mapped by uid.
    chat_partitions: Vec<Option<(u64, Arc<Partition>)>>,
    /// Scratch of `flush`, kept for its capacity: runs, run by recipient list, newest run by
    /// sender.
    merge_runs: Vec<Run>,
    merge_lists: HashMap<usize, usize>,
    merge_senders: HashMap<u64, usize>,
    /// Scratch of `deliver`: (recipient, its first seq in the record).
    deliver_list: Vec<(u64, u64)>,
    /// Where the streams of `deliver_list` are (None: not made yet), and whether the recipient
    /// sent one of the messages (it does not get its own).
    deliver_slots: Vec<(Option<u32>, bool)>,
    scratch: Vec<u8>,
    /// The process's heap is over `im.memory_max_mb`: new writes are refused (busy).
    memory_full: bool,
    /// The disk is below its free-space watermark (set by the runtime).
    disk_low: bool,
    pub stats: ImStats,
    /// Reads single cold entries back (R24); None: cold entries cannot be read (an error).
    cold_source: Option<Box<dyn ColdSource + Send>>,
    /// Cold entries read back one by one, and reads that failed.
    cold_reads: std::cell::Cell<u64>,
    cold_errors: std::cell::Cell<u64>,
}

fn fingerprint(to: Target, class: Class, body: &[u8]) -> u32 {
    let mut head = [0u8; 10];
    head[0] = to.code();
    head[1] = class as u8;
    head[2..].copy_from_slice(&to.id().to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

fn partition(cores: u16, members: impl IntoIterator<Item = u64>) -> Arc<Partition> {
    let mut by_core: Vec<Vec<u64>> = vec![Vec::new(); cores as usize];
    for m in members {
        by_core[home(m, cores) as usize].push(m);
    }
    Arc::new(
        by_core
            .into_iter()
            .map(|mut v| {
                v.sort_unstable();
                Arc::from(v)
            })
            .collect(),
    )
}

impl ImCore {
    pub fn new(core: u16, cores: u16) -> ImCore {
        assert!(core < cores);
        ImCore {
            core,
            cores,
            streams: Streams::default(),
            kept: KeptMessages::default(),
            groups: HashMap::new(),
            sends: HashMap::new(),
            done: DoneIndex::default(),
            reads: HashMap::new(),
            versions: VersionIndex::default(),
            floor_round: None,
            next_round: 1,
            machine: HashMap::new(),
            pending: HashMap::new(),
            next_token: 1,
            outbox: HashMap::new(),
            waiters: VecDeque::new(),
            inbox: Vec::new(),
            blocked: VecDeque::new(),
            group_in_flight: HashMap::new(),
            held: HashMap::new(),
            huge_budget: HUGE_BYTES_PER_COMMIT,
            huge_used: 0,
            huge_tokens: HUGE_APPENDS_BURST,
            huge_rate: HUGE_APPENDS_PER_SECOND,
            huge_burst: HUGE_APPENDS_BURST,
            huge_deferred: false,
            huge_refilled_us: 0,
            huge_queue: VecDeque::new(),
            redrive: Vec::new(),
            limits: WorkLimits::default(),
            work_total: 0,
            work_by_user: HashMap::new(),
            work_by_tenant: HashMap::new(),
            parked: VecDeque::new(),
            parked_by_user: HashMap::new(),
            park_due_us: 0,
            park_backoff_ms: RETRY_FIRST_MS,
            empty: Arc::from(Vec::new()),
            scratch: Vec::new(),
            memory_full: false,
            disk_low: false,
            chat_partitions: vec![None; 1 << CHAT_PARTITIONS_BITS],
            merge_runs: Vec::new(),
            merge_lists: HashMap::new(),
            merge_senders: HashMap::new(),
            deliver_list: Vec::new(),
            deliver_slots: Vec::new(),
            stats: ImStats::default(),
            cold_source: None,
            cold_reads: Default::default(),
            cold_errors: Default::default(),
        }
    }

    /// The partition of a single user (one slice on its home core; the others share one empty
    /// slice). Built once per recent recipient and kept in a small direct-mapped cache:
    /// building it is three allocations, which were 5% of a core in the IM chat benchmark.
    fn user_partition(&mut self, uid: u64) -> Arc<Partition> {
        let slot =
            (uid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CHAT_PARTITIONS_BITS)) as usize;
        if let Some((cached, p)) = &self.chat_partitions[slot] {
            if *cached == uid {
                return p.clone();
            }
        }
        let home = home(uid, self.cores) as usize;
        let p: Arc<Partition> = Arc::new(
            (0..self.cores as usize)
                .map(|k| {
                    if k == home {
                        Arc::from([uid])
                    } else {
                        self.empty.clone()
                    }
                })
                .collect(),
        );
        self.chat_partitions[slot] = Some((uid, p.clone()));
        p
    }

    /// Sets the send work limits (R23).
    pub fn set_limits(&mut self, limits: WorkLimits) {
        self.limits = limits;
    }

    /// Whether the process's heap is over its limit (set by the runtime): while it is, new
    /// sends, receipts, withdrawals and group changes are answered busy. Retries of stored
    /// sends, pulls and the delivery of accepted messages go on. Returns the previous state.
    pub fn set_memory_full(&mut self, full: bool) -> bool {
        std::mem::replace(&mut self.memory_full, full)
    }

    /// Whether the disk is below its free-space watermark (set by the runtime): new writes
    /// are answered busy as while memory is full (what is already accepted goes on, as the
    /// log lets it).
    pub fn set_disk_low(&mut self, low: bool) {
        self.disk_low = low;
    }

    /// Refuses a new write while memory is full or the disk is low.
    fn memory_refuses(&mut self, route: Route, out: &mut Effects) -> bool {
        if self.memory_full {
            self.stats.memory_refused += 1;
        } else if self.disk_low {
            self.stats.disk_refused += 1;
        } else {
            return false;
        }
        out.replies.push((route, ImReply::Error(ImError::Busy)));
        true
    }

    /// Sends parked by soft failure, waiting for the log.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    fn tenant(&self, uid: u64) -> Option<u64> {
        self.limits
            .tenant_shift
            .map(|s| uid.checked_shr(u32::from(s)).unwrap_or(0))
    }

    /// Takes one unit of send work for `uid`, unless the core, the user or the tenant is at
    /// its limit.
    fn take_work(&mut self, uid: u64) -> bool {
        let share = self.limits.share();
        let tenant = self.tenant(uid);
        if self.work_total >= self.limits.work_max
            || self.work_by_user.get(&uid).is_some_and(|&n| n >= share)
            || tenant.is_some_and(|t| self.work_by_tenant.get(&t).is_some_and(|&n| n >= share))
        {
            self.stats.work_refused += 1;
            return false;
        }
        self.work_total += 1;
        *self.work_by_user.entry(uid).or_default() += 1;
        if let Some(t) = tenant {
            *self.work_by_tenant.entry(t).or_default() += 1;
        }
        true
    }

    fn release_work(&mut self, uid: u64) {
        fn dec(map: &mut HashMap<u64, u32>, k: u64) {
            if let Some(n) = map.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
        self.work_total = self.work_total.saturating_sub(1);
        dec(&mut self.work_by_user, uid);
        if let Some(t) = self.tenant(uid) {
            dec(&mut self.work_by_tenant, t);
        }
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    /// Sets the bytes of huge-group delivery records per log batch (tests, benchmarks).
    pub fn set_huge_budget(&mut self, bytes: usize) {
        self.huge_budget = bytes.max(1);
    }

    /// Sets the member-append token bucket of huge-group deliveries (per second, most held).
    pub fn set_huge_rate(&mut self, per_second: u64, burst: u64) {
        self.huge_rate = per_second;
        self.huge_burst = burst.max(1);
        self.huge_tokens = self.huge_tokens.min(self.huge_burst);
    }

    /// Adds the tokens earned since the last refill.
    fn refill_huge(&mut self, now_us: u64) {
        let dt = now_us.saturating_sub(self.huge_refilled_us).max(1);
        let earned = u128::from(dt) * u128::from(self.huge_rate) / 1_000_000;
        let held = u128::from(self.huge_tokens) + earned;
        self.huge_tokens = held.min(u128::from(self.huge_burst)) as u64;
        self.huge_refilled_us = self.huge_refilled_us.max(now_us);
    }

    /// Messages held for huge groups whose fan-out is in flight.
    pub fn held(&self) -> usize {
        self.held.values().map(|q| q.len()).sum()
    }

    /// Starts the deliveries that a crash interrupted (from [`ImRecovery`]). Call once, after
    /// every core is built and before anything else.
    pub fn start(&mut self, log: &mut LogWriter, out: &mut Effects) {
        for (msg, have) in std::mem::take(&mut self.redrive) {
            self.outbox.insert(
                msg.id,
                Outbox {
                    remaining: 0,
                    group: None,
                    accepted_us: None,
                },
            );
            match msg.to {
                Target::User(uid) => {
                    let p = self.user_partition(uid);
                    self.fan_out(&msg, &p, &have, None, 0, log, out);
                }
                Target::Group(gid) => {
                    let (sender, class) = (msg.id.sender, msg.class);
                    // The recipients its send saw (records older than versions: the members
                    // now).
                    let at = self.versions.get(&msg.id);
                    let pending = Pending::Redrive { msg, have };
                    self.expand_at_home(gid, sender, class, at, pending, out);
                }
            }
        }
    }

    /// Takes one API/app send token of `sender` (a token bucket on the caller's clock).
    fn machine_allows(&mut self, sender: u64, now_us: u64) -> bool {
        const ONE: u64 = 1_000_000;
        let (tokens, at) = self
            .machine
            .entry(sender)
            .or_insert((MACHINE_BURST * ONE, now_us));
        let refill = now_us
            .saturating_sub(*at)
            .saturating_mul(MACHINE_PER_SECOND);
        *tokens = tokens.saturating_add(refill).min(MACHINE_BURST * ONE);
        *at = now_us;
        if *tokens >= ONE {
            *tokens -= ONE;
            true
        } else {
            false
        }
    }

    /// Asks the group's home core for the members a send goes to (at membership version `at`,
    /// or now); `pending` waits for them.
    fn expand_at_home(
        &mut self,
        gid: u64,
        sender: u64,
        class: Class,
        at: Option<u64>,
        pending: Pending,
        out: &mut Effects,
    ) {
        let token = self.next_token;
        self.next_token += 1;
        out.messages.push((
            home(gid, self.cores),
            ImMsg::Expand {
                gid,
                sender,
                class,
                at,
                token,
                from: self.core,
            },
        ));
        self.pending.insert(token, pending);
    }

    /// A send by a user homed here.
    pub fn send(
        &mut self,
        req: SendRequest,
        route: Route,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let draft = Draft {
            req,
            kind: EntryKind::Message,
            refer: None,
            sent_ms: None,
            version: None,
        };
        self.submit(draft, route, now_us, log, out);
    }

    /// Gives the cold tier's reader (R24): without one, entries that left memory cannot be
    /// read back.
    pub fn set_cold_source(&mut self, source: Box<dyn ColdSource + Send>) {
        self.cold_source = Some(source);
    }

    /// Closes the cold source's open files (after compaction).
    pub fn forget_cold_files(&self) {
        if let Some(source) = &self.cold_source {
            source.forget();
        }
    }

    /// Cold entries read back one at a time so far, and how many of those reads failed.
    pub fn cold_counts(&self) -> (u64, u64) {
        (self.cold_reads.get(), self.cold_errors.get())
    }

    /// Counts cold entries the runtime reads back for a page.
    pub fn count_cold_reads(&self, n: u64) {
        self.cold_reads.set(self.cold_reads.get() + n);
    }

    /// Counts a cold read that failed (the runtime's page reads too).
    pub fn count_cold_error(&self) {
        self.cold_errors.set(self.cold_errors.get() + 1);
    }

    /// The entry of `uid`'s stream at `seq` (durable or not), read back from the log if it is
    /// cold. None when the stream does not have it; an unreadable cold entry is None too, and
    /// counted ([`ImCore::cold_counts`]).
    fn entry(&self, uid: u64, seq: u64) -> Option<MessageRef> {
        match self.streams.get(&uid)?.find(seq, &self.kept)? {
            Found::Hot(m) => Some(m.clone()),
            Found::Cold(at) => {
                self.cold_reads.set(self.cold_reads.get() + 1);
                let read = match &self.cold_source {
                    Some(source) => source.read(at, uid, seq),
                    None => Err("no cold reader".into()),
                };
                match read {
                    Ok(m) => Some(m),
                    Err(_) => {
                        self.count_cold_error();
                        None
                    }
                }
            }
        }
    }

    /// The stored send `key` (its entry in the sender's stream), if remembered (R18).
    fn stored(&self, key: &SendKey) -> Option<MessageRef> {
        self.done.get(key, |seq| {
            let m = self.entry(key.0, seq)?;
            (m.id == MsgId { sender: key.0, seq } && m.appinfo == key.1 && m.kind as u8 == key.2)
                .then_some(m)
        })
    }

    /// The durable entry of `uid`'s stream at `seq`, if it is a message (not a receipt or a
    /// withdrawal).
    fn message_at(&self, uid: u64, seq: u64) -> Option<MessageRef> {
        let s = self.streams.get(&uid)?;
        if seq == 0 || seq > s.durable || seq < s.base {
            return None;
        }
        self.entry(uid, seq)
            .filter(|m| m.kind == EntryKind::Message)
    }

    /// A read receipt (R19) by `reader` (homed here) for the message at `seq` of its own
    /// stream: a receipt entry in the reader's stream (answered once durable), then in the
    /// stream of the message's sender, whose read list it updates.
    pub fn ack_read(
        &mut self,
        reader: u64,
        seq: u64,
        route: Route,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let Some(m) = self
            .message_at(reader, seq)
            .filter(|m| m.id.sender != reader)
        else {
            out.replies
                .push((route, ImReply::Error(ImError::NoSuchMessage)));
            return;
        };
        let draft = Draft {
            req: SendRequest {
                sender: reader,
                appinfo: u128::from(m.id.sender) << 64 | u128::from(m.id.seq),
                to: Target::User(m.id.sender),
                class: Class::Control,
                body: Box::new([]),
            },
            kind: EntryKind::Read,
            refer: Some(m.id),
            sent_ms: None,
            version: None,
        };
        self.submit(draft, route, now_us, log, out);
    }

    /// Withdraws (R20) the message `sender` (homed here) sent as seq `seq` of its stream: a
    /// withdrawal carrying the message's appinfo and send time goes to every stream the
    /// message went to (for a group: its members at the message's membership version, also
    /// those who left since; not those who joined since).
    pub fn withdraw(
        &mut self,
        sender: u64,
        seq: u64,
        route: Route,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let Some(m) = self
            .message_at(sender, seq)
            .filter(|m| m.id.sender == sender)
        else {
            out.replies
                .push((route, ImReply::Error(ImError::NoSuchMessage)));
            return;
        };
        if (now_us / 1000).saturating_sub(m.sent_ms) > WITHDRAW_WINDOW_MS {
            out.replies
                .push((route, ImReply::Error(ImError::WithdrawExpired)));
            return;
        }
        let draft = Draft {
            req: SendRequest {
                sender,
                appinfo: m.appinfo,
                to: m.to,
                class: m.class,
                body: Box::new([]),
            },
            kind: EntryKind::Withdraw,
            refer: Some(m.id),
            sent_ms: Some(m.sent_ms),
            version: self.versions.get(&m.id),
        };
        self.submit(draft, route, now_us, log, out);
    }

    /// Who has read message `seq` of `sender` (homed here), as durable receipts in the
    /// sender's stream say, sorted; only for the sender's own messages.
    pub fn readers(&self, sender: u64, seq: u64) -> Result<Vec<u64>, ImError> {
        let m = self
            .message_at(sender, seq)
            .filter(|m| m.id.sender == sender)
            .ok_or(ImError::NoSuchMessage)?;
        let mut readers = self.reads.get(&m.id).cloned().unwrap_or_default();
        readers.sort_unstable();
        Ok(readers)
    }

    /// The read list (R19) of message `seq` of `sender` (homed here): who read it and who has
    /// not, among exactly the recipients it went to (for a group: its members at the send's
    /// membership version, asked of the group's core), answered as a page from `from`.
    pub fn read_list(&mut self, sender: u64, seq: u64, from: u32, route: Route, out: &mut Effects) {
        let m = match self.readers(sender, seq) {
            Ok(_) => self.message_at(sender, seq).expect("checked"),
            Err(e) => {
                out.replies.push((route, ImReply::Error(e)));
                return;
            }
        };
        match m.to {
            Target::User(uid) => {
                let recipients: &[u64] = if uid == sender { &[] } else { &[uid] };
                let reply = self.read_page(sender, seq, recipients, from);
                out.replies.push((route, reply));
            }
            Target::Group(gid) => {
                let at = self.versions.get(&m.id);
                let pending = Pending::Readers {
                    sender,
                    seq,
                    from,
                    route,
                };
                self.expand_at_home(gid, sender, m.class, at, pending, out);
            }
        }
    }

    /// One page of a read list: the readers, then the recipients (sorted) who have not read
    /// (both sorted), from index `from`.
    fn read_page(&self, sender: u64, seq: u64, recipients: &[u64], from: u32) -> ImReply {
        // Retention may have dropped the message while its group's core was asked.
        let readers = match self.readers(sender, seq) {
            Ok(r) => r,
            Err(e) => return ImReply::Error(e),
        };
        let unread: Vec<u64> = recipients
            .iter()
            .copied()
            .filter(|&u| u != sender && readers.binary_search(&u).is_err())
            .collect();
        let total = readers.len() + unread.len();
        let start = (from as usize).min(total);
        let end = (start + READ_LIST_PAGE).min(total);
        let uids = readers
            .iter()
            .chain(&unread)
            .skip(start)
            .take(end - start)
            .copied()
            .collect();
        ImReply::Readers {
            seq,
            read: readers.len() as u32,
            unread: unread.len() as u32,
            from: start as u32,
            uids,
        }
    }

    fn submit(
        &mut self,
        draft: Draft,
        route: Route,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let req = &draft.req;
        debug_assert_eq!(home(req.sender, self.cores), self.core);
        if req.body.len() > BODY_MAX {
            out.replies
                .push((route, ImReply::Error(ImError::BodyTooLarge)));
            return;
        }
        let fp = fingerprint(req.to, req.class, &req.body);
        let key = draft.key();
        if let Some(m) = self.stored(&key) {
            let reply = if fingerprint(m.to, m.class, &m.body) == fp {
                ImReply::Sent {
                    seq: m.id.seq,
                    sent_ms: m.sent_ms,
                    duplicate: true,
                }
            } else {
                ImReply::Error(ImError::AppinfoReused)
            };
            self.stats.duplicates += u64::from(matches!(reply, ImReply::Sent { .. }));
            out.replies.push((route, reply));
            return;
        }
        match self.sends.get_mut(&key) {
            Some(SendState::InFlight {
                routes,
                fingerprint,
            }) => {
                if *fingerprint == fp {
                    // Answered with the original when it completes.
                    routes.push(route);
                } else {
                    out.replies
                        .push((route, ImReply::Error(ImError::AppinfoReused)));
                }
                return;
            }
            Some(SendState::Parked {
                fingerprint,
                accepted_ms,
            }) => {
                let reply = if *fingerprint == fp {
                    ImReply::Accepted {
                        accepted_ms: *accepted_ms,
                    }
                } else {
                    ImReply::Error(ImError::AppinfoReused)
                };
                out.replies.push((route, reply));
                return;
            }
            None => {}
        }
        if self.memory_refuses(route, out) {
            return;
        }
        if matches!(req.class, Class::Api | Class::App) && !self.machine_allows(req.sender, now_us)
        {
            out.replies.push((route, ImReply::Error(ImError::Busy)));
            return;
        }
        if let Target::Group(gid) = req.to {
            if self
                .held
                .get(&gid)
                .is_some_and(|q| q.len() >= HELD_PER_GROUP_MAX)
            {
                // The group's fan-out is this far behind: shed new sends (the client retries).
                out.replies.push((route, ImReply::Error(ImError::Busy)));
                return;
            }
        }
        if !self.take_work(req.sender) {
            // Beyond the core's, the user's or the tenant's share of work (R23).
            out.replies.push((route, ImReply::Error(ImError::Busy)));
            return;
        }
        self.sends.insert(
            key,
            SendState::InFlight {
                routes: smallvec![route],
                fingerprint: fp,
            },
        );
        match req.to {
            Target::User(uid) => {
                let p = self.user_partition(uid);
                self.commit_send(draft, p, now_us, log, out);
            }
            Target::Group(gid) => {
                let (sender, class, at) = (req.sender, req.class, draft.version);
                let pending = Pending::Fresh { draft, now_us };
                self.expand_at_home(gid, sender, class, at, pending, out);
            }
        }
    }

    /// Ends a send that will not be stored.
    fn fail_send(&mut self, key: SendKey, error: ImError, out: &mut Effects) {
        if let Some(SendState::InFlight { routes, .. }) = self.sends.remove(&key) {
            self.release_work(key.0);
            for r in routes {
                out.replies.push((r, ImReply::Error(error)));
            }
        }
    }

    /// Appends a send's SENT record, or parks it (soft failure, R23) when the log cannot take
    /// it now or the sender has parked sends (they go first, in order).
    fn commit_send(
        &mut self,
        draft: Draft,
        partition: Arc<Partition>,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let parked_before = self.parked_by_user.contains_key(&draft.req.sender);
        let result = if parked_before {
            Err(Box::new((draft, partition)))
        } else {
            self.append_sent(draft, partition, now_us, log)
        };
        if let Err(back) = result {
            let (mut draft, partition) = *back;
            let key = draft.key();
            let accepted_ms = *draft.sent_ms.get_or_insert(now_us / 1000);
            let Some(SendState::InFlight {
                routes,
                fingerprint,
            }) = self.sends.remove(&key)
            else {
                unreachable!("a send being committed is in flight");
            };
            self.sends.insert(
                key,
                SendState::Parked {
                    fingerprint,
                    accepted_ms,
                },
            );
            for r in routes {
                out.replies.push((r, ImReply::Accepted { accepted_ms }));
            }
            *self.parked_by_user.entry(key.0).or_default() += 1;
            if self.parked.is_empty() {
                self.park_backoff_ms = RETRY_FIRST_MS;
                self.park_due_us = now_us + RETRY_FIRST_MS * 1000;
            }
            self.parked.push_back(Parked {
                key,
                draft,
                partition,
                since_us: now_us,
            });
            self.stats.parked += 1;
        }
    }

    /// Retries the parked sends in order (soft failure, R23): as many as the log takes now;
    /// at the first refusal the interval doubles. Sends parked longer than the limit are
    /// dropped (counted; the client, not finding its message, sends it again with its appinfo).
    fn retry_parked(&mut self, now_us: u64, log: &mut LogWriter) {
        if self.parked.is_empty() || now_us < self.park_due_us {
            return;
        }
        while let Some(p) = self.parked.pop_front() {
            let user = p.key.0;
            if now_us.saturating_sub(p.since_us) > self.limits.park_for_ms * 1000 {
                self.sends.remove(&p.key);
                self.unpark(user);
                self.release_work(user);
                self.stats.park_dropped += 1;
                continue;
            }
            let fingerprint = match self.sends.get(&p.key) {
                Some(SendState::Parked { fingerprint, .. }) => *fingerprint,
                _ => unreachable!("a parked send's state is parked"),
            };
            match self.append_sent(p.draft, p.partition, now_us, log) {
                Ok(()) => {
                    // A client retrying from now on waits for the stored result.
                    self.sends.insert(
                        p.key,
                        SendState::InFlight {
                            routes: SmallVec::new(),
                            fingerprint,
                        },
                    );
                    self.unpark(user);
                    self.park_backoff_ms = RETRY_FIRST_MS;
                }
                Err(back) => {
                    let (draft, partition) = *back;
                    self.parked.push_front(Parked {
                        draft,
                        partition,
                        ..p
                    });
                    self.park_backoff_ms = (self.park_backoff_ms * 2).min(PARK_RETRY_MAX_MS);
                    self.park_due_us = now_us + self.park_backoff_ms * 1000;
                    return;
                }
            }
        }
    }

    fn unpark(&mut self, user: u64) {
        if let Some(n) = self.parked_by_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.parked_by_user.remove(&user);
            }
        }
    }

    /// Appends the SENT record of `draft`; gives it back when the log is too far behind.
    fn append_sent(
        &mut self,
        draft: Draft,
        partition: Arc<Partition>,
        now_us: u64,
        log: &mut LogWriter,
    ) -> Result<(), Box<(Draft, Arc<Partition>)>> {
        let key = draft.key();
        let (kind, refer, sent_ms, version) =
            (draft.kind, draft.refer, draft.sent_ms, draft.version);
        let req = draft.req;
        let slot = self.streams.slot(req.sender);
        let stream = self.streams.at(slot);
        let msg = Arc::new(Message {
            id: MsgId {
                sender: req.sender,
                seq: stream.next_seq(),
            },
            kind,
            refer,
            appinfo: req.appinfo,
            to: req.to,
            class: req.class,
            sent_ms: sent_ms.unwrap_or(now_us / 1000),
            body: req.body,
        });
        self.scratch.clear();
        encode_sent(&msg, version, &mut self.scratch);
        let (id, scratch) = (msg.id, &self.scratch);
        let appended = if is_huge(&partition) {
            log.bulk(|log| log.append(KIND_SENT, id.sender, id.seq, scratch))
        } else {
            log.append(KIND_SENT, id.sender, id.seq, scratch)
        };
        match appended {
            Ok(appended) => {
                let at = ColdRef::new(self.core, appended.start);
                stream.hot.push(self.kept.add(Some(msg.clone()), at, 1));
                if let (Target::Group(gid), Some(v)) = (msg.to, version) {
                    self.versions.insert(msg.id, gid, v);
                }
                self.stats.sends += 1;
                self.stats.stream_appends += 1;
                let early = self.deliver_early(&msg, &partition);
                self.waiters.push_back((
                    appended.end,
                    Waiter::Sent {
                        key,
                        msg,
                        partition,
                        accepted_us: now_us,
                        early,
                    },
                ));
                Ok(())
            }
            Err(AppendError::Backlog(_) | AppendError::DiskLow) => {
                let m = Arc::try_unwrap(msg).expect("not shared before it is logged");
                let draft = Draft {
                    req: SendRequest {
                        sender: m.id.sender,
                        appinfo: m.appinfo,
                        to: m.to,
                        class: m.class,
                        body: m.body,
                    },
                    kind,
                    refer,
                    sent_ms,
                    version,
                };
                Err(Box::new((draft, partition)))
            }
            Err(AppendError::TooLarge(_)) => unreachable!("bodies are bounded"),
        }
    }

    /// Hands a message whose SENT record was just appended to its recipients homed on this
    /// core, without waiting for the record to be durable: their DELIVERY record comes after
    /// the SENT record in this core's log (the next [`ImCore::flush`], before the commit loop
    /// takes the batch when it is idle), so it is never durable without it, and a single chat
    /// to a user homed on the same core is pushed after one commit instead of two. Other
    /// cores still get the message once it is durable (their logs are not ordered after this
    /// one). Not for huge groups: their deliveries wait behind each other (R21) and are held
    /// while the group's fan-out is in flight. True when the message was handed over.
    fn deliver_early(&mut self, msg: &MessageRef, partition: &Partition) -> bool {
        if is_huge(partition) {
            return false;
        }
        let mine = &partition[self.core as usize];
        if mine.iter().all(|&m| m == msg.id.sender) {
            return false;
        }
        self.inbox.push((msg.clone(), mine.clone(), self.core));
        true
    }

    /// A message from another core's engine (or this one's).
    pub fn handle(&mut self, msg: ImMsg, now_us: u64, log: &mut LogWriter, out: &mut Effects) {
        match msg {
            ImMsg::Expand {
                gid,
                sender,
                class,
                at,
                token,
                from,
            } => {
                let result = self.expand(gid, sender, class, at);
                out.messages.push((from, ImMsg::Expanded { token, result }));
            }
            ImMsg::Expanded { token, result } => match self.pending.remove(&token) {
                Some(Pending::Fresh {
                    mut draft,
                    now_us: at,
                }) => match result {
                    Ok((version, p)) => {
                        draft.version = Some(version);
                        self.commit_send(draft, p, now_us.max(at), log, out)
                    }
                    Err(e) => self.fail_send(draft.key(), e, out),
                },
                Some(Pending::Redrive { msg, have }) => {
                    // Only for records older than membership versions: a group left by the
                    // sender since has nobody more to reach.
                    let p = result.map(|(_, p)| p).unwrap_or_else(|_| {
                        Arc::new((0..self.cores).map(|_| self.empty.clone()).collect())
                    });
                    self.fan_out(&msg, &p, &have, None, now_us, log, out);
                }
                Some(Pending::Readers {
                    sender,
                    seq,
                    from,
                    route,
                }) => {
                    let reply = match result {
                        Ok((_, p)) => {
                            let mut members: Vec<u64> =
                                p.iter().flat_map(|c| c.iter().copied()).collect();
                            members.sort_unstable();
                            self.read_page(sender, seq, &members, from)
                        }
                        Err(e) => ImReply::Error(e),
                    };
                    out.replies.push((route, reply));
                }
                None => panic!("expansion answer for unknown token {token}"),
            },
            ImMsg::Deliver {
                msg,
                recipients,
                origin,
            } => self.inbox.push((msg, recipients, origin)),
            ImMsg::Delivered { id } => self.delivered(id, now_us, log, out),
            ImMsg::FloorAsk { round, from } => {
                let floors = self.oldest_versions_for(from);
                out.messages.push((from, ImMsg::Floors { round, floors }));
            }
            ImMsg::Floors { round, floors } => {
                let Some(r) = self.floor_round.as_mut().filter(|r| r.id == round) else {
                    return; // an abandoned round's answer
                };
                r.answer(&floors);
                if r.waiting == 0 {
                    let r = self.floor_round.take().expect("checked");
                    let mut forgotten = 0;
                    for (gid, floor) in r.floors() {
                        if let Some(g) = self.groups.get_mut(&gid) {
                            forgotten += g.raise_floor(floor) as u64;
                        }
                    }
                    self.stats.history_forgotten += forgotten;
                    self.stats.floor_rounds += 1;
                }
            }
        }
    }

    /// Starts a floor round of the groups homed here (see [`super::groups`]): asks every
    /// core, this one included, which versions of them its messages still refer to. When
    /// the last answer is in, the groups forget the memberships no message needs. A round
    /// still waiting for answers is abandoned (its late answers are ignored).
    pub fn start_floor_round(&mut self, out: &mut Effects) {
        let id = self.next_round;
        self.next_round += 1;
        let start = self
            .groups
            .iter()
            .filter_map(|(&gid, g)| g.durable.as_ref().map(|d| (gid, d.0)))
            .collect();
        self.floor_round = Some(FloorRound {
            id,
            waiting: self.cores,
            start,
            oldest: HashMap::new(),
        });
        for k in 0..self.cores {
            out.messages.push((
                k,
                ImMsg::FloorAsk {
                    round: id,
                    from: self.core,
                },
            ));
        }
    }

    /// Whether a floor round of the groups homed here is waiting for answers.
    pub fn floor_round_pending(&self) -> bool {
        self.floor_round.is_some()
    }

    /// (gid, oldest membership version still referred to here) for the groups homed on
    /// `core`: retained messages of users homed here, sends parked with their version, and
    /// withdrawals waiting for their recipients.
    fn oldest_versions_for(&self, core: u16) -> Vec<(u64, u64)> {
        let mut oldest: HashMap<u64, u64> = HashMap::new();
        let mut note = |gid: u64, v: u64| {
            if home(gid, self.cores) == core {
                let o = oldest.entry(gid).or_insert(v);
                *o = (*o).min(v);
            }
        };
        for (gid, v) in self.versions.oldest() {
            note(gid, v);
        }
        let drafts = self
            .parked
            .iter()
            .map(|p| &p.draft)
            .chain(self.pending.values().filter_map(|p| match p {
                Pending::Fresh { draft, .. } => Some(draft),
                _ => None,
            }));
        for d in drafts {
            if let (Target::Group(gid), Some(v)) = (d.req.to, d.version) {
                note(gid, v);
            }
        }
        oldest.into_iter().collect()
    }

    /// Appends a snapshot (log kind 21, in parts) of each group of `gids` homed here whose
    /// changes go past its newest snapshot, so compaction can drop the change records it
    /// covers once it is durable. Returns the (gid, (version, floor)) of the snapshots to
    /// wait for (appended now or earlier and not durable yet). A log too far behind stops
    /// it (the rest wait for the next pass).
    pub fn write_snapshots(&mut self, gids: &[u64], log: &mut LogWriter) -> Vec<(u64, (u64, u64))> {
        let mut wait = Vec::new();
        for &gid in gids {
            let Some(g) = self.groups.get(&gid) else {
                continue; // not homed here (the core count changed): its records stay
            };
            if g.durable.is_none() {
                continue;
            }
            let version = g.version();
            if let Some(at) = g.snap_appended.filter(|a| a.0 >= version) {
                if g.snap_durable < Some(at) {
                    wait.push((gid, at));
                }
                continue;
            }
            let at = (version, g.floor);
            let parts = g.snapshot_parts();
            let mut end = None;
            for p in &parts {
                self.scratch.clear();
                encode_snapshot(p, &mut self.scratch);
                let scratch = &self.scratch;
                match log.bulk(|log| log.append(KIND_GROUP_SNAPSHOT, gid, version, scratch)) {
                    Ok(a) => end = Some(a.end),
                    Err(AppendError::Backlog(_) | AppendError::DiskLow) => {
                        end = None;
                        break;
                    }
                    Err(AppendError::TooLarge(n)) => {
                        unreachable!("snapshot parts fit a record ({n} bytes)")
                    }
                }
            }
            let Some(end) = end else {
                // Parts already appended are an incomplete snapshot: recovery ignores it.
                return wait;
            };
            self.groups.get_mut(&gid).expect("checked").snap_appended = Some(at);
            self.waiters.push_back((end, Waiter::Snapshot { gid, at }));
            self.stats.snapshots += 1;
            wait.push((gid, at));
        }
        wait
    }

    /// The newest durable snapshot (version, floor) of a group homed here.
    pub fn group_snapshot(&self, gid: u64) -> Option<(u64, u64)> {
        self.groups.get(&gid)?.snap_durable
    }

    /// The newest durable snapshot (version, floor) of every group homed here that has one:
    /// compaction drops the change records and older snapshots they cover.
    pub fn group_snapshots(&self) -> HashMap<u64, (u64, u64)> {
        self.groups
            .iter()
            .filter_map(|(&gid, g)| g.snap_durable.map(|s| (gid, s)))
            .collect()
    }

    /// Past memberships a group homed here keeps, and the oldest version it answers (its
    /// floor).
    pub fn group_history(&self, gid: u64) -> Option<(usize, u64)> {
        self.groups.get(&gid).map(|g| (g.past.len(), g.floor))
    }

    /// Past memberships all groups homed here keep.
    pub fn group_past_total(&self) -> u64 {
        self.groups.values().map(|g| g.past.len() as u64).sum()
    }

    /// The members of a group homed here that a message of `sender` goes to: at membership
    /// version `at` (an earlier message's recipients), or the durable members now.
    fn expand(
        &self,
        gid: u64,
        sender: u64,
        class: Class,
        at: Option<u64>,
    ) -> Result<(u64, Arc<Partition>), ImError> {
        let Some(g) = self.groups.get(&gid) else {
            return Err(ImError::NoSuchGroup);
        };
        let Some((version, snapshot, count)) = &g.durable else {
            return Err(ImError::NoSuchGroup);
        };
        let (version, snapshot, count) = match at {
            None => (*version, snapshot.clone(), *count),
            Some(v) if v == *version => (v, snapshot.clone(), *count),
            // Versions a message can carry are durable ones: a later one is a damaged log.
            Some(v) if v > *version || v == 0 => return Err(ImError::NoSuchGroup),
            Some(v) => {
                // Below the floor no retained message refers to the version: the message
                // asked about is gone (retention) too.
                let members = g.members_at(v).ok_or(ImError::NoSuchMessage)?;
                let count = members.len();
                (v, partition(self.cores, members), count)
            }
        };
        let home = home(sender, self.cores) as usize;
        if snapshot[home].binary_search(&sender).is_err() {
            return Err(ImError::NotMember);
        }
        if class == Class::Control && count >= HUGE_GROUP {
            return Err(ImError::ControlDropped);
        }
        Ok((version, snapshot))
    }

    /// The sender's core hands a durable message to every core with recipients.
    #[allow(clippy::too_many_arguments)]
    fn fan_out(
        &mut self,
        msg: &MessageRef,
        partition: &Partition,
        have: &HashSet<u64>,
        accepted_us: Option<u64>,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        self.fan_out_tracked(
            msg,
            partition,
            have,
            accepted_us,
            None,
            false,
            now_us,
            log,
            out,
        );
    }

    /// `early`: this core's recipients have the message already ([`ImCore::deliver_early`]);
    /// their confirmation is still awaited.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_tracked(
        &mut self,
        msg: &MessageRef,
        partition: &Partition,
        have: &HashSet<u64>,
        accepted_us: Option<u64>,
        group: Option<u64>,
        early: bool,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        if let Some(gid) = group {
            *self.group_in_flight.entry(gid).or_default() += 1;
        }
        let mut remaining = 0;
        for (core, members) in partition.iter().enumerate() {
            let recipients: Arc<[u64]> = if have.is_empty() {
                members.clone()
            } else {
                members
                    .iter()
                    .copied()
                    .filter(|m| !have.contains(m))
                    .collect()
            };
            if recipients.iter().all(|&m| m == msg.id.sender) {
                continue;
            }
            remaining += 1;
            if early && core == self.core as usize {
                continue;
            }
            out.messages.push((
                core as u16,
                ImMsg::Deliver {
                    msg: msg.clone(),
                    recipients,
                    origin: self.core,
                },
            ));
        }
        self.outbox.insert(
            msg.id,
            Outbox {
                remaining,
                group,
                // A message with no recipient but its sender has no fan-out to time.
                accepted_us: accepted_us.filter(|_| remaining > 0),
            },
        );
        if remaining == 0 {
            self.delivered_all(msg.id, now_us, log, out);
        }
    }

    fn delivered(&mut self, id: MsgId, now_us: u64, log: &mut LogWriter, out: &mut Effects) {
        let Some(o) = self.outbox.get_mut(&id) else {
            panic!("delivery confirmation for {id}, which has no fan-out in flight");
        };
        o.remaining -= 1;
        if o.remaining == 0 {
            self.delivered_all(id, now_us, log, out);
        }
    }

    fn delivered_all(&mut self, id: MsgId, now_us: u64, log: &mut LogWriter, out: &mut Effects) {
        let mut release = None;
        if let Some(o) = self.outbox.remove(&id) {
            if let Some(at) = o.accepted_us {
                out.fanout_us.push(now_us.saturating_sub(at));
            }
            if let Some(gid) = o.group {
                let n = self.group_in_flight.get_mut(&gid).expect("counted");
                *n -= 1;
                if *n == 0 {
                    self.group_in_flight.remove(&gid);
                    release = Some(gid);
                }
            }
        }
        // A control record: tiny, and it must not be starved by the backlog bound (without
        // it, recovery would only deliver again to nobody).
        log.bulk(|log| log.append_control(KIND_FANOUT_DONE, id.sender, id.seq, &[]))
            .expect("an empty record fits");
        // The group's held messages go out together: one merged insert per core.
        if let Some(gid) = release {
            if let Some(held) = self.held.remove(&gid) {
                for (msg, partition, accepted) in held {
                    let none = HashSet::new();
                    self.fan_out_tracked(
                        &msg,
                        &partition,
                        &none,
                        Some(accepted),
                        Some(gid),
                        false,
                        now_us,
                        log,
                        out,
                    );
                }
            }
        }
    }

    /// Fans out a durable message, or holds it while its huge group's fan-out is in flight.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_or_hold(
        &mut self,
        msg: MessageRef,
        partition: Arc<Partition>,
        accepted_us: u64,
        early: bool,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let huge = match msg.to {
            Target::Group(gid) if is_huge(&partition) => Some(gid),
            _ => None,
        };
        if let Some(gid) = huge {
            assert!(!early, "huge-group messages are not delivered early");
            if self.group_in_flight.contains_key(&gid) {
                self.held
                    .entry(gid)
                    .or_default()
                    .push_back((msg, partition, accepted_us));
                return;
            }
        }
        let none = HashSet::new();
        self.fan_out_tracked(
            &msg,
            &partition,
            &none,
            Some(accepted_us),
            huge,
            early,
            now_us,
            log,
            out,
        );
    }

    /// Appends the deliveries received since the last flush: those for the same recipients
    /// merge into one record (R21). Call after each batch of [`ImCore::handle`] calls.
    pub fn flush(&mut self, log: &mut LogWriter) {
        self.write_blocked(log);
        if self.inbox.is_empty() {
            return;
        }
        // Runs to merge: a delivery joins the newest run for the same recipient list (the same
        // shared slice, as a group's snapshot is) unless its sender already has a message in
        // a later run, so each sender's messages keep their order in every stream. The
        // vectors and maps are the core's, kept between calls (no allocation per call).
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut runs = std::mem::take(&mut self.merge_runs);
        self.merge_lists.clear();
        self.merge_senders.clear();
        for (msg, recipients, origin) in inbox.drain(..) {
            let key = recipients.as_ptr() as usize;
            let len = message_len(&msg);
            let join = self.merge_lists.get(&key).copied().filter(|&r| {
                self.merge_senders
                    .get(&msg.id.sender)
                    .map_or(true, |&s| s <= r)
                    && runs[r].bytes + len <= RECORD_PAYLOAD_MAX
                    && (runs[r].recipients.len() < HUGE_GROUP
                        || runs[r].messages.len() < HUGE_MERGE_MAX)
            });
            let r = match join {
                Some(r) => r,
                None => {
                    runs.push(Run {
                        bytes: delivery_len(&[], recipients.len()),
                        recipients,
                        messages: Vec::new(),
                        origins: Vec::new(),
                    });
                    self.merge_lists.insert(key, runs.len() - 1);
                    runs.len() - 1
                }
            };
            self.merge_senders.insert(msg.id.sender, r);
            runs[r].bytes += len;
            runs[r].origins.push((msg.id, origin));
            runs[r].messages.push(msg);
        }
        self.inbox = inbox;
        // Small targets first (R22), in arrival order; then huge groups while this batch's
        // budget lasts (one run at least after each completed batch, so they progress); the
        // rest waits for the next batch, in order.
        let mut huge = Vec::new();
        for run in runs.drain(..) {
            if run.recipients.len() >= HUGE_GROUP {
                huge.push(run);
                continue;
            }
            // Behind deliveries still held, or held itself when the log is behind: recipients
            // see each sender's messages in send order either way.
            if !self.blocked.is_empty()
                || !self.deliver(&run.messages, &run.recipients, &run.origins, log)
            {
                self.stats.held_deliveries += 1;
                self.blocked.push_back(run);
            }
        }
        self.merge_runs = runs;
        for run in huge {
            self.huge_queue.push_back(HugeRun {
                messages: run.messages,
                recipients: run.recipients,
                next: 0,
                origins: run.origins,
            });
        }
        if !self.huge_deferred {
            self.write_huge_slice(log, usize::MAX);
        }
    }

    /// Huge-group deliveries are written only by [`ImCore::write_huge_slice`] (the server's
    /// low-priority task, R22), not inline by [`ImCore::flush`] and [`ImCore::batch_done`]:
    /// their member appends then never stand between a chat's record and its commit.
    pub fn set_huge_deferred(&mut self, deferred: bool) {
        self.huge_deferred = deferred;
    }

    /// Members of the front huge-group delivery the budget lets this batch write now.
    fn huge_room(&self, run: &HugeRun) -> usize {
        let fixed = delivery_len(&run.messages, 0);
        let bytes_room = self.huge_budget.saturating_sub(self.huge_used + fixed) / 16;
        let appends_room = self.huge_tokens as usize / run.messages.len();
        let room = bytes_room.min(appends_room);
        if self.huge_used == 0 {
            room.max(1)
        } else {
            room
        }
    }

    /// Whether a huge-group delivery waits and this batch's budget lets some of it go now.
    pub fn huge_writable(&self) -> bool {
        self.huge_queue
            .front()
            .is_some_and(|run| self.huge_room(run) > 0)
    }

    /// Writes huge-group deliveries while this batch's budget lasts, and at most about
    /// `limit` member appends (at least one member): each chunk of members is one record; the
    /// origins are told when the last chunk is durable (chunks are durable in log order).
    /// After each completed batch at least one chunk goes, so they progress. Returns whether
    /// it wrote anything (false also when the log is full).
    pub fn write_huge_slice(&mut self, log: &mut LogWriter, mut limit: usize) -> bool {
        let mut wrote = false;
        while let Some(run) = self.huge_queue.front() {
            let per_member = run.messages.len();
            let cap = if wrote {
                limit / per_member
            } else {
                (limit / per_member).max(1)
            };
            let n = self.huge_room(run).min(cap);
            if n == 0 {
                return wrote;
            }
            let start = run.next;
            let end = (start + n).min(run.recipients.len());
            let chunk: Arc<[u64]> = Arc::from(&run.recipients[start..end]);
            let last = end == run.recipients.len();
            let messages = run.messages.clone();
            // The origins are told once the last chunk is durable.
            let origins = if last {
                run.origins.clone()
            } else {
                Vec::new()
            };
            if !log.bulk(|log| self.deliver(&messages, &chunk, &origins, log)) {
                // The log is full: the run waits at the front and goes on after a commit.
                return wrote;
            }
            wrote = true;
            limit = limit.saturating_sub(per_member * (end - start));
            self.huge_used += delivery_len(&messages, 0) + 16 * (end - start);
            let appends = (messages.len() * (end - start)) as u64;
            self.huge_tokens = self.huge_tokens.saturating_sub(appends);
            if last {
                self.huge_queue.pop_front();
            } else {
                self.huge_queue.front_mut().expect("checked").next = end;
            }
        }
        wrote
    }

    /// Writes held deliveries in arrival order while the log takes them.
    fn write_blocked(&mut self, log: &mut LogWriter) {
        while let Some(b) = self.blocked.pop_front() {
            if !self.deliver(&b.messages, &b.recipients, &b.origins, log) {
                self.blocked.push_front(b);
                return;
            }
        }
    }

    /// Appends one delivery record; false when the log refused it (it is behind; nothing was
    /// written and the caller keeps the delivery).
    fn deliver(
        &mut self,
        messages: &[MessageRef],
        recipients: &Arc<[u64]>,
        origins: &[(MsgId, u16)],
        log: &mut LogWriter,
    ) -> bool {
        let mut list = std::mem::take(&mut self.deliver_list);
        let mut slots = std::mem::take(&mut self.deliver_slots);
        list.clear();
        slots.clear();
        let mut appends = 0;
        // The record's senders: a recipient among them does not get its own messages; every
        // other recipient gets them all.
        let mut senders: SmallVec<[u64; 4]> = SmallVec::new();
        for m in messages {
            if !senders.contains(&m.id.sender) {
                senders.push(m.id.sender);
            }
        }
        // Per message: recipients in the list that sent it.
        let mut own: SmallVec<[u32; 16]> = smallvec![0; messages.len()];
        for &uid in recipients.iter() {
            assert_eq!(
                home(uid, self.cores),
                self.core,
                "delivery for user {uid} reached a core that is not its home"
            );
            let sender = senders.contains(&uid);
            let n = if sender {
                let n = Delivery::count_for(messages, uid);
                if n == 0 {
                    continue;
                }
                for (o, m) in own.iter_mut().zip(messages) {
                    *o += u32::from(m.id.sender == uid);
                }
                n
            } else {
                messages.len() as u64
            };
            appends += n;
            let slot = self.streams.find(uid);
            let next = slot.map_or(1, |i| self.streams.at(i).next_seq());
            list.push((uid, next));
            slots.push((slot, sender));
        }
        self.scratch.clear();
        encode_delivery(messages, &list, &mut self.scratch);
        let first = messages[0].id;
        let written = match log.append(KIND_DELIVERY, first.sender, first.seq, &self.scratch) {
            Ok(appended) => {
                let at = ColdRef::new(self.core, appended.start);
                // One kept slot per message, held by every entry the record gives it.
                let holders = u32::try_from(list.len()).expect("fewer than 2^32 recipients");
                let kept: SmallVec<[Kept; 16]> = messages
                    .iter()
                    .zip(&own)
                    .map(|(m, &o)| match holders - o {
                        // Only its sender is among the recipients: no entry gets it.
                        0 => Kept::NONE,
                        refs => self.kept.add(Some(m.clone()), at, refs),
                    })
                    .collect();
                let mut streams = Vec::with_capacity(list.len());
                let reads: Vec<(MsgId, u64)> = messages
                    .iter()
                    .filter(|m| m.kind == EntryKind::Read)
                    .filter_map(|m| m.refer.map(|r| (r, m.id.sender)))
                    .filter(|(r, _)| list.iter().any(|&(uid, _)| uid == r.sender))
                    .collect();
                for (&(uid, first_seq), &(slot, sender)) in list.iter().zip(&slots) {
                    let i = slot.unwrap_or_else(|| self.streams.slot(uid));
                    let s = self.streams.at(i);
                    debug_assert_eq!(s.next_seq(), first_seq);
                    if sender {
                        for (m, &k) in messages.iter().zip(&kept) {
                            if m.id.sender != uid {
                                assert_ne!(k, Kept::NONE, "a message a recipient gets is kept");
                                s.hot.push(k);
                            }
                        }
                    } else {
                        s.hot.extend_from_slice(&kept);
                    }
                    streams.push((i, s.next_seq() - 1));
                }
                self.stats.delivery_records += 1;
                self.stats.merged_messages += messages.len() as u64 - 1;
                self.stats.stream_appends += appends;
                self.waiters.push_back((
                    appended.end,
                    Waiter::Delivery {
                        streams,
                        messages: origins.to_vec(),
                        reads,
                    },
                ));
                true
            }
            Err(AppendError::Backlog(_) | AppendError::DiskLow) => false,
            Err(AppendError::TooLarge(_)) => unreachable!("deliveries are sized to fit"),
        };
        self.deliver_list = list;
        self.deliver_slots = slots;
        written
    }

    /// Creates a group homed here.
    pub fn create_group(
        &mut self,
        gid: u64,
        owner: u64,
        members: &[u64],
        route: Route,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        debug_assert_eq!(home(gid, self.cores), self.core);
        if self.groups.contains_key(&gid) {
            out.replies
                .push((route, ImReply::Error(ImError::GroupExists)));
            return;
        }
        if self.memory_refuses(route, out) {
            return;
        }
        let mut set: HashSet<u64> = members.iter().copied().collect();
        set.insert(owner);
        if set.len() > GROUP_MEMBERS_MAX {
            out.replies
                .push((route, ImReply::Error(ImError::GroupFull)));
            return;
        }
        let mut list: Vec<u64> = set.iter().copied().filter(|&m| m != owner).collect();
        list.sort_unstable();
        let change = GroupChange::Create {
            owner,
            members: list,
        };
        self.groups.insert(gid, Group::new(owner));
        if !self.change_group(gid, change, route, log, out) {
            self.groups.remove(&gid);
        }
    }

    /// A group's durable version and member count, as a group reply.
    fn group_reply(gid: u64, g: &Group) -> ImReply {
        match &g.durable {
            Some((version, _, members)) => ImReply::Group {
                gid,
                version: *version,
                members: *members as u32,
            },
            // Not durable yet (the creation is on its way): nothing to answer from.
            None => ImReply::Error(ImError::Busy),
        }
    }

    /// Adds or removes members of a group homed here (`change` is `Add` or `Remove`). Any
    /// member may add; the owner may remove others; a member may remove itself (leave); the
    /// owner stays.
    pub fn update_group(
        &mut self,
        gid: u64,
        change: GroupChange,
        route: Route,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        let (add, actor, members) = match change {
            GroupChange::Add { actor, members } => (true, actor, members),
            GroupChange::Remove { actor, members } => (false, actor, members),
            GroupChange::Create { .. } => panic!("creation is create_group"),
        };
        if self.memory_refuses(route, out) {
            return;
        }
        let Some(g) = self.groups.get(&gid) else {
            out.replies
                .push((route, ImReply::Error(ImError::NoSuchGroup)));
            return;
        };
        let refusal = if !g.members.contains_key(&actor) {
            Some(ImError::NotMember)
        } else if add {
            let new = members
                .iter()
                .filter(|m| !g.members.contains_key(m))
                .count();
            (g.members.len() + new > GROUP_MEMBERS_MAX).then_some(ImError::GroupFull)
        } else if members.contains(&g.owner)
            || (actor != g.owner && members.iter().any(|&m| m != actor))
        {
            Some(ImError::NotOwner)
        } else {
            None
        };
        if let Some(e) = refusal {
            out.replies.push((route, ImReply::Error(e)));
            return;
        }
        let mut list = members;
        list.sort_unstable();
        list.dedup();
        // Only what changes is written: adding a member or removing a non-member is no new
        // version.
        list.retain(|m| g.members.contains_key(m) != add);
        if list.is_empty() {
            if log.appended_end() <= log.durable_position() {
                out.replies.push((route, Self::group_reply(gid, g)));
            } else {
                self.waiters
                    .push_back((log.appended_end(), Waiter::GroupSame { gid, route }));
            }
            return;
        }
        let change = if add {
            GroupChange::Add {
                actor,
                members: list,
            }
        } else {
            GroupChange::Remove {
                actor,
                members: list,
            }
        };
        self.change_group(gid, change, route, log, out);
    }

    /// Logs a change and applies it to the projected membership; sends see it once durable.
    fn change_group(
        &mut self,
        gid: u64,
        change: GroupChange,
        route: Route,
        log: &mut LogWriter,
        out: &mut Effects,
    ) -> bool {
        let g = self.groups.get_mut(&gid).expect("checked");
        let version = g.next_version;
        self.scratch.clear();
        encode_group(&change, &mut self.scratch);
        match log.append(KIND_GROUP, gid, version, &self.scratch) {
            Ok(appended) => {
                g.apply(version, &change);
                let snapshot = partition(self.cores, g.members.keys().copied());
                self.waiters.push_back((
                    appended.end,
                    Waiter::Group {
                        gid,
                        version,
                        snapshot,
                        members: g.members.len(),
                        route,
                    },
                ));
                true
            }
            Err(AppendError::Backlog(_) | AppendError::DiskLow) => {
                out.replies.push((route, ImReply::Error(ImError::Busy)));
                false
            }
            Err(AppendError::TooLarge(_)) => unreachable!("groups are bounded"),
        }
    }

    /// Members of a group homed here, as sends see them (durable), sorted.
    pub fn group_members(&self, gid: u64) -> Option<(u64, Vec<u64>)> {
        let (version, snapshot, _) = self.groups.get(&gid)?.durable.as_ref()?;
        let mut all: Vec<u64> = snapshot.iter().flat_map(|p| p.iter().copied()).collect();
        all.sort_unstable();
        Some((*version, all))
    }

    /// The log made everything before `durable` durable: answer, expose and announce.
    pub fn batch_done(
        &mut self,
        durable: LogPosition,
        now_us: u64,
        log: &mut LogWriter,
        out: &mut Effects,
    ) {
        self.huge_used = 0;
        self.refill_huge(now_us);
        self.write_blocked(log);
        if !self.huge_deferred {
            self.write_huge_slice(log, usize::MAX);
        }
        while self.waiters.front().is_some_and(|(end, _)| *end <= durable) {
            let (_, waiter) = self.waiters.pop_front().expect("checked");
            match waiter {
                Waiter::Sent {
                    key,
                    msg,
                    partition,
                    accepted_us,
                    early,
                } => {
                    let s = self.streams.get_mut(&msg.id.sender).expect("appended");
                    s.durable = s.durable.max(msg.id.seq);
                    out.pushes.push((msg.id.sender, s.durable));
                    self.release_work(msg.id.sender);
                    self.done.insert(key, msg.id.seq, msg.sent_ms);
                    if let Some(SendState::InFlight { routes, .. }) = self.sends.remove(&key) {
                        for r in routes {
                            out.replies.push((
                                r,
                                ImReply::Sent {
                                    seq: msg.id.seq,
                                    sent_ms: msg.sent_ms,
                                    duplicate: false,
                                },
                            ));
                        }
                    }
                    self.fan_out_or_hold(msg, partition, accepted_us, early, now_us, log, out);
                }
                Waiter::Delivery {
                    streams,
                    messages,
                    reads,
                } => {
                    for (msg, reader) in reads {
                        let list = self.reads.entry(msg).or_default();
                        if !list.contains(&reader) {
                            list.push(reader);
                        }
                    }
                    for (i, last) in streams {
                        let s = self.streams.at(i);
                        s.durable = s.durable.max(last);
                        let durable = s.durable;
                        out.pushes.push((self.streams.uid(i), durable));
                    }
                    for (id, origin) in messages {
                        out.messages.push((origin, ImMsg::Delivered { id }));
                    }
                }
                Waiter::Group {
                    gid,
                    version,
                    snapshot,
                    members,
                    route,
                } => {
                    let g = self.groups.get_mut(&gid).expect("appended");
                    g.durable = Some((version, snapshot, members));
                    out.replies.push((
                        route,
                        ImReply::Group {
                            gid,
                            version,
                            members: members as u32,
                        },
                    ));
                }
                Waiter::Snapshot { gid, at } => {
                    let g = self.groups.get_mut(&gid).expect("appended");
                    g.snap_durable = g.snap_durable.max(Some(at));
                }
                Waiter::GroupSame { gid, route } => {
                    let reply = match self.groups.get(&gid) {
                        Some(g) => Self::group_reply(gid, g),
                        None => ImReply::Error(ImError::NoSuchGroup),
                    };
                    out.replies.push((route, reply));
                }
            }
        }
    }

    /// Periodic work: parked sends and held deliveries to retry, appinfos to forget.
    pub fn tick(&mut self, now_us: u64, log: &mut LogWriter) {
        let now_ms = now_us / 1000;
        self.retry_parked(now_us, log);
        // Buckets that would be full again are forgotten (bounded memory).
        let full_after = MACHINE_BURST * 1_000_000 / MACHINE_PER_SECOND;
        self.machine
            .retain(|_, (_, at)| now_us.saturating_sub(*at) < full_after);
        self.write_blocked(log);
        self.done.expire(now_ms.saturating_sub(DEDUPE_WINDOW_MS));
    }

    /// Entries of `uid`'s stream after seq `after`, at most `limit` (and at most
    /// [`COLD_PAGE_MAX`] cold ones), durable ones only: the messages in memory, the positions
    /// of those to read back.
    pub fn sync_plan(&self, uid: u64, after: u64, limit: usize) -> PagePlan {
        let Some(s) = self.streams.get(&uid) else {
            return PagePlan::default();
        };
        // Saturating: a client may ask for entries after any u64 (u64::MAX: none, only max_seq).
        let from = after.max(s.base - 1).saturating_add(1);
        let mut entries = Vec::new();
        let mut seq = from;
        let mut cold = 0;
        while seq <= s.durable && entries.len() < limit {
            let e = match s
                .find(seq, &self.kept)
                .expect("durable entries are in the stream")
            {
                Found::Hot(m) => PageEntry::Hot(m.clone()),
                Found::Cold(at) => {
                    if cold == COLD_PAGE_MAX {
                        break;
                    }
                    cold += 1;
                    PageEntry::Cold(at)
                }
            };
            entries.push((seq, e));
            seq += 1;
        }
        PagePlan {
            entries,
            max_seq: s.durable,
        }
    }

    /// [`ImCore::sync_plan`] with the cold entries read back one by one through the cold
    /// source (tools and tests; the server reads them asynchronously). The page ends before
    /// the first entry that cannot be read.
    pub fn sync(&self, uid: u64, after: u64, limit: usize) -> Page {
        let plan = self.sync_plan(uid, after, limit);
        let mut entries = Vec::with_capacity(plan.entries.len());
        for (seq, e) in plan.entries {
            let m = match e {
                PageEntry::Hot(m) => m,
                PageEntry::Cold(_) => match self.entry(uid, seq) {
                    Some(m) => m,
                    None => break,
                },
            };
            entries.push((seq, m));
        }
        Page {
            entries,
            max_seq: plan.max_seq,
        }
    }

    /// Moves the durable entries sent before `cutoff_ms` out of memory (R24: the hot window
    /// is `im.hot_s`): only their records' positions stay, and reads take them from the log.
    /// Returns how many moved.
    pub fn cool(&mut self, cutoff_ms: u64) -> u64 {
        let kept = &mut self.kept;
        let moved: u64 = self
            .streams
            .values_mut()
            .map(|s| s.cool(cutoff_ms, kept) as u64)
            .sum();
        self.stats.cooled += moved;
        moved
    }

    /// Checks that every kept slot is held by exactly as many hot entries as it counts, and
    /// that no other is held (tests).
    #[cfg(test)]
    pub(crate) fn check_kept(&self) {
        let mut counted: HashMap<u64, u32> = HashMap::new();
        for s in self.streams.values() {
            for k in s.hot.iter() {
                *counted.entry(k.number()).or_default() += 1;
            }
        }
        let held: HashMap<u64, u32> = self.kept.held().map(|(k, n)| (k.number(), n)).collect();
        assert_eq!(counted, held, "core {}: kept counts", self.core);
        assert_eq!(held.len(), self.kept.live());
    }

    /// Entries in memory and entries cold, over all streams of this core.
    pub fn entry_counts(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(h, c), s| {
            (h + s.hot.len() as u64, c + s.cold.len() as u64)
        })
    }

    /// Newest durable seq of a stream homed here (0: empty).
    pub fn max_seq(&self, uid: u64) -> u64 {
        self.streams.get(&uid).map_or(0, |s| s.durable)
    }

    /// Newest durable seq of a stream, if the stream is homed here.
    pub fn head(&self, uid: u64) -> Option<u64> {
        self.streams.get(&uid).map(|s| s.durable)
    }

    /// Retention (R24): drops from the front of every stream the durable entries sent before
    /// `cutoff_ms` (a stream's seqs go on: its base moves), and the read lists of messages
    /// dropped from their sender's stream. Entries after the first one still retained stay, so
    /// a stream is always one contiguous run of seqs. Returns the entries dropped.
    pub fn expire(&mut self, cutoff_ms: u64) -> u64 {
        self.expire_segments(cutoff_ms, |_| false)
    }

    /// [`ImCore::expire`], where cold entries (whose send time is not in memory) go when
    /// `expired(at)` says the log segment holding their record is expired: every record in it
    /// was written, and so every message in it sent, before the cutoff (the rule compaction
    /// uses; they go at the same pass, so no cold entry points into a compacted segment).
    pub fn expire_segments(&mut self, cutoff_ms: u64, expired: impl Fn(ColdRef) -> bool) -> u64 {
        let mut dropped = 0;
        for s in self.streams.values_mut() {
            dropped += s.expire(cutoff_ms, &expired, &mut self.kept) as u64;
        }
        if dropped > 0 {
            let streams = &self.streams;
            self.reads
                .retain(|id, _| streams.get(&id.sender).map_or(true, |s| id.seq >= s.base));
            self.versions
                .retain(|id| streams.get(&id.sender).map_or(true, |s| id.seq >= s.base));
        }
        self.stats.expired += dropped;
        dropped
    }

    /// Messages whose fan-out is not finished (their records must outlive any retention).
    pub fn open_fanouts(&self) -> HashSet<MsgId> {
        let mut open: HashSet<MsgId> = self.outbox.keys().copied().collect();
        open.extend(self.held.values().flatten().map(|(m, _, _)| m.id));
        open.extend(self.redrive.iter().map(|(m, _)| m.id));
        for run in &self.huge_queue {
            open.extend(run.messages.iter().map(|m| m.id));
        }
        open
    }

    /// Whether nothing is in flight: no send, expansion, delivery, retry or unlogged work.
    pub fn is_idle(&self) -> bool {
        self.waiters.is_empty()
            && self.pending.is_empty()
            && self.outbox.is_empty()
            && self.inbox.is_empty()
            && self.blocked.is_empty()
            && self.held.is_empty()
            && self.huge_queue.is_empty()
            && self.parked.is_empty()
    }

    /// Streams homed here.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Stored sends the appinfo memory holds (R18).
    pub fn appinfo_entries(&self) -> usize {
        self.done.len()
    }

    /// Delivery records waiting for room in the log now.
    pub fn deliveries_held(&self) -> usize {
        self.blocked.len()
    }

    /// Kept messages held by hot entries, and slots in their table (free ones behind a held
    /// one included): see [`KeptMessages`].
    pub fn kept(&self) -> (usize, usize) {
        (self.kept.live(), self.kept.slots())
    }

    /// Messages to huge groups whose member copies are not all written yet: held behind
    /// their group's fan-out in flight, or queued for the member-append budget (R21, R22).
    pub fn huge_backlog(&self) -> usize {
        self.held.values().map(VecDeque::len).sum::<usize>()
            + self
                .huge_queue
                .iter()
                .map(|r| r.messages.len())
                .sum::<usize>()
    }
}

/// Rebuilds every core's IM state from the records of every core's log (in any order of
/// logs), then places each stream, group and send on its home core for the current core
/// count (which may differ from the one that wrote the logs).
///
/// Messages sent before the hot cutoff (R24) are not kept: their entries become positions in
/// the logs as they are read, so recovery's memory follows the hot part, not everything
/// retained. Kept anyway: the dedupe window's messages (a retried send is confirmed against
/// its entry; [`ImCore::cool`] moves them out after recovery) and messages whose fan-out is
/// not done (they are sent again).
#[derive(Default)]
pub struct ImRecovery {
    streams: HashMap<u64, Vec<(u64, Recovered)>>,
    sent: HashMap<MsgId, MessageRef>,
    /// (group, membership version) of group messages, from their SENT records.
    versions: HashMap<MsgId, (u64, u64)>,
    /// Messages met in a DELIVERY record before their SENT record (another core's log, read
    /// later, or a SENT record compaction dropped): one shared copy each, as in a running
    /// server, not one per record (recovered state was 1.7x the memory of the state it
    /// recovered before this).
    copies: HashMap<MsgId, MessageRef>,
    done: HashSet<MsgId>,
    /// Recipients holding messages whose fan-out is not known to be done.
    delivered_to: HashMap<MsgId, HashSet<u64>>,
    groups: HashMap<u64, Vec<(u64, GroupChange)>>,
    /// Group snapshot parts found, per group.
    snapshots: HashMap<u64, SnapshotsFound>,
    /// Newest seq per stream from stream-head records (compaction dropped what held it).
    heads: HashMap<u64, u64>,
    /// Readers per message, from the receipts in the message's sender's stream.
    reads: HashMap<MsgId, Vec<u64>>,
    /// Messages sent before this are not kept in memory (0: all are).
    keep_from_ms: u64,
    /// Entries sent before this are cold once recovered (0: none).
    hot_cutoff_ms: u64,
}

/// A group's snapshot parts as recovery found them: (version, floor) -> part number -> part.
type SnapshotsFound = BTreeMap<(u64, u64), BTreeMap<u16, SnapshotPart>>;

/// A stream entry as recovery found it.
enum Recovered {
    Hot(MessageRef, ColdRef),
    Cold { at: ColdRef, sent_ms: u64 },
}

impl Recovered {
    fn sent_ms(&self) -> u64 {
        match self {
            Recovered::Hot(m, _) => m.sent_ms,
            Recovered::Cold { sent_ms, .. } => *sent_ms,
        }
    }
}

impl ImRecovery {
    /// Recovery that keeps every message in memory.
    pub fn new() -> ImRecovery {
        ImRecovery::default()
    }

    /// Recovery that keeps in memory only what was sent from `hot_cutoff_ms` on (and the
    /// dedupe window's messages: `now_ms` - 24 h), and positions for the rest.
    pub fn with_hot_cutoff(hot_cutoff_ms: u64, now_ms: u64) -> ImRecovery {
        ImRecovery {
            keep_from_ms: hot_cutoff_ms.min(now_ms.saturating_sub(DEDUPE_WINDOW_MS)),
            hot_cutoff_ms,
            ..ImRecovery::default()
        }
    }

    /// Whether a message stays in memory (its entries too, where they have no position).
    fn keeps(&self, m: &Message) -> bool {
        m.sent_ms >= self.keep_from_ms
    }

    /// The copy already known, if `decoded` is the same message (records that disagree about
    /// one message are corruption: recovery stops, naming it).
    fn same(known: MessageRef, decoded: &Message) -> Result<MessageRef, String> {
        if *known != *decoded {
            return Err(format!(
                "message {} differs between two log records that carry it",
                decoded.id
            ));
        }
        Ok(known)
    }

    /// Whether `kind` is an IM record kind.
    pub fn is_im(kind: u8) -> bool {
        matches!(
            kind,
            KIND_SENT
                | KIND_DELIVERY
                | KIND_FANOUT_DONE
                | KIND_GROUP
                | KIND_STREAM_HEAD
                | KIND_GROUP_SNAPSHOT
        )
    }

    /// One entry of `uid`'s stream: the message if it is kept, else where its record is.
    fn push_entry(&mut self, uid: u64, seq: u64, m: &MessageRef, at: ColdRef) {
        if let (EntryKind::Read, Some(r)) = (m.kind, m.refer) {
            if r.sender == uid {
                let list = self.reads.entry(r).or_default();
                if !list.contains(&m.id.sender) {
                    list.push(m.id.sender);
                }
            }
        }
        let e = if self.keeps(m) || !at.is_some() {
            Recovered::Hot(m.clone(), at)
        } else {
            Recovered::Cold {
                at,
                sent_ms: m.sent_ms,
            }
        };
        self.streams.entry(uid).or_default().push((seq, e));
    }

    /// Takes one record (others than IM kinds are ignored); `at` is where it lies (log core
    /// and position; [`ColdRef::NONE`] keeps its entries in memory).
    pub fn replay(
        &mut self,
        kind: u8,
        stream: u64,
        seq: u64,
        payload: &[u8],
        at: ColdRef,
    ) -> Result<(), String> {
        match kind {
            KIND_SENT => {
                let (decoded, version) = decode_sent(stream, seq, payload).map_err(|e| e.0)?;
                if let (Some(v), Target::Group(gid)) = (version, decoded.to) {
                    self.versions.insert(decoded.id, (gid, v));
                }
                let m = match self.copies.remove(&decoded.id) {
                    Some(copy) => Self::same(copy, &decoded)?,
                    None => Arc::new(decoded),
                };
                let keep = self.keeps(&m);
                self.push_entry(m.id.sender, m.id.seq, &m, at);
                // An old message is kept only while its fan-out is not known to be done (its
                // FANOUT_DONE comes later in the same log).
                if (keep || !self.done.contains(&m.id)) && self.sent.insert(m.id, m).is_some() {
                    return Err(format!("message {stream}#{seq} was sent twice"));
                }
            }
            KIND_DELIVERY => {
                let mut d = decode_delivery(payload).map_err(|e| e.0)?;
                for m in &mut d.messages {
                    if !self.keeps(m) {
                        continue;
                    }
                    let known = self.sent.get(&m.id).or_else(|| self.copies.get(&m.id));
                    match known {
                        Some(k) => *m = Self::same(k.clone(), m)?,
                        None => {
                            self.copies.insert(m.id, m.clone());
                        }
                    }
                }
                for &(uid, first) in &d.recipients {
                    let mut seq = first;
                    for m in &d.messages {
                        if m.id.sender != uid {
                            self.push_entry(uid, seq, m, at);
                            seq += 1;
                        }
                    }
                }
                for m in &d.messages {
                    if !self.done.contains(&m.id) {
                        let to = self.delivered_to.entry(m.id).or_default();
                        to.extend(d.recipients.iter().map(|&(u, _)| u));
                    }
                }
            }
            KIND_FANOUT_DONE => {
                if !payload.is_empty() {
                    return Err("fan-out record with a payload".into());
                }
                let id = MsgId {
                    sender: stream,
                    seq,
                };
                self.done.insert(id);
                self.delivered_to.remove(&id);
                if self.sent.get(&id).is_some_and(|m| !self.keeps(m)) {
                    self.sent.remove(&id);
                }
            }
            KIND_GROUP => {
                let change = decode_group(payload).map_err(|e| e.0)?;
                self.groups.entry(stream).or_default().push((seq, change));
            }
            KIND_GROUP_SNAPSHOT => {
                let part = decode_snapshot(seq, payload)
                    .map_err(|e| format!("snapshot of group {stream}: {}", e.0))?;
                // The same part twice (a snapshot appended again after a partial one) is
                // the same bytes: one copy is enough.
                self.snapshots
                    .entry(stream)
                    .or_default()
                    .entry((seq, part.floor))
                    .or_default()
                    .insert(part.part, part);
            }
            KIND_STREAM_HEAD => {
                if !payload.is_empty() || seq == 0 {
                    return Err(format!(
                        "stream head {stream}#{seq} with a payload or seq 0"
                    ));
                }
                let h = self.heads.entry(stream).or_default();
                *h = (*h).max(seq);
            }
            _ => {}
        }
        Ok(())
    }

    /// Builds the cores; entries sent before `cutoff_ms` are dropped (retention, R24). Fails
    /// (naming what) when the records contradict each other: a seq doubled or missing in a
    /// stream (other than before its first record kept by compaction, or among entries
    /// retention drops anyway), a group change out of order. Entries not kept in memory are
    /// cold; so are the kept ones sent before the hot cutoff given at creation, once
    /// [`ImCore::cool`] runs with it.
    pub fn finish(self, cores: u16, now_ms: u64, cutoff_ms: u64) -> Result<Vec<ImCore>, String> {
        let mut out: Vec<ImCore> = (0..cores).map(|k| ImCore::new(k, cores)).collect();
        // Per core: the kept slot of each (record, message) recovered so far.
        let mut interned: Vec<HashMap<(ColdRef, *const Message), Kept>> =
            (0..cores).map(|_| HashMap::new()).collect();
        let mut streams = self.streams;
        for &uid in self.heads.keys() {
            streams.entry(uid).or_default();
        }
        for (uid, mut entries) in streams {
            entries.sort_unstable_by_key(|(seq, _)| *seq);
            // Compaction keeps a stream's records from some seq on (older ones expired), and
            // a head record where it dropped them all.
            let floor = self.heads.get(&uid).copied().unwrap_or(0);
            entries.retain(|(seq, _)| *seq > floor);
            let past = || format!("stream of user {uid}: seqs run past {}", u64::MAX);
            let mut base = match entries.first() {
                Some(&(seq, _)) => seq,
                None => floor.checked_add(1).ok_or_else(past)?,
            };
            let mut i = 0;
            while i < entries.len() {
                let want = base.checked_add(i as u64).ok_or_else(past)?;
                let seq = entries[i].0;
                if seq == want {
                    i += 1;
                    continue;
                }
                // A gap (or double) is only acceptable after entries that all expired: a record
                // compaction kept (a fan-out still in flight) ahead of dropped ones.
                if seq > want && entries[..i].iter().all(|(_, e)| e.sent_ms() < cutoff_ms) {
                    entries.drain(..i);
                    base = seq;
                    i = 0;
                    continue;
                }
                return Err(format!(
                    "stream of user {uid}: seq {seq} where {want} belongs"
                ));
            }
            let durable = base + entries.len() as u64 - 1;
            // Retention, by send time (known here for cold entries too).
            let expired = entries
                .iter()
                .take_while(|(_, e)| e.sent_ms() < cutoff_ms)
                .count();
            entries.drain(..expired);
            base += expired as u64;
            let k = home(uid, cores) as usize;
            let core = &mut out[k];
            let mut stream = Stream {
                base,
                cold: Entries::new(),
                hot: Entries::staggered(uid),
                durable,
            };
            for (_, e) in entries {
                let (msg, at) = match e {
                    Recovered::Cold { at, .. } if stream.hot.is_empty() => {
                        stream.cold.push(at);
                        continue;
                    }
                    Recovered::Cold { at, .. } => (None, at),
                    Recovered::Hot(m, at) => (Some(m), at),
                };
                // One slot per message and record on this core, as deliveries make them.
                let key = (at, msg.as_ref().map_or(std::ptr::null(), Arc::as_ptr));
                let kept = match interned[k].get(&key) {
                    Some(&kept) => {
                        core.kept.hold(kept);
                        kept
                    }
                    None => {
                        let kept = core.kept.add(msg, at, 1);
                        interned[k].insert(key, kept);
                        kept
                    }
                };
                stream.hot.push(kept);
            }
            core.streams.insert(uid, stream);
        }
        for (id, readers) in self.reads {
            out[home(id.sender, cores) as usize]
                .reads
                .insert(id, readers);
        }
        let mut snapshots = self.snapshots;
        let mut groups = self.groups;
        for &gid in snapshots.keys() {
            groups.entry(gid).or_default();
        }
        for (gid, mut changes) in groups {
            changes.sort_unstable_by_key(|(v, _)| *v);
            // The newest complete snapshot, if any: the group starts from it, and the
            // changes it covers (compaction may have dropped some) are skipped.
            let mut g: Option<Group> = None;
            if let Some(versions) = snapshots.remove(&gid) {
                for ((version, _), parts) in versions.into_iter().rev() {
                    let complete = parts
                        .values()
                        .next()
                        .is_some_and(|p| usize::from(p.parts) == parts.len());
                    if complete {
                        let parts = parts.into_values().collect();
                        g = Some(
                            Group::from_snapshot(version, parts)
                                .map_err(|e| format!("group {gid}: {e}"))?,
                        );
                        break;
                    }
                }
            }
            let from = g.as_ref().map_or(0, |g| g.version());
            changes.retain(|(v, _)| *v > from);
            for (i, (version, change)) in changes.into_iter().enumerate() {
                let want = from.checked_add(i as u64 + 1);
                if want != Some(version) {
                    return Err(format!(
                        "group {gid}: version {version} where {} belongs",
                        want.map_or_else(|| "none".to_string(), |w| w.to_string())
                    ));
                }
                match (&change, g.as_mut()) {
                    (GroupChange::Create { owner, .. }, None) => g = Some(Group::new(*owner)),
                    (GroupChange::Create { .. }, Some(_)) => {
                        return Err(format!("group {gid}: created again at version {version}"))
                    }
                    (_, None) => {
                        return Err(format!("group {gid}: change {version} before creation"))
                    }
                    _ => {}
                }
                g.as_mut().expect("created").apply(version, &change);
            }
            let Some(mut g) = g else {
                return Err(format!(
                    "group {gid}: snapshot parts but no complete snapshot and no changes"
                ));
            };
            g.durable = Some((
                g.next_version - 1,
                partition(cores, g.members.keys().copied()),
                g.members.len(),
            ));
            out[home(gid, cores) as usize].groups.insert(gid, g);
        }
        for (id, (gid, v)) in self.versions {
            out[home(id.sender, cores) as usize]
                .versions
                .insert(id, gid, v);
        }
        let mut sent: Vec<MessageRef> = self.sent.into_values().collect();
        sent.sort_unstable_by_key(|m| (m.sent_ms, m.id));
        for m in sent {
            let core = &mut out[home(m.id.sender, cores) as usize];
            if m.sent_ms.saturating_add(DEDUPE_WINDOW_MS) > now_ms {
                let key = (m.id.sender, m.appinfo, m.kind as u8);
                core.done.insert(key, m.id.seq, m.sent_ms);
            }
            if !self.done.contains(&m.id) {
                let have = self.delivered_to.get(&m.id).cloned().unwrap_or_default();
                core.redrive.push((m, have));
            }
        }
        // What the logs still hold but retention has dropped (segments not compacted yet):
        // the read lists and versions of messages gone from their senders' streams.
        for core in &mut out {
            core.expire(cutoff_ms);
            core.cool(self.hot_cutoff_ms);
            core.stats.cooled = 0;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
