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
    fd: RawFd,
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
    stopped: bool,
}

struct Inner {
    ring: IoUring,
    metrics: std::sync::Arc<crate::metrics::CoreMetrics>,
    bufs: BufRing,
    conns: Vec<Conn>,
    free: Vec<u32>,
    listeners: Vec<Listener>,
    /// Accepted sockets whose tasks are spawned after the completion loop (their callbacks
    /// may use the ring).
    accepted: Vec<(usize, RawFd)>,
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
    /// Sets up the ring, its provided buffers and its eventfd. Fails on kernels without
    /// `SINGLE_ISSUER`, multishot receives or provided-buffer rings (Linux 6.0); the caller
    /// then uses glommio's sockets.
    /// `buffers`: provided receive buffers, a power of two (`server.recv_buffers`); `spin_us`:
    /// how long the driver polls an idle ring before it parks (`server.spin_us`).
    pub fn new(
        buffers: u16,
        spin_us: u32,
        metrics: std::sync::Arc<crate::metrics::CoreMetrics>,
    ) -> io::Result<Rc<NetRing>> {
        let mut ring: IoUring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(SQ_ENTRIES * 4)
            .build(SQ_ENTRIES)?;
        let bufs = BufRing::new(buffers)?;
        // SAFETY: the entries stay allocated until `Inner` is dropped, and `Inner`'s drop order
        // (ring before bufs) tears the ring down first.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                buffers,
                BUF_GROUP,
                0,
            )?;
        }
        // SAFETY: plain syscall; the descriptor is owned by the `BufferedFile` below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { glommio::io::BufferedFile::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd)?;
        ring.completion().disable_eventfd();
        Ok(Rc::new(NetRing {
            inner: RefCell::new(Inner {
                ring,
                metrics,
                bufs,
                conns: Vec::new(),
                free: Vec::new(),
                listeners: Vec::new(),
                accepted: Vec::new(),
                accept_retry: Vec::new(),
            }),
            eventfd,
            parked: Cell::new(false),
            spin: std::time::Duration::from_micros(spin_us as u64),
            stopping: Cell::new(false),
        }))
    }

    /// Starts accepting on a bound, listening socket (owned by the caller, kept open while the
    /// ring uses it). Returns the listener's index for [`NetRing::stop_accepting`].
    pub fn listen(self: &Rc<Self>, fd: RawFd, on_accept: AcceptFn) -> io::Result<usize> {
        let mut inner = self.inner.borrow_mut();
        inner.listeners.push(Listener {
            fd,
            on_accept,
            armed: false,
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
                let e = opcode::AsyncCancel::new(user_data(KIND_ACCEPT, 0, i as u32))
                    .build()
                    .user_data(user_data(KIND_IGNORE, 0, 0));
                let _ = inner.push(&e);
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
            let inner = self.inner.borrow();
            let _ = inner.ring.submit();
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
            self.inner.borrow_mut().ring.completion().enable_eventfd();
            if self.turn(true) > 0 {
                self.inner.borrow_mut().ring.completion().disable_eventfd();
                futures_lite::future::yield_now().await;
                continue;
            }
            self.parked.set(true);
            // The eventfd is signalled by the kernel when work for this ring arrives (or by
            // `stop`). Its count does not matter; the read resets it.
            let _ = self.eventfd.read_at(0, 8).await;
            self.parked.set(false);
            self.inner.borrow_mut().ring.completion().disable_eventfd();
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
            let work = !inner.ring.submission().is_empty() || inner.ring.submission().taskrun();
            if work || force {
                let to_submit = inner.ring.submission().len() as u32;
                // SAFETY: plain io_uring_enter on our ring: submit what is queued (every entry
                // points at memory owned by `Inner`) and run pending completions (GETEVENTS).
                let entered = unsafe {
                    inner.ring.submitter().enter::<libc::sigset_t>(
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
            loop {
                let cqe = inner.ring.completion().next();
                let Some(cqe) = cqe else { break };
                handled += 1;
                inner.complete(cqe.user_data(), cqe.result(), cqe.flags());
            }
            if handled > 0 {
                inner.bufs.publish();
            }
            std::mem::swap(&mut accepted, &mut inner.accepted);
            for index in inner.accept_retry.drain(..) {
                let ring = self.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(ACCEPT_RETRY).await;
                    let armed = ring.inner.borrow_mut().arm_accept(index);
                    if let Err(e) = armed {
                        eprintln!("accept could not be re-armed: {e}");
                    }
                    ring.kick();
                })
                .detach();
            }
        }
        for (listener, fd) in accepted {
            set_nodelay(fd);
            let stream = {
                let mut inner = self.inner.borrow_mut();
                self.new_stream(&mut inner, fd)
            };
            // The callback spawns the connection's task; it must not hold the ring borrowed.
            let on_accept = self.inner.borrow().listeners[listener].on_accept.clone();
            on_accept(stream);
        }
        handled
    }

    fn new_stream(self: &Rc<Self>, inner: &mut Inner, fd: RawFd) -> UringStream {
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
            fd,
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
    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        // SAFETY (for all pushes): every buffer an entry points at is owned by `Inner` (the
        // provided buffers, a connection's `sending`) and stays in place until the entry's
        // completion is reaped.
        if unsafe { self.ring.submission().push(e) }.is_err() {
            self.ring.submit()?;
            unsafe { self.ring.submission().push(e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.conns.len() == self.free.len() && self.listeners.iter().all(|l| !l.armed)
    }

    fn arm_accept(&mut self, index: usize) -> io::Result<()> {
        let l = &self.listeners[index];
        if l.stopped || l.armed {
            return Ok(());
        }
        let e = opcode::AcceptMulti::new(types::Fd(l.fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(KIND_ACCEPT, 0, index as u32));
        self.push(&e)?;
        self.listeners[index].armed = true;
        Ok(())
    }

    fn arm_recv(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        if c.recv_armed || c.eof || c.error.is_some() || c.dropped || c.paused {
            return;
        }
        let e = opcode::RecvMulti::new(types::Fd(c.fd), BUF_GROUP)
            .build()
            .user_data(user_data(KIND_RECV, c.gen, slot));
        match self.push(&e) {
            Ok(()) => self.conns[slot as usize].recv_armed = true,
            Err(_) => self.fail(slot, libc::ENOMEM),
        }
    }

    fn cancel_recv(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        if !c.recv_armed {
            return;
        }
        let e = opcode::AsyncCancel::new(user_data(KIND_RECV, c.gen, slot))
            .build()
            .user_data(user_data(KIND_IGNORE, 0, 0));
        let _ = self.push(&e);
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
        let e = opcode::Send::new(types::Fd(c.fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(KIND_SEND, c.gen, slot));
        match self.push(&e) {
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
        // SAFETY: the connection's own descriptor; no operation in flight references it.
        unsafe { libc::close(c.fd) };
        let gen = c.gen;
        *c = Conn {
            gen,
            ..Conn::default()
        };
        self.free.push(slot);
    }

    fn complete(&mut self, user: u64, res: i32, flags: u32) {
        let (kind, gen, slot) = split_user_data(user);
        match kind {
            KIND_ACCEPT => {
                let index = slot as usize;
                if !cqueue::more(flags) {
                    self.listeners[index].armed = false;
                }
                if res >= 0 {
                    self.accepted.push((index, res));
                    if !self.listeners[index].armed {
                        let _ = self.arm_accept(index);
                    }
                } else if res != -libc::ECANCELED && !self.listeners[index].stopped {
                    // Out of descriptors or memory: say so, wait a little, accept again.
                    eprintln!("accept failed: {}", io::Error::from_raw_os_error(-res));
                    if !self.listeners[index].armed {
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
                    c.input
                        .extend_from_slice(self.bufs.bytes(bid, res as usize));
                    self.bufs.push(bid);
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
    /// The socket's descriptor (for `shutdown` at server stop).
    pub fn fd(&self) -> RawFd {
        self.ring.inner.borrow().conns[self.slot as usize].fd
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner, u32) -> R) -> R {
        let mut inner = self.ring.inner.borrow_mut();
        debug_assert_eq!(inner.conns[self.slot as usize].gen, self.gen);
        f(&mut inner, self.slot)
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
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
