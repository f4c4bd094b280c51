//! Key allow/deny lists (R8): which ticket keys may be opened right now. An operator denies a
//! key (a leaked key, a cancelled sponsor batch) by editing a small TOML file; every server core
//! re-reads it when it changes (hot reload) and refuses opens of tickets sealed under a denied
//! key, or under a key missing from the allow list when there is one.
//!
//! Parsing only; the runtime decides when to reload. docs/formats/key-lists.md is the format.

use std::path::Path;

use serde::Deserialize;

/// Largest key-lists file read.
pub const KEY_LISTS_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ListsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListsFile {
    allow: Option<Vec<toml::Value>>,
    #[serde(default)]
    deny: Vec<toml::Value>,
}

/// A bitmap over all 65,536 key ids: 8 KiB, one lookup per open.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyLists {
    allowed: Box<[u64; 1024]>,
    denied: usize,
    allow_listed: bool,
}

impl std::fmt::Debug for KeyLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLists")
            .field("allow_list", &self.allow_listed)
            .field("refused_keys", &self.denied)
            .finish()
    }
}

impl Default for KeyLists {
    /// Every key allowed.
    fn default() -> KeyLists {
        KeyLists {
            allowed: Box::new([u64::MAX; 1024]),
            denied: 0,
            allow_listed: false,
        }
    }
}

fn ranges(values: &[toml::Value], field: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let bad = || {
            format!("{field}[{i}] = {v}: expected a key id (1..65535) or a range \"FIRST-LAST\"")
        };
        let range = match v {
            toml::Value::Integer(n) => {
                let id = u16::try_from(*n).map_err(|_| bad())?;
                (id, id)
            }
            toml::Value::String(s) => {
                let (a, b) = s.split_once('-').ok_or_else(bad)?;
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(format!("{field}[{i}] = {v}: the range is reversed"));
                }
                (a, b)
            }
            _ => return Err(bad()),
        };
        if range.0 == 0 {
            return Err(format!("{field}[{i}] = {v}: key id 0 does not exist"));
        }
        out.push(range);
    }
    Ok(out)
}

impl KeyLists {
    pub fn parse(text: &str) -> Result<KeyLists, String> {
        let file: ListsFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut lists = KeyLists::default();
        if let Some(allow) = &file.allow {
            lists.allowed.fill(0);
            lists.allow_listed = true;
            for (a, b) in ranges(allow, "allow")? {
                for id in a..=b {
                    lists.set(id, true);
                }
            }
        }
        for (a, b) in ranges(&file.deny, "deny")? {
            for id in a..=b {
                lists.set(id, false);
            }
        }
        lists.denied = (0..=u16::MAX).filter(|&id| !lists.allows(id)).count();
        Ok(lists)
    }

    pub fn load(path: &Path) -> Result<KeyLists, ListsError> {
        let shown = path.display().to_string();
        let io = |source| ListsError::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        use std::io::Read;
        file.take(KEY_LISTS_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > KEY_LISTS_BYTES_MAX {
            return Err(ListsError::Invalid {
                path: shown,
                message: format!("larger than {KEY_LISTS_BYTES_MAX} bytes"),
            });
        }
        KeyLists::parse(&text).map_err(|message| ListsError::Invalid {
            path: shown,
            message,
        })
    }

    fn set(&mut self, id: u16, allowed: bool) {
        let (word, bit) = (id as usize / 64, id % 64);
        if allowed {
            self.allowed[word] |= 1 << bit;
        } else {
            self.allowed[word] &= !(1 << bit);
        }
    }

    #[inline]
    pub fn allows(&self, key_id: u16) -> bool {
        self.allowed[key_id as usize / 64] & (1 << (key_id % 64)) != 0
    }

    /// How many key ids (of 65,536, id 0 included) are refused.
    pub fn refused(&self) -> usize {
        self.denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_and_allow() {
        let l = KeyLists::parse("deny = [3, \"10-12\"]").unwrap();
        assert!(l.allows(1) && !l.allows(3) && !l.allows(11) && l.allows(13));
        let l = KeyLists::parse("allow = [\"1-5\"]\ndeny = [2]").unwrap();
        assert!(l.allows(1) && !l.allows(2) && l.allows(5) && !l.allows(6));
        assert!(KeyLists::parse("").unwrap().allows(65535));
    }

    #[test]
    fn bad_files_are_explained() {
        for (text, needle) in [
            ("deny = [0]", "key id 0"),
            ("deny = [70000]", "deny[0]"),
            ("deny = [\"9-3\"]", "reversed"),
            ("deny = [\"x\"]", "deny[0]"),
            ("denied = [1]", "unknown field"),
            ("deny = 1", "invalid type"),
        ] {
            let e = KeyLists::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
