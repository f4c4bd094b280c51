//! Log record codec: a 32-byte header (payload length, CRC32C, kind, stream key, seq) followed
//! by the payload. The CRC is seeded with the segment id, so a record copied into another
//! segment does not validate there. Pure bytes in, bytes out; used by the writer on each core
//! and by recovery. docs/formats/log.md is the byte-level reference.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const RECORD_HEADER_BYTES: usize = 32;
/// Largest payload of one record. Bounds what a damaged length field can make a reader skip.
pub const RECORD_PAYLOAD_MAX: usize = 1 << 20;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RecordHeader {
    pub payload_bytes: U32,
    /// CRC32C of (segment id, little-endian u64) ++ header bytes 8..32 ++ payload.
    pub crc32c: U32,
    /// What the record means to its owner; 0 is never valid, so zeroed disk is never a record.
    pub kind: u8,
    pub flags: u8,
    pub reserved: U16,
    /// The stream the record belongs to (a shard for claims, a user for IM).
    pub stream: U64,
    /// Position of the record in its stream, as the stream's owner numbers it.
    pub seq: U64,
    /// With [`FLAG_ORIGIN`]: the byte offset the record was first written at in this segment
    /// (a compacted segment keeps every record's original position). Otherwise 0.
    pub origin: U32,
}

/// `flags` bit: the record was copied by compaction and `origin` is its original offset.
pub const FLAG_ORIGIN: u8 = 1;
/// `flags` bit: the record is the first of a write batch (segments of version 2). Recovery
/// uses it to tell an unfinished last write from damage (docs/formats/log.md).
pub const FLAG_BATCH_START: u8 = 2;

const _: () = assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER_BYTES);

/// A decoded record, borrowing its payload from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub kind: u8,
    pub stream: u64,
    pub seq: u64,
    pub payload: &'a [u8],
    /// The offset the record was written at, when compaction has moved it (None: where it is).
    pub origin: Option<u32>,
}

/// What the bytes at one offset hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid record, and the offset just after it.
    Record(RecordView<'a>, usize),
    /// The segment's data ends here: end of bytes, or a zeroed header (unwritten space).
    End,
    /// Not a valid record: a torn write, damage, or garbage. The reason is for humans.
    Invalid(&'static str),
}

fn crc(segment_id: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&segment_id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, header_tail);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one encoded record to `out`. Panics on kind 0 or an oversized payload: both are
/// programming errors of the caller, which validates what it logs.
pub fn encode(segment_id: u64, kind: u8, stream: u64, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode_full(segment_id, kind, stream, seq, payload, None, out);
}

/// [`encode`], for compaction: a record moved from its original offset `origin` in the same
/// segment (kept in the header, so its position does not change).
pub fn encode_moved(segment_id: u64, view: &RecordView<'_>, origin: u32, out: &mut Vec<u8>) {
    encode_full(
        segment_id,
        view.kind,
        view.stream,
        view.seq,
        view.payload,
        Some(origin),
        out,
    );
}

fn encode_full(
    segment_id: u64,
    kind: u8,
    stream: u64,
    seq: u64,
    payload: &[u8],
    origin: Option<u32>,
    out: &mut Vec<u8>,
) {
    assert!(kind != 0, "record kind 0 is reserved");
    assert!(
        payload.len() <= RECORD_PAYLOAD_MAX,
        "record payload too large"
    );
    let mut header = RecordHeader {
        payload_bytes: U32::new(payload.len() as u32),
        crc32c: U32::new(0),
        kind,
        flags: if origin.is_some() { FLAG_ORIGIN } else { 0 },
        reserved: U16::new(0),
        stream: U64::new(stream),
        seq: U64::new(seq),
        origin: U32::new(origin.unwrap_or(0)),
    };
    // The CRC covers (segment id) ++ header[8..] ++ payload. The segment id is exactly as long
    // as the length and CRC fields, so it goes there first and the whole record is checksummed
    // in one pass (one call costs a third of three on 40-byte claims); then the fields are set.
    let start = out.len();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out[start..start + 8].copy_from_slice(&segment_id.to_le_bytes());
    header.crc32c = U32::new(crc32c::crc32c(&out[start..]));
    out[start..start + 8].copy_from_slice(&header.as_bytes()[..8]);
}

/// Marks the whole record starting at `at` of `bytes` as the first of its write batch
/// ([`FLAG_BATCH_START`]) and recomputes its CRC. Panics if no whole record starts there: the
/// writer only marks records it encoded itself.
pub fn mark_batch_start(segment_id: u64, bytes: &mut [u8], at: usize) {
    let (header, rest) = RecordHeader::mut_from_prefix(&mut bytes[at..]).expect("a record header");
    let payload = &rest[..header.payload_bytes.get() as usize];
    header.flags |= FLAG_BATCH_START;
    header.crc32c = U32::new(crc(segment_id, &header.as_bytes()[8..], payload));
}

/// Whether the record at `offset` (already decoded as valid) is the first of a write batch.
pub fn is_batch_start(bytes: &[u8], offset: usize) -> bool {
    bytes
        .get(offset..)
        .and_then(|rest| RecordHeader::ref_from_prefix(rest).ok())
        .is_some_and(|(header, _)| header.flags & FLAG_BATCH_START != 0)
}

/// Encoded size of a record with `payload_bytes` of payload.
pub fn encoded_len(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// Decodes the record starting at `offset` of `bytes` (a segment's bytes).
pub fn decode(segment_id: u64, bytes: &[u8], offset: usize) -> Decoded<'_> {
    let Some(rest) = bytes.get(offset..) else {
        return Decoded::End;
    };
    if rest.is_empty() {
        return Decoded::End;
    }
    let Ok((header, after)) = RecordHeader::ref_from_prefix(rest) else {
        return if rest.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid("record header cut short")
        };
    };
    if header.as_bytes().iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    if header.kind == 0 {
        return Decoded::Invalid("record kind 0");
    }
    let len = header.payload_bytes.get() as usize;
    if len > RECORD_PAYLOAD_MAX {
        return Decoded::Invalid("record length beyond the limit");
    }
    let Some(payload) = after.get(..len) else {
        return Decoded::Invalid("record payload cut short");
    };
    if crc(segment_id, &header.as_bytes()[8..], payload) != header.crc32c.get() {
        return Decoded::Invalid("record checksum mismatch");
    }
    Decoded::Record(
        RecordView {
            kind: header.kind,
            stream: header.stream.get(),
            seq: header.seq.get(),
            payload,
            origin: (header.flags & FLAG_ORIGIN != 0).then(|| header.origin.get()),
        },
        offset + RECORD_HEADER_BYTES + len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(segment: u64, kind in 1u8.., stream: u64, seq: u64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![7u8; 5];
            encode(segment, kind, stream, seq, &payload, &mut bytes);
            match decode(segment, &bytes, 5) {
                Decoded::Record(view, next) => {
                    prop_assert_eq!(view, RecordView { kind, stream, seq, payload: &payload, origin: None });
                    prop_assert_eq!(next, bytes.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
            prop_assert_eq!(decode(segment, &bytes, bytes.len()), Decoded::End);
        }

        #[test]
        fn any_damage_is_invalid(bit in 0usize..(8 * (RECORD_HEADER_BYTES + 20)), payload in proptest::collection::vec(any::<u8>(), 20)) {
            let mut bytes = Vec::new();
            encode(9, 3, 4, 5, &payload, &mut bytes);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(decode(9, &bytes, 0), Decoded::Record(..)));
        }

        #[test]
        fn a_marked_record_decodes_the_same_and_says_so(segment: u64, kind in 1u8.., stream: u64, seq: u64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![7u8; 3];
            encode(segment, kind, stream, seq, &payload, &mut bytes);
            encode(segment, kind, stream, seq + 1, b"next", &mut bytes);
            let before = bytes.clone();
            prop_assert!(!is_batch_start(&bytes, 3));
            mark_batch_start(segment, &mut bytes, 3);
            prop_assert!(is_batch_start(&bytes, 3));
            let (Decoded::Record(a, na), Decoded::Record(b, nb)) = (decode(segment, &bytes, 3), decode(segment, &before, 3)) else {
                return Err(TestCaseError::fail("not a record after marking"));
            };
            prop_assert_eq!((a, na), (b, nb));
            // Only that record changed: the next one is untouched.
            prop_assert_eq!(&bytes[na..], &before[na..]);
            prop_assert!(!is_batch_start(&bytes, na));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), offset in 0usize..210) {
            let _ = decode(1, &bytes, offset);
        }
    }

    #[test]
    fn another_segment_does_not_validate() {
        let mut bytes = Vec::new();
        encode(1, 3, 4, 5, b"claim", &mut bytes);
        assert!(matches!(decode(1, &bytes, 0), Decoded::Record(..)));
        assert_eq!(
            decode(2, &bytes, 0),
            Decoded::Invalid("record checksum mismatch")
        );
    }

    #[test]
    fn zeros_end_and_truncation_is_invalid() {
        assert_eq!(decode(1, &[0u8; 100], 0), Decoded::End);
        assert_eq!(decode(1, &[0u8; 10], 0), Decoded::End);
        let mut bytes = Vec::new();
        encode(1, 3, 4, 5, b"claim", &mut bytes);
        assert_eq!(
            decode(1, &bytes[..bytes.len() - 1], 0),
            Decoded::Invalid("record payload cut short")
        );
        assert_eq!(
            decode(1, &bytes[..20], 0),
            Decoded::Invalid("record header cut short")
        );
    }
}
