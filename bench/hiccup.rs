//! The machine's own hiccups: how long a thread that never sleeps is kept off its CPU (by the
//! hypervisor, interrupts, the kernel), the floor under any latency tail measured here (the
//! idea of jHiccup). One spinning thread per CPU reads the clock in a loop and records every
//! gap between two reads; first on every CPU at once (what a server and its load generator
//! see when both are busy), then on each CPU alone. Runs on the main thread's orders only;
//! nothing else of hongbao is involved.
//!
//! usage: cargo bench --bench hiccup -- [SECONDS=10]
//! Prints a markdown table: per CPU and phase, gaps above 50 µs / 200 µs / 1 ms / 3 ms, the
//! longest, and the share of the time lost in gaps above 50 µs.

use std::time::{Duration, Instant};

struct Gaps {
    over: [u64; 4],
    max: Duration,
    lost: Duration,
    ran: Duration,
}

const THRESHOLDS_US: [u64; 4] = [50, 200, 1_000, 3_000];

fn spin(cpu: core_affinity::CoreId, for_: Duration) -> Gaps {
    core_affinity::set_for_current(cpu);
    let start = Instant::now();
    let mut last = start;
    let mut g = Gaps {
        over: [0; 4],
        max: Duration::ZERO,
        lost: Duration::ZERO,
        ran: Duration::ZERO,
    };
    loop {
        let now = Instant::now();
        let gap = now - last;
        last = now;
        if gap > g.max {
            g.max = gap;
        }
        let us = gap.as_micros() as u64;
        for (k, t) in THRESHOLDS_US.iter().enumerate() {
            if us > *t {
                g.over[k] += 1;
            }
        }
        if us > THRESHOLDS_US[0] {
            g.lost += gap;
        }
        if now - start >= for_ {
            g.ran = now - start;
            return g;
        }
    }
}

fn row(phase: &str, cpu: usize, g: &Gaps) {
    println!(
        "| {phase} | {cpu} | {} | {} | {} | {} | {:.2} ms | {:.3}% |",
        g.over[0],
        g.over[1],
        g.over[2],
        g.over[3],
        g.max.as_secs_f64() * 1e3,
        100.0 * g.lost.as_secs_f64() / g.ran.as_secs_f64()
    );
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let cpus = core_affinity::get_core_ids().expect("the CPUs this process may use");
    let for_ = Duration::from_secs(seconds);
    println!("| phase | CPU | gaps > 50 µs | > 200 µs | > 1 ms | > 3 ms | longest | time lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let all: Vec<Gaps> = std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&c| s.spawn(move || spin(c, for_)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, g) in cpus.iter().zip(&all) {
        row("all CPUs busy", c.id, g);
    }
    for &c in &cpus {
        let g = std::thread::spawn(move || spin(c, for_)).join().unwrap();
        row("this CPU alone", c.id, &g);
    }
    println!();
    println!(
        "- command: `cargo bench --bench hiccup -- {seconds}`; {} CPUs; {seconds} s per phase",
        cpus.len()
    );
}
