//! IM log records (docs/formats/log.md, kinds 16-21): a sent message in its sender's stream, a
//! delivery of one or more messages to the streams of the recipients homed on one core, the end
//! of a message's fan-out, a group change, a stream head and a group snapshot. Pure codecs: bytes in, values out, every length
//! and field checked, so a damaged record is an error and never a panic. Used by the engine on
//! each core ([`super::engine`]) and by recovery.

use std::sync::Arc;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::model::{
    Class, EntryKind, Message, MessageRef, MsgId, Target, BODY_MAX, GROUP_MEMBERS_MAX,
};
use crate::store::record::RECORD_PAYLOAD_MAX;

/// A message accepted from its sender: the sender's own stream entry, the dedupe memory of its
/// appinfo, and the fan-out's to-do until a [`KIND_FANOUT_DONE`] follows. Stream: sender; seq:
/// the sender's seq.
pub const KIND_SENT: u8 = 16;
/// Messages appended to the streams of recipients homed on the writing core. Stream and seq:
/// the first message's id.
pub const KIND_DELIVERY: u8 = 17;
/// Every recipient of a message has it durably. Stream and seq: the message's id. No payload.
pub const KIND_FANOUT_DONE: u8 = 18;
/// A group change. Stream: the group id; seq: the group's version after the change.
pub const KIND_GROUP: u8 = 19;
/// Written by compaction (R24) where it dropped the record holding a stream's newest seq:
/// stream = uid, seq = that seq, no payload. The stream goes on after it.
pub const KIND_STREAM_HEAD: u8 = 20;
/// One part of a group's snapshot (R24: compaction keeps final states): the membership at a
/// version and the past memberships still needed, written before compaction drops the group
/// change records it covers. Stream: the group id; seq: the version it describes.
pub const KIND_GROUP_SNAPSHOT: u8 = 21;

/// The fixed part of a message inside SENT and DELIVERY records. 72 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MessageHeader {
    pub sender: U64,
    pub sender_seq: U64,
    pub appinfo: [u8; 16],
    pub sent_ms: U64,
    pub target: U64,
    pub body_bytes: U32,
    pub target_kind: u8,
    pub class: u8,
    pub entry_kind: u8,
    pub reserved: u8,
    pub refer_sender: U64,
    pub refer_seq: U64,
}

pub const MESSAGE_HEADER_BYTES: usize = 72;
const _: () = assert!(std::mem::size_of::<MessageHeader>() == MESSAGE_HEADER_BYTES);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DeliveryHeader {
    messages: U32,
    recipients: U32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Recipient {
    uid: U64,
    first_seq: U64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GroupHeader {
    op: u8,
    reserved: [u8; 7],
    actor: U64,
    count: U32,
    reserved2: U32,
}

const GROUP_HEADER_BYTES: usize = 24;
const _: () = assert!(std::mem::size_of::<GroupHeader>() == GROUP_HEADER_BYTES);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SnapshotHeader {
    owner: U64,
    floor: U64,
    part: U16,
    parts: U16,
    members: U32,
    past: U32,
    reserved: U32,
}

const SNAPSHOT_HEADER_BYTES: usize = 32;
const _: () = assert!(std::mem::size_of::<SnapshotHeader>() == SNAPSHOT_HEADER_BYTES);

/// Why a record's payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(msg.into()))
}

/// Bytes one message takes inside a record.
pub fn message_len(m: &Message) -> usize {
    MESSAGE_HEADER_BYTES + m.body.len()
}

fn put_message(m: &Message, out: &mut Vec<u8>) {
    let h = MessageHeader {
        sender: U64::new(m.id.sender),
        sender_seq: U64::new(m.id.seq),
        appinfo: m.appinfo.to_le_bytes(),
        sent_ms: U64::new(m.sent_ms),
        target: U64::new(m.to.id()),
        body_bytes: U32::new(m.body.len() as u32),
        target_kind: m.to.code(),
        class: m.class as u8,
        entry_kind: m.kind as u8,
        reserved: 0,
        refer_sender: U64::new(m.refer.map_or(0, |r| r.sender)),
        refer_seq: U64::new(m.refer.map_or(0, |r| r.seq)),
    };
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&m.body);
}

/// Reads one message from the front of `bytes`; returns it and the bytes after it.
fn take_message(bytes: &[u8]) -> Result<(Message, &[u8]), RecordError> {
    let Ok((h, rest)) = MessageHeader::read_from_prefix(bytes) else {
        return err(format!(
            "message header needs {MESSAGE_HEADER_BYTES} bytes, {} left",
            bytes.len()
        ));
    };
    let body_len = h.body_bytes.get() as usize;
    if body_len > BODY_MAX {
        return err(format!(
            "message body of {body_len} bytes exceeds {BODY_MAX}"
        ));
    }
    if rest.len() < body_len {
        return err(format!(
            "message body of {body_len} bytes, {} left",
            rest.len()
        ));
    }
    let Some(kind) = EntryKind::from_u8(h.entry_kind).filter(|_| h.reserved == 0) else {
        return err(format!("unknown entry kind {}", h.entry_kind));
    };
    let refer = match (kind, h.refer_seq.get()) {
        (EntryKind::Message, 0) if h.refer_sender.get() == 0 => None,
        (EntryKind::Read | EntryKind::Withdraw, seq) if seq > 0 => Some(MsgId {
            sender: h.refer_sender.get(),
            seq,
        }),
        _ => {
            return err(format!(
                "entry kind {} with refer id {}#{}",
                h.entry_kind,
                h.refer_sender.get(),
                h.refer_seq.get()
            ))
        }
    };
    let Some(to) = Target::from_parts(h.target_kind, h.target.get()) else {
        return err(format!("unknown target kind {}", h.target_kind));
    };
    let Some(class) = Class::from_u8(h.class) else {
        return err(format!("unknown message class {}", h.class));
    };
    if h.sender_seq.get() == 0 {
        return err("message seq 0 (seqs start at 1)");
    }
    let (body, rest) = rest.split_at(body_len);
    Ok((
        Message {
            id: MsgId {
                sender: h.sender.get(),
                seq: h.sender_seq.get(),
            },
            kind,
            refer,
            appinfo: u128::from_le_bytes(h.appinfo),
            to,
            class,
            sent_ms: h.sent_ms.get(),
            body: body.into(),
        },
        rest,
    ))
}

/// SENT payload: the message, then, for a message to a group, the group's membership version
/// its recipients were taken at (u64; none in records written before versions were kept).
pub fn encode_sent(m: &Message, version: Option<u64>, out: &mut Vec<u8>) {
    put_message(m, out);
    if let (Target::Group(_), Some(v)) = (m.to, version) {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes a SENT payload; `stream` and `seq` are the record's, which must match the message.
/// Returns the message and, for a group message, its membership version (if recorded).
pub fn decode_sent(
    stream: u64,
    seq: u64,
    payload: &[u8],
) -> Result<(Message, Option<u64>), RecordError> {
    let (m, rest) = take_message(payload)?;
    let version = match (m.to, rest.len()) {
        (_, 0) => None,
        (Target::Group(_), 8) => match u64::from_le_bytes(rest.try_into().expect("8 bytes")) {
            0 => return err("group membership version 0 (versions start at 1)"),
            v => Some(v),
        },
        (_, n) => return err(format!("{n} bytes after the message")),
    };
    if m.id.sender != stream || m.id.seq != seq {
        return err(format!(
            "message {} in the record of stream {stream} seq {seq}",
            m.id
        ));
    }
    Ok((m, version))
}

/// A delivery: `messages` go, in order, to each recipient; recipient `uid` gets every message
/// not sent by `uid` itself, at consecutive seqs from `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub messages: Vec<MessageRef>,
    pub recipients: Vec<(u64, u64)>,
}

impl Delivery {
    /// How many of the messages recipient `uid` gets.
    pub fn count_for(messages: &[MessageRef], uid: u64) -> u64 {
        messages.iter().filter(|m| m.id.sender != uid).count() as u64
    }
}

/// Bytes of a delivery payload.
pub fn delivery_len(messages: &[MessageRef], recipients: usize) -> usize {
    8 + messages.iter().map(|m| message_len(m)).sum::<usize>() + 16 * recipients
}

/// DELIVERY payload: counts, the messages, then (uid, first_seq) per recipient.
pub fn encode_delivery(messages: &[MessageRef], recipients: &[(u64, u64)], out: &mut Vec<u8>) {
    let h = DeliveryHeader {
        messages: U32::new(messages.len() as u32),
        recipients: U32::new(recipients.len() as u32),
    };
    out.extend_from_slice(h.as_bytes());
    for m in messages {
        put_message(m, out);
    }
    for &(uid, first_seq) in recipients {
        out.extend_from_slice(
            Recipient {
                uid: U64::new(uid),
                first_seq: U64::new(first_seq),
            }
            .as_bytes(),
        );
    }
}

pub fn decode_delivery(payload: &[u8]) -> Result<Delivery, RecordError> {
    if payload.len() > RECORD_PAYLOAD_MAX {
        return err("delivery larger than a record");
    }
    let Ok((h, mut rest)) = DeliveryHeader::read_from_prefix(payload) else {
        return err("delivery header needs 8 bytes");
    };
    let count = h.messages.get() as usize;
    let recipients = h.recipients.get() as usize;
    if count == 0 {
        return err("delivery of no message");
    }
    if count > payload.len() / MESSAGE_HEADER_BYTES || recipients > GROUP_MEMBERS_MAX {
        return err(format!(
            "delivery claims {count} messages and {recipients} recipients"
        ));
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let (m, r) = take_message(rest)?;
        messages.push(Arc::new(m));
        rest = r;
    }
    if rest.len() != recipients * 16 {
        return err(format!(
            "{recipients} recipients need {} bytes, {} left",
            recipients * 16,
            rest.len()
        ));
    }
    let list = <[Recipient]>::ref_from_bytes(rest).expect("length checked");
    let mut out = Vec::with_capacity(recipients);
    for r in list {
        if r.first_seq.get() == 0 {
            return err(format!("recipient {} at seq 0", r.uid.get()));
        }
        if Delivery::count_for(&messages, r.uid.get()) == 0 {
            return err(format!("recipient {} gets no message", r.uid.get()));
        }
        out.push((r.uid.get(), r.first_seq.get()));
    }
    Ok(Delivery {
        messages,
        recipients: out,
    })
}

/// A change to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// Creates the group with `owner` and `members` (the owner is a member).
    Create { owner: u64, members: Vec<u64> },
    /// `actor` adds members.
    Add { actor: u64, members: Vec<u64> },
    /// `actor` removes members (a member may remove itself: leaving).
    Remove { actor: u64, members: Vec<u64> },
}

impl GroupChange {
    fn parts(&self) -> (u8, u64, &[u64]) {
        match self {
            GroupChange::Create { owner, members } => (1, *owner, members),
            GroupChange::Add { actor, members } => (2, *actor, members),
            GroupChange::Remove { actor, members } => (3, *actor, members),
        }
    }
}

/// GROUP payload: op (1 create, 2 add, 3 remove), actor, count, then the uids.
pub fn encode_group(change: &GroupChange, out: &mut Vec<u8>) {
    let (op, actor, members) = change.parts();
    let h = GroupHeader {
        op,
        reserved: [0; 7],
        actor: U64::new(actor),
        count: U32::new(members.len() as u32),
        reserved2: U32::new(0),
    };
    out.extend_from_slice(h.as_bytes());
    for &uid in members {
        out.extend_from_slice(&uid.to_le_bytes());
    }
}

pub fn decode_group(payload: &[u8]) -> Result<GroupChange, RecordError> {
    let Ok((h, rest)) = GroupHeader::read_from_prefix(payload) else {
        return err(format!("group header needs {GROUP_HEADER_BYTES} bytes"));
    };
    let count = h.count.get() as usize;
    if count > GROUP_MEMBERS_MAX || rest.len() != count * 8 {
        return err(format!(
            "group change of {count} members in {} bytes",
            rest.len()
        ));
    }
    let members: Vec<u64> = <[U64]>::ref_from_bytes(rest)
        .expect("length checked")
        .iter()
        .map(|u| u.get())
        .collect();
    let actor = h.actor.get();
    Ok(match h.op {
        1 => GroupChange::Create {
            owner: actor,
            members,
        },
        2 => GroupChange::Add { actor, members },
        3 => GroupChange::Remove { actor, members },
        op => return err(format!("unknown group op {op}")),
    })
}

/// Members plus past memberships one snapshot part holds at most (24 bytes each at most:
/// under [`RECORD_PAYLOAD_MAX`] with its header).
pub const SNAPSHOT_ITEMS_PER_PART: usize = 40_000;
const _: () = assert!(SNAPSHOT_HEADER_BYTES + SNAPSHOT_ITEMS_PER_PART * 24 <= RECORD_PAYLOAD_MAX);

/// One part of a group snapshot ([`KIND_GROUP_SNAPSHOT`]). A snapshot at a version is parts
/// `0..parts`, each with the same owner and floor; together they list every member (with the
/// version that added it) and every past membership that ended after `floor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    pub owner: u64,
    /// Versions below this are not answerable any more (no message that may still be asked
    /// about was sent to them): memberships that ended at or before it are not kept.
    pub floor: u64,
    pub part: u16,
    pub parts: u16,
    /// (uid, version that added it).
    pub members: Vec<(u64, u64)>,
    /// (uid, version that added it, version that removed it).
    pub past: Vec<(u64, u64, u64)>,
}

/// SNAPSHOT payload: owner, floor, part, parts, member and past counts, then the members
/// (uid, added) and the past memberships (uid, added, removed), little-endian u64s.
pub fn encode_snapshot(p: &SnapshotPart, out: &mut Vec<u8>) {
    let h = SnapshotHeader {
        owner: U64::new(p.owner),
        floor: U64::new(p.floor),
        part: U16::new(p.part),
        parts: U16::new(p.parts),
        members: U32::new(p.members.len() as u32),
        past: U32::new(p.past.len() as u32),
        reserved: U32::new(0),
    };
    out.extend_from_slice(h.as_bytes());
    for &(uid, added) in &p.members {
        out.extend_from_slice(&uid.to_le_bytes());
        out.extend_from_slice(&added.to_le_bytes());
    }
    for &(uid, added, removed) in &p.past {
        out.extend_from_slice(&uid.to_le_bytes());
        out.extend_from_slice(&added.to_le_bytes());
        out.extend_from_slice(&removed.to_le_bytes());
    }
}

/// The floor of a snapshot part, from its header alone (compaction's decisions).
pub fn snapshot_floor(payload: &[u8]) -> Result<u64, RecordError> {
    match SnapshotHeader::read_from_prefix(payload) {
        Ok((h, _)) => Ok(h.floor.get()),
        Err(_) => err(format!(
            "snapshot header needs {SNAPSHOT_HEADER_BYTES} bytes"
        )),
    }
}

/// Decodes one snapshot part of `version`: lengths, part numbers and every version are
/// checked (added <= version, added < removed <= version, floor <= version).
pub fn decode_snapshot(version: u64, payload: &[u8]) -> Result<SnapshotPart, RecordError> {
    let Ok((h, rest)) = SnapshotHeader::read_from_prefix(payload) else {
        return err(format!(
            "snapshot header needs {SNAPSHOT_HEADER_BYTES} bytes"
        ));
    };
    let (members, past) = (h.members.get() as usize, h.past.get() as usize);
    let (part, parts) = (h.part.get(), h.parts.get());
    if members + past > SNAPSHOT_ITEMS_PER_PART || rest.len() != members * 16 + past * 24 {
        return err(format!(
            "snapshot part of {members} members and {past} past memberships in {} bytes",
            rest.len()
        ));
    }
    if part >= parts {
        return err(format!("snapshot part {part} of {parts}"));
    }
    let floor = h.floor.get();
    if version == 0 || floor > version {
        return err(format!("snapshot of version {version} with floor {floor}"));
    }
    let words: Vec<u64> = <[U64]>::ref_from_bytes(rest)
        .expect("length checked")
        .iter()
        .map(|u| u.get())
        .collect();
    let (m, p) = words.split_at(members * 2);
    let members: Vec<(u64, u64)> = m.chunks_exact(2).map(|w| (w[0], w[1])).collect();
    let past: Vec<(u64, u64, u64)> = p.chunks_exact(3).map(|w| (w[0], w[1], w[2])).collect();
    if let Some(&(uid, added)) = members.iter().find(|&&(_, a)| a == 0 || a > version) {
        return err(format!(
            "snapshot of version {version}: member {uid} added at version {added}"
        ));
    }
    if let Some(&(uid, a, r)) = past
        .iter()
        .find(|&&(_, a, r)| a == 0 || a >= r || r > version)
    {
        return err(format!(
            "snapshot of version {version}: past member {uid} from version {a} to {r}"
        ));
    }
    Ok(SnapshotPart {
        owner: h.owner.get(),
        floor,
        part,
        parts,
        members,
        past,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(sender: u64, seq: u64, body: Vec<u8>, group: bool) -> Message {
        Message {
            id: MsgId { sender, seq },
            kind: if seq % 3 == 0 {
                EntryKind::Withdraw
            } else {
                EntryKind::Message
            },
            refer: (seq % 3 == 0).then_some(MsgId { sender: 5, seq: 6 }),
            appinfo: u128::from(sender) << 64 | u128::from(seq),
            to: if group {
                Target::Group(7)
            } else {
                Target::User(9)
            },
            class: Class::Chat,
            sent_ms: 1_700_000_000_000 + seq,
            body: body.into(),
        }
    }

    proptest! {
        #[test]
        fn sent_round_trips(sender in any::<u64>(), seq in 1u64.., body in proptest::collection::vec(any::<u8>(), 0..300), group in any::<bool>(), version in 0u64..5) {
            let m = message(sender, seq, body, group);
            // A group message carries its membership version (or none, as older records).
            let version = (group && version > 0).then_some(version);
            let mut out = Vec::new();
            encode_sent(&m, version, &mut out);
            prop_assert_eq!(decode_sent(sender, seq, &out).unwrap(), (m.clone(), version));
            // Every strict prefix and every longer buffer is refused, never a panic (but the
            // message without its version is a record as older servers wrote it).
            let bare = out.len() - if version.is_some() { 8 } else { 0 };
            for cut in 0..out.len() {
                match decode_sent(sender, seq, &out[..cut]) {
                    Ok(got) => prop_assert!(cut == bare && got == (m.clone(), None)),
                    Err(_) => prop_assert!(cut != bare),
                }
            }
            out.push(0);
            prop_assert!(decode_sent(sender, seq, &out).is_err());
        }

        #[test]
        fn delivery_round_trips(
            senders in proptest::collection::vec(1u64..5, 1..4),
            uids in proptest::collection::btree_set(5u64..1000, 1..50),
        ) {
            let messages: Vec<MessageRef> = senders
                .iter()
                .enumerate()
                .map(|(i, &s)| Arc::new(message(s, i as u64 + 1, vec![i as u8; i * 3], true)))
                .collect();
            let recipients: Vec<(u64, u64)> = uids.iter().map(|&u| (u, u * 2 + 1)).collect();
            let mut out = Vec::new();
            encode_delivery(&messages, &recipients, &mut out);
            prop_assert_eq!(out.len(), delivery_len(&messages, recipients.len()));
            let d = decode_delivery(&out).unwrap();
            prop_assert_eq!(&d.messages, &messages);
            prop_assert_eq!(&d.recipients, &recipients);
            for cut in 0..out.len() {
                prop_assert!(decode_delivery(&out[..cut]).is_err());
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_delivery(&bytes);
            let _ = decode_group(&bytes);
            let _ = decode_sent(1, 1, &bytes);
            let _ = decode_snapshot(5, &bytes);
            let _ = snapshot_floor(&bytes);
        }

        #[test]
        fn snapshot_parts_round_trip(
            owner in any::<u64>(),
            version in 1u64..1000,
            members in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..60),
            past in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..60),
            floor in any::<u64>(),
            parts in 1u16..5,
        ) {
            let floor = floor % (version + 1);
            let members: Vec<(u64, u64)> =
                members.into_iter().map(|(u, a)| (u, 1 + a % version)).collect();
            let past: Vec<(u64, u64, u64)> = past
                .into_iter()
                .filter(|_| version > 1)
                .map(|(u, a, r)| {
                    let a = 1 + a % (version - 1);
                    (u, a, a + 1 + r % (version - a))
                })
                .collect();
            let p = SnapshotPart { owner, floor, part: parts - 1, parts, members, past };
            let mut out = Vec::new();
            encode_snapshot(&p, &mut out);
            prop_assert_eq!(decode_snapshot(version, &out).unwrap(), p.clone());
            prop_assert_eq!(snapshot_floor(&out).unwrap(), floor);
            // Every strict prefix and a longer buffer are refused; so is an older version
            // than what the part names (a member added later, or the floor above it).
            for cut in 0..out.len() {
                prop_assert!(decode_snapshot(version, &out[..cut]).is_err());
            }
            let mut longer = out.clone();
            longer.push(0);
            prop_assert!(decode_snapshot(version, &longer).is_err());
            let newest = p.members.iter().map(|m| m.1)
                .chain(p.past.iter().map(|m| m.2))
                .chain([p.floor])
                .max()
                .unwrap();
            if newest > 1 {
                prop_assert!(decode_snapshot(newest - 1, &out).is_err());
            }
        }

        #[test]
        fn group_round_trips(op in 0..3u8, actor in any::<u64>(), members in proptest::collection::vec(any::<u64>(), 0..100)) {
            let change = match op {
                0 => GroupChange::Create { owner: actor, members },
                1 => GroupChange::Add { actor, members },
                _ => GroupChange::Remove { actor, members },
            };
            let mut out = Vec::new();
            encode_group(&change, &mut out);
            prop_assert_eq!(decode_group(&out).unwrap(), change);
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let m = message(3, 4, b"hi".to_vec(), false);
        let mut out = Vec::new();
        encode_sent(&m, Some(7), &mut out);
        assert_eq!(
            out.len(),
            MESSAGE_HEADER_BYTES + 2,
            "no version for a single chat"
        );
        assert!(decode_sent(3, 5, &out).unwrap_err().0.contains("3#4"));
        let mut extra = out.clone();
        extra.extend_from_slice(&7u64.to_le_bytes());
        assert!(decode_sent(3, 4, &extra)
            .unwrap_err()
            .0
            .contains("8 bytes after"));
        let g = message(3, 4, b"hi".to_vec(), true);
        let mut zero = Vec::new();
        encode_sent(&g, Some(0), &mut zero);
        assert!(decode_sent(3, 4, &zero)
            .unwrap_err()
            .0
            .contains("version 0"));
        let mut bad = out.clone();
        bad[52] = 9; // target kind
        assert!(decode_sent(3, 4, &bad)
            .unwrap_err()
            .0
            .contains("target kind 9"));
        let mut bad = out.clone();
        bad[53] = 0; // class
        assert!(decode_sent(3, 4, &bad).unwrap_err().0.contains("class"));
        // A recipient that would get nothing (its own message only) is refused.
        let mut d = Vec::new();
        encode_delivery(&[Arc::new(m)], &[(3, 1)], &mut d);
        assert!(decode_delivery(&d)
            .unwrap_err()
            .0
            .contains("gets no message"));
    }
}
