//! Ticket shard files (`tickets/<slot>/<host>/<core>.tix`, R6): a 128-byte header followed by
//! 26-byte records. Writing (one generator thread per file) and opening read-only through mmap
//! (`verify` now; later each server core maps only its own files).
//!
//! docs/formats/tickets.md is the byte-level reference, including crash windows.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::record::{TicketRecord, RECORD_BYTES};

pub const SHARD_MAGIC: [u8; 8] = *b"HBTICKET";
pub const SHARD_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 128;

/// The on-disk header. `header_crc32c` covers the 124 bytes before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ShardHeader {
    pub magic: [u8; 8],
    pub version: U16,
    pub header_bytes: U16,
    pub record_bytes: U16,
    pub variant: u8,
    pub reserved0: u8,
    pub shard_ordinal: U32,
    pub slot_index: U16,
    pub host_index: U16,
    pub core: U16,
    pub backup_host_index: U16,
    pub record_count: U64,
    pub amount_cents: U64,
    /// First 16 bytes of the plan's SHA-256.
    pub plan_fingerprint: [u8; 16],
    pub slot_start_unix: I64,
    pub slot_end_unix: I64,
    /// CRC32C of all record bytes.
    pub body_crc32c: U32,
    /// Random id of the `gen` run, also in its keyring and manifest.
    pub generation: [u8; 16],
    pub reserved1: [u8; 28],
    pub header_crc32c: U32,
}

const _: () = assert!(std::mem::size_of::<ShardHeader>() == HEADER_BYTES);

impl ShardHeader {
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..HEADER_BYTES - 4])
    }

    pub fn seal_crc(&mut self) {
        self.header_crc32c = U32::new(self.compute_crc());
    }
}

/// Why a shard file cannot be used. The path and, where it applies, the byte offset are named.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Header damaged, foreign file, or a version this build does not read.
    #[error("{path}: bad header: {message}")]
    Header { path: PathBuf, message: String },
    /// The file length does not match the record count in the header.
    #[error("{path}: {actual} bytes but the header promises {records} records = {expected} bytes ({})", if actual < expected { "truncated" } else { "trailing bytes" })]
    Length {
        path: PathBuf,
        records: u64,
        expected: u64,
        actual: u64,
    },
}

/// Streams records into `<path>.tmp`; [`ShardWriter::finish`] writes the header, fsyncs and
/// renames, so a crash never leaves a half-written file under the final name.
pub struct ShardWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    /// Unbuffered: callers hand over whole chunks (the generator writes 4,096 records, 104 KiB,
    /// per call), so a buffer would only add a copy.
    out: File,
    crc: u32,
    count: u64,
}

impl ShardWriter {
    pub fn create(path: &Path) -> Result<ShardWriter, ShardError> {
        let io = |source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let tmp_path = path.with_extension("tix.tmp");
        let file = File::create(&tmp_path).map_err(io)?;
        let mut out = file;
        out.write_all(&[0u8; HEADER_BYTES]).map_err(io)?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp_path,
            out,
            crc: 0,
            count: 0,
        })
    }

    pub fn write(&mut self, records: &[TicketRecord]) -> Result<(), ShardError> {
        let bytes = records.as_bytes();
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.count += records.len() as u64;
        self.out.write_all(bytes).map_err(|source| ShardError::Io {
            path: self.tmp_path.clone(),
            source,
        })
    }

    /// Completes the file. `header` must carry everything but the counts and checksums, which
    /// the writer fills in from what it wrote.
    pub fn finish(self, mut header: ShardHeader) -> Result<ShardHeader, ShardError> {
        let io = |source| ShardError::Io {
            path: self.tmp_path.clone(),
            source,
        };
        header.record_count = U64::new(self.count);
        header.body_crc32c = U32::new(self.crc);
        header.seal_crc();
        let mut file = self.out;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(header.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&self.tmp_path, &self.path).map_err(io)?;
        Ok(header)
    }

    /// Removes the temporary file after a failure.
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// A shard file opened read-only through mmap, with its header and length checked.
/// Record bodies are not trusted until opened with the keyring.
pub struct ShardFile {
    pub path: PathBuf,
    map: Mmap,
    header: ShardHeader,
}

/// Checks a header read from a file of `file_bytes` bytes: magic, version, checksum, sizes, and
/// that the length matches the record count exactly.
pub fn check_header(path: &Path, bytes: &[u8], file_bytes: u64) -> Result<ShardHeader, ShardError> {
    let header_error = |message: String| ShardError::Header {
        path: path.to_path_buf(),
        message,
    };
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return Err(header_error(format!(
            "{} bytes is shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    };
    let header = ShardHeader::read_from_bytes(head).expect("128 bytes");
    if header.magic != SHARD_MAGIC {
        return Err(header_error("not a hongbao ticket file (bad magic)".into()));
    }
    if header.version.get() != SHARD_VERSION {
        return Err(header_error(format!(
            "version {} is not supported (this build reads {SHARD_VERSION})",
            header.version.get()
        )));
    }
    let computed = header.compute_crc();
    if computed != header.header_crc32c.get() {
        return Err(header_error(format!(
            "header checksum mismatch (stored {:08x}, computed {computed:08x}): the header is damaged",
            header.header_crc32c.get()
        )));
    }
    if header.header_bytes.get() as usize != HEADER_BYTES
        || header.record_bytes.get() as usize != RECORD_BYTES
    {
        return Err(header_error(format!(
            "header/record sizes {}/{} are not {HEADER_BYTES}/{RECORD_BYTES}",
            header.header_bytes.get(),
            header.record_bytes.get()
        )));
    }
    let records = header.record_count.get();
    let expected = records
        .checked_mul(RECORD_BYTES as u64)
        .and_then(|b| b.checked_add(HEADER_BYTES as u64))
        .ok_or_else(|| header_error(format!("record count {records} is impossible")))?;
    if file_bytes != expected {
        return Err(ShardError::Length {
            path: path.to_path_buf(),
            records,
            expected,
            actual: file_bytes,
        });
    }
    Ok(header)
}

fn open_checked(path: &Path) -> Result<(File, u64), ShardError> {
    let io = |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    if file_bytes < HEADER_BYTES as u64 {
        return Err(ShardError::Header {
            path: path.to_path_buf(),
            message: format!("{file_bytes} bytes is shorter than the {HEADER_BYTES}-byte header"),
        });
    }
    Ok((file, file_bytes))
}

impl ShardFile {
    pub fn open(path: &Path) -> Result<ShardFile, ShardError> {
        let (file, file_bytes) = open_checked(path)?;
        // SAFETY: the mapping is read-only and ticket files are never modified in place once
        // `gen` has renamed them into place. Truncation by another process while mapped would
        // raise SIGBUS on access; tools that must survive hostile files (verify) use
        // `ShardReader` instead, which reads with plain read(2).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let header = check_header(path, &map, file_bytes)?;
        Ok(ShardFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    pub fn records(&self) -> &[TicketRecord] {
        <[TicketRecord]>::ref_from_bytes(&self.map[HEADER_BYTES..]).expect("length checked at open")
    }

    /// CRC32C of the record bytes, to compare with `header().body_crc32c`.
    pub fn body_crc(&self) -> u32 {
        crc32c::crc32c(&self.map[HEADER_BYTES..])
    }
}

/// Byte offset of record `index` in a shard file.
pub fn record_offset(index: u64) -> u64 {
    HEADER_BYTES as u64 + index * RECORD_BYTES as u64
}

/// Reads a shard file sequentially with read(2), in chunks, computing the body CRC on the way:
/// bounded memory whatever the file size, and a file changed underneath cannot crash the reader
/// (it shows up as a short read or a checksum mismatch).
pub struct ShardReader {
    pub path: PathBuf,
    file: File,
    header: ShardHeader,
    remaining: u64,
    crc: u32,
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<ShardReader, ShardError> {
        let (mut file, file_bytes) = open_checked(path)?;
        let mut bytes = [0u8; HEADER_BYTES];
        file.read_exact(&mut bytes)
            .map_err(|source| ShardError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let header = check_header(path, &bytes, file_bytes)?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            file,
            remaining: header.record_count.get(),
            header,
            crc: 0,
        })
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Replaces the content of `buffer` with up to `max` next records; returns false at the end.
    pub fn next_chunk(
        &mut self,
        buffer: &mut Vec<TicketRecord>,
        max: usize,
    ) -> Result<bool, ShardError> {
        let n = (self.remaining.min(max as u64)) as usize;
        // Reuse the buffer as it is: only records beyond its current length get zeroed.
        buffer.truncate(n);
        if n == 0 {
            return Ok(false);
        }
        buffer.resize(n, TicketRecord::new_zeroed());
        let bytes = buffer.as_mut_slice().as_mut_bytes();
        self.file
            .read_exact(bytes)
            .map_err(|source| ShardError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.remaining -= n as u64;
        Ok(true)
    }

    /// CRC32C of every record read so far (all of them once `next_chunk` returned false).
    pub fn body_crc(&self) -> u32 {
        self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{EnvelopeId, Ticket};
    use proptest::prelude::*;

    fn header() -> ShardHeader {
        ShardHeader {
            magic: SHARD_MAGIC,
            version: U16::new(SHARD_VERSION),
            header_bytes: U16::new(HEADER_BYTES as u16),
            record_bytes: U16::new(RECORD_BYTES as u16),
            variant: 0,
            reserved0: 0,
            shard_ordinal: U32::new(5),
            slot_index: U16::new(1),
            host_index: U16::new(2),
            core: U16::new(3),
            backup_host_index: U16::new(0),
            record_count: U64::new(0),
            amount_cents: U64::new(30),
            plan_fingerprint: [9; 16],
            slot_start_unix: I64::new(10),
            slot_end_unix: I64::new(20),
            body_crc32c: U32::new(0),
            generation: [4; 16],
            reserved1: [0; 28],
            header_crc32c: U32::new(0),
        }
    }

    fn write_sample(dir: &Path) -> PathBuf {
        let path = dir.join("0.tix");
        let mut w = ShardWriter::create(&path).unwrap();
        let records: Vec<TicketRecord> = (0..3)
            .map(|i| {
                TicketRecord::unsealed(&Ticket {
                    envelope_id: EnvelopeId::new(5, i),
                    amount_cents: 10,
                    batch_id: 1,
                    key_id: 1,
                })
            })
            .collect();
        w.write(&records).unwrap();
        w.finish(header()).unwrap();
        path
    }

    #[test]
    fn writer_and_both_readers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        assert!(!path.with_extension("tix.tmp").exists());
        let mapped = ShardFile::open(&path).unwrap();
        assert_eq!(mapped.records().len(), 3);
        assert_eq!(mapped.body_crc(), mapped.header().body_crc32c.get());
        let mut reader = ShardReader::open(&path).unwrap();
        let mut buf = Vec::new();
        let mut seen = 0;
        while reader.next_chunk(&mut buf, 2).unwrap() {
            seen += buf.len();
        }
        assert_eq!(seen, 3);
        assert_eq!(reader.body_crc(), mapped.header().body_crc32c.get());
        assert_eq!(reader.header(), mapped.header());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Hostile files: any change to a header byte, or any length, is refused with an error,
        /// never a panic, by both readers.
        #[test]
        fn damaged_files_are_refused_not_crashed(position in 0usize..HEADER_BYTES, bit in 0u8..8, cut in 0usize..300) {
            let dir = tempfile::tempdir().unwrap();
            let path = write_sample(dir.path());
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[position] ^= 1 << bit;
            std::fs::write(&path, &bytes).unwrap();
            prop_assert!(ShardFile::open(&path).is_err());
            prop_assert!(ShardReader::open(&path).is_err());
            bytes[position] ^= 1 << bit;
            bytes.truncate(cut.min(bytes.len()));
            std::fs::write(&path, &bytes).unwrap();
            let whole = cut >= HEADER_BYTES + 3 * RECORD_BYTES;
            prop_assert_eq!(ShardFile::open(&path).is_ok(), whole);
            prop_assert_eq!(ShardReader::open(&path).is_ok(), whole);
        }
    }
}
