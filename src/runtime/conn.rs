//! Connections of one core: the accept loops and the per-connection loops of both protocols.
//!
//! A connection reads what is there, decodes every whole request in it, starts each one
//! (most finish at once; opens wait for their claim's group commit, forwarded requests for the
//! other core), hands the collected cross-core messages over in one batch, then writes all the
//! replies in request order with one write. Pipelined requests therefore share one read, one
//! queue push per destination, one fdatasync and one write.

use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpListener;

use super::im::{GroupOp, Watch};
use super::{Core, Slot};
use crate::im::record::GroupChange;
use crate::im::SendRequest;
use crate::wire::im::encode_push;
use crate::wire::request::{decode_binary, decode_http, GroupRequest, Request, UserOp};

/// Requests handled from one read between two yields to the core's other tasks.
const REQUESTS_PER_YIELD: usize = 32;
use crate::serve::setup::now_ms;
use crate::shake::engine::OpenRequest;
use crate::token::{Auth, Shake, TagQueue, TokenError, AUTH_TOKEN_BYTES};
use crate::wire::frame::{Frame, FrameDecoder, FrameError};
use crate::wire::http::{encode_response, HttpDecoder, Request as HttpRequest};
use crate::wire::ops::{
    encode_binary, encode_http, encode_pong, ErrorCode, HelloReply, OpResult, OP_HELLO,
};

/// Requests a connection may have started and not yet answered; beyond it, it stops reading
/// until answers go out.
const PENDING_MAX: usize = 4096;

/// glommio path: bytes read per connection per read call (the io_uring path has no read buffer
/// per connection: its receive buffer is handed over).
const READ_BYTES: usize = 16 << 10;

/// Where a connection's loop gets its input: whatever has arrived, appended to `into` (the
/// decoder's buffer). `Ok(0)` at end of stream.
pub(crate) trait Input {
    fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>>;
}

/// A socket read through a buffer of its own (glommio's sockets): 16 KiB per connection,
/// copied on into the decoder's buffer.
pub(crate) struct Copying<S> {
    stream: S,
    buf: Box<[u8]>,
}

impl<S> Copying<S> {
    pub fn new(stream: S) -> Copying<S> {
        Copying {
            stream,
            buf: vec![0u8; READ_BYTES].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> Input for Copying<S> {
    fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = polled {
            into.extend_from_slice(&self.buf[..n]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Copying<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Protocol {
    Binary,
    Http,
}

pub(crate) async fn accept_loop(core: Rc<Core>, listener: TcpListener, protocol: Protocol) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if core.conn_count() >= core.shared.fd_connections_max {
                    // Over the bound: close at once rather than grow without limit.
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                use std::os::fd::AsRawFd;
                let cut = super::conns::Cut::Fd(stream.as_raw_fd());
                spawn_conn(&core, Copying::new(stream), cut, protocol);
            }
            Err(e) => {
                // Out of descriptors or memory: say so, wait a little, go on.
                eprintln!("core {}: accept failed: {e}", core.id);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs a connection's protocol loop as a task of the core (either network path).
pub(crate) fn spawn_conn<S: Input + AsyncWrite + Unpin + 'static>(
    core: &Rc<Core>,
    stream: S,
    cut: super::conns::Cut,
    protocol: Protocol,
) {
    let c = core.clone();
    glommio::spawn_local(async move {
        let id = c.add_conn(cut);
        let mut stream = stream;
        let ending = match protocol {
            Protocol::Binary => binary_conn(&c, &mut stream, id).await,
            Protocol::Http => http_conn(&c, &mut stream, id).await,
        };
        if let Some(peer_closed) = ending {
            close_gracefully(&c, id, &mut stream, peer_closed).await;
        }
        c.remove_conn(id);
    })
    .detach();
}

/// How long a closing connection goes on reading (and dropping) what its peer still sends
/// after the last answer was written. Closing a socket with unread input makes the kernel
/// reset the connection and throw away output it has not yet delivered: the answers the
/// connection just wrote, an open's among them.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection without losing what it wrote: waits until the kernel has every byte
/// of output, then (unless the peer already closed its side) sends FIN after them and reads
/// and drops the peer's input until it closes too, or for [`LINGER`] at most. The socket
/// itself is closed when the stream is dropped.
async fn close_gracefully<S: Input + AsyncWrite + Unpin>(
    core: &Core,
    id: u64,
    stream: &mut S,
    peer_closed: bool,
) {
    if stream.flush().await.is_err() || peer_closed {
        return;
    }
    core.conns.cut(id, libc::SHUT_WR);
    let mut sink = BytesMut::new();
    futures_lite::future::or(
        async {
            loop {
                sink.clear();
                match std::future::poll_fn(|cx| stream.poll_input(cx, &mut sink)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        },
        async {
            glommio::timer::sleep(LINGER).await;
        },
    )
    .await;
}

/// How a refused auth token is answered: a token of the wrong size or not hex is `malformed`
/// over both protocols (the request does not have the op's layout); one that fails its check
/// is `auth_invalid`.
fn auth_error(e: TokenError) -> ErrorCode {
    match e {
        TokenError::Expired { .. } => ErrorCode::AuthExpired,
        TokenError::Length { .. } | TokenError::NotHex => ErrorCode::Malformed,
        _ => ErrorCode::AuthInvalid,
    }
}

/// The checks of an open that need no shard state, then the claim on the owner core.
fn open(core: &Rc<Core>, uid: u64, token: &[u8], now: u64) -> Slot {
    let shared = &core.shared;
    let refuse = |code| Slot::Ready(OpResult::error(code));
    let Ok(shake) = Shake::decode(token, &core.token_keys) else {
        return refuse(ErrorCode::TokenInvalid);
    };
    if shake.uid != uid {
        return refuse(ErrorCode::WrongUser);
    }
    let envelope = shake.envelope_id();
    let Some(&owner) = shared.owner.get(&envelope.shard_ordinal()) else {
        return refuse(ErrorCode::UnknownShard);
    };
    let Ok(ticket) = shake.ticket.open(&shared.keyring) else {
        return refuse(ErrorCode::TicketInvalid);
    };
    if !core.lists.borrow().allows(ticket.key_id) {
        return refuse(ErrorCode::KeyDenied);
    }
    let req = OpenRequest {
        uid,
        record: shake.ticket,
        ticket,
        issuing_core: shake.issuing_core,
        now_unix: (now / 1000) as u32,
    };
    core.open(req, owner)
}

/// Checks that a verified auth token is still valid now.
fn current_uid(auth: &Option<Auth>, now: u64) -> Result<u64, ErrorCode> {
    match auth {
        None => Err(ErrorCode::Unauthenticated),
        Some(a) if (now / 1000) as u32 >= a.expires_unix => Err(ErrorCode::AuthExpired),
        Some(a) => Ok(a.uid),
    }
}

enum BinarySlot {
    Op(u8, u64, Slot, &'static str),
    Pong(u64, bytes::Bytes),
    Fail(u64, ErrorCode, String),
}

/// The answer a binary request waits for, if it waits for one.
fn binary_head(s: &mut BinarySlot) -> Option<&mut Slot> {
    match s {
        BinarySlot::Op(_, _, slot, _) => Some(slot),
        _ => None,
    }
}

/// A connection's watch of its user's stream, ended with the connection (or a new HELLO).
struct Watching<'a> {
    core: &'a Core,
    watch: Option<Rc<Watch>>,
}

impl Watching<'_> {
    fn start(&mut self, uid: u64) {
        if self.watch.as_ref().is_some_and(|w| w.uid == uid) {
            return;
        }
        self.stop();
        self.watch = Some(self.core.watch(uid));
    }

    fn stop(&mut self) {
        if let Some(w) = self.watch.take() {
            self.core.unwatch(&w);
        }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts an operation of the authenticated user `uid`, the same for both protocols.
fn start_user_op(core: &Rc<Core>, uid: u64, op: UserOp, now: u64) -> Slot {
    match op {
        UserOp::Shake => core.shake(uid, now),
        UserOp::Open(token) => open(core, uid, &token, now),
        UserOp::Send(s) => core.im_send(SendRequest {
            sender: uid,
            appinfo: s.appinfo,
            to: s.to,
            class: s.class,
            body: s.body,
        }),
        UserOp::Own { seq, op } => core.im_own(uid, seq, op),
        UserOp::Sync { after, limit } => core.im_sync(uid, after, limit),
        UserOp::Group { gid, op } => {
            let op = match op {
                GroupRequest::Create(members) => GroupOp::Create {
                    owner: uid,
                    members,
                },
                GroupRequest::Add(members) => GroupOp::Change(GroupChange::Add {
                    actor: uid,
                    members,
                }),
                GroupRequest::Remove(members) => GroupOp::Change(GroupChange::Remove {
                    actor: uid,
                    members,
                }),
                GroupRequest::Members { from } => GroupOp::Members { actor: uid, from },
            };
            core.im_group(gid, op)
        }
    }
}

/// Starts one binary request: the connection's user is checked first (for the ops that
/// need one), then the request's form.
fn binary_request(
    core: &Rc<Core>,
    frame: Frame,
    auth: &mut Option<Auth>,
    watching: &mut Watching<'_>,
    now: u64,
) -> BinarySlot {
    let rid = frame.request_id;
    let decoded = decode_binary(frame.op, &frame.payload);
    let mut uid = 0;
    if decoded.needs_user {
        match current_uid(auth, now) {
            Ok(u) => uid = u,
            Err(code) => {
                let detail = "send HELLO with a valid auth token first";
                return BinarySlot::Fail(rid, code, detail.into());
            }
        }
    }
    match decoded.request {
        Err(r) => BinarySlot::Fail(rid, r.code, r.detail),
        Ok(Request::Hello(token)) => hello(core, rid, token, auth, watching, now),
        Ok(Request::Ping(payload)) => BinarySlot::Pong(rid, payload),
        Ok(Request::User(op)) => {
            if matches!(op, UserOp::Sync { .. }) {
                // From its first SYNC on, the connection is told (PUSH) when the stream grows.
                watching.start(uid);
            }
            BinarySlot::Op(frame.op, rid, start_user_op(core, uid, op, now), "")
        }
        // The binary decoder yields neither; answered as the unknown op they would be.
        Ok(Request::Health | Request::Metrics) => {
            let detail = format!("op 0x{:02x} is not known", frame.op);
            BinarySlot::Fail(rid, ErrorCode::UnknownOp, detail)
        }
    }
}

/// HELLO: authenticates the connection (a new user stops watching the old one's stream).
fn hello(
    core: &Core,
    rid: u64,
    token: &[u8],
    auth: &mut Option<Auth>,
    watching: &mut Watching<'_>,
    now: u64,
) -> BinarySlot {
    match Auth::decode(token, &core.auth_keys, (now / 1000) as u32) {
        Ok(a) => {
            if auth.is_some_and(|old| old.uid != a.uid) {
                watching.stop();
            }
            *auth = Some(a);
            let hello = HelloReply {
                uid: a.uid,
                expires_unix: a.expires_unix,
                core: core.id,
                cores: core.shared.cores as u16,
            };
            BinarySlot::Op(OP_HELLO, rid, Slot::Ready(OpResult::Hello(hello)), "")
        }
        Err(e) => {
            *auth = None;
            watching.stop();
            BinarySlot::Fail(rid, auth_error(e), e.to_string())
        }
    }
}

/// A binary connection's loop, until it closes: `Some(peer_closed)` when everything it started
/// was answered and written (then it is closed gracefully), `None` when it failed.
async fn binary_conn<S: Input + AsyncWrite + Unpin>(
    core: &Rc<Core>,
    stream: &mut S,
    id: u64,
) -> Option<bool> {
    let mut decoder = FrameDecoder::new();
    let mut auth: Option<Auth> = None;
    let mut watching = Watching { core, watch: None };
    let mut out = BytesMut::new();
    let mut tags = TagQueue::default();
    let mut slots: VecDeque<BinarySlot> = VecDeque::new();
    let mut close = false;
    let mut peer_closed = false;
    // Whole requests may be waiting in the decoder (a read brought more than PENDING_MAX).
    let mut backlog = false;
    loop {
        if !answer_ready(
            core,
            stream,
            &mut slots,
            encode_binary_slot,
            &mut out,
            &mut tags,
        )
        .await
        {
            return None;
        }
        let ends = Ends { core, id, close };
        match next_event(
            stream,
            decoder.input(),
            &mut slots,
            binary_head,
            ends,
            backlog,
            watching.watch.as_deref(),
        )
        .await
        {
            Wake::Push(seq) => {
                if let Some(w) = &watching.watch {
                    encode_push(w.uid, seq, &mut out);
                    w.pushed(seq);
                }
                continue;
            }
            wake => match step(wake, &mut close, &mut peer_closed) {
                Step::Decode => backlog = false,
                Step::Again => continue,
                Step::End(ending) => return ending,
            },
        }
        // One clock read per read: every request of a pipelined batch arrived at once.
        let now = now_ms();
        let mut started = 0usize;
        loop {
            if slots.len() >= PENDING_MAX {
                backlog = true;
                break;
            }
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let slot = binary_request(core, frame, &mut auth, &mut watching, now);
                    slots.push_back(slot);
                    started += 1;
                    if started % REQUESTS_PER_YIELD == 0 {
                        // Let woken tasks (the commit loop with a finished sync, other
                        // connections) run between slices of a large pipelined read.
                        futures_lite::future::yield_now().await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FrameError::Version { .. } => ErrorCode::Version,
                        FrameError::TooLong(_) => ErrorCode::TooLarge,
                        FrameError::TooShort(_) => ErrorCode::Malformed,
                    };
                    slots.push_back(BinarySlot::Fail(
                        e.request_id().unwrap_or(0),
                        code,
                        e.to_string(),
                    ));
                    if !e.recoverable() {
                        close = true;
                        break;
                    }
                }
            }
        }
        decoder.release_if_empty();
        core.flush();
        core.wake_commit();
    }
}

/// Encodes a binary request's answer if it is there; false while it is not.
fn encode_binary_slot(
    core: &Core,
    slot: &mut BinarySlot,
    out: &mut BytesMut,
    tags: &mut TagQueue,
) -> bool {
    match slot {
        BinarySlot::Op(op, rid, slot, message) => {
            let Some(result) = slot.try_take() else {
                return false;
            };
            if let OpResult::Error { code, .. } = result {
                core.metrics().error(code);
            }
            encode_binary(*op, *rid, &result, message, out, tags);
        }
        BinarySlot::Pong(rid, payload) => encode_pong(*rid, payload, out),
        BinarySlot::Fail(rid, code, message) => {
            core.metrics().error(*code);
            encode_binary(0, *rid, &OpResult::error(*code), message, out, tags);
        }
    }
    true
}

enum HttpSlot {
    Op(Slot, bool),
    Raw(u16, &'static str, Vec<u8>, bool),
    Fail(ErrorCode, String, bool),
}

/// The last auth token verified on an HTTP connection (hex text, as sent).
type AuthCache = Option<([u8; 2 * AUTH_TOKEN_BYTES], Auth)>;

/// The auth token of an HTTP request, verified once per distinct token in a row on a
/// connection (a client that sends the same token again skips the tag check).
fn http_uid(
    core: &Core,
    req: &HttpRequest<'_>,
    cache: &mut AuthCache,
    now: u64,
) -> Result<u64, (ErrorCode, String)> {
    let Some(text) = req.auth else {
        return Err((
            ErrorCode::Unauthenticated,
            "send Authorization: Bearer <auth token hex>".into(),
        ));
    };
    let now = (now / 1000) as u32;
    if let Some((t, a)) = cache {
        if t.as_slice() == text {
            if now >= a.expires_unix {
                return Err((ErrorCode::AuthExpired, "auth token expired".into()));
            }
            return Ok(a.uid);
        }
    }
    match Auth::decode_hex(text, &core.auth_keys, now) {
        Ok(a) => {
            let mut key = [0u8; 2 * AUTH_TOKEN_BYTES];
            key.copy_from_slice(text); // decode_hex checked the length
            *cache = Some((key, a));
            Ok(a.uid)
        }
        Err(e) => Err((auth_error(e), e.to_string())),
    }
}

/// Starts one HTTP request: the user is checked first (for the endpoints that need one),
/// then the request's form.
fn http_request(
    core: &Rc<Core>,
    req: &HttpRequest<'_>,
    cache: &mut AuthCache,
    now: u64,
) -> HttpSlot {
    let close = req.close;
    let decoded = decode_http(req);
    let mut uid = 0;
    if decoded.needs_user {
        match http_uid(core, req, cache, now) {
            Ok(u) => uid = u,
            Err((code, message)) => return HttpSlot::Fail(code, message, close),
        }
    }
    match decoded.request {
        Err(r) => HttpSlot::Fail(r.code, r.detail, close),
        Ok(Request::Health) => health(core, now, close),
        Ok(Request::Metrics) => {
            let all: Vec<&crate::metrics::CoreMetrics> =
                core.shared.metrics.iter().map(|m| m.as_ref()).collect();
            let text = crate::metrics::render(&all, &core.shared.disk.gauges());
            HttpSlot::Raw(200, "text/plain; version=0.0.4", text.into_bytes(), close)
        }
        Ok(Request::User(op)) => HttpSlot::Op(start_user_op(core, uid, op, now), close),
        // The HTTP decoder yields neither.
        Ok(Request::Hello(_) | Request::Ping(_)) => HttpSlot::Fail(
            ErrorCode::UnknownOp,
            format!("no endpoint {}", req.path),
            close,
        ),
    }
}

/// `GET /healthz`: 200 with the core's state, 503 while stopping.
fn health(core: &Core, now: u64, close: bool) -> HttpSlot {
    if core.stopping() || core.shared.shutdown.load(Ordering::Relaxed) {
        let body = b"{\"status\":\"stopping\"}\n".to_vec();
        return HttpSlot::Raw(503, "application/json", body, close);
    }
    let body = format!(
        "{{\"status\":\"ok\",\"core\":{},\"cores\":{},\"tickets_remaining\":{}}}\n",
        core.id,
        core.shared.cores,
        core.engine.borrow().remaining_at(now)
    );
    HttpSlot::Raw(200, "application/json", body.into_bytes(), close)
}

/// The answer an HTTP request waits for, if it waits for one.
fn http_head(s: &mut HttpSlot) -> Option<&mut Slot> {
    match s {
        HttpSlot::Op(slot, _) => Some(slot),
        _ => None,
    }
}

/// An HTTP connection's loop, until it closes (as [`binary_conn`]).
async fn http_conn<S: Input + AsyncWrite + Unpin>(
    core: &Rc<Core>,
    stream: &mut S,
    id: u64,
) -> Option<bool> {
    let mut decoder = HttpDecoder::new();
    let mut cache: AuthCache = None;
    let mut out = BytesMut::new();
    let mut tags = TagQueue::default();
    let mut slots: VecDeque<HttpSlot> = VecDeque::new();
    let mut close = false;
    let mut peer_closed = false;
    // Whole requests may be waiting in the decoder (a read brought more than PENDING_MAX).
    let mut backlog = false;
    loop {
        if !answer_ready(
            core,
            stream,
            &mut slots,
            encode_http_slot,
            &mut out,
            &mut tags,
        )
        .await
        {
            return None;
        }
        let ends = Ends { core, id, close };
        let wake = next_event(
            stream,
            decoder.input(),
            &mut slots,
            http_head,
            ends,
            backlog,
            None,
        )
        .await;
        match step(wake, &mut close, &mut peer_closed) {
            Step::Decode => backlog = false,
            Step::Again => continue,
            Step::End(ending) => return ending,
        }
        // One clock read per read: every request of a pipelined batch arrived at once.
        let now = now_ms();
        let mut started = 0usize;
        loop {
            if slots.len() >= PENDING_MAX {
                backlog = true;
                break;
            }
            match decoder.next_request() {
                Ok(Some((req, span))) => {
                    let slot = http_request(core, &req, &mut cache, now);
                    decoder.consume(span);
                    let last = matches!(
                        slot,
                        HttpSlot::Op(_, true) | HttpSlot::Raw(.., true) | HttpSlot::Fail(.., true)
                    );
                    slots.push_back(slot);
                    started += 1;
                    if started % REQUESTS_PER_YIELD == 0 {
                        // Let woken tasks (the commit loop with a finished sync, other
                        // connections) run between slices of a large pipelined read.
                        futures_lite::future::yield_now().await;
                    }
                    if last {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let status = e.status();
                    let code = if status == 413 || status == 431 {
                        ErrorCode::TooLarge
                    } else {
                        ErrorCode::Malformed
                    };
                    // The error body of every other answer, with the HTTP status beside it.
                    let body = format!(
                        "{{\"error\":\"{}\",\"code\":{},\"backoff_ms\":0,\"status\":{status},\"message\":{}}}\n",
                        code.name(),
                        code as u16,
                        serde_json::Value::String(e.to_string())
                    );
                    core.metrics().error(code);
                    slots.push_back(HttpSlot::Raw(
                        status,
                        "application/json",
                        body.into_bytes(),
                        true,
                    ));
                    close = true;
                    break;
                }
            }
        }
        decoder.release_if_empty();
        core.flush();
        core.wake_commit();
    }
}

/// Encodes an HTTP request's answer if it is there; false while it is not.
fn encode_http_slot(
    core: &Core,
    slot: &mut HttpSlot,
    out: &mut BytesMut,
    tags: &mut TagQueue,
) -> bool {
    match slot {
        HttpSlot::Op(slot, close) => {
            let Some(result) = slot.try_take() else {
                return false;
            };
            if let OpResult::Error { code, .. } = result {
                core.metrics().error(code);
            }
            encode_http(&result, "", *close, out, tags);
        }
        HttpSlot::Raw(status, content_type, body, close) => {
            encode_response(*status, content_type, &[], body, *close, out)
        }
        HttpSlot::Fail(code, message, close) => {
            core.metrics().error(*code);
            encode_http(&OpResult::error(*code), message, *close, out, tags);
        }
    }
    true
}

/// Answers, in request order, every request at the head of `slots` whose answer is there, with
/// one write. False when the write failed (the connection is gone).
async fn answer_ready<S: AsyncWrite + Unpin, T>(
    core: &Core,
    stream: &mut S,
    slots: &mut VecDeque<T>,
    encode: fn(&Core, &mut T, &mut BytesMut, &mut TagQueue) -> bool,
    out: &mut BytesMut,
    tags: &mut TagQueue,
) -> bool {
    while let Some(front) = slots.front_mut() {
        if !encode(core, front, out, tags) {
            break;
        }
        slots.pop_front();
    }
    if !tags.is_empty() {
        // The shake tokens of everything answered at once are signed together.
        core.token_keys.sign_queued(tags, out);
    }
    if !out.is_empty() {
        if stream.write_all(out).await.is_err() {
            return false;
        }
        out.clear();
    }
    true
}

/// What a connection acts on next.
enum Wake {
    /// Input arrived (appended to the decoder's buffer), or requests wait in the decoder.
    Read,
    /// The answer at the head of the pipeline arrived.
    Answer,
    /// The watched stream grew to this seq: write a PUSH.
    Push(u64),
    /// The server is stopping: read no more, answer what was started, then close.
    Stop,
    /// The peer closed its side: answer what was started, then close.
    Eof,
    /// The connection is closing and everything it started is answered.
    Done,
    /// Reading failed (the peer reset the connection): nothing more can be written.
    Failed,
}

/// What a wake-up means for a connection's loop (the PUSH aside, which only the binary
/// protocol has).
enum Step {
    /// Decode and start the requests that arrived.
    Decode,
    /// Write what is answered and wait again.
    Again,
    /// The loop is over: `Some(peer_closed)` to close gracefully, `None` when it failed.
    End(Option<bool>),
}

fn step(wake: Wake, close: &mut bool, peer_closed: &mut bool) -> Step {
    match wake {
        Wake::Read => Step::Decode,
        Wake::Answer | Wake::Push(_) => Step::Again,
        Wake::Stop => {
            *close = true;
            Step::Again
        }
        Wake::Eof => {
            (*close, *peer_closed) = (true, true);
            Step::Again
        }
        Wake::Done => Step::End(Some(*peer_closed)),
        Wake::Failed => Step::End(None),
    }
}

/// What ends a connection's reading: the peer, the server's stop (the core's table of
/// connections), or the connection itself (`close`: a request asked to close, or a framing
/// error that cannot be skipped).
#[derive(Clone, Copy)]
struct Ends<'a> {
    core: &'a Core,
    id: u64,
    close: bool,
}

/// Waits for input (while reading) or for the answer at the head of the pipeline, whichever
/// comes first: a connection keeps reading and starting requests while earlier ones wait for
/// their group commit, so a client's next requests join the next batch instead of waiting for
/// the answers before them to be written. Input is appended to `into` only when the read
/// completes, so dropping the read for an answer (or for the server's stop) loses nothing.
/// The connection reads while it is not closing and has fewer than `PENDING_MAX` requests in
/// flight; requests already in the decoder (`backlog`) come before a new read.
async fn next_event<S: Input, T>(
    stream: &mut S,
    into: &mut BytesMut,
    slots: &mut VecDeque<T>,
    head: fn(&mut T) -> Option<&mut Slot>,
    ends: Ends<'_>,
    backlog: bool,
    watch: Option<&Watch>,
) -> Wake {
    let reading = !ends.close && slots.len() < PENDING_MAX;
    if reading && backlog {
        return Wake::Read;
    }
    if let Some(w) = watch {
        if ends.close {
            // A closing connection gets no more pushes.
            return Box::pin(next_event(stream, into, slots, head, ends, false, None)).await;
        }
        return futures_lite::future::or(
            async { Wake::Push(std::future::poll_fn(|cx| w.poll_push(cx)).await) },
            Box::pin(next_event(stream, into, slots, head, ends, false, None)),
        )
        .await;
    }
    let head = slots.front_mut().and_then(head);
    // A read, or the server's stop, whichever comes first.
    let read = async {
        futures_lite::future::or(
            async {
                match std::future::poll_fn(|cx| stream.poll_input(cx, into)).await {
                    Ok(0) => Wake::Eof,
                    Ok(_) => Wake::Read,
                    Err(_) => Wake::Failed,
                }
            },
            async {
                std::future::poll_fn(|cx| ends.core.conns.poll_stop(ends.id, cx)).await;
                Wake::Stop
            },
        )
        .await
    };
    match (reading, head) {
        (true, None) => read.await,
        (true, Some(slot)) => {
            futures_lite::future::or(
                async {
                    slot.ready().await;
                    Wake::Answer
                },
                read,
            )
            .await
        }
        (false, Some(slot)) => {
            slot.ready().await;
            Wake::Answer
        }
        (false, None) => Wake::Done,
    }
}
