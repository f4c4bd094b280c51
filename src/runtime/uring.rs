//! A core's socket I/O on its own io_uring (the default network path of `hongbao serve`).
//!
//! Runs on the core's thread, inside its glommio executor: one driver task owns the ring; the
//! connection tasks see [`UringStream`]s (`conn::Input`, which hands over the receive buffer
//! itself, and futures-io `AsyncWrite`), so the protocol loops in `conn` are the same code on
//! this path and on glommio's sockets.
//!
//! Why a second ring beside glommio's: glommio 0.9 arms a one-shot poll on its ring after every
//! read of a socket, and its ring is set up without `COOP_TASKRUN`, so every incoming request
//! costs a poll arm, a separate `recv` system call and an inter-processor interrupt that kicks
//! the running core to post the poll's completion (17% of the server's CPU under wrk,
//! docs/BENCHMARKS.md). This ring is created with `SINGLE_ISSUER | COOP_TASKRUN |
//! TASKRUN_FLAG`: the kernel never interrupts the core to post a completion; it posts them
//! when the thread next enters the kernel, and its TASKRUN flag tells the driver when to ask.
//! (`DEFER_TASKRUN` was tried: newer kernels run at most a few deferred items per
//! `io_uring_enter` and clear the flag, which can leave completions unposted while the driver
//! parks.) Each connection has one multishot receive into a ring of provided buffers (no
//! system call per read, no buffer held by an idle connection) and its writes go out as `SEND`
//! operations submitted in the same `io_uring_enter` that reaps the receives.
//!
//! Waking up: while completions keep coming the driver polls its ring between the core's other
//! tasks (no system call at all when the kernel's TASKRUN flag says there is nothing new).
//! When a poll finds nothing, it enables the ring's eventfd and parks on a glommio read of that
//! eventfd, so an idle core sleeps in glommio's `io_uring_enter` as before.
//!
//! Sockets as direct descriptors: connections are accepted straight into the ring's table of
//! registered files (`IORING_OP_ACCEPT` with an allocated fixed slot) and every operation on
//! them names that slot, so a connection never takes a place in the process's descriptor
//! table (and the kernel skips the descriptor lookup on each receive and send). The process's
//! `RLIMIT_NOFILE` still caps each ring's table (the kernel refuses a larger one), so a core
//! that needs more connections than one table holds opens another ring beside the first: a
//! *part*, with its own table, provided buffers and submission queue, driven by the same task
//! and woken through the same eventfd. A core holds `server.connections_max` connections
//! whatever the descriptor limit (docs/TUNING.md). A connection the kernel accepts into a full
//! table is closed at once, so each listener keeps exactly one single-shot accept in flight,
//! armed only on a part with a free slot for it (counting the accepts in flight there): a
//! multishot accept takes the whole backlog in one go and could overfill a table.
//!
//! Memory per connection: a slot of ~130 bytes plus whatever input is waiting to be read and
//! output waiting to be sent; the receive buffers (`server.recv_buffers` x 4 KiB per core) are
//! shared by all connections and each is returned as soon as its bytes are copied out. When
//! more completions arrive in one round than there are buffers, the receives that found none
//! end with `ENOBUFS` and are re-armed (the data waits in the socket, nothing is lost).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Submission queue entries; the completion queue is four times larger, and the kernel keeps
/// overflowing completions (FEAT_NODROP) rather than losing them.
const SQ_ENTRIES: u32 = 2048;
/// Submission queue entries of the parts opened beyond the first (they hold overflow
/// connections, most of them idle in the connection-scale case).
const SQ_ENTRIES_EXTRA: u32 = 256;
/// Largest table of registered files per part (the kernel's own cap is 2^20).
const TABLE_MAX: u32 = 65_536;
/// Size of a provided receive buffer (their number per core is `server.recv_buffers`).
const BUF_BYTES: usize = 4096;
const BUF_GROUP: u16 = 0;
/// A connection whose unread input passes this stops receiving until its task catches up
/// (a client that pipelines without reading its answers cannot make the server buffer more).
const INPUT_MAX: usize = 256 << 10;
/// A connection's queued output above which writes wait for sends to complete.
const OUTPUT_MAX: usize = 256 << 10;

/// Output buffer capacity a connection keeps between bursts.
const OUTPUT_KEEP: usize = 64 << 10;
/// Pause before accepting again after an accept failed.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// What a completion is for: the top byte of its user data.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_ACCEPT: u64 = 3;
const KIND_IGNORE: u64 = 4;

/// `io_uring_enter` flag: run pending completion work (the crate keeps its flag type private).
const IORING_ENTER_GETEVENTS: u32 = 1;

fn user_data(kind: u64, gen: u32, slot: u32) -> u64 {
    (kind << 56) | (((gen & 0x00ff_ffff) as u64) << 32) | slot as u64
}

fn split_user_data(u: u64) -> (u64, u32, u32) {
    (u >> 56, ((u >> 32) & 0x00ff_ffff) as u32, u as u32)
}

/// The provided-buffer ring: `count` buffers the kernel fills for multishot receives.
struct BufRing {
    entries: *mut types::BufRingEntry,
    count: u16,
    entries_layout: std::alloc::Layout,
    data: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn new(count: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two(), "the kernel needs a power of two");
        let entries_layout = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: non-zero size; the memory is zeroed, which is a valid empty ring.
        let entries =
            unsafe { std::alloc::alloc_zeroed(entries_layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufRing {
            entries,
            count,
            entries_layout,
            data: vec![0u8; count as usize * BUF_BYTES].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Puts buffer `bid` back at the ring's tail (visible to the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        let index = (self.tail & (self.count - 1)) as usize;
        let addr = self.data[bid as usize * BUF_BYTES..].as_mut_ptr() as u64;
        // SAFETY: `index` < `count` entries allocated in `new`; the kernel reads entries only
        // between the head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the allocation; the kernel reads
        // it with acquire semantics, so a release store publishes the entries written above.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        &self.data[bid as usize * BUF_BYTES..bid as usize * BUF_BYTES + len]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner drops the io_uring (which
        // unregisters the ring) before this.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.entries_layout) }
    }
}

/// One connection's state, owned by the ring so completions can reach it.
#[derive(Default)]
struct Conn {
    /// The part (ring) the connection lives on and its slot in that part's registered files.
    part: u16,
    file: u32,
    gen: u32,
    input: BytesMut,
    eof: bool,
    error: Option<i32>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Output not yet handed to the kernel.
    queued: Vec<u8>,
    /// Output in the `SEND` in flight (must not move until its completion), and how much of it
    /// earlier partial sends already took.
    sending: Vec<u8>,
    sent: usize,
    send_inflight: bool,
    recv_armed: bool,
    /// Receiving stopped because `input` passed `INPUT_MAX`.
    paused: bool,
    /// The stream was dropped: close the socket once nothing is in flight and output is out.
    dropped: bool,
}

/// A new connection from a listener's multishot accept.
pub(crate) type AcceptFn = Rc<dyn Fn(UringStream)>;

struct Listener {
    fd: RawFd,
    on_accept: AcceptFn,
    armed: bool,
    /// The part its accept is (or will next be) armed on.
    part: u16,
    stopped: bool,
}

/// One ring with its own registered-file table and provided buffers (see the module docs).
struct Part {
    ring: IoUring,
    bufs: BufRing,
    /// Registered-file slots in use (connections not yet closed), and accepts in flight
    /// (each may take one more).
    files: u32,
    accepting: u32,
}

struct Inner {
    /// Field order matters: each part's ring is torn down before its buffers.
    parts: Vec<Part>,
    /// Registered-file slots per part, and how many parts there may be.
    table: u32,
    parts_max: usize,
    /// Provided receive buffers of the first part and of each further part.
    buffers: u16,
    eventfd: RawFd,
    metrics: std::sync::Arc<crate::metrics::CoreMetrics>,
    conns: Vec<Conn>,
    free: Vec<u32>,
    listeners: Vec<Listener>,
    /// Accepted connections (listener, part, registered-file slot) whose tasks are spawned
    /// after the completion loop (their callbacks may use the ring).
    accepted: Vec<(usize, u16, u32)>,
    /// Listeners whose accept failed (out of descriptors, memory): re-armed after a pause.
    accept_retry: Vec<usize>,
}

/// A core's network ring (see the module docs). Not `Send`: it lives on the core's thread.
pub(crate) struct NetRing {
    inner: RefCell<Inner>,
    eventfd: glommio::io::BufferedFile,
    /// The driver is parked on the eventfd: submissions must be flushed by whoever queues them.
    parked: Cell<bool>,
    stopping: Cell<bool>,
    /// How long the driver polls an idle ring before parking.
    spin: std::time::Duration,
}

impl NetRing {
    /// Sets up the first part (ring, provided buffers, registered-file table) and the
    /// eventfd. Fails on kernels without `SINGLE_ISSUER`, multishot receives, provided-buffer
    /// rings or allocated direct descriptors (Linux 6.0); the caller then uses glommio's
    /// sockets.
    /// `buffers`: provided receive buffers, a power of two (`server.recv_buffers`); `spin_us`:
    /// how long the driver polls an idle ring before it parks (`server.spin_us`);
    /// `connections_max`: the core's bound on connections, which sizes the parts.
    pub fn new(
        buffers: u16,
        spin_us: u32,
        connections_max: usize,
        metrics: std::sync::Arc<crate::metrics::CoreMetrics>,
    ) -> io::Result<Rc<NetRing>> {
        // The kernel refuses a table larger than the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on this process with a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Room for the connections beyond the bound, closed as soon as they are accepted.
        let want = connections_max.saturating_add(64);
        let table = (lim.rlim_cur.min(TABLE_MAX as u64) as u32)
            .min(want.min(u32::MAX as usize) as u32)
            .max(1);
        let parts_max = want.div_ceil(table as usize).clamp(1, u16::MAX as usize);
        // SAFETY: plain syscall; the descriptor is owned by the `BufferedFile` below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { glommio::io::BufferedFile::from_raw_fd(efd) };
        let mut inner = Inner {
            parts: Vec::new(),
            table,
            parts_max,
            buffers,
            eventfd: efd,
            metrics,
            conns: Vec::new(),
            free: Vec::new(),
            listeners: Vec::new(),
            accepted: Vec::new(),
            accept_retry: Vec::new(),
        };
        inner.add_part()?;
        Ok(Rc::new(NetRing {
            inner: RefCell::new(inner),
            eventfd,
            parked: Cell::new(false),
            spin: std::time::Duration::from_micros(spin_us as u64),
            stopping: Cell::new(false),
        }))
    }

    /// Starts accepting on a bound, listening socket (owned by the caller, kept open while the
    /// ring uses it). Returns the listener's index for [`NetRing::stop_accepting`].
    /// Accepted connections inherit the listener's socket options (set `TCP_NODELAY` on it:
    /// a direct descriptor cannot be given socket options by a system call).
    pub fn listen(self: &Rc<Self>, fd: RawFd, on_accept: AcceptFn) -> io::Result<usize> {
        let mut inner = self.inner.borrow_mut();
        inner.listeners.push(Listener {
            fd,
            on_accept,
            armed: false,
            part: 0,
            stopped: false,
        });
        let index = inner.listeners.len() - 1;
        inner.arm_accept(index)?;
        drop(inner);
        self.kick();
        Ok(index)
    }

    /// Stops all accepting (shutdown): cancels the listeners' accepts.
    pub fn stop_accepting(&self) {
        let mut inner = self.inner.borrow_mut();
        for i in 0..inner.listeners.len() {
            inner.listeners[i].stopped = true;
            if inner.listeners[i].armed {
                let part = inner.listeners[i].part;
                inner.cancel_accept(part, i);
            }
        }
        drop(inner);
        self.kick();
    }

    /// Stops the driver once nothing is left to do (after the core's connections are gone).
    pub fn stop(&self) {
        self.stopping.set(true);
        // Wake a parked driver.
        let one: u64 = 1;
        // SAFETY: 8-byte write to our own eventfd.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.eventfd),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }

    /// Submits queued operations at once if the driver is parked (it would not see them).
    fn kick(&self) {
        if self.parked.get() {
            let mut inner = self.inner.borrow_mut();
            for part in &mut inner.parts {
                if !part.ring.submission().is_empty() {
                    let _ = part.ring.submit();
                }
            }
        }
    }

    /// The driver: reaps completions and submits queued operations, polling while there is
    /// traffic and parking on the eventfd when there is none. Run it as a task of the core.
    pub async fn drive(self: Rc<Self>) {
        // When the ring went idle; it parks once idle for `spin`.
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            if self.turn(false) > 0 {
                idle_since = None;
                futures_lite::future::yield_now().await;
                continue;
            }
            // Poll a little longer before sleeping: waking a sleeping core costs tens of
            // microseconds (more on VMs whose idle CPUs halt), which a client waiting for its
            // next answer pays. Polling costs no system call (the TASKRUN flag is in shared
            // memory) and yields to the core's other tasks each time.
            if !self.spin.is_zero() && !self.stopping.get() {
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < self.spin {
                    futures_lite::future::yield_now().await;
                    continue;
                }
            }
            idle_since = None;
            if self.stopping.get() && self.inner.borrow().idle() {
                return;
            }
            // Enable the eventfd, then make the kernel run whatever it still holds for this
            // ring: anything after that signals the eventfd.
            self.inner.borrow_mut().set_eventfd(true);
            if self.turn(true) > 0 {
                self.inner.borrow_mut().set_eventfd(false);
                futures_lite::future::yield_now().await;
                continue;
            }
            self.parked.set(true);
            // The eventfd is signalled by the kernel when work for this ring arrives (or by
            // `stop`). Its count does not matter; the read resets it.
            let _ = self.eventfd.read_at(0, 8).await;
            self.parked.set(false);
            self.inner.borrow_mut().set_eventfd(false);
        }
    }

    /// One round: submit, reap, dispatch. Returns the number of completions handled. The
    /// kernel is entered only when there is something to submit, when its TASKRUN flag says it
    /// holds completions to post, or when `force`d (before parking).
    fn turn(self: &Rc<Self>, force: bool) -> usize {
        let mut handled = 0;
        let mut accepted = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            for p in 0..inner.parts.len() {
                let part = &mut inner.parts[p];
                let work = !part.ring.submission().is_empty() || part.ring.submission().taskrun();
                if work || force {
                    let to_submit = part.ring.submission().len() as u32;
                    // SAFETY: plain io_uring_enter on our ring: submit what is queued (every
                    // entry points at memory owned by `Inner`) and run pending completions
                    // (GETEVENTS).
                    let entered = unsafe {
                        part.ring.submitter().enter::<libc::sigset_t>(
                            to_submit,
                            0,
                            IORING_ENTER_GETEVENTS,
                            None,
                        )
                    };
                    if let Err(e) = entered {
                        if e.raw_os_error() != Some(libc::EBUSY)
                            && e.raw_os_error() != Some(libc::EINTR)
                        {
                            eprintln!("io_uring_enter failed: {e}");
                        }
                    }
                }
                let mut reaped = 0;
                loop {
                    let cqe = inner.parts[p].ring.completion().next();
                    let Some(cqe) = cqe else { break };
                    reaped += 1;
                    inner.complete(p as u16, cqe.user_data(), cqe.result(), cqe.flags());
                }
                if reaped > 0 {
                    inner.parts[p].bufs.publish();
                }
                handled += reaped;
            }
            std::mem::swap(&mut accepted, &mut inner.accepted);
            for index in inner.accept_retry.drain(..) {
                let ring = self.clone();
                glommio::spawn_local(async move {
                    loop {
                        glommio::timer::sleep(ACCEPT_RETRY).await;
                        let armed = ring.inner.borrow_mut().arm_accept(index);
                        match armed {
                            Ok(true) => break,
                            Ok(false) => {}
                            Err(e) => eprintln!("accept could not be re-armed: {e}; retrying"),
                        }
                    }
                    ring.kick();
                })
                .detach();
            }
        }
        for (listener, part, file) in accepted {
            let stream = {
                let mut inner = self.inner.borrow_mut();
                self.new_stream(&mut inner, part, file)
            };
            // The callback spawns the connection's task; it must not hold the ring borrowed.
            let on_accept = self.inner.borrow().listeners[listener].on_accept.clone();
            on_accept(stream);
        }
        handled
    }

    fn new_stream(self: &Rc<Self>, inner: &mut Inner, part: u16, file: u32) -> UringStream {
        let slot = match inner.free.pop() {
            Some(s) => s,
            None => {
                inner.conns.push(Conn::default());
                (inner.conns.len() - 1) as u32
            }
        };
        let c = &mut inner.conns[slot as usize];
        let gen = c.gen.wrapping_add(1) & 0x00ff_ffff;
        *c = Conn {
            part,
            file,
            gen,
            ..Conn::default()
        };
        UringStream {
            ring: self.clone(),
            slot,
            gen,
        }
    }
}

impl Inner {
    /// Opens one more part: a ring with its provided buffers, a sparse registered-file table
    /// and the shared eventfd (disabled until the driver parks).
    fn add_part(&mut self) -> io::Result<u16> {
        let first = self.parts.is_empty();
        let (entries, buffers) = if first {
            (SQ_ENTRIES, self.buffers)
        } else {
            (
                SQ_ENTRIES_EXTRA,
                (self.buffers / 4).max(64).min(self.buffers),
            )
        };
        let mut ring: IoUring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        let bufs = BufRing::new(buffers)?;
        // SAFETY: the entries stay allocated until the part is dropped, and `Part`'s drop
        // order (ring before bufs) tears the ring down first.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                buffers,
                BUF_GROUP,
                0,
            )?;
        }
        ring.submitter().register_files_sparse(self.table)?;
        ring.submitter().register_eventfd(self.eventfd)?;
        ring.completion().disable_eventfd();
        self.parts.push(Part {
            ring,
            bufs,
            files: 0,
            accepting: 0,
        });
        self.metrics
            .net_rings
            .store(self.parts.len() as u64, Ordering::Relaxed);
        Ok((self.parts.len() - 1) as u16)
    }

    fn set_eventfd(&mut self, on: bool) {
        for part in &mut self.parts {
            if on {
                part.ring.completion().enable_eventfd();
            } else {
                part.ring.completion().disable_eventfd();
            }
        }
    }

    fn push(&mut self, part: u16, e: &squeue::Entry) -> io::Result<()> {
        let ring = &mut self.parts[part as usize].ring;
        // SAFETY (for all pushes): every buffer an entry points at is owned by `Inner` (the
        // provided buffers, a connection's `sending`) and stays in place until the entry's
        // completion is reaped.
        if unsafe { ring.submission().push(e) }.is_err() {
            ring.submit()?;
            unsafe { ring.submission().push(e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.conns.len() == self.free.len() && self.listeners.iter().all(|l| !l.armed)
    }

    /// Whether a part has a slot for one more accept (besides those in flight there).
    fn has_room(&self, part: u16) -> bool {
        let p = &self.parts[part as usize];
        p.files + p.accepting < self.table
    }

    /// A part to accept into: the first with room, or a new one while `parts_max` allows.
    fn accepting_part(&mut self) -> io::Result<Option<u16>> {
        if let Some(p) = (0..self.parts.len() as u16).find(|&p| self.has_room(p)) {
            return Ok(Some(p));
        }
        if self.parts.len() < self.parts_max {
            return self.add_part().map(Some);
        }
        Ok(None)
    }

    fn cancel_accept(&mut self, part: u16, index: usize) {
        let e = opcode::AsyncCancel::new(user_data(KIND_ACCEPT, 0, index as u32))
            .build()
            .user_data(user_data(KIND_IGNORE, 0, 0));
        let _ = self.push(part, &e);
    }

    /// `arm_accept` from a completion: a failure (no memory for another part, say) is logged
    /// and retried after a pause rather than leaving the listener unarmed.
    fn rearm_accept(&mut self, index: usize) {
        match self.arm_accept(index) {
            Ok(true) => {}
            Ok(false) => self.accept_retry.push(index),
            Err(e) => {
                eprintln!("accept could not be re-armed: {e}; retrying");
                self.accept_retry.push(index);
            }
        }
    }

    /// Arms the listener's accept on a part with room. False when every part is
    /// full (the core is at `server.connections_max`, whose excess is closed anyway): the
    /// caller tries again later.
    fn arm_accept(&mut self, index: usize) -> io::Result<bool> {
        let l = &self.listeners[index];
        if l.stopped || l.armed {
            return Ok(true);
        }
        let Some(part) = self.accepting_part()? else {
            return Ok(false);
        };
        // Single-shot, into a slot the kernel picks (module docs). No SOCK_CLOEXEC: a direct
        // descriptor has no place in the descriptor table, and the kernel refuses the flag.
        let e = opcode::Accept::new(
            types::Fd(self.listeners[index].fd),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .file_index(Some(types::DestinationSlot::auto_target()))
        .build()
        .user_data(user_data(KIND_ACCEPT, 0, index as u32));
        self.push(part, &e)?;
        self.parts[part as usize].accepting += 1;
        let l = &mut self.listeners[index];
        l.armed = true;
        l.part = part;
        Ok(true)
    }

    fn arm_recv(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        if c.recv_armed || c.eof || c.error.is_some() || c.dropped || c.paused {
            return;
        }
        let part = c.part;
        let e = opcode::RecvMulti::new(types::Fixed(c.file), BUF_GROUP)
            .build()
            .user_data(user_data(KIND_RECV, c.gen, slot));
        match self.push(part, &e) {
            Ok(()) => self.conns[slot as usize].recv_armed = true,
            Err(_) => self.fail(slot, libc::ENOMEM),
        }
    }

    fn cancel_recv(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        if !c.recv_armed {
            return;
        }
        let part = c.part;
        let e = opcode::AsyncCancel::new(user_data(KIND_RECV, c.gen, slot))
            .build()
            .user_data(user_data(KIND_IGNORE, 0, 0));
        let _ = self.push(part, &e);
    }

    /// Starts a `SEND` of the queued output if none is in flight.
    fn start_send(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        if c.send_inflight || c.error.is_some() {
            return;
        }
        if c.sent == c.sending.len() {
            if c.queued.is_empty() {
                return;
            }
            std::mem::swap(&mut c.sending, &mut c.queued);
            c.queued.clear();
            c.sent = 0;
        }
        let rest = &c.sending[c.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        let part = c.part;
        let e = opcode::Send::new(types::Fixed(c.file), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(KIND_SEND, c.gen, slot));
        match self.push(part, &e) {
            Ok(()) => self.conns[slot as usize].send_inflight = true,
            Err(_) => self.fail(slot, libc::ENOMEM),
        }
    }

    fn fail(&mut self, slot: u32, errno: i32) {
        let c = &mut self.conns[slot as usize];
        c.error.get_or_insert(errno);
        if let Some(w) = c.reader.take() {
            w.wake();
        }
        if let Some(w) = c.writer.take() {
            w.wake();
        }
    }

    /// Closes and frees a dropped connection once the kernel holds nothing of it.
    fn maybe_release(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        if !c.dropped || c.recv_armed || c.send_inflight {
            return;
        }
        if c.error.is_none() && (c.sent < c.sending.len() || !c.queued.is_empty()) {
            return; // output still to send
        }
        // No operation in flight references the slot: close it (the kernel frees the slot
        // when it takes the entry; the completion is ignored).
        let (part, file, gen) = (c.part, c.file, c.gen);
        *c = Conn {
            gen,
            ..Conn::default()
        };
        self.free.push(slot);
        let e = opcode::Close::new(types::Fixed(file))
            .build()
            .user_data(user_data(KIND_IGNORE, 0, 0));
        if self.push(part, &e).is_err() {
            // The queue could not be flushed: unregister the slot directly.
            let _ = self.parts[part as usize]
                .ring
                .submitter()
                .register_files_update(file, &[-1]);
        }
        let p = &mut self.parts[part as usize];
        p.files -= 1;
    }

    fn complete(&mut self, part: u16, user: u64, res: i32, flags: u32) {
        let (kind, gen, slot) = split_user_data(user);
        match kind {
            KIND_ACCEPT => {
                let index = slot as usize;
                self.listeners[index].armed = false;
                let p = &mut self.parts[part as usize];
                p.accepting -= 1;
                if res >= 0 {
                    p.files += 1;
                    self.accepted.push((index, part, res as u32));
                    self.rearm_accept(index);
                } else if res == -libc::ECANCELED {
                    // Stopped (a stopped listener is not armed again).
                } else if !self.listeners[index].stopped {
                    if res == -libc::ENFILE {
                        self.metrics
                            .accept_table_full
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // Out of memory, or a table full after all (that connection was closed
                    // by the kernel): say so, wait a little, go on.
                    eprintln!("accept failed: {}", io::Error::from_raw_os_error(-res));
                    if !self.accept_retry.contains(&index) {
                        self.accept_retry.push(index);
                    }
                }
            }
            KIND_RECV => {
                let Some(c) = self.conns.get_mut(slot as usize) else {
                    return;
                };
                if c.gen != gen {
                    return;
                }
                let more = cqueue::more(flags);
                if !more {
                    c.recv_armed = false;
                }
                if res > 0 {
                    let bid =
                        cqueue::buffer_select(flags).expect("a multishot receive names its buffer");
                    let bufs = &mut self.parts[part as usize].bufs;
                    c.input.extend_from_slice(bufs.bytes(bid, res as usize));
                    bufs.push(bid);
                    let c = &mut self.conns[slot as usize];
                    if c.input.len() > INPUT_MAX && !c.paused {
                        c.paused = true;
                        self.cancel_recv(slot);
                    }
                } else if res == 0 {
                    c.eof = true;
                } else if res == -libc::ENOBUFS {
                    // Every provided buffer was full at once: receive again (they are back now).
                    self.metrics
                        .recv_nobufs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if res != -libc::ECANCELED {
                    c.error.get_or_insert(-res);
                }
                let c = &mut self.conns[slot as usize];
                if let Some(w) = c.reader.take() {
                    w.wake();
                }
                if !c.recv_armed {
                    self.arm_recv(slot);
                    self.maybe_release(slot);
                }
            }
            KIND_SEND => {
                let Some(c) = self.conns.get_mut(slot as usize) else {
                    return;
                };
                if c.gen != gen {
                    return;
                }
                c.send_inflight = false;
                if res >= 0 {
                    c.sent += res as usize;
                    self.start_send(slot);
                    let c = &mut self.conns[slot as usize];
                    if !c.send_inflight && c.sending.capacity() > OUTPUT_KEEP {
                        // All sent: give a burst's buffer back.
                        c.sending = Vec::new();
                        c.sent = 0;
                    }
                } else {
                    self.fail(slot, -res);
                }
                let c = &mut self.conns[slot as usize];
                if let Some(w) = c.writer.take() {
                    w.wake();
                }
                self.maybe_release(slot);
            }
            _ => {}
        }
    }
}

/// A connection on a [`NetRing`]. Reads take what the multishot receive collected; writes
/// queue output and return at once (up to `OUTPUT_MAX` queued); `flush` waits until the
/// kernel has taken it all. Dropping it closes the socket after the queued output is sent.
pub(crate) struct UringStream {
    ring: Rc<NetRing>,
    slot: u32,
    gen: u32,
}

impl UringStream {
    /// A handle that shuts the connection's socket down (at server stop).
    pub fn cutter(&self) -> Cutter {
        Cutter {
            ring: self.ring.clone(),
            slot: self.slot,
            gen: self.gen,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner, u32) -> R) -> R {
        let mut inner = self.ring.inner.borrow_mut();
        debug_assert_eq!(inner.conns[self.slot as usize].gen, self.gen);
        f(&mut inner, self.slot)
    }
}

/// Shuts a connection's socket down (`SHUT_RD`, `SHUT_RDWR`) through its ring: the socket
/// is a direct descriptor, out of reach of the `shutdown` system call.
pub(crate) struct Cutter {
    ring: Rc<NetRing>,
    slot: u32,
    gen: u32,
}

impl Cutter {
    pub fn shutdown(&self, how: libc::c_int) {
        {
            let mut inner = self.ring.inner.borrow_mut();
            let Some(c) = inner.conns.get(self.slot as usize) else {
                return;
            };
            // A connection released meanwhile (its slot may hold another) is left alone.
            if c.gen != self.gen || c.dropped {
                return;
            }
            let part = c.part;
            let e = opcode::Shutdown::new(types::Fixed(c.file), how)
                .build()
                .user_data(user_data(KIND_IGNORE, 0, 0));
            let _ = inner.push(part, &e);
        }
        self.ring.kick();
    }
}

impl super::conn::Input for UringStream {
    /// Hands over everything received so far: the connection's receive buffer itself when
    /// `into` is empty (no copy, and the ring keeps no buffer for an idle connection).
    fn poll_input(&mut self, cx: &mut Context<'_>, into: &mut BytesMut) -> Poll<io::Result<usize>> {
        let ring = self.ring.clone();
        let poll = self.with(|inner, slot| {
            let c = &mut inner.conns[slot as usize];
            if !c.input.is_empty() {
                let n = c.input.len();
                if into.is_empty() {
                    *into = std::mem::take(&mut c.input);
                } else {
                    into.extend_from_slice(&c.input);
                    c.input = BytesMut::new();
                }
                if c.paused {
                    c.paused = false;
                    inner.arm_recv(slot);
                }
                return Poll::Ready(Ok(n));
            }
            if let Some(errno) = c.error {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            if c.eof {
                return Poll::Ready(Ok(0));
            }
            c.reader = Some(cx.waker().clone());
            inner.arm_recv(slot);
            Poll::Pending
        });
        ring.kick();
        poll
    }
}

impl futures_lite::io::AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ring = self.ring.clone();
        let poll = self.with(|inner, slot| {
            let c = &mut inner.conns[slot as usize];
            if let Some(errno) = c.error {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            let queued = c.queued.len() + (c.sending.len() - c.sent);
            if queued >= OUTPUT_MAX {
                c.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(OUTPUT_MAX - queued);
            c.queued.extend_from_slice(&buf[..n]);
            inner.start_send(slot);
            Poll::Ready(Ok(n))
        });
        ring.kick();
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|inner, slot| {
            let c = &mut inner.conns[slot as usize];
            if let Some(errno) = c.error {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            if c.queued.is_empty() && c.sent == c.sending.len() {
                return Poll::Ready(Ok(()));
            }
            c.writer = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let ring = self.ring.clone();
        self.with(|inner, slot| {
            let c = &mut inner.conns[slot as usize];
            c.dropped = true;
            c.reader = None;
            c.writer = None;
            c.input = BytesMut::new();
            inner.cancel_recv(slot);
            inner.maybe_release(slot);
        });
        ring.kick();
    }
}
