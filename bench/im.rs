//! IM benchmarks (issue 5), three parts, each with its machine and date line:
//!
//! 1. In process, one core's IM engine (no network, no fsync: batches are dropped as written):
//!    member-stream appends per second while messages fan out to a 10,000-member group, one
//!    message per delivery record and with backlogged messages merged (R21). Goal >= 5 M/s.
//! 2. Over loopback, durable: a server on one pinned core (`--cores 1`), a client on the
//!    other. Messages to a 10,000-member group, one after another: time from send to every
//!    member copy durable (the server's `hongbao_im_fanout_seconds`, on the sender's core),
//!    send to acknowledgement, and send to the PUSH at a watching member (client clocks,
//!    HdrHistogram). Goal p99 <= 10 ms.
//! 3. Isolation (R22): single-chat latency (send to PUSH at the recipient) at a fixed rate,
//!    alone and while another client floods the 10,000-member group. Goal: loaded p99 within
//!    2x of unloaded.
//!
//! Run: `cargo bench --bench im -- [--messages N] [--members M] [--bulk-hold-us US]
//! [--preempt-us US]`. Under
//! `cargo test --all-targets` it does a small smoke run.

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use hongbao::client::Client;
use hongbao::im::{Class, Effects, ImCore, ImReply, SendRequest, Target};
use hongbao::shake::engine::Route;
use hongbao::store::LogWriter;
use hongbao::token::Auth;
use hongbao::wire::im::ImDecoded;
use hongbao::wire::ops::Reply;

#[derive(Parser)]
struct Args {
    /// Messages per part (default 1,000; 40 for the smoke run).
    #[arg(long)]
    messages: Option<u64>,
    /// Members of the big group.
    #[arg(long, default_value_t = 10_000)]
    members: u64,
    /// Messages per merged run in part 1.
    #[arg(long, default_value_t = 16)]
    merge: u64,
    /// Single-chat messages per second in part 3.
    #[arg(long, default_value_t = 500)]
    chat_rate: u64,
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// The server's `store.bulk_hold_us` (default: the server's default; 0 turns it off).
    #[arg(long)]
    bulk_hold_us: Option<u32>,
    /// The server's `server.preempt_us` (default: the server's default).
    #[arg(long)]
    preempt_us: Option<u32>,
    #[arg(long, hide = true)]
    bench: bool,
}

use common::{metric, pin, scrape as metrics};

/// Runs one core's engine until nothing is in flight; batches are "written" at once.
fn settle(im: &mut ImCore, log: &mut LogWriter, fx: &mut Effects) {
    loop {
        let mut busy = false;
        while let Some((_, msg)) = fx.messages.pop() {
            im.handle(msg, 0, log, fx);
            busy = true;
        }
        im.flush(log);
        if let Some(batch) = log.take_batch() {
            log.complete(batch.end);
            im.batch_done(batch.end, 0, log, fx);
            busy = true;
        }
        fx.replies.clear();
        fx.pushes.clear();
        fx.fanout_us.clear();
        if !busy && fx.messages.is_empty() {
            return;
        }
    }
}

/// Part 1: member-stream appends per second of one core's engine.
fn in_process(members: u64, messages: u64, merge: u64) -> (f64, f64) {
    let run = |per_run: u64| {
        let mut im = ImCore::new(0, 1);
        let mut log = LogWriter::new(0, 0, 0, 1 << 30, 1 << 30, 0);
        let mut fx = Effects::default();
        let list: Vec<u64> = (2..members + 1).collect();
        im.create_group(7, 1, &list, Route::Local(0), &mut log, &mut fx);
        settle(&mut im, &mut log, &mut fx);
        let started = Instant::now();
        let before = im.stats.stream_appends;
        let mut sent = 0;
        while sent < messages {
            for _ in 0..per_run.min(messages - sent) {
                sent += 1;
                let req = SendRequest {
                    sender: 1 + sent % 4,
                    appinfo: u128::from(sent),
                    to: Target::Group(7),
                    class: Class::Chat,
                    body: b"a typical short chat message of some forty bytes"
                        .as_slice()
                        .into(),
                };
                im.send(req, Route::Local(sent), 0, &mut log, &mut fx);
            }
            settle(&mut im, &mut log, &mut fx);
        }
        let appends = im.stats.stream_appends - before;
        assert_eq!(
            appends,
            messages * members,
            "every member got every message"
        );
        appends as f64 / started.elapsed().as_secs_f64()
    };
    (run(1), run(merge))
}

struct Server {
    child: std::process::Child,
    binary: SocketAddr,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(base: &Path, cpu: usize, args: &Args) -> Server {
    let mut config = Vec::new();
    let mut toml = String::new();
    if let Some(us) = args.preempt_us {
        toml += &format!("[server]\npreempt_us = {us}\n");
    }
    if let Some(us) = args.bulk_hold_us {
        toml += &format!("[store]\nbulk_hold_us = {us}\n");
    }
    if !toml.is_empty() {
        std::fs::write(base.join("bench.toml"), toml).expect("config");
        config = vec!["--config", "bench.toml"];
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hongbao"))
        .args([
            "serve",
            "--host",
            "h",
            "--tickets",
            "event/A",
            "--keyring",
            "bench.keyring",
            "--data",
            "data",
            "--auth-keys",
            "auth.keys",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--rehearse",
            "--cores",
            "1",
            "--cpus",
            &cpu.to_string(),
        ])
        .args(config)
        .current_dir(base)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("hongbao serve: ready") => break l,
            Some(Ok(_)) => continue,
            _ => panic!("server did not start"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let words: Vec<&str> = ready.split_whitespace().collect();
    let at = |w: &str| words[words.iter().position(|x| *x == w).expect("field") + 1];
    Server {
        child,
        binary: at("binary").parse().expect("addr"),
        http: at("http").parse().expect("addr"),
    }
}

/// (bound in seconds, cumulative count) of one histogram family, summed over cores.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let le = match le {
            Some("+Inf") => f64::INFINITY,
            Some(x) => x.parse().unwrap_or(f64::INFINITY),
            None => continue,
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Group commits between two /metrics snapshots: "N commits/s, mean X ms, Y KiB each".
fn commits(before: &str, after: &str, seconds: f64) -> String {
    let d = |name: &str| metric(after, name) - metric(before, name);
    let n = d("hongbao_log_commits_total").max(1.0);
    format!(
        "{:.0} commits/s, mean {:.2} ms, {:.1} KiB each; bulk held for an urgent commit {:.0} times; {:.0} sends parked (log behind, R23)",
        n / seconds,
        d("hongbao_log_commit_seconds_sum") / n * 1e3,
        d("hongbao_log_commit_bytes_total") / n / 1024.0,
        d("hongbao_log_bulk_holds_total"),
        d("hongbao_im_parked_total")
    )
}

/// The upper bound of the bucket holding quantile `q` of a cumulative histogram.
fn quantile_bound(b: &[(f64, f64)], q: f64) -> f64 {
    let total = b.last().map_or(0.0, |x| x.1);
    b.iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::NAN, |x| x.0)
}

fn client(addr: SocketAddr, keys: &hongbao::token::TokenKeys, uid: u64) -> Client {
    let auth = Auth {
        uid,
        expires_unix: (hongbao::gen::now_unix() + 3600) as u32,
    }
    .encode(keys);
    let mut c = Client::connect(addr).expect("connect");
    assert!(matches!(c.hello(&auth).expect("hello"), Reply::Hello(_)));
    c
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn line(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "{name}: n {} p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    )
}

/// Sends `n` messages to group 7 one after another; returns send-to-ack and send-to-PUSH at
/// member `watcher` (microseconds).
fn group_round_trips(
    sender: &mut Client,
    watcher: &mut Client,
    n: u64,
    appinfo_base: u128,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut ack = Histogram::<u64>::new(3).expect("histogram");
    let mut push = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let started = Instant::now();
        let r = sender
            .im_send(
                appinfo_base + u128::from(i),
                Target::Group(7),
                Class::Chat,
                b"to the whole group",
            )
            .expect("send");
        assert!(
            matches!(r, Reply::Im(ImDecoded::Reply(ImReply::Sent { .. }))),
            "{r:?}"
        );
        ack.record(started.elapsed().as_micros() as u64)
            .expect("record");
        watcher.pushes.clear();
        let got = watcher.wait_push(Duration::from_secs(5)).expect("push");
        assert!(got.is_some(), "no push within 5 s");
        push.record(started.elapsed().as_micros() as u64)
            .expect("record");
    }
    (ack, push)
}

/// Single chats at `rate` per second from `a` to `b` for `n` messages: send to PUSH at `b`.
fn chat(
    a: &mut Client,
    b: &mut Client,
    to: u64,
    n: u64,
    rate: u64,
    appinfo_base: u128,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for i in 0..n {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        let r = a
            .im_send(
                appinfo_base + u128::from(i),
                Target::User(to),
                Class::Chat,
                b"hi",
            )
            .expect("send");
        assert!(
            matches!(r, Reply::Im(ImDecoded::Reply(ImReply::Sent { .. }))),
            "{r:?}"
        );
        let got = b.wait_push(Duration::from_secs(5)).expect("push");
        assert!(got.is_some(), "no push within 5 s");
        h.record(t.elapsed().as_micros() as u64).expect("record");
        b.pushes.clear();
    }
    h
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let messages = args.messages.unwrap_or(if smoke { 40 } else { 1_000 });
    let members = if smoke { 1_000 } else { args.members };
    println!("{}; {}", common::machine(), common::today());

    // Part 1.
    pin(args.server_cpu);
    let (single, merged) = in_process(members, messages, args.merge);
    println!(
        "1. in process, one core, {members}-member group, {messages} messages: {:.2} M member-stream appends/s one message per record, {:.2} M/s merged {} per record (goal >= 5 M/s)",
        single / 1e6,
        merged / 1e6,
        args.merge
    );

    // Part 2.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("im-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    common::generate_event(&base, 10_000);
    let keys = hongbao::serve::keys::create_key_file(&base.join("auth.keys")).expect("auth keys");
    let server = start_server(&base, args.server_cpu, &args);
    pin(args.client_cpu);
    let mut owner = client(server.binary, &keys, 1);
    let list: Vec<u64> = (2..members + 1).collect();
    for chunk in list.chunks(5_000) {
        let r = if chunk[0] == 2 {
            owner.group_create(7, chunk)
        } else {
            owner.call(
                hongbao::wire::im::OP_GROUP_ADD,
                &hongbao::wire::im::encode_group(7, chunk),
            )
        }
        .expect("group");
        assert!(
            matches!(r, Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))),
            "{r:?}"
        );
    }
    let mut watcher = client(server.binary, &keys, members);
    let _ = watcher.im_sync(0, 1);
    let (ack, push) = group_round_trips(&mut owner, &mut watcher, messages, 1 << 32);
    let text = metrics(server.http);
    let fanout = buckets(&text, "hongbao_im_fanout_seconds");
    println!(
        "2. over loopback, durable, one server core: {messages} messages to a {members}-member group one after another: fan-out to every member copy durable (server) p50 <= {} ms, p99 <= {} ms (histogram bucket bounds; goal p99 <= 10 ms)",
        quantile_bound(&fanout, 0.5) * 1e3,
        quantile_bound(&fanout, 0.99) * 1e3
    );
    println!("   {}", line("send to ack (client)", &ack));
    println!(
        "   {}",
        line("send to PUSH at the last member (client)", &push)
    );

    // Part 3.
    let chats = if smoke { 50 } else { 2_000 };
    // Two users outside the group chat with each other.
    let (ua, ub) = (members + 10, members + 11);
    let mut a = client(server.binary, &keys, ua);
    let mut b = client(server.binary, &keys, ub);
    let _ = b.im_sync(u64::MAX - 1, 1);
    let (m0, t0) = (metrics(server.http), Instant::now());
    let alone = chat(&mut a, &mut b, ub, chats, args.chat_rate, 2 << 32);
    let alone_commits = commits(&m0, &metrics(server.http), t0.elapsed().as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let addr = server.binary;
        let keys = keys.clone();
        std::thread::spawn(move || {
            pin(args.client_cpu);
            let mut f = client(addr, &keys, 3);
            let mut n = 0u64;
            // Pipelined: 8 sends in flight.
            let mut in_flight = 0;
            while !stop.load(Ordering::Relaxed) {
                while in_flight < 8 {
                    f.send(
                        hongbao::wire::im::OP_SEND,
                        &hongbao::wire::im::encode_send(
                            (3 << 32) + u128::from(n),
                            Target::Group(7),
                            Class::Chat,
                            b"flood",
                        ),
                    );
                    n += 1;
                    in_flight += 1;
                }
                f.flush().expect("flush");
                f.recv_reply().expect("reply");
                in_flight -= 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let (m0, t0) = (metrics(server.http), Instant::now());
    let loaded = chat(&mut a, &mut b, ub, chats, args.chat_rate, 4 << 32);
    let loaded_commits = commits(&m0, &metrics(server.http), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let flooded = flood.join().expect("flood thread");
    println!(
        "3. isolation: single chats at {}/s, send to PUSH: alone p99 {:.2} ms; while {flooded} messages flood the {members}-member group p99 {:.2} ms ({:.1}x; goal <= 2x)",
        args.chat_rate,
        ms(&alone, 0.99),
        ms(&loaded, 0.99),
        ms(&loaded, 0.99) / ms(&alone, 0.99).max(0.001)
    );
    println!("   {}; {alone_commits}", line("alone", &alone));
    println!("   {}; {loaded_commits}", line("flooded", &loaded));
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}
