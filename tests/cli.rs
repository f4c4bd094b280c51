//! The `hongbao` binary as a user runs it: exit codes and messages for good and bad input.

use std::path::Path;

use std::process::{Command, Output};
use zerocopy::FromBytes;

fn hongbao(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hongbao"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn demo_generates_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hongbao(
        &["demo", "--dir", "d", "--seed", "1", "--no-serve"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verify OK"), "{}", text(&out));
    // Running it again replaces the earlier demo, and serves it: the demo client wins an
    // envelope, opens it, and a second open claims nothing more (it answers the claim again).
    let again = hongbao(
        &[
            "demo",
            "--dir",
            "d",
            "--serve-for",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        tmp.path(),
    );
    let t = text(&again);
    assert!(again.status.success(), "{t}");
    assert!(
        t.contains("verify OK") && t.contains("hongbao serve: ready"),
        "{t}"
    );
    assert!(
        t.contains("claim durable") && t.contains("the same claim is answered again"),
        "{t}"
    );
    assert!(t.contains("1 opened"), "{t}");
    // The claim is in the log, for the payments side.
    let claims = hongbao(&["claims", "--data", "d/data"], tmp.path());
    assert!(claims.status.success(), "{}", text(&claims));
    assert_eq!(String::from_utf8_lossy(&claims.stdout).lines().count(), 1);
}

#[test]
fn gen_then_verify_then_detect_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let example = hongbao(&["plan-example"], tmp.path());
    std::fs::write(tmp.path().join("plan.toml"), &example.stdout).unwrap();
    let check = hongbao(&["check-plan", "--plan", "plan.toml"], tmp.path());
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("is valid"));
    // Without --keyring the keys go to the per-user key store, never beside the tickets.
    let gen = Command::new(env!("CARGO_BIN_EXE_hongbao"))
        .args([
            "gen",
            "--plan",
            "plan.toml",
            "--out",
            "ev",
            "--variants",
            "2",
            "--quiet",
        ])
        .current_dir(tmp.path())
        .env("XDG_DATA_HOME", tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", text(&gen));
    let store = tmp.path().join("data/hongbao/keys");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "key store directory is private");
    let (keyrings, lists): (Vec<_>, Vec<_>) = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .partition(|p| p.extension().is_some_and(|e| e == "keyring"));
    assert_eq!(keyrings.len(), 1);
    // Beside it, one big-envelope list per variant (two), as private as the keyring.
    assert_eq!(lists.len(), 2, "{lists:?}");
    for list in &lists {
        assert!(list.extension().is_some_and(|e| e == "big"), "{list:?}");
        let mode = std::fs::metadata(list).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{list:?}");
    }
    let made = keyrings[0].clone();
    assert!(made
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("demo-new-year-"));
    assert!(
        text(&gen).contains(made.to_str().unwrap()),
        "{}",
        text(&gen)
    );
    std::fs::rename(&made, tmp.path().join("ev.keyring")).unwrap();
    let ok = hongbao(
        &[
            "verify",
            "--dir",
            "ev",
            "--keyring",
            "ev.keyring",
            "--plan",
            "plan.toml",
        ],
        tmp.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("variants A, B"));

    let file = tmp.path().join("ev/B/tickets/2100/sh-b-01/1.tix");
    let inspected = hongbao(
        &[
            "inspect",
            "--file",
            file.to_str().unwrap(),
            "--keyring",
            "ev.keyring",
        ],
        tmp.path(),
    );
    assert!(inspected.status.success(), "{}", text(&inspected));
    let t = text(&inspected);
    assert!(t.contains("body checksum ok"), "{t}");
    // Slot 2100 has no dominant sponsor, so no two neighbours share a batch.
    assert!(t.contains("neighbours from the same batch: 0 of"), "{t}");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[128 + 26 * 1000 + 20] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let bad = hongbao(
        &["verify", "--dir", "ev", "--keyring", "ev.keyring"],
        tmp.path(),
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let t = text(&bad);
    assert!(t.contains("verify FAILED"), "{t}");
    assert!(t.contains("sh-b-01/1.tix record 1000 (byte 26128)"), "{t}");
}

#[test]
fn bad_plans_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("this is not toml = = =", "plan is not valid"),
        ("[event]\nname = \"x\"\n[topology]\n", "no hosts"),
        (
            &hongbao::DEMO_PLAN.replace("count = 400_000", "count = 10"),
            "merchant[2] (id 1003)",
        ),
        (
            &hongbao::DEMO_PLAN.replace("park = \"shanghai-b\"", "park = \"beijing-a\""),
            "backup host in another park",
        ),
        (
            &hongbao::DEMO_PLAN.replace("min_cents = 88", "min_cents = 900"),
            "above max_cents",
        ),
    ];
    for (i, (plan, expected)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        std::fs::write(tmp.path().join(&name), plan).unwrap();
        let out = hongbao(
            &["gen", "--plan", &name, "--out", "o", "--quiet"],
            tmp.path(),
        );
        assert_eq!(out.status.code(), Some(2), "case {i}: {}", text(&out));
        assert!(text(&out).contains(expected), "case {i}: {}", text(&out));
        // Nothing was generated for a bad plan.
        assert!(!tmp.path().join("o").exists(), "case {i}");
    }
    let missing = hongbao(&["gen", "--plan", "nope.toml", "--out", "o"], tmp.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("cannot read plan nope.toml"));
}

#[test]
fn garbage_keyring_and_directories_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = hongbao(&["demo", "--dir", "d", "--no-serve"], tmp.path());
    assert!(demo.status.success(), "{}", text(&demo));
    std::fs::write(tmp.path().join("junk.keyring"), b"definitely not keys").unwrap();
    let out = hongbao(
        &["verify", "--dir", "d/event", "--keyring", "junk.keyring"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("not a hongbao keyring"),
        "{}",
        text(&out)
    );
    let out = hongbao(
        &[
            "verify",
            "--dir",
            "d/keys",
            "--keyring",
            "d/keys/demo.keyring",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no manifest.json"), "{}", text(&out));
    std::fs::write(tmp.path().join("d/event/A/manifest.json"), b"{ nope").unwrap();
    let out = hongbao(
        &[
            "verify",
            "--dir",
            "d/event",
            "--keyring",
            "d/keys/demo.keyring",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("not a valid manifest"),
        "{}",
        text(&out)
    );
}

#[test]
fn claims_streams_json_lines_and_refuses_bad_input() {
    use hongbao::ledger::{ClaimRecord, KIND_CLAIM};
    use hongbao::store::{FileLog, StoreOptions};
    use zerocopy::IntoBytes;
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = FileLog::open(
        &tmp.path().join("data/core-0"),
        0,
        StoreOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let record = ClaimRecord::read_from_bytes(&[0u8; 32]).unwrap();
    let mut record = record;
    record.uid = 77.into();
    record.amount_cents = 1234.into();
    log.append(KIND_CLAIM, 0, 0, record.as_bytes()).unwrap();
    log.commit().unwrap();
    drop(log);
    let out = hongbao(&["claims", "--data", "data"], tmp.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["uid"], 77);
    assert_eq!(line["amount_cents"], 1234);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 claims; resume with: --from 0:0:"));
    let bad = hongbao(&["claims", "--data", "data", "--from", "x"], tmp.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("is not CORE:SEGMENT:OFFSET"),
        "{}",
        text(&bad)
    );
    let missing = hongbao(&["claims", "--data", "nowhere"], tmp.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("nowhere"), "{}", text(&missing));
}

/// `inspect` prints a batch's smallest and largest amounts exactly (its percentiles are to
/// three significant digits).
#[test]
fn inspect_prints_exact_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = r#"
[event]
name = "exact"
[[topology.host]]
name = "h0"
park = "A"
cores = 1
[[topology.host]]
name = "h1"
park = "B"
cores = 1
[[slot]]
name = "s0"
start = "2027-02-06T20:00:00+08:00"
end = "2027-02-06T20:10:00+08:00"
[[merchant]]
id = 1
name = "Nine"
kind = "logo"
budget_cents = 1980200
count = 200
min_cents = 9901
max_cents = 9901
"#;
    std::fs::write(tmp.path().join("plan.toml"), plan).unwrap();
    let gen = hongbao(
        &[
            "gen",
            "--plan",
            "plan.toml",
            "--out",
            "ev",
            "--keyring",
            "k.keyring",
            "--quiet",
        ],
        tmp.path(),
    );
    assert!(gen.status.success(), "{}", text(&gen));
    let file = tmp.path().join("ev/A/tickets/s0/h0/0.tix");
    let out = hongbao(
        &[
            "inspect",
            "--file",
            file.to_str().unwrap(),
            "--keyring",
            "k.keyring",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.trim_start().starts_with("1 ") && l.contains("9901.00"))
        .unwrap_or_else(|| panic!("no batch line in {t}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // batch, envelopes, total, min, p1 .. p99, max: every amount is 9901 exactly.
    assert!(words[3..].iter().all(|w| *w == "9901"), "{line}");
}

/// A refused `gen` leaves no directory behind (neither the output nor the keyring's).
#[test]
fn refused_generations_leave_no_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let example = hongbao(&["plan-example"], tmp.path());
    std::fs::write(tmp.path().join("plan.toml"), &example.stdout).unwrap();
    let gen = |out: &str, keyring: &str| {
        hongbao(
            &[
                "gen",
                "--plan",
                "plan.toml",
                "--out",
                out,
                "--keyring",
                keyring,
                "--quiet",
            ],
            tmp.path(),
        )
    };
    // The keyring inside the ticket directory.
    let refused = gen("ev/inner", "ev/inner/keys/k.keyring");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(!tmp.path().join("ev").exists());
    // An earlier generation in the way.
    assert!(gen("ev", "k.keyring").status.success());
    let refused = gen("ev", "new-keys/k.keyring");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("already holds files"));
    assert!(!tmp.path().join("new-keys").exists());
    // An existing keyring.
    let refused = gen("ev2", "k.keyring");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(!tmp.path().join("ev2").exists());
}
