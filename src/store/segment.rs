//! Segment files and their recovery scan. A segment is a 64-byte header followed by records;
//! segments of one core are numbered consecutively and only the newest is ever appended to.
//!
//! The scan is pure (bytes in, verdict out) and runs once per segment at start-up on the core
//! that owns the store. docs/formats/log.md has the byte layout and the crash-window table.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::record::{decode, Decoded, RecordView, RECORD_HEADER_BYTES};
use super::LogPosition;

pub const SEGMENT_MAGIC: [u8; 8] = *b"HBLOGSEG";
pub const SEGMENT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub version: U16,
    pub header_bytes: U16,
    /// The core (shard of the appliance) that owns this log.
    pub core: U16,
    pub reserved0: U16,
    pub segment_id: U64,
    pub created_unix: I64,
    pub reserved1: [u8; 28],
    /// CRC32C of the 60 bytes before it.
    pub header_crc32c: U32,
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_BYTES);

impl SegmentHeader {
    pub fn new(core: u16, segment_id: u64, created_unix: i64) -> SegmentHeader {
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: U16::new(SEGMENT_VERSION),
            header_bytes: U16::new(SEGMENT_HEADER_BYTES as u16),
            core: U16::new(core),
            reserved0: U16::new(0),
            segment_id: U64::new(segment_id),
            created_unix: I64::new(created_unix),
            reserved1: [0; 28],
            header_crc32c: U32::new(0),
        };
        h.header_crc32c = U32::new(crc32c::crc32c(&h.as_bytes()[..SEGMENT_HEADER_BYTES - 4]));
        h
    }

    /// Parses and checks a header; the message says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let Ok((h, _)) = SegmentHeader::read_from_prefix(bytes) else {
            return Err(format!(
                "{} bytes is shorter than the {SEGMENT_HEADER_BYTES}-byte segment header",
                bytes.len()
            ));
        };
        if h.magic != SEGMENT_MAGIC {
            return Err("not a hongbao log segment (bad magic)".into());
        }
        if h.version.get() != SEGMENT_VERSION {
            return Err(format!(
                "segment version {} is not supported (this build reads {SEGMENT_VERSION})",
                h.version.get()
            ));
        }
        let computed = crc32c::crc32c(&h.as_bytes()[..SEGMENT_HEADER_BYTES - 4]);
        if computed != h.header_crc32c.get()
            || h.header_bytes.get() as usize != SEGMENT_HEADER_BYTES
        {
            return Err("segment header checksum mismatch: the header is damaged".into());
        }
        Ok(h)
    }
}

/// How a segment's data ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// Zeroed (never written) space follows the last record.
    Zeros,
    /// An incomplete or damaged record follows the last valid one and nothing valid comes after
    /// it: the trace of a write cut short by a crash. Safe to truncate at `valid_end`.
    Torn { reason: &'static str },
}

/// Result of scanning one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub records: u64,
    /// Offset just after the last valid record: where appending resumes.
    pub valid_end: u64,
    pub tail: Tail,
}

/// A damaged record with valid records after it: data in the middle of the log is lost or
/// altered, and recovery must not guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    /// Byte offset in the segment file of the first bad record.
    pub offset: u64,
    pub reason: &'static str,
    /// Offset of the next valid record found after it.
    pub next_valid: u64,
}

/// Scans a whole segment file (`bytes` includes the header), calling `visit` for every valid
/// record in order. A bad record followed only by garbage or zeros is a torn tail; a bad
/// record followed by any valid record is corruption.
pub fn scan(
    segment_id: u64,
    bytes: &[u8],
    mut visit: impl FnMut(LogPosition, RecordView<'_>),
) -> Result<Scan, Corruption> {
    let mut offset = SEGMENT_HEADER_BYTES.min(bytes.len());
    let mut records = 0;
    loop {
        match decode(segment_id, bytes, offset) {
            Decoded::Record(view, next) => {
                // A record moved by compaction keeps the position it was written at.
                let at = view.origin.map_or(offset as u64, u64::from);
                visit(
                    LogPosition {
                        segment: segment_id,
                        offset: at,
                    },
                    view,
                );
                records += 1;
                offset = next;
            }
            Decoded::End => {
                let tail = if offset >= bytes.len() {
                    Tail::Clean
                } else {
                    Tail::Zeros
                };
                // Zeroed space must really be empty to the end.
                if let Some(next_valid) = find_valid_after(segment_id, bytes, offset) {
                    return Err(Corruption {
                        offset: offset as u64,
                        reason: "zeroed bytes before valid records",
                        next_valid,
                    });
                }
                return Ok(Scan {
                    records,
                    valid_end: offset as u64,
                    tail,
                });
            }
            Decoded::Invalid(reason) => {
                if let Some(next_valid) = find_valid_after(segment_id, bytes, offset) {
                    return Err(Corruption {
                        offset: offset as u64,
                        reason,
                        next_valid,
                    });
                }
                return Ok(Scan {
                    records,
                    valid_end: offset as u64,
                    tail: Tail::Torn { reason },
                });
            }
        }
    }
}

/// Looks for any valid record starting after `offset`, at every byte position. A false
/// positive needs a 32-bit CRC seeded with this segment's id to match by chance; the scan only
/// runs on what follows a bad record, which after a crash is at most one write batch.
fn find_valid_after(segment_id: u64, bytes: &[u8], offset: usize) -> Option<u64> {
    let last = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (offset + 1..=last).find_map(|candidate| match decode(segment_id, bytes, candidate) {
        Decoded::Record(..) => Some(candidate as u64),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::encode;

    fn segment(id: u64, records: &[&[u8]]) -> Vec<u8> {
        let mut bytes = SegmentHeader::new(0, id, 0).as_bytes().to_vec();
        for (i, r) in records.iter().enumerate() {
            encode(id, 1, 7, i as u64, r, &mut bytes);
        }
        bytes
    }

    fn scan_all(id: u64, bytes: &[u8]) -> (Result<Scan, Corruption>, Vec<u64>) {
        let mut seqs = Vec::new();
        let result = scan(id, bytes, |_, view| seqs.push(view.seq));
        (result, seqs)
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader::new(3, 42, 99);
        assert_eq!(SegmentHeader::parse(h.as_bytes()), Ok(h));
        let mut bad = h.as_bytes().to_vec();
        bad[20] ^= 1;
        assert!(SegmentHeader::parse(&bad).unwrap_err().contains("damaged"));
        assert!(SegmentHeader::parse(b"HBLOG").is_err());
    }

    #[test]
    fn clean_zeros_and_torn_tails() {
        let bytes = segment(5, &[b"a", b"bb", b"ccc"]);
        let (r, seqs) = scan_all(5, &bytes);
        assert_eq!(r.unwrap().tail, Tail::Clean);
        assert_eq!(seqs, vec![0, 1, 2]);

        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 4096]);
        let r = scan_all(5, &zeros).0.unwrap();
        assert_eq!((r.tail, r.valid_end), (Tail::Zeros, bytes.len() as u64));

        // A crash in the middle of writing the last record.
        let mut torn = segment(5, &[b"a", b"bb", b"a longer last record"]);
        torn.truncate(torn.len() - 7);
        let (r, seqs) = scan_all(5, &torn);
        let r = r.unwrap();
        assert!(matches!(r.tail, Tail::Torn { .. }));
        assert_eq!(seqs, vec![0, 1]);
        assert_eq!(r.valid_end as usize, segment(5, &[b"a", b"bb"]).len());
    }

    #[test]
    fn damage_in_the_middle_is_corruption_with_offset() {
        let mut bytes = segment(5, &[b"first", b"second", b"third"]);
        let second = segment(5, &[b"first"]).len();
        bytes[second + RECORD_HEADER_BYTES + 2] ^= 0x10;
        let err = scan_all(5, &bytes).0.unwrap_err();
        assert_eq!(err.offset as usize, second);
        assert_eq!(err.reason, "record checksum mismatch");
        assert_eq!(
            err.next_valid as usize,
            segment(5, &[b"first", b"second"]).len()
        );
    }

    #[test]
    fn records_of_another_segment_do_not_count() {
        let bytes = segment(6, &[b"a", b"b"]);
        let (r, seqs) = scan_all(7, &bytes);
        assert!(matches!(r.unwrap().tail, Tail::Torn { .. }));
        assert!(seqs.is_empty());
    }
}
