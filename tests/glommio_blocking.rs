//! Regression test for the second glommio patch (vendor/PATCHES.md): a blocking job that
//! outlives its executor ended its pool worker with a panic ("failed to send response"). A
//! server that stopped, or refused to start, while a commit or a file operation was on the
//! pool printed a backtrace, and under the server's fail-stop panic hook would abort.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use glommio::LocalExecutorBuilder;

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_blocking_job_that_outlives_its_executor_ends_quietly() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
    LocalExecutorBuilder::default()
        .spawn(|| async {
            let job = glommio::executor()
                .spawn_blocking(|| std::thread::sleep(Duration::from_millis(200)));
            let mut job = Box::pin(job);
            // Started on the pool, then dropped: the executor ends while it still runs.
            assert!(futures_lite::future::poll_once(&mut job).await.is_none());
        })
        .expect("executor starts")
        .join()
        .expect("executor ends");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the pool worker panicked");
}
