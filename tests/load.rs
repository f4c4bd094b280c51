//! `hongbao load` against a real server on loopback: its counts agree with the server's
//! metrics and the durable claims; the files it writes parse; an unreachable target and a server
//! killed mid-run give clear messages (and the partial results are kept).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, http, Event};

fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap_or(0.0) as u64)
        .sum()
}

fn load(event: &Event, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("load")
        .args(args)
        .current_dir(event.path())
        .output()
        .expect("load runs")
}

fn summary(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path.join("summary.json")).unwrap()).unwrap()
}

fn series<'a>(s: &'a serde_json::Value, op: &str, outcome: &str) -> Option<&'a serde_json::Value> {
    s["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["op"] == op && x["outcome"] == outcome)
}

#[test]
fn closed_loop_counts_agree_with_the_server_and_the_log() {
    let event = Event::new();
    let mut server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    let target = server.binary.to_string();
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--conns",
            "8",
            "--depth",
            "4",
            "--uids",
            "40",
            "--warmup",
            "0",
            "--duration",
            "1",
            "--out",
            "run1",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| shake | all |"), "{stdout}");

    let s = summary(&event.path().join("run1"));
    assert_eq!(s["complete"], true);
    assert_eq!(s["config"]["mode"], "closed");
    let shakes = series(&s, "shake", "all").expect("shakes ran")["count"]
        .as_u64()
        .unwrap();
    // No pacing: every shake wins while tickets last, and every envelope is opened.
    let won = series(&s, "shake", "envelope").expect("envelopes won")["count"]
        .as_u64()
        .unwrap();
    let opened = series(&s, "open", "ok").expect("opens answered")["count"]
        .as_u64()
        .unwrap();
    assert!(shakes > 100 && won > 100, "{s}");
    assert!(opened > 0 && opened <= won, "{opened} opened of {won}");
    assert!(s["errors"].as_object().unwrap().is_empty(), "{s}");
    // 40 users over 8 connections: connections switch users with HELLO.
    assert!(series(&s, "hello", "ok").is_some(), "{s}");

    // The server answered at least what the loader counted, and at most what was in flight
    // when the run ended on top (8 connections x 4).
    // Requests still in flight when the loader stopped are finished by the server: wait until
    // its counters stop moving.
    let mut last = (u64::MAX, u64::MAX);
    let (server_shakes, server_opens) = loop {
        std::thread::sleep(Duration::from_millis(200));
        let (_, metrics) = http(server.http, "GET", "/metrics", None, "");
        let now = (
            metric_sum(&metrics, "hongbao_shakes_total"),
            metric_sum(&metrics, "hongbao_opens_total"),
        );
        if now == last {
            break now;
        }
        last = now;
    };
    assert!(
        server_shakes >= shakes && server_shakes <= shakes + 32,
        "server {server_shakes} vs loader {shakes}"
    );
    assert!(
        server_opens >= opened && server_opens <= opened + 32,
        "server {server_opens} vs loader {opened}"
    );
    // Every open the loader saw answered is a durable claim, once.
    server.terminate();
    let claims = event.claims("data");
    assert_eq!(claims.len() as u64, server_opens);
    let mut ids: Vec<u64> = claims.iter().map(|c| c.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), claims.len(), "an envelope claimed twice");

    // The files: percentile distributions and the markdown report.
    let hgrm = std::fs::read_to_string(event.path().join("run1/shake.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(
        hgrm.contains(&format!("Total count    = {shakes:>12}]")),
        "{hgrm}"
    );
    let md = std::fs::read_to_string(event.path().join("run1/report.md")).unwrap();
    assert!(md.contains("| open | ok |"), "{md}");
    let html = std::fs::read_to_string(event.path().join("run1/report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.matches("<svg ").count() >= 4, "charts embedded");
    let latency = std::fs::read_to_string(event.path().join("run1/latency.svg")).unwrap();
    assert!(latency.contains("<title>shake</title>") && latency.contains("<title>open</title>"));

    // `hongbao report` puts runs side by side: the run against itself is 1.00x everywhere.
    let out = Command::new(bin())
        .args(["report", "run1", "run1/summary.json", "--out", "cmp"])
        .current_dir(event.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Rows of the side-by-side tables: run, load, replies/s, vs first, p50, p99, p99.9, max,
    // p99 vs first, p99.9 vs first, errors.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| hongbao shake closed loop"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert!(
        rows.len() >= 4,
        "shake and open (and hello), two runs each: {stdout}"
    );
    for row in &rows {
        assert_eq!([row[4], row[9], row[10]], ["1.00x"; 3], "{row:?}");
    }
    assert!(event.path().join("cmp/report.html").exists());
    assert!(event.path().join("cmp/p99-over-time.svg").exists());
    // A file that is not a summary: exit 2, named.
    std::fs::write(event.path().join("junk.json"), "[1, 2]").unwrap();
    let out = Command::new(bin())
        .args(["report", "run1", "junk.json"])
        .current_dir(event.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("junk.json: not a hongbao load summary"),
        "{stderr}"
    );
}

#[test]
fn open_loop_sends_on_schedule_and_obeys_back_off() {
    let event = Event::new();
    // Every shake reply says: wait 200 ms.
    let cfg = event.path().join("serve.toml");
    std::fs::write(&cfg, "[pacing]\nbackoff_ms = 200\n").unwrap();
    let _server = event.serve("data", &["--config", cfg.to_str().unwrap()]);
    let target = _server.binary.to_string();
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--rate",
            "2000",
            "--conns",
            "4",
            "--uids",
            "40",
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--obey-backoff",
            "--out",
            "run2",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s = summary(&event.path().join("run2"));
    assert_eq!(s["config"]["mode"], "open");
    let shakes = series(&s, "shake", "all").unwrap()["count"]
        .as_u64()
        .unwrap();
    let held = s["held_back"].as_u64().unwrap();
    // 2,000 requests are due in the measured second. 40 users each allowed one shake per
    // 200 ms can make at most 40 x 5 (+ 40 at the start) of them; the rest are held back.
    assert!(
        shakes <= 40 * 6 + 8,
        "{shakes} shakes sent through back-off"
    );
    assert!(shakes >= 40, "{shakes}");
    assert!(
        shakes + held >= 1_500 && shakes + held <= 2_010,
        "{shakes} sent + {held} held back of 2,000 due"
    );
    // Open loop writes the uncorrected distribution too.
    assert!(event.path().join("run2/shake.uncorrected.hgrm").exists());
}

/// `--spin`: the load thread polls instead of sleeping; the schedule and the accounting are
/// the same (every due request sent and answered), and the summary says it polled.
#[test]
fn open_loop_with_a_polling_load_thread_sends_every_due_request() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "1", "--no-pacing"]);
    let target = server.binary.to_string();
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--no-open",
            "--rate",
            "5000",
            "--conns",
            "4",
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--spin",
            "--out",
            "spin",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&event.path().join("spin"));
    assert_eq!(s["config"]["mode"], "open");
    assert_eq!(s["config"]["spin"], true);
    let shakes = series(&s, "shake", "all").unwrap()["count"]
        .as_u64()
        .unwrap();
    // 5,000 due in the measured second (a few at its edges may fall either side).
    assert!((4_950..=5_050).contains(&shakes), "{shakes} shakes");
    assert!(s["errors"].as_object().expect("errors").is_empty(), "{s}");
    assert_eq!(s["complete"], true);
}

#[test]
fn im_mix_measures_every_copy_once() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let target = server.binary.to_string();
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--op",
            "im",
            "--conns",
            "8",
            "--depth",
            "2",
            "--im-groups",
            "2",
            "--im-group-size",
            "30",
            "--im-group-share",
            "0.3",
            "--warmup",
            "0.3",
            "--duration",
            "1",
            "--out",
            "im",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s = summary(&event.path().join("im"));
    assert_eq!(s["complete"], true, "{s}");
    // No error replies and no seq gap in any pulled stream.
    assert!(s["errors"].as_object().unwrap().is_empty(), "{s}");
    let count = |op: &str, outcome: &str| {
        series(&s, op, outcome).map_or(0, |x| x["count"].as_u64().unwrap())
    };
    let (chats, groups) = (count("send", "chat"), count("send", "group"));
    assert!(
        chats > 50 && groups > 10,
        "{chats} chats, {groups} group sends"
    );
    // Every single chat reaches one other user of the run; every group message reaches the
    // 3 other users of the run in its group (4 of the 8 users per group; the other 26
    // members are outside the run). Each copy is measured exactly once.
    assert_eq!(count("delivery", "chat"), chats);
    assert_eq!(count("delivery", "group"), groups * 3);
    assert!(count("sync", "ok") > 0);
    assert!(event.path().join("im/delivery-group.hgrm").exists());
}

#[test]
fn unreachable_target_is_a_clear_error() {
    let event = Event::new();
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--duration",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to") && stderr.contains("refused"),
        "{stderr}"
    );
    // And a shake load without auth keys says what it needs.
    let out = load(&event, &["--target", &target]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-keys"));
}

#[test]
fn server_killed_mid_run_keeps_partial_results() {
    let event = Event::new();
    let mut server = event.serve("data", &[]);
    let target = server.binary.to_string();
    let child = Command::new(bin())
        .args([
            "load",
            "--target",
            &target,
            "--op",
            "ping",
            "--conns",
            "4",
            "--warmup",
            "0",
            "--duration",
            "30",
            "--out",
            "run3",
            "--quiet",
        ])
        .current_dir(event.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("ended early"), "{stderr}");
    let s = summary(&event.path().join("run3"));
    assert_eq!(s["complete"], false);
    assert!(s["stop_reason"]
        .as_str()
        .unwrap()
        .contains("every connection was lost"));
    assert_eq!(s["connections_lost"], 4);
    let pings = series(&s, "ping", "ok").unwrap()["count"].as_u64().unwrap();
    assert!(pings > 0);
    let measured = s["measured_s"].as_f64().unwrap();
    assert!(measured > 0.5 && measured < 29.0, "{measured}");
}

/// A stand-in for redis-server: answers each `LPOP tickets` with one of `values` 26-byte
/// values while they last, then with RESP's nil. Returns its address.
fn fake_redis(values: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let left = Arc::new(AtomicUsize::new(values));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let left = left.clone();
            std::thread::spawn(move || {
                const REQUEST: &[u8] = b"*2\r\n$4\r\nLPOP\r\n$7\r\ntickets\r\n";
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    while buf.len() >= REQUEST.len() {
                        assert_eq!(
                            &buf[..REQUEST.len()],
                            REQUEST,
                            "the loader sent LPOP tickets"
                        );
                        buf.drain(..REQUEST.len());
                        let took = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok();
                        if took {
                            out.extend_from_slice(b"$26\r\nabcdefghijklmnopqrstuvwxyz\r\n");
                        } else {
                            out.extend_from_slice(b"$-1\r\n");
                        }
                    }
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn redis_lpop_mode_counts_values_and_empty_pops() {
    let event = Event::new();
    let addr = fake_redis(1_000).to_string();
    let out = load(
        &event,
        &[
            "--target",
            &addr,
            "--op",
            "redis-lpop",
            "--conns",
            "4",
            "--depth",
            "8",
            "--warmup",
            "0",
            "--duration",
            "0.5",
            "--out",
            "lpop",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s = summary(&event.path().join("lpop"));
    assert_eq!(s["config"]["op"], "lpop");
    // Every value handed out was counted once; the rest of the pops found the list empty.
    assert_eq!(series(&s, "lpop", "ok").unwrap()["count"], 1_000);
    let empty = series(&s, "lpop", "empty").unwrap()["count"]
        .as_u64()
        .unwrap();
    let all = series(&s, "lpop", "all").unwrap()["count"]
        .as_u64()
        .unwrap();
    assert!(empty > 0 && all == 1_000 + empty, "{all} = 1000 + {empty}");
    assert!(s["errors"].as_object().unwrap().is_empty());
}

#[test]
fn idle_connections_are_held_through_the_run() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    let target = server.binary.to_string();
    let out = load(
        &event,
        &[
            "--target",
            &target,
            "--auth-keys",
            "auth.keys",
            "--conns",
            "4",
            "--idle",
            "300",
            "--warmup",
            "0",
            "--duration",
            "0.5",
            "--out",
            "idle",
            "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s = summary(&event.path().join("idle"));
    let idle = &s["idle"];
    assert_eq!(idle["asked"], 300, "{idle}");
    assert_eq!(idle["held"], 300, "{idle}");
    assert_eq!(idle["lost"], 0, "{idle}");
    assert_eq!(idle["authenticated"], true);
    // Opened from 127.0.0.2 (a loopback target's first default source address).
    assert_eq!(idle["sources"][0], "127.0.0.2");
    // The server accepted them all, and the active connections still shook.
    let metrics = http(server.http, "GET", "/metrics", None, "").1;
    assert!(metric_sum(&metrics, "hongbao_connections_accepted_total") >= 304);
    assert!(
        series(&s, "shake", "all").unwrap()["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("- idle connections: 300 asked, 300 held to the end, 0 lost"),
        "{md}"
    );
}
