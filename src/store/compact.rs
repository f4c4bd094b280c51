//! Log compaction (R24): rewrites one **sealed** segment of a core's log keeping only the
//! records a filter keeps, in their order, each marked with the offset it was first written at
//! (so every position a reader has seen, e.g. a `hongbao claims --from` resume point, stays
//! valid). The new file is written beside the old one, made durable, and renamed over it: a
//! crash leaves either the old segment or the new one, never a mix. The newest segment (the one
//! being appended to) is never compacted.
//!
//! Blocking file I/O: the server runs it on glommio's blocking thread pool, never on a core's
//! thread. What to keep is the caller's decision (for the server: docs/SAFETY.md, "Retention").

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::file::{check_header, segment_path, StoreError};
use super::record::{encode_moved, RecordView};
use super::segment::{scan, Tail, SEGMENT_HEADER_BYTES};

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    pub kept: u64,
    pub dropped: u64,
    /// Records `keep` asked to add.
    pub added: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Calls `visit` for every record of the sealed segment `id` (read-only), in order.
pub fn scan_segment(
    dir: &Path,
    core: u16,
    id: u64,
    visit: impl FnMut(crate::store::LogPosition, RecordView<'_>),
) -> Result<(), StoreError> {
    let path = segment_path(dir, id);
    let bytes = super::file::map_segment(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    check_header(&path, &bytes, id, core)?;
    scan(id, &bytes, visit).map_err(|e| StoreError::Corrupt {
        path,
        offset: e.offset,
        reason: e.reason,
        next_valid: e.next_valid,
    })?;
    Ok(())
}

/// When segment `id` was created (Unix seconds, from its header).
pub fn segment_created(dir: &Path, core: u16, id: u64) -> Result<i64, StoreError> {
    use std::io::Read;
    let path = segment_path(dir, id);
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    check_header(&path, &header, id, core)?;
    Ok(super::segment::SegmentHeader::parse(&header)
        .expect("checked")
        .created_unix
        .get())
}

/// The suffix of a compaction's temporary file (`<segment>.log.compact`); a leftover one (a
/// crash before the rename) is overwritten by the next compaction and ignored by readers.
pub const TEMP_SUFFIX: &str = ".compact";

/// Compacts segment `id` of `core`'s log in `dir`, keeping the records for which `keep` says
/// true; `keep` may also push records (kind, stream, seq; no payload) to write at that
/// record's position. Refuses the newest segment (segment `id + 1` must exist) and a segment
/// that does not scan clean. Writes nothing when every record is kept.
pub fn compact_segment(
    dir: &Path,
    core: u16,
    id: u64,
    mut keep: impl FnMut(&RecordView<'_>, &mut Vec<(u8, u64, u64)>) -> bool,
) -> Result<Compaction, StoreError> {
    let path = segment_path(dir, id);
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    if !segment_path(dir, id + 1).exists() {
        return Err(StoreError::BadSegment {
            path,
            message: "the newest segment is being appended to and cannot be compacted".into(),
        });
    }
    let bytes = super::file::map_segment(&path).map_err(io(&path))?;
    check_header(&path, &bytes, id, core)?;
    let mut out = Vec::with_capacity(bytes.len() / 4);
    out.extend_from_slice(&bytes[..SEGMENT_HEADER_BYTES]);
    let mut c = Compaction {
        bytes_before: bytes.len() as u64,
        ..Compaction::default()
    };
    let mut extra = Vec::new();
    let scanned = scan(id, &bytes, |position, view| {
        // Positions of a sealed segment are below its size limit (at most 4 GiB).
        let origin = u32::try_from(position.offset).expect("segment offsets fit in u32");
        extra.clear();
        let kept = keep(&view, &mut extra);
        for &(kind, stream, seq) in &extra {
            let added = RecordView {
                kind,
                stream,
                seq,
                payload: &[],
                origin: None,
            };
            encode_moved(id, &added, origin, &mut out);
            c.added += 1;
        }
        if kept {
            encode_moved(id, &view, origin, &mut out);
            c.kept += 1;
        } else {
            c.dropped += 1;
        }
    })
    .map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        offset: e.offset,
        reason: e.reason,
        next_valid: e.next_valid,
    })?;
    if scanned.tail != Tail::Clean {
        return Err(StoreError::DamagedSealedSegment {
            path,
            offset: scanned.valid_end,
            reason: format!("{:?}", scanned.tail),
        });
    }
    if c.dropped == 0 {
        c.bytes_after = c.bytes_before;
        return Ok(c);
    }
    let temp = path.with_extension(format!("log{TEMP_SUFFIX}"));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(io(&temp))?;
        file.write_all(&out).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
    }
    fs::rename(&temp, &path).map_err(io(&path))?;
    crate::fsutil::sync_parent(&path).map_err(io(&path))?;
    c.bytes_after = out.len() as u64;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::{read_log, FileLog, StoreOptions};
    use crate::store::LogPosition;

    fn options() -> StoreOptions {
        StoreOptions {
            segment_bytes_max: 2 << 20,
            ..StoreOptions::default()
        }
    }

    /// Every record of the log: (position, kind, seq).
    fn all(dir: &Path) -> Vec<(LogPosition, u8, u64)> {
        let mut v = Vec::new();
        read_log(dir, 0, LogPosition::default(), |p, r| {
            v.push((p, r.kind, r.seq))
        })
        .unwrap();
        v
    }

    #[test]
    fn compaction_keeps_positions_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, options(), |_, _| {}).unwrap();
        for seq in 0..200u64 {
            let kind = if seq % 3 == 0 { 3 } else { 16 };
            log.append(kind, 1, seq, &[seq as u8; 40_000]).unwrap();
            log.commit().unwrap();
        }
        drop(log);
        let before = all(dir.path());
        let segments = crate::store::file::list_segments(dir.path()).unwrap();
        assert!(segments.len() > 3, "{segments:?}");
        // The newest segment is refused.
        let newest = *segments.last().unwrap();
        assert!(compact_segment(dir.path(), 0, newest, |_, _| false).is_err());
        for &id in &segments[..segments.len() - 1] {
            let c = compact_segment(dir.path(), 0, id, |r, _| r.kind == 3).unwrap();
            assert!(c.dropped > 0 && c.bytes_after < c.bytes_before, "{c:?}");
            // Again: nothing left to drop, nothing written.
            let again = compact_segment(dir.path(), 0, id, |r, _| r.kind == 3).unwrap();
            assert_eq!((again.dropped, again.bytes_after), (0, c.bytes_after));
        }
        let after = all(dir.path());
        let expected: Vec<_> = before
            .iter()
            .filter(|(p, kind, _)| *kind == 3 || p.segment == newest)
            .copied()
            .collect();
        assert_eq!(after, expected, "same records at the same positions");
        // Resuming from a position inside a compacted segment skips what came before it.
        let from = expected[5].0;
        let mut resumed = Vec::new();
        read_log(dir.path(), 0, from, |p, _| resumed.push(p)).unwrap();
        assert_eq!(resumed[0], from);
        assert_eq!(resumed.len(), expected.len() - 5);
        // Recovery reads the compacted log and appends after it.
        let mut seen = 0;
        let (mut log, rec) = FileLog::open(dir.path(), 0, options(), |_, _| seen += 1).unwrap();
        assert_eq!(seen, expected.len());
        assert!(rec.truncated.is_none());
        log.append(3, 1, 999, b"after").unwrap();
        log.commit().unwrap();
        assert_eq!(all(dir.path()).last().unwrap().2, 999);
    }

    #[test]
    fn a_leftover_temporary_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), 0, options(), |_, _| {}).unwrap();
        for seq in 0..100u64 {
            log.append(16, 1, seq, &[1; 30_000]).unwrap();
            log.commit().unwrap();
        }
        drop(log);
        // A crash before the rename left a partial temporary file.
        let temp = segment_path(dir.path(), 0).with_extension("log.compact");
        std::fs::write(&temp, b"partial").unwrap();
        let before = all(dir.path());
        assert_eq!(before.len(), 100);
        let c = compact_segment(dir.path(), 0, 0, |r, _| r.seq % 2 == 0).unwrap();
        assert!(c.dropped > 0);
        assert!(!temp.exists());
        let after = all(dir.path());
        assert!(after
            .iter()
            .all(|(p, _, seq)| before.contains(&(*p, 16, *seq))));
    }
}
