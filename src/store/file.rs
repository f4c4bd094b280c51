//! Blocking driver of one core's log directory: recovery at open, then appends and group
//! commits with pwrite + fdatasync. Used by tools (the claims reader, tests, crash tests) and
//! at server start-up; runs on whichever thread calls it, never shared between threads.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::RecordView;
use super::segment::{scan, Scan, SegmentHeader, Tail, SEGMENT_HEADER_BYTES};
use super::state;
use super::writer::{AppendError, Appended, Durable, LogWriter, WriteBatch};
use super::LogPosition;

/// A segment's bytes mapped read-only: the file's own pages, which the kernel may drop and
/// read again, instead of a heap copy (a 256 MiB segment read with `fs::read` doubled the
/// server's memory while it recovered, and while it compacted: docs/BENCHMARKS.md).
///
/// Only for a directory no other process changes: the server holds the data directory's
/// exclusive lock (`serve::setup`) and truncates a segment only after dropping its mapping, so
/// no mapped page can vanish under a reader (which would be SIGBUS). `read_log`, which runs
/// beside a live server, reads into memory instead.
pub(crate) enum SegmentBytes {
    Mapped(memmap2::Mmap),
    /// An empty file (mapping zero bytes fails).
    Empty,
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Empty => &[],
        }
    }
}

pub(crate) fn map_segment(path: &Path) -> std::io::Result<SegmentBytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(SegmentBytes::Empty);
    }
    // SAFETY: see `SegmentBytes`: nothing truncates or rewrites this file in place while the
    // mapping lives (compaction writes a new file and renames it over, which leaves this
    // mapping on the old inode).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    // Read once front to back: let the kernel read ahead and drop pages behind.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(SegmentBytes::Mapped(map))
}

/// Default size at which a segment is closed and the next one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 << 20;
/// Default bound on appended-but-not-durable bytes before appends are refused.
pub const PENDING_BYTES_DEFAULT: usize = 64 << 20;

#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub segment_bytes_max: u64,
    pub pending_bytes_max: usize,
    /// Open a log that has segments but no state file (written by a build from before state
    /// files), and start its state from what is found. Otherwise such a log is refused: its
    /// state file was lost, and with it what the log's end must be.
    pub adopt: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            pending_bytes_max: PENDING_BYTES_DEFAULT,
            adopt: false,
        }
    }
}

/// Why the store cannot open or write. Refusals name the file and the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", crate::fsutil::describe_write_error(path, source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A damaged record with valid records after it: not a torn tail. Starting would silently
    /// drop records that may have been acknowledged.
    #[error("{path}: corrupt record at byte {offset} ({reason}), yet a valid record follows at byte {next_valid}; refusing to start because records after this point may have been acknowledged. See docs/formats/log.md, \"When the store refuses to start\"")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
        next_valid: u64,
    },
    /// A segment that is not the newest does not end exactly after its last record.
    #[error("{path}: segment is not the newest but its data ends early at byte {offset} ({reason}); refusing to start. See docs/formats/log.md, \"When the store refuses to start\"")]
    DamagedSealedSegment {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment header is damaged or belongs elsewhere (another core, another id).
    #[error("{path}: {message}")]
    BadSegment { path: PathBuf, message: String },
    /// The segments or the state file do not make a complete log (log.state).
    #[error("{dir}: {message}; refusing to start: acknowledged records may be in what is missing. See docs/formats/log.md, \"When the store refuses to start\"")]
    Incomplete { dir: PathBuf, message: String },
    /// The newest segment's data ends before the floor of the state file: records that were
    /// in the log when it was last opened or cleanly stopped are gone or damaged.
    #[error("{path}: the log's data ends at byte {end} ({reason}), but it held records up to byte {floor} when it was last {}; refusing to start: acknowledged records were lost or damaged. See docs/formats/log.md, \"When the store refuses to start\"", if *clean { "stopped (cleanly)" } else { "started" })]
    LostEnd {
        path: PathBuf,
        end: u64,
        floor: u64,
        clean: bool,
        reason: &'static str,
    },
    /// Segment numbers are not consecutive: a segment file is missing.
    #[error(
        "{dir}: segment {missing:016x}.log is missing between existing segments; refusing to start"
    )]
    Gap { dir: PathBuf, missing: u64 },
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Where appending resumes.
    pub end: LogPosition,
    /// A torn tail that was cut off: file, offset cut at, bytes discarded, why.
    pub truncated: Option<Truncated>,
    /// The log had segments but no state file, and was opened with `adopt`.
    pub adopted: bool,
    /// Whether the log's last stop was clean (`None`: no state file before this opening).
    pub clean: Option<bool>,
}

/// A cut tail: file, offset cut at, bytes discarded, why.
pub type Truncated = (PathBuf, u64, u64, &'static str);

pub struct FileLog {
    dir: PathBuf,
    writer: LogWriter,
    current: Option<OpenSegment>,
}

/// Zeroed space a segment file is extended by, ahead of its data, when a small write reaches
/// past the space prepared before: the writes after it only overwrite, so their fdatasync has
/// no file size and no block allocation to make durable, only the data (a third less time
/// per small commit measured on ext4, docs/BENCHMARKS.md). The write that extends pays for
/// the zeros (one in several: a small batch is at most a quarter of this).
pub const PREALLOC_BYTES: u64 = 64 << 10;
/// Largest batch that extends the zeroed space. A bigger batch spreads the cost of the file's
/// metadata over many records already, and writing as many zeros as data would halve what
/// the disk takes in (measured: 2,048 claims per commit went from 3.6-5.6 M to 2.3 M
/// records/s with every batch extending by 1 MiB); it is appended as before.
pub const PREALLOC_BATCH_MAX: usize = 16 << 10;
static ZEROS: [u8; PREALLOC_BYTES as usize] = [0; PREALLOC_BYTES as usize];

/// The segment file a log's writer keeps open between batches (the server's commit helper,
/// or [`FileLog`]).
#[derive(Debug)]
pub struct OpenSegment {
    id: u64,
    file: File,
    /// The end of the data written so far.
    written: u64,
    /// The file's length: zeroed space from `written` to here.
    len: u64,
    /// Extended ahead with zeros: a segment of version 2 (a version 1 segment continued by
    /// this build is not, since its readers take zeros before records for damage).
    prealloc: bool,
}

impl OpenSegment {
    /// Opens existing segment `id` to continue it at `written`.
    fn open(path: &Path, id: u64, written: u64) -> std::io::Result<OpenSegment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let version = match file.read_exact_at(&mut header, 0) {
            Ok(()) => SegmentHeader::parse(&header).map_or(0, |h| h.version.get()),
            Err(_) => 0,
        };
        Ok(OpenSegment {
            id,
            file,
            written,
            len,
            prealloc: version >= 2,
        })
    }
}

/// `<dir>/<segment id as 16 hex digits>.log`
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.log"))
}

/// Writes `batch` into its segment file in `dir` and makes it durable: pwrite + fdatasync and,
/// for a new segment, an fsync of the directory. `open` is the segment file kept between
/// batches; a batch for another segment opens its file there (creates it, for a new segment:
/// the previous segment's last batch completed before this one was handed out). Used by
/// [`FileLog`] and by the server's commit helper.
///
/// A batch that creates a segment is recorded in the log's state file
/// ([`state::record_segment`]) once durable, before it returns.
///
/// A batch of at most [`PREALLOC_BATCH_MAX`] that reaches past the zeroed space of the file
/// extends it by [`PREALLOC_BYTES`] of zeros in the same commit. Before a new segment is
/// created, the previous one is cut to the end of its data (durably), so only the newest
/// segment ever holds zeroed space.
pub fn write_batch_durably(
    dir: &Path,
    open: &mut Option<OpenSegment>,
    batch: &WriteBatch,
) -> Result<(), StoreError> {
    let path = segment_path(dir, batch.segment);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    if batch.create {
        if let Some(sealed) = open.as_mut().filter(|s| s.len > s.written) {
            let sealed_io = |source| StoreError::Io {
                path: segment_path(dir, sealed.id),
                source,
            };
            sealed.file.set_len(sealed.written).map_err(sealed_io)?;
            sealed.file.sync_all().map_err(sealed_io)?;
            sealed.len = sealed.written;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        *open = Some(OpenSegment {
            id: batch.segment,
            file,
            written: 0,
            len: 0,
            prealloc: true,
        });
    } else if open.as_ref().map(|s| s.id) != Some(batch.segment) {
        *open = Some(OpenSegment::open(&path, batch.segment, batch.offset).map_err(io)?);
    }
    let segment = open.as_mut().expect("opened above");
    segment
        .file
        .write_all_at(&batch.bytes, batch.offset)
        .map_err(io)?;
    let end = batch.offset + batch.bytes.len() as u64;
    segment.written = end;
    if end > segment.len {
        segment.len = end;
        if segment.prealloc && batch.bytes.len() <= PREALLOC_BATCH_MAX {
            // Up to a page boundary: the writes after it fill whole pages.
            let ahead = (end + PREALLOC_BYTES) / 4096 * 4096 - end;
            let zeros = &ZEROS[..ahead as usize];
            match segment.file.write_all_at(zeros, end) {
                Ok(()) => segment.len = end + zeros.len() as u64,
                Err(_) => {
                    // No room for zeros (a full disk, say): the data is written; the file
                    // simply grows with its writes from now on.
                    segment.prealloc = false;
                    segment.len = segment.file.metadata().map_or(end, |m| m.len().max(end));
                }
            }
        }
    }
    segment.file.sync_data().map_err(io)?;
    if batch.create {
        crate::fsutil::sync_parent(&path).map_err(io)?;
        // Before anything in the new segment is acknowledged: from now on the log must
        // have it.
        state::record_segment(dir, batch.core, batch.segment).map_err(state_io(dir))?;
    }
    Ok(())
}

/// Segment ids present in `dir`, sorted. Files that are not segments are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".log") {
            if hex.len() == 16 {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Checks that `bytes` start with a valid header of segment `id` of `core`.
pub(crate) fn check_header(
    path: &Path,
    bytes: &[u8],
    id: u64,
    core: u16,
) -> Result<(), StoreError> {
    let h = SegmentHeader::parse(bytes).map_err(|message| StoreError::BadSegment {
        path: path.to_path_buf(),
        message,
    })?;
    if h.segment_id.get() != id || h.core.get() != core {
        return Err(StoreError::BadSegment {
            path: path.to_path_buf(),
            message: format!(
                "header says segment {} of core {}, expected segment {id} of core {core}",
                h.segment_id.get(),
                h.core.get()
            ),
        });
    }
    Ok(())
}

/// Reads the log of `core` in `dir` without changing anything, calling `visit` for every
/// record at or after `from`, and returns the position just after the last valid record.
/// Every record visited is durable (see `read_durably`).
/// Safe while the owner is appending: an incomplete or torn end of the newest segment is where
/// the reading stops (the writer may be in the middle of a batch). Damage anywhere else, a
/// segment the state file names missing, or a newest segment ending before its floor is
/// refused as at recovery.
pub fn read_log(
    dir: &Path,
    core: u16,
    from: LogPosition,
    mut visit: impl FnMut(LogPosition, RecordView<'_>),
) -> Result<LogPosition, StoreError> {
    // The state first: a segment the owner creates after this reading is newer than `last`.
    let incomplete = |message| StoreError::Incomplete {
        dir: dir.to_path_buf(),
        message,
    };
    let recorded = state::read(dir).map_err(incomplete)?;
    let ids = list_consecutive_segments(dir)?;
    if let Some(s) = &recorded {
        // The segments the state names must all be there (newer ones may follow: the owner
        // may be running).
        let known: Vec<u64> = ids.iter().copied().filter(|&id| id <= s.last).collect();
        state::check_segments(Some(s), core, &known, false).map_err(incomplete)?;
    }
    let mut end = from;
    for (i, &id) in ids.iter().enumerate() {
        if id < from.segment {
            continue;
        }
        let newest = i + 1 == ids.len();
        let path = segment_path(dir, id);
        let bytes = read_durably(&path, newest).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        if newest && bytes.len() < SEGMENT_HEADER_BYTES {
            break; // being created
        }
        check_header(&path, &bytes, id, core)?;
        let scanned = scan(id, &bytes, |position, view| {
            if position >= from {
                visit(position, view);
            }
        })
        .map_err(|c| StoreError::Corrupt {
            path: path.clone(),
            offset: c.offset,
            reason: c.reason,
            next_valid: c.next_valid,
        })?;
        if !newest && scanned.tail != Tail::Clean {
            return Err(StoreError::DamagedSealedSegment {
                path,
                offset: scanned.valid_end,
                reason: format!("{:?}", scanned.tail),
            });
        }
        if newest {
            check_floor(recorded.as_ref(), &path, id, scanned)?;
        }
        end = end.max(LogPosition {
            segment: id,
            offset: scanned.valid_end,
        });
    }
    Ok(end)
}

/// A segment's bytes, durable: the newest one is fdatasync'ed after it was read, so every
/// record read is on the disk before anyone acts on it. A reader beside a running server may
/// see a batch the server has written but not yet synced; were it lost to a power cut, its
/// envelopes would be claimable again (by someone else) after the restart, and a consumer that
/// credited the first claim would credit one the server never answered. Synced by the reader,
/// the batch survives, and recovery replays it. Older segments are durable already: the
/// owner starts a segment only after the last batch of the one before is synced.
fn read_durably(path: &Path, newest: bool) -> std::io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    if newest {
        file.sync_data()?;
    }
    Ok(bytes)
}

/// Segment ids present in `dir`, which must be consecutive: a gap means a missing segment.
fn list_consecutive_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let ids = list_segments(dir)?;
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StoreError::Gap {
                dir: dir.to_path_buf(),
                missing: pair[0] + 1,
            });
        }
    }
    Ok(ids)
}

/// The newest segment (`id`, at `path`, as scanned) must reach the floor of the log's state
/// when the floor is in it: records the log held at its last start or clean stop are gone or
/// damaged otherwise.
fn check_floor(
    state: Option<&state::LogState>,
    path: &Path,
    id: u64,
    scanned: Scan,
) -> Result<(), StoreError> {
    match state {
        Some(s) if s.floor.segment == id && scanned.valid_end < s.floor.offset => {
            Err(StoreError::LostEnd {
                path: path.to_path_buf(),
                end: scanned.valid_end,
                floor: s.floor.offset,
                clean: s.clean,
                reason: match scanned.tail {
                    Tail::Torn { reason } => reason,
                    Tail::Zeros => "zeroed space follows",
                    Tail::Clean => "the file ends",
                },
            })
        }
        _ => Ok(()),
    }
}

/// An I/O error of the log's state file.
fn state_io(dir: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: dir.join(state::STATE_FILE),
        source,
    }
}

/// Cuts whatever follows the data of the newest segment (file truncated and fsynced); what
/// was cut is reported unless it is the preallocated space of a version 2 segment.
fn cut_tail(path: &Path, scanned: Scan, len: u64) -> Result<Option<Truncated>, StoreError> {
    let report = match scanned.tail {
        Tail::Torn { reason } => Some(reason),
        Tail::Zeros if scanned.version < 2 => Some("zeroed space after the last record"),
        Tail::Zeros | Tail::Clean => None,
    };
    if scanned.tail != Tail::Clean {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
        file.set_len(scanned.valid_end).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(report.map(|reason| {
        (
            path.to_path_buf(),
            scanned.valid_end,
            len - scanned.valid_end,
            reason,
        )
    }))
}

impl FileLog {
    /// Opens (creating if needed) the log of `core` in `dir`: checks that the segments the
    /// log's state file names are all there ([`state`](super::state)), checks every segment,
    /// calls `visit` for every durable record in log order, truncates a torn tail of the newest
    /// segment (never below the state's floor), refuses to open on any other damage, and
    /// records the recovered end as the new floor.
    pub fn open(
        dir: &Path,
        core: u16,
        options: StoreOptions,
        mut visit: impl FnMut(LogPosition, RecordView<'_>),
    ) -> Result<(FileLog, Recovery), StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let incomplete = |message| StoreError::Incomplete {
            dir: dir.to_path_buf(),
            message,
        };
        let before = state::read(dir).map_err(incomplete)?;
        let ids = list_consecutive_segments(dir)?;
        state::check_segments(before.as_ref(), core, &ids, options.adopt).map_err(incomplete)?;
        let mut recovery = Recovery {
            segments: ids.len(),
            records: 0,
            end: LogPosition {
                segment: 0,
                offset: 0,
            },
            truncated: None,
            adopted: before.is_none() && !ids.is_empty(),
            clean: before.map(|s| s.clean),
        };
        let mut resume: Option<(u64, u64)> = None;
        // The end of the data of the newest segment that stays.
        let mut data_end: Option<LogPosition> = None;
        for (i, &id) in ids.iter().enumerate() {
            let newest = i + 1 == ids.len();
            let path = segment_path(dir, id);
            let bytes = map_segment(&path).map_err(io(&path))?;
            match check_header(&path, &bytes, id, core) {
                Err(e @ StoreError::BadSegment { .. }) if SegmentHeader::parse(&bytes).is_ok() => {
                    return Err(e)
                }
                Ok(()) => {}
                Err(StoreError::BadSegment { message, .. }) => {
                    // A newest segment whose creation was cut short holds nothing durable: its
                    // first batch (header included) never completed, so no record in it was
                    // acknowledged, and the state file never named it. Anything else with a
                    // bad header is damage.
                    let empty = scan(id, &bytes, |_, _| {}).map(|s| s.records == 0);
                    let len = bytes.len() as u64;
                    drop(bytes);
                    let recorded = before.is_some_and(|s| id <= s.last);
                    if newest && !recorded && matches!(empty, Ok(true)) {
                        fs::remove_file(&path).map_err(io(&path))?;
                        recovery.truncated = Some((path, 0, len, "segment creation cut short"));
                        recovery.segments -= 1;
                        resume = Some((id, 0));
                        break;
                    }
                    return Err(StoreError::BadSegment { path, message });
                }
                Err(other) => return Err(other),
            }
            let scanned = scan(id, &bytes, &mut visit).map_err(|c| StoreError::Corrupt {
                path: path.clone(),
                offset: c.offset,
                reason: c.reason,
                next_valid: c.next_valid,
            })?;
            recovery.records += scanned.records;
            if !newest && scanned.tail != Tail::Clean {
                return Err(StoreError::DamagedSealedSegment {
                    path,
                    offset: scanned.valid_end,
                    reason: format!("{:?}", scanned.tail),
                });
            }
            let len = bytes.len() as u64;
            // No mapped page may outlive a truncation below.
            drop(bytes);
            data_end = Some(LogPosition {
                segment: id,
                offset: scanned.valid_end,
            });
            if newest {
                check_floor(before.as_ref(), &path, id, scanned)?;
                recovery.truncated = cut_tail(&path, scanned, len)?;
                resume = Some((id, scanned.valid_end));
            }
        }
        if let Some(end) = data_end {
            // The recovered end is the log now: nothing before it may go missing.
            let after = state::LogState {
                core,
                first: ids[0],
                last: end.segment,
                floor: end,
                clean: false,
            };
            state::write(dir, &after).map_err(state_io(dir))?;
        }
        let (segment, end) = resume.unwrap_or((0, 0));
        let current = if end > 0 {
            let path = segment_path(dir, segment);
            Some(OpenSegment::open(&path, segment, end).map_err(io(&path))?)
        } else {
            None
        };
        recovery.end = LogPosition {
            segment,
            offset: end.max(SEGMENT_HEADER_BYTES as u64),
        };
        let mut writer = LogWriter::new(
            core,
            segment,
            end,
            options.segment_bytes_max,
            options.pending_bytes_max,
            crate::gen::now_unix(),
        );
        // Every later segment records when it was started (retention depends on it).
        writer.set_clock(crate::gen::now_unix);
        Ok((
            FileLog {
                dir: dir.to_path_buf(),
                writer,
                current,
            },
            recovery,
        ))
    }

    pub fn append(
        &mut self,
        kind: u8,
        stream: u64,
        seq: u64,
        payload: &[u8],
    ) -> Result<Appended, StoreError> {
        Ok(self.writer.append(kind, stream, seq, payload)?)
    }

    /// Writes and syncs every pending batch (group commit); returns the durable position.
    pub fn commit(&mut self) -> Result<LogPosition, StoreError> {
        while let Some(batch) = self.writer.take_batch() {
            self.write_batch(&batch)?;
            self.writer.complete(batch.end);
        }
        Ok(self.writer.durable_position())
    }

    fn write_batch(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        write_batch_durably(&self.dir, &mut self.current, batch)
    }

    pub fn durable<T>(&self, appended: &Appended, value: T) -> Option<Durable<T>> {
        self.writer.durable(appended, value)
    }

    /// The recovered writer, for a driver that does its own I/O (the server's glommio commit
    /// loop). Anything not yet committed (such as the header of a fresh segment) goes with it
    /// and is written by the new driver's first batch.
    pub fn into_writer(self) -> LogWriter {
        self.writer
    }

    pub fn durable_position(&self) -> LogPosition {
        self.writer.durable_position()
    }

    /// Commits everything and records a clean stop ([`state::seal`]): a later opening refuses
    /// a log whose data ends before this point.
    pub fn close(mut self) -> Result<LogPosition, StoreError> {
        let end = self.commit()?;
        state::seal(&self.dir, self.writer.core(), end).map_err(state_io(&self.dir))?;
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use zerocopy::IntoBytes;

    fn small() -> StoreOptions {
        StoreOptions {
            segment_bytes_max: (SEGMENT_HEADER_BYTES
                + super::super::record::encoded_len(super::super::record::RECORD_PAYLOAD_MAX))
                as u64
                + 4096,
            pending_bytes_max: 8 << 20,
            adopt: false,
        }
    }

    fn reopen(dir: &Path) -> Result<(Vec<(u64, u64)>, Recovery), StoreError> {
        let mut seen = Vec::new();
        let (_, r) = FileLog::open(dir, 0, small(), |_, v| seen.push((v.stream, v.seq)))?;
        Ok((seen, r))
    }

    #[test]
    fn append_commit_reopen_roll() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, r) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        assert_eq!(r.records, 0);
        for seq in 0..100u64 {
            let a = log
                .append(1, seq % 3, seq, &vec![seq as u8; 50_000])
                .unwrap();
            if seq % 10 == 9 {
                log.commit().unwrap();
                assert!(log.durable(&a, seq).is_some());
            }
        }
        drop(log);
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len(), 100);
        assert!(seen.iter().enumerate().all(|(i, &(_, s))| s == i as u64));
        assert!(r.segments > 1, "rolled into {} segments", r.segments);
        assert_eq!(r.truncated, None);
        // Appending continues after reopening.
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        log.append(1, 0, 100, b"more").unwrap();
        log.commit().unwrap();
        assert_eq!(reopen(dir.path()).unwrap().0.len(), 101);
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        for seq in 0..5 {
            log.append(1, 0, seq, b"durable claim").unwrap();
        }
        log.commit().unwrap();
        let good = log.durable_position().offset;
        drop(log);
        let path = segment_path(dir.path(), 0);
        let len = fs::metadata(&path).unwrap().len();
        // A crash mid-write: half of a record's bytes reached the disk (into the zeroed
        // space after the data).
        let mut half = Vec::new();
        super::super::record::encode(0, 1, 0, 5, b"never acknowledged", &mut half);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&half[..20], good).unwrap();
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len(), 5);
        let (p, at, discarded, _) = r.truncated.unwrap();
        assert_eq!((p, at, discarded), (path.clone(), good, len - good));
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
        // Reopening again finds a clean log.
        assert_eq!(reopen(dir.path()).unwrap().1.truncated, None);
    }

    #[test]
    fn damage_in_the_middle_refuses_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        let mut second = None;
        for seq in 0..5 {
            let a = log.append(1, 0, seq, b"claim").unwrap();
            if seq == 1 {
                second = Some(a.start.offset);
            }
        }
        log.commit().unwrap();
        drop(log);
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[second.unwrap() as usize + 33] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = reopen(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("corrupt record at byte {}", second.unwrap())),
            "{message}"
        );
        assert!(message.contains("0000000000000000.log"), "{message}");
        assert!(message.contains("refusing to start"), "{message}");
    }

    #[test]
    fn missing_segment_and_foreign_segment_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        let big = vec![1u8; super::super::record::RECORD_PAYLOAD_MAX];
        for seq in 0..3 {
            log.append(1, 0, seq, &big).unwrap();
            log.commit().unwrap();
        }
        drop(log);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![0, 1, 2]);
        let other = tempfile::tempdir().unwrap();
        fs::copy(segment_path(dir.path(), 0), segment_path(other.path(), 0)).unwrap();
        let adopting = StoreOptions {
            adopt: true,
            ..small()
        };
        assert!(matches!(
            FileLog::open(other.path(), 1, adopting, |_, _| {}),
            Err(StoreError::BadSegment { .. })
        ));
        fs::remove_file(segment_path(dir.path(), 1)).unwrap();
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::Gap { missing: 1, .. })
        ));
    }

    #[test]
    fn the_newest_segment_is_preallocated_and_a_sealed_one_is_cut_to_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        log.append(1, 0, 0, b"claim").unwrap();
        let end = log.commit().unwrap();
        let len = |id| fs::metadata(segment_path(dir.path(), id)).unwrap().len();
        // Zeroed space after the data, so the next commits only overwrite.
        let prepared = (end.offset + PREALLOC_BYTES) / 4096 * 4096;
        assert_eq!(len(0), prepared);
        let mut seq = 1;
        while seq < 200 {
            for _ in 0..10 {
                log.append(1, 0, seq, b"a claim of 32 bytes, more or less")
                    .unwrap();
                seq += 1;
            }
            log.commit().unwrap();
        }
        let sealed_end = log.durable_position();
        assert!(len(0) > sealed_end.offset);
        // A big batch does not extend: it is appended.
        let big = vec![1u8; super::super::record::RECORD_PAYLOAD_MAX];
        log.append(1, 0, seq, &big).unwrap();
        let newest = log.commit().unwrap();
        // It did not fit: segment 0 is sealed and ends exactly after its last record.
        assert_eq!(newest.segment, 1);
        assert_eq!(len(0), sealed_end.offset);
        assert_eq!(len(1), newest.offset);
        // A small batch extends the newest one again.
        log.append(1, 0, seq + 1, b"small").unwrap();
        let newest = log.commit().unwrap();
        assert!(len(1) > newest.offset);
        drop(log);
        // Reopening: every record, no torn tail reported, the zeroed space cut.
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len() as u64, seq + 2);
        assert_eq!(r.truncated, None);
        assert_eq!(len(1), newest.offset);
        // And appending goes on in preallocated space again.
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        log.append(1, 0, seq + 2, b"after").unwrap();
        log.commit().unwrap();
        assert!(len(1) > newest.offset + 32);
        assert_eq!(reopen(dir.path()).unwrap().0.len() as u64, seq + 3);
    }

    #[test]
    fn a_power_loss_in_the_last_write_loses_only_that_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        for seq in 0..5 {
            log.append(1, 0, seq, b"acknowledged").unwrap();
        }
        let acked = log.commit().unwrap();
        let mut last = Vec::new();
        for seq in 5..9 {
            last.push(log.append(1, 0, seq, &[7u8; 1500]).unwrap());
        }
        log.commit().unwrap();
        drop(log);
        // The write of the last batch was cut by a power loss: the sectors of its second
        // record stayed zero (preallocated), later ones reached the disk.
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        let lost = (last[1].start.offset as usize).next_multiple_of(512);
        bytes[lost..lost + 512].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(
            seen.len(),
            6,
            "the five acknowledged and the last write's first"
        );
        let (p, at, _, reason) = r.truncated.unwrap();
        assert_eq!((p, at), (path.clone(), last[1].start.offset));
        assert!(reason.contains("unfinished write"), "{reason}");
        assert!(acked.offset <= at);
        // A clean log afterwards.
        assert_eq!(reopen(dir.path()).unwrap().1.truncated, None);
    }

    #[test]
    fn a_version_1_segment_is_continued_without_preallocation() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = SegmentHeader::with_version(1, 0, 0, 0).as_bytes().to_vec();
        super::super::record::encode(0, 1, 0, 0, b"old build", &mut bytes);
        let path = segment_path(dir.path(), 0);
        fs::write(&path, &bytes).unwrap();
        // Written before state files: refused unless adopted.
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::Incomplete { .. })
        ));
        let adopting = StoreOptions {
            adopt: true,
            ..small()
        };
        let (mut log, r) = FileLog::open(dir.path(), 0, adopting, |_, _| {}).unwrap();
        assert_eq!(r.records, 1);
        assert!(r.adopted);
        log.append(1, 0, 1, b"new build").unwrap();
        let end = log.commit().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), end.offset);
        assert_eq!(reopen(dir.path()).unwrap().0.len(), 2);
    }

    #[test]
    fn cut_short_segment_creation_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        log.append(1, 0, 0, b"claim").unwrap();
        let end = log.commit().unwrap();
        drop(log);
        // The next segment's file was created but its header write was cut short (after the
        // previous segment was cut to its data, as the writer does before creating one).
        OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 0))
            .unwrap()
            .set_len(end.offset)
            .unwrap();
        fs::write(segment_path(dir.path(), 1), b"HBLOG").unwrap();
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len(), 1);
        assert!(r.truncated.is_some());
        assert!(!segment_path(dir.path(), 1).exists());
    }

    /// A log of three segments, cleanly stopped; returns its end.
    fn three_segments_stopped(dir: &Path) -> LogPosition {
        let (mut log, _) = FileLog::open(dir, 0, small(), |_, _| {}).unwrap();
        let big = vec![1u8; super::super::record::RECORD_PAYLOAD_MAX];
        for seq in 0..3 {
            log.append(1, 0, seq, &big).unwrap();
            log.commit().unwrap();
        }
        for seq in 3..8 {
            log.append(3, 0, seq, b"a claim").unwrap();
        }
        let end = log.close().unwrap();
        assert_eq!(list_segments(dir).unwrap(), vec![0, 1, 2]);
        end
    }

    #[test]
    fn a_missing_newest_or_first_segment_refuses() {
        let dir = tempfile::tempdir().unwrap();
        three_segments_stopped(dir.path());
        let newest = segment_path(dir.path(), 2);
        fs::rename(&newest, dir.path().join("aside")).unwrap();
        let e = reopen(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Incomplete { message, .. } if message.contains("0000000000000002.log is missing")),
            "{e}"
        );
        fs::rename(dir.path().join("aside"), &newest).unwrap();
        fs::remove_file(segment_path(dir.path(), 0)).unwrap();
        let e = reopen(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Incomplete { message, .. } if message.contains("0000000000000000.log is missing")),
            "{e}"
        );
        // The state file itself gone: refused too.
        let dir = tempfile::tempdir().unwrap();
        three_segments_stopped(dir.path());
        fs::remove_file(dir.path().join(state::STATE_FILE)).unwrap();
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::Incomplete { .. })
        ));
    }

    #[test]
    fn a_damaged_or_cut_end_after_a_clean_stop_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let end = three_segments_stopped(dir.path());
        let path = segment_path(dir.path(), end.segment);
        let clean = fs::read(&path).unwrap();
        // A flipped byte in the final record: it looks like a torn tail, but the log was
        // stopped cleanly after it.
        let mut bytes = clean.clone();
        bytes[end.offset as usize - 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let e = reopen(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StoreError::LostEnd { floor, clean: true, .. } if *floor == end.offset),
            "{e}"
        );
        assert!(e.to_string().contains("0000000000000002.log"), "{e}");
        // Nothing was cut.
        assert_eq!(fs::read(&path).unwrap(), bytes);
        // Cut at a record boundary: every record left is valid, yet the end is gone.
        fs::write(&path, &clean[..end.offset as usize - 39]).unwrap();
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::LostEnd { .. })
        ));
        // Restored, it opens; a crash's torn tail after the floor is still cut.
        fs::write(&path, &clean).unwrap();
        let (mut log, r) = FileLog::open(dir.path(), 0, small(), |_, _| {}).unwrap();
        assert_eq!(r.clean, Some(true));
        log.append(3, 0, 8, b"another claim").unwrap();
        let at = log.commit().unwrap().offset;
        drop(log); // a crash: no clean stop
        let mut half = Vec::new();
        super::super::record::encode(2, 3, 0, 9, b"never acknowledged", &mut half);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&half[..20], at).unwrap();
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len(), 9);
        assert_eq!(r.clean, Some(false));
        assert!(r.truncated.is_some());
    }

    #[test]
    fn a_segment_created_but_not_yet_recorded_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let end = three_segments_stopped(dir.path());
        // A crash between a new segment's first durable batch and the state's update: the
        // state names segment 2 as the newest (cut to its data, as the writer does before
        // creating the next), segment 3 is there.
        OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 2))
            .unwrap()
            .set_len(end.offset)
            .unwrap();
        let mut bytes = SegmentHeader::new(0, 3, 0).as_bytes().to_vec();
        super::super::record::encode(3, 3, 0, 8, b"unanswered", &mut bytes);
        fs::write(segment_path(dir.path(), 3), &bytes).unwrap();
        let (seen, r) = reopen(dir.path()).unwrap();
        assert_eq!(seen.len(), 9);
        assert_eq!(r.end.segment, 3);
        let s = state::read(dir.path()).unwrap().unwrap();
        assert_eq!((s.last, s.clean), (3, false));
        assert!(s.floor > end);
    }
}
