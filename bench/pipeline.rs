//! Ticket pipeline benchmark: generation and verification rates per core, against an in-process
//! floor peer (raw AES-128 + CRC32C over the same bytes with the same crates), measured in the
//! same run on tmpfs so the disk is out of the picture.
//!
//! Run: `cargo bench --bench pipeline -- --tickets 20000000`. Under `cargo test --all-targets`
//! it does a small smoke run, so the benchmark code itself stays tested.
//! Phases for callgrind (see bench/callgrind.sh): `--phase gen|verify|floor --dir D --tickets N`.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use clap::Parser;

use hongbao::gen::{generate, GenOptions};
use hongbao::plan::Plan;
use hongbao::verify::{verify, VerifyOptions};

#[derive(Parser)]
struct Args {
    /// Tickets in the benchmark event (default 20,000,000; 200,000 for the smoke run that
    /// `cargo test --all-targets` does, which passes no --bench flag).
    #[arg(long)]
    tickets: Option<u64>,
    /// Working directory; defaults to a fresh directory under /dev/shm (tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run only one phase, single-threaded, for instruction counting: gen, verify or floor;
    /// or `plan` to write the benchmark plan to DIR/plan.toml (used by bench/rss.sh).
    #[arg(long)]
    phase: Option<String>,
    /// Runs of each row; the median (by CPU time) is reported with the min-max spread.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A plan of `tickets` envelopes: eight sponsors, one slot, two single-core hosts (two files).
fn bench_plan(tickets: u64) -> String {
    let per_merchant = tickets / 8;
    let mut text = String::from(
        "[event]\nname = \"bench\"\n\n\
         [[topology.host]]\nname = \"h0\"\npark = \"A\"\ncores = 1\n\n\
         [[topology.host]]\nname = \"h1\"\npark = \"B\"\ncores = 1\n\n\
         [[slot]]\nname = \"s0\"\nstart = \"2027-02-06T20:00:00+08:00\"\nend = \"2027-02-06T20:10:00+08:00\"\n",
    );
    for m in 0..8u64 {
        let count = if m == 0 {
            tickets - 7 * per_merchant
        } else {
            per_merchant
        };
        text.push_str(&format!(
            "\n[[merchant]]\nid = {}\nname = \"Sponsor {m}\"\nkind = \"image\"\nbudget_cents = {}\n\
             count = {count}\nmin_cents = 1\nmax_cents = 20000\n",
            1000 + m,
            count * 1000
        ));
    }
    text
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Measure {
    name: &'static str,
    threads: usize,
    tickets: u64,
    wall: f64,
    cpu: f64,
    cpu_min: f64,
    cpu_max: f64,
}

/// Runs `f` `repeat` times and keeps the run with the median CPU time.
fn measure(
    name: &'static str,
    threads: usize,
    tickets: u64,
    repeat: usize,
    mut f: impl FnMut(),
) -> Measure {
    let mut runs: Vec<(f64, f64)> = (0..repeat.max(1))
        .map(|_| {
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            f();
            (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64())
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu, wall) = runs[runs.len() / 2];
    Measure {
        name,
        threads,
        tickets,
        wall,
        cpu,
        cpu_min: runs[0].0,
        cpu_max: runs[runs.len() - 1].0,
    }
}

fn run_gen(plan: &Plan, dir: &Path, threads: usize) {
    let _ = std::fs::remove_dir_all(dir.join("event"));
    let _ = std::fs::remove_file(dir.join("event.keyring"));
    generate(
        plan,
        &GenOptions {
            out: dir.join("event"),
            keyring: dir.join("event.keyring"),
            seed: Some(1),
            threads,
            force: true,
            progress: false,
        },
    )
    .expect("gen");
}

fn run_verify(dir: &Path, threads: usize) {
    let report = verify(&VerifyOptions {
        dir: dir.join("event"),
        keyring: dir.join("event.keyring"),
        plan: None,
        threads,
        progress: false,
        findings_max: 10,
        regenerate: true,
    })
    .expect("verify runs");
    assert!(report.ok(), "{:?}", report.findings.shown);
}

/// The floor: what any sealed-ticket pipeline must at least do per ticket with these crates,
/// AES-128 on one block and CRC32C over 26 bytes, in the same 4096-record batches.
fn run_floor(tickets: u64) -> u32 {
    let cipher = Aes128::new(&[7u8; 16].into());
    let mut blocks = vec![Block::default(); 4096];
    let mut bytes = vec![0u8; 4096 * 26];
    let mut crc = 0u32;
    let mut left = tickets;
    let mut counter = 0u64;
    while left > 0 {
        let n = left.min(4096) as usize;
        for b in blocks[..n].iter_mut() {
            counter += 1;
            b[..8].copy_from_slice(&counter.to_le_bytes());
        }
        cipher.encrypt_blocks(&mut blocks[..n]);
        for (i, b) in blocks[..n].iter().enumerate() {
            bytes[i * 26 + 10..i * 26 + 26].copy_from_slice(b);
        }
        crc = crc32c::crc32c_append(crc, &bytes[..n * 26]);
        left -= n as u64;
    }
    crc
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench && args.phase.is_none();
    let tickets = args
        .tickets
        .unwrap_or(if smoke { 200_000 } else { 20_000_000 });
    let dir = args.dir.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("hongbao-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("bench dir");
    let plan = Plan::from_toml(&bench_plan(tickets)).expect("bench plan");

    if let Some(phase) = args.phase.as_deref() {
        match phase {
            "gen" => run_gen(&plan, &dir, 1),
            "verify" => run_verify(&dir, 1),
            "plan" => {
                let path = dir.join("plan.toml");
                std::fs::write(&path, bench_plan(tickets)).expect("write plan");
                println!("{}", path.display());
            }
            "floor" => {
                std::hint::black_box(run_floor(tickets));
            }
            other => panic!("unknown phase {other}; use gen, verify, floor or plan"),
        }
        return;
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = tickets;
    if smoke {
        println!("smoke run ({n} tickets); `cargo bench --bench pipeline` measures for real");
    }
    let mut rows = Vec::new();
    let r = args.repeat;
    rows.push(measure("floor: AES-128 + CRC32C", 1, n, r, || {
        std::hint::black_box(run_floor(n));
    }));
    rows.push(measure("gen", 1, n, r, || run_gen(&plan, &dir, 1)));
    rows.push(measure("verify", 1, n, r, || run_verify(&dir, 1)));
    rows.push(measure("gen", threads, n, r, || {
        run_gen(&plan, &dir, threads)
    }));
    rows.push(measure("verify", threads, n, r, || {
        run_verify(&dir, threads)
    }));
    let _ = std::fs::remove_dir_all(&dir);

    let floor_cpu = rows[0].cpu;
    println!("## Ticket pipeline benchmark\n");
    println!(
        "- command: `cargo bench --bench pipeline -- --tickets {n} --repeat {r}` (files on {})",
        dir.display()
    );
    println!("- machine: {}", common::machine());
    println!(
        "- date: {} (UTC, unix {})",
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    println!();
    println!("Median of {r} runs per row (by CPU time); CPU s shows min-max.\n");
    println!("| phase | threads | tickets | wall s | CPU s (min-max) | M tickets/s (wall) | M tickets/s per CPU-second | CPU vs floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} ({:.2}-{:.2}) | {:.1} | {:.1} | {:.2}x |",
            r.name,
            r.threads,
            r.tickets,
            r.wall,
            r.cpu,
            r.cpu_min,
            r.cpu_max,
            r.tickets as f64 / r.wall / 1e6,
            r.tickets as f64 / r.cpu.max(1e-9) / 1e6,
            r.cpu / floor_cpu.max(1e-9)
        );
    }
}
