//! Durable opens through the server: one server core (pinned) answers binary OPENs only after
//! the claim record is fdatasync'd in its log (group commit), driven by pipelined clients on
//! the other core. Reports opens/s, latency percentiles (send to durable answer, measured by
//! the client), and claims per fdatasync from the server's /metrics. Peer in the same run:
//! one 64-byte append + fdatasync per operation on the same file system (what a store without
//! group commit can do).
//!
//! Run: `cargo bench --bench durable -- [--opens N] [--conns C] [--depth D]`. The data
//! directory is under Cargo's target directory (a real disk, not tmpfs). Under
//! `cargo test --all-targets` it does a small smoke run. To profile the server:
//! `--server-wrapper "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out"`.

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use hongbao::client::Client;
use hongbao::token::Auth;
use hongbao::wire::ops::{Reply, ShakeOutcome, OP_OPEN, OP_SHAKE};

#[derive(Parser)]
struct Args {
    /// Opens to make (default 2,000,000; 20,000 for the smoke run).
    #[arg(long)]
    opens: Option<u64>,
    /// Client connections (one thread each, all pinned to the client CPU).
    #[arg(long, default_value_t = 8)]
    conns: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 256)]
    depth: u64,
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Run the server under this command (e.g. "valgrind --tool=callgrind") to profile it.
    #[arg(long)]
    server_wrapper: Option<String>,
    #[arg(long, hide = true)]
    bench: bool,
}

use common::{metric, pin, scrape};

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / ticks
}

/// Pipelined requests on one connection, `depth` in flight, refilled in halves; returns each
/// reply with its latency from the flush that sent it.
fn pipelined(
    client: &mut Client,
    op: u8,
    payloads: &[Vec<u8>],
    depth: usize,
    mut on_reply: impl FnMut(Reply, Duration),
) {
    let mut sent_at = std::collections::VecDeque::with_capacity(depth);
    let mut next = 0;
    let mut received = 0;
    while received < payloads.len() {
        if sent_at.len() <= depth / 2 && next < payloads.len() {
            let until = (next + depth - sent_at.len()).min(payloads.len());
            for p in &payloads[next..until] {
                client.send(op, p);
            }
            client.flush().expect("send");
            let now = Instant::now();
            for _ in next..until {
                sent_at.push_back(now);
            }
            next = until;
        }
        let (_, reply) = client.recv().expect("reply");
        let t0 = sent_at.pop_front().expect("a request in flight");
        on_reply(reply, t0.elapsed());
        received += 1;
    }
}

/// Appends `n` 64-byte records with an fdatasync after each: the no-group-commit peer.
fn sync_per_op(dir: &Path, n: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(dir.join("peer.log")).expect("peer file");
    let started = Instant::now();
    for i in 0..n {
        file.write_at(&[7u8; 64], i * 64).expect("peer write");
        file.sync_data().expect("peer fdatasync");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let total = args.opens.unwrap_or(if smoke { 20_000 } else { 2_000_000 });
    let conns = args.conns.max(1);
    let per_conn = total.div_ceil(conns);
    let total = per_conn * conns;
    let depth = args.depth.max(2) as usize;

    let base =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("durable-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    common::generate_event(&base, 2 * total + 40_000);
    let keys = hongbao::serve::keys::create_key_file(&base.join("auth.keys")).expect("auth keys");

    let wrapper: Vec<&str> = args
        .server_wrapper
        .as_deref()
        .map_or(Vec::new(), |w| w.split_whitespace().collect());
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(env!("CARGO_BIN_EXE_hongbao"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_hongbao")),
    };
    let mut server = command
        .args([
            "serve",
            "--host",
            "h",
            "--cores",
            "1",
            "--rehearse",
            "--no-pacing",
        ])
        .args(["--cpus", &args.server_cpu.to_string()])
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--tickets")
        .arg(base.join("event/A"))
        .arg("--keyring")
        .arg(base.join("bench.keyring"))
        .arg("--data")
        .arg(base.join("data"))
        .arg("--auth-keys")
        .arg(base.join("auth.keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    // Keep reading (the server's last line comes at exit).
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr_after = |key: &str| -> SocketAddr {
        let i = words.iter().position(|w| *w == key).expect("ready line");
        words[i + 1].parse().expect("address")
    };
    let (binary, http) = (addr_after("binary"), addr_after("http"));

    // Winning shakes give the tokens (pacing is off, caps are off: every shake wins).
    let expires = (hongbao::serve::setup::now_ms() / 1000) as u32 + 3600;
    let shaken: Vec<(Vec<u8>, Vec<Vec<u8>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|c| {
                let keys = keys.clone();
                s.spawn(move || {
                    pin(args.client_cpu);
                    let auth = Auth {
                        uid: 1_000 + c,
                        expires_unix: expires,
                    }
                    .encode(&keys)
                    .to_vec();
                    let mut client = Client::connect(binary).expect("connect");
                    client.hello(&auth).expect("hello");
                    let mut tokens = Vec::with_capacity(per_conn as usize);
                    let none = vec![Vec::new(); per_conn as usize];
                    pipelined(
                        &mut client,
                        OP_SHAKE,
                        &none,
                        depth,
                        |reply, _| match reply {
                            Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => {
                                tokens.push(s.token.expect("token").to_vec())
                            }
                            other => panic!("shake answered {other:?}"),
                        },
                    );
                    (auth, tokens)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shaker"))
            .collect()
    });

    let before = scrape(http);
    let cpu_before = cpu_seconds(server.id());
    let started = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = shaken
            .iter()
            .map(|(auth, tokens)| {
                s.spawn(move || {
                    pin(args.client_cpu);
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut client = Client::connect(binary).expect("connect");
                    client.hello(auth).expect("hello");
                    pipelined(&mut client, OP_OPEN, tokens, depth, |reply, latency| {
                        match reply {
                            Reply::Open(_) => {}
                            other => panic!("open answered {other:?}"),
                        }
                        h.saturating_record(latency.as_micros() as u64);
                    });
                    h
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("opener"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(server.id()) - cpu_before;
    let after = scrape(http);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for h in &histograms {
        all.add(h).expect("same bounds");
    }
    let opens = metric(&after, "hongbao_opens_total") - metric(&before, "hongbao_opens_total");
    let commits =
        metric(&after, "hongbao_log_commits_total") - metric(&before, "hongbao_log_commits_total");
    let commit_seconds = metric(&after, "hongbao_log_commit_seconds_sum")
        - metric(&before, "hongbao_log_commit_seconds_sum");
    let disk_seconds = (metric(&after, "hongbao_log_disk_microseconds_total")
        - metric(&before, "hongbao_log_disk_microseconds_total"))
        / 1e6;
    assert_eq!(all.len(), total, "every open answered");
    assert!(
        opens >= total as f64,
        "server counted {opens} opens of {total}"
    );

    // SIGTERM: the server finishes, commits and exits 0.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().expect("server exits");
    assert!(status.success(), "server exit: {status}");

    let peer_ops = if smoke { 200 } else { 5_000 };
    let peer = sync_per_op(&base, peer_ops);
    let _ = std::fs::remove_dir_all(&base);

    let rate = total as f64 / seconds;
    if smoke {
        println!("smoke run ({total} opens); `cargo bench --bench durable` measures for real");
    }
    println!("## Durable opens through the server (one core, group commit)\n");
    println!(
        "- command: `cargo bench --bench durable -- --opens {total} --conns {conns} --depth {depth}`"
    );
    println!(
        "- server: 1 core pinned to CPU {}, clients pinned to CPU {}; data under Cargo's target dir",
        args.server_cpu, args.client_cpu
    );
    println!(
        "- machine: {}\n- date: {}\n",
        common::machine(),
        common::today()
    );
    println!("| what | opens/s | p50 µs | p99 µs | p99.9 µs | max µs | claims per fdatasync | commits/s | commit cycle µs | of which in write+fdatasync µs | server CPU busy | server CPU µs/open | vs peer |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| durable opens, {conns} conns x depth {depth} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.2} | {:.0}x |",
        rate,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max(),
        opens / commits.max(1.0),
        commits / seconds,
        1e6 * commit_seconds / commits.max(1.0),
        1e6 * disk_seconds / commits.max(1.0),
        100.0 * server_cpu / seconds,
        1e6 * server_cpu / total as f64,
        rate / peer
    );
    println!(
        "| peer: 64-byte append + fdatasync per op | {peer:.0} | | | | | 1 | | | | | | 1.0x |"
    );
}
