//! Segment files and their recovery scan. A segment is a 64-byte header followed by records;
//! segments of one core are numbered consecutively and only the newest is ever appended to.
//!
//! The scan is pure (bytes in, verdict out) and runs once per segment at start-up on the core
//! that owns the store. docs/formats/log.md has the byte layout and the crash-window table.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::record::{decode, is_batch_start, Decoded, RecordView, RECORD_HEADER_BYTES};
use super::LogPosition;

pub const SEGMENT_MAGIC: [u8; 8] = *b"HBLOGSEG";
/// The version this build writes. Version 2: the first record of every write batch carries
/// [`super::record::FLAG_BATCH_START`], and the newest segment may hold zeroed (preallocated)
/// space after its data. Version 1 (written before 2026-12-02) is read with the stricter rule
/// of [`scan`].
pub const SEGMENT_VERSION: u16 = 2;
/// A lost sector of an unfinished write reads as zeros (the space was preallocated); the
/// unit a device writes atomically is at least this large.
const SECTOR_BYTES: usize = 512;
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
        SegmentHeader::with_version(SEGMENT_VERSION, core, segment_id, created_unix)
    }

    /// A header of an older `version` (tests of how old segments are read).
    pub fn with_version(
        version: u16,
        core: u16,
        segment_id: u64,
        created_unix: i64,
    ) -> SegmentHeader {
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: U16::new(version),
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
        if !(1..=SEGMENT_VERSION).contains(&h.version.get()) {
            return Err(format!(
                "segment version {} is not supported (this build reads 1 to {SEGMENT_VERSION})",
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
    /// Zeroed (never written, or preallocated) space follows the last record.
    Zeros,
    /// An incomplete or damaged record follows the last valid one and nothing valid comes after
    /// it: the trace of a write cut short by a crash. Safe to truncate at `valid_end`.
    Torn { reason: &'static str },
}

/// Result of scanning one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The segment's format version (from its header; 0 when there is no valid header).
    pub version: u16,
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
/// record in order. The data ends at the first place that holds no valid record (zeros, a
/// record cut short, damage). What follows decides the verdict:
/// - nothing valid: the end (zeroed space) or a torn tail (the trace of a write cut short);
/// - valid records: **corruption**, except in a version 2 segment where none of them starts a
///   write batch and the bad stretch holds a zeroed sector: that is one unfinished write (the
///   last batch, never acknowledged) whose sectors reached the disk out of order (a power
///   loss over preallocated space), and it is a torn tail too. A write is only issued after
///   the previous one is durable, so records of a later batch after the bad stretch prove it
///   was acknowledged data, and a changed byte without a lost sector is damage.
pub fn scan(
    segment_id: u64,
    bytes: &[u8],
    mut visit: impl FnMut(LogPosition, RecordView<'_>),
) -> Result<Scan, Corruption> {
    let version = SegmentHeader::parse(bytes).map_or(0, |h| h.version.get());
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
                let tail = match after_bad_spot(segment_id, bytes, offset, version) {
                    After::Nothing => tail,
                    After::UnfinishedWrite => Tail::Torn {
                        reason: UNFINISHED_WRITE,
                    },
                    After::Valid(next_valid) => {
                        return Err(Corruption {
                            offset: offset as u64,
                            reason: "zeroed bytes before valid records",
                            next_valid,
                        })
                    }
                };
                return Ok(Scan {
                    version,
                    records,
                    valid_end: offset as u64,
                    tail,
                });
            }
            Decoded::Invalid(reason) => {
                let reason = match after_bad_spot(segment_id, bytes, offset, version) {
                    After::Nothing => reason,
                    After::UnfinishedWrite => UNFINISHED_WRITE,
                    After::Valid(next_valid) => {
                        return Err(Corruption {
                            offset: offset as u64,
                            reason,
                            next_valid,
                        })
                    }
                };
                return Ok(Scan {
                    version,
                    records,
                    valid_end: offset as u64,
                    tail: Tail::Torn { reason },
                });
            }
        }
    }
}

const UNFINISHED_WRITE: &str =
    "an unfinished write: zeroed sectors, then records of the same write batch";

/// What follows the first bad spot of a segment.
enum After {
    /// No valid record.
    Nothing,
    /// Valid records of the same (last, unfinished) write batch after a zeroed sector.
    UnfinishedWrite,
    /// Valid records that prove damage; the first one's offset.
    Valid(u64),
}

fn after_bad_spot(segment_id: u64, bytes: &[u8], offset: usize, version: u16) -> After {
    let Some(first) = find_valid_after(segment_id, bytes, offset) else {
        return After::Nothing;
    };
    if version < 2 {
        return After::Valid(first);
    }
    // Every valid record after the bad spot must belong to the write it is in: none may
    // start a batch.
    let mut at = first as usize;
    loop {
        if is_batch_start(bytes, at) {
            return After::Valid(first);
        }
        let Decoded::Record(_, next) = decode(segment_id, bytes, at) else {
            unreachable!("find_valid_after found a record at {at}");
        };
        at = match decode(segment_id, bytes, next) {
            Decoded::Record(..) => next,
            _ => match find_valid_after(segment_id, bytes, next) {
                Some(p) => p as usize,
                None => break,
            },
        };
    }
    // A lost sector lies wholly between the bad spot and the first valid record after it.
    let start = offset.next_multiple_of(SECTOR_BYTES);
    let lost_sector = (start..first as usize).step_by(SECTOR_BYTES).any(|s| {
        s + SECTOR_BYTES <= first as usize && bytes[s..s + SECTOR_BYTES].iter().all(|&b| b == 0)
    });
    if lost_sector {
        After::UnfinishedWrite
    } else {
        After::Valid(first)
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
    use proptest::prelude::*;

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

    /// A segment of `version` written as `batches` (the first record of each marked as the
    /// writer does for version 2), and every record's offset.
    fn written(version: u16, batches: &[&[&[u8]]]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = SegmentHeader::with_version(version, 0, 5, 0)
            .as_bytes()
            .to_vec();
        let mut offsets = Vec::new();
        for batch in batches {
            let first = bytes.len();
            for r in batch.iter() {
                offsets.push(bytes.len());
                encode(5, 1, 7, offsets.len() as u64 - 1, r, &mut bytes);
            }
            if version >= 2 {
                crate::store::record::mark_batch_start(5, &mut bytes, first);
            }
        }
        (bytes, offsets)
    }

    /// Zeroes the 512-byte sectors wholly inside `range` (a lost write of a power loss).
    fn lose_sectors(bytes: &mut [u8], range: std::ops::Range<usize>) -> usize {
        let start = range.start.next_multiple_of(SECTOR_BYTES);
        let end = range.end / SECTOR_BYTES * SECTOR_BYTES;
        assert!(end > start, "no whole sector in {range:?}");
        bytes[start..end].fill(0);
        end - start
    }

    #[test]
    fn an_unfinished_last_write_with_lost_sectors_is_a_torn_tail_in_version_2() {
        let big = [9u8; 1500];
        let batches: &[&[&[u8]]] = &[&[b"acknowledged", b"also"], &[&big, &big, &big, b"end"]];
        let (mut bytes, at) = written(2, batches);
        bytes.extend_from_slice(&[0; 4096]); // preallocated space
                                             // The sectors of the second record of the last write never reached the disk; the
                                             // ones after did.
        lose_sectors(&mut bytes, at[3]..at[4]);
        let (r, seqs) = scan_all(5, &bytes);
        let r = r.unwrap();
        assert_eq!(seqs, vec![0, 1, 2], "records before the lost sectors");
        assert_eq!(r.valid_end as usize, at[3]);
        assert_eq!(
            r.tail,
            Tail::Torn {
                reason: UNFINISHED_WRITE
            }
        );
        assert_eq!(r.version, 2);

        // The same in a version 1 segment is refused: its records carry no batch marks.
        let (mut old, at) = written(1, batches);
        lose_sectors(&mut old, at[3]..at[4]);
        let err = scan_all(5, &old).0.unwrap_err();
        assert_eq!(
            (err.offset as usize, err.next_valid as usize),
            (at[3], at[4])
        );
    }

    #[test]
    fn valid_records_of_a_later_write_after_lost_sectors_are_corruption() {
        let big = [9u8; 1500];
        // The lost sectors are in the first write; the second write was only issued after the
        // first was durable, so the first one was acknowledged: damage, not a torn write.
        let (mut bytes, at) = written(2, &[&[&big, &big, &big], &[b"later", b"write"]]);
        lose_sectors(&mut bytes, at[1]..at[2]);
        let err = scan_all(5, &bytes).0.unwrap_err();
        assert_eq!(err.offset as usize, at[1]);
        assert_eq!(err.next_valid as usize, at[2]);
    }

    #[test]
    fn a_changed_byte_in_the_last_write_is_corruption_without_a_lost_sector() {
        let (mut bytes, at) = written(2, &[&[b"one", b"two", b"three", b"four"]]);
        bytes[at[1] + RECORD_HEADER_BYTES] ^= 1;
        let err = scan_all(5, &bytes).0.unwrap_err();
        assert_eq!(
            (err.offset as usize, err.next_valid as usize),
            (at[1], at[2])
        );
        assert_eq!(err.reason, "record checksum mismatch");
    }

    #[test]
    fn version_2_zeros_after_the_data_are_the_end() {
        let (mut bytes, _) = written(2, &[&[b"one"], &[b"two", b"three"]]);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 1 << 16]);
        let (r, seqs) = scan_all(5, &bytes);
        let r = r.unwrap();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!((r.tail, r.valid_end as usize), (Tail::Zeros, end));
        let mut header = bytes[..SEGMENT_HEADER_BYTES].to_vec();
        header[8] = 3;
        assert!(SegmentHeader::parse(&header).is_err());
    }

    /// A version 2 segment of `batches` (payload sizes; payload bytes from `seed`), then
    /// `spare` bytes of preallocated zeros. Returns it and each batch's byte range.
    fn batched(batches: &[Vec<usize>], seed: u8, spare: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut bytes = SegmentHeader::new(0, 5, 0).as_bytes().to_vec();
        let mut ranges = Vec::new();
        let mut seq = 0u64;
        for batch in batches {
            let start = bytes.len();
            for &len in batch {
                let payload: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
                    .collect();
                encode(5, 1, 7, seq, &payload, &mut bytes);
                seq += 1;
            }
            crate::store::record::mark_batch_start(5, &mut bytes, start);
            ranges.push((start, bytes.len()));
        }
        bytes.resize(bytes.len() + spare, 0);
        (bytes, ranges)
    }

    fn batch_sizes() -> impl Strategy<Value = Vec<Vec<usize>>> {
        proptest::collection::vec(proptest::collection::vec(0usize..2500, 1..6), 2..6)
    }

    proptest! {
        /// A power loss during the last write leaves any of its sectors zero (preallocated
        /// space): recovery starts, keeps every record of the earlier (acknowledged) batches,
        /// and keeps only genuine records.
        #[test]
        fn lost_sectors_of_the_last_write_never_refuse_nor_lose_acknowledged_records(
            batches in batch_sizes(),
            seed: u8,
            lost in proptest::collection::vec(any::<proptest::sample::Index>(), 1..8),
            spare in 0usize..5000,
        ) {
            let (mut bytes, ranges) = batched(&batches, seed, spare);
            let (start, end) = *ranges.last().unwrap();
            // Sectors that hold only bytes of the last write (or the zeros after it).
            let first = start.next_multiple_of(SECTOR_BYTES);
            let sectors: Vec<usize> = (first..bytes.len().max(end))
                .step_by(SECTOR_BYTES)
                .filter(|s| s + SECTOR_BYTES <= bytes.len())
                .collect();
            prop_assume!(!sectors.is_empty());
            for i in &lost {
                let s = sectors[i.index(sectors.len())];
                bytes[s..s + SECTOR_BYTES].fill(0);
            }
            let acked: usize = batches[..batches.len() - 1].iter().map(Vec::len).sum();
            let mut seqs = Vec::new();
            let r = scan(5, &bytes, |_, v| seqs.push(v.seq));
            let r = r.map_err(|c| TestCaseError::fail(format!("refused: {c:?}")))?;
            prop_assert!(seqs.len() >= acked, "{} of {acked} acknowledged records", seqs.len());
            prop_assert!(seqs.iter().enumerate().all(|(i, &s)| s == i as u64));
            prop_assert!(r.valid_end as usize >= ranges[ranges.len() - 2].1);
        }

        /// A lost sector inside an acknowledged batch (a later batch was written after it) is
        /// damage: recovery refuses, naming where.
        #[test]
        fn a_lost_sector_before_a_later_write_refuses(
            batches in batch_sizes(),
            seed: u8,
            which: proptest::sample::Index,
            at: proptest::sample::Index,
        ) {
            let (mut bytes, ranges) = batched(&batches, seed, 4096);
            let (start, end) = ranges[which.index(ranges.len() - 1)];
            let sectors: Vec<usize> = (start.next_multiple_of(SECTOR_BYTES)..end)
                .step_by(SECTOR_BYTES)
                .filter(|s| s + SECTOR_BYTES <= end)
                .collect();
            prop_assume!(!sectors.is_empty());
            let s = sectors[at.index(sectors.len())];
            bytes[s..s + SECTOR_BYTES].fill(0);
            let err = scan(5, &bytes, |_, _| {});
            prop_assert!(err.is_err(), "{:?}", err);
            let err = err.unwrap_err();
            prop_assert!((err.offset as usize) < s + SECTOR_BYTES && err.offset as usize >= start);
        }
    }

    #[test]
    fn records_of_another_segment_do_not_count() {
        let bytes = segment(6, &[b"a", b"b"]);
        let (r, seqs) = scan_all(7, &bytes);
        assert!(matches!(r.unwrap().tail, Tail::Torn { .. }));
        assert!(seqs.is_empty());
    }
}
