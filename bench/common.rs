//! Shared by the benchmark programs: the machine and date lines every result carries, and a
//! generated bench event.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use hongbao::load::{machine, today};

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

/// The sum over cores (and labels) of a metric's samples in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A server's /metrics text.
pub fn scrape(http: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).expect("metrics connection");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("metrics request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics response");
    text
}

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
