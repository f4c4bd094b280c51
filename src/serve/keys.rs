//! Key files of the server (docs/formats/keys.md): the **auth key file** shared with the login
//! side (which signs auth tokens) and the **token key file** in the data directory (which signs
//! shake tokens; created on first start and kept, so tokens handed out before a restart still
//! open after it). Same TOML format for both: slots with 16-byte keys, one current slot.
//!
//! Read on the main thread at start-up; each core gets its own copy of the loaded [`TokenKeys`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::token::TokenKeys;

/// Largest key file read.
const KEY_FILE_BYTES_MAX: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}", crate::fsutil::describe_write_error(path, source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0} exists; refusing to replace a key file")]
    Exists(PathBuf),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    /// The slot new tokens are signed with.
    current: u8,
    #[serde(rename = "key")]
    keys: Vec<KeyFileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    slot: u8,
    /// 32 hex digits.
    key: String,
}

const FORMAT: &str = "hongbao-keys-1";

/// The keys of a key file, and whether the file is readable by others (callers warn).
pub fn load_key_file(path: &Path) -> Result<(TokenKeys, bool), KeyFileError> {
    let invalid = |message: String| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(invalid(format!(
            "{} bytes is larger than any key file",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let ring = parse_key_file(&text).map_err(invalid)?;
    Ok((ring, meta.permissions().mode() & 0o077 != 0))
}

/// The keys of a key file's text.
pub fn parse_key_file(text: &str) -> Result<TokenKeys, String> {
    let file: KeyFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if file.format != FORMAT {
        return Err(format!("format \"{}\" is not \"{FORMAT}\"", file.format));
    }
    let mut keys = Vec::with_capacity(file.keys.len());
    for (i, k) in file.keys.iter().enumerate() {
        let mut key = [0u8; 16];
        hex::decode_to_slice(k.key.trim(), &mut key)
            .map_err(|_| format!("key[{i}] (slot {}): not 32 hex digits", k.slot))?;
        if keys.iter().any(|(s, _)| *s == k.slot) {
            return Err(format!("slot {} appears twice", k.slot));
        }
        keys.push((k.slot, key));
    }
    TokenKeys::new(&keys, file.current)
        .ok_or_else(|| format!("current slot {} has no key", file.current))
}

/// Writes a new key file with one random key in slot 1, mode 0600, refusing to replace one.
pub fn create_key_file(path: &Path) -> Result<TokenKeys, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let file = KeyFile {
        format: FORMAT.into(),
        current: 1,
        keys: vec![KeyFileEntry {
            slot: 1,
            key: hex::encode(key),
        }],
    };
    let text = format!(
        "# hongbao key file (docs/formats/keys.md). Secret: keep it mode 0600.\n{}",
        toml::to_string(&file).expect("serializable")
    );
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir_all(parent).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        // Nothing half-written stays behind (a full disk, say).
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // Link, not rename: fails when the file appeared meanwhile, so a key is never replaced.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyFileError::Exists(path.to_path_buf()))
        }
        Err(e) => return Err(io(e)),
    }
    crate::fsutil::sync_parent(path).map_err(io)?;
    Ok(TokenKeys::new(&[(1, key)], 1).expect("slot 1 has a key"))
}

/// Loads the key file, creating it first when it does not exist (a file that exists is only
/// read: nothing is written on a restart, even on a full disk).
pub fn load_or_create_key_file(path: &Path) -> Result<TokenKeys, KeyFileError> {
    if path.exists() {
        return Ok(load_key_file(path)?.0);
    }
    match create_key_file(path) {
        Ok(keys) => Ok(keys),
        Err(KeyFileError::Exists(_)) => Ok(load_key_file(path)?.0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Auth;

    #[test]
    fn create_load_and_refuse_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/auth.keys");
        let keys = create_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, too_open) = load_key_file(&path).unwrap();
        assert!(!too_open);
        let token = Auth {
            uid: 5,
            expires_unix: 100,
        }
        .encode(&keys);
        assert_eq!(Auth::decode(&token, &loaded, 1).unwrap().uid, 5);
        assert!(matches!(
            create_key_file(&path),
            Err(KeyFileError::Exists(_))
        ));
        // load_or_create keeps the existing key.
        let again = load_or_create_key_file(&path).unwrap();
        assert_eq!(Auth::decode(&token, &again, 1).unwrap().uid, 5);
    }

    #[test]
    fn bad_key_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.keys");
        for (text, needle) in [
            ("format = \"x\"\ncurrent = 1\nkey = []", "is not"),
            ("format = \"hongbao-keys-1\"\ncurrent = 2\n[[key]]\nslot = 1\nkey = \"00112233445566778899aabbccddeeff\"", "current slot 2"),
            ("format = \"hongbao-keys-1\"\ncurrent = 1\n[[key]]\nslot = 1\nkey = \"0011\"", "32 hex"),
            ("nonsense", "expected"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load_key_file(&path).err().unwrap().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
