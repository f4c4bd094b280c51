//! `hongbao settle`: every durable claim recorded in the ledger exactly once, beside a running
//! server and across kill -9 of the settle process at any moment.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, run, write_claims, Event};
use rusqlite::Connection;

/// (envelope id, uid, amount) of every claim row, sorted.
fn ledger_rows(db: &Path) -> Vec<(u64, u64, u32)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT envelope_id, uid, amount_cents FROM claims ORDER BY envelope_id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// Claim rows so far (0 before the schema exists: a settle killed at its very start).
fn row_count(db: &Path) -> usize {
    let Ok(conn) = Connection::open(db) else {
        return 0;
    };
    conn.query_row("SELECT COUNT(*) FROM claims", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| n as usize)
}

fn user_totals(db: &Path) -> Vec<(u64, u64, u64)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT uid, claims, pending_cents FROM users ORDER BY uid")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

#[test]
fn settles_every_acknowledged_open_once_beside_a_running_server() {
    let event = Event::new();
    let mut server = event.serve("data", &["--no-pacing", "--cores", "2"]);
    let mut follow = Command::new(bin())
        .args([
            "settle",
            "--data",
            "data",
            "--db",
            "ledger.sqlite",
            "--follow",
        ])
        .current_dir(event.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acknowledged = server.shake_and_open(&event, 1..=6, 40);
    assert!(acknowledged.len() > 100, "{} opens", acknowledged.len());
    // SIGTERM: the follower finishes its pass and stops.
    common::wait_until("settle --follow to catch up", || {
        Path::new(&event.path().join("ledger.sqlite")).exists()
            && ledger_rows(&event.path().join("ledger.sqlite")).len() == acknowledged.len()
    });
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    let status = follow.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(server.terminate().success());

    // Once more after the stop: nothing new, nothing twice.
    let out = run(
        &["settle", "--data", "data", "--db", "ledger.sqlite"],
        event.path(),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 new claims"), "{text}");
    let db = event.path().join("ledger.sqlite");
    acknowledged.sort();
    assert_eq!(ledger_rows(&db), acknowledged);
    let mut per_user = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    for &(_, uid, cents) in &acknowledged {
        let t = per_user.entry(uid).or_default();
        t.0 += 1;
        t.1 += u64::from(cents);
    }
    let expected: Vec<(u64, u64, u64)> =
        per_user.into_iter().map(|(u, (n, c))| (u, n, c)).collect();
    assert_eq!(user_totals(&db), expected);
    // The ledger and `hongbao claims` agree.
    let mut claims: Vec<(u64, u64)> = event.claims("data");
    claims.sort();
    let rows: Vec<(u64, u64)> = ledger_rows(&db)
        .into_iter()
        .map(|(e, u, _)| (e, u))
        .collect();
    assert_eq!(rows, claims);
}

#[test]
fn kill_9_of_settle_at_any_moment_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected = write_claims(&data, 2, 60_000);
    let db = dir.path().join("ledger.sqlite");
    let settle = |batch: &str| {
        Command::new(bin())
            .args(["settle", "--data"])
            .arg(&data)
            .arg("--db")
            .arg(&db)
            .args(["--batch", batch])
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Killed while it runs, until a kill leaves the ledger part-way (neither empty nor
    // complete) at least 3 times.
    let mut killed_midway = 0;
    for round in 0..200u64 {
        let mut child = settle("700");
        std::thread::sleep(Duration::from_millis(2 + (round * 37) % 30));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        let rows = row_count(&db);
        if running && rows > 0 && rows < expected.len() {
            killed_midway += 1;
        }
        if killed_midway >= 3 {
            break;
        }
        if rows == expected.len() {
            // Done before a third kill part-way: start again on a fresh ledger.
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
    }
    let out = Command::new(bin())
        .args(["settle", "--data"])
        .arg(&data)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        killed_midway >= 3,
        "settle was killed part-way only {killed_midway} times"
    );
    assert_eq!(ledger_rows(&db), expected, "{killed_midway} kills");
    assert!(text.contains("0 read again"), "{text}");
    let total: u64 = expected.iter().map(|e| u64::from(e.2)).sum();
    let users: u64 = user_totals(&db).iter().map(|u| u.2).sum();
    assert_eq!(users, total);
}

#[test]
fn a_ledger_of_another_event_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_claims(&data, 1, 10);
    let db = dir.path().join("ledger.sqlite");
    let out = run(
        &[
            "settle",
            "--data",
            data.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success());
    std::fs::write(
        data.join("event.json"),
        r#"{"format":"hongbao-data-1","event":"e","variant":"A","generation":"other","host":"h1"}"#,
    )
    .unwrap();
    let out = run(
        &[
            "settle",
            "--data",
            data.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("generation"));
    // A rate of nothing would wait forever: refused.
    let out = run(
        &["settle", "--data", data.to_str().unwrap(), "--rate", "0"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

/// A gauge or counter of a plain Prometheus text.
fn gauge(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[test]
fn a_slow_settle_lags_in_its_metrics_and_serving_never_waits_for_it() {
    use std::io::BufRead;
    let event = Event::new();
    let mut server = event.serve("data", &["--no-pacing", "--cores", "2"]);
    // A ledger that takes 20 claims a second: far slower than the opens below.
    let mut slow = Command::new(bin())
        .args([
            "settle",
            "--data",
            "data",
            "--db",
            "ledger.sqlite",
            "--follow",
            "--rate",
            "20",
            "--metrics",
            "127.0.0.1:0",
        ])
        .current_dir(event.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(slow.stderr.take().unwrap()).lines();
    let metrics: std::net::SocketAddr = loop {
        let line = lines
            .next()
            .expect("settle says where its metrics are")
            .unwrap();
        if let Some(rest) = line.strip_prefix("settle: metrics on http://") {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let mut acknowledged = server.shake_and_open(&event, 1..=5, 40);
    assert!(acknowledged.len() > 100, "{} opens", acknowledged.len());
    // Every open was answered without waiting for the ledger; the lag shows on settle's
    // metrics, in claims and (once a second has passed) in seconds.
    server.wait_metric("hongbao_opens_total", "every open counted", |n| {
        n >= acknowledged.len() as u64
    });
    let mut seen = (0, 0);
    common::wait_until("settle's lag to show in claims and seconds", || {
        let (_, text) = common::http(metrics, "GET", "/metrics", None, "");
        seen = (
            gauge(&text, "hongbao_settle_lag_claims"),
            gauge(&text, "hongbao_settle_lag_seconds"),
        );
        seen.0 > 0 && seen.1 >= 1
    });
    let (_, text) = common::http(metrics, "GET", "/metrics", None, "");
    let recorded = gauge(&text, "hongbao_settle_claims_total");
    assert!(
        recorded < acknowledged.len() as u64,
        "{recorded} recorded: the rate did not hold settle back"
    );
    unsafe { libc::kill(slow.id() as i32, libc::SIGTERM) };
    assert!(slow.wait().unwrap().success());
    // Unthrottled, it catches up: every acknowledged claim exactly once.
    let out = run(
        &["settle", "--data", "data", "--db", "ledger.sqlite"],
        event.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.terminate().success());
    acknowledged.sort();
    assert_eq!(
        ledger_rows(&event.path().join("ledger.sqlite")),
        acknowledged
    );
}
