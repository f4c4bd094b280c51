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
//!    alone and while another client floods the 10,000-member group, in rounds (the flood's
//!    backlog drained after it), so a drift of the machine's speed weighs on both sides alike.
//!    Goal: loaded p99 within 2x of unloaded. The peer in each round: the disk alone, the
//!    same number of 256-byte writes at the same rate into a zeroed file in the server's
//!    directory, each followed by fdatasync (what a chat's commit costs the disk, and the
//!    floor under its latency). The three phases rotate their order from round to round.
//!    Also printed: each round's p99s (and the flooded commits' time in the disk), send to
//!    acknowledgement, and the group commits of each side (rate, mean time and the part of it
//!    in the system calls, bytes, share over 1 / 2 / 5 ms).
//!
//! Run: `cargo bench --bench im -- [--messages N] [--members M] [--bulk-hold-us US]
//! [--preempt-us US] [--rounds N] [--chats N] [--in-process-only]`. Under
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
    /// Single chats per side (alone, flooded) in part 3, split over the rounds.
    #[arg(long, default_value_t = 2_000)]
    chats: u64,
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
    /// Rounds of part 3 (each: chats alone, chats flooded; the order alternates).
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Part 1 alone (in process; no server).
    #[arg(long)]
    in_process_only: bool,
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

/// Part 1: member-stream appends per second of one core's engine, and appends per delivery
/// record (one message per record, then `merge` merged).
fn in_process(members: u64, messages: u64, merge: u64) -> ((f64, f64), (f64, f64)) {
    let run = |per_run: u64| {
        let mut im = ImCore::new(0, 1);
        // The engine's own speed: the huge-group pacing (R21: a token bucket of member
        // appends per second, refilled with time, which stands still here) is lifted, so
        // each batch writes its slice of up to a burst of appends, as the server does when
        // the pace allows.
        im.set_huge_rate(1 << 40, hongbao::im::engine::HUGE_APPENDS_BURST);
        let mut log = LogWriter::new(0, 0, 0, 1 << 30, 1 << 30, 0);
        let mut fx = Effects::default();
        let list: Vec<u64> = (2..members + 1).collect();
        im.create_group(7, 1, &list, Route::Local(0), &mut log, &mut fx);
        settle(&mut im, &mut log, &mut fx);
        let started = Instant::now();
        let before = im.stats.stream_appends;
        let records_before = im.stats.delivery_records;
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
        let records = im.stats.delivery_records - records_before;
        (
            appends as f64 / started.elapsed().as_secs_f64(),
            appends as f64 / records as f64,
        )
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

/// Group commits over one or more measured phases, from /metrics snapshots taken around
/// each: "N commits/s, mean X ms, Y KiB each; ...".
#[derive(Default)]
struct CommitStats {
    seconds: f64,
    commits: f64,
    commit_seconds: f64,
    bytes: f64,
    holds: f64,
    parked: f64,
    disk_us: f64,
    /// Commits that took over 1, 2 and 5 ms.
    slow: [f64; 3],
}

impl CommitStats {
    fn add(&mut self, before: &str, after: &str, seconds: f64) {
        let d = |name: &str| metric(after, name) - metric(before, name);
        self.seconds += seconds;
        self.commits += d("hongbao_log_commits_total");
        self.commit_seconds += d("hongbao_log_commit_seconds_sum");
        self.disk_us += d("hongbao_log_disk_microseconds_total");
        self.bytes += d("hongbao_log_commit_bytes_total");
        self.holds += d("hongbao_log_bulk_holds_total");
        self.parked += d("hongbao_im_parked_total");
        let (b0, b1) = (
            buckets(before, "hongbao_log_commit_seconds"),
            buckets(after, "hongbao_log_commit_seconds"),
        );
        let total = b1.last().map_or(0.0, |x| x.1) - b0.last().map_or(0.0, |x| x.1);
        for (i, bound) in [0.001, 0.002, 0.005].into_iter().enumerate() {
            let within = |b: &[(f64, f64)]| b.iter().find(|x| x.0 == bound).map_or(0.0, |x| x.1);
            self.slow[i] += total - (within(&b1) - within(&b0));
        }
    }
}

impl std::fmt::Display for CommitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.commits.max(1.0);
        write!(
            f,
            "{:.0} commits/s, mean {:.2} ms (in write and fdatasync {:.2} ms), {:.1} KiB each, over 1 / 2 / 5 ms: {:.1} / {:.1} / {:.2}%; bulk held for an urgent commit {:.0} times; {:.0} sends parked (log behind, R23)",
            self.commits / self.seconds.max(1e-9),
            self.commit_seconds / n * 1e3,
            self.disk_us / n / 1e3,
            self.bytes / n / 1024.0,
            self.slow[0] / n * 100.0,
            self.slow[1] / n * 100.0,
            self.slow[2] / n * 100.0,
            self.holds,
            self.parked
        )
    }
}

/// Another client flooding group 7 with 8 sends in flight, on its own thread.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Flood {
    /// Starts flooding; appinfos continue from `sent` (the messages earlier floods sent).
    fn start(addr: SocketAddr, keys: &hongbao::token::TokenKeys, cpu: usize, sent: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let keys = keys.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin(cpu);
            let mut f = client(addr, &keys, 3);
            let mut n = 0u64;
            let mut in_flight = 0;
            while !flag.load(Ordering::Relaxed) {
                while in_flight < 8 {
                    f.send(
                        hongbao::wire::im::OP_SEND,
                        &hongbao::wire::im::encode_send(
                            (3 << 32) + u128::from(sent + n),
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
            // Every send answered before the connection closes.
            for _ in 0..in_flight {
                f.recv_reply().expect("reply");
            }
            n
        });
        Flood { stop, thread }
    }

    /// Stops it; returns how many messages it sent.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flood thread")
    }
}

/// Waits until the server wrote every member copy of the flood (its huge-group backlog is
/// empty), so the next phase starts from an idle server.
fn drain(http: SocketAddr) {
    // The gauge is refreshed every tick (10 ms): two zero readings 50 ms apart.
    let until = Instant::now() + Duration::from_secs(60);
    let mut zeros = 0;
    while zeros < 2 {
        assert!(
            Instant::now() < until,
            "the flood's backlog did not drain in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
        if metric(&metrics(http), "hongbao_im_huge_backlog") > 0.0 {
            zeros = 0;
        } else {
            zeros += 1;
        }
    }
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

/// Sleeps until the `i`th of a series paced at `rate` per second from `started` is due.
fn wait_turn(started: Instant, i: u64, rate: u64) {
    let due = Duration::from_secs_f64(i as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// The disk alone at the chats' pace: `n` writes of 256 bytes at `rate` per second into
/// `file` (zeroed and synced beforehand, so no write extends it: the log's small commits
/// overwrite preallocated space the same way), each followed by fdatasync; their times.
fn disk_alone(file: &std::fs::File, n: u64, rate: u64, at: &mut u64) -> Histogram<u64> {
    use std::os::unix::fs::FileExt;
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let len = file.metadata().expect("probe file").len();
    let block = [0x5au8; 256];
    let started = Instant::now();
    for i in 0..n {
        wait_turn(started, i, rate);
        let t = Instant::now();
        file.write_all_at(&block, *at).expect("probe write");
        file.sync_data().expect("probe fdatasync");
        h.record(t.elapsed().as_micros() as u64).expect("record");
        *at = (*at + 256) % len;
    }
    h
}

/// Single chats at `rate` per second from `a` to `b` for `n` messages: send to PUSH at `b`
/// (returned) and send to acknowledgement (added to `acks`).
fn chat(
    a: &mut Client,
    b: &mut Client,
    to: u64,
    n: u64,
    rate: u64,
    appinfo_base: u128,
    acks: &mut Histogram<u64>,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for i in 0..n {
        wait_turn(started, i, rate);
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
        acks.record(t.elapsed().as_micros() as u64).expect("record");
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
    let ((single, single_per), (merged, merged_per)) = in_process(members, messages, args.merge);
    println!(
        "1. in process, one core, {members}-member group, {messages} messages: {:.2} M member-stream appends/s one message per record, {:.2} M/s merged {} per record (goal >= 5 M/s); {single_per:.0} and {merged_per:.0} appends per record",
        single / 1e6,
        merged / 1e6,
        args.merge
    );

    if args.in_process_only {
        return;
    }

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

    // Part 3: alone, flooded and the disk alone in rotating order (each first in every third
    // round), so a drift of this machine's speed during the part weighs on all sides alike;
    // after each flooded phase the group's backlog drains before the next.
    let chats = if smoke { 50 } else { args.chats };
    let rounds = if smoke { 2 } else { args.rounds.max(1) };
    let per = chats / rounds;
    // Two users outside the group chat with each other.
    let (ua, ub) = (members + 10, members + 11);
    let mut a = client(server.binary, &keys, ua);
    let mut b = client(server.binary, &keys, ub);
    let _ = b.im_sync(u64::MAX - 1, 1);
    // Per side (0 alone, 1 flooded): send to PUSH, send to ack, group commits.
    let mut sides: [(Histogram<u64>, Histogram<u64>, CommitStats); 2] = std::array::from_fn(|_| {
        (
            Histogram::new(3).expect("histogram"),
            Histogram::new(3).expect("histogram"),
            CommitStats::default(),
        )
    });
    let mut ratios = Vec::new();
    // The flooded side's mean time in write and fdatasync per commit, per round.
    let mut disk = Vec::new();
    let mut flooded = 0u64;
    // The disk peer: a zeroed, synced 4 MiB file next to the server's log.
    let probe = {
        let path = base.join("disk-probe");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("probe file");
        std::io::Write::write_all(&mut &f, &vec![0u8; 4 << 20]).expect("zero the probe file");
        f.sync_all().expect("sync the probe file");
        f
    };
    let (mut probe_at, mut disk_alone_h) = (0u64, Histogram::<u64>::new(3).expect("histogram"));
    for round in 0..rounds {
        let mut p99 = [0.0f64; 3];
        for phase in (0..3).map(|i| (round + i) % 3) {
            if phase == 2 {
                let h = disk_alone(&probe, per, args.chat_rate, &mut probe_at);
                p99[2] = ms(&h, 0.99);
                disk_alone_h.add(&h).expect("same histogram bounds");
                continue;
            }
            let flood = (phase == 1).then(|| {
                let f = Flood::start(server.binary, &keys, args.client_cpu, flooded);
                std::thread::sleep(Duration::from_millis(200));
                f
            });
            let (push, acks, commits) = &mut sides[phase as usize];
            let (m0, t0) = (metrics(server.http), Instant::now());
            let appinfos = ((2 + 2 * phase as u128) << 32) + u128::from(round * per);
            let h = chat(&mut a, &mut b, ub, per, args.chat_rate, appinfos, acks);
            let (disk_us, n) = (commits.disk_us, commits.commits);
            commits.add(&m0, &metrics(server.http), t0.elapsed().as_secs_f64());
            if phase == 1 {
                disk.push((commits.disk_us - disk_us) / (commits.commits - n).max(1.0) / 1e3);
            }
            p99[phase as usize] = ms(&h, 0.99);
            push.add(&h).expect("same histogram bounds");
            if let Some(f) = flood {
                flooded += f.stop();
                drain(server.http);
            }
        }
        ratios.push(p99);
    }
    let [(alone, alone_acks, alone_commits), (loaded, loaded_acks, loaded_commits)] = sides;
    println!(
        "3. isolation: single chats at {}/s, send to PUSH: alone p99 {:.2} ms; while {flooded} messages flood the {members}-member group p99 {:.2} ms ({:.1}x; goal <= 2x)",
        args.chat_rate,
        ms(&alone, 0.99),
        ms(&loaded, 0.99),
        ms(&loaded, 0.99) / ms(&alone, 0.99).max(0.001)
    );
    let each: Vec<String> = ratios
        .iter()
        .map(|[a, f, d]| format!("{a:.2}/{f:.2}/{d:.2} ms ({:.1}x)", f / a.max(0.001)))
        .collect();
    println!(
        "   {rounds} rounds of {per} chats alone, {per} flooded and {per} disk writes alone, in rotating order; p99 alone/flooded/disk per round (flooded/alone): {}",
        each.join(" ")
    );
    println!(
        "   {}",
        line(
            "the disk alone (256-byte write + fdatasync at the same rate, same directory)",
            &disk_alone_h
        )
    );
    let each: Vec<String> = disk.iter().map(|d| format!("{d:.2}")).collect();
    println!(
        "   flooded commits' mean time in write and fdatasync per round: {} ms",
        each.join(" ")
    );
    println!("   {}; {alone_commits}", line("alone", &alone));
    println!("   {}; {loaded_commits}", line("flooded", &loaded));
    println!(
        "   send to ack: {}; {}",
        line("alone", &alone_acks),
        line("flooded", &loaded_acks)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}
