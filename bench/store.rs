//! Group commit benchmark of the per-core log: durable records per second and commit latency
//! for several batch sizes, with claim-sized records (48-byte payload, 80 bytes on disk), on
//! one thread with the blocking driver (pwrite + fdatasync). The peer, measured in the same
//! run, is the bare cost of one small pwrite + fdatasync on the same file system, appending
//! to a file (as the log did before it preallocated its segments): the most syncs per second
//! the disk allows that way, and so the least batching a rate needs. A second peer line does
//! the same writes into zeroed space written and synced beforehand, which is what the log's
//! preallocation buys (no file size or block allocation for fdatasync to make durable).
//!
//! Run: `cargo bench --bench store -- [--dir DIR] [--records N]` (DIR must be on the disk you
//! care about; the default is a fresh directory under the system temp dir). Under
//! `cargo test --all-targets` it does a small smoke run.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use hongbao::store::{FileLog, StoreOptions};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Records per batch size (default 400,000; 4,000 for the smoke run).
    #[arg(long)]
    records: Option<u64>,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let records = args.records.unwrap_or(if smoke { 4_000 } else { 400_000 });
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hongbao-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");

    // Peer: one 80-byte pwrite + fdatasync, repeated, appending (and into zeroed space).
    let syncs = if smoke { 50 } else { 4_000 };
    let peer = |zeroed: bool| {
        let path = dir.join(format!("peer-{zeroed}.bin"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .expect("peer file");
        if zeroed {
            file.write_all_at(&vec![0u8; syncs as usize * 80], 0)
                .expect("zeros");
            file.sync_all().expect("fsync");
        }
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let started = Instant::now();
        for i in 0..syncs {
            let t = Instant::now();
            file.write_all_at(&[7u8; 80], i * 80).expect("pwrite");
            file.sync_data().expect("fdatasync");
            latency.record(t.elapsed().as_micros() as u64).ok();
        }
        (syncs as f64 / started.elapsed().as_secs_f64(), latency)
    };
    let (peer_rate, peer_latency) = peer(false);
    let (zeroed_rate, zeroed_latency) = peer(true);

    println!("## Group commit of the per-core log\n");
    println!(
        "- command: `cargo bench --bench store -- --records {records}{}` (files in {})",
        args.dir
            .as_ref()
            .map(|d| format!(" --dir {}", d.display()))
            .unwrap_or_default(),
        dir.display()
    );
    println!(
        "- machine: {} CPUs, Linux {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "- peer: one 80-byte pwrite + fdatasync appending to a file: {peer_rate:.0} syncs/s, \
         p50 {} us, p99 {} us",
        peer_latency.value_at_quantile(0.5),
        peer_latency.value_at_quantile(0.99)
    );
    println!(
        "- the same into zeroed space synced before (preallocated): {zeroed_rate:.0} syncs/s \
         ({:.2}x), p50 {} us, p99 {} us\n",
        zeroed_rate / peer_rate,
        zeroed_latency.value_at_quantile(0.5),
        zeroed_latency.value_at_quantile(0.99)
    );
    println!("| records per commit | durable records/s | vs peer syncs/s | commit p50 us | commit p99 us | commit max us |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for batch in [1u64, 64, 512, 2048, 8192] {
        let path = dir.join(format!("log-{batch}"));
        let (mut log, _) =
            FileLog::open(&path, 0, StoreOptions::default(), |_, _| {}).expect("open log");
        let payload = [9u8; 48];
        let n = if batch == 1 { records / 100 } else { records }.max(batch);
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let started = Instant::now();
        let mut seq = 0;
        while seq < n {
            let t = Instant::now();
            for _ in 0..batch {
                log.append(1, 0, seq, &payload).expect("append");
                seq += 1;
            }
            log.commit().expect("commit");
            latency.record(t.elapsed().as_micros() as u64).ok();
        }
        let rate = seq as f64 / started.elapsed().as_secs_f64();
        println!(
            "| {batch} | {rate:.0} | {:.1}x | {} | {} | {} |",
            rate / peer_rate,
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
