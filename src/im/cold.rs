//! The cold tier of the streams (R24, hot/cold separation): where a stream entry's message lies
//! in the logs, so that old entries can leave memory and be read back from disk when someone
//! asks for them. Owned by each core's engine ([`super::engine::ImCore`]); the reads run on the
//! core's thread (the runtime reads pages of a SYNC asynchronously, `runtime::im`; the rare
//! single reads of receipts, withdrawals and retried sends go through [`ColdSource`]).
//!
//! Every entry knows its [`ColdRef`] from the moment it is appended (the record's position is
//! known at append): 8 bytes beside the message pointer while hot, the only thing kept once
//! cold. A ref names the log (core), the segment and the byte offset of the record that
//! carries the entry: the sender's SENT record for its own copy, the DELIVERY record of the
//! recipient's core for every other. Reading an entry back decodes that record, checks its
//! checksum and finds the recipient's message in it by seq ([`message_in_record`]): a record
//! that is not there or does not hold the entry is an error, never a wrong message.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::model::{Message, MessageRef};
use super::record::{decode_delivery, decode_sent, Delivery, KIND_DELIVERY, KIND_SENT};
use crate::store::record::{decode, Decoded, RecordHeader, RECORD_HEADER_BYTES};
use crate::store::LogPosition;

const CORE_BITS: u32 = 10;
const SEGMENT_BITS: u32 = 22;

/// Where an entry's record lies: log core (10 bits), segment (22 bits), byte offset (32 bits:
/// segments are at most 4 GiB) in one `u64`. [`ColdRef::NONE`] when the position does not fit
/// (more than 1,024 cores, segment id 4 M or more): such an entry stays in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColdRef(u64);

impl ColdRef {
    pub const NONE: ColdRef = ColdRef(u64::MAX);

    pub fn new(core: u16, at: LogPosition) -> ColdRef {
        if u32::from(core) >= 1 << CORE_BITS
            || at.segment >= 1 << SEGMENT_BITS
            || at.offset > u64::from(u32::MAX)
        {
            return ColdRef::NONE;
        }
        let r = (u64::from(core) << (64 - CORE_BITS)) | (at.segment << 32) | at.offset;
        // The all-ones pattern would need segment and offset at their maxima: not reachable
        // (offset u32::MAX is past any record start of a 4 GiB segment).
        debug_assert_ne!(r, u64::MAX);
        ColdRef(r)
    }

    pub fn is_some(self) -> bool {
        self != ColdRef::NONE
    }

    /// The log (core number) holding the record.
    pub fn core(self) -> u16 {
        (self.0 >> (64 - CORE_BITS)) as u16
    }

    pub fn position(self) -> LogPosition {
        LogPosition {
            segment: (self.0 >> 32) & ((1 << SEGMENT_BITS) - 1),
            offset: self.0 & u64::from(u32::MAX),
        }
    }
}

impl std::fmt::Display for ColdRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_some() {
            write!(f, "core-{}:{}", self.core(), self.position())
        } else {
            f.write_str("none")
        }
    }
}

/// The entry of `uid`'s stream at `seq` in a record (its kind, stream, seq and payload): the
/// message of a SENT record of `uid` itself, or `uid`'s share of a DELIVERY (its entries are
/// the record's messages not sent by `uid`, from its first seq on). Errors say what did not
/// match.
pub fn message_in_record(
    kind: u8,
    stream: u64,
    rseq: u64,
    payload: &[u8],
    uid: u64,
    seq: u64,
) -> Result<Message, String> {
    match kind {
        KIND_SENT => {
            if stream != uid || rseq != seq {
                return Err(format!(
                    "the sent record there is {stream}#{rseq}, not {uid}#{seq}"
                ));
            }
            let (m, _) = decode_sent(stream, rseq, payload).map_err(|e| e.0)?;
            Ok(m)
        }
        KIND_DELIVERY => {
            let d = decode_delivery(payload).map_err(|e| e.0)?;
            let Some(&(_, first)) = d.recipients.iter().find(|&&(u, _)| u == uid) else {
                return Err(format!("the delivery there has no copy for user {uid}"));
            };
            let n = Delivery::count_for(&d.messages, uid);
            if seq < first || seq - first >= n {
                return Err(format!(
                    "the delivery there holds seqs {first}..{} of user {uid}, not {seq}",
                    first + n
                ));
            }
            let m = d
                .messages
                .iter()
                .filter(|m| m.id.sender != uid)
                .nth((seq - first) as usize)
                .expect("counted");
            Ok(Message::clone(m))
        }
        other => Err(format!(
            "the record there is of kind {other}, not a message"
        )),
    }
}

/// Decodes the record at the start of `bytes` (read at a cold ref's offset of segment
/// `segment`) and finds the entry in it.
pub fn entry_in_bytes(segment: u64, bytes: &[u8], uid: u64, seq: u64) -> Result<Message, String> {
    match decode(segment, bytes, 0) {
        Decoded::Record(view, _) => {
            message_in_record(view.kind, view.stream, view.seq, view.payload, uid, seq)
        }
        Decoded::End => Err("no record there".into()),
        Decoded::Invalid(why) => Err(format!("no valid record there: {why}")),
    }
}

/// Bytes of the record starting with `header` (a record's first 32 bytes), or an error.
pub fn record_len(header: &[u8]) -> Result<usize, String> {
    use zerocopy::FromBytes;
    let h = RecordHeader::ref_from_bytes(header.get(..RECORD_HEADER_BYTES).ok_or("cut short")?)
        .map_err(|_| "cut short".to_string())?;
    let len = h.payload_bytes.get() as usize;
    if len > crate::store::record::RECORD_PAYLOAD_MAX {
        return Err("record length beyond the limit".into());
    }
    Ok(RECORD_HEADER_BYTES + len)
}

/// Reads single cold entries synchronously (receipts, withdrawals, read lists and dedupe
/// confirmations of entries that left memory: rare, one record each).
pub trait ColdSource {
    fn read(&self, at: ColdRef, uid: u64, seq: u64) -> Result<MessageRef, String>;
    /// Closes what it keeps open (compaction may have replaced segment files).
    fn forget(&self) {}
}

/// [`ColdSource`] over the data directory's core logs, with the segment files it opened kept
/// open (closed by [`ColdFiles::forget`] after compaction may have replaced them).
pub struct ColdFiles {
    data: PathBuf,
    files: RefCell<HashMap<(u16, u64), File>>,
}

/// Most segment files a core keeps open for cold reads (here and in `runtime::cold`).
pub const OPEN_FILES_MAX: usize = 64;

/// The segment file a ref points into, under the data directory `data`.
pub fn segment_file(data: &std::path::Path, at: ColdRef) -> PathBuf {
    let dir = crate::serve::setup::core_dir(data, at.core());
    crate::store::file::segment_path(&dir, at.position().segment)
}

impl ColdFiles {
    pub fn new(data: PathBuf) -> ColdFiles {
        ColdFiles {
            data,
            files: RefCell::new(HashMap::new()),
        }
    }

    fn read_bytes(&self, at: ColdRef) -> Result<Vec<u8>, String> {
        let key = (at.core(), at.position().segment);
        let mut files = self.files.borrow_mut();
        if !files.contains_key(&key) {
            if files.len() >= OPEN_FILES_MAX {
                files.clear();
            }
            let path = segment_file(&self.data, at);
            let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.insert(key, f);
        }
        let f = &files[&key];
        let offset = at.position().offset;
        let mut header = [0u8; RECORD_HEADER_BYTES];
        f.read_exact_at(&mut header, offset)
            .map_err(|e| format!("{at}: {e}"))?;
        let len = record_len(&header)?;
        let mut bytes = vec![0u8; len];
        f.read_exact_at(&mut bytes, offset)
            .map_err(|e| format!("{at}: {e}"))?;
        Ok(bytes)
    }
}

impl ColdSource for ColdFiles {
    fn read(&self, at: ColdRef, uid: u64, seq: u64) -> Result<MessageRef, String> {
        if !at.is_some() {
            return Err("the entry has no log position".into());
        }
        let bytes = self.read_bytes(at)?;
        entry_in_bytes(at.position().segment, &bytes, uid, seq)
            .map(Arc::new)
            .map_err(|e| format!("{at}: {e}"))
    }

    fn forget(&self) {
        self.files.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::model::{Class, EntryKind, MsgId, Target};
    use crate::im::record::{encode_delivery, encode_sent};
    use crate::store::record::encode;
    use proptest::prelude::*;

    fn msg(sender: u64, seq: u64) -> MessageRef {
        Arc::new(Message {
            id: MsgId { sender, seq },
            kind: EntryKind::Message,
            refer: None,
            appinfo: u128::from(seq) << 7 | 3,
            to: Target::Group(9),
            class: Class::Chat,
            sent_ms: 1_000 + seq,
            body: Box::from(format!("body {sender} {seq}").as_bytes()),
        })
    }

    proptest! {
        #[test]
        fn refs_round_trip(core in 0u16..1024, segment in 0u64..(1 << 22), offset in 0u64..=u64::from(u32::MAX - 1)) {
            let r = ColdRef::new(core, LogPosition { segment, offset });
            prop_assert!(r.is_some());
            prop_assert_eq!(r.core(), core);
            prop_assert_eq!(r.position(), LogPosition { segment, offset });
        }
    }

    #[test]
    fn positions_that_do_not_fit_have_no_ref() {
        let at = |segment, offset| LogPosition { segment, offset };
        assert!(!ColdRef::new(1024, at(1, 64)).is_some());
        assert!(!ColdRef::new(1, at(1 << 22, 64)).is_some());
        assert!(!ColdRef::new(1, at(1, 1 << 32)).is_some());
        assert!(ColdRef::new(1023, at((1 << 22) - 1, 1 << 31)).is_some());
    }

    #[test]
    fn entries_are_found_in_their_records_and_nowhere_else() {
        // A merged delivery of two messages of user 1 and one of user 2 to users 1 and 3.
        let messages = [msg(1, 4), msg(2, 7), msg(1, 5)];
        let mut p = Vec::new();
        encode_delivery(&messages, &[(1, 10), (3, 20)], &mut p);
        let mut rec = Vec::new();
        encode(6, KIND_DELIVERY, 1, 4, &p, &mut rec);
        assert_eq!(record_len(&rec).unwrap(), rec.len());
        // User 1 gets only user 2's message; user 3 all three.
        assert_eq!(entry_in_bytes(6, &rec, 1, 10).unwrap(), *messages[1]);
        assert!(entry_in_bytes(6, &rec, 1, 11).is_err());
        assert_eq!(entry_in_bytes(6, &rec, 3, 20).unwrap(), *messages[0]);
        assert_eq!(entry_in_bytes(6, &rec, 3, 22).unwrap(), *messages[2]);
        assert!(entry_in_bytes(6, &rec, 3, 19).is_err());
        assert!(entry_in_bytes(6, &rec, 3, 23).is_err());
        assert!(entry_in_bytes(6, &rec, 4, 20).is_err());
        // The checksum is seeded with the segment: the same bytes read as another segment's
        // are no record.
        assert!(entry_in_bytes(7, &rec, 3, 20).is_err());
        // A damaged byte is an error, not a wrong message.
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(entry_in_bytes(6, &bad, 3, 20).is_err());
        // A sent record holds its sender's entry only.
        let mut s = Vec::new();
        encode_sent(&messages[0], None, &mut s);
        let mut rec = Vec::new();
        encode(6, KIND_SENT, 1, 4, &s, &mut rec);
        assert_eq!(entry_in_bytes(6, &rec, 1, 4).unwrap(), *messages[0]);
        assert!(entry_in_bytes(6, &rec, 1, 5).is_err());
        assert!(entry_in_bytes(6, &rec, 2, 4).is_err());
        // Anything else is not a message.
        let mut rec = Vec::new();
        encode(6, 3, 1, 4, &[0; 40], &mut rec);
        assert!(entry_in_bytes(6, &rec, 1, 4).is_err());
        assert!(entry_in_bytes(6, &[], 1, 4).is_err());
    }

    #[test]
    fn files_read_back_what_a_log_wrote() {
        use crate::store::{FileLog, StoreOptions};
        let data = tempfile::tempdir().unwrap();
        let dir = crate::serve::setup::core_dir(data.path(), 2);
        let options = StoreOptions {
            segment_bytes_max: 8 << 20,
            pending_bytes_max: 1 << 20,
            adopt: false,
        };
        let (mut log, _) = FileLog::open(&dir, 2, options, |_, _| {}).unwrap();
        let m = msg(5, 1);
        let mut s = Vec::new();
        encode_sent(&m, None, &mut s);
        let a = log.append(KIND_SENT, 5, 1, &s).unwrap();
        log.commit().unwrap();
        let files = ColdFiles::new(data.path().to_path_buf());
        let at = ColdRef::new(2, a.start);
        assert_eq!(*files.read(at, 5, 1).unwrap(), *m);
        assert!(files.read(at, 5, 2).is_err());
        // A ref into a segment that is not there, or past the end, is an error.
        let gone = ColdRef::new(
            2,
            LogPosition {
                segment: 9,
                offset: 64,
            },
        );
        assert!(files.read(gone, 5, 1).unwrap_err().contains(".log"));
        let past = ColdRef::new(
            2,
            LogPosition {
                segment: a.start.segment,
                offset: 1 << 20,
            },
        );
        assert!(files.read(past, 5, 1).is_err());
        assert!(files.read(ColdRef::NONE, 5, 1).is_err());
    }
}
