//! Shared by the benchmark programs: the machine and date lines every result carries, and a
//! generated bench event.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use hongbao::load::{machine, today};

/// A one-slot plan of `envelopes` envelopes over two hosts: `h` (one core, about half of them)
/// and `backup` (a second park is required).
pub fn plan(envelopes: u64) -> String {
    format!(
        r#"
[event]
name = "bench"
currency = "CNY"
unit = "cent"
key_cap_cents = 100_000_000_000

[[topology.host]]
name = "h"
park = "p"
cores = 1

[[topology.host]]
name = "backup"
park = "q"
cores = 1

[[slot]]
name = "s"
start = "2027-02-06T20:00:00+08:00"
end = "2027-02-06T21:00:00+08:00"

[[merchant]]
id = 1
name = "m"
kind = "image"
budget_cents = {}
count = {envelopes}
min_cents = 1
max_cents = 2000
"#,
        envelopes * 500
    )
}

/// Generates [`plan`] into `dir`: tickets in `dir/event` (variant A), keyring
/// `dir/bench.keyring`.
pub fn generate_event(dir: &std::path::Path, envelopes: u64) {
    let plan = hongbao::plan::Plan::from_toml(&plan(envelopes)).expect("bench plan");
    hongbao::gen::generate(
        &plan,
        &hongbao::gen::GenOptions {
            out: dir.join("event"),
            keyring: dir.join("bench.keyring"),
            seed: Some(1),
            threads: 2,
            force: false,
            progress: false,
        },
    )
    .expect("generate");
}
