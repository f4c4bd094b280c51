//! Big envelopes, open to credit: how long after a client's open is acknowledged the envelope
//! is `credited` in the ledger, on one host with the embedded defaults. A demo event is served
//! (`hongbao serve`, 2 cores, a rehearsal without pacing), `hongbao settle --follow --preload`
//! runs beside it, and one client opens envelopes one at a time; for every big one it polls the
//! ledger (a read-only SQLite connection, every millisecond) until the row says `credited`.
//! Reported beside it, measured in the same run: the open's own latency (shake token to
//! durable claim acknowledged), the floor under any credit.
//!
//! Run: `cargo bench --bench big_credit -- [--samples N]` (default 200 big envelopes). Under
//! `cargo test --all-targets` it does a small smoke run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hongbao::client::Client;
use hongbao::token::Auth;
use hongbao::wire::ops::{Reply, ShakeOutcome};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long, hide = true)]
    bench: bool,
}

const BIN: &str = env!("CARGO_BIN_EXE_hongbao");

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("hongbao runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server; returns it and its binary-protocol address.
fn serve(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--tickets",
            "d/event/A",
            "--keyring",
            "d/keys/demo.keyring",
            "--data",
            "data",
            "--auth-keys",
            "auth.keys",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--rehearse",
            "--no-pacing",
            "--cores",
            "2",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = loop {
        let line = lines.next().expect("server ready").expect("a line");
        if line.starts_with("hongbao serve: ready") {
            break line;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let words: Vec<&str> = ready.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "binary").expect("binary") + 1;
    (child, words[at].parse().expect("an address"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = Args::parse();
    let wanted = args.samples.unwrap_or(if args.bench { 200 } else { 5 });
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    run(dir, &["demo", "--dir", "d", "--no-serve", "--seed", "7"]);
    run(dir, &["auth-keys", "--out", "auth.keys"]);
    let list = hongbao::big::BigList::load(&dir.join("d/keys/demo.A.big")).expect("big list");
    let big: std::collections::HashSet<u64> =
        list.entries.iter().map(|e| e.envelope_id.get()).collect();
    let (keys, _) = hongbao::serve::keys::load_key_file(&dir.join("auth.keys")).expect("keys");
    let (mut server, addr) = serve(dir);
    let mut settle = Command::new(BIN)
        .args([
            "settle",
            "--data",
            "data",
            "--db",
            "ledger.sqlite",
            "--follow",
            "--preload",
            "d/keys/demo.A.big",
        ])
        .current_dir(dir)
        .stderr(Stdio::null())
        .spawn()
        .expect("settle starts");
    let db = dir.join("ledger.sqlite");
    while !db.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ledger = rusqlite::Connection::open(&db).expect("ledger");
    ledger
        .busy_timeout(Duration::from_secs(5))
        .expect("timeout");
    let mut credit_ms = Vec::new();
    let mut open_ms = Vec::new();
    let mut uid = 1u64;
    while credit_ms.len() < wanted {
        uid += 1;
        let auth = Auth {
            uid,
            expires_unix: (hongbao::gen::now_unix() + 3600) as u32,
        }
        .encode(&keys);
        let mut c = Client::connect(addr).expect("connect");
        c.hello(&auth).expect("hello");
        for _ in 0..20 {
            let Reply::Shake(s) = c.shake().expect("shake") else {
                continue;
            };
            if s.outcome != ShakeOutcome::Envelope {
                continue;
            }
            let started = Instant::now();
            let Reply::Open(o) = c.open(&s.token.expect("token")).expect("open") else {
                continue;
            };
            let acked = Instant::now();
            open_ms.push((acked - started).as_secs_f64() * 1e3);
            if !big.contains(&o.envelope_id) {
                continue;
            }
            loop {
                let state: Option<String> = ledger
                    .query_row(
                        "SELECT state FROM claims WHERE envelope_id = ?1",
                        [o.envelope_id as i64],
                        |r| r.get(0),
                    )
                    .ok();
                if state.as_deref() == Some("credited") {
                    break;
                }
                assert!(acked.elapsed() < Duration::from_secs(30), "never credited");
                std::thread::sleep(Duration::from_millis(1));
            }
            credit_ms.push(acked.elapsed().as_secs_f64() * 1e3);
        }
    }
    unsafe { libc::kill(settle.id() as i32, libc::SIGTERM) };
    let _ = settle.wait();
    let _ = server.kill();
    let _ = server.wait();
    credit_ms.sort_by(f64::total_cmp);
    open_ms.sort_by(f64::total_cmp);
    println!("| what (ms) | samples | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| open acknowledged (shake token to durable claim), the floor | {} | {:.2} | {:.2} | {:.2} |",
        open_ms.len(),
        percentile(&open_ms, 0.5),
        percentile(&open_ms, 0.99),
        open_ms[open_ms.len() - 1]
    );
    println!(
        "| big envelope: open acknowledged to credited in the ledger | {} | {:.1} | {:.1} | {:.1} |",
        credit_ms.len(),
        percentile(&credit_ms, 0.5),
        percentile(&credit_ms, 0.99),
        credit_ms[credit_ms.len() - 1]
    );
}
