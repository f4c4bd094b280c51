//! `hongbao serve`: settings ([`config`]), key files ([`keys`]), the list of core logs of a
//! data directory ([`cores`]) and start-up with recovery ([`setup`]); the cores themselves run
//! in [`crate::runtime`]. Main thread only.

pub mod config;
pub mod cores;
pub mod keys;
pub mod setup;
