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

/// The `i`-th claim of `core` in the settle and ship benches (5 M distinct uids).
pub fn claim(core: u16, i: u32) -> hongbao::ledger::ClaimRecord {
    hongbao::ledger::ClaimRecord {
        envelope_id: zerocopy::little_endian::U64::new((u64::from(core) << 32) | u64::from(i)),
        uid: zerocopy::little_endian::U64::new(
            u64::from(i.wrapping_mul(2_654_435_761)) % 5_000_000,
        ),
        amount_cents: zerocopy::little_endian::U32::new(1 + (i.wrapping_mul(7919)) % 20_000),
        batch_id: zerocopy::little_endian::U16::new((i % 7) as u16),
        key_id: zerocopy::little_endian::U16::new(1 + (i % 300) as u16),
        claimed_unix: zerocopy::little_endian::U32::new(1_800_000_000 + i / 100_000),
        issuing_core: zerocopy::little_endian::U16::new(core),
        reserved: zerocopy::little_endian::U16::new(0),
    }
}

/// A data directory of host h1 with `per_core` claims in each of two core logs.
pub fn write_logs(data: &std::path::Path, per_core: u32) {
    std::fs::create_dir_all(data).expect("data dir");
    std::fs::write(
        data.join("event.json"),
        r#"{"format":"hongbao-data-1","event":"bench","variant":"A","generation":"g","host":"h1"}"#,
    )
    .expect("event.json");
    for core in 0..2u16 {
        let dir = data.join(format!("core-{core}"));
        let (mut log, _) = hongbao::store::FileLog::open(
            &dir,
            core,
            hongbao::store::StoreOptions::default(),
            |_, _| {},
        )
        .expect("log");
        for i in 0..per_core {
            let c = claim(core, i);
            log.append(
                hongbao::ledger::KIND_CLAIM,
                c.uid.get(),
                u64::from(i),
                zerocopy::IntoBytes::as_bytes(&c),
            )
            .expect("append");
            if i % 4096 == 4095 {
                log.commit().expect("commit");
            }
        }
        log.close().expect("close");
    }
}
