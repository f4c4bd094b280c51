//! hongbao: a thread-per-core appliance that hands out red envelopes ("shake") and fans out IM
//! messages. This crate is the library behind the `hongbao` binary.
//!
//! Components, in the order money flows through them:
//! - [`plan`]: the budget model (`plan.toml`), its validation, the deterministic allocation of
//!   envelopes and money to slots and shard files, and the two random algorithms of R2
//!   ([`plan::split`] amounts, [`plan::shuffle`] sponsor interleave).
//! - [`ticket`]: the 26-byte record with its AES-sealed 16-byte block, the keyring, and the
//!   shard file format.
//! - [`gen`]: `hongbao gen`, the parallel streaming generator.
//! - [`manifest`]: the manifest and batch config written beside the tickets.
//! - [`verify`]: `hongbao verify`, the independent re-check (R14).
//! - [`inspect`]: `hongbao inspect`, one file decoded: amounts and sponsor order.
//! - [`admission`]: pacing and quota of shakes (token buckets on a caller's clock).
//! - [`ledger`]: one shard's money state: issuing cursor under durable reservations, claim
//!   bitmap; rebuilt from the log.
//! - [`store`]: the per-core log-structured store (records, segments, recovery, group commit).
//! - [`token`]: auth tokens and shake tokens (PMAC-AES-128), for the server.
//! - [`claims`]: `hongbao claims`, the durable claims of the per-core logs as JSON lines.
//! - [`wire`]: the client protocols (binary frames, HTTP/1.1 subset, op payloads), sans-IO.
//! - [`shake`]: one core's shake/open engine (sans-IO) and per-user caps.
//! - [`serve`]: `hongbao serve` settings, key files, start-up and recovery.
//! - [`im`]: the IM message system: per-user seq streams, diffusion write, groups (sans-IO).
//! - [`runtime`]: the glommio executors, listeners, connections, commit loops, queues.
//! - [`client`]: a blocking binary-protocol client (demo, tests, reference).
//! - [`metrics`]: per-core counters and the Prometheus exposition.
//! - [`load`]: `hongbao load`, the io_uring load generator, and its reports (`hongbao report`).
//!
//! docs/ARCHITECTURE.md explains the design and its reasons; docs/formats/ every file format.

pub mod admission;
pub mod big;
pub mod claims;
pub mod client;
pub mod draws;
pub mod fsutil;
pub mod gen;
pub mod heap;
pub mod im;
pub mod inspect;
pub mod ledger;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod runtime;
pub mod serve;
pub mod settle;
pub mod shake;
pub mod ship;
pub mod store;
pub mod ticket;
pub mod token;
pub mod verify;
pub mod wire;

/// The plan used by `hongbao demo`, also printed by `hongbao plan-example`.
pub const DEMO_PLAN: &str = include_str!("plan/demo.toml");
