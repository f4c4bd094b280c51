//! `hongbao reconcile`: a clean event is credited in full and only once; each attack on the
//! money path (a forged claim in a host's log, an edited amount, a credit with no claim, one
//! envelope claimed on two hosts, a claim under a denied key, a replayed settle, settle killed
//! part-way) is found, held, and not credited.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, run, Event};
use hongbao::ledger::{ClaimRecord, KIND_CLAIM};
use hongbao::store::{FileLog, StoreOptions};
use rusqlite::Connection;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

/// An event served for a while: `opens` acknowledged opens (envelope, uid, cents) in `data`.
fn served_event() -> (Event, Vec<(u64, u64, u32)>) {
    let event = Event::new();
    let mut server = event.serve("data", &["--no-pacing", "--cores", "2"]);
    let mut opened = server.shake_and_open(&event, 1..=4, 15);
    assert!(server.terminate().success());
    assert!(opened.len() >= 20, "{} opens", opened.len());
    opened.sort();
    (event, opened)
}

fn settle(event: &Event, data: &str) -> std::process::Output {
    run(
        &["settle", "--data", data, "--db", "ledger.sqlite"],
        event.path(),
    )
}

/// Runs reconcile over `data` dirs; returns (exit code, report, stderr).
fn reconcile(event: &Event, data: &[&str], extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "reconcile",
        "--tickets",
        "d/event/A",
        "--keyring",
        "d/keys/demo.keyring",
        "--db",
        "ledger.sqlite",
        "--quick",
    ];
    for d in data {
        args.extend(["--data", d]);
    }
    args.extend_from_slice(extra);
    let out = run(&args, event.path());
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn ledger(event: &Event) -> Connection {
    Connection::open(event.path().join("ledger.sqlite")).unwrap()
}

/// (envelope, state) of every claim row.
fn states(event: &Event) -> Vec<(u64, String)> {
    let conn = ledger(event);
    let mut stmt = conn
        .prepare("SELECT envelope_id, state FROM claims ORDER BY envelope_id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

fn credited_cents(event: &Event) -> (i64, i64) {
    ledger(event)
        .query_row(
            "SELECT (SELECT COALESCE(SUM(amount_cents), 0) FROM claims WHERE state = 'credited'), \
             (SELECT COALESCE(SUM(credited_cents), 0) FROM users)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// Findings of the report by kind.
fn kinds(report: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = report["findings"]["by_kind"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Appends `claim` to the newest segment of `data/core-<core>` as a server would (valid CRC).
fn append_claim(data: &Path, core: u16, claim: ClaimRecord) {
    let dir = data.join(format!("core-{core}"));
    let (mut log, _) = FileLog::open(&dir, core, StoreOptions::default(), |_, _| {}).unwrap();
    log.append(KIND_CLAIM, claim.uid.get(), 0, claim.as_bytes())
        .unwrap();
    log.commit().unwrap();
    log.close().unwrap();
}

fn claim(envelope: u64, uid: u64, cents: u32, batch: u16, key: u16) -> ClaimRecord {
    ClaimRecord {
        envelope_id: U64::new(envelope),
        uid: U64::new(uid),
        amount_cents: U32::new(cents),
        batch_id: U16::new(batch),
        key_id: U16::new(key),
        claimed_unix: U32::new(hongbao::gen::now_unix() as u32),
        issuing_core: U16::new(0),
        reserved: U16::new(0),
    }
}

/// (batch, key) of a claimed envelope, from the ledger.
fn batch_and_key(event: &Event, envelope: u64) -> (u16, u16) {
    ledger(event)
        .query_row(
            "SELECT batch_id, key_id FROM claims WHERE envelope_id = ?1",
            [envelope as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn a_clean_event_is_credited_in_full_once() {
    let (event, opened) = served_event();
    assert!(settle(&event, "data").status.success());
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["consistent"], true);
    let total: u64 = opened.iter().map(|o| u64::from(o.2)).sum();
    assert_eq!(report["changed"]["credited"]["claims"], opened.len() as u64);
    assert_eq!(report["changed"]["credited"]["cents"], total);
    assert_eq!(report["logs"]["matched"], opened.len() as u64);
    assert!(states(&event).iter().all(|(_, s)| s == "credited"));
    assert_eq!(credited_cents(&event), (total as i64, total as i64));
    // Planned = credited + unclaimed, per sponsor and for the event.
    let e = &report["money"]["event"];
    assert_eq!(
        e["planned"]["cents"].as_u64().unwrap(),
        e["credited"]["cents"].as_u64().unwrap() + e["unclaimed_cents"].as_u64().unwrap()
    );
    // Again: nothing more to credit, nothing credited twice.
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["changed"]["credited"]["claims"], 0);
    assert_eq!(report["run"], 2);
    assert_eq!(credited_cents(&event), (total as i64, total as i64));
}

#[test]
fn a_forged_claim_in_a_hosts_log_is_held() {
    let (event, opened) = served_event();
    let data = event.path().join("data");
    // A compromised host appends a claim of an envelope of its own file that no shake handed
    // out (far past what it reserved), with a plausible amount.
    let real = opened[0].0;
    let (batch, key) = batch_and_key_from_claims(&event, real);
    let forged = (real & !0xffff_ffff) | 900_000;
    append_claim(&data, 0, claim(forged, 666, 5_000, batch, key));
    assert!(settle(&event, "data").status.success());
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 1, "{stderr}");
    let k = kinds(&report);
    assert!(k.contains(&"never_issued".to_string()), "{k:?} {stderr}");
    let s = states(&event);
    assert!(s.contains(&(forged, "held".to_string())), "{s:?}");
    assert_eq!(report["changed"]["credited"]["claims"], opened.len() as u64);
    assert_eq!(report["changed"]["held"]["cents"], 5_000);
}

/// (batch, key) of an envelope from `hongbao claims` (before any ledger exists).
fn batch_and_key_from_claims(event: &Event, envelope: u64) -> (u16, u16) {
    let out = run(&["claims", "--data", "data"], event.path());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["shard_ordinal"].as_u64().unwrap() << 32 | v["index"].as_u64().unwrap();
        if id == envelope {
            return (
                v["batch_id"].as_u64().unwrap() as u16,
                v["key_id"].as_u64().unwrap() as u16,
            );
        }
    }
    panic!("envelope {envelope} not claimed");
}

#[test]
fn an_amount_edited_in_the_ledger_or_a_credit_without_a_claim_is_held() {
    let (event, opened) = served_event();
    assert!(settle(&event, "data").status.success());
    let (edited, uid, cents) = opened[1];
    let conn = ledger(&event);
    // The edit keeps the ledger's own totals consistent: only the claims and tickets tell.
    conn.execute(
        "UPDATE claims SET amount_cents = amount_cents + 100000 WHERE envelope_id = ?1",
        [edited as i64],
    )
    .unwrap();
    conn.execute(
        "UPDATE users SET pending_cents = pending_cents + 100000 WHERE uid = ?1",
        [uid as i64],
    )
    .unwrap();
    // A row (and user) made up: an envelope nobody claimed, credited to uid 777.
    let made_up = opened[2].0 + 1_000_000;
    conn.execute(
        "INSERT INTO claims SELECT ?1, 777, 12345, batch_id, key_id, claimed_unix, \
         issuing_core, host, core, segment, offset + 1, 'pending' FROM claims \
         WHERE envelope_id = ?2",
        [made_up as i64, opened[2].0 as i64],
    )
    .unwrap();
    conn.execute("INSERT INTO users VALUES (777, 1, 12345, 0, 0)", [])
        .unwrap();
    conn.execute(
        "UPDATE positions SET claims = claims + 1 WHERE core = 0",
        [],
    )
    .unwrap();
    drop(conn);
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 1, "{stderr}");
    let k = kinds(&report);
    for kind in ["row_differs", "ticket_mismatch", "no_claim"] {
        assert!(
            k.contains(&kind.to_string()),
            "{kind} not in {k:?}: {stderr}"
        );
    }
    let s = states(&event);
    assert!(s.contains(&(edited, "held".to_string())), "{s:?}");
    assert!(s.contains(&(made_up, "held".to_string())), "{s:?}");
    assert_eq!(
        report["changed"]["credited"]["claims"],
        opened.len() as u64 - 1
    );
    let honest: u64 = opened.iter().map(|o| u64::from(o.2)).sum::<u64>() - u64::from(cents);
    assert_eq!(report["changed"]["credited"]["cents"], honest);
    assert_eq!(credited_cents(&event), (honest as i64, honest as i64));
}

#[test]
fn one_envelope_claimed_on_two_hosts_is_credited_to_neither() {
    let (event, opened) = served_event();
    assert!(settle(&event, "data").status.success());
    // A second host's data directory, whose log claims an envelope the first host paid out.
    let data2 = event.path().join("data2");
    std::fs::create_dir_all(&data2).unwrap();
    let identity = std::fs::read_to_string(event.path().join("data/event.json")).unwrap();
    std::fs::write(
        data2.join("event.json"),
        identity.replace("bj-a-01", "sh-b-01"),
    )
    .unwrap();
    let (twice, _, cents) = opened[3];
    let (batch, key) = batch_and_key(&event, twice);
    append_claim(&data2, 0, claim(twice, 4242, cents, batch, key));
    let out = settle(&event, "data2");
    assert_eq!(out.status.code(), Some(1), "a conflict is held by settle");
    let (code, report, stderr) = reconcile(&event, &["data", "data2"], &[]);
    assert_eq!(code, 1, "{stderr}");
    let k = kinds(&report);
    assert!(k.contains(&"duplicate".to_string()), "{k:?}");
    assert!(k.contains(&"wrong_host".to_string()), "{k:?}");
    assert!(states(&event).contains(&(twice, "held".to_string())));
    assert_eq!(
        report["changed"]["credited"]["claims"],
        opened.len() as u64 - 1
    );
}

#[test]
fn a_claim_under_a_denied_key_is_held() {
    let (event, opened) = served_event();
    assert!(settle(&event, "data").status.success());
    let (_, key) = batch_and_key(&event, opened[0].0);
    std::fs::write(event.path().join("lists.toml"), format!("deny = [{key}]\n")).unwrap();
    let denied: Vec<u64> = opened
        .iter()
        .map(|o| o.0)
        .filter(|&e| batch_and_key(&event, e).1 == key)
        .collect();
    let (code, report, stderr) = reconcile(&event, &["data"], &["--key-lists", "lists.toml"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(kinds(&report), vec!["denied_key".to_string()]);
    assert_eq!(report["findings"]["total"], denied.len() as u64);
    let s = states(&event);
    for e in &denied {
        assert!(s.contains(&(*e, "held".to_string())));
    }
    assert_eq!(
        report["changed"]["credited"]["claims"],
        (opened.len() - denied.len()) as u64
    );
}

#[test]
fn a_replayed_settle_and_a_settle_killed_part_way_credit_nothing_twice() {
    let (event, opened) = served_event();
    let total: u64 = opened.iter().map(|o| u64::from(o.2)).sum();
    // settle killed soon after its start, maybe part-way: reconcile credits what is there.
    let mut child = Command::new(bin())
        .args([
            "settle",
            "--data",
            "data",
            "--db",
            "ledger.sqlite",
            "--batch",
            "3",
        ])
        .current_dir(event.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(15));
    child.kill().unwrap();
    child.wait().unwrap();
    if !event.path().join("ledger.sqlite").exists() || states(&event).is_empty() {
        assert!(settle(&event, "data").status.success());
    }
    let (code, first, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let first_credit = first["changed"]["credited"]["claims"].as_u64().unwrap();
    assert_eq!(
        first_credit + first["logs"]["unsettled"].as_u64().unwrap(),
        opened.len() as u64
    );
    assert!(settle(&event, "data").status.success());
    // The shipment replayed: positions wiped, every claim read again.
    ledger(&event)
        .execute("UPDATE positions SET segment = 0, offset = 0", [])
        .unwrap();
    let out = settle(&event, "data");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 new claims"), "{text}");
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        first_credit + report["changed"]["credited"]["claims"].as_u64().unwrap(),
        opened.len() as u64
    );
    assert_eq!(credited_cents(&event), (total as i64, total as i64));
}

#[test]
fn a_dry_run_changes_nothing_and_damaged_tickets_credit_nothing() {
    let (event, opened) = served_event();
    assert!(settle(&event, "data").status.success());
    let (code, report, stderr) = reconcile(&event, &["data"], &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["applied"], false);
    assert_eq!(report["changed"]["credited"]["claims"], opened.len() as u64);
    assert!(states(&event).iter().all(|(_, s)| s == "pending"));
    // One byte of one ticket file changed: verify finds it, nothing is credited.
    let tickets = event.path().join("d/event/A");
    let file = walk(&tickets)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "tix"))
        .expect("a ticket file");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(report["applied"], false);
    assert!(report["tickets"]["findings"].as_u64().unwrap() > 0);
    assert!(states(&event).iter().all(|(_, s)| s == "pending"));
    // No ledger: cannot run (2).
    std::fs::rename(
        event.path().join("ledger.sqlite"),
        event.path().join("elsewhere.sqlite"),
    )
    .unwrap();
    let (code, _, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no ledger"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn big_envelopes_are_credited_at_settle_and_a_differing_one_held() {
    let (event, opened) = served_event();
    let list = hongbao::big::BigList::load(&event.path().join("d/keys/demo.A.big")).unwrap();
    assert!(!list.entries.is_empty());
    // Two big envelopes of a file the host issued from, inside its first reservation, not
    // opened: one claimed as the server would write it, one with a changed amount.
    let ordinal = opened[0].0 >> 32;
    let mut candidates = list.entries.iter().filter(|e| {
        let id = e.envelope_id.get();
        id >> 32 == ordinal && (id & 0xffff_ffff) < 4096 && !opened.iter().any(|o| o.0 == id)
    });
    let (good, bad) = (*candidates.next().unwrap(), *candidates.next().unwrap());
    let data = event.path().join("data");
    let g = claim(
        good.envelope_id.get(),
        901,
        good.amount_cents.get(),
        good.batch_id.get(),
        good.key_id.get(),
    );
    let b = claim(
        bad.envelope_id.get(),
        902,
        bad.amount_cents.get() + 1,
        bad.batch_id.get(),
        bad.key_id.get(),
    );
    append_claim(&data, 0, g);
    append_claim(&data, 0, b);
    let out = run(
        &[
            "settle",
            "--data",
            "data",
            "--db",
            "ledger.sqlite",
            "--preload",
            "d/keys/demo.A.big",
        ],
        event.path(),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("big envelopes:"), "{text}");
    let big: std::collections::HashSet<u64> =
        list.entries.iter().map(|e| e.envelope_id.get()).collect();
    let s = states(&event);
    for (envelope, state) in &s {
        let expected = if *envelope == bad.envelope_id.get() {
            "held"
        } else if big.contains(envelope) {
            "credited"
        } else {
            "pending"
        };
        assert_eq!(state, expected, "envelope {envelope}");
    }
    let credited_901: i64 = ledger(&event)
        .query_row(
            "SELECT credited_cents FROM users WHERE uid = 901",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(credited_901, i64::from(good.amount_cents.get()));
    // Reconciliation credits the rest; the held one stays held, its finding reported.
    let (code, report, stderr) = reconcile(&event, &["data"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(kinds(&report), vec!["ticket_mismatch".to_string()]);
    let total: u64 =
        opened.iter().map(|o| u64::from(o.2)).sum::<u64>() + u64::from(good.amount_cents.get());
    assert_eq!(credited_cents(&event), (total as i64, total as i64));
    assert!(states(&event).contains(&(bad.envelope_id.get(), "held".to_string())));
}
