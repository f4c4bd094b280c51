//! Operations of the client protocols (docs/PROTOCOL.md): op codes, error codes, and the
//! payloads of requests and replies, for the binary protocol (fixed little-endian layouts) and
//! for HTTP (small JSON bodies). Results are protocol-neutral ([`OpResult`]) so a result made on
//! one core can be encoded by the connection's core. Sans-IO.

use bytes::BytesMut;

use super::frame::encode_frame;
use super::http::encode_response_parts;
use super::im::{error_code as im_error_code, ImAnswer, ImDecoded};
use crate::im::{ImError, ImReply};
use crate::token::{TagQueue, TokenBody, SHAKE_BODY_BYTES, SHAKE_TOKEN_BYTES};

pub const OP_HELLO: u8 = 0x01;
pub const OP_SHAKE: u8 = 0x02;
pub const OP_OPEN: u8 = 0x03;
pub const OP_PING: u8 = 0x04;
/// A reply's op is the request's op with this bit set.
pub const OP_REPLY: u8 = 0x80;
/// The reply op of a refused request (any op).
pub const OP_ERROR: u8 = 0xFF;
/// Largest PING payload echoed.
pub const PING_BYTES_MAX: usize = 1024;

/// Why a request was refused: the code is stable and documented; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request's payload does not have the op's layout.
    Malformed = 1,
    /// Op code (or HTTP path) not known.
    UnknownOp = 2,
    /// Frame version not spoken by this server.
    Version = 3,
    /// Frame or HTTP request beyond the size limits.
    TooLarge = 4,
    /// No valid auth token (binary: no HELLO yet; HTTP: no Authorization header).
    Unauthenticated = 10,
    /// The auth token is malformed, forged or signed by an unknown key.
    AuthInvalid = 11,
    /// The auth token has expired.
    AuthExpired = 12,
    /// The shake token is malformed, forged or altered.
    TokenInvalid = 20,
    /// The shake token was issued to another user.
    WrongUser = 21,
    /// The shake token names a shard this server does not hold.
    UnknownShard = 22,
    /// The ticket inside the token does not open under the keyring.
    TicketInvalid = 23,
    /// The ticket's key is refused by the key allow/deny lists.
    KeyDenied = 24,
    /// The envelope was opened before (exactly-once).
    AlreadyClaimed = 25,
    /// The envelope was never handed out.
    NotIssued = 26,
    /// Overloaded (queue, log backlog): retry after the back-off hint.
    Busy = 30,
    /// The server is stopping; reconnect elsewhere or later.
    ShuttingDown = 31,
    /// Stored data the answer needs could not be read back (IM: a cold stream entry, R24);
    /// the server's log says which. Retryable: nothing was changed.
    Unreadable = 32,
    /// IM: the group does not exist.
    NoSuchGroup = 40,
    /// IM: a group with this id exists already.
    GroupExists = 41,
    /// IM: the user is not a member of the group.
    NotMember = 42,
    /// IM: only the group's owner may do this (or the owner cannot leave).
    NotOwner = 43,
    /// IM: the group would exceed its member limit.
    GroupFull = 44,
    /// IM: the appinfo was used before for a different message.
    AppinfoReused = 45,
    /// IM: control messages are not delivered to huge groups (R22).
    ControlDropped = 46,
    /// IM: no message of the user's at that seq (receipts, withdrawals, read lists).
    NoSuchMessage = 47,
    /// IM: the message is older than the withdrawal window (24 h).
    WithdrawExpired = 48,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Version => "version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::AuthInvalid => "auth_invalid",
            ErrorCode::AuthExpired => "auth_expired",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::WrongUser => "wrong_user",
            ErrorCode::UnknownShard => "unknown_shard",
            ErrorCode::TicketInvalid => "ticket_invalid",
            ErrorCode::KeyDenied => "key_denied",
            ErrorCode::AlreadyClaimed => "already_claimed",
            ErrorCode::NotIssued => "not_issued",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unreadable => "unreadable",
            ErrorCode::NoSuchGroup => "no_such_group",
            ErrorCode::GroupExists => "group_exists",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::AppinfoReused => "appinfo_reused",
            ErrorCode::ControlDropped => "control_dropped",
            ErrorCode::NoSuchMessage => "no_such_message",
            ErrorCode::WithdrawExpired => "withdraw_expired",
        }
    }

    /// The HTTP status used for this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Malformed | ErrorCode::Version | ErrorCode::TokenInvalid => 400,
            ErrorCode::TicketInvalid | ErrorCode::NotIssued => 400,
            ErrorCode::UnknownOp | ErrorCode::UnknownShard => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unauthenticated | ErrorCode::AuthInvalid | ErrorCode::AuthExpired => 401,
            ErrorCode::WrongUser | ErrorCode::KeyDenied => 403,
            ErrorCode::AlreadyClaimed => 409,
            ErrorCode::Busy | ErrorCode::ShuttingDown => 503,
            ErrorCode::Unreadable => 500,
            ErrorCode::NoSuchGroup => 404,
            ErrorCode::GroupExists | ErrorCode::AppinfoReused => 409,
            ErrorCode::NotMember | ErrorCode::NotOwner => 403,
            ErrorCode::GroupFull | ErrorCode::ControlDropped | ErrorCode::WithdrawExpired => 422,
            ErrorCode::NoSuchMessage => 404,
        }
    }

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ALL_ERRORS.iter().copied().find(|e| *e as u16 == code)
    }
}

pub const ALL_ERRORS: [ErrorCode; 26] = [
    ErrorCode::Malformed,
    ErrorCode::UnknownOp,
    ErrorCode::Version,
    ErrorCode::TooLarge,
    ErrorCode::Unauthenticated,
    ErrorCode::AuthInvalid,
    ErrorCode::AuthExpired,
    ErrorCode::TokenInvalid,
    ErrorCode::WrongUser,
    ErrorCode::UnknownShard,
    ErrorCode::TicketInvalid,
    ErrorCode::KeyDenied,
    ErrorCode::AlreadyClaimed,
    ErrorCode::NotIssued,
    ErrorCode::Busy,
    ErrorCode::ShuttingDown,
    ErrorCode::Unreadable,
    ErrorCode::NoSuchGroup,
    ErrorCode::GroupExists,
    ErrorCode::NotMember,
    ErrorCode::NotOwner,
    ErrorCode::GroupFull,
    ErrorCode::AppinfoReused,
    ErrorCode::ControlDropped,
    ErrorCode::NoSuchMessage,
    ErrorCode::WithdrawExpired,
];

/// What a shake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ShakeOutcome {
    Nothing = 0,
    Sponsor = 1,
    Envelope = 2,
    /// No slot is open now (before, between or after the event's slots).
    Closed = 3,
    /// Shook again sooner than the per-user minimum interval.
    TooSoon = 4,
    /// Won the per-user maximum already.
    Capped = 5,
}

impl ShakeOutcome {
    pub fn name(self) -> &'static str {
        match self {
            ShakeOutcome::Nothing => "nothing",
            ShakeOutcome::Sponsor => "sponsor",
            ShakeOutcome::Envelope => "envelope",
            ShakeOutcome::Closed => "closed",
            ShakeOutcome::TooSoon => "too_soon",
            ShakeOutcome::Capped => "capped",
        }
    }

    /// The start of a shake's JSON answer up to its back-off value, as one static piece.
    pub fn json_head(self) -> &'static str {
        macro_rules! head {
            ($name:literal) => {
                concat!("{\"outcome\":\"", $name, "\",\"backoff_ms\":")
            };
        }
        match self {
            ShakeOutcome::Nothing => head!("nothing"),
            ShakeOutcome::Sponsor => head!("sponsor"),
            ShakeOutcome::Envelope => head!("envelope"),
            ShakeOutcome::Closed => head!("closed"),
            ShakeOutcome::TooSoon => head!("too_soon"),
            ShakeOutcome::Capped => head!("capped"),
        }
    }

    /// Every outcome, in code order.
    pub const ALL: [ShakeOutcome; 6] = [
        ShakeOutcome::Nothing,
        ShakeOutcome::Sponsor,
        ShakeOutcome::Envelope,
        ShakeOutcome::Closed,
        ShakeOutcome::TooSoon,
        ShakeOutcome::Capped,
    ];

    pub fn from_u8(v: u8) -> Option<ShakeOutcome> {
        ShakeOutcome::ALL.into_iter().find(|o| *o as u8 == v)
    }
}

/// A shake's answer. On the server (`T` = [`TokenBody`]) the token is not signed yet: the
/// connection's core signs it as it writes the reply; as a client decodes it, the whole token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShakeReply<T = [u8; SHAKE_TOKEN_BYTES]> {
    pub outcome: ShakeOutcome,
    /// The client must wait at least this long before shaking again (R10).
    pub backoff_ms: u32,
    /// Present exactly when `outcome` is `Envelope`.
    pub token: Option<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReply {
    pub envelope_id: u64,
    pub amount_cents: u32,
    pub batch_id: u16,
    /// Unix seconds of the claim; 0 in a repeated answer (`again`).
    pub claimed_unix: u32,
    /// The envelope was claimed by this user before: this answers that claim again.
    pub again: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReply {
    pub uid: u64,
    pub expires_unix: u32,
    pub core: u16,
    pub cores: u16,
}

/// A finished operation, whichever core finished it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Hello(HelloReply),
    Shake(ShakeReply<TokenBody>),
    Open(OpenReply),
    Error { code: ErrorCode, backoff_ms: u32 },
    Im(ImAnswer),
}

impl OpResult {
    pub fn error(code: ErrorCode) -> OpResult {
        OpResult::Error {
            code,
            backoff_ms: 0,
        }
    }

    /// The result of an IM request (refusals become error results).
    pub fn im(reply: ImReply) -> OpResult {
        match reply {
            ImReply::Error(e) => OpResult::Error {
                code: im_error_code(e),
                backoff_ms: if e == ImError::Busy { 100 } else { 0 },
            },
            other => OpResult::Im(ImAnswer::Reply(other)),
        }
    }
}

/// Binary reply payload layouts (little-endian):
/// - HELLO reply (16 bytes): uid u64, expires_unix u32, core u16, cores u16.
/// - SHAKE reply (8 or 72 bytes): outcome u8, 3 reserved zero bytes, backoff_ms u32, then the
///   64-byte token when the outcome is `Envelope` (its tag is left zero and queued in `tags`:
///   the caller signs the queue into `out` before sending it).
/// - OPEN reply (20 bytes): envelope_id u64, amount_cents u32, batch_id u16, 2 reserved,
///   claimed_unix u32.
/// - ERROR (8 bytes + message): code u16, 2 reserved, backoff_ms u32, UTF-8 message.
pub fn encode_binary(
    op: u8,
    request_id: u64,
    result: &OpResult,
    message: &str,
    out: &mut BytesMut,
    tags: &mut TagQueue,
) {
    let mut payload = [0u8; 8 + SHAKE_TOKEN_BYTES];
    match result {
        OpResult::Hello(h) => {
            payload[..8].copy_from_slice(&h.uid.to_le_bytes());
            payload[8..12].copy_from_slice(&h.expires_unix.to_le_bytes());
            payload[12..14].copy_from_slice(&h.core.to_le_bytes());
            payload[14..16].copy_from_slice(&h.cores.to_le_bytes());
            encode_frame(op | OP_REPLY, 0, request_id, &payload[..16], out);
        }
        OpResult::Shake(s) => {
            payload[0] = s.outcome as u8;
            payload[4..8].copy_from_slice(&s.backoff_ms.to_le_bytes());
            let len = match &s.token {
                Some(t) => {
                    payload[8..8 + SHAKE_BODY_BYTES].copy_from_slice(t.bytes());
                    8 + SHAKE_TOKEN_BYTES
                }
                None => 8,
            };
            encode_frame(op | OP_REPLY, 0, request_id, &payload[..len], out);
            if let Some(t) = s.token {
                // The tag is the frame's last 16 bytes.
                tags.push(t, out.len() - (SHAKE_TOKEN_BYTES - SHAKE_BODY_BYTES), false);
            }
        }
        OpResult::Open(o) => {
            payload[..8].copy_from_slice(&o.envelope_id.to_le_bytes());
            payload[8..12].copy_from_slice(&o.amount_cents.to_le_bytes());
            payload[12..14].copy_from_slice(&o.batch_id.to_le_bytes());
            payload[14] = o.again as u8;
            payload[16..20].copy_from_slice(&o.claimed_unix.to_le_bytes());
            encode_frame(op | OP_REPLY, 0, request_id, &payload[..20], out);
        }
        OpResult::Error { code, backoff_ms } => {
            let message = if message.is_empty() {
                code.name()
            } else {
                message
            };
            let mut body = Vec::with_capacity(8 + message.len());
            body.extend_from_slice(&(*code as u16).to_le_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&backoff_ms.to_le_bytes());
            body.extend_from_slice(message.as_bytes());
            encode_frame(OP_ERROR, 0, request_id, &body, out);
        }
        OpResult::Im(answer) => super::im::encode_binary(op, request_id, answer, out),
    }
}

/// A decoded binary reply (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello(HelloReply),
    Shake(ShakeReply),
    Open(OpenReply),
    Pong(Vec<u8>),
    /// An IM reply, or a PUSH (request id 0).
    Im(ImDecoded),
    Error {
        code: u16,
        backoff_ms: u32,
        message: String,
    },
}

/// Decodes a reply frame's op and payload; `None` when it does not have a reply's layout.
pub fn decode_reply(op: u8, payload: &[u8]) -> Option<Reply> {
    let u16_at = |i: usize| u16::from_le_bytes([payload[i], payload[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
    match op {
        x if x == OP_HELLO | OP_REPLY && payload.len() == 16 => Some(Reply::Hello(HelloReply {
            uid: u64_at(0),
            expires_unix: u32_at(8),
            core: u16_at(12),
            cores: u16_at(14),
        })),
        x if x == OP_SHAKE | OP_REPLY && (payload.len() == 8 || payload.len() == 72) => {
            let outcome = ShakeOutcome::from_u8(payload[0])?;
            let token = (payload.len() == 72).then(|| payload[8..].try_into().unwrap());
            if token.is_some() != (outcome == ShakeOutcome::Envelope) {
                return None;
            }
            Some(Reply::Shake(ShakeReply {
                outcome,
                backoff_ms: u32_at(4),
                token,
            }))
        }
        x if x == OP_OPEN | OP_REPLY && payload.len() == 20 => Some(Reply::Open(OpenReply {
            envelope_id: u64_at(0),
            amount_cents: u32_at(8),
            batch_id: u16_at(12),
            claimed_unix: u32_at(16),
            again: payload[14] == 1,
        })),
        x if x == OP_PING | OP_REPLY => Some(Reply::Pong(payload.to_vec())),
        x if super::im::decode_reply(x, payload).is_some() => {
            super::im::decode_reply(x, payload).map(Reply::Im)
        }
        OP_ERROR if payload.len() >= 8 => Some(Reply::Error {
            code: u16_at(0),
            backoff_ms: u32_at(4),
            message: String::from_utf8_lossy(&payload[8..]).into_owned(),
        }),
        _ => None,
    }
}

/// HTTP bodies are small JSON objects; see docs/PROTOCOL.md.
///
/// A shake token's tag is left as 32 `0` characters and queued in `tags` (as for
/// [`encode_binary`]).
pub fn encode_http(
    result: &OpResult,
    message: &str,
    close: bool,
    out: &mut BytesMut,
    tags: &mut TagQueue,
) {
    // Bodies are assembled from static pieces and formatted numbers (no `fmt`, no temporary
    // buffer): this runs once per HTTP request.
    let (mut a, mut b, mut c, mut d) = (
        itoa::Buffer::new(),
        itoa::Buffer::new(),
        itoa::Buffer::new(),
        itoa::Buffer::new(),
    );
    const JSON: &str = "application/json";
    match result {
        OpResult::Hello(h) => {
            let parts: [&[u8]; 9] = [
                b"{\"uid\":",
                a.format(h.uid).as_bytes(),
                b",\"expires_unix\":",
                b.format(h.expires_unix).as_bytes(),
                b",\"core\":",
                c.format(h.core).as_bytes(),
                b",\"cores\":",
                d.format(h.cores).as_bytes(),
                b"}\n",
            ];
            encode_response_parts(200, JSON, &[], &parts, close, out);
        }
        OpResult::Shake(s) => {
            let head = s.outcome.json_head().as_bytes();
            let backoff = a.format(s.backoff_ms).as_bytes();
            match &s.token {
                Some(t) => {
                    let mut hex = [b'0'; 2 * SHAKE_TOKEN_BYTES];
                    hex::encode_to_slice(t.bytes(), &mut hex[..2 * SHAKE_BODY_BYTES])
                        .expect("sized");
                    const TAIL: &[u8] = b"\"}\n";
                    let parts: [&[u8]; 5] = [head, backoff, b",\"token\":\"", &hex, TAIL];
                    encode_response_parts(200, JSON, &[], &parts, close, out);
                    // The body is the response's end: the tag's hex is just before the tail.
                    let at = out.len() - TAIL.len() - 2 * (SHAKE_TOKEN_BYTES - SHAKE_BODY_BYTES);
                    tags.push(*t, at, true);
                }
                None => {
                    let parts: [&[u8]; 3] = [head, backoff, b"}\n"];
                    encode_response_parts(200, JSON, &[], &parts, close, out);
                }
            }
        }
        OpResult::Open(o) => {
            let parts: [&[u8]; 9] = [
                b"{\"envelope_id\":",
                a.format(o.envelope_id).as_bytes(),
                b",\"amount_cents\":",
                b.format(o.amount_cents).as_bytes(),
                b",\"batch_id\":",
                c.format(o.batch_id).as_bytes(),
                b",\"claimed_unix\":",
                d.format(o.claimed_unix).as_bytes(),
                if o.again {
                    b",\"again\":true}\n"
                } else {
                    b",\"again\":false}\n"
                },
            ];
            encode_response_parts(200, JSON, &[], &parts, close, out);
        }
        OpResult::Error { code, backoff_ms } => {
            let message = if message.is_empty() {
                code.name()
            } else {
                message
            };
            // Error paths may allocate: the message must be escaped as a JSON string.
            let quoted = serde_json::Value::String(message.to_string()).to_string();
            let parts: [&[u8]; 9] = [
                b"{\"error\":\"",
                code.name().as_bytes(),
                b"\",\"code\":",
                a.format(*code as u16).as_bytes(),
                b",\"backoff_ms\":",
                b.format(*backoff_ms).as_bytes(),
                b",\"message\":",
                quoted.as_bytes(),
                b"}\n",
            ];
            encode_response_parts(code.http_status(), JSON, &[], &parts, close, out);
        }
        OpResult::Im(answer) => {
            let body = super::im::json(answer);
            super::http::encode_response(200, JSON, &[], body.as_bytes(), close, out);
        }
    }
}

/// Appends a PONG frame echoing `payload`.
pub fn encode_pong(request_id: u64, payload: &[u8], out: &mut BytesMut) {
    encode_frame(OP_PING | OP_REPLY, 0, request_id, payload, out);
}

/// Appends a request frame (clients and tests).
pub fn encode_request(op: u8, request_id: u64, payload: &[u8], out: &mut BytesMut) {
    encode_frame(op, 0, request_id, payload, out);
}

/// Why a request is refused before it runs: the code the client is answered with and a
/// detail in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            code,
            detail: detail.into(),
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Malformed, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenKeys;
    use crate::wire::frame::FrameDecoder;
    use proptest::prelude::*;

    #[test]
    fn json_heads_match_outcome_names() {
        for o in ShakeOutcome::ALL {
            assert_eq!(
                o.json_head(),
                format!("{{\"outcome\":\"{}\",\"backoff_ms\":", o.name())
            );
        }
        // And a whole answer is valid JSON with the right fields.
        let mut out = BytesMut::new();
        let (keys, token) = token_body(7);
        let reply = OpResult::Shake(ShakeReply {
            outcome: ShakeOutcome::Envelope,
            backoff_ms: 250,
            token: Some(token),
        });
        let mut tags = TagQueue::default();
        encode_http(&reply, "", false, &mut out, &mut tags);
        assert_eq!(tags.len(), 1);
        keys.sign_queued(&mut tags, &mut out);
        assert!(tags.is_empty());
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["outcome"], "envelope");
        assert_eq!(v["backoff_ms"], 250);
        assert_eq!(v["token"], hex::encode(keys.sign(&token)));
    }

    /// A shake token body for `uid` and the keys that sign it.
    fn token_body(uid: u64) -> (TokenKeys, TokenBody) {
        let keys = TokenKeys::new(&[(4, [0x44; 16])], 4).unwrap();
        let ticket = crate::ticket::TicketRecord {
            key_id: 3u16.into(),
            envelope_id: uid.wrapping_mul(3).into(),
            sealed: [uid as u8; 16],
        };
        let shake = crate::token::Shake {
            uid,
            issuing_core: 1,
            issued_unix: 9,
            ticket,
        };
        (keys, shake.body(4))
    }

    /// Encodes, then signs the queued tags as the connection does before sending.
    fn roundtrip(op: u8, result: OpResult) -> Reply {
        let mut out = BytesMut::new();
        let mut tags = TagQueue::default();
        encode_binary(op, 42, &result, "", &mut out, &mut tags);
        token_body(0).0.sign_queued(&mut tags, &mut out);
        let mut d = FrameDecoder::new();
        d.extend(&out);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.request_id, 42);
        decode_reply(f.op, &f.payload).unwrap()
    }

    proptest! {
        #[test]
        fn binary_replies_roundtrip(uid: u64, exp: u32, core: u16, amount: u32, batch: u16, backoff: u32, again: bool, code_i in 0usize..ALL_ERRORS.len()) {
            let h = HelloReply { uid, expires_unix: exp, core, cores: core.wrapping_add(1) };
            prop_assert_eq!(roundtrip(OP_HELLO, OpResult::Hello(h)), Reply::Hello(h));
            let (keys, body) = token_body(uid);
            let s = ShakeReply { outcome: ShakeOutcome::Envelope, backoff_ms: backoff, token: Some(body) };
            let signed = ShakeReply { outcome: s.outcome, backoff_ms: backoff, token: Some(keys.sign(&body)) };
            prop_assert_eq!(roundtrip(OP_SHAKE, OpResult::Shake(s)), Reply::Shake(signed));
            let s = ShakeReply { outcome: ShakeOutcome::Sponsor, backoff_ms: backoff, token: None };
            let r = ShakeReply { outcome: s.outcome, backoff_ms: backoff, token: None };
            prop_assert_eq!(roundtrip(OP_SHAKE, OpResult::Shake(s)), Reply::Shake(r));
            let o = OpenReply { envelope_id: uid, amount_cents: amount, batch_id: batch, claimed_unix: exp, again };
            prop_assert_eq!(roundtrip(OP_OPEN, OpResult::Open(o)), Reply::Open(o));
            let code = ALL_ERRORS[code_i];
            match roundtrip(OP_OPEN, OpResult::Error { code, backoff_ms: backoff }) {
                Reply::Error { code: c, backoff_ms, message } => {
                    prop_assert_eq!(ErrorCode::from_u16(c), Some(code));
                    prop_assert_eq!(backoff_ms, backoff);
                    prop_assert_eq!(message, code.name());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn decode_reply_never_panics(op: u8, payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_reply(op, &payload);
        }
    }

    #[test]
    fn http_bodies_are_json() {
        let mut out = BytesMut::new();
        encode_http(
            &OpResult::Error {
                code: ErrorCode::AlreadyClaimed,
                backoff_ms: 0,
            },
            "envelope \"7\" is already claimed",
            false,
            &mut out,
            &mut TagQueue::default(),
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 "));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "already_claimed");
        assert_eq!(v["code"], 25);
        assert_eq!(v["message"], "envelope \"7\" is already claimed");
    }
}
