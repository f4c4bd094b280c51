//! Regression test for the executor parking with ready tasks (glommio 0.9; the patch and the
//! story are in vendor/PATCHES.md): when the preemption timer expired before the executor looked at its task
//! queues, it reported "nothing ran" and went to sleep with tasks ready, until some unrelated
//! event woke it (forever on an idle core). A thread spinning on the executor's CPU makes the
//! timer expire there often.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

#[test]
fn executor_never_sleeps_with_ready_tasks_when_its_cpu_is_contended() {
    let cpu = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let run_for = Duration::from_secs(6);
    let executor = {
        let progress = progress.clone();
        LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .preempt_timer(Duration::from_micros(100))
            .spawn(move || async move {
                // No timers and no I/O: only ready tasks. An executor that sleeps now sleeps
                // for good.
                let end = Instant::now() + run_for;
                let mut tasks = Vec::new();
                for _ in 0..2 {
                    let progress = progress.clone();
                    tasks.push(glommio::spawn_local(async move {
                        while Instant::now() < end {
                            progress.fetch_add(1, Ordering::Relaxed);
                            futures_lite::future::yield_now().await;
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            })
            .expect("executor starts")
    };
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let mut stalled = None;
    while started.elapsed() < run_for + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) && started.elapsed() < run_for {
            stalled = Some(last.0);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    if let Some(at) = stalled {
        // The executor thread sleeps forever; leave it (the test process exits).
        panic!("the executor slept with ready tasks (no progress for 1 s after {at} polls)");
    }
    executor.join().expect("executor finishes");
}
