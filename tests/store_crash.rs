//! Crash test of the per-core log: this test binary re-runs itself as a child that appends and
//! group-commits records in a loop, printing each acknowledged (durable) sequence number; the
//! parent kills it with SIGKILL at a random moment, reopens the log and checks that every
//! acknowledged record is there, intact, in order, and not duplicated. Many rounds share one
//! directory, so every round also recovers from the crash before it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hongbao::store::segment::SEGMENT_HEADER_BYTES;
use hongbao::store::{FileLog, StoreOptions};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "HONGBAO_STORE_CRASH_CHILD";
const ROUNDS: usize = 40;
/// A child that is never killed stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(10);

fn options() -> StoreOptions {
    StoreOptions {
        // Small segments so crashes also land around segment rolls.
        segment_bytes_max: (SEGMENT_HEADER_BYTES + 32 + (1 << 20)) as u64 + 64 * 1024,
        pending_bytes_max: 16 << 20,
        adopt: false,
    }
}

/// The payload of record `seq`: its length and bytes both derive from `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = 16 + (seq % 200) as usize;
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend((0..len - 8).map(|i| (seq as usize + i) as u8));
    bytes
}

/// Reopens the log and returns the sequence numbers found, checking each payload.
fn recover(dir: &Path) -> Vec<u64> {
    let mut seqs = Vec::new();
    let (_, _) = FileLog::open(dir, 0, options(), |_, view| {
        assert_eq!(
            view.payload,
            payload(view.seq).as_slice(),
            "payload of {}",
            view.seq
        );
        seqs.push(view.seq);
    })
    .expect("the log recovers after a crash");
    seqs
}

fn child(dir: &Path) {
    let started = Instant::now();
    let mut next = recover(dir).last().map_or(0, |s| s + 1);
    let (mut log, _) = FileLog::open(dir, 0, options(), |_, _| {}).expect("open");
    let mut out = std::io::stdout().lock();
    let mut batch = 1u64;
    while started.elapsed() < CHILD_LIFETIME {
        for _ in 0..batch {
            log.append(1, 7, next, &payload(next)).expect("append");
            next += 1;
        }
        log.commit().expect("commit");
        // Acknowledge only after the commit returned: these records are durable.
        writeln!(out, "acked {}", next - 1).unwrap();
        out.flush().unwrap();
        batch = batch % 97 + 1;
    }
}

#[test]
fn kill_9_never_loses_or_duplicates_acknowledged_records() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Replay a failure with HONGBAO_CRASH_SEED=<seed printed in the failure>.
    let seed: u64 = std::env::var("HONGBAO_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut acked_max: Option<u64> = None;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_never_loses_or_duplicates_acknowledged_records",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    last = Some(n.parse::<u64>().unwrap());
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(2..80)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Some(n) = reader.join().unwrap() {
            acked_max = Some(acked_max.map_or(n, |m: u64| m.max(n)));
        }
        let seqs = recover(tmp.path());
        // Nothing duplicated, nothing out of order: the log is exactly 0, 1, 2, ...
        for (i, &s) in seqs.iter().enumerate() {
            assert_eq!(
                s, i as u64,
                "round {round} seed {seed}: hole or duplicate at {i}"
            );
        }
        // Nothing acknowledged is lost.
        if let Some(m) = acked_max {
            assert!(
                seqs.len() as u64 > m,
                "round {round} seed {seed}: acknowledged {m} but only {} records survived",
                seqs.len()
            );
        }
    }
    assert!(
        acked_max.is_some_and(|m| m > 100),
        "the children acknowledged too little for the test to mean anything (seed {seed})"
    );
}
