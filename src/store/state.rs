//! What a complete log is: the state file `<core dir>/log.state` beside a core's segments.
//!
//! The segments alone cannot tell a log that lost its end (a deleted newest segment, a
//! truncated or damaged last record) from a log that simply ends there. The state file
//! records what they cannot: the first and the newest segment the log has created, and a
//! **floor**, a position every record before which was in the log when it was last opened or
//! cleanly stopped. Recovery ([`super::file::FileLog::open`]) refuses to start when a segment
//! of `first..=last` is missing, or when the data of the newest segment ends before the floor.
//!
//! It is written (temporary file, fsync, rename, directory fsync) when it changes: when the
//! log is opened (the floor becomes the recovered end), when a new segment's first batch is
//! durable (before any of its records is acknowledged: `last` moves), and at a clean stop
//! (the floor becomes the durable end, and `clean` is set). docs/formats/log.md has the
//! bytes, docs/SAFETY.md the rule and its one window. Blocking I/O, on whichever thread owns
//! the log's files (start-up, the commit helper, the core at its stop).

use std::path::Path;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::LogPosition;

pub const STATE_FILE: &str = "log.state";
const STATE_MAGIC: [u8; 8] = *b"HBLOGSTA";
const STATE_VERSION: u16 = 1;
const STATE_BYTES: usize = 64;
/// `flags` bit: the log was stopped cleanly at `floor` (nothing was appended after it).
const FLAG_CLEAN: u32 = 1;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct StateBytes {
    magic: [u8; 8],
    version: U16,
    core: U16,
    flags: U32,
    first: U64,
    last: U64,
    floor_segment: U64,
    floor_offset: U64,
    reserved: [u8; 12],
    /// CRC32C of the 60 bytes before it.
    crc32c: U32,
}

const _: () = assert!(std::mem::size_of::<StateBytes>() == STATE_BYTES);

/// A core's log state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    pub core: u16,
    /// The oldest segment of the log: it and every later one up to `last` must exist.
    pub first: u64,
    /// The newest segment whose first batch was durable (and possibly acknowledged).
    pub last: u64,
    /// Every record before this position was in the log when it was last opened or stopped.
    pub floor: LogPosition,
    /// The log was stopped cleanly at `floor`.
    pub clean: bool,
}

impl LogState {
    fn encode(&self) -> [u8; STATE_BYTES] {
        let mut s = StateBytes {
            magic: STATE_MAGIC,
            version: U16::new(STATE_VERSION),
            core: U16::new(self.core),
            flags: U32::new(if self.clean { FLAG_CLEAN } else { 0 }),
            first: U64::new(self.first),
            last: U64::new(self.last),
            floor_segment: U64::new(self.floor.segment),
            floor_offset: U64::new(self.floor.offset),
            reserved: [0; 12],
            crc32c: U32::new(0),
        };
        s.crc32c = U32::new(crc32c::crc32c(&s.as_bytes()[..STATE_BYTES - 4]));
        let mut out = [0u8; STATE_BYTES];
        out.copy_from_slice(s.as_bytes());
        out
    }

    /// Parses and checks the file's bytes; the message says what is wrong.
    fn decode(bytes: &[u8]) -> Result<LogState, String> {
        let s = StateBytes::read_from_bytes(bytes)
            .map_err(|_| format!("{} bytes, not {STATE_BYTES}", bytes.len()))?;
        if s.magic != STATE_MAGIC {
            return Err("not a hongbao log state (bad magic)".into());
        }
        if s.version.get() != STATE_VERSION {
            return Err(format!(
                "version {} is not supported (this build reads {STATE_VERSION})",
                s.version.get()
            ));
        }
        if crc32c::crc32c(&s.as_bytes()[..STATE_BYTES - 4]) != s.crc32c.get() {
            return Err("checksum mismatch: the file is damaged".into());
        }
        let state = LogState {
            core: s.core.get(),
            first: s.first.get(),
            last: s.last.get(),
            floor: LogPosition {
                segment: s.floor_segment.get(),
                offset: s.floor_offset.get(),
            },
            clean: s.flags.get() & FLAG_CLEAN != 0,
        };
        if state.first > state.last || state.floor.segment > state.last {
            return Err(format!(
                "inconsistent: first {}, last {}, floor {}",
                state.first, state.last, state.floor
            ));
        }
        Ok(state)
    }
}

/// Checks the segment ids found in a log directory (consecutive, sorted) against its state:
/// every segment from `first` to `last` must be there; one more after `last` is a segment
/// whose creation the state did not record yet (nothing in it was acknowledged). Segments
/// without a state are refused unless `adopt`. The message names what is missing.
pub fn check_segments(
    state: Option<&LogState>,
    core: u16,
    ids: &[u64],
    adopt: bool,
) -> Result<(), String> {
    let segment = |id: u64| format!("segment {id:016x}.log");
    let Some(s) = state else {
        return match ids.first() {
            Some(&first) if !adopt => Err(format!(
                "{STATE_FILE} is missing beside {} segment(s) from {}: it says which segments \
                 and which end the log must have",
                ids.len(),
                segment(first)
            )),
            _ => Ok(()),
        };
    };
    if s.core != core {
        return Err(format!(
            "{STATE_FILE} belongs to core {}, not {core}",
            s.core
        ));
    }
    let (Some(&oldest), Some(&newest)) = (ids.first(), ids.last()) else {
        return Err(format!(
            "every segment is missing ({} to {}, as {STATE_FILE} records)",
            segment(s.first),
            segment(s.last)
        ));
    };
    if oldest > s.first {
        return Err(format!(
            "{} is missing: the log starts there ({STATE_FILE})",
            segment(s.first)
        ));
    }
    if oldest < s.first {
        return Err(format!(
            "{} is older than the log's first segment, {} ({STATE_FILE}): a file from elsewhere",
            segment(oldest),
            segment(s.first)
        ));
    }
    if newest < s.last {
        return Err(format!(
            "{} is missing: the log had written up to it ({STATE_FILE}; the newest present is {})",
            segment(s.last),
            segment(newest)
        ));
    }
    if newest > s.last + 1 {
        return Err(format!(
            "{} is newer than any segment the log created ({STATE_FILE} records {} as the \
             newest): a file from elsewhere",
            segment(newest),
            segment(s.last)
        ));
    }
    Ok(())
}

/// The state of the log in `dir`, `None` when the file does not exist.
pub fn read(dir: &Path) -> Result<Option<LogState>, String> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => LogState::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces the state of the log in `dir`, durably.
pub fn write(dir: &Path, state: &LogState) -> std::io::Result<()> {
    crate::fsutil::write_atomic(&dir.join(STATE_FILE), &state.encode())
}

/// Records that segment `segment` was created and its first batch is durable (the commit
/// driver, before anything in it is acknowledged). A log without a state file starts one.
pub fn record_segment(dir: &Path, core: u16, segment: u64) -> std::io::Result<()> {
    let state = match read(dir).map_err(std::io::Error::other)? {
        Some(s) => LogState {
            last: s.last.max(segment),
            clean: false,
            ..s
        },
        None => LogState {
            core,
            first: segment,
            last: segment,
            floor: LogPosition { segment, offset: 0 },
            clean: false,
        },
    };
    write(dir, &state)
}

/// Records a clean stop: everything up to `end` is durable and nothing follows it.
pub fn seal(dir: &Path, core: u16, end: LogPosition) -> std::io::Result<()> {
    let state = match read(dir).map_err(std::io::Error::other)? {
        Some(s) => LogState {
            floor: end,
            clean: true,
            ..s
        },
        // Nothing was ever written: there is no segment to seal.
        None if end.segment == 0 && end.offset == 0 => return Ok(()),
        None => LogState {
            core,
            first: 0,
            last: end.segment,
            floor: end,
            clean: true,
        },
    };
    write(dir, &state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let state = LogState {
            core: 3,
            first: 0,
            last: 7,
            floor: LogPosition {
                segment: 7,
                offset: 4096,
            },
            clean: true,
        };
        let bytes = state.encode();
        assert_eq!(LogState::decode(&bytes), Ok(state));
        for i in 0..STATE_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(LogState::decode(&bad).is_err(), "byte {i}");
        }
        assert!(LogState::decode(&bytes[..63]).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        record_segment(dir.path(), 3, 0).unwrap();
        record_segment(dir.path(), 3, 1).unwrap();
        let s = read(dir.path()).unwrap().unwrap();
        assert_eq!((s.first, s.last, s.clean), (0, 1, false));
        let end = LogPosition {
            segment: 1,
            offset: 100,
        };
        seal(dir.path(), 3, end).unwrap();
        let s = read(dir.path()).unwrap().unwrap();
        assert_eq!((s.first, s.last, s.floor, s.clean), (0, 1, end, true));
        assert!(!dir.path().join("log.state.tmp").exists());
    }

    #[test]
    fn segments_are_checked_against_the_state() {
        let state = LogState {
            core: 0,
            first: 0,
            last: 2,
            floor: LogPosition {
                segment: 2,
                offset: 64,
            },
            clean: true,
        };
        let check = |ids: &[u64]| check_segments(Some(&state), 0, ids, false);
        assert_eq!(check(&[0, 1, 2]), Ok(()));
        // Created, not yet recorded: nothing in it was acknowledged.
        assert_eq!(check(&[0, 1, 2, 3]), Ok(()));
        assert!(check(&[0, 1])
            .unwrap_err()
            .contains("0000000000000002.log is missing"));
        assert!(check(&[1, 2])
            .unwrap_err()
            .contains("0000000000000000.log is missing"));
        assert!(check(&[]).unwrap_err().contains("every segment is missing"));
        assert!(check(&[0, 1, 2, 3, 4])
            .unwrap_err()
            .contains("newer than any"));
        assert!(check_segments(Some(&state), 1, &[0, 1, 2], false).is_err());
        // No state: a new log, or one written before state files (adopted only when asked).
        assert_eq!(check_segments(None, 0, &[], false), Ok(()));
        assert!(check_segments(None, 0, &[0], false)
            .unwrap_err()
            .contains("log.state is missing"));
        assert_eq!(check_segments(None, 0, &[0], true), Ok(()));
    }
}
