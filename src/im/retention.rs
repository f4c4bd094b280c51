//! Message retention (R24): what compaction keeps of an **expired** log segment, i.e. a sealed
//! segment whose successor was created before the retention cutoff, so every IM record in it
//! was written, and every message in it sent, before the cutoff.
//!
//! From such a segment compaction drops the messages (kinds 16, 17) and fan-out ends (18),
//! except the records of fan-outs still in flight; the group changes (19) and group snapshots
//! (21) that a newer durable snapshot of their group covers (final states only; groups homed
//! on the compacting core, whose snapshots it knows); and keeps everything else: money
//! records, other group records and kinds it does not know. A stream's seqs must go on where they were after
//! a restart even when its every record was dropped, so where a dropped record held the newest
//! seq of a stream, a 32-byte **stream head** record (kind 20: stream = uid, seq = that seq,
//! no payload) takes its place. A head is dropped again by a later compaction once the stream
//! has grown past it (its newer records are in later segments).
//!
//! Pure functions, used by the server's compaction task (runtime) on the blocking thread and
//! by its core for the decisions that need the engine's state.

use foldhash::{HashMap, HashSet};

use super::model::MsgId;
use super::record::{
    decode_delivery, snapshot_floor, Delivery, KIND_DELIVERY, KIND_FANOUT_DONE, KIND_GROUP,
    KIND_GROUP_SNAPSHOT, KIND_SENT, KIND_STREAM_HEAD,
};
use crate::store::RecordView;

/// The (uid, newest seq) pairs of the streams a record writes into: the sender's for a sent
/// record, every recipient's last for a delivery, the stream of a head record. Empty for other
/// kinds and for damaged payloads (they were checked at recovery).
pub fn heads_of(view: &RecordView<'_>) -> Vec<(u64, u64)> {
    match view.kind {
        KIND_SENT | KIND_STREAM_HEAD => vec![(view.stream, view.seq)],
        KIND_DELIVERY => match decode_delivery(view.payload) {
            Ok(d) => d
                .recipients
                .iter()
                .filter_map(|&(uid, first)| {
                    let n = Delivery::count_for(&d.messages, uid);
                    (n > 0).then(|| (uid, first + n - 1))
                })
                .collect(),
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// What compaction of one expired segment needs from the core's engine.
#[derive(Debug, Default, Clone)]
pub struct ExpiredSegment {
    /// Messages whose fan-out is not done: their sent and delivery records stay.
    pub open: HashSet<MsgId>,
    /// (uid, seq): streams whose newest seq is in this segment; a head record keeps it.
    pub heads: HashSet<(u64, u64)>,
    /// The newest durable snapshot (version, floor) of each group homed on the compacting
    /// core: its change records up to that version and its older snapshots go.
    pub snapshots: HashMap<u64, (u64, u64)>,
}

impl ExpiredSegment {
    /// Whether compaction keeps `view`; pushes the head records to write in its place onto
    /// `extra` (kind, stream, seq).
    pub fn keep(&mut self, view: &RecordView<'_>, extra: &mut Vec<(u8, u64, u64)>) -> bool {
        let keep = match view.kind {
            KIND_SENT => self.open.contains(&MsgId {
                sender: view.stream,
                seq: view.seq,
            }),
            KIND_DELIVERY => match decode_delivery(view.payload) {
                Ok(d) => d.messages.iter().any(|m| self.open.contains(&m.id)),
                Err(_) => true,
            },
            // A head still needed stays as it is (so compacting a compacted segment again
            // changes nothing); one the stream has grown past goes.
            KIND_STREAM_HEAD => return self.heads.remove(&(view.stream, view.seq)),
            KIND_FANOUT_DONE => false,
            KIND_GROUP => {
                return !self
                    .snapshots
                    .get(&view.stream)
                    .is_some_and(|&(v, _)| view.seq <= v)
            }
            KIND_GROUP_SNAPSHOT => {
                return match snapshot_floor(view.payload) {
                    Ok(floor) => !self
                        .snapshots
                        .get(&view.stream)
                        .is_some_and(|&newest| (view.seq, floor) < newest),
                    Err(_) => true,
                }
            }
            _ => return true,
        };
        if !keep {
            for head in heads_of(view) {
                // Once per stream: the first record found holding its newest seq.
                if self.heads.remove(&head) {
                    extra.push((KIND_STREAM_HEAD, head.0, head.1));
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::im::model::{Class, EntryKind, Message, Target};
    use crate::im::record::{encode_delivery, encode_sent};

    fn view(kind: u8, stream: u64, seq: u64, payload: &[u8]) -> RecordView<'_> {
        RecordView {
            kind,
            stream,
            seq,
            payload,
            origin: None,
        }
    }

    fn msg(sender: u64, seq: u64) -> Arc<Message> {
        Arc::new(Message {
            id: MsgId { sender, seq },
            kind: EntryKind::Message,
            refer: None,
            appinfo: 1,
            to: Target::Group(9),
            class: Class::Chat,
            sent_ms: 5,
            body: Box::from(&b"hi"[..]),
        })
    }

    #[test]
    fn heads_cover_senders_and_recipients() {
        let mut p = Vec::new();
        encode_delivery(&[msg(1, 4), msg(2, 7)], &[(1, 10), (3, 20)], &mut p);
        let v = view(KIND_DELIVERY, 1, 4, &p);
        // User 1 gets only user 2's message (not its own): one entry at 10.
        assert_eq!(heads_of(&v), vec![(1, 10), (3, 21)]);
        let mut s = Vec::new();
        encode_sent(&msg(1, 4), None, &mut s);
        let sent = view(KIND_SENT, 1, 4, &s);
        assert_eq!(heads_of(&sent), vec![(1, 4)]);
    }

    #[test]
    fn expired_records_go_open_fanouts_and_money_stay_heads_replace_the_newest() {
        let mut p = Vec::new();
        encode_delivery(&[msg(2, 7)], &[(3, 20)], &mut p);
        let delivery = view(KIND_DELIVERY, 2, 7, &p);
        let claim = view(3, 0, 0, &[0; 32]);
        let done = view(KIND_FANOUT_DONE, 2, 7, &[]);
        let mut x = ExpiredSegment {
            open: HashSet::default(),
            heads: [(3, 20)].into_iter().collect(),
            ..ExpiredSegment::default()
        };
        let mut extra = Vec::new();
        assert!(x.keep(&claim, &mut extra));
        assert!(!x.keep(&done, &mut extra));
        assert!(!x.keep(&delivery, &mut extra));
        assert_eq!(extra, vec![(KIND_STREAM_HEAD, 3, 20)]);
        // A second record for the same head adds nothing.
        extra.clear();
        assert!(!x.keep(&delivery, &mut extra));
        assert!(extra.is_empty());
        // A head record still needed is kept as it is; one no longer needed goes.
        let head = view(KIND_STREAM_HEAD, 4, 9, &[]);
        let mut again = ExpiredSegment {
            open: HashSet::default(),
            heads: [(4, 9)].into_iter().collect(),
            ..ExpiredSegment::default()
        };
        assert!(again.keep(&head, &mut extra));
        assert!(!again.keep(&head, &mut extra));
        assert!(extra.is_empty());
        // A fan-out in flight keeps its delivery.
        let mut open = ExpiredSegment {
            open: [MsgId { sender: 2, seq: 7 }].into_iter().collect(),
            ..ExpiredSegment::default()
        };
        assert!(open.keep(&delivery, &mut extra));
    }

    #[test]
    fn group_records_go_once_a_durable_snapshot_covers_them() {
        use crate::im::record::{encode_group, encode_snapshot, GroupChange, SnapshotPart};
        let mut change = Vec::new();
        encode_group(
            &GroupChange::Add {
                actor: 1,
                members: vec![2],
            },
            &mut change,
        );
        let snap = |floor| {
            let mut p = Vec::new();
            let part = SnapshotPart {
                owner: 1,
                floor,
                part: 0,
                parts: 1,
                members: vec![(1, 1)],
                past: vec![],
            };
            encode_snapshot(&part, &mut p);
            p
        };
        let (s3, s5_1, s5_2) = (snap(1), snap(1), snap(2));
        let mut x = ExpiredSegment {
            snapshots: [(40, (5, 2))].into_iter().collect(),
            ..ExpiredSegment::default()
        };
        let mut extra = Vec::new();
        // Group 40: changes up to 5 are covered, 6 is not; older snapshots go, the newest stays.
        assert!(!x.keep(&view(KIND_GROUP, 40, 3, &change), &mut extra));
        assert!(!x.keep(&view(KIND_GROUP, 40, 5, &change), &mut extra));
        assert!(x.keep(&view(KIND_GROUP, 40, 6, &change), &mut extra));
        assert!(!x.keep(&view(KIND_GROUP_SNAPSHOT, 40, 3, &s3), &mut extra));
        assert!(!x.keep(&view(KIND_GROUP_SNAPSHOT, 40, 5, &s5_1), &mut extra));
        assert!(x.keep(&view(KIND_GROUP_SNAPSHOT, 40, 5, &s5_2), &mut extra));
        // Group 41 has no durable snapshot here (or is homed elsewhere): all stay.
        assert!(x.keep(&view(KIND_GROUP, 41, 1, &change), &mut extra));
        assert!(x.keep(&view(KIND_GROUP_SNAPSHOT, 41, 5, &s3), &mut extra));
        // A snapshot whose header cannot be read is kept (recovery names it).
        assert!(x.keep(&view(KIND_GROUP_SNAPSHOT, 40, 1, &[1, 2]), &mut extra));
        assert!(extra.is_empty());
    }
}
