//! Group commit as a state machine (sans-IO). Appends go to an in-memory buffer; the runtime
//! takes one batch at a time (all appends since the last batch, one contiguous write into one
//! segment), writes it, makes it durable (fdatasync or O_DSYNC), and reports completion. Only
//! then do the batch's records count as durable, and only then can a [`Durable`] be made for
//! them: acknowledging a claim requires one.
//!
//! Owned by one core; never shared. No clock, no files: drivers (the blocking
//! [`crate::store::file::FileLog`], later the glommio one) do the I/O.

use std::collections::VecDeque;

use zerocopy::IntoBytes;

use super::record::{encode, encoded_len, mark_batch_start, RECORD_PAYLOAD_MAX};
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::LogPosition;

/// Where a record landed: `start` is its first byte, `end` the byte after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub start: LogPosition,
    pub end: LogPosition,
}

/// Proof that `value` refers to records that are durable. Only [`LogWriter::durable`] makes
/// one, after the batch holding them completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable<T>(T);

impl<T> Durable<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// One write for the runtime: put `bytes` at `offset` of segment `segment` (creating the file
/// first when `create`), then make it durable, then call [`LogWriter::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// The core whose log this is.
    pub core: u16,
    pub segment: u64,
    pub offset: u64,
    pub create: bool,
    pub bytes: Vec<u8>,
    /// Position just after the batch; everything before it is durable once it completes.
    pub end: LogPosition,
    /// Whether it carries a record someone waits for promptly (anything but bulk records).
    pub urgent: bool,
}

/// Why an append was refused. The log is unchanged after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The payload exceeds the record limit.
    #[error("record payload of {0} bytes exceeds the {RECORD_PAYLOAD_MAX}-byte limit")]
    TooLarge(usize),
    /// Appended-but-not-durable bytes reached the bound: the disk is not keeping up; shed load.
    #[error("{0} bytes are waiting for the disk; refusing more until a batch completes")]
    Backlog(usize),
    /// The disk's free space is below its watermark; shed load until space is freed.
    #[error("the disk's free space is below its watermark (store.disk_free_min_mb)")]
    DiskLow,
}

pub struct LogWriter {
    core: u16,
    segment_bytes_max: u64,
    pending_bytes_max: usize,
    /// Segment receiving appends, and the end of what was appended to it.
    segment: u64,
    end: u64,
    /// Appended bytes not yet handed out, starting at `pending_offset` of `segment`.
    pending: Vec<u8>,
    pending_offset: u64,
    pending_create: bool,
    /// Batches cut at a segment roll, waiting their turn.
    queued: VecDeque<WriteBatch>,
    in_flight: Option<LogPosition>,
    durable: LogPosition,
    created_unix: i64,
    /// Where the creation time of each new segment comes from (None: `created_unix`).
    clock: Option<fn() -> i64>,
    /// Appends are bulk (see [`LogWriter::bulk`]).
    bulk: bool,
    /// `pending` holds a record that is not bulk.
    pending_urgent: bool,
    /// The disk is below its free-space watermark: [`LogWriter::append`] refuses.
    disk_low: bool,
    /// Appends refused because of it.
    disk_refused: u64,
}

impl LogWriter {
    /// A writer continuing segment `segment` at `end` (after recovery), or starting it when
    /// `end` is 0 (the header is then written with the first batch).
    pub fn new(
        core: u16,
        segment: u64,
        end: u64,
        segment_bytes_max: u64,
        pending_bytes_max: usize,
        created_unix: i64,
    ) -> LogWriter {
        assert!(
            segment_bytes_max > (SEGMENT_HEADER_BYTES + encoded_len(RECORD_PAYLOAD_MAX)) as u64
        );
        let mut writer = LogWriter {
            core,
            segment_bytes_max,
            pending_bytes_max,
            segment,
            end,
            pending: Vec::new(),
            pending_offset: end,
            pending_create: false,
            queued: VecDeque::new(),
            in_flight: None,
            durable: LogPosition {
                segment,
                offset: end,
            },
            created_unix,
            clock: None,
            bulk: false,
            pending_urgent: false,
            disk_low: false,
            disk_refused: 0,
        };
        if end == 0 {
            writer.start_segment(segment);
        }
        writer
    }

    /// Each segment started from now on records `clock()` (Unix seconds) as its creation
    /// time. Retention relies on it: a segment expires once its successor was created before
    /// the cutoff (`runtime::retention`), so a segment must never claim to be older than it
    /// is. Without a clock every segment records the time given at creation (tests).
    pub fn set_clock(&mut self, clock: fn() -> i64) {
        self.clock = Some(clock);
    }

    fn start_segment(&mut self, segment: u64) {
        if let Some(clock) = self.clock {
            self.created_unix = clock();
        }
        self.segment = segment;
        self.pending_offset = 0;
        self.pending_create = true;
        self.pending.extend_from_slice(
            SegmentHeader::new(self.core, segment, self.created_unix).as_bytes(),
        );
        self.end = SEGMENT_HEADER_BYTES as u64;
    }

    /// The core whose log this is.
    pub fn core(&self) -> u16 {
        self.core
    }

    /// The backlog bound given at creation.
    pub fn pending_bytes_max(&self) -> usize {
        self.pending_bytes_max
    }

    /// Bytes appended but not yet durable.
    pub fn backlog_bytes(&self) -> usize {
        self.pending.len() + self.queued.iter().map(|b| b.bytes.len()).sum::<usize>()
    }

    /// Appends a record; it becomes durable with the batch that carries it. Refused (the
    /// log unchanged) while the backlog is at its bound, or while the disk is low.
    pub fn append(
        &mut self,
        kind: u8,
        stream: u64,
        seq: u64,
        payload: &[u8],
    ) -> Result<Appended, AppendError> {
        let backlog = self.backlog_bytes();
        if backlog >= self.pending_bytes_max {
            return Err(AppendError::Backlog(backlog));
        }
        if self.disk_low {
            self.disk_refused += 1;
            return Err(AppendError::DiskLow);
        }
        self.append_control(kind, stream, seq, payload)
    }

    /// The runtime's verdict on the disk's free space (below the watermark: `true`). While
    /// it is low, [`LogWriter::append`] refuses and callers shed load as for a full backlog;
    /// control records still go ([`LogWriter::append_control`]).
    pub fn set_disk_low(&mut self, low: bool) {
        self.disk_low = low;
    }

    /// Appends refused because the disk was low, since the start.
    pub fn disk_refused(&self) -> u64 {
        self.disk_refused
    }

    /// Appends a small control record even over the backlog bound: records the server needs
    /// to make progress at all (issuing reservations, at most one per shard in flight), which
    /// must not be starved by the load the bound sheds.
    pub fn append_control(
        &mut self,
        kind: u8,
        stream: u64,
        seq: u64,
        payload: &[u8],
    ) -> Result<Appended, AppendError> {
        if payload.len() > RECORD_PAYLOAD_MAX {
            return Err(AppendError::TooLarge(payload.len()));
        }
        let len = encoded_len(payload.len()) as u64;
        if self.end + len > self.segment_bytes_max {
            self.roll();
        }
        let start = LogPosition {
            segment: self.segment,
            offset: self.end,
        };
        encode(self.segment, kind, stream, seq, payload, &mut self.pending);
        self.end += len;
        self.pending_urgent |= !self.bulk;
        Ok(Appended {
            start,
            end: LogPosition {
                segment: self.segment,
                offset: self.end,
            },
        })
    }

    /// Closes the current segment: its pending bytes become a batch of their own, and appends
    /// continue in the next segment.
    fn roll(&mut self) {
        self.cut_pending();
        self.start_segment(self.segment + 1);
    }

    fn cut_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut bytes = std::mem::take(&mut self.pending);
        // Its first record says so: recovery tells an unfinished last write from damage by
        // it (segment::scan).
        let first = if self.pending_create {
            SEGMENT_HEADER_BYTES
        } else {
            0
        };
        if bytes.len() > first {
            mark_batch_start(self.segment, &mut bytes, first);
        }
        let end = LogPosition {
            segment: self.segment,
            offset: self.pending_offset + bytes.len() as u64,
        };
        self.queued.push_back(WriteBatch {
            core: self.core,
            segment: self.segment,
            offset: self.pending_offset,
            create: self.pending_create,
            bytes,
            end,
            urgent: std::mem::take(&mut self.pending_urgent),
        });
        self.pending_offset = end.offset;
        self.pending_create = false;
    }

    /// Runs `f` with its appends marked bulk: records nobody waits for promptly, which
    /// [`LogWriter::take_urgent_batch`] leaves for a later batch.
    pub fn bulk<R>(&mut self, f: impl FnOnce(&mut LogWriter) -> R) -> R {
        self.bulk = true;
        let r = f(self);
        self.bulk = false;
        r
    }

    /// Appended records are waiting, all of them bulk.
    pub fn holds_only_bulk(&self) -> bool {
        self.queued.is_empty() && !self.pending.is_empty() && !self.pending_urgent
    }

    /// Like [`LogWriter::take_batch`], but None while everything waiting is bulk.
    pub fn take_urgent_batch(&mut self) -> Option<WriteBatch> {
        if self.holds_only_bulk() {
            return None;
        }
        self.take_batch()
    }

    /// The next batch to write, if none is in flight and there is anything to write. Everything
    /// appended so far goes into it (or into the queued batches before it, after a roll).
    pub fn take_batch(&mut self) -> Option<WriteBatch> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.queued.is_empty() {
            self.cut_pending();
        }
        let batch = self.queued.pop_front()?;
        self.in_flight = Some(batch.end);
        Some(batch)
    }

    /// The runtime reports that the batch ending at `end` is written and durable.
    pub fn complete(&mut self, end: LogPosition) {
        assert_eq!(
            self.in_flight,
            Some(end),
            "completed a batch that was not in flight"
        );
        assert!(
            end > self.durable,
            "durable position must only move forward"
        );
        self.in_flight = None;
        self.durable = end;
    }

    /// The end of everything appended so far (durable once a batch ending here completes).
    pub fn appended_end(&self) -> LogPosition {
        LogPosition {
            segment: self.segment,
            offset: self.end,
        }
    }

    /// Everything before this position is durable.
    pub fn durable_position(&self) -> LogPosition {
        self.durable
    }

    /// Proof of durability for `value` about the record appended as `appended`, if the record
    /// is durable yet.
    pub fn durable<T>(&self, appended: &Appended, value: T) -> Option<Durable<T>> {
        (appended.end <= self.durable).then_some(Durable(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::{scan, Tail};

    /// Applies batches to in-memory "files".
    fn apply(files: &mut Vec<Vec<u8>>, batch: &WriteBatch) {
        if batch.create {
            assert_eq!(batch.segment as usize, files.len());
            files.push(Vec::new());
        }
        let file = &mut files[batch.segment as usize];
        assert_eq!(file.len() as u64, batch.offset, "batches are contiguous");
        file.extend_from_slice(&batch.bytes);
    }

    static FAKE_NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1000);

    fn fake_now() -> i64 {
        FAKE_NOW.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn every_segment_records_when_it_was_started() {
        let mut w = LogWriter::new(0, 0, 0, 4 << 20, 8 << 20, 7);
        w.set_clock(fake_now);
        // A payload of 1.5 MiB: two fill a 4 MiB segment, the third rolls.
        let big = vec![1u8; 1 << 20];
        let mut files = Vec::new();
        for k in 0..6u64 {
            FAKE_NOW.store(1000 + 100 * k as i64, std::sync::atomic::Ordering::Relaxed);
            w.append(1, 1, k, &big).unwrap();
            while let Some(b) = w.take_batch() {
                apply(&mut files, &b);
                w.complete(b.end);
            }
        }
        assert!(files.len() >= 2);
        let created: Vec<i64> = files
            .iter()
            .map(|f| SegmentHeader::parse(f).unwrap().created_unix.get())
            .collect();
        // Segment 0 was started with the writer (the time given then); each later one by the
        // append that did not fit, at that append's time, never the writer's creation time.
        assert_eq!(created[0], 7);
        assert!(created[1] >= 1100, "{created:?}");
        for pair in created.windows(2) {
            assert!(pair[1] > pair[0], "{created:?}");
        }
    }

    #[test]
    fn group_commit_and_durable_proofs() {
        let mut w = LogWriter::new(0, 0, 0, 4 << 20, 1 << 20, 0);
        let a = w.append(1, 10, 0, b"first").unwrap();
        let b = w.append(1, 10, 1, b"second").unwrap();
        assert!(w.durable(&a, "claim a").is_none());
        let batch = w.take_batch().unwrap();
        assert!(batch.create);
        // Appends during the write go to the next batch; no second batch while one is in flight.
        let c = w.append(1, 11, 0, b"third").unwrap();
        assert!(w.take_batch().is_none());
        let mut files = Vec::new();
        apply(&mut files, &batch);
        w.complete(batch.end);
        assert_eq!(w.durable(&a, "claim a").unwrap().into_inner(), "claim a");
        assert!(w.durable(&b, ()).is_some());
        assert!(w.durable(&c, ()).is_none());
        let batch = w.take_batch().unwrap();
        assert!(!batch.create);
        apply(&mut files, &batch);
        w.complete(batch.end);
        assert!(w.durable(&c, ()).is_some());
        let mut seen = Vec::new();
        let s = scan(0, &files[0], |_, v| {
            seen.push((v.stream, v.seq, v.payload.to_vec()))
        })
        .unwrap();
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], (11, 0, b"third".to_vec()));
        // The first record of each batch says so, and only it.
        let starts: Vec<bool> = [a, b, c]
            .iter()
            .map(|r| crate::store::record::is_batch_start(&files[0], r.start.offset as usize))
            .collect();
        assert_eq!(starts, [true, false, true]);
    }

    #[test]
    fn bulk_records_wait_for_an_urgent_batch_only_when_asked() {
        let mut w = LogWriter::new(0, 0, 0, 4 << 20, 1 << 20, 0);
        let first = w.append(1, 1, 0, b"urgent").unwrap();
        let batch = w.take_urgent_batch().expect("urgent records go");
        assert!(batch.urgent);
        w.complete(batch.end);
        assert!(w.durable(&first, ()).is_some());
        // Nothing waiting: nothing held.
        assert!(!w.holds_only_bulk());
        let bulk = w.bulk(|w| {
            let first = w.append(1, 2, 0, b"bulk").unwrap();
            w.append_control(2, 2, 1, b"").unwrap();
            first
        });
        assert!(w.holds_only_bulk());
        assert!(w.take_urgent_batch().is_none());
        // An urgent record takes the bulk ones along, in log order.
        let urgent = w.append(1, 3, 0, b"urgent again").unwrap();
        assert!(!w.holds_only_bulk());
        let batch = w.take_urgent_batch().expect("urgent records go");
        assert!(batch.urgent);
        assert!(bulk.end <= batch.end && urgent.end == batch.end);
        w.complete(batch.end);
        // Bulk alone still goes when the caller does not hold it (its wait is over).
        let late = w.bulk(|w| w.append(1, 4, 0, b"bulk").unwrap());
        let batch = w.take_batch().expect("taken on demand");
        assert!(!batch.urgent);
        w.complete(batch.end);
        assert!(w.durable(&late, ()).is_some());
    }

    #[test]
    fn rolls_segments_and_bounds_the_backlog() {
        let max = (SEGMENT_HEADER_BYTES + encoded_len(RECORD_PAYLOAD_MAX)) as u64 + 1000;
        let mut w = LogWriter::new(0, 0, 0, max, 3 << 20, 0);
        let big = vec![5u8; RECORD_PAYLOAD_MAX];
        let first = w.append(2, 1, 0, &big).unwrap();
        let second = w.append(2, 1, 1, &big).unwrap();
        assert_eq!((first.start.segment, second.start.segment), (0, 1));
        assert!(matches!(
            w.append(2, 1, 2, &vec![0u8; RECORD_PAYLOAD_MAX + 1]),
            Err(AppendError::TooLarge(_))
        ));
        let _third = w.append(2, 1, 2, &big).unwrap();
        assert!(matches!(
            w.append(2, 1, 3, &big),
            Err(AppendError::Backlog(_))
        ));
        let mut files = Vec::new();
        while let Some(batch) = w.take_batch() {
            apply(&mut files, &batch);
            w.complete(batch.end);
        }
        assert_eq!(files.len(), 3);
        for (id, file) in files.iter().enumerate() {
            let s = scan(id as u64, file, |_, _| {}).unwrap();
            assert_eq!((s.records, s.tail), (1, Tail::Clean));
        }
        assert!(w.durable(&second, ()).is_some());
        assert!(w.append(2, 1, 3, &big).is_ok(), "backlog drained");
    }
}
