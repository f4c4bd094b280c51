//! The big-envelope list (docs/formats/big.md): the largest envelopes of one variant (the
//! plan's `big_envelope_percent`, by amount), written by `gen` beside the keyring (mode 0600:
//! it says where the money is) and loaded by `settle --preload`, which then credits a claim of
//! one of them at once instead of waiting for reconciliation. Encoding, decoding and the
//! choice of the threshold; the files are read and written by the commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::manifest::Manifest;
use crate::ticket::{Keyring, ShardFile};

pub const BIG_MAGIC: [u8; 8] = *b"HBBIGENV";
pub const BIG_VERSION: u16 = 1;
/// Lists larger than this are refused on load (about 268 M entries).
pub const BIG_BYTES_MAX: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: U16,
    entry_bytes: U16,
    variant_index: U32,
    generation: [u8; 16],
    count: U64,
    threshold_cents: U32,
    reserved: U32,
}

const HEADER_BYTES: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_BYTES == 48);

/// One big envelope: what its ticket says.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BigEntry {
    pub envelope_id: U64,
    pub amount_cents: U32,
    pub batch_id: U16,
    pub key_id: U16,
}

const _: () = assert!(std::mem::size_of::<BigEntry>() == 16);

/// A decoded list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigList {
    pub generation: [u8; 16],
    pub variant_index: u32,
    /// Every listed envelope holds at least this many cents.
    pub threshold_cents: u32,
    pub entries: Vec<BigEntry>,
}

/// Where `gen` puts the list of `variant`: beside the keyring, `<keyring stem>.<variant>.big`.
pub fn list_path(keyring: &Path, variant: &str) -> PathBuf {
    let stem = keyring
        .file_stem()
        .map_or_else(|| "keyring".into(), |s| s.to_string_lossy().into_owned());
    keyring.with_file_name(format!("{stem}.{variant}.big"))
}

/// The smallest amount such that the envelopes of at least that amount are at least
/// `percent` of all (ties included); None when `percent` is 0 or there is nothing.
pub fn threshold(histogram: &BTreeMap<u32, u64>, percent: u32) -> Option<u32> {
    let total: u64 = histogram.values().sum();
    if percent == 0 || total == 0 {
        return None;
    }
    let wanted = (total * u64::from(percent)).div_ceil(100);
    let mut seen = 0u64;
    for (&amount, &n) in histogram.iter().rev() {
        seen += n;
        if seen >= wanted {
            return Some(amount);
        }
    }
    histogram.keys().next().copied()
}

impl BigList {
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            magic: BIG_MAGIC,
            version: U16::new(BIG_VERSION),
            entry_bytes: U16::new(16),
            variant_index: U32::new(self.variant_index),
            generation: self.generation,
            count: U64::new(self.entries.len() as u64),
            threshold_cents: U32::new(self.threshold_cents),
            reserved: U32::new(0),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * 16 + 4);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(self.entries.as_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a list; any damage is an error naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<BigList, String> {
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err("shorter than a header".into());
        };
        let header = body
            .get(..HEADER_BYTES)
            .and_then(|h| Header::read_from_bytes(h).ok())
            .ok_or("shorter than a header")?;
        if header.magic != BIG_MAGIC {
            return Err("not a big-envelope list (bad magic)".into());
        }
        if header.version.get() != BIG_VERSION || header.entry_bytes.get() != 16 {
            return Err(format!(
                "version {} with {}-byte entries is not supported",
                header.version.get(),
                header.entry_bytes.get()
            ));
        }
        let stored = u32::from_le_bytes(*crc);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): damaged"
            ));
        }
        let entries = <[BigEntry]>::ref_from_bytes(&body[HEADER_BYTES..])
            .map_err(|_| "the entries are not a whole number of 16-byte records".to_string())?;
        if entries.len() as u64 != header.count.get() {
            return Err(format!(
                "{} entries, the header says {}",
                entries.len(),
                header.count.get()
            ));
        }
        if entries
            .windows(2)
            .any(|w| w[0].envelope_id.get() >= w[1].envelope_id.get())
        {
            return Err("entries are not in strictly ascending envelope order".into());
        }
        Ok(BigList {
            generation: header.generation,
            variant_index: header.variant_index.get(),
            threshold_cents: header.threshold_cents.get(),
            entries: entries.to_vec(),
        })
    }

    pub fn load(path: &Path) -> Result<BigList, String> {
        let fail = |e: String| format!("{}: {e}", path.display());
        let len = std::fs::metadata(path)
            .map_err(|e| fail(e.to_string()))?
            .len();
        if len > BIG_BYTES_MAX {
            return Err(fail(format!(
                "{len} bytes is over the {BIG_BYTES_MAX}-byte limit"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        BigList::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Decrypts every ticket of the variant in `dir` and lists the largest `percent` of them.
pub fn select(
    dir: &Path,
    manifest: &Manifest,
    keyring: &Keyring,
    generation: [u8; 16],
    percent: u32,
) -> Result<BigList, String> {
    let mut shards: Vec<_> = manifest.shards.iter().collect();
    shards.sort_by_key(|s| s.ordinal);
    let open = |path: &str| -> Result<ShardFile, String> {
        ShardFile::open(&dir.join(path)).map_err(|e| e.to_string())
    };
    let mut histogram: BTreeMap<u32, u64> = BTreeMap::new();
    for s in &shards {
        for r in open(&s.path)?.records() {
            let t = r.open(keyring).map_err(|e| format!("{}: {e}", s.path))?;
            *histogram.entry(t.amount_cents).or_default() += 1;
        }
    }
    let mut list = BigList {
        generation,
        variant_index: manifest.variant_index,
        threshold_cents: 0,
        entries: Vec::new(),
    };
    let Some(threshold) = threshold(&histogram, percent) else {
        return Ok(list);
    };
    list.threshold_cents = threshold;
    for s in &shards {
        for r in open(&s.path)?.records() {
            let t = r.open(keyring).map_err(|e| format!("{}: {e}", s.path))?;
            if t.amount_cents >= threshold {
                list.entries.push(BigEntry {
                    envelope_id: U64::new(t.envelope_id.0),
                    amount_cents: U32::new(t.amount_cents),
                    batch_id: U16::new(t.batch_id),
                    key_id: U16::new(t.key_id),
                });
            }
        }
    }
    Ok(list)
}

/// Writes `list` to `path` with mode 0600 (temporary file, fsync, rename, directory fsync).
pub fn save(list: &BigList, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("big.tmp");
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(&list.to_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    crate::fsutil::sync_parent(path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_threshold_takes_the_largest_share_with_ties() {
        let h: BTreeMap<u32, u64> = [(100, 50), (200, 30), (500, 15), (900, 5)].into();
        assert_eq!(threshold(&h, 5), Some(900));
        assert_eq!(threshold(&h, 10), Some(500));
        assert_eq!(threshold(&h, 20), Some(500));
        assert_eq!(threshold(&h, 21), Some(200));
        assert_eq!(threshold(&h, 100), Some(100));
        assert_eq!(threshold(&h, 0), None);
        assert_eq!(threshold(&BTreeMap::new(), 10), None);
    }

    proptest! {
        #[test]
        fn lists_round_trip_and_damage_is_refused(
            ids in proptest::collection::btree_set(any::<u64>(), 0..50),
            flip in any::<usize>(),
        ) {
            let list = BigList {
                generation: [7; 16],
                variant_index: 2,
                threshold_cents: 5000,
                entries: ids.iter().map(|&id| BigEntry {
                    envelope_id: U64::new(id),
                    amount_cents: U32::new(6000),
                    batch_id: U16::new(1),
                    key_id: U16::new(3),
                }).collect(),
            };
            let bytes = list.to_bytes();
            prop_assert_eq!(BigList::from_bytes(&bytes).unwrap(), list);
            let mut bad = bytes.clone();
            let i = flip % bad.len();
            bad[i] ^= 1;
            prop_assert!(BigList::from_bytes(&bad).is_err());
            prop_assert!(BigList::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
