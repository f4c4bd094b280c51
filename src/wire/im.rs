//! The IM operations of the binary protocol (docs/PROTOCOL.md, "IM"): op codes, request
//! payload decoding, reply and PUSH encoding, and the client-side decoding of IM replies.
//! Fixed little-endian layouts; every length checked. Sans-IO; runs on the connection's core.

use bytes::BytesMut;

use super::frame::{encode_frame, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use super::ops::{ErrorCode, Refusal, OP_REPLY};
use crate::im::{
    Class, EntryKind, ImError, ImReply, MsgId, Page, Target, BODY_MAX, READ_LIST_PAGE,
};

pub const OP_SEND: u8 = 0x10;
pub const OP_SYNC: u8 = 0x11;
pub const OP_GROUP_CREATE: u8 = 0x12;
pub const OP_GROUP_ADD: u8 = 0x13;
pub const OP_GROUP_REMOVE: u8 = 0x14;
pub const OP_GROUP_MEMBERS: u8 = 0x15;
pub const OP_ACK_READ: u8 = 0x16;
pub const OP_WITHDRAW: u8 = 0x17;
pub const OP_READ_LIST: u8 = 0x18;
/// Server to client only, request id 0: the user's stream has new entries up to a seq.
pub const OP_PUSH: u8 = 0x40;

/// Fixed part of a SEND request.
pub const SEND_HEADER_BYTES: usize = 32;
/// Entries of a SYNC page when the request asks for 0.
pub const SYNC_LIMIT_DEFAULT: u32 = 100;
pub const SYNC_LIMIT_MAX: u32 = 1000;
/// Fixed part of a SYNC reply, and of each entry in it.
pub const SYNC_HEADER_BYTES: usize = 16;
pub const ENTRY_HEADER_BYTES: usize = 80;
/// Room for entries in one SYNC reply frame.
pub const SYNC_PAGE_BYTES: usize = FRAME_BYTES_MAX - FRAME_HEADER_BYTES - SYNC_HEADER_BYTES;
/// Members listed per GROUP_MEMBERS reply.
pub const MEMBERS_PAGE: usize = 8000;

/// The stable wire code of an IM refusal.
pub fn error_code(e: ImError) -> ErrorCode {
    match e {
        ImError::BodyTooLarge => ErrorCode::TooLarge,
        ImError::NoSuchGroup => ErrorCode::NoSuchGroup,
        ImError::GroupExists => ErrorCode::GroupExists,
        ImError::NotMember => ErrorCode::NotMember,
        ImError::NotOwner => ErrorCode::NotOwner,
        ImError::GroupFull => ErrorCode::GroupFull,
        ImError::AppinfoReused => ErrorCode::AppinfoReused,
        ImError::ControlDropped => ErrorCode::ControlDropped,
        ImError::NoSuchMessage => ErrorCode::NoSuchMessage,
        ImError::WithdrawExpired => ErrorCode::WithdrawExpired,
        ImError::Busy => ErrorCode::Busy,
    }
}

/// A finished IM request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImAnswer {
    Reply(ImReply),
    Page(Box<Page>),
    Members {
        gid: u64,
        version: u64,
        total: u32,
        members: Vec<u64>,
    },
}

/// Fixed part of a READ_LIST reply.
pub const READERS_HEADER_BYTES: usize = 24;
const _: () = assert!(
    FRAME_HEADER_BYTES + READERS_HEADER_BYTES + 8 * READ_LIST_PAGE <= FRAME_BYTES_MAX,
    "a read-list page fits one frame"
);

/// ACK_READ and WITHDRAW carry one seq of the user's own stream.
pub fn decode_seq(p: &[u8]) -> Result<u64, Refusal> {
    match <[u8; 8]>::try_from(p) {
        Ok(b) => Ok(u64::from_le_bytes(b)),
        Err(_) => Err(Refusal::malformed(format!(
            "this op carries a seq (8 bytes), not {} bytes",
            p.len()
        ))),
    }
}

/// READ_LIST carries a seq of the user's own stream and optionally a start index (u64; 0
/// when absent). The index is clamped to u32 (no list is that long).
pub fn decode_read_list(p: &[u8]) -> Result<(u64, u32), Refusal> {
    match p.len() {
        8 => Ok((u64_at(p, 0), 0)),
        16 => Ok((u64_at(p, 0), u64_at(p, 8).min(u64::from(u32::MAX)) as u32)),
        n => Err(Refusal::malformed(format!(
            "READ_LIST carries a seq and optionally a start index (8 or 16 bytes), not {n} bytes"
        ))),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A SEND request: appinfo (16 bytes), target kind u8 (1 user, 2 group), class u8 (1 chat,
/// 2 api, 3 app, 4 control), 6 zero bytes, target id u64, then the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOp {
    pub appinfo: u128,
    pub to: Target,
    pub class: Class,
    pub body: Box<[u8]>,
}

pub fn decode_send(p: &[u8]) -> Result<SendOp, Refusal> {
    if p.len() < SEND_HEADER_BYTES {
        return Err(Refusal::malformed(format!(
            "SEND needs at least {SEND_HEADER_BYTES} bytes, got {}",
            p.len()
        )));
    }
    if p.len() - SEND_HEADER_BYTES > BODY_MAX {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("message body over {BODY_MAX} bytes"),
        ));
    }
    let appinfo = u128::from_le_bytes(p[..16].try_into().expect("16 bytes"));
    let to = Target::from_parts(p[16], u64_at(p, 24)).ok_or_else(|| {
        Refusal::malformed(format!(
            "target kind {} is not 1 (user) or 2 (group)",
            p[16]
        ))
    })?;
    let class = Class::from_u8(p[17])
        .ok_or_else(|| Refusal::malformed(format!("class {} is not 1..=4", p[17])))?;
    Ok(SendOp {
        appinfo,
        to,
        class,
        body: p[SEND_HEADER_BYTES..].into(),
    })
}

/// Client side: a SEND payload.
pub fn encode_send(appinfo: u128, to: Target, class: Class, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(SEND_HEADER_BYTES + body.len());
    p.extend_from_slice(&appinfo.to_le_bytes());
    p.push(to.code());
    p.push(class as u8);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&to.id().to_le_bytes());
    p.extend_from_slice(body);
    p
}

/// A SYNC request: after u64 (entries with greater seqs), limit u32 (0: default), 4 zero bytes.
pub fn decode_sync(p: &[u8]) -> Result<(u64, u32), Refusal> {
    if p.len() != 16 {
        return Err(Refusal::malformed(format!(
            "SYNC carries 16 bytes, not {}",
            p.len()
        )));
    }
    let limit = match u32_at(p, 8) {
        0 => SYNC_LIMIT_DEFAULT,
        n => n.min(SYNC_LIMIT_MAX),
    };
    Ok((u64_at(p, 0), limit))
}

/// The HTTP form of an appinfo: the 16 bytes of the binary form (little-endian u128), in
/// order, as hex. Fewer than 32 digits are the first bytes, the rest zero (an odd count gets
/// a leading 0): `appinfo=1` is the bytes 01 00 .. 00, the same key as the binary 1.
pub fn appinfo_from_hex(text: &str) -> Option<u128> {
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let even = if text.len() % 2 == 1 {
        format!("0{text}")
    } else {
        text.to_string()
    };
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(&even, &mut bytes[..even.len() / 2]).ok()?;
    Some(u128::from_le_bytes(bytes))
}

/// The 32 hex digits of an appinfo's 16 bytes, in order (as [`appinfo_from_hex`] reads them).
pub fn appinfo_hex(appinfo: u128) -> String {
    hex::encode(appinfo.to_le_bytes())
}

pub fn encode_sync(after: u64, limit: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&after.to_le_bytes());
    p.extend_from_slice(&limit.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// GROUP_CREATE / GROUP_ADD / GROUP_REMOVE: gid u64, then the uids (u64 each).
/// GROUP_MEMBERS: gid u64, then optionally `from` u32 and 4 zero bytes (members from index).
pub fn decode_group(p: &[u8], op: u8) -> Result<(u64, Vec<u64>), Refusal> {
    if p.len() < 8 || (p.len() - 8) % 8 != 0 {
        return Err(Refusal::malformed(format!(
            "group ops carry a gid and whole uids (8 + 8n bytes), not {} bytes",
            p.len()
        )));
    }
    let gid = u64_at(p, 0);
    let uids: Vec<u64> = p[8..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if op == OP_GROUP_MEMBERS && uids.len() > 1 {
        return Err(Refusal::malformed(
            "GROUP_MEMBERS carries a gid and at most a start index",
        ));
    }
    Ok((gid, uids))
}

pub fn encode_group(gid: u64, uids: &[u64]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 8 * uids.len());
    p.extend_from_slice(&gid.to_le_bytes());
    for u in uids {
        p.extend_from_slice(&u.to_le_bytes());
    }
    p
}

/// Appends the binary reply frame of an IM answer (errors travel as `OpResult::Error`).
pub fn encode_binary(op: u8, request_id: u64, answer: &ImAnswer, out: &mut BytesMut) {
    let mut p = Vec::with_capacity(64);
    match answer {
        ImAnswer::Reply(ImReply::Sent {
            seq,
            sent_ms,
            duplicate,
        }) => {
            p.extend_from_slice(&seq.to_le_bytes());
            p.extend_from_slice(&sent_ms.to_le_bytes());
            p.push(u8::from(*duplicate));
            p.extend_from_slice(&[0; 7]);
        }
        ImAnswer::Reply(ImReply::Accepted { accepted_ms }) => {
            // seq 0 (not stored yet), the acceptance time, duplicate 0, accepted 1.
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(&accepted_ms.to_le_bytes());
            p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        }
        ImAnswer::Reply(ImReply::Group {
            gid,
            version,
            members,
        }) => {
            p.extend_from_slice(&gid.to_le_bytes());
            p.extend_from_slice(&version.to_le_bytes());
            p.extend_from_slice(&members.to_le_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        ImAnswer::Reply(ImReply::Error(_)) => unreachable!("errors are OpResult::Error"),
        ImAnswer::Page(page) => {
            p.reserve(page_bytes(page));
            p.extend_from_slice(&page.max_seq.to_le_bytes());
            p.extend_from_slice(&(page.entries.len() as u32).to_le_bytes());
            p.extend_from_slice(&[0; 4]);
            for (seq, m) in &page.entries {
                p.extend_from_slice(&seq.to_le_bytes());
                p.extend_from_slice(&m.id.sender.to_le_bytes());
                p.extend_from_slice(&m.id.seq.to_le_bytes());
                p.extend_from_slice(&m.sent_ms.to_le_bytes());
                p.extend_from_slice(&m.appinfo.to_le_bytes());
                p.extend_from_slice(&m.to.id().to_le_bytes());
                p.push(m.to.code());
                p.push(m.class as u8);
                p.push(m.kind as u8);
                p.push(0);
                p.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
                let refer = m.refer.unwrap_or(MsgId { sender: 0, seq: 0 });
                p.extend_from_slice(&refer.sender.to_le_bytes());
                p.extend_from_slice(&refer.seq.to_le_bytes());
                p.extend_from_slice(&m.body);
            }
        }
        ImAnswer::Members {
            gid,
            version,
            total,
            members,
        } => {
            p.extend_from_slice(&gid.to_le_bytes());
            p.extend_from_slice(&version.to_le_bytes());
            p.extend_from_slice(&total.to_le_bytes());
            p.extend_from_slice(&(members.len() as u32).to_le_bytes());
            for m in members {
                p.extend_from_slice(&m.to_le_bytes());
            }
        }
        ImAnswer::Reply(ImReply::Readers {
            seq,
            read,
            unread,
            from,
            uids,
        }) => {
            p.reserve(READERS_HEADER_BYTES + 8 * uids.len());
            p.extend_from_slice(&seq.to_le_bytes());
            p.extend_from_slice(&read.to_le_bytes());
            p.extend_from_slice(&unread.to_le_bytes());
            p.extend_from_slice(&from.to_le_bytes());
            p.extend_from_slice(&(uids.len() as u32).to_le_bytes());
            for r in uids {
                p.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
    encode_frame(op | OP_REPLY, 0, request_id, &p, out);
}

/// Bytes of a SYNC reply payload.
pub fn page_bytes(page: &Page) -> usize {
    SYNC_HEADER_BYTES
        + page
            .entries
            .iter()
            .map(|(_, m)| ENTRY_HEADER_BYTES + m.body.len())
            .sum::<usize>()
}

/// Cuts a page so its reply fits one frame (at least one entry always fits: bodies are
/// at most 16 KiB).
pub fn fit_page(page: &mut Page) {
    let mut bytes = 0;
    let keep = page
        .entries
        .iter()
        .take_while(|(_, m)| {
            bytes += ENTRY_HEADER_BYTES + m.body.len();
            bytes <= SYNC_PAGE_BYTES
        })
        .count();
    page.entries.truncate(keep);
}

/// The JSON body of an IM answer over HTTP (one line). Message bodies are strings when they
/// are UTF-8, else `body_hex`.
pub fn json(answer: &ImAnswer) -> String {
    use serde_json::json;
    let v = match answer {
        ImAnswer::Reply(ImReply::Sent {
            seq,
            sent_ms,
            duplicate,
        }) => json!({"seq": seq, "sent_ms": sent_ms, "duplicate": duplicate}),
        ImAnswer::Reply(ImReply::Accepted { accepted_ms }) => {
            json!({"accepted": true, "accepted_ms": accepted_ms})
        }
        ImAnswer::Reply(ImReply::Group {
            gid,
            version,
            members,
        }) => json!({"gid": gid, "version": version, "members": members}),
        ImAnswer::Reply(ImReply::Error(e)) => json!({"error": e.to_string()}),
        ImAnswer::Page(page) => {
            let entries: Vec<serde_json::Value> = page
                .entries
                .iter()
                .map(|(seq, m)| {
                    let mut e = json!({
                        "seq": seq,
                        "sender": m.id.sender,
                        "sender_seq": m.id.seq,
                        "sent_ms": m.sent_ms,
                        "appinfo": appinfo_hex(m.appinfo),
                        "to": match m.to { Target::User(_) => "user", Target::Group(_) => "group" },
                        "to_id": m.to.id(),
                        "class": m.class as u8,
                        "kind": match m.kind {
                            EntryKind::Message => "message",
                            EntryKind::Read => "read",
                            EntryKind::Withdraw => "withdraw",
                        },
                    });
                    if let Some(r) = m.refer {
                        e["refer"] = json!({"sender": r.sender, "sender_seq": r.seq});
                    }
                    match std::str::from_utf8(&m.body) {
                        Ok(text) => e["body"] = json!(text),
                        Err(_) => e["body_hex"] = json!(hex::encode(&m.body)),
                    }
                    e
                })
                .collect();
            json!({"max_seq": page.max_seq, "entries": entries})
        }
        ImAnswer::Members {
            gid,
            version,
            total,
            members,
        } => json!({"gid": gid, "version": version, "total": total, "members": members}),
        ImAnswer::Reply(ImReply::Readers {
            seq,
            read,
            unread,
            from,
            uids,
        }) => {
            // The page's part of each list.
            let split = (*read as usize)
                .saturating_sub(*from as usize)
                .min(uids.len());
            json!({"seq": seq, "read": read, "unread": unread, "from": from,
                   "readers": &uids[..split], "unread_uids": &uids[split..]})
        }
    };
    let mut text = v.to_string();
    text.push('\n');
    text
}

/// A PUSH frame: uid u64, max_seq u64.
pub fn encode_push(uid: u64, max_seq: u64, out: &mut BytesMut) {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&uid.to_le_bytes());
    p[8..].copy_from_slice(&max_seq.to_le_bytes());
    encode_frame(OP_PUSH, 0, 0, &p, out);
}

/// One entry of a SYNC reply, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub sender: u64,
    pub sender_seq: u64,
    pub sent_ms: u64,
    pub appinfo: u128,
    pub to: Target,
    pub class: Class,
    pub kind: EntryKind,
    /// The message a receipt or withdrawal refers to.
    pub refer: Option<MsgId>,
    pub body: Vec<u8>,
}

/// An IM reply as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImDecoded {
    /// A SEND or group-change reply.
    Reply(ImReply),
    Page {
        max_seq: u64,
        entries: Vec<Entry>,
    },
    Members {
        gid: u64,
        version: u64,
        total: u32,
        members: Vec<u64>,
    },
    Push {
        uid: u64,
        max_seq: u64,
    },
}

/// Decodes an IM reply or PUSH payload (client side). None for other ops or bad layouts.
pub fn decode_reply(op: u8, p: &[u8]) -> Option<ImDecoded> {
    match op {
        x if (x == OP_SEND | OP_REPLY
            || x == OP_ACK_READ | OP_REPLY
            || x == OP_WITHDRAW | OP_REPLY)
            && p.len() == 24 =>
        {
            Some(ImDecoded::Reply(if p[17] != 0 {
                ImReply::Accepted {
                    accepted_ms: u64_at(p, 8),
                }
            } else {
                ImReply::Sent {
                    seq: u64_at(p, 0),
                    sent_ms: u64_at(p, 8),
                    duplicate: p[16] != 0,
                }
            }))
        }
        x if (x == OP_GROUP_CREATE | OP_REPLY
            || x == OP_GROUP_ADD | OP_REPLY
            || x == OP_GROUP_REMOVE | OP_REPLY)
            && p.len() == 24 =>
        {
            Some(ImDecoded::Reply(ImReply::Group {
                gid: u64_at(p, 0),
                version: u64_at(p, 8),
                members: u32_at(p, 16),
            }))
        }
        x if x == OP_SYNC | OP_REPLY && p.len() >= SYNC_HEADER_BYTES => {
            let count = u32_at(p, 8) as usize;
            let mut at = SYNC_HEADER_BYTES;
            let mut entries = Vec::with_capacity(count.min(SYNC_LIMIT_MAX as usize));
            for _ in 0..count {
                let h = p.get(at..at + ENTRY_HEADER_BYTES)?;
                let len = u32_at(h, 60) as usize;
                let body = p.get(at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + len)?;
                entries.push(Entry {
                    seq: u64_at(h, 0),
                    sender: u64_at(h, 8),
                    sender_seq: u64_at(h, 16),
                    sent_ms: u64_at(h, 24),
                    appinfo: u128::from_le_bytes(h[32..48].try_into().ok()?),
                    to: Target::from_parts(h[56], u64_at(h, 48))?,
                    class: Class::from_u8(h[57])?,
                    kind: EntryKind::from_u8(h[58])?,
                    refer: match u64_at(h, 72) {
                        0 => None,
                        seq => Some(MsgId {
                            sender: u64_at(h, 64),
                            seq,
                        }),
                    },
                    body: body.to_vec(),
                });
                at += ENTRY_HEADER_BYTES + len;
            }
            (at == p.len()).then_some(ImDecoded::Page {
                max_seq: u64_at(p, 0),
                entries,
            })
        }
        x if x == OP_GROUP_MEMBERS | OP_REPLY && p.len() >= 24 => {
            let count = u32_at(p, 20) as usize;
            if p.len() != 24 + 8 * count {
                return None;
            }
            Some(ImDecoded::Members {
                gid: u64_at(p, 0),
                version: u64_at(p, 8),
                total: u32_at(p, 16),
                members: p[24..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            })
        }
        x if x == OP_READ_LIST | OP_REPLY && p.len() >= READERS_HEADER_BYTES => {
            let count = u32_at(p, 20) as usize;
            if p.len() != READERS_HEADER_BYTES + 8 * count {
                return None;
            }
            Some(ImDecoded::Reply(ImReply::Readers {
                seq: u64_at(p, 0),
                read: u32_at(p, 8),
                unread: u32_at(p, 12),
                from: u32_at(p, 16),
                uids: p[READERS_HEADER_BYTES..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            }))
        }
        OP_PUSH if p.len() == 16 => Some(ImDecoded::Push {
            uid: u64_at(p, 0),
            max_seq: u64_at(p, 8),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::{EntryKind, Message, MsgId};
    use crate::wire::frame::FrameDecoder;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(out: &BytesMut) -> (u8, Vec<u8>) {
        let mut d = FrameDecoder::new();
        d.extend(out);
        let f = d.next_frame().unwrap().unwrap();
        (f.op, f.payload.to_vec())
    }

    #[test]
    fn appinfo_is_the_same_bytes_over_both_protocols() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let binary = u128::from_le_bytes(bytes);
        assert_eq!(
            appinfo_from_hex("0102030405060708090a0b0c0d0e0f10"),
            Some(binary)
        );
        assert_eq!(appinfo_hex(binary), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(appinfo_from_hex("1"), Some(1));
        assert_eq!(appinfo_from_hex("01"), Some(1));
        assert_eq!(appinfo_from_hex("0100"), Some(1));
        assert_eq!(appinfo_from_hex("0001"), Some(256));
        for bad in ["", "x", "0102030405060708090a0b0c0d0e0f1011", "+1", " 1"] {
            assert_eq!(appinfo_from_hex(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn send_round_trips(appinfo: u128, group: bool, id: u64, class in 1u8..=4, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let to = if group { Target::Group(id) } else { Target::User(id) };
            let class = Class::from_u8(class).unwrap();
            let p = encode_send(appinfo, to, class, &body);
            let op = decode_send(&p).unwrap();
            prop_assert_eq!((op.appinfo, op.to, op.class, &op.body[..]), (appinfo, to, class, &body[..]));
        }

        #[test]
        fn pages_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20), max in any::<u64>()) {
            let entries: Vec<(u64, Arc<Message>)> = bodies.into_iter().enumerate().map(|(i, b)| {
                (i as u64 + 1, Arc::new(Message {
                    id: MsgId { sender: 7, seq: i as u64 + 3 },
                    kind: if i % 2 == 0 { EntryKind::Message } else { EntryKind::Read },
                    refer: (i % 2 == 1).then_some(MsgId { sender: 9, seq: i as u64 }),
                    appinfo: i as u128 * 1_000_003,
                    to: Target::Group(9),
                    class: Class::App,
                    sent_ms: 1_700_000_000_000 + i as u64,
                    body: b.into(),
                }))
            }).collect();
            let page = Page { entries: entries.clone(), max_seq: max };
            let mut out = BytesMut::new();
            encode_binary(OP_SYNC, 5, &ImAnswer::Page(Box::new(page)), &mut out);
            let (op, p) = frame(&out);
            let Some(ImDecoded::Page { max_seq, entries: got }) = decode_reply(op, &p) else {
                panic!("not a page");
            };
            prop_assert_eq!(max_seq, max);
            prop_assert_eq!(got.len(), entries.len());
            for (g, (seq, m)) in got.iter().zip(&entries) {
                prop_assert_eq!(g.seq, *seq);
                prop_assert_eq!((g.sender, g.sender_seq, g.sent_ms, g.appinfo), (m.id.sender, m.id.seq, m.sent_ms, m.appinfo));
                prop_assert_eq!((&g.to, &g.class, &g.body[..]), (&m.to, &m.class, &m.body[..]));
                prop_assert_eq!((g.kind, g.refer), (m.kind, m.refer));
            }
        }

        #[test]
        fn decoders_never_panic(op: u8, p in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_reply(op, &p);
            let _ = decode_send(&p);
            let _ = decode_sync(&p);
            let _ = decode_group(&p, op);
        }
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(decode_send(&[0; 10])
            .unwrap_err()
            .detail
            .contains("at least 32"));
        let mut p = encode_send(1, Target::User(2), Class::Chat, b"x");
        p[16] = 3;
        assert!(decode_send(&p)
            .unwrap_err()
            .detail
            .contains("target kind 3"));
        let p = encode_send(1, Target::User(2), Class::Chat, &vec![0; BODY_MAX + 1]);
        assert!(decode_send(&p).unwrap_err().detail.contains("body over"));
        assert_eq!(
            decode_sync(&encode_sync(5, 0)).unwrap(),
            (5, SYNC_LIMIT_DEFAULT)
        );
        assert_eq!(
            decode_sync(&encode_sync(5, 1 << 30)).unwrap(),
            (5, SYNC_LIMIT_MAX)
        );
        assert!(decode_group(&[0; 12], OP_GROUP_ADD).is_err());
        assert_eq!(
            decode_group(&encode_group(4, &[1, 2]), OP_GROUP_ADD).unwrap(),
            (4, vec![1, 2])
        );
    }

    #[test]
    fn a_full_page_fits_one_frame() {
        let big = Arc::new(Message {
            id: MsgId { sender: 1, seq: 1 },
            kind: EntryKind::Message,
            refer: None,
            appinfo: 0,
            to: Target::User(2),
            class: Class::Chat,
            sent_ms: 0,
            body: vec![0; BODY_MAX].into(),
        });
        let mut page = Page {
            entries: (1..=10).map(|s| (s, big.clone())).collect(),
            max_seq: 10,
        };
        fit_page(&mut page);
        assert_eq!(page.entries.len(), 3);
        let mut out = BytesMut::new();
        encode_binary(OP_SYNC, 1, &ImAnswer::Page(Box::new(page)), &mut out);
        assert!(out.len() <= FRAME_BYTES_MAX);
    }
}
