//! One load thread of `hongbao load`: pinned to its CPU, it owns a slice of the connections and
//! drives them through its own io_uring (one receive and at most one send in flight per
//! connection; every request produced in one round goes out in one `io_uring_enter`, which
//! also waits for the next completions). Replies are parsed in place from each connection's
//! receive buffer, without allocating. Requests are produced either in a closed loop (each
//! connection keeps `depth` requests in flight) or from an open-loop [`OpenLoop`] schedule.
//!
//! `--op redis-lpop` speaks RESP instead (`LPOP key`, replies matched in order), so redis-server
//! is measured by the same client with the same pipelining and accounting.
//!
//! Users: each connection speaks for a few uids, switching with a HELLO when its next request
//! is for another uid; an envelope won is opened by the same uid. Latencies go to a
//! [`Recorder`] (whole run) and a per-second [`Tick`] sent to the main thread.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;
use io_uring::{opcode, types, IoUring};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::im::{read_body, walk_page, write_body, ImMix};
use super::schedule::{OpenLoop, Schedule};
use super::stats::{Op, Recorder, Tick};
use crate::token::{Auth, TokenKeys, SHAKE_TOKEN_BYTES};
use crate::wire::frame::{FrameHeader, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, PROTOCOL_VERSION};
use crate::wire::im::{OP_PUSH, OP_SEND, OP_SYNC, SEND_HEADER_BYTES, SYNC_LIMIT_MAX};
use crate::wire::ops::{
    ErrorCode, ShakeOutcome, OP_ERROR, OP_HELLO, OP_OPEN, OP_PING, OP_REPLY, OP_SHAKE,
};

/// Receive buffer per connection: two of the largest frames.
const RECV_BYTES: usize = 2 * FRAME_BYTES_MAX;
const RING_ENTRIES: u32 = 4096;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
/// Payload of a PING request.
const PING_PAYLOAD: [u8; 8] = *b"hongbao!";
/// Open loop: shortest round (sends and reaps are batched per round; a reply's time is taken
/// when it is reaped, so this is also the most a reply's measured latency can be inflated by).
const OPEN_ROUND_NS: u64 = 20_000;
/// Open loop: completions that end a round early (well below the completion queue's size).
const OPEN_ROUND_WANT: usize = 2048;
/// Open loop: most requests due at once placed on one connection before the next.
const OPEN_BURST: usize = 16;
/// IM: after the measured time, pulls go on (no new sends) until every copy of every message
/// of the run has been seen (over all threads) and nothing is in flight, or DRAIN_MAX_NS have
/// passed, so the copies of the last sends are measured too.
const DRAIN_MAX_NS: u64 = 10_000_000_000;
/// First few connection errors are kept verbatim.
const ERRORS_KEPT: usize = 5;

/// What one thread does.
pub struct ThreadPlan {
    pub index: usize,
    pub cpu: Option<usize>,
    pub target: SocketAddr,
    /// Per connection, the uids it speaks for.
    pub conn_uids: Vec<Vec<u64>>,
    pub depth: usize,
    /// Open loop: this thread's schedule.
    pub schedule: Option<Schedule>,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub op: Op,
    pub open_envelopes: bool,
    pub obey_backoff: bool,
    /// Poll instead of sleeping between rounds (`--spin`).
    pub spin: bool,
    pub auth_keys: Option<TokenKeys>,
    pub expires_unix: u32,
    /// `Op::Lpop`: the Redis list popped from.
    pub redis_key: Vec<u8>,
    /// `Op::Send` (`--op im`): the mix, and per connection the group its user is in.
    pub im: Option<Arc<ImMix>>,
    pub conn_groups: Vec<Option<u64>>,
}

/// What one thread measured.
#[derive(Default)]
pub struct ThreadResult {
    pub recorder: Recorder,
    pub errors: BTreeMap<&'static str, u64>,
    pub held_back: u64,
    pub connections_lost: u64,
    pub connection_errors: Vec<String>,
    /// Set when the thread stopped before the end (every connection lost).
    pub stopped: Option<String>,
    /// Nanoseconds measured after warm-up.
    pub measured_ns: u64,
}

/// Messages to the main thread.
pub enum Msg {
    Tick(Tick),
    Done(usize, Box<ThreadResult>),
}

struct Pending {
    id: u64,
    op: Op,
    uid_index: u32,
    /// IM sends: the copies the message is to reach (given back if it is refused).
    copies: u32,
    intended: u64,
    sent: u64,
}

struct Conn {
    stream: TcpStream,
    uids: Vec<u64>,
    /// Per uid: not before this time (ns since start), from the server's back-off hints.
    not_before: Vec<u64>,
    next_uid: usize,
    /// The uid the server will apply to the next request sent on this connection.
    current_uid: Option<usize>,
    /// Envelopes won and not yet opened: (uid index, token).
    opens: VecDeque<(u32, [u8; SHAKE_TOKEN_BYTES])>,
    out: Vec<u8>,
    sending: Vec<u8>,
    sent_upto: usize,
    send_busy: bool,
    recv: Box<[u8]>,
    recv_len: usize,
    recv_busy: bool,
    pending: VecDeque<Pending>,
    next_id: u64,
    alive: bool,
    /// IM: the last seq pulled from the user's stream, the newest pushed, whether a SYNC is
    /// in flight (at most one, outside the send depth), and the user's group.
    synced: u64,
    push_max: u64,
    sync_busy: bool,
    group: Option<u64>,
}

impl Conn {
    /// Requests in flight that count against the depth (an IM pull does not).
    fn in_flight(&self) -> usize {
        self.pending.len() - usize::from(self.sync_busy)
    }
}

/// Opens a connection (from `source`, if given) and authenticates it with `hello`, an auth
/// token, if given (blocking; before the run).
pub fn connect(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
    hello: Option<[u8; 32]>,
) -> io::Result<TcpStream> {
    let mut stream = match source {
        None => TcpStream::connect_timeout(&target, Duration::from_secs(5))?,
        Some(ip) => {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
            // The port is chosen at connect, per (source, target): 64 K connections per
            // source address and target instead of 64 K per source address.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a pointer to a live c_int of the stated size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
            socket.into()
        }
    };
    stream.set_nodelay(true)?;
    if let Some(token) = hello {
        call_blocking(&mut stream, OP_HELLO, &token, "HELLO")?;
    }
    Ok(stream)
}

/// One request and its reply on a blocking connection (before the run), request id 0; an
/// error reply becomes an error naming `what`.
fn call_blocking(
    stream: &mut TcpStream,
    op: u8,
    payload: &[u8],
    what: &str,
) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    push_frame(&mut frame, op, 0, payload);
    stream.write_all(&frame)?;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header)?;
    let h = FrameHeader::read_from_bytes(&header).expect("16 bytes");
    let len = h.length.get() as usize;
    if !(FRAME_HEADER_BYTES..=FRAME_BYTES_MAX).contains(&len) {
        return Err(io::Error::other(format!(
            "not a hongbao binary port (reply length {len})"
        )));
    }
    let mut reply = vec![0u8; len - FRAME_HEADER_BYTES];
    stream.read_exact(&mut reply)?;
    if h.op == OP_ERROR && reply.len() >= 8 {
        let code = u16::from_le_bytes([reply[0], reply[1]]);
        return Err(io::Error::other(format!(
            "{what} refused: {} ({})",
            ErrorCode::from_u16(code).map_or("unknown code", |c| c.name()),
            String::from_utf8_lossy(&reply[8..])
        )));
    }
    if h.op != op | OP_REPLY {
        return Err(io::Error::other(format!(
            "unexpected reply op 0x{:02x} to {what}",
            h.op
        )));
    }
    stream.set_read_timeout(None)?;
    Ok(reply)
}

fn push_frame(out: &mut Vec<u8>, op: u8, id: u64, payload: &[u8]) {
    let header = FrameHeader {
        length: U32::new((FRAME_HEADER_BYTES + payload.len()) as u32),
        version: PROTOCOL_VERSION,
        op,
        flags: U16::new(0),
        request_id: U64::new(id),
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

/// Connects every connection of the plan (the first uid of each is authenticated). IM: each
/// also SYNCs past the end of its stream, which answers the stream's max seq (returned with
/// the connection; 0 otherwise) and subscribes the connection to PUSH.
pub fn connect_all(plan: &ThreadPlan) -> Result<Vec<(TcpStream, u64)>, String> {
    plan.conn_uids
        .iter()
        .map(|uids| {
            let hello = plan
                .auth_keys
                .as_ref()
                .filter(|_| plan.op != Op::Lpop)
                .map(|keys| {
                    Auth {
                        uid: uids[0],
                        expires_unix: plan.expires_unix,
                    }
                    .encode(keys)
                });
            let mut stream =
                connect(plan.target, None, hello).map_err(|e| format!("{}: {e}", plan.target))?;
            let mut max_seq = 0;
            if plan.op == Op::Send {
                let page = call_blocking(
                    &mut stream,
                    OP_SYNC,
                    &crate::wire::im::encode_sync(u64::MAX, 1),
                    "SYNC",
                )
                .map_err(|e| format!("{}: {e}", plan.target))?;
                max_seq = walk_page(&page, |_| {}).map_err(|e| format!("{}: {e}", plan.target))?;
            }
            Ok((stream, max_seq))
        })
        .collect()
}

/// The binary protocol's op code of a request.
fn wire_op(op: Op) -> u8 {
    match op {
        Op::Shake => OP_SHAKE,
        Op::Open => OP_OPEN,
        Op::Hello => OP_HELLO,
        Op::Ping => OP_PING,
        Op::Send => OP_SEND,
        Op::Sync => OP_SYNC,
        Op::Lpop => unreachable!("LPOP is sent as RESP, not as a frame"),
        Op::Delivery => unreachable!("a delivery is not a request"),
    }
}

/// `LPOP key` as a RESP array of bulk strings.
pub fn resp_lpop(key: &[u8]) -> Vec<u8> {
    let mut out = format!("*2\r\n$4\r\nLPOP\r\n${}\r\n", key.len()).into_bytes();
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
    out
}

/// One RESP reply to LPOP at the start of `buf`: `Ok(Some((bytes, outcome, is_error)))`,
/// `Ok(None)` when it is not all there yet, `Err` for anything LPOP cannot answer.
pub fn resp_reply(buf: &[u8]) -> Result<Option<(usize, &'static str, bool)>, String> {
    const LINE_MAX: usize = 1024;
    let Some(nl) = buf.iter().take(LINE_MAX).position(|&b| b == b'\n') else {
        if buf.len() >= LINE_MAX {
            return Err("RESP reply line longer than 1 KiB".into());
        }
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err("RESP reply line without CR LF".into());
    }
    let line = &buf[..nl - 1];
    let rest = nl + 1;
    match line.first() {
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| {
                    format!("bad RESP bulk length {:?}", String::from_utf8_lossy(line))
                })?;
            if n == -1 {
                return Ok(Some((rest, "empty", false)));
            }
            if !(0..=(RECV_BYTES / 2) as i64).contains(&n) {
                return Err(format!("RESP bulk length {n} out of bounds"));
            }
            let end = rest + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err("RESP bulk string not ended by CR LF".into());
            }
            Ok(Some((end, "ok", false)))
        }
        Some(b'_') => Ok(Some((rest, "empty", false))),
        Some(b'-') => Ok(Some((rest, "redis_error", true))),
        _ => Err(format!(
            "unexpected RESP reply to LPOP: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )),
    }
}

const SECOND: u64 = 1_000_000_000;

/// Where the tick starting at `start` ends: ticks are whole seconds from the start of the run
/// during warm-up and from the end of warm-up after it, each phase's last one cut short.
fn next_tick_end(start: u64, warmup: u64, end: u64) -> u64 {
    if start < warmup {
        (start + SECOND).min(warmup)
    } else {
        (start + SECOND).min(end)
    }
}

/// The tick that starts at `start`, numbered from 1 within its phase.
fn tick_at(start: u64, warmup: u64) -> Tick {
    if start < warmup {
        Tick::new(start / SECOND + 1, true)
    } else {
        Tick::new((start - warmup) / SECOND + 1, false)
    }
}

struct Worker {
    plan: ThreadPlan,
    ring: IoUring,
    conns: Vec<Conn>,
    start: Instant,
    result: ThreadResult,
    tick: Tick,
    rr: usize,
    alive: usize,
    /// Earliest time a backing-off uid may shake again (closed loop with obey_backoff).
    wake_at: u64,
    /// Completions of one round, reused.
    reaped: Vec<(u64, i32)>,

    /// `Op::Lpop`: the request's RESP bytes.
    resp_request: Vec<u8>,
    /// IM: the next request's payload, reused; target picks; sends made (for appinfos).
    scratch: Vec<u8>,
    rng: rand_xoshiro::Xoshiro256PlusPlus,
    sends: u64,
}

/// Runs one thread's share of the load on connections already made.
pub fn run(
    plan: ThreadPlan,
    streams: Vec<(TcpStream, u64)>,
    start: Instant,
    stop: Arc<AtomicBool>,
    ticks: Sender<Msg>,
) {
    if let Some(cpu) = plan.cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let index = plan.index;
    let ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
    {
        Ok(r) => r,
        Err(e) => {
            let result = ThreadResult {
                stopped: Some(format!("io_uring setup failed: {e}")),
                ..ThreadResult::default()
            };
            let _ = ticks.send(Msg::Done(index, Box::new(result)));
            return;
        }
    };
    let conns: Vec<Conn> = streams
        .into_iter()
        .zip(&plan.conn_uids)
        .enumerate()
        .map(|(k, ((stream, max_seq), uids))| Conn {
            stream,
            uids: uids.clone(),
            not_before: vec![0; uids.len()],
            next_uid: 0,
            current_uid: plan
                .auth_keys
                .as_ref()
                .filter(|_| plan.op != Op::Lpop)
                .map(|_| 0),
            opens: VecDeque::new(),
            out: Vec::with_capacity(4096),
            sending: Vec::with_capacity(4096),
            sent_upto: 0,
            send_busy: false,
            recv: vec![0u8; RECV_BYTES].into_boxed_slice(),
            recv_len: 0,
            recv_busy: false,
            pending: VecDeque::new(),
            next_id: 1,
            alive: true,
            synced: max_seq,
            push_max: max_seq,
            sync_busy: false,
            group: plan.conn_groups.get(k).copied().flatten(),
        })
        .collect();
    let alive = conns.len();
    let seed = plan_nonce(&plan) ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut w = Worker {
        plan,
        ring,
        conns,
        start,
        result: ThreadResult::default(),
        tick: Tick::new(1, true),
        rr: 0,
        alive,
        wake_at: u64::MAX,
        reaped: Vec::new(),
        resp_request: Vec::new(),
        scratch: Vec::new(),
        rng: rand::SeedableRng::seed_from_u64(seed),
        sends: 0,
    };
    w.resp_request = resp_lpop(&w.plan.redis_key);
    w.main_loop(&stop, &ticks);
    w.shutdown();
    let mut result = std::mem::take(&mut w.result);
    result.measured_ns = w
        .now()
        .min(w.plan.warmup_ns + w.plan.duration_ns)
        .saturating_sub(w.plan.warmup_ns);
    let _ = ticks.send(Msg::Done(index, Box::new(result)));
}

fn plan_nonce(plan: &ThreadPlan) -> u64 {
    plan.im.as_ref().map_or(0, |m| m.nonce)
}

impl Worker {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn main_loop(&mut self, stop: &AtomicBool, ticks: &Sender<Msg>) {
        let warmup = self.plan.warmup_ns;
        let end = warmup + self.plan.duration_ns;
        let mut open = self.plan.schedule.map(OpenLoop::new);
        // Ticks: each second of warm-up (the last one cut at its end), then each second of the
        // measurement (the last one cut at the end).
        let mut tick_start = 0;
        let mut tick_end = next_tick_end(0, warmup, end);
        self.tick = tick_at(0, warmup);
        for i in 0..self.conns.len() {
            self.arm_recv(i);
        }
        loop {
            let now = self.now();
            while now >= tick_end && tick_start < end {
                let done = std::mem::replace(&mut self.tick, tick_at(tick_end, warmup));
                let _ = ticks.send(Msg::Tick(done));
                tick_start = tick_end;
                tick_end = next_tick_end(tick_end, warmup, end);
            }
            let draining = now >= end;
            if draining && (self.plan.op != Op::Send || self.drained(now, end)) {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                self.result.stopped = Some("interrupted".into());
                break;
            }
            if self.alive == 0 {
                let first = self.result.connection_errors.first().cloned();
                self.result.stopped = Some(format!(
                    "every connection was lost{}",
                    first.map_or(String::new(), |e| format!(" (first: {e})"))
                ));
                break;
            }
            // Produce requests.
            self.wake_at = u64::MAX;
            match &mut open {
                _ if draining => self.wake_at = now + 10_000_000,
                Some(open) => {
                    self.send_opens(now);
                    self.open_loop(open, now);
                }
                None => {
                    for i in 0..self.conns.len() {
                        self.fill(i, now);
                    }
                }
            }
            for i in 0..self.conns.len() {
                self.flush(i);
            }
            // Submit, and wait for a completion or the next thing to do. Closed loop: until the
            // first completion. Open loop: a round lasts at least OPEN_ROUND_NS, so the requests
            // due meanwhile go out together (their latency still counts from their intended
            // times) and replies are reaped in batches.
            let mut wait_until = tick_end.min(end).min(self.wake_at);
            let mut want = 1;
            if draining {
                wait_until = self.wake_at;
            } else if let Some(open) = &open {
                wait_until = wait_until.min(open.next_at());
                want = OPEN_ROUND_WANT;
            }
            if self.plan.spin {
                // Submit and collect whatever is done, never sleep.
                if let Err(e) = self.ring.submit() {
                    if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                        self.result.stopped = Some(format!("io_uring_enter failed: {e}"));
                        break;
                    }
                }
                self.reap();
                continue;
            }
            let now = self.now();
            let floor = if open.is_some() { OPEN_ROUND_NS } else { 1_000 };
            let timeout = wait_until.saturating_sub(now).max(floor);
            let ts = types::Timespec::new()
                .sec(timeout / 1_000_000_000)
                .nsec((timeout % 1_000_000_000) as u32);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ETIME)
                        || e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    self.result.stopped = Some(format!("io_uring_enter failed: {e}"));
                    break;
                }
            }
            self.reap();
        }
        if tick_start < end {
            // Stopped early: the second under way is sent as it is.
            let _ = ticks.send(Msg::Tick(std::mem::replace(
                &mut self.tick,
                Tick::new(0, false),
            )));
        }
    }

    /// IM drain: done when nothing is in flight here and every copy of the run has been seen
    /// (by any thread), or at the latest DRAIN_MAX_NS after the end.
    fn drained(&self, now: u64, end: u64) -> bool {
        let idle = self
            .conns
            .iter()
            .all(|c| !c.alive || (c.pending.is_empty() && c.push_max <= c.synced));
        let seen_all = self
            .plan
            .im
            .as_ref()
            .map_or(true, |m| m.outstanding.load(Ordering::Relaxed) <= 0);
        now >= end + DRAIN_MAX_NS || (idle && seen_all)
    }

    /// Closed loop: keep `depth` requests in flight on connection `i`.
    fn fill(&mut self, i: usize, now: u64) {
        while self.conns[i].alive && self.conns[i].in_flight() < self.plan.depth {
            if !self.push_next(i, now, now, true) {
                break;
            }
        }
    }

    /// Open loop: send every due request on a connection with room, in order.
    fn open_loop(&mut self, open: &mut OpenLoop, now: u64) {
        let n = self.conns.len();
        // Requests due together go to one connection (up to OPEN_BURST), so they leave in one
        // send; the next burst goes to the next connection. Latency still counts from each
        // request's own intended time.
        let mut placed_here = 0;
        while let Some(intended) = open.due(now) {
            let mut placed = false;
            for _ in 0..n {
                let i = self.rr;
                let c = &self.conns[i];
                if c.alive && c.in_flight() < self.plan.depth && placed_here < OPEN_BURST {
                    if !self.push_next(i, intended, now, false) {
                        self.result.held_back += u64::from(intended >= self.plan.warmup_ns);
                    }
                    placed = true;
                    placed_here += 1;
                    break;
                }
                self.rr = (self.rr + 1) % n;
                placed_here = 0;
            }
            if !placed {
                // Every connection is full: the request stays due (and its wait counts).
                return;
            }
            open.take();
        }
        // The next round starts on the next connection.
        if placed_here > 0 {
            self.rr = (self.rr + 1) % n;
        }
    }

    /// Open loop: envelopes won are opened at once, outside the schedule.
    fn send_opens(&mut self, now: u64) {
        for i in 0..self.conns.len() {
            while self.conns[i].alive && !self.conns[i].opens.is_empty() {
                self.push_open(i, now, now);
            }
        }
    }

    /// Queues the connection's next request. Returns false when nothing can be sent now (every
    /// uid of the connection is backing off).
    fn push_next(&mut self, i: usize, intended: u64, now: u64, take_opens: bool) -> bool {
        if take_opens && !self.conns[i].opens.is_empty() {
            self.push_open(i, intended, now);
            return true;
        }
        match self.plan.op {
            Op::Ping => {
                self.push(i, Op::Ping, 0, &PING_PAYLOAD, intended, now);
                true
            }
            Op::Lpop => {
                self.push(i, Op::Lpop, 0, &[], intended, now);
                true
            }
            Op::Send => {
                self.push_send(i, intended, now);
                true
            }
            _ => {
                let Some(u) = self.pick_uid(i, now) else {
                    return false;
                };
                self.switch_uid(i, u, now);
                self.push(i, Op::Shake, u as u32, &[], intended, now);
                true
            }
        }
    }

    /// IM: a SEND from connection `i`'s user: to its group (a share of the sends) or to
    /// another user of the run, the body stamped with the intended and actual times.
    fn push_send(&mut self, i: usize, intended: u64, now: u64) {
        use rand::Rng;
        let mix = self.plan.im.clone().expect("an IM plan");
        let me = self.conns[i].uids[0];
        let to_group = match self.conns[i].group {
            Some(gid) if self.rng.random::<f64>() < mix.group_share => Some(gid),
            _ => None,
        };
        let (kind, to) = match to_group {
            Some(gid) => (2u8, gid),
            None => {
                let n = mix.users.len();
                let mut to = mix.users[self.rng.random_range(0..n)];
                if to == me && n > 1 {
                    to = mix.users[(mix.users.iter().position(|&u| u == me).unwrap_or(0) + 1) % n];
                }
                (1u8, to)
            }
        };
        self.sends += 1;
        let copies = mix.copies(me, kind, to);
        mix.outstanding
            .fetch_add(i64::from(copies), Ordering::Relaxed);
        let appinfo = (u128::from(mix.nonce) << 64)
            | (u128::from(self.plan.index as u64) << 48)
            | u128::from(self.sends);
        let mut p = std::mem::take(&mut self.scratch);
        p.clear();
        p.extend_from_slice(&appinfo.to_le_bytes());
        p.extend_from_slice(&[kind, 1, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&to.to_le_bytes());
        debug_assert_eq!(p.len(), SEND_HEADER_BYTES);
        write_body(&mut p, mix.nonce, intended, now, mix.body_bytes);
        self.push(i, Op::Send, u32::from(kind), &p, intended, now);
        self.conns[i]
            .pending
            .back_mut()
            .expect("just pushed")
            .copies = copies;
        self.scratch = p;
    }

    /// IM: pulls connection `i`'s stream when a PUSH (or the last page) says there is more.
    fn maybe_sync(&mut self, i: usize, now: u64) {
        let c = &self.conns[i];
        if !c.alive || c.sync_busy || c.push_max <= c.synced {
            return;
        }
        let after = c.synced;
        self.conns[i].sync_busy = true;
        let payload = crate::wire::im::encode_sync(after, SYNC_LIMIT_MAX);
        self.push(i, Op::Sync, 0, &payload, now, now);
    }

    fn push_open(&mut self, i: usize, intended: u64, now: u64) {
        let (u, token) = self.conns[i].opens.pop_front().expect("an open is queued");
        self.switch_uid(i, u as usize, now);
        self.push(i, Op::Open, u, &token, intended, now);
    }

    /// The next uid of connection `i` allowed to shake now (round robin).
    fn pick_uid(&mut self, i: usize, now: u64) -> Option<usize> {
        let c = &mut self.conns[i];
        let n = c.uids.len();
        for _ in 0..n {
            let u = c.next_uid;
            c.next_uid = (c.next_uid + 1) % n;
            if !self.plan.obey_backoff || c.not_before[u] <= now {
                return Some(u);
            }
        }
        let earliest = c.not_before.iter().copied().min().unwrap_or(u64::MAX);
        self.wake_at = self.wake_at.min(earliest);
        None
    }

    /// Sends a HELLO first when the connection currently speaks for another uid.
    fn switch_uid(&mut self, i: usize, u: usize, now: u64) {
        if self.conns[i].current_uid == Some(u) {
            return;
        }
        let Some(keys) = &self.plan.auth_keys else {
            return;
        };
        let token = Auth {
            uid: self.conns[i].uids[u],
            expires_unix: self.plan.expires_unix,
        }
        .encode(keys);
        self.conns[i].current_uid = Some(u);
        self.push(i, Op::Hello, u as u32, &token, now, now);
    }

    fn push(&mut self, i: usize, op: Op, uid_index: u32, payload: &[u8], intended: u64, now: u64) {
        let c = &mut self.conns[i];
        let id = c.next_id;
        c.next_id += 1;
        if op == Op::Lpop {
            c.out.extend_from_slice(&self.resp_request);
        } else {
            push_frame(&mut c.out, wire_op(op), id, payload);
        }
        c.pending.push_back(Pending {
            id,
            op,
            uid_index,
            copies: 0,
            intended,
            sent: now,
        });
    }

    fn sqe_push(&mut self, entry: io_uring::squeue::Entry) {
        // SAFETY (for callers): every entry points into a connection's boxed receive buffer or
        // its `sending` vector, which stay in place until the completion is reaped (and
        // `shutdown` waits for all of them before the connections are dropped).
        loop {
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    fn arm_recv(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.alive || c.recv_busy {
            return;
        }
        let free = &mut c.recv[c.recv_len..];
        let entry = opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            free.as_mut_ptr(),
            free.len() as u32,
        )
        .build()
        .user_data((KIND_RECV << 32) | i as u64);
        c.recv_busy = true;
        self.sqe_push(entry);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.alive || c.send_busy || c.out.is_empty() {
            return;
        }
        std::mem::swap(&mut c.out, &mut c.sending);
        c.sent_upto = 0;
        self.submit_send(i);
    }

    fn submit_send(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let rest = &c.sending[c.sent_upto..];
        let entry = opcode::Send::new(
            types::Fd(c.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .build()
        .user_data((KIND_SEND << 32) | i as u64);
        c.send_busy = true;
        self.sqe_push(entry);
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.reaped);
        done.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        if done.is_empty() {
            self.reaped = done;
            return;
        }
        let now = self.now();
        for &(data, res) in &done {
            let i = (data & 0xffff_ffff) as usize;
            match data >> 32 {
                KIND_RECV => {
                    self.conns[i].recv_busy = false;
                    if !self.conns[i].alive {
                        continue;
                    }
                    if res <= 0 {
                        let why = if res == 0 {
                            "the server closed the connection".to_string()
                        } else {
                            io::Error::from_raw_os_error(-res).to_string()
                        };
                        self.lose(i, why);
                        continue;
                    }
                    self.conns[i].recv_len += res as usize;
                    if let Err(why) = self.parse(i, now) {
                        self.lose(i, why);
                        continue;
                    }
                    self.arm_recv(i);
                }
                KIND_SEND => {
                    self.conns[i].send_busy = false;
                    if !self.conns[i].alive {
                        continue;
                    }
                    if res < 0 {
                        self.lose(i, io::Error::from_raw_os_error(-res).to_string());
                        continue;
                    }
                    let c = &mut self.conns[i];
                    c.sent_upto += res as usize;
                    if c.sent_upto < c.sending.len() {
                        self.submit_send(i);
                    } else {
                        c.sending.clear();
                        self.flush(i);
                    }
                }
                _ => {}
            }
        }
        done.clear();
        self.reaped = done;
    }

    /// Handles every whole reply in connection `i`'s receive buffer.
    fn parse(&mut self, i: usize, now: u64) -> Result<(), String> {
        if self.plan.op == Op::Lpop {
            return self.parse_resp(i, now);
        }
        let mut at = 0;
        loop {
            let c = &self.conns[i];
            let avail = c.recv_len - at;
            if avail < FRAME_HEADER_BYTES {
                break;
            }
            let h = FrameHeader::read_from_bytes(&c.recv[at..at + FRAME_HEADER_BYTES])
                .expect("16 bytes");
            let len = h.length.get() as usize;
            if !(FRAME_HEADER_BYTES..=FRAME_BYTES_MAX).contains(&len) {
                return Err(format!("reply frame length {len} is out of bounds"));
            }
            if avail < len {
                break;
            }
            let payload_range = at + FRAME_HEADER_BYTES..at + len;
            self.reply(i, h.op, h.request_id.get(), payload_range, now)?;
            at += len;
        }
        let c = &mut self.conns[i];
        c.recv.copy_within(at..c.recv_len, 0);
        c.recv_len -= at;
        Ok(())
    }

    /// Handles every whole RESP reply in connection `i`'s receive buffer (in request order).
    fn parse_resp(&mut self, i: usize, now: u64) -> Result<(), String> {
        let mut at = 0;
        loop {
            let c = &mut self.conns[i];
            let Some((len, outcome, is_error)) = resp_reply(&c.recv[at..c.recv_len])? else {
                break;
            };
            at += len;
            let Some(p) = c.pending.pop_front() else {
                return Err("RESP reply to no request".into());
            };
            self.complete(p, outcome, is_error, now);
        }
        let c = &mut self.conns[i];
        c.recv.copy_within(at..c.recv_len, 0);
        c.recv_len -= at;
        Ok(())
    }

    fn reply(
        &mut self,
        i: usize,
        op: u8,
        id: u64,
        payload: std::ops::Range<usize>,
        now: u64,
    ) -> Result<(), String> {
        if op == OP_PUSH && id == 0 {
            let c = &mut self.conns[i];
            let body = &c.recv[payload];
            if body.len() != 16 {
                return Err(format!("PUSH of {} bytes", body.len()));
            }
            let max_seq = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
            c.push_max = c.push_max.max(max_seq);
            self.maybe_sync(i, now);
            return Ok(());
        }
        let c = &mut self.conns[i];
        let Some(p) = c.pending.pop_front() else {
            return Err(format!("reply {id} to no request"));
        };
        if p.id != id {
            return Err(format!("reply {id} where {} was next", p.id));
        }
        let body = &c.recv[payload];
        let u32_at = |b: &[u8], k: usize| u32::from_le_bytes(b[k..k + 4].try_into().unwrap());
        let mut backoff_ms = 0;
        let mut is_error = false;
        let outcome: &'static str = if op == OP_ERROR {
            if body.len() < 8 {
                return Err("error reply shorter than 8 bytes".into());
            }
            is_error = true;
            backoff_ms = u32_at(body, 4);
            let code = u16::from_le_bytes([body[0], body[1]]);
            ErrorCode::from_u16(code).map_or("unknown_error", |e| e.name())
        } else {
            let expected = wire_op(p.op) | OP_REPLY;
            if op != expected {
                return Err(format!("reply op 0x{op:02x} to a {} request", p.op.name()));
            }
            match p.op {
                Op::Shake => {
                    if body.len() != 8 && body.len() != 8 + SHAKE_TOKEN_BYTES {
                        return Err(format!("shake reply of {} bytes", body.len()));
                    }
                    let outcome = ShakeOutcome::from_u8(body[0])
                        .ok_or_else(|| format!("unknown shake outcome {}", body[0]))?;
                    backoff_ms = u32_at(body, 4);
                    if outcome == ShakeOutcome::Envelope && self.plan.open_envelopes {
                        let token: [u8; SHAKE_TOKEN_BYTES] = body[8..]
                            .try_into()
                            .map_err(|_| "envelope without a token".to_string())?;
                        c.opens.push_back((p.uid_index, token));
                    }
                    outcome.name()
                }
                Op::Send => {
                    if body.len() != 24 {
                        return Err(format!("send reply of {} bytes", body.len()));
                    }
                    if p.uid_index == 2 {
                        "group"
                    } else {
                        "chat"
                    }
                }
                Op::Sync => {
                    c.sync_busy = false;
                    let (me, warmup, nonce) =
                        (c.uids[0], self.plan.warmup_ns, plan_nonce(&self.plan));
                    let mut synced = c.synced;
                    let mut gaps = 0u64;
                    let mut seen = 0i64;
                    let recorder = &mut self.result.recorder;
                    let max_seq = walk_page(body, |e| {
                        gaps += u64::from(e.seq != synced + 1);
                        synced = e.seq;
                        if e.kind != 1 || e.sender == me {
                            return;
                        }
                        if let Some((intended, sent)) = read_body(nonce, e.body) {
                            seen += 1;
                            if intended >= warmup {
                                let outcome = if e.target_kind == 2 { "group" } else { "chat" };
                                recorder.record(
                                    Op::Delivery,
                                    outcome,
                                    now.saturating_sub(intended),
                                    now.saturating_sub(sent),
                                );
                            }
                        }
                    })?;
                    c.synced = synced;
                    c.push_max = c.push_max.max(max_seq);
                    if let Some(m) = &self.plan.im {
                        m.outstanding.fetch_sub(seen, Ordering::Relaxed);
                    }
                    if gaps > 0 {
                        *self.result.errors.entry("seq_gap").or_default() += gaps;
                        self.tick.errors += gaps;
                    }
                    "ok"
                }
                _ => "ok",
            }
        };
        if self.plan.obey_backoff && backoff_ms > 0 && p.op == Op::Shake {
            let u = p.uid_index as usize;
            c.not_before[u] = c.not_before[u].max(now + backoff_ms as u64 * 1_000_000);
        }
        let was_sync = p.op == Op::Sync;
        if was_sync && is_error {
            self.conns[i].sync_busy = false;
        }
        if p.op == Op::Send && is_error {
            // Nothing was stored: no copies to wait for.
            if let Some(m) = &self.plan.im {
                m.outstanding
                    .fetch_sub(i64::from(p.copies), Ordering::Relaxed);
            }
        }
        self.complete(p, outcome, is_error, now);
        if was_sync {
            self.maybe_sync(i, now);
        }
        Ok(())
    }

    /// Counts one reply: the run's histograms (unless intended during warm-up) and this
    /// second's tick.
    fn complete(&mut self, p: Pending, outcome: &'static str, is_error: bool, now: u64) {
        if p.intended >= self.plan.warmup_ns {
            let corrected = now.saturating_sub(p.intended);
            let uncorrected = now.saturating_sub(p.sent);
            self.result
                .recorder
                .record(p.op, outcome, corrected, uncorrected);
            if is_error {
                *self.result.errors.entry(outcome).or_default() += 1;
            }
        }
        self.tick.replies += 1;
        self.tick
            .latency
            .saturating_record(now.saturating_sub(p.intended).max(1));
        if is_error {
            self.tick.errors += 1;
            match self
                .tick
                .error_codes
                .iter_mut()
                .find(|(n, _)| *n == outcome)
            {
                Some((_, k)) => *k += 1,
                None => self.tick.error_codes.push((outcome, 1)),
            }
        }
    }

    fn lose(&mut self, i: usize, why: String) {
        let c = &mut self.conns[i];
        if !c.alive {
            return;
        }
        c.alive = false;
        c.pending.clear();
        c.opens.clear();
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        self.alive -= 1;
        self.result.connections_lost += 1;
        if self.result.connection_errors.len() < ERRORS_KEPT {
            self.result.connection_errors.push(why);
        }
    }

    /// Ends every connection and waits for their operations to complete, so no buffer the
    /// kernel may still write into is freed.
    fn shutdown(&mut self) {
        for c in &mut self.conns {
            c.alive = false;
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        while self.conns.iter().any(|c| c.recv_busy || c.send_busy) {
            if Instant::now() > give_up {
                // The kernel still holds operations on these buffers: leak them rather than
                // free memory it may write to.
                std::mem::forget(std::mem::take(&mut self.conns));
                return;
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for cqe in self.ring.completion() {
                let i = (cqe.user_data() & 0xffff_ffff) as usize;
                match cqe.user_data() >> 32 {
                    KIND_RECV => self.conns[i].recv_busy = false,
                    KIND_SEND => self.conns[i].send_busy = false,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpop_is_a_resp_array() {
        assert_eq!(
            resp_lpop(b"tickets"),
            b"*2\r\n$4\r\nLPOP\r\n$7\r\ntickets\r\n".to_vec()
        );
    }

    #[test]
    fn resp_replies_to_lpop() {
        let value = b"$26\r\nabcdefghijklmnopqrstuvwxyz\r\n";
        assert_eq!(resp_reply(value), Ok(Some((value.len(), "ok", false))));
        // Not all there yet: wait for more, whatever the cut.
        for cut in 0..value.len() {
            assert_eq!(resp_reply(&value[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(resp_reply(b"$-1\r\n$3"), Ok(Some((5, "empty", false))));
        assert_eq!(resp_reply(b"_\r\n"), Ok(Some((3, "empty", false))));
        assert_eq!(
            resp_reply(b"-WRONGTYPE Operation against a key\r\n"),
            Ok(Some((36, "redis_error", true)))
        );
        assert!(resp_reply(b"+OK\r\n").is_err());
        assert!(resp_reply(b"$x\r\n").is_err());
        assert!(resp_reply(b"$3\r\nabcXY").is_err());
        assert!(resp_reply(b"$99999999\r\n").is_err());
        assert!(resp_reply(&[b'$'; 2000]).is_err());
        assert!(resp_reply(b"$3\n").is_err());
    }
}
