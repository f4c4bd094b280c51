//! The per-core log-structured store: append-only segments of CRC-checked records with a stream
//! key and a sequence number, group commit, segment roll, and recovery that truncates a torn
//! tail but refuses to start on damage in the middle.
//!
//! Each server core owns one store directory and never touches another core's. The codec
//! ([`record`]), the recovery scan ([`segment`]) and group commit ([`writer`]) are sans-IO
//! state machines; [`state`] records what a complete log is (its segments and its end); [`file`](mod@file) is a blocking driver for tools, tests and recovery, and the server's
//! glommio driver will run the same state machines. docs/formats/log.md is the byte reference;
//! docs/SAFETY.md says what durability each step guarantees.

pub mod compact;
pub mod file;
pub mod record;
pub mod segment;
pub mod state;
pub mod writer;

pub use file::{FileLog, Recovery, StoreError, StoreOptions};
pub use record::RecordView;
pub use writer::{AppendError, Appended, Durable, LogWriter, WriteBatch};

/// A byte position in a core's log: segment number, then byte offset in that segment's file.
/// Ordered: later positions compare greater.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}
