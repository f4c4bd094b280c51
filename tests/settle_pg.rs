//! `hongbao settle --db postgres://...`: the ledger in a real PostgreSQL server (started by
//! `.ci/services.sh`; each test makes its own database): every claim recorded exactly once
//! across kill -9 of settle part-way, a second claim of an envelope held in `conflicts`, a
//! ledger of another generation refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, test_database, write_claims, TestDb};

fn settle(data: &Path, db: &TestDb, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["settle", "--data"])
        .arg(data)
        .args(["--db", &db.url])
        .args(extra)
        .output()
        .unwrap()
}

fn rows(db: &TestDb) -> Vec<(u64, u64, u32)> {
    db.client()
        .query(
            "SELECT envelope_id, uid, amount_cents FROM claims ORDER BY envelope_id",
            &[],
        )
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0) as u64,
                        r.get::<_, i64>(1) as u64,
                        r.get::<_, i64>(2) as u32,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn count(db: &TestDb) -> usize {
    db.client()
        .query_one("SELECT COUNT(*) FROM claims", &[])
        .map_or(0, |r| r.get::<_, i64>(0) as usize)
}

#[test]
fn kill_9_of_settle_into_postgres_loses_and_doubles_nothing() {
    let Some(db) = test_database("settle_pg_kill") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected = write_claims(&data, 2, 40_000);
    let mut killed_midway = 0;
    for round in 0..200u64 {
        let mut child = Command::new(bin())
            .args(["settle", "--data"])
            .arg(&data)
            .args(["--db", &db.url, "--batch", "700"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 60));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        let n = count(&db);
        if running && n > 0 && n < expected.len() {
            killed_midway += 1;
        }
        if killed_midway >= 3 || n == expected.len() {
            break;
        }
    }
    let out = settle(&data, &db, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        killed_midway >= 1,
        "settle was never killed part-way ({killed_midway})"
    );
    assert_eq!(rows(&db), expected, "{killed_midway} kills");
    let total: u64 = expected.iter().map(|e| u64::from(e.2)).sum();
    let users: i64 = db
        .client()
        .query_one("SELECT SUM(pending_cents)::BIGINT FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(users as u64, total);
    // Once more: nothing new, nothing twice.
    let out = settle(&data, &db, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("0 new claims"), "{text}");
    assert!(text.contains("0 read again"), "{text}");
}

#[test]
fn a_second_claim_is_held_and_another_generation_refused() {
    let Some(db) = test_database("settle_pg_conflict") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = write_claims(&data, 1, 50);
    assert!(settle(&data, &db, &[]).status.success());
    // Another host's directory claiming the same envelopes (the same generator, host h2).
    let other = dir.path().join("other");
    write_claims(&other, 1, 5);
    let identity = std::fs::read_to_string(other.join("event.json")).unwrap();
    std::fs::write(other.join("event.json"), identity.replace("h1", "h2")).unwrap();
    let out = settle(&other, &db, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held: i64 = db
        .client()
        .query_one("SELECT COUNT(*) FROM conflicts WHERE host = 'h2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(held, 5);
    assert_eq!(rows(&db), first, "the first claims stay, once each");
    // A data directory of another generation: refused, nothing written.
    std::fs::write(
        data.join("event.json"),
        r#"{"format":"hongbao-data-1","event":"e","variant":"A","generation":"other","host":"h1"}"#,
    )
    .unwrap();
    let out = settle(&data, &db, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("generation"));
}
