//! `hongbao load`: the load generator (issue 4). The main thread parses the options, connects
//! every connection, starts one pinned io_uring thread per CPU asked for ([`worker`]), prints
//! one progress line per second from the threads' ticks, and at the end merges their
//! histograms into the summary ([`stats`]): a markdown table on standard output and, with
//! `--out DIR`, `summary.json`, `.hgrm` percentile distributions, `report.md` and a
//! self-contained `report.html` with SVG charts ([`report`], [`chart`];
//! docs/formats/load-report.md).
//!
//! Closed loop (`--conns C --depth D`: C x D requests always in flight) or open loop
//! (`--rate R`: requests are due at fixed intended times and latency counts from those times,
//! so a stalled server is charged for the requests it held up; [`schedule`]).

pub mod chart;
pub mod idle;
pub mod im;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use self::schedule::Schedule;
use self::stats::{merge_ticks, Op, Recorder, RunConfig, Second, Summary, Tick};
use self::worker::{Msg, ThreadPlan, ThreadResult};

/// The operation a run is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadOp {
    /// SHAKE as many users (and OPEN every envelope won, unless --no-open).
    Shake,
    /// PING: the protocol's cost without the money path (no auth needed).
    Ping,
    /// Redis `LPOP --redis-key` over RESP, against a redis-server (the peer benchmark: the same
    /// client, pipelining and accounting as for hongbao). A popped value is outcome `ok`, an
    /// empty list `empty`.
    RedisLpop,
    /// The IM mix: every connection is one user that SENDs (single chats to the other users,
    /// and to its group with --im-groups) and pulls its stream on every PUSH; delivery
    /// latency (send -> visible in the recipient's pull) is measured per copy.
    Im,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server's binary port.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub target: String,
    /// Auth key file to sign the users' auth tokens with (the server's --auth-keys). Needed
    /// for shakes.
    #[arg(long)]
    pub auth_keys: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "shake")]
    pub op: LoadOp,
    /// --op redis-lpop: the list to pop from.
    #[arg(long, default_value = "tickets")]
    pub redis_key: String,
    /// Do not open the envelopes won.
    #[arg(long)]
    pub no_open: bool,
    /// Connections, over all threads.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Closed loop: requests in flight per connection. Open loop: the most in flight per
    /// connection (requests due beyond that wait, and their wait counts).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Open loop at this many requests per second (all threads); without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured (after warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Open loop: seconds over which the rate rises linearly from zero (part of warm-up if
    /// shorter than it).
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Load threads (each pinned, with its own io_uring). Default: one per --cpus entry, or 1.
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPUs to pin the threads to, e.g. `1` or `2,3` (thread k on the k-th, round robin).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Distinct users (uids FIRST .. FIRST+N-1), spread over the connections; a connection
    /// with several switches between them with HELLO. Default: one per connection.
    #[arg(long)]
    pub uids: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub uid_first: u64,
    /// Also hold this many idle connections open during the run (the connection-scale test):
    /// each authenticated with one HELLO as its own user (after the --uids users) when
    /// --auth-keys is given, then silent; checked still open at the end.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Source addresses for the idle connections, round robin (e.g. 127.0.0.2,127.0.0.3).
    /// Default for a loopback target: 127.0.0.2 and up, as many as the ephemeral port range
    /// needs.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<std::net::IpAddr>,
    /// Do not shake for a user again before the server's back-off hint has passed (as a real
    /// client must); without it, the hints are ignored (a stress test).
    #[arg(long)]
    pub obey_backoff: bool,
    /// Poll for replies instead of sleeping between rounds: each load thread keeps its CPU
    /// busy, and the client host's wake-up latency (large on VMs whose idle CPUs halt) stays
    /// out of the measured latency. For open-loop tail measurements on a dedicated client CPU.
    #[arg(long)]
    pub spin: bool,
    /// Write summary.json, report.md and .hgrm files into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A name for this run in reports.
    #[arg(long)]
    pub label: Option<String>,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// --op im: groups to create before the run (0: single chats only). User k of the run is
    /// in group k mod N.
    #[arg(long, default_value_t = 0)]
    pub im_groups: usize,
    /// --op im: members per group; beyond the run's users, outside uids fill the groups (their
    /// streams are written, not read), so a few connections can drive 10,000-member groups.
    #[arg(long, default_value_t = 100)]
    pub im_group_size: usize,
    /// --op im: share of sends to the sender's group (default 0.2 with --im-groups, else 0).
    #[arg(long)]
    pub im_group_share: Option<f64>,
    /// --op im: bytes of each message body (at least 24: the run's stamp).
    #[arg(long, default_value_t = 64)]
    pub im_body: usize,
}

/// How a run ended.
pub struct LoadOutcome {
    pub summary: Summary,
    /// Where the files went, when --out was given.
    pub written: Vec<PathBuf>,
}

/// "N x CPU model, Linux release": the machine line of every report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{nproc} x {cpu}, Linux {kernel}")
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        now.month() as u8,
        now.day()
    )
}

fn seconds(flag: &str, v: f64) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!(
            "--{flag} {v}: expected seconds between 0 and 86400"
        ));
    }
    Ok((v * 1e9) as u64)
}

/// The uids connection `c` of `conns` speaks for: c, c + conns, c + 2 conns, ... below `uids`.
fn conn_uids(c: usize, conns: usize, uids: u64, first: u64) -> Vec<u64> {
    (c as u64..uids).step_by(conns).map(|k| first + k).collect()
}

/// Runs a load as `args` say. Errors are for bad options and targets that cannot be reached;
/// a run that loses its server part-way returns its partial summary (`complete: false`).
pub fn run(args: &LoadArgs, command: String) -> Result<LoadOutcome, String> {
    let warmup_ns = seconds("warmup", args.warmup)?;
    let duration_ns = seconds("duration", args.duration)?;
    let ramp_ns = seconds("ramp", args.ramp)?;
    if duration_ns == 0 {
        return Err("--duration must be above 0".into());
    }
    if args.depth == 0 || args.depth > 65_536 {
        return Err("--depth must be between 1 and 65536".into());
    }
    let threads = args.threads.unwrap_or(if args.cpus.is_empty() {
        1
    } else {
        args.cpus.len()
    });
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.conns < threads {
        return Err(format!(
            "--conns {} is fewer than the {threads} threads",
            args.conns
        ));
    }
    // The CPUs this process may run on (all of them, unless started under taskset or a
    // cgroup cpuset).
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if let Some(bad) = args.cpus.iter().find(|c| !allowed.contains(c)) {
        let list: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
        return Err(format!(
            "--cpus {bad}: this process may run on CPUs {} only",
            list.join(",")
        ));
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "--rate {rate}: expected requests per second above 0"
            ));
        }
    }
    let uids = args.uids.unwrap_or(args.conns as u64);
    if uids < args.conns as u64 {
        return Err(format!(
            "--uids {uids} is fewer than the {} connections (each connection speaks for at \
             least one user)",
            args.conns
        ));
    }
    let op = match args.op {
        LoadOp::Shake => Op::Shake,
        LoadOp::Ping => Op::Ping,
        LoadOp::RedisLpop => Op::Lpop,
        LoadOp::Im => Op::Send,
    };
    if op == Op::Send && uids != args.conns as u64 {
        return Err(format!(
            "--op im: every connection is one user (its pushes are its own): --uids {uids} \
             must equal --conns {}",
            args.conns
        ));
    }
    let auth_keys = match (&args.auth_keys, op) {
        (_, Op::Lpop) => None,
        (Some(path), _) => Some(
            crate::serve::keys::load_key_file(path)
                .map_err(|e| format!("--auth-keys {}: {e}", path.display()))?
                .0,
        ),
        (None, Op::Ping) => None,
        (None, _) => {
            return Err(
                "--auth-keys FILE is needed to sign the users' auth tokens (the file the \
                 server was started with)"
                    .into(),
            )
        }
    };
    let target: SocketAddr = args
        .target
        .to_socket_addrs()
        .map_err(|e| format!("--target {}: {e}", args.target))?
        .next()
        .ok_or_else(|| format!("--target {}: no address", args.target))?;
    let expires_unix = (crate::gen::now_unix() as u64 + 86_400).min(u32::MAX as u64) as u32;
    let mix = if op == Op::Send {
        let keys = auth_keys.as_ref().expect("checked above");
        Some(im_setup(args, target, keys, expires_unix, uids)?)
    } else {
        None
    };
    let limit = crate::fsutil::raise_nofile_limit().unwrap_or(1024);
    // Idle connections are held without descriptors where io_uring allows (idle.rs).
    let idle_fds = if args.idle > 0 && !idle::held_without_descriptors() {
        args.idle
    } else {
        0
    };
    let needed = (args.conns + idle_fds) as u64 + 64;
    if needed > limit {
        return Err(format!(
            "{} connections need about {needed} descriptors; this process may open {limit}: \
             raise the limit (ulimit -n, tuning/limits.sh)",
            args.conns + idle_fds
        ));
    }

    let mut plans = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (0..args.conns).filter(|c| c % threads == t).collect();
        let schedule = args.rate.map(|rate| {
            let per_thread = rate / threads as f64;
            // Threads interleave: thread t is shifted by t / rate.
            Schedule::new(per_thread, ramp_ns, (t as f64 * 1e9 / rate) as u64)
        });
        plans.push(ThreadPlan {
            index: t,
            cpu: (!args.cpus.is_empty()).then(|| args.cpus[t % args.cpus.len()]),
            target,
            conn_uids: conns
                .iter()
                .map(|&c| conn_uids(c, args.conns, uids, args.uid_first))
                .collect(),
            depth: args.depth,
            schedule,
            warmup_ns,
            duration_ns,
            op,
            open_envelopes: !args.no_open && op == Op::Shake,
            obey_backoff: args.obey_backoff,
            spin: args.spin,
            auth_keys: auth_keys.clone(),
            expires_unix,
            redis_key: args.redis_key.clone().into_bytes(),
            im: mix.as_ref().map(|(m, _)| m.clone()),
            conn_groups: mix
                .as_ref()
                .map(|(_, of)| conns.iter().map(|&c| of[c]).collect())
                .unwrap_or_default(),
        });
    }

    // Connect everything first, in parallel per thread; any failure stops the run here.
    let connected: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|p| {
                s.spawn(move || {
                    let streams = worker::connect_all(&p);
                    (p, streams)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connect thread"))
            .collect()
    });
    let mut ready = Vec::with_capacity(threads);
    for (plan, streams) in connected {
        ready.push((plan, streams.map_err(|e| format!("cannot connect to {e}"))?));
    }

    let mut idle_set = if args.idle > 0 {
        let sources = if args.sources.is_empty() {
            idle::default_sources(target, args.idle, idle::per_source())
        } else {
            args.sources.clone()
        };
        if !args.quiet {
            eprintln!(
                "hongbao load: opening {} idle connections{}",
                args.idle,
                if sources.is_empty() {
                    String::new()
                } else {
                    format!(" from {} source addresses", sources.len())
                }
            );
        }
        let auth = auth_keys
            .as_ref()
            .filter(|_| op != Op::Lpop)
            .map(|k| (k, expires_unix));
        let set = idle::open(target, args.idle, &sources, auth, args.uid_first + uids)?;
        if !args.quiet {
            eprintln!(
                "hongbao load: {} idle connections open in {:.1} s ({:.0}/s)",
                set.len(),
                set.open_s,
                set.len() as f64 / set.open_s.max(1e-9)
            );
        }
        Some(set)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let (tx, rx) = crossbeam::channel::unbounded();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for (plan, streams) in ready {
        let (stop, tx) = (stop.clone(), tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("hongbao-load-{}", plan.index))
                .spawn(move || worker::run(plan, streams, start, stop, tx))
                .map_err(|e| format!("starting a load thread: {e}"))?,
        );
    }
    drop(tx);

    let mode = if args.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    if !args.quiet {
        eprintln!(
            "hongbao load: {} {mode} loop, {} connections{}, {threads} thread(s), {:.0} s \
             warm-up + {:.0} s",
            target,
            args.conns,
            match args.rate {
                Some(r) => format!(" at {r:.0} requests/s"),
                None => format!(" x depth {}", args.depth),
            },
            args.warmup,
            args.duration
        );
    }
    let mut pending: BTreeMap<(bool, u64), Vec<Tick>> = BTreeMap::new();
    let mut timeline = Vec::new();
    let mut emit_second = |ticks: &[Tick], measured: bool| {
        emit(
            ticks,
            measured,
            warmup_ns,
            duration_ns,
            args.quiet,
            &mut timeline,
        )
    };
    let mut results: Vec<ThreadResult> = Vec::new();
    let mut active = threads;
    for msg in rx {
        match msg {
            Msg::Tick(t) => pending.entry((!t.warmup, t.second)).or_default().push(t),
            Msg::Done(_, r) => {
                results.push(*r);
                active -= 1;
            }
        }
        while let Some(entry) = pending.first_entry() {
            if entry.get().len() < active.max(1) && active > 0 {
                break;
            }
            let ((measured, _), ticks) = entry.remove_entry();
            emit_second(&ticks, measured);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    for ((measured, _), ticks) in std::mem::take(&mut pending) {
        emit_second(&ticks, measured);
    }

    let mut recorder = Recorder::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut held_back, mut lost) = (0, 0);
    let mut connection_errors = Vec::new();
    let mut stop_reason = None;
    let mut measured_ns = 0;
    for r in &results {
        recorder.merge(&r.recorder);
        for (k, v) in &r.errors {
            *errors.entry(k.to_string()).or_default() += v;
        }
        held_back += r.held_back;
        lost += r.connections_lost;
        for e in &r.connection_errors {
            if connection_errors.len() < 5 && !connection_errors.contains(e) {
                connection_errors.push(e.clone());
            }
        }
        if stop_reason.is_none() {
            stop_reason.clone_from(&r.stopped);
        }
        measured_ns = measured_ns.max(r.measured_ns);
    }
    if let Some((m, _)) = &mix {
        // Copies of sent messages no pull showed by the end of the drain (lost, or later than
        // the drain's limit): a correctness signal, counted as errors.
        let missing = m.outstanding.load(std::sync::atomic::Ordering::Relaxed);
        if missing > 0 {
            errors.insert("copies_not_seen".into(), missing as u64);
        }
    }
    let measured_s = measured_ns as f64 / 1e9;
    let series = stats::summarize_series(&recorder, measured_s, args.rate.is_some());
    let replies: u64 = series
        .iter()
        .filter(|s| s.outcome == "all" && s.op != Op::Delivery)
        .map(|s| s.count)
        .sum();
    let summary = Summary {
        tool: "hongbao load".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        label: args.label.clone().unwrap_or_else(|| {
            format!(
                "{} {} {mode} loop, {}",
                if op == Op::Lpop { "redis" } else { "hongbao" },
                if op == Op::Send { "im" } else { op.name() },
                match args.rate {
                    Some(r) => format!("{r:.0}/s over {} connections", args.conns),
                    None => format!("{} x {}", args.conns, args.depth),
                }
            )
        }),
        command,
        machine: machine(),
        date: today(),
        config: RunConfig {
            target: target.to_string(),
            mode: mode.into(),
            threads,
            connections: args.conns,
            depth: args.depth,
            rate: args.rate,
            warmup_s: args.warmup,
            ramp_s: args.ramp,
            duration_s: args.duration,
            op,
            open_envelopes: !args.no_open && op == Op::Shake,
            uids,
            obey_backoff: args.obey_backoff,
            spin: args.spin,
        },
        measured_s,
        complete: stop_reason.is_none(),
        stop_reason,
        replies,
        replies_per_second: replies as f64 / measured_s.max(1e-9),
        errors,
        held_back,
        connections_lost: lost,
        connection_errors,
        series,
        timeline,
        idle: idle_set.as_mut().map(|set| set.summary(args.idle)),
    };
    let mut written = Vec::new();
    if let Some(dir) = &args.out {
        written = write_outputs(dir, &summary, &recorder)?;
    }
    Ok(LoadOutcome { summary, written })
}

/// `--op im`: checks the mix's options and creates its groups on the server; returns the mix
/// and, per connection (= user), its group.
fn im_setup(
    args: &LoadArgs,
    target: SocketAddr,
    keys: &crate::token::TokenKeys,
    expires_unix: u32,
    uids: u64,
) -> Result<(Arc<im::ImMix>, Vec<Option<u64>>), String> {
    if !(im::BODY_STAMP_BYTES..=crate::im::BODY_MAX).contains(&args.im_body) {
        return Err(format!(
            "--im-body {}: expected {} ..= {} bytes",
            args.im_body,
            im::BODY_STAMP_BYTES,
            crate::im::BODY_MAX
        ));
    }
    let share = args
        .im_group_share
        .unwrap_or(if args.im_groups > 0 { 0.2 } else { 0.0 });
    if !(0.0..=1.0).contains(&share) || (share > 0.0 && args.im_groups == 0) {
        return Err(format!(
            "--im-group-share {share}: expected 0 ..= 1, and groups to send to (--im-groups)"
        ));
    }
    let users: Vec<u64> = (0..uids).map(|k| args.uid_first + k).collect();
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| format!("no random bytes for the run's nonce: {e}"))?;
    let nonce = u64::from_le_bytes(seed);
    let (groups, of) = im::plan_groups(
        &users,
        args.im_groups,
        args.im_group_size,
        args.uid_first + uids,
        nonce,
    )?;
    if !groups.is_empty() && !args.quiet {
        eprintln!(
            "hongbao load: creating {} group(s) of {} members",
            groups.len(),
            args.im_group_size
        );
    }
    im::create_groups(target, keys, expires_unix, &groups)?;
    let mut group_users = std::collections::HashMap::new();
    for gid in of.iter().flatten() {
        *group_users.entry(*gid).or_insert(0u32) += 1;
    }
    let mix = im::ImMix {
        nonce,
        body_bytes: args.im_body,
        group_share: share,
        users,
        group_users,
        outstanding: std::sync::atomic::AtomicI64::new(0),
    };
    Ok((Arc::new(mix), of))
}

/// Prints one progress line (and keeps measured seconds for the timeline).
fn emit(
    ticks: &[Tick],
    measured: bool,
    warmup_ns: u64,
    duration_ns: u64,
    quiet: bool,
    timeline: &mut Vec<Second>,
) {
    let s = merge_ticks(ticks);
    let (phase_ns, label) = if measured {
        (duration_ns, format!("{:>5}s", s.second))
    } else {
        (warmup_ns, format!("warm-up {}s", s.second))
    };
    let start = (s.second - 1) * 1_000_000_000;
    let length = phase_ns.saturating_sub(start).clamp(1, 1_000_000_000) as f64 / 1e9;
    if !quiet {
        let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
        for t in ticks {
            for (k, v) in &t.error_codes {
                *codes.entry(k).or_default() += v;
            }
        }
        let mut line = format!(
            "{label} {:>11.0} replies/s  p50 {}  p99 {}  p99.9 {}  errors {}",
            s.replies as f64 / length,
            short_us(s.p50_us),
            short_us(s.p99_us),
            short_us(s.p999_us),
            s.errors
        );
        if !codes.is_empty() {
            let list: Vec<String> = codes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = write!(line, " ({})", list.join(", "));
        }
        eprintln!("{line}");
    }
    if measured {
        timeline.push(s);
    }
}

fn short_us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

/// Writes summary.json, report.md, report.html with its SVG charts, and the .hgrm files.
fn write_outputs(
    dir: &std::path::Path,
    summary: &Summary,
    recorder: &Recorder,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: String, bytes: &[u8]| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let json = serde_json::to_vec_pretty(summary).expect("summary serializes");
    put("summary.json".into(), &json)?;
    let rendered = report::render(std::slice::from_ref(summary));
    for (name, text) in rendered.files() {
        put(name.to_string(), text.as_bytes())?;
    }
    for op in Op::ALL {
        if let Some(h) = recorder.op_total(op, true) {
            put(format!("{}.hgrm", op.name()), stats::hgrm(&h).as_bytes())?;
        }
        if let Some(h) = recorder.op_total(op, false) {
            if summary.config.rate.is_some() {
                put(
                    format!("{}.uncorrected.hgrm", op.name()),
                    stats::hgrm(&h).as_bytes(),
                )?;
            }
        }
        for s in recorder.series.iter().filter(|s| s.op == op) {
            put(
                format!("{}-{}.hgrm", op.name(), s.outcome),
                stats::hgrm(&s.corrected).as_bytes(),
            )?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_spread_over_connections() {
        assert_eq!(conn_uids(0, 4, 4, 1), vec![1]);
        assert_eq!(conn_uids(3, 4, 4, 1), vec![4]);
        assert_eq!(conn_uids(1, 4, 10, 100), vec![101, 105, 109]);
        assert_eq!(conn_uids(3, 4, 10, 100), vec![103, 107]);
        let all: Vec<u64> = (0..4).flat_map(|c| conn_uids(c, 4, 10, 0)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn seconds_are_checked() {
        assert_eq!(seconds("x", 1.5), Ok(1_500_000_000));
        assert!(seconds("x", -1.0).is_err());
        assert!(seconds("x", f64::NAN).is_err());
    }
}
