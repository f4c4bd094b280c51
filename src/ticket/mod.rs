//! Tickets (R4-R6): the 26-byte record and its sealed block, the keyring, shard files, and the
//! key allow/deny lists.
//!
//! Codec and crypto only; no scheduling. Used by `gen`/`verify` threads and by server cores.

pub mod keyring;
pub mod lists;
pub mod record;
pub mod shard;

pub use keyring::{KeyEntry, Keyring, KeyringError};
pub use record::{EnvelopeId, OpenError, SecretBlock, Ticket, TicketRecord, RECORD_BYTES};
pub use shard::{ShardError, ShardFile, ShardHeader, ShardWriter};
