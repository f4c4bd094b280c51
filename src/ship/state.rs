//! `<data>/ship.json`: how far `hongbao ship` has published each core's log to which stream
//! (docs/formats/ship.md). Written after every acknowledged batch (temporary file, fsync,
//! rename); a position in it is never ahead of what the stream acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::LogPosition;

pub const SHIP_STATE_FILE: &str = "ship.json";
const FORMAT: &str = "hongbao-ship-1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipState {
    pub format: String,
    pub stream: String,
    /// Per core: `segment:offset` where the next publish starts.
    pub positions: BTreeMap<u16, String>,
}

pub fn path(data: &Path) -> PathBuf {
    data.join(SHIP_STATE_FILE)
}

impl ShipState {
    /// The state for `stream`, read from `data` (empty when absent); a state of another
    /// stream is refused (its positions say nothing about this one).
    pub fn load(data: &Path, stream: &str) -> Result<ShipState, String> {
        let p = path(data);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ShipState {
                    format: FORMAT.into(),
                    stream: stream.into(),
                    positions: BTreeMap::new(),
                })
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        let state: ShipState =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        if state.format != FORMAT {
            return Err(format!(
                "{}: format {:?} is not {FORMAT}",
                p.display(),
                state.format
            ));
        }
        if state.stream != stream {
            return Err(format!(
                "{}: these positions are of stream {:?}, not {stream:?} (move the file away to \
                 ship everything to a new stream)",
                p.display(),
                state.stream
            ));
        }
        for v in state.positions.values() {
            parse(v).ok_or_else(|| format!("{}: bad position {v:?}", p.display()))?;
        }
        Ok(state)
    }

    pub fn position(&self, core: u16) -> LogPosition {
        self.positions
            .get(&core)
            .and_then(|v| parse(v))
            .unwrap_or_default()
    }

    pub fn set(&mut self, core: u16, at: LogPosition) {
        self.positions
            .insert(core, format!("{}:{}", at.segment, at.offset));
    }

    pub fn save(&self, data: &Path) -> Result<(), String> {
        let p = path(data);
        let text = serde_json::to_string(self).expect("a state serializes");
        crate::fsutil::write_atomic(&p, text.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

fn parse(v: &str) -> Option<LogPosition> {
    let (s, o) = v.split_once(':')?;
    Some(LogPosition {
        segment: s.parse().ok()?,
        offset: o.parse().ok()?,
    })
}
