//! The bodies of the fuzz targets, one per decoder of outside bytes (see `bodies`).

mod bodies;
pub use bodies::*;
