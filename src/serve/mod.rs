//! `hongbao serve`: settings ([`config`]), key files ([`keys`]) and start-up with recovery
//! ([`setup`]); the cores themselves run in [`crate::runtime`]. Main thread only.

pub mod config;
pub mod keys;
pub mod setup;
