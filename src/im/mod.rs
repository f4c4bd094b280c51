//! The IM message system (R16-R24), inside the same thread-per-core appliance and the same
//! per-core log as the envelopes: one seq-ordered stream per user homed on one core, diffusion
//! write of every message into every recipient's stream, idempotent sends, groups.
//!
//! - [`model`]: messages, targets, classes, limits, errors.
//! - [`record`]: the IM log records (docs/formats/log.md, kinds 16-21).
//! - [`cold`]: where each stream entry lies in the logs, and reading it back (R24's cold tier).
//! - [`dedupe`]: the compact appinfo memory of stored sends (R18).
//! - [`entries`]: a stream's entries in memory, in chunks that never move as a whole.
//! - [`kept`]: the messages of the hot entries, one counted slot per message per record.
//! - [`engine`]: one core's state machine (sans-IO) and the recovery that rebuilds every
//!   core's state from the logs.
//! - [`groups`]: memberships through time; floors and snapshots that collapse their history.
//! - [`retention`]: what log compaction keeps of expired segments (R24).

pub mod cold;
pub mod dedupe;
pub mod engine;
pub mod entries;
pub mod groups;
pub mod kept;
pub mod model;
pub mod record;
pub mod retention;

pub use engine::{home, Effects, ImCore, ImMsg, ImRecovery, Page};
pub use model::*;
