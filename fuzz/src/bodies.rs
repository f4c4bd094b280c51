//! The fuzz targets' bodies: one function per decoder of outside bytes, each taking any bytes.
//! A body must never panic, hang or grow memory without bound; where a decoder has an inverse
//! the body checks the round trip too. The libFuzzer targets (fuzz_targets/) call these, and
//! the main crate's tests/fuzz_corpus.rs replays the committed corpus through them (this file
//! is included there by path, so it names only `hongbao` and its dependencies).

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use hongbao::im::cold::ColdRef;
use hongbao::im::ImRecovery;
use hongbao::ledger::{ShardLedger, KIND_CLAIM, KIND_RESERVATION};
use hongbao::store::record::{encode, RECORD_PAYLOAD_MAX};
use hongbao::store::segment::{scan, SegmentHeader, SEGMENT_HEADER_BYTES};
use hongbao::ticket::keyring::{KeyEntry, Keyring};
use hongbao::ticket::record::{TicketRecord, RECORD_BYTES};
use hongbao::token::{Auth, Shake, TokenKeys};
use hongbao::wire::frame::{FrameDecoder, FRAME_BYTES_MAX};
use hongbao::wire::http::{HttpDecoder, BODY_BYTES_MAX, HEAD_BYTES_MAX};
use hongbao::wire::request::{decode_binary, decode_http, Request, UserOp};
use zerocopy::{FromBytes, IntoBytes};

/// Splits `data` into the chunks a socket might deliver: the first byte picks the chunk size.
fn chunks(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (usize::from(b % 64) * 37 + 1, rest),
        None => (1, data),
    }
}

/// A binary connection's input: frames decoded from arbitrary stream chunks, each frame's op
/// and payload decoded into a request; a SEND re-encoded decodes to the same request.
pub fn frame(data: &[u8]) {
    let (size, stream) = chunks(data);
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(size) {
        decoder.extend(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= FRAME_BYTES_MAX);
                    request(f.op, &f.payload);
                }
                Ok(None) => break,
                Err(e) if e.recoverable() => continue,
                Err(_) => return,
            }
        }
        // An incomplete frame is at most one frame, plus what one read added.
        assert!(decoder.buffered() <= FRAME_BYTES_MAX + size);
    }
}

fn request(op: u8, payload: &Bytes) {
    let decoded = decode_binary(op, payload);
    if let Ok(Request::User(UserOp::Send(s))) = &decoded.request {
        let bytes = Bytes::from(hongbao::wire::im::encode_send(
            s.appinfo, s.to, s.class, &s.body,
        ));
        let again = decode_binary(op, &bytes).request;
        assert_eq!(again.as_ref().ok(), decoded.request.as_ref().ok());
    }
}

/// An HTTP connection's input: requests decoded from arbitrary stream chunks, each routed and
/// its query and body decoded.
pub fn http(data: &[u8]) {
    let (size, stream) = chunks(data);
    let mut decoder = HttpDecoder::new();
    for chunk in stream.chunks(size) {
        decoder.extend(chunk);
        loop {
            let span = match decoder.next_request() {
                Ok(Some((req, span))) => {
                    assert!(span > 0 && span <= decoder.buffered());
                    assert!(req.body.len() <= BODY_BYTES_MAX);
                    let _ = decode_http(&req);
                    span
                }
                Ok(None) => break,
                Err(_) => return,
            };
            decoder.consume(span);
        }
        assert!(decoder.buffered() <= HEAD_BYTES_MAX + BODY_BYTES_MAX + size);
    }
}

/// One op's payload, as the server decodes a request and as a client decodes a reply (the
/// load generator and the reference client read what a server sends).
pub fn payloads(data: &[u8]) {
    let Some((&op, payload)) = data.split_first() else {
        return;
    };
    request(op, &Bytes::copy_from_slice(payload));
    let _ = hongbao::wire::ops::decode_reply(op, payload);
    let _ = hongbao::wire::im::decode_reply(op, payload);
    if let Ok(text) = std::str::from_utf8(payload) {
        if let Some(appinfo) = hongbao::wire::im::appinfo_from_hex(text) {
            let hex = hongbao::wire::im::appinfo_hex(appinfo);
            assert_eq!(hongbao::wire::im::appinfo_from_hex(&hex), Some(appinfo));
        }
    }
}

thread_local! {
    /// Token keys of two slots (made once per thread: key setup is not what is fuzzed).
    static TOKEN_KEYS: TokenKeys =
        TokenKeys::new(&[(1, [0x11; 16]), (2, [0x22; 16])], 2).expect("slot 2 has a key");
}

/// A keyring of two ticket keys (made once).
fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(make_keyring)
}

fn make_keyring() -> Keyring {
    let entries = vec![
        KeyEntry {
            key_id: 1,
            shard_ordinal: 0,
            key: [0x33; 16],
        },
        KeyEntry {
            key_id: 2,
            shard_ordinal: 1,
            key: [0x44; 16],
        },
    ];
    Keyring::new([0; 32], 7, entries).expect("two keys")
}

/// Auth and shake tokens as bytes and hex; a shake token signed from the input verifies, and
/// its ticket goes through the open path's checks.
pub fn tokens(data: &[u8]) {
    TOKEN_KEYS.with(|keys| tokens_under(keys, data));
}

fn tokens_under(keys: &TokenKeys, data: &[u8]) {
    let now = 1_800_000_000;
    let _ = Auth::decode(data, keys, now);
    let _ = Auth::decode_hex(data, keys, now);
    let _ = Shake::decode(data, keys);
    if data.len() < 14 + RECORD_BYTES {
        return;
    }
    let ticket = TicketRecord::read_from_bytes(&data[14..14 + RECORD_BYTES]).expect("26 bytes");
    let shake = Shake {
        uid: u64::from_le_bytes(data[..8].try_into().expect("8 bytes")),
        issuing_core: u16::from_le_bytes([data[8], data[9]]),
        issued_unix: u32::from_le_bytes(data[10..14].try_into().expect("4 bytes")),
        ticket,
    };
    let token = shake.encode(keys);
    assert_eq!(Shake::decode(&token, keys), Ok(shake));
    let mut forged = token;
    forged[data.len() % token.len()] ^= 1 << (data[0] % 8);
    assert!(Shake::decode(&forged, keys).is_err());
    let _ = shake.ticket.open(keyring());
}

/// A log segment: the input scanned as a whole segment file, then its bytes read as records
/// (kind, stream, seq, payload length, payload) written into a well-formed segment, scanned,
/// and replayed into two shard ledgers and the IM recovery, which is then finished, as a
/// server's start-up does.
pub fn recovery(data: &[u8]) {
    let mut raw = Vec::new();
    let _ = scan(0, data, |_, v| {
        raw.push((v.kind, v.stream, v.seq, v.payload.len()))
    });

    let mut segment = SegmentHeader::new(0, 0, 0).as_bytes().to_vec();
    assert_eq!(segment.len(), SEGMENT_HEADER_BYTES);
    let mut rest = data;
    let mut written = 0;
    while let Some((kind, stream, seq, payload, next)) = next_record(rest) {
        encode(0, kind, stream, seq, payload, &mut segment);
        written += 1;
        rest = next;
    }
    let mut ledgers = [ShardLedger::new(0, 1 << 12), ShardLedger::new(1, 1 << 12)];
    let mut im = ImRecovery::new();
    let mut seen = 0;
    let mut failed = false;
    let scanned = scan(0, &segment, |_, v| {
        seen += 1;
        if failed {
            return;
        }
        if ImRecovery::is_im(v.kind) {
            failed = im
                .replay(v.kind, v.stream, v.seq, v.payload, ColdRef::NONE)
                .is_err();
        } else if v.kind == KIND_CLAIM || v.kind == KIND_RESERVATION {
            for l in &mut ledgers {
                failed |= l.replay(v.kind, v.payload).is_err();
            }
        }
    });
    assert!(scanned.is_ok(), "a segment of whole records scans");
    assert_eq!(seen, written, "every record written is read back");
    if !failed {
        let _ = im.finish(2, 1_800_000_000_000, 0);
    }
}

/// One record of the input: a kind byte (0 is read as 1; with the top bit set, stream and seq
/// follow as u64 and the payload length as u16, else one byte each), then the payload.
#[allow(clippy::type_complexity)]
fn next_record(data: &[u8]) -> Option<(u8, u64, u64, &[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    let kind = (first & 0x7f).max(1);
    let (stream, seq, len, rest) = if first & 0x80 != 0 {
        let head = rest.get(..18)?;
        let stream = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let len = usize::from(u16::from_le_bytes([head[16], head[17]]));
        (stream, seq, len, &rest[18..])
    } else {
        let head = rest.get(..3)?;
        (
            u64::from(head[0]),
            u64::from(head[1]),
            usize::from(head[2]),
            &rest[3..],
        )
    };
    let len = len.min(rest.len()).min(RECORD_PAYLOAD_MAX);
    Some((kind, stream, seq, &rest[..len], &rest[len..]))
}

/// A ticket shard file: its header checked against the input's length, then every whole
/// record opened under a keyring. Also the input as a keyring file.
pub fn shard(data: &[u8]) {
    let path = Path::new("fuzz.shard");
    if let Ok(header) = hongbao::ticket::shard::check_header(path, data, data.len() as u64) {
        let body = &data[hongbao::ticket::shard::HEADER_BYTES..];
        assert_eq!(
            body.len() as u64,
            header.record_count.get() * RECORD_BYTES as u64
        );
    }
    let keyring = keyring();
    let body = data
        .get(hongbao::ticket::shard::HEADER_BYTES..)
        .unwrap_or(data);
    for r in body.chunks_exact(RECORD_BYTES).take(4096) {
        let record = TicketRecord::read_from_bytes(r).expect("26 bytes");
        let _ = record.open(keyring);
    }
    let _ = Keyring::from_bytes(Path::new("fuzz.keyring"), data);
}

/// A plan file's text.
pub fn plan(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hongbao::plan::Plan::from_toml(text);
    }
}

/// A key lists file's text.
pub fn key_lists(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hongbao::ticket::lists::KeyLists::parse(text);
    }
}

/// A serve settings file's text (parsed and resolved), or a token key file's.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = hongbao::serve::config::ConfigFile::from_toml(text) {
            let _ = file.resolve();
        }
        let _ = hongbao::serve::keys::parse_key_file(text);
    }
}

/// A ticket set's manifest (JSON) or batch config (TOML) text.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hongbao::manifest::Manifest::from_json(text);
        let _ = hongbao::manifest::BatchConfig::from_toml(text);
    }
}

/// A big-envelope list file (docs/formats/big.md): decodes or refuses; what decodes encodes
/// back to the same bytes.
pub fn big(data: &[u8]) {
    if let Ok(list) = hongbao::big::BigList::from_bytes(data) {
        assert_eq!(
            list.to_bytes(),
            data,
            "a decoded list re-encodes to its bytes"
        );
    }
}

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Body)] = &[
    ("frame", frame),
    ("http", http),
    ("payloads", payloads),
    ("tokens", tokens),
    ("recovery", recovery),
    ("shard", shard),
    ("plan", plan),
    ("key_lists", key_lists),
    ("config", config),
    ("manifest", manifest),
    ("big", big),
];
