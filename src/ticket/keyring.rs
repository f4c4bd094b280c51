//! The keyring (R5): every AES-128 key of an event with the shard file it seals, stored apart
//! from the ticket files in a checksummed file of mode 0600.
//!
//! Written once by `gen` (main thread, after all shard threads finish); loaded read-only by
//! `verify` and later by each server process. docs/formats/keyring.md is the byte reference.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes::cipher::KeyInit;
use aes::Aes128;
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const KEYRING_MAGIC: [u8; 8] = *b"HBKEYRNG";
pub const KEYRING_VERSION: u16 = 1;
/// Key ids are u16; a keyring never holds more than this many keys.
pub const KEYRING_KEYS_MAX: usize = u16::MAX as usize;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct KeyringHeader {
    magic: [u8; 8],
    version: U16,
    entry_bytes: U16,
    key_count: U32,
    plan_fingerprint: [u8; 32],
    seed: U64,
    created_unix: I64,
    generation: [u8; 16],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct KeyringEntry {
    key_id: U16,
    reserved: U16,
    shard_ordinal: U32,
    key: [u8; 16],
}

const HEADER_BYTES: usize = std::mem::size_of::<KeyringHeader>();
const ENTRY_BYTES: usize = std::mem::size_of::<KeyringEntry>();
const _: () = assert!(HEADER_BYTES == 80 && ENTRY_BYTES == 24);

/// One key and the shard file it was made for.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: u16,
    pub shard_ordinal: u32,
    pub key: [u8; 16],
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("KeyEntry")
            .field("key_id", &self.key_id)
            .field("shard_ordinal", &self.shard_ordinal)
            .finish_non_exhaustive()
    }
}

/// Why a keyring could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a keyring, or not one this build understands.
    #[error("keyring {path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The stored CRC32C does not match the content: the file is damaged.
    #[error("keyring {path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}); the file is damaged, restore it from its backup")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    /// Two entries share an id, or an id is 0: the keyring was not written by `gen`.
    #[error("keyring: {0}")]
    Entries(String),
    /// Refusing to replace an existing keyring: its keys may be the only way to open tickets.
    #[error(
        "keyring {0} already exists; refusing to overwrite keys (use --force, or another path)"
    )]
    Exists(PathBuf),
}

/// A loaded keyring with a ready AES cipher per key.
pub struct Keyring {
    pub plan_fingerprint: [u8; 32],
    /// The master seed of the generation, so an audit can regenerate the amounts.
    pub seed: u64,
    /// Random id of the `gen` run that made these keys; the same id is in every file header,
    /// manifest and batch config of that run.
    pub generation: [u8; 16],
    entries: Vec<KeyEntry>,
    ciphers: Vec<Aes128>,
    /// `slot_of[key_id]` is 1 + the index of the key in `entries`, or 0 when absent.
    slot_of: Vec<u32>,
}

impl Keyring {
    pub fn new(
        plan_fingerprint: [u8; 32],
        seed: u64,
        mut entries: Vec<KeyEntry>,
    ) -> Result<Keyring, KeyringError> {
        entries.sort_by_key(|e| e.key_id);
        if entries.len() > KEYRING_KEYS_MAX {
            return Err(KeyringError::Entries(format!(
                "{} keys; at most {KEYRING_KEYS_MAX}",
                entries.len()
            )));
        }
        let mut slot_of = vec![0u32; 1 << 16];
        for (i, e) in entries.iter().enumerate() {
            if e.key_id == 0 {
                return Err(KeyringError::Entries("key id 0 is reserved".into()));
            }
            if slot_of[e.key_id as usize] != 0 {
                return Err(KeyringError::Entries(format!(
                    "key id {} appears twice",
                    e.key_id
                )));
            }
            slot_of[e.key_id as usize] = i as u32 + 1;
        }
        let ciphers = entries.iter().map(|e| Aes128::new(&e.key.into())).collect();
        Ok(Keyring {
            plan_fingerprint,
            seed,
            generation: [0; 16],
            entries,
            ciphers,
            slot_of,
        })
    }

    /// Sets the generation id (see [`Keyring::generation`]).
    pub fn with_generation(mut self, generation: [u8; 16]) -> Keyring {
        self.generation = generation;
        self
    }

    /// The cipher of key `key_id`, or `None` when the keyring has no such key.
    #[inline]
    pub fn cipher(&self, key_id: u16) -> Option<&Aes128> {
        match self.slot_of[key_id as usize] {
            0 => None,
            slot => Some(&self.ciphers[slot as usize - 1]),
        }
    }

    pub fn entry(&self, key_id: u16) -> Option<&KeyEntry> {
        match self.slot_of[key_id as usize] {
            0 => None,
            slot => Some(&self.entries[slot as usize - 1]),
        }
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Encodes the keyring file: header, entries sorted by key id, CRC32C trailer.
    pub fn to_bytes(&self, created_unix: i64) -> Vec<u8> {
        let header = KeyringHeader {
            magic: KEYRING_MAGIC,
            version: U16::new(KEYRING_VERSION),
            entry_bytes: U16::new(ENTRY_BYTES as u16),
            key_count: U32::new(self.entries.len() as u32),
            plan_fingerprint: self.plan_fingerprint,
            seed: U64::new(self.seed),
            created_unix: I64::new(created_unix),
            generation: self.generation,
        };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        bytes.extend_from_slice(header.as_bytes());
        for e in &self.entries {
            let entry = KeyringEntry {
                key_id: U16::new(e.key_id),
                reserved: U16::new(0),
                shard_ordinal: U32::new(e.shard_ordinal),
                key: e.key,
            };
            bytes.extend_from_slice(entry.as_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a keyring file, checking magic, version, length and checksum.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Keyring, KeyringError> {
        let format = |message: String| KeyringError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (header, rest) = KeyringHeader::read_from_prefix(bytes).map_err(|_| {
            format(format!(
                "not a hongbao keyring: {} bytes is shorter than the {HEADER_BYTES}-byte header",
                bytes.len()
            ))
        })?;
        if header.magic != KEYRING_MAGIC {
            return Err(format(
                "not a hongbao keyring (bad magic); did you pass a ticket or manifest file?".into(),
            ));
        }
        if header.version.get() != KEYRING_VERSION {
            return Err(format(format!(
                "keyring version {} is not supported (this build reads {KEYRING_VERSION})",
                header.version.get()
            )));
        }
        if header.entry_bytes.get() as usize != ENTRY_BYTES {
            return Err(format(format!(
                "entry size {} is not {ENTRY_BYTES}",
                header.entry_bytes.get()
            )));
        }
        let count = header.key_count.get() as usize;
        let expected = HEADER_BYTES + count * ENTRY_BYTES + 4;
        if bytes.len() != expected {
            return Err(format(format!(
                "{} bytes, but {count} keys need exactly {expected}: truncated or padded",
                bytes.len()
            )));
        }
        let body_end = expected - 4;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&bytes[..body_end]);
        if stored != computed {
            return Err(KeyringError::Checksum {
                path: path.to_path_buf(),
                stored,
                computed,
            });
        }
        let entries = <[KeyringEntry]>::ref_from_bytes(&rest[..count * ENTRY_BYTES])
            .map_err(|_| format("entries are not a whole number of records".into()))?
            .iter()
            .map(|e| KeyEntry {
                key_id: e.key_id.get(),
                shard_ordinal: e.shard_ordinal.get(),
                key: e.key,
            })
            .collect();
        Ok(
            Keyring::new(header.plan_fingerprint, header.seed.get(), entries)?
                .with_generation(header.generation),
        )
    }

    /// Loads a keyring file. The second value is true when the file is readable by group or
    /// others, which callers should warn about.
    pub fn load(path: &Path) -> Result<(Keyring, bool), KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let limit = (HEADER_BYTES + KEYRING_KEYS_MAX * ENTRY_BYTES + 4) as u64;
        if meta.len() > limit {
            return Err(KeyringError::Format {
                path: path.to_path_buf(),
                message: format!("{} bytes is larger than any keyring", meta.len()),
            });
        }
        let bytes = fs::read(path).map_err(io)?;
        let too_open = meta.permissions().mode() & 0o077 != 0;
        Ok((Keyring::from_bytes(path, &bytes)?, too_open))
    }

    /// Writes the keyring with mode 0600 through a temporary file, fsync and rename, so a crash
    /// leaves either no keyring or a whole one. Refuses to replace an existing file unless
    /// `overwrite`.
    pub fn save(
        &self,
        path: &Path,
        created_unix: i64,
        overwrite: bool,
    ) -> Result<(), KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !overwrite && path.exists() {
            return Err(KeyringError::Exists(path.to_path_buf()));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir_all(parent).map_err(io)?;
        }
        let tmp = path.with_extension("keyring-tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&self.to_bytes(created_unix)).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io)?;
        crate::fsutil::sync_parent(path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(
            [3; 32],
            42,
            vec![
                KeyEntry {
                    key_id: 5,
                    shard_ordinal: 1,
                    key: [9; 16],
                },
                KeyEntry {
                    key_id: 2,
                    shard_ordinal: 0,
                    key: [8; 16],
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_corruption() {
        let path = Path::new("k");
        let bytes = ring().to_bytes(7);
        let back = Keyring::from_bytes(path, &bytes).unwrap();
        assert_eq!(back.entries(), ring().entries());
        assert_eq!(back.seed, 42);
        assert!(back.cipher(5).is_some() && back.cipher(3).is_none());
        let mut bad = bytes.clone();
        bad[90] ^= 1;
        assert!(matches!(
            Keyring::from_bytes(path, &bad),
            Err(KeyringError::Checksum { .. })
        ));
        assert!(matches!(
            Keyring::from_bytes(path, &bytes[..bytes.len() - 1]),
            Err(KeyringError::Format { .. })
        ));
        assert!(matches!(
            Keyring::from_bytes(path, b"garbage"),
            Err(KeyringError::Format { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Keyring::from_bytes(Path::new("k"), &bytes);
        }

        #[test]
        fn any_single_byte_change_is_refused(position in 0usize..(HEADER_BYTES + 2 * 24 + 4), bit in 0u8..8) {
            let mut bytes = ring().to_bytes(7);
            bytes[position] ^= 1 << bit;
            proptest::prop_assert!(Keyring::from_bytes(Path::new("k"), &bytes).is_err());
        }
    }

    #[test]
    fn rejects_duplicate_ids() {
        let e = KeyEntry {
            key_id: 1,
            shard_ordinal: 0,
            key: [0; 16],
        };
        assert!(Keyring::new([0; 32], 0, vec![e.clone(), e]).is_err());
    }

    #[test]
    fn saves_with_mode_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("event.keyring");
        ring().save(&path, 1, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            ring().save(&path, 1, false),
            Err(KeyringError::Exists(_))
        ));
        let (loaded, too_open) = Keyring::load(&path).unwrap();
        assert!(!too_open);
        assert_eq!(loaded.entries().len(), 2);
    }
}
