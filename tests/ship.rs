//! `hongbao ship` against a real nats-server with JetStream (started by `.ci/services.sh`;
//! each test makes its own stream): every claim of a host's logs stored in the stream once,
//! across kill -9 of ship part-way (re-sends dropped by message id), a `--from` re-send stored
//! nothing twice, and the saved positions never ahead of the stream.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, write_claims};

struct TestStream {
    url: String,
    name: String,
}

fn test_stream(test: &str) -> Option<TestStream> {
    let Ok(url) = std::env::var("HONGBAO_TEST_NATS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the NATS tests: source .ci/services.sh first"
        );
        eprintln!(
            "skipped {test}: needs nats-server; run `source .ci/services.sh` (as root) to enable"
        );
        return None;
    };
    let name = format!("HB_{}_{}", test.to_uppercase(), std::process::id());
    Some(TestStream { url, name })
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl TestStream {
    /// Messages stored in the stream.
    fn messages(&self) -> u64 {
        block_on(async {
            let client = async_nats::connect(&self.url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream(&self.name).await.unwrap();
            stream.info().await.unwrap().state.messages
        })
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        block_on(async move {
            if let Ok(client) = async_nats::connect(&url).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await;
            }
        });
    }
}

fn ship(data: &Path, s: &TestStream, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["ship", "--data"])
        .arg(data)
        .args(["--nats", &s.url, "--stream", &s.name])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn every_claim_is_stored_once_through_kill_9_and_re_sends() {
    let Some(stream) = test_stream("ship_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let claims = write_claims(&data, 2, 15_000).len() as u64;
    let mut killed_midway = 0;
    for round in 0..100u64 {
        let mut child = Command::new(bin())
            .args(["ship", "--data"])
            .arg(&data)
            .args([
                "--nats",
                &stream.url,
                "--stream",
                &stream.name,
                "--batch",
                "500",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(60 + (round * 53) % 200));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        if running && data.join("ship.json").exists() {
            killed_midway += 1;
        }
        if killed_midway >= 3 {
            break;
        }
    }
    let out = ship(&data, &stream, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(killed_midway >= 1, "ship was never killed part-way");
    assert_eq!(stream.messages(), claims, "{killed_midway} kills: {text}");
    // Nothing new: nothing published.
    let out = ship(&data, &stream, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(": 0 claims stored"), "{text}");
    // Core 0 re-sent from its start: every message dropped as a duplicate.
    let out = ship(&data, &stream, &["--from", "0:0:0"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            ": 0 claims stored in {}, {} re-sends dropped",
            stream.name,
            claims / 2
        )),
        "{text}"
    );
    assert_eq!(stream.messages(), claims);
}

#[test]
fn positions_of_another_stream_are_refused() {
    let Some(stream) = test_stream("ship_state") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_claims(&data, 1, 10);
    assert!(ship(&data, &stream, &[]).status.success());
    let other = TestStream {
        url: stream.url.clone(),
        name: format!("{}_OTHER", stream.name),
    };
    let out = ship(&data, &other, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("positions are of stream"));
}
