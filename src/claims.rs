//! `hongbao claims`: streams the claims in the per-core logs of a data directory, the
//! asynchronous queue to the payments side (R8, R11), as JSON lines with a resume position.
//!
//! Read-only and safe while a server is writing (see [`crate::store::file::read_log`]); runs
//! on the calling thread, one core directory after another.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use zerocopy::FromBytes;

use crate::ledger::{ClaimRecord, KIND_CLAIM};
use crate::store::file::read_log;
use crate::store::{LogPosition, StoreError};
use crate::ticket::EnvelopeId;

/// One claim as printed: a JSON object per line. docs/formats/claims.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimLine {
    pub core: u16,
    /// Where the record starts: `core:segment:offset`.
    pub position: String,
    /// Where reading resumes after it: pass it to `--from`.
    pub next: String,
    pub envelope_id: String,
    pub shard_ordinal: u32,
    pub index: u32,
    pub uid: u64,
    pub amount_cents: u32,
    pub batch_id: u16,
    pub key_id: u16,
    pub claimed_unix: u32,
    pub issuing_core: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `--from` value that is not `CORE:SEGMENT:OFFSET`.
    #[error("--from {0:?} is not CORE:SEGMENT:OFFSET (as printed in a claim's \"next\")")]
    BadPosition(String),
    /// A claim record whose payload is not a claim: the log was written by something else.
    #[error("core {core} position {position}: claim record of {bytes} bytes is malformed")]
    Malformed {
        core: u16,
        position: LogPosition,
        bytes: usize,
    },
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// A core log the data directory had is gone (`cores.json`).
    #[error("{0}")]
    Incomplete(String),
}

/// Parses `CORE:SEGMENT:OFFSET`.
pub fn parse_position(text: &str) -> Result<(u16, LogPosition), ClaimsError> {
    let bad = || ClaimsError::BadPosition(text.to_string());
    let mut parts = text.split(':');
    let (Some(core), Some(segment), Some(offset), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok((
        core.parse().map_err(|_| bad())?,
        LogPosition {
            segment: segment.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
        },
    ))
}

/// Core directories under `data`: `core-<k>`, sorted by k.
pub fn core_dirs(data: &Path) -> Result<Vec<(u16, PathBuf)>, ClaimsError> {
    let io = |source| ClaimsError::Io {
        path: data.to_path_buf(),
        source,
    };
    let mut cores = Vec::new();
    for entry in std::fs::read_dir(data).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if let Some(k) = name.to_str().and_then(|n| n.strip_prefix("core-")) {
            if let Ok(k) = k.parse::<u16>() {
                cores.push((k, entry.path()));
            }
        }
    }
    cores.sort();
    Ok(cores)
}

/// Writes every claim at or after `from` (per core) to `out`, one JSON object per line, and
/// returns the count and each core's resume position.
pub fn stream_claims(
    data: &Path,
    from: &BTreeMap<u16, LogPosition>,
    out: &mut impl Write,
) -> Result<(u64, BTreeMap<u16, LogPosition>), ClaimsError> {
    let mut count = 0;
    let mut ends = BTreeMap::new();
    let dirs = core_dirs(data)?;
    if let Some(listed) = crate::serve::cores::read(data).map_err(ClaimsError::Incomplete)? {
        let present: Vec<u16> = dirs.iter().map(|(k, _)| *k).collect();
        crate::serve::cores::check_listed(data, &listed, &present)
            .map_err(ClaimsError::Incomplete)?;
    }
    for (core, dir) in dirs {
        let start = from.get(&core).copied().unwrap_or(LogPosition {
            segment: 0,
            offset: 0,
        });
        let mut failure: Option<ClaimsError> = None;
        let end = read_log(&dir, core, start, |position, view| {
            if view.kind != KIND_CLAIM || failure.is_some() {
                return;
            }
            let Ok(c) = ClaimRecord::read_from_bytes(view.payload) else {
                failure = Some(ClaimsError::Malformed {
                    core,
                    position,
                    bytes: view.payload.len(),
                });
                return;
            };
            let envelope = EnvelopeId(c.envelope_id.get());
            let next = position.offset + 32 + view.payload.len() as u64;
            let line = ClaimLine {
                core,
                position: format!("{core}:{}:{}", position.segment, position.offset),
                next: format!("{core}:{}:{next}", position.segment),
                envelope_id: envelope.to_string(),
                shard_ordinal: envelope.shard_ordinal(),
                index: envelope.index(),
                uid: c.uid.get(),
                amount_cents: c.amount_cents.get(),
                batch_id: c.batch_id.get(),
                key_id: c.key_id.get(),
                claimed_unix: c.claimed_unix.get(),
                issuing_core: c.issuing_core.get(),
            };
            let mut text = serde_json::to_string(&line).expect("claim serializes");
            text.push('\n');
            if let Err(e) = out.write_all(text.as_bytes()) {
                failure = Some(ClaimsError::Output(e));
            }
            count += 1;
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        ends.insert(core, end);
    }
    Ok((count, ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileLog, StoreOptions};
    use zerocopy::little_endian::{U16, U32, U64};
    use zerocopy::IntoBytes;

    fn claim(envelope: EnvelopeId, uid: u64) -> ClaimRecord {
        ClaimRecord {
            envelope_id: U64::new(envelope.0),
            uid: U64::new(uid),
            amount_cents: U32::new(888),
            batch_id: U16::new(2),
            key_id: U16::new(7),
            claimed_unix: U32::new(1_800_000_000),
            issuing_core: U16::new(1),
            reserved: U16::new(0),
        }
    }

    #[test]
    fn streams_claims_of_every_core_and_resumes() {
        let data = tempfile::tempdir().unwrap();
        for core in 0..2u16 {
            let (mut log, _) = FileLog::open(
                &data.path().join(format!("core-{core}")),
                core,
                StoreOptions::default(),
                |_, _| {},
            )
            .unwrap();
            for i in 0..3u32 {
                let e = EnvelopeId::new(core as u32, i);
                log.append(
                    KIND_CLAIM,
                    core as u64,
                    i as u64,
                    claim(e, 100 + i as u64).as_bytes(),
                )
                .unwrap();
                // Other kinds are skipped.
                log.append(2, core as u64, 0, &[0; 8]).unwrap();
            }
            log.commit().unwrap();
        }
        let mut out = Vec::new();
        let (n, ends) = stream_claims(data.path(), &BTreeMap::new(), &mut out).unwrap();
        assert_eq!(n, 6);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["envelope_id"], "00000000:0");
        assert_eq!(lines[0]["uid"], 100);
        assert_eq!(lines[5]["core"], 1);
        // Resuming from a claim's "next" yields exactly the claims after it.
        let (core, pos) = parse_position(lines[1]["next"].as_str().unwrap()).unwrap();
        let mut out = Vec::new();
        let (n, _) = stream_claims(data.path(), &BTreeMap::from([(core, pos)]), &mut out).unwrap();
        assert_eq!(n, 1 + 3);
        // Resuming from the end positions yields nothing new.
        let mut out = Vec::new();
        assert_eq!(stream_claims(data.path(), &ends, &mut out).unwrap().0, 0);
        assert!(matches!(
            parse_position("1:2"),
            Err(ClaimsError::BadPosition(_))
        ));
    }

    #[test]
    fn does_not_touch_a_torn_tail() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("core-0");
        let (mut log, _) = FileLog::open(&dir, 0, StoreOptions::default(), |_, _| {}).unwrap();
        log.append(KIND_CLAIM, 0, 0, claim(EnvelopeId::new(0, 0), 1).as_bytes())
            .unwrap();
        log.commit().unwrap();
        drop(log);
        let path = crate::store::file::segment_path(&dir, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[9; 17]); // a batch being written
        std::fs::write(&path, &bytes).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            stream_claims(data.path(), &BTreeMap::new(), &mut out)
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "reader changed nothing"
        );
    }
}
