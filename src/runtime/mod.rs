//! The thin runtime layer of `hongbao serve` (the engines stay sans-IO; only this layer does
//! I/O): one pinned glommio executor per core, each with its own SO_REUSEPORT listeners (binary and HTTP), connections, engine
//! ([`crate::shake::engine`]), log commit loop and cross-core queues. Only this module touches
//! glommio, sockets, files of the log and the clock.
//!
//! Cross-core work (a shake of a user homed on another core, an open of a ticket owned by
//! another core, and the answers) crosses bounded lock-free crossbeam queues, one per
//! (source, destination) pair, batched: a core collects messages per destination while it
//! handles a read or a commit, pushes them, then rings the destination's doorbell once (a
//! glommio shared channel of capacity 1, which wakes a parked executor through its eventfd).

mod answers;
mod cold;
mod conn;
mod conns;
mod disk;
mod im;
mod reload;
mod retention;
mod signals;
mod uring;
mod watch;

pub use crate::im::OwnOp;
pub use im::GroupOp;
pub use reload::Reloadable;
pub use signals::Signals;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use foldhash::{HashMap, HashMapExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};

use crate::metrics::CoreMetrics;
use crate::serve::config::{NetPath, ServeConfig};
use crate::serve::setup::{now_ms, CoreSetup, Prepared};
use crate::shake::engine::{Engine, OpenRequest, Route};
use crate::store::WriteBatch;
use crate::ticket::lists::KeyLists;
use crate::ticket::Keyring;
use crate::token::TokenKeys;
use crate::wire::ops::{ErrorCode, OpResult};

/// How long connections get to finish after a shutdown signal before they are cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Ticker period: retries of answers that did not fit a full queue, shutdown checks, gauges.
/// Longer costs shutdown latency and retry latency under overload; shorter costs idle CPU.
const TICK: Duration = Duration::from_millis(10);
/// Locked memory glommio may use per executor for its io_uring buffers; the log uses buffered
/// I/O, so little is needed (and the default RLIMIT_MEMLOCK is 8 MiB).
const IO_MEMORY: usize = 512 << 10;

/// A message between cores.
pub enum Msg {
    Shake {
        uid: u64,
        from: u16,
        id: u64,
    },
    Open {
        req: OpenRequest,
        from: u16,
        id: u64,
    },
    Reply {
        id: u64,
        result: OpResult,
    },
    /// An IM send, run on the sender's home core.
    ImSend {
        req: crate::im::SendRequest,
        from: u16,
        id: u64,
    },
    /// A page of a user's stream, read on the user's home core.
    ImSync {
        uid: u64,
        after: u64,
        limit: u32,
        from: u16,
        id: u64,
    },
    /// A group request, run on the group's home core.
    ImGroup {
        gid: u64,
        op: GroupOp,
        from: u16,
        id: u64,
    },
    /// A request about an entry of the user's own stream, run on the user's home core.
    ImOwn {
        uid: u64,
        seq: u64,
        op: OwnOp,
        from: u16,
        id: u64,
    },
    /// Between the cores' IM engines.
    Im(crate::im::ImMsg),
    /// To a user's home core: core `core` has (or no longer has) a connection watching `uid`.
    Presence {
        uid: u64,
        core: u16,
        online: bool,
    },
    /// To a core with connections watching `uid`: its stream grew to `seq`.
    Push {
        uid: u64,
        seq: u64,
    },
}

impl Msg {
    /// The answer entry of a request (requests may be refused when a queue is full; the other
    /// messages carry work already done and must wait for room instead).
    fn request_id(&self) -> Option<u64> {
        match self {
            Msg::Shake { id, .. }
            | Msg::Open { id, .. }
            | Msg::ImSend { id, .. }
            | Msg::ImSync { id, .. }
            | Msg::ImGroup { id, .. }
            | Msg::ImOwn { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Start-up stages of a core, as the watchdog reports them.
const STAGES: [&str; 6] = [
    "starting its executor",
    "recovering its IM fan-outs",
    "connecting its doorbells to the other cores",
    "waiting for core 0 to bind the ports",
    "binding its listeners",
    "ready",
];
/// How long the main thread waits for every core to be ready (start-up takes milliseconds;
/// recovery is done before), and how many times a stuck start is tried (docs/TUNING.md).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: u32 = 3;

/// Read-only (or atomic) state of all cores.
pub struct Shared {
    pub cores: usize,
    pub keyring: Keyring,
    pub owner: HashMap<u32, u16>,
    pub metrics: Vec<Arc<CoreMetrics>>,
    /// `queues[src][dst]`.
    queues: Vec<Vec<ArrayQueue<Msg>>>,
    pub shutdown: Arc<AtomicBool>,
    /// Cores that still have connections (during shutdown).
    draining: AtomicUsize,
    pub key_lists_path: Option<std::path::PathBuf>,
    /// Connections per core (`server.connections_max`): the io_uring path holds them as
    /// direct descriptors, outside the process's descriptor table.
    pub connections_max: usize,
    /// The same bound cut to the descriptor limit, for glommio's sockets.
    pub fd_connections_max: usize,
    bound: Mutex<Option<(SocketAddr, SocketAddr)>>,
    /// Per core, how far its start-up got (STAGES), for the start-up watchdog.
    startup: Vec<std::sync::atomic::AtomicU8>,
    /// IM retention (R24): messages kept this long; retention passes this often.
    pub retention: std::time::Duration,
    /// `im.hot_s`: entries older than this leave memory at the retention pass.
    pub hot: std::time::Duration,
    pub compact_every: std::time::Duration,
    /// `im.memory_max_mb` in bytes: above it the IM engines refuse new writes.
    pub im_memory_max: u64,
    /// The data directory's free space against its watermark (read by the main thread).
    pub disk: disk::DiskWatch,
    /// SIGHUP reloads.
    pub reloads: reload::Reloads,
}

/// A request in a connection's pipeline, in request order.
pub(crate) enum Slot {
    Ready(OpResult),
    Wait(answers::Answer),
}

impl Slot {
    /// The result if it is there (once: a slot is answered once).
    pub fn try_take(&mut self) -> Option<OpResult> {
        match self {
            // The slot is popped once answered; what stays behind is never read.
            Slot::Ready(r) => Some(std::mem::replace(r, OpResult::error(ErrorCode::Busy))),
            Slot::Wait(a) => a.try_take(),
        }
    }

    /// Waits until the result is there (cancel-safe: dropped early, the slot still waits).
    pub async fn ready(&mut self) {
        if let Slot::Wait(a) = self {
            let result = a.await;
            *self = Slot::Ready(result);
        }
    }
}

/// One core's runtime state; every task of the core holds an `Rc` of it.
pub(crate) struct Core {
    pub id: u16,
    pub shared: Arc<Shared>,
    pub engine: RefCell<Engine>,
    /// The IM engine; appends to the same log as `engine`.
    im: RefCell<crate::im::ImCore>,
    /// IM messages this core sent itself, handled before the call that made them returns.
    im_local: RefCell<VecDeque<crate::im::ImMsg>>,
    /// Users homed here: the cores with connections watching them.
    presence: RefCell<HashMap<u64, Vec<u16>>>,
    /// Connections of this core watching their user's stream.
    watchers: RefCell<HashMap<u64, Vec<Rc<im::Watch>>>>,
    /// This core's copies of the MAC keys (their MAC states are per core, see `token`).
    pub auth_keys: TokenKeys,
    pub token_keys: TokenKeys,
    answers: answers::Answers,
    outbox: RefCell<Vec<VecDeque<Msg>>>,
    doorbells: RefCell<Vec<Option<ConnectedSender<()>>>>,
    commit_wake: LocalSender<()>,
    /// Wakes the task writing huge-group deliveries (R22, `im::bulk_loop`).
    bulk_wake: LocalSender<()>,
    /// Set while that task runs the engine (it does not wake itself).
    bulk_running: Cell<bool>,
    pub lists: RefCell<KeyLists>,
    /// Open connections, and the signal that tells them the server stops.
    conns: conns::Conns,
    /// Segment files open for reading cold stream entries (R24).
    cold: cold::ColdPages,
}

impl Core {
    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id as usize]
    }

    /// Hands an answer to whoever waits for it: a local request, or another core.
    fn deliver(&self, route: Route, result: OpResult) {
        match route {
            // The connection may be gone; the answer then frees its entry.
            Route::Local(id) => self.answers.deliver(id, result),
            Route::Remote { core, id } => {
                self.outbox.borrow_mut()[core as usize].push_back(Msg::Reply { id, result });
            }
        }
    }

    /// Runs a request on core `target`: here through `local` (answered at once, or later by
    /// the commit loop), or on another core as the message `remote(id)` makes.
    fn dispatch(
        self: &Rc<Self>,
        target: u16,
        local: impl FnOnce(&mut Engine, Route) -> Option<OpResult>,
        remote: impl FnOnce(u64) -> Msg,
    ) -> Slot {
        let id = self.answers.register();
        if target == self.id {
            let answer = local(&mut self.engine.borrow_mut(), Route::Local(id));
            match answer {
                Some(result) => {
                    self.answers.cancel(id);
                    Slot::Ready(result)
                }
                None => Slot::Wait(answers::Answer::new(self.clone(), id)),
            }
        } else {
            self.outbox.borrow_mut()[target as usize].push_back(remote(id));
            self.metrics().forwarded_out.fetch_add(1, Ordering::Relaxed);
            Slot::Wait(answers::Answer::new(self.clone(), id))
        }
    }

    /// A shake of `uid`, decided on the user's home core.
    pub fn shake(self: &Rc<Self>, uid: u64, now: u64) -> Slot {
        let home = crate::serve::setup::home_core(uid, self.shared.cores) as u16;
        let from = self.id;
        self.dispatch(
            home,
            |engine, route| engine.shake(uid, now, route),
            |id| Msg::Shake { uid, from, id },
        )
    }

    /// An open that passed the stateless checks, claimed on the shard's owner core.
    pub fn open(self: &Rc<Self>, req: OpenRequest, owner: u16) -> Slot {
        let from = self.id;
        self.dispatch(
            owner,
            |engine, route| engine.open(req, route),
            |id| Msg::Open { req, from, id },
        )
    }

    /// Pushes collected messages to their queues and rings each destination once. Requests
    /// that do not fit are answered `Busy` here; answers that do not fit wait for the next
    /// flush (the ticker retries), because the work behind them is done.
    pub fn flush(&self) {
        let mut busy = Vec::new();
        {
            let mut outbox = self.outbox.borrow_mut();
            for (dst, messages) in outbox.iter_mut().enumerate() {
                if messages.is_empty() {
                    continue;
                }
                let queue = &self.shared.queues[self.id as usize][dst];
                let mut pushed = false;
                while let Some(msg) = messages.pop_front() {
                    match queue.push(msg) {
                        Ok(()) => pushed = true,
                        Err(msg) => match msg.request_id() {
                            Some(id) => busy.push(id),
                            None => {
                                messages.push_front(msg);
                                break;
                            }
                        },
                    }
                }
                if pushed {
                    if let Some(bell) = &self.doorbells.borrow()[dst] {
                        // Full means a wake-up is already pending.
                        let _ = bell.try_send(());
                    }
                }
            }
        }
        for id in busy {
            let backoff_ms = 100;
            self.deliver(
                Route::Local(id),
                OpResult::Error {
                    code: ErrorCode::Busy,
                    backoff_ms,
                },
            );
        }
    }

    pub fn wake_commit(&self) {
        let _ = self.commit_wake.try_send(());
    }

    fn handle(self: &Rc<Self>, msg: Msg) {
        match msg {
            Msg::Shake { uid, from, id } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                let route = Route::Remote { core: from, id };
                let answer = self.engine.borrow_mut().shake(uid, now_ms(), route);
                if let Some(result) = answer {
                    self.deliver(route, result);
                }
            }
            Msg::Open { req, from, id } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                let route = Route::Remote { core: from, id };
                let answer = self.engine.borrow_mut().open(req, route);
                if let Some(result) = answer {
                    self.deliver(route, result);
                }
            }
            Msg::Reply { id, result } => self.deliver(Route::Local(id), result),
            Msg::ImSend { req, from, id } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                self.run_send(req, Route::Remote { core: from, id });
            }
            Msg::ImSync {
                uid,
                after,
                limit,
                from,
                id,
            } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                self.run_sync(uid, after, limit, Route::Remote { core: from, id });
            }
            Msg::ImGroup { gid, op, from, id } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                self.run_group(gid, op, Route::Remote { core: from, id });
            }
            Msg::ImOwn {
                uid,
                seq,
                op,
                from,
                id,
            } => {
                self.metrics().forwarded_in.fetch_add(1, Ordering::Relaxed);
                self.run_own(uid, seq, op, Route::Remote { core: from, id });
            }
            Msg::Im(msg) => self.im_message(msg),
            Msg::Presence { uid, core, online } => self.set_presence(uid, core, online),
            Msg::Push { uid, seq } => self.announce(uid, seq),
        }
    }

    pub(crate) fn add_conn(&self, cut: conns::Cut) -> u64 {
        let id = self.conns.add(cut);
        let m = self.metrics();
        m.connections_accepted.fetch_add(1, Ordering::Relaxed);
        m.connections_open.fetch_add(1, Ordering::Relaxed);
        id
    }

    pub fn remove_conn(&self, id: u64) {
        if self.conns.remove(id) {
            self.metrics()
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub fn stopping(&self) -> bool {
        self.conns.stopping()
    }
}

/// Writes the log's batches as they come: write + fdatasync on a helper thread, then answers
/// what became durable. Batches form by themselves: whatever was appended while the previous
/// one was on its way to the disk goes into the next (group commit).
///
/// Priority on the disk (R22): while urgent commits are coming (one completed less than
/// `hold` ago), appended records that are all bulk ([`crate::store::LogWriter::bulk`]:
/// huge-group messages and fan-out bookkeeping) do not start a commit of their own; they ride
/// the next urgent one, or go by themselves once they have waited `hold`. A chat then never
/// waits behind a commit the flood of a huge group started (docs/ARCHITECTURE.md).
async fn commit_loop(
    core: Rc<Core>,
    dir: std::path::PathBuf,
    wake: local_channel::LocalReceiver<()>,
    hold: Duration,
) {
    let mut file: SegmentFile = None;
    let mut answers = Vec::new();
    let mut last_urgent: Option<Instant> = None;
    let mut bulk_since: Option<Instant> = None;
    let armed = Rc::new(Cell::new(false));
    while wake.recv().await.is_some() {
        loop {
            let now = Instant::now();
            let holding = !hold.is_zero()
                && last_urgent.is_some_and(|t| now - t < hold)
                && bulk_since.map_or(true, |t| now - t < hold);
            let batch = {
                let mut engine = core.engine.borrow_mut();
                if holding {
                    engine.log_mut().take_urgent_batch()
                } else {
                    engine.take_batch()
                }
            };
            let Some(batch) = batch else {
                if holding && core.engine.borrow_mut().log_mut().holds_only_bulk() {
                    if bulk_since.is_none() {
                        core.metrics().bulk_holds.fetch_add(1, Ordering::Relaxed);
                    }
                    let since = *bulk_since.get_or_insert(now);
                    let until = (last_urgent.expect("holding") + hold).min(since + hold);
                    if !armed.replace(true) {
                        let (c, a) = (core.clone(), armed.clone());
                        glommio::spawn_local(async move {
                            glommio::timer::sleep(until.saturating_duration_since(Instant::now()))
                                .await;
                            a.set(false);
                            c.wake_commit();
                        })
                        .detach();
                    }
                }
                break;
            };
            bulk_since = None;
            let urgent = batch.urgent;
            let started = Instant::now();
            let bytes = batch.bytes.len() as u64;
            let end = batch.end;
            let disk = match write_batch(&dir, &mut file, batch).await {
                Ok(disk) => disk,
                Err(e) => {
                    // The log's state on disk is unknown: stop, and let recovery decide. Nothing
                    // of this batch was answered, so nothing acknowledged is lost.
                    eprintln!(
                        "fatal: core {} could not make its log durable: {e}; stopping without \
                     answering the claims in flight (recovery on restart keeps what is durable)",
                        core.id
                    );
                    std::process::exit(3);
                }
            };
            if urgent {
                last_urgent = Some(Instant::now());
            }
            core.metrics().commit(
                bytes,
                started.elapsed().as_micros() as u64,
                disk.as_micros() as u64,
            );
            core.engine
                .borrow_mut()
                .batch_done(end, now_ms(), &mut answers);
            for (route, result) in answers.drain(..) {
                core.deliver(route, result);
            }
            let now = crate::serve::setup::now_us();
            core.im_run(|im, log, fx| im.batch_done(end, now, log, fx));
            core.flush();
        }
    }
}

/// The segment file a core's log is appending to.
type SegmentFile = Option<crate::store::file::OpenSegment>;

/// Writes one batch and makes it durable ([`crate::store::file::write_batch_durably`]) on
/// glommio's blocking thread pool. Plain blocking calls on a helper thread measured 2-3x faster
/// per commit than the same work as io_uring operations through glommio's `BufferedFile`
/// (which the kernel runs on io-wq worker threads anyway), and they keep the core's thread free
/// to serve while the disk works (docs/BENCHMARKS.md). Returns the time spent in the system
/// calls themselves.
async fn write_batch(
    dir: &std::path::Path,
    file: &mut SegmentFile,
    batch: WriteBatch,
) -> Result<std::time::Duration, String> {
    let dir = dir.to_path_buf();
    let mut open = file.take();
    let (open, result) = glommio::executor()
        .spawn_blocking(move || {
            let started = Instant::now();
            let result = crate::store::file::write_batch_durably(&dir, &mut open, &batch);
            (open, result.map(|()| started.elapsed()))
        })
        .await;
    *file = open;
    result.map_err(|e| e.to_string())
}

impl Core {
    /// Handles every message waiting in the queues from the other cores; returns how many.
    fn drain_inbound(self: &Rc<Self>) -> usize {
        let mut n = 0;
        for src in 0..self.shared.cores {
            let queue = &self.shared.queues[src][self.id as usize];
            while let Some(msg) = queue.pop() {
                self.handle(msg);
                n += 1;
            }
        }
        n
    }
}

/// Drains one source core's queue each time its doorbell rings.
async fn bus_loop(
    core: Rc<Core>,
    src: usize,
    bell: glommio::channels::shared_channel::ConnectedReceiver<()>,
) {
    while bell.recv().await.is_some() {
        let queue = &core.shared.queues[src][core.id as usize];
        while let Some(msg) = queue.pop() {
            core.handle(msg);
        }
        core.flush();
        core.wake_commit();
    }
}

/// Fails when another process listens on `addr`: SO_REUSEPORT would otherwise let a second
/// server join this one's port silently, and the kernel would spread clients over both. A
/// probe without SO_REUSEPORT cannot bind beside a listener (it can beside TIME_WAIT sockets).
fn port_free(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                "the port is in use by another process (another hongbao serve?); each server \
                 needs ports of its own",
            )
        } else {
            e
        }
    })
}

/// A listening socket that shares its port with the other cores' (SO_REUSEPORT: the kernel
/// spreads new connections over the cores).
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it (the io_uring path's direct descriptors cannot be given
    // socket options by a system call).
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps the backlog at net.core.somaxconn (docs/TUNING.md).
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// Hands the main thread's latest verdict on the disk's free space to the core's log and IM
/// engine.
fn apply_disk_verdict(core: &Core) {
    let disk_low = core.shared.disk.low();
    core.engine.borrow_mut().log_mut().set_disk_low(disk_low);
    core.im.borrow_mut().set_disk_low(disk_low);
}

/// Retries full queues, updates gauges, applies reloads and the disk's verdict, and returns
/// when the server stops.
async fn ticker(core: Rc<Core>) {
    let mut watcher = reload::Watcher::new(&core);
    loop {
        glommio::timer::sleep(TICK).await;
        // Messages another core queued for this one are drained when its doorbell rings; a
        // doorbell wake-up glommio lost would leave them waiting until the next one, which may
        // never come (a sender's last messages). Every tick drains the queues too.
        if core.drain_inbound() > 0 {
            core.wake_commit();
        }
        apply_disk_verdict(&core);
        core.im_tick();
        core.flush();
        {
            let engine = core.engine.borrow();
            let m = core.metrics();
            m.degraded
                .store(engine.degraded() as u64, Ordering::Relaxed);
            m.caps_users
                .store(engine.caps_users() as u64, Ordering::Relaxed);
            m.tickets_remaining
                .store(engine.remaining_at(now_ms()), Ordering::Relaxed);
            m.disk_refused_log
                .store(engine.log().disk_refused(), Ordering::Relaxed);
        }
        watcher.tick(&core);
        if core.shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// What each core gets its own copy of at start.
struct CoreOwn {
    lists: KeyLists,
    auth_keys: TokenKeys,
    token_keys: TokenKeys,
    /// Binary and HTTP addresses.
    listen: (SocketAddr, SocketAddr),
    net: NetPath,
    recv_buffers: u16,
    spin_us: u32,
    /// `store.bulk_hold_us`.
    bulk_hold: Duration,
}

async fn core_main(
    setup: CoreSetup,
    shared: Arc<Shared>,
    own: CoreOwn,
    bells_out: Vec<Option<SharedSender<()>>>,
    bells_in: Vec<Option<SharedReceiver<()>>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let id = setup.parts.core;
    let listen = own.listen;
    // glommio notices that the peer of a shared channel connected only when its reactor
    // runs: an executor asleep with nothing else pending could wait for its doorbells to
    // connect until something else woke it. A 1 ms timer keeps the reactor turning until the
    // core is ready; after that the ticker's timer does (docs/ARCHITECTURE.md, "An executor
    // that slept with ready tasks").
    let stage = |k: u8| shared.startup[id as usize].store(k, Ordering::Relaxed);
    stage(1);
    let starting = Rc::new(Cell::new(true));
    {
        let starting = starting.clone();
        glommio::spawn_local(async move {
            while starting.get() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        })
        .detach();
    }
    let mut engine = Engine::new(setup.parts);
    engine.warm_up();
    let (commit_wake, commit_rx) = local_channel::new_bounded(1);
    let (bulk_wake, bulk_rx) = local_channel::new_bounded(1);
    let core = Rc::new(Core {
        id,
        outbox: RefCell::new((0..shared.cores).map(|_| VecDeque::new()).collect()),
        shared: shared.clone(),
        engine: RefCell::new(engine),
        im: RefCell::new(setup.im),
        im_local: RefCell::new(VecDeque::new()),
        presence: RefCell::new(HashMap::new()),
        watchers: RefCell::new(HashMap::new()),
        auth_keys: own.auth_keys,
        token_keys: own.token_keys,
        answers: answers::Answers::default(),
        doorbells: RefCell::new((0..shared.cores).map(|_| None).collect()),
        commit_wake,
        bulk_wake,
        bulk_running: Cell::new(false),
        lists: RefCell::new(own.lists),
        conns: conns::Conns::new(),
        cold: cold::ColdPages::new(
            setup
                .log_dir
                .parent()
                .map_or_else(|| setup.log_dir.clone(), |p| p.to_path_buf()),
        ),
    });
    let log_dir = setup.log_dir.clone();
    glommio::spawn_local(commit_loop(
        core.clone(),
        setup.log_dir,
        commit_rx,
        own.bulk_hold,
    ))
    .detach();
    // Huge-group deliveries are written by a task of their own, in a task queue of low shares
    // (R22): their member appends never stand between a chat's record and its commit.
    core.im.borrow_mut().set_huge_deferred(true);
    let bulk = glommio::executor().create_task_queue(
        glommio::Shares::Static(im::BULK_SHARES),
        glommio::Latency::NotImportant,
        "im-bulk",
    );
    glommio::spawn_local_into(im::bulk_loop(core.clone(), bulk_rx), bulk)
        .expect("the task queue was just created")
        .detach();
    // Fan-outs a crash interrupted go out again (their messages wait in the queues until the
    // other cores run).
    core.im_run(|im, log, fx| im.start(log, fx));
    core.wake_commit();
    stage(2);
    // Receivers and senders connect pairwise with their peers; receivers first, as tasks, so
    // two cores connecting to each other cannot wait on one another.
    for (src, bell) in bells_in.into_iter().enumerate() {
        if let Some(bell) = bell {
            let c = core.clone();
            glommio::spawn_local(async move {
                let bell = bell.connect().await;
                bus_loop(c, src, bell).await
            })
            .detach();
        }
    }
    for (dst, bell) in bells_out.into_iter().enumerate() {
        if let Some(bell) = bell {
            let connected = bell.connect().await;
            core.doorbells.borrow_mut()[dst] = Some(connected);
        }
    }

    stage(3);
    // Core 0 binds first (port 0 picks a port); the others join its ports with SO_REUSEPORT.
    let addrs = if id == 0 {
        listen
    } else {
        loop {
            if let Some(a) = *shared.bound.lock().expect("not poisoned") {
                break a;
            }
            if shared.shutdown.load(Ordering::Relaxed) {
                return record_stop(&core, log_dir).await;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    };
    stage(4);
    // The network ring is made only now, when the executors have started and connected
    // (made earlier, it widened the window of the executor bug patched in vendor/glommio:
    // docs/ARCHITECTURE.md, "An executor that slept with ready tasks").
    let ring = match own.net {
        NetPath::Uring => {
            match uring::NetRing::new(
                own.recv_buffers,
                own.spin_us,
                shared.connections_max,
                shared.metrics[id as usize].clone(),
            ) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    if id == 0 {
                        eprintln!(
                            "warning: the io_uring network path is not available here ({e}; it \
                         needs Linux 6.0 or later); using glommio's sockets, {} connection(s) \
                         per core at most (the descriptor limit)",
                            shared.fd_connections_max
                        );
                    }
                    None
                }
            }
        }
        NetPath::Glommio => None,
    };
    let listeners = if id == 0 {
        // Only core 0 checks: the other cores join the ports it holds.
        (
            port_free(addrs.0).and_then(|_| bind_reuseport(addrs.0)),
            port_free(addrs.1).and_then(|_| bind_reuseport(addrs.1)),
        )
    } else {
        (bind_reuseport(addrs.0), bind_reuseport(addrs.1))
    };
    let (binary, http) = match listeners {
        (Ok(b), Ok(h)) => (b, h),
        (Err(e), _) => {
            let _ = ready.send(Err(format!("binary listener {}: {e}", addrs.0)));
            return record_stop(&core, log_dir).await;
        }
        (_, Err(e)) => {
            let _ = ready.send(Err(format!("HTTP listener {}: {e}", addrs.1)));
            return record_stop(&core, log_dir).await;
        }
    };
    if id == 0 {
        let bound = (
            binary.local_addr().expect("bound"),
            http.local_addr().expect("bound"),
        );
        *shared.bound.lock().expect("not poisoned") = Some(bound);
    }
    let mut accept_tasks = Vec::new();
    if let Some(ring) = &ring {
        glommio::spawn_local(ring.clone().drive()).detach();
        for (fd, protocol, addr) in [
            (binary.as_raw_fd(), conn::Protocol::Binary, addrs.0),
            (http.as_raw_fd(), conn::Protocol::Http, addrs.1),
        ] {
            let c = core.clone();
            let listening = ring.listen(
                fd,
                Rc::new(move |stream| {
                    if c.conn_count() >= c.shared.connections_max {
                        // Over the bound: close at once rather than grow without limit.
                        return;
                    }
                    let cut = conns::Cut::Ring(stream.cutter());
                    conn::spawn_conn(&c, stream, cut, protocol);
                }),
            );
            if let Err(e) = listening {
                let _ = ready.send(Err(format!("accepting on {addr}: {e}")));
                return record_stop(&core, log_dir).await;
            }
        }
    } else {
        for (listener, protocol) in [
            (&binary, conn::Protocol::Binary),
            (&http, conn::Protocol::Http),
        ] {
            // SAFETY: a fresh duplicate of a listening socket, owned by glommio from here.
            let fd = listener
                .try_clone()
                .map(|l| unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) });
            match fd {
                Ok(l) => accept_tasks.push(glommio::spawn_local(conn::accept_loop(
                    core.clone(),
                    l,
                    protocol,
                ))),
                Err(e) => {
                    let _ = ready.send(Err(format!("listener: {e}")));
                    return record_stop(&core, log_dir).await;
                }
            }
        }
    }
    stage(5);
    // Before the first request: a server started below the watermark refuses its first open.
    apply_disk_verdict(&core);
    let _ = ready.send(Ok(()));
    starting.set(false);
    glommio::spawn_local(retention::retention_loop(core.clone(), log_dir.clone())).detach();

    // Run until asked to stop.
    ticker(core.clone()).await;

    // Shutdown: stop accepting; every connection stops reading, writes the answers of what it
    // started (opens wait for their commit) and closes gracefully (conn.rs).
    drop(accept_tasks);
    if let Some(ring) = &ring {
        ring.stop_accepting();
    }
    core.conns.stop_all();
    let started = Instant::now();
    while core.conn_count() > 0 {
        if started.elapsed() > DRAIN_TIMEOUT {
            eprintln!(
                "core {id}: cutting {} connection(s) that did not finish in {:?}",
                core.conn_count(),
                DRAIN_TIMEOUT
            );
            core.conns.cut_all(libc::SHUT_RDWR);
            break;
        }
        glommio::timer::sleep(TICK).await;
        core.flush();
    }
    // Keep serving other cores' forwarded work until every core's connections are done,
    // then make the log durable.
    shared.draining.fetch_sub(1, Ordering::AcqRel);
    while shared.draining.load(Ordering::Acquire) > 0 || core.engine.borrow().has_pending() {
        core.flush();
        core.wake_commit();
        glommio::timer::sleep(TICK).await;
    }
    if let Some(ring) = &ring {
        ring.stop();
    }
    record_stop(&core, log_dir).await;
}

/// The end of a core: once everything appended is durable (or the drain time is over),
/// records the clean stop at the durable end, so that a log found shorter at the next start
/// is refused (`store::state`). Also for a core that stops before serving (its ports taken).
async fn record_stop(core: &Rc<Core>, log_dir: std::path::PathBuf) {
    let started = Instant::now();
    while core.engine.borrow().has_pending() && started.elapsed() < DRAIN_TIMEOUT {
        core.wake_commit();
        glommio::timer::sleep(TICK).await;
    }
    let (id, end) = (core.id, core.engine.borrow().durable_position());
    let sealed = glommio::executor()
        .spawn_blocking(move || crate::store::state::seal(&log_dir, id, end))
        .await;
    if let Err(e) = sealed {
        eprintln!(
            "core {id}: the clean stop could not be recorded in its log state ({e}); the next \
             start checks the log's end by checksums alone"
        );
    }
}

/// Descriptors kept out of the connections' reach: log segments and their directory, glommio's
/// rings, eventfds and timers, key-list reloads, the metrics and health endpoints.
const FD_RESERVE: u64 = 128;

/// Connections per core that fit the process's descriptor limit (raised to its hard limit
/// first) with `FD_RESERVE` to spare, so that connections can never starve the log of a
/// descriptor (a log that cannot open its next segment must stop the server).
/// `say`: print a note when the limit cuts the bound (the path that uses it is configured).
fn connections_budget(configured: usize, cores: usize, say: bool) -> usize {
    let Some(limit) = crate::fsutil::raise_nofile_limit() else {
        return configured;
    };
    let fit = (limit.saturating_sub(FD_RESERVE) / cores.max(1) as u64) as usize;
    if fit < configured {
        if !say {
            return fit.max(1);
        }
        eprintln!(
            "note: the descriptor limit ({}) allows {fit} connections per core (server.\
             connections_max is {configured}); raise it with `ulimit -n` (docs/TUNING.md)",
            limit
        );
        fit.max(1)
    } else {
        configured
    }
}

/// What a finished server reports.
pub struct Finished {
    pub shakes: u64,
    pub envelopes: u64,
    pub opens: u64,
    pub claimed_cents: u64,
}

/// Runs the server until SIGINT/SIGTERM (or `config.run_for`), then shuts down gracefully.
/// `on_ready` gets the bound addresses once every core listens.
/// `signals` are installed before start-up recovery (a stop signal then stops the server as
/// soon as it is up); `reload` reads the settings again for a SIGHUP (None: only the key lists
/// are reloaded).
pub fn run(
    config: &ServeConfig,
    prepared: Prepared,
    signals: Signals,
    reload: Option<&dyn Fn() -> Result<ServeConfig, String>>,
    on_ready: impl FnOnce(SocketAddr, SocketAddr, usize),
) -> Result<Finished, String> {
    // Held until every core has stopped and its log is durable.
    let _data_lock = prepared.data_lock;
    let cores = prepared.cores.len();
    let cpus: Vec<usize> = match &config.cpus {
        Some(list) => list.clone(),
        None => core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_default(),
    };
    let shutdown = signals.shutdown.clone();
    let disk_free_min = config.disk_free_min.unwrap_or_else(|| {
        crate::serve::config::disk_free_min_default(cores, config.pending_bytes)
    });
    let disk = disk::DiskWatch::new(config.data.clone(), disk_free_min);
    if disk.low() {
        eprintln!(
            "warning: {}: opens and IM writes are refused (busy) until space is freed",
            disk.describe()
        );
    }
    let shared = Arc::new(Shared {
        cores,
        keyring: prepared.keyring,
        owner: prepared.owner,
        metrics: prepared.metrics,
        queues: (0..cores)
            .map(|_| {
                (0..cores)
                    .map(|_| ArrayQueue::new(config.bus_capacity))
                    .collect()
            })
            .collect(),
        shutdown: shutdown.clone(),
        draining: AtomicUsize::new(cores),
        key_lists_path: config.key_lists.clone(),
        connections_max: config.connections_max,
        fd_connections_max: connections_budget(
            config.connections_max,
            cores,
            matches!(config.net, NetPath::Glommio),
        ),
        bound: Mutex::new(None),
        startup: (0..cores)
            .map(|_| std::sync::atomic::AtomicU8::new(0))
            .collect(),
        retention: std::time::Duration::from_secs(config.retention_s),
        hot: std::time::Duration::from_secs(config.hot_s),
        compact_every: std::time::Duration::from_secs(config.compact_every_s),
        im_memory_max: config.im_memory_max,
        disk,
        reloads: reload::Reloads::default(),
    });
    // Doorbells: bells[src][dst].
    let mut bells_out: Vec<Vec<Option<SharedSender<()>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    let mut bells_in: Vec<Vec<Option<SharedReceiver<()>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    for src in 0..cores {
        for dst in 0..cores {
            if src != dst {
                let (tx, rx) = shared_channel::new_bounded(1);
                bells_out[src][dst] = Some(tx);
                bells_in[dst][src] = Some(rx);
            }
        }
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(cores);
    for (k, (setup, (out, inn))) in prepared
        .cores
        .into_iter()
        .zip(bells_out.into_iter().zip(bells_in))
        .enumerate()
    {
        let placement = match cpus.get(k) {
            Some(&cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let shared = shared.clone();
        let own = CoreOwn {
            lists: prepared.key_lists.clone(),
            auth_keys: prepared.auth_keys.clone(),
            token_keys: prepared.token_keys.clone(),
            listen: (config.listen, config.http),
            net: config.net,
            recv_buffers: config.recv_buffers,
            spin_us: config.spin_us,
            bulk_hold: Duration::from_micros(u64::from(config.bulk_hold_us)),
        };
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("hongbao-core-{k}"))
            .io_memory(IO_MEMORY)
            .preempt_timer(Duration::from_micros(config.preempt_us as u64))
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .spawn(move || core_main(setup, shared, own, out, inn, ready))
            .map_err(|e| format!("starting core {k}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    let started = Instant::now();
    for _ in 0..cores {
        let left = STARTUP_TIMEOUT.saturating_sub(started.elapsed());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let stuck: Vec<String> = shared
                    .startup
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| (s.load(Ordering::Relaxed) as usize) < STAGES.len() - 1)
                    .map(|(k, s)| {
                        format!("core {k} {}", STAGES[s.load(Ordering::Relaxed) as usize])
                    })
                    .collect();
                // Nothing was served and the logs are as recovery left them: starting over
                // loses nothing. The stuck cores cannot be joined, so the process starts
                // again as a new image (same arguments, same descriptors), a few times.
                let attempt: u32 = std::env::var("HONGBAO_START_ATTEMPT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                eprintln!(
                    "hongbao serve: not ready after {} s ({}; attempt {attempt} of \
                     {START_ATTEMPTS}){}",
                    STARTUP_TIMEOUT.as_secs(),
                    stuck.join(", "),
                    if attempt < START_ATTEMPTS {
                        "; starting again (nothing was served)"
                    } else {
                        "; stopping (nothing was served)"
                    }
                );
                if attempt < START_ATTEMPTS {
                    if let Ok(exe) = std::env::current_exe() {
                        use std::os::unix::process::CommandExt;
                        let e = std::process::Command::new(exe)
                            .args(std::env::args_os().skip(1))
                            .env("HONGBAO_START_ATTEMPT", (attempt + 1).to_string())
                            .exec();
                        eprintln!("hongbao serve: could not start again: {e}");
                    }
                }
                std::process::exit(4);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some("a core stopped during start-up".into());
                break;
            }
        }
    }
    if failure.is_none() {
        let (b, h) = shared
            .bound
            .lock()
            .expect("not poisoned")
            .expect("core 0 bound");
        on_ready(b, h, cores);
        watch::serve_until_stopped(&shared, &signals, reload, config.run_for);
    }
    shutdown.store(true, Ordering::Relaxed);
    for (k, h) in handles.into_iter().enumerate() {
        if h.join().is_err() {
            failure.get_or_insert_with(|| format!("core {k} failed"));
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let sum = |f: fn(&CoreMetrics) -> u64| shared.metrics.iter().map(|m| f(m)).sum::<u64>();
    Ok(Finished {
        shakes: sum(|m| m.shakes.iter().map(|c| c.load(Ordering::Relaxed)).sum()),
        envelopes: sum(|m| {
            m.shakes[crate::wire::ops::ShakeOutcome::Envelope as usize].load(Ordering::Relaxed)
        }),
        opens: sum(|m| m.opens.load(Ordering::Relaxed)),
        claimed_cents: sum(|m| m.claimed_cents.load(Ordering::Relaxed)),
    })
}
