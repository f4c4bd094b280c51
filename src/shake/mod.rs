//! Shake and open (R7-R11) on one core: the sans-IO [`engine`] (shards, ledgers, pacing,
//! tokens, log writer) and the per-user [`caps`]. The runtime (`crate::runtime`) feeds them.

pub mod caps;
pub mod engine;
