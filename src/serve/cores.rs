//! Which core logs a data directory holds: `<data>/cores.json` (docs/formats/data.md).
//!
//! A core's log checks its own segments against its state file (`store::state`), but a
//! whole `core-<k>/` directory deleted would look like a core that never wrote anything, and
//! its claims would vanish without a word. The list of cores that ever had a log closes that
//! gap: every listed core's directory must exist. Read and written at start-up (main thread)
//! and by `hongbao claims`.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const CORES_FILE: &str = "cores.json";
const FORMAT: &str = "hongbao-cores-1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoresFile {
    format: String,
    cores: Vec<u16>,
}

/// The cores listed in `data`, `None` when the file does not exist.
pub fn read(data: &Path) -> Result<Option<Vec<u16>>, String> {
    let path = data.join(CORES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: CoresFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.format != FORMAT {
        return Err(format!(
            "{}: format {:?} is not {FORMAT:?}",
            path.display(),
            file.format
        ));
    }
    Ok(Some(file.cores))
}

/// Checks that every listed core's log directory is among `present`.
pub fn check_listed(data: &Path, listed: &[u16], present: &[u16]) -> Result<(), String> {
    match listed.iter().find(|k| !present.contains(k)) {
        Some(k) => Err(format!(
            "{}: core-{k}/ is missing, but this data directory had a log for core {k} \
             ({CORES_FILE}): its claims would be lost. See docs/formats/data.md",
            data.display()
        )),
        None => Ok(()),
    }
}

/// What start-up recovers: the cores whose logs the directory holds (listed, present, or run
/// now), and whether logs without a state file may be adopted (only in a directory no build
/// with state files ever wrote: no `cores.json` and no core with a `log.state`). Records the
/// list durably when it grows.
pub fn prepare(data: &Path, present: &[u16], running: usize) -> Result<(Vec<u16>, bool), String> {
    let listed = read(data)?;
    let adopt = match &listed {
        Some(listed) => {
            check_listed(data, listed, present)?;
            false
        }
        None => {
            let stated = present.iter().find(|k| {
                data.join(format!("core-{k}"))
                    .join(crate::store::state::STATE_FILE)
                    .exists()
            });
            if let Some(k) = stated {
                return Err(format!(
                    "{}: {CORES_FILE} is missing, but core-{k}/ was written by a build that keeps \
                     it; refusing to start: the list of core logs was lost. See \
                     docs/formats/data.md",
                    data.display()
                ));
            }
            true
        }
    };
    let mut all: Vec<u16> = listed.clone().unwrap_or_default();
    all.extend_from_slice(present);
    all.extend(0..running as u16);
    all.sort_unstable();
    all.dedup();
    if listed.as_ref() != Some(&all) {
        let mut text = serde_json::to_string(&CoresFile {
            format: FORMAT.into(),
            cores: all.clone(),
        })
        .expect("serializes");
        text.push('\n');
        let path = data.join(CORES_FILE);
        crate::fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|e| crate::fsutil::describe_write_error(&path, &e))?;
    }
    Ok((all, adopt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_cores_must_stay() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // A new directory: nothing to adopt, the running cores are listed.
        assert_eq!(prepare(data, &[], 2).unwrap(), (vec![0, 1], true));
        assert_eq!(read(data).unwrap(), Some(vec![0, 1]));
        // Fewer cores later: the list keeps both.
        assert_eq!(prepare(data, &[0, 1], 1).unwrap(), (vec![0, 1], false));
        // A listed core's directory gone: refused, naming it.
        let e = prepare(data, &[0], 1).unwrap_err();
        assert!(e.contains("core-1/ is missing"), "{e}");
        // The list gone while a core has a state file: refused.
        std::fs::remove_file(data.join(CORES_FILE)).unwrap();
        std::fs::create_dir_all(data.join("core-0")).unwrap();
        std::fs::write(data.join("core-0").join("log.state"), b"x").unwrap();
        let e = prepare(data, &[0], 1).unwrap_err();
        assert!(e.contains("cores.json is missing"), "{e}");
    }
}
