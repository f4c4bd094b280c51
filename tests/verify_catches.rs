//! End-to-end: generate a small event, damage it in each way an attacker or a broken disk
//! would, and check that `verify` names the problem and where it is.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hongbao::gen::{generate, GenOptions};
use hongbao::plan::Plan;
use hongbao::ticket::shard::{record_offset, HEADER_BYTES};
use hongbao::ticket::{EnvelopeId, Keyring, Ticket, TicketRecord, RECORD_BYTES};
use hongbao::verify::{verify, FindingKind, VerifyOptions, VerifyReport};
use zerocopy::{FromBytes, IntoBytes};

const PLAN: &str = r#"
[event]
name = "corrupt-me"
key_cap_cents = 2_000_000

[[topology.host]]
name = "h0"
park = "A"
cores = 2

[[topology.host]]
name = "h1"
park = "B"
cores = 1

[[slot]]
name = "s0"
start = "2027-02-06T20:00:00+08:00"
end = "2027-02-06T20:10:00+08:00"

[[slot]]
name = "s1"
start = "2027-02-06T21:00:00+08:00"
end = "2027-02-06T21:10:00+08:00"

[[merchant]]
id = 1
name = "One"
kind = "image"
budget_cents = 5_000_000
count = 20_000
min_cents = 1
max_cents = 2_000

[[merchant]]
id = 2
name = "Two"
kind = "video"
budget_cents = 3_000_000
count = 10_000
min_cents = 100
max_cents = 500
slots = { s1 = 1 }

[[merchant]]
id = 3
name = "Three"
kind = "logo"
budget_cents = 1_000_000
count = 8_000
min_cents = 50
max_cents = 300
"#;

fn gen_options(out: &Path, keyring: &Path, seed: Option<u64>) -> GenOptions {
    GenOptions {
        out: out.to_path_buf(),
        keyring: keyring.to_path_buf(),
        seed,
        threads: 2,
        force: false,
        progress: false,
    }
}

fn verify_options(dir: &Path, keyring: &Path, findings_max: usize) -> VerifyOptions {
    VerifyOptions {
        dir: dir.to_path_buf(),
        keyring: keyring.to_path_buf(),
        plan: None,
        threads: 2,
        progress: false,
        findings_max,
    }
}

struct Event {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    keyring: PathBuf,
}

impl Event {
    fn variant(&self) -> PathBuf {
        self.out.join("A")
    }
    fn file(&self, slot: &str, host: &str, core: u32) -> PathBuf {
        self.variant()
            .join("tickets")
            .join(slot)
            .join(host)
            .join(format!("{core}.tix"))
    }
    fn check(&self) -> VerifyReport {
        verify(&verify_options(&self.out, &self.keyring, 1000)).expect("verify runs")
    }
    fn keyring(&self) -> Keyring {
        Keyring::load(&self.keyring).unwrap().0
    }
}

fn make_event_with(plan_text: &str, seed: u64) -> Event {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("event");
    let keyring = tmp.path().join("keys").join("event.keyring");
    let plan = Plan::from_toml(plan_text).unwrap();
    generate(&plan, &gen_options(&out, &keyring, Some(seed))).unwrap();
    Event {
        _tmp: tmp,
        out,
        keyring,
    }
}

fn make_event() -> Event {
    make_event_with(PLAN, 42)
}

fn read_record(path: &Path, index: u64) -> TicketRecord {
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(record_offset(index))).unwrap();
    let mut buf = [0u8; RECORD_BYTES];
    f.read_exact(&mut buf).unwrap();
    TicketRecord::read_from_bytes(&buf).unwrap()
}

fn write_record(path: &Path, index: u64, record: &TicketRecord) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(record_offset(index))).unwrap();
    f.write_all(record.as_bytes()).unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn count(report: &VerifyReport, kind: FindingKind) -> u64 {
    report.findings.by_kind.get(&kind).copied().unwrap_or(0)
}

fn places(report: &VerifyReport, kind: FindingKind) -> Vec<String> {
    report
        .findings
        .shown
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.place.clone())
        .collect()
}

#[test]
fn clean_event_verifies_with_exact_totals() {
    let event = make_event();
    let report = event.check();
    assert!(report.ok(), "{:#?}", report.findings.shown);
    assert_eq!(report.envelopes, 38_000);
    assert_eq!(report.amount_cents, 9_000_000);
    assert_eq!(report.files, 6);
    // Every file decrypts, every amount in bounds, every id unique: check directly too.
    let ring = event.keyring();
    let mut ids = std::collections::HashSet::new();
    for slot in ["s0", "s1"] {
        for (host, core) in [("h0", 0), ("h0", 1), ("h1", 0)] {
            let file = hongbao::ticket::ShardFile::open(&event.file(slot, host, core)).unwrap();
            for record in file.records() {
                let t = record.open(&ring).unwrap();
                assert!(ids.insert(t.envelope_id));
            }
        }
    }
    assert_eq!(ids.len(), 38_000);
}

#[test]
fn one_flipped_byte_in_a_record_is_found_at_its_offset() {
    let event = make_event();
    let path = event.file("s0", "h0", 1);
    flip_byte(&path, record_offset(123) + 17);
    let report = event.check();
    assert!(!report.ok());
    assert_eq!(count(&report, FindingKind::ForgedRecord), 1);
    assert_eq!(count(&report, FindingKind::BodyChecksum), 2); // vs header and vs manifest
    let forged = places(&report, FindingKind::ForgedRecord);
    assert!(
        forged[0].ends_with(&format!("record 123 (byte {})", record_offset(123))),
        "{forged:?}"
    );
}

#[test]
fn flipped_clear_key_id_is_found() {
    let event = make_event();
    let path = event.file("s1", "h1", 0);
    flip_byte(&path, record_offset(7));
    let report = event.check();
    assert_eq!(count(&report, FindingKind::ForgedRecord), 1);
}

#[test]
fn flipped_header_byte_is_found() {
    let event = make_event();
    let path = event.file("s1", "h0", 0);
    flip_byte(&path, 20);
    let report = event.check();
    assert_eq!(count(&report, FindingKind::Header), 1);
    assert!(places(&report, FindingKind::Header)[0].ends_with("s1/h0/0.tix"));
    // The damaged file's tickets are not counted, so totals no longer add up.
    assert!(count(&report, FindingKind::TotalMismatch) > 0);
}

#[test]
fn record_swapped_between_files_is_found() {
    let event = make_event();
    let a = event.file("s0", "h0", 0);
    let b = event.file("s0", "h1", 0);
    let (ra, rb) = (read_record(&a, 10), read_record(&b, 20));
    write_record(&a, 10, &rb);
    write_record(&b, 20, &ra);
    let report = event.check();
    assert_eq!(count(&report, FindingKind::MisplacedRecord), 2);
    let misplaced = places(&report, FindingKind::MisplacedRecord);
    assert!(misplaced
        .iter()
        .any(|p| p.contains("s0/h0/0.tix record 10")));
    assert!(misplaced
        .iter()
        .any(|p| p.contains("s0/h1/0.tix record 20")));
}

#[test]
fn duplicated_record_is_found() {
    let event = make_event();
    let path = event.file("s1", "h0", 1);
    let r = read_record(&path, 5);
    write_record(&path, 6, &r);
    let report = event.check();
    assert_eq!(count(&report, FindingKind::MisplacedRecord), 1);
    assert!(places(&report, FindingKind::MisplacedRecord)[0].contains("record 6"));
}

#[test]
fn duplicated_record_appended_is_found_as_length() {
    let event = make_event();
    let path = event.file("s1", "h0", 1);
    let r = read_record(&path, 5);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(r.as_bytes()).unwrap();
    let report = event.check();
    assert_eq!(count(&report, FindingKind::Length), 1);
}

#[test]
fn altered_amount_resealed_with_the_right_key_is_found_by_totals() {
    // An insider who holds the key re-seals a ticket with a bigger amount, still within bounds.
    let event = make_event();
    let ring = event.keyring();
    let path = event.file("s0", "h0", 0);
    let record = read_record(&path, 3);
    let ticket = record.open(&ring).unwrap();
    let altered = Ticket {
        amount_cents: if ticket.amount_cents > 60 {
            ticket.amount_cents - 1
        } else {
            ticket.amount_cents + 1
        },
        ..ticket
    };
    let cipher = ring.cipher(ticket.key_id).unwrap();
    write_record(&path, 3, &TicketRecord::seal(&altered, cipher));
    let report = event.check();
    assert!(!report.ok());
    let totals = report
        .findings
        .shown
        .iter()
        .filter(|f| f.kind == FindingKind::TotalMismatch)
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(totals.contains("s0/h0/0.tix"), "{totals}");
    assert!(totals.contains("merchant"), "{totals}");
    assert!(count(&report, FindingKind::KeyTotals) >= 1);
    assert!(count(&report, FindingKind::BodyChecksum) >= 1);
}

#[test]
fn amount_out_of_bounds_is_found() {
    let event = make_event();
    let ring = event.keyring();
    let path = event.file("s1", "h1", 0);
    let ticket = read_record(&path, 0).open(&ring).unwrap();
    let altered = Ticket {
        amount_cents: 1_000_000,
        ..ticket
    };
    write_record(
        &path,
        0,
        &TicketRecord::seal(&altered, ring.cipher(ticket.key_id).unwrap()),
    );
    let report = event.check();
    assert_eq!(count(&report, FindingKind::AmountOutOfBounds), 1);
}

#[test]
fn truncated_file_is_found() {
    let event = make_event();
    let path = event.file("s0", "h1", 0);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 13)
        .unwrap();
    let report = event.check();
    assert_eq!(count(&report, FindingKind::Length), 1);
    let shown = report
        .findings
        .shown
        .iter()
        .find(|f| f.kind == FindingKind::Length)
        .unwrap()
        .to_string();
    assert!(shown.contains("truncated"), "{shown}");
    // Cut down to less than a header.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(HEADER_BYTES as u64 - 1)
        .unwrap();
    assert_eq!(count(&event.check(), FindingKind::Header), 1);
}

#[test]
fn ticket_under_a_wrong_key_is_found() {
    let event = make_event();
    let ring = event.keyring();
    let path = event.file("s0", "h0", 1);
    let ticket = read_record(&path, 9).open(&ring).unwrap();
    // A key of the keyring that was made for another file.
    let foreign = ring
        .entries()
        .iter()
        .find(|k| k.shard_ordinal != ticket.envelope_id.shard_ordinal())
        .unwrap()
        .key_id;
    let resealed = Ticket {
        key_id: foreign,
        ..ticket
    };
    write_record(
        &path,
        9,
        &TicketRecord::seal(&resealed, ring.cipher(foreign).unwrap()),
    );
    // A forged ticket under a key id the keyring does not have.
    let other = Keyring::new(
        [0; 32],
        0,
        vec![hongbao::ticket::KeyEntry {
            key_id: 9999,
            shard_ordinal: 0,
            key: [7; 16],
        }],
    )
    .unwrap();
    let forged = Ticket {
        key_id: 9999,
        envelope_id: EnvelopeId::new(ticket.envelope_id.shard_ordinal(), 10),
        ..ticket
    };
    write_record(
        &path,
        10,
        &TicketRecord::seal(&forged, other.cipher(9999).unwrap()),
    );
    let report = event.check();
    assert_eq!(count(&report, FindingKind::ForeignKey), 1);
    assert_eq!(count(&report, FindingKind::ForgedRecord), 1);
    let forged_finding = report
        .findings
        .shown
        .iter()
        .find(|f| f.kind == FindingKind::ForgedRecord)
        .unwrap();
    assert!(forged_finding.detail.contains("9999"));
}

#[test]
fn wrong_keyring_is_found() {
    let first = make_event();
    let second = make_event_with(&PLAN.replace("corrupt-me", "other-event"), 1);
    let report = verify(&verify_options(&first.out, &second.keyring, 10)).unwrap();
    assert!(count(&report, FindingKind::Fingerprint) >= 1);
    assert!(report.findings.total > 1000);
}

#[test]
fn keyring_of_another_run_of_the_same_plan_is_named() {
    let first = make_event();
    let second = make_event();
    let report = verify(&verify_options(&first.out, &second.keyring, 5)).unwrap();
    // The first finding says what happened, before the flood of records that do not open.
    let first_finding = &report.findings.shown[0];
    assert_eq!(first_finding.kind, FindingKind::Fingerprint);
    assert!(
        first_finding.detail.contains("keyring is from run"),
        "{first_finding}"
    );
    assert_eq!(count(&report, FindingKind::ForgedRecord), 38_000);
}

#[test]
fn missing_extra_and_leftover_files_are_found() {
    let event = make_event();
    fs::remove_file(event.file("s1", "h1", 0)).unwrap();
    fs::write(event.variant().join("tickets/s0/h0/7.tix"), b"x").unwrap();
    fs::write(event.variant().join("tickets/s0/h0/0.tix.tmp"), b"x").unwrap();
    let report = event.check();
    assert_eq!(count(&report, FindingKind::FileMissing), 1);
    assert_eq!(count(&report, FindingKind::FileUnexpected), 2);
}

#[test]
fn edited_metadata_is_found() {
    let event = make_event();
    let manifest = event.variant().join("manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        text.replacen("\"amount_cents\": 9000000", "\"amount_cents\": 9000100", 1),
    )
    .unwrap();
    let batches = event.variant().join("batches.toml");
    let text = fs::read_to_string(&batches).unwrap();
    fs::write(
        &batches,
        text.replacen("account = \"sponsor-1\"", "account = \"attacker\"", 1),
    )
    .unwrap();
    let report = event.check();
    assert_eq!(count(&report, FindingKind::ManifestMismatch), 1);
    assert_eq!(count(&report, FindingKind::BatchConfig), 1);
    // A changed plan copy no longer matches the keyring's fingerprint.
    let plan = event.variant().join("plan.toml");
    let text = fs::read_to_string(&plan).unwrap();
    fs::write(
        &plan,
        text.replace("budget_cents = 5_000_000", "budget_cents = 5_000_001"),
    )
    .unwrap();
    let report = event.check();
    assert!(count(&report, FindingKind::Fingerprint) >= 2);
}

#[test]
fn same_seed_same_amounts_other_keys() {
    let a = make_event_with(PLAN, 7);
    let b = make_event_with(PLAN, 7);
    let c = make_event_with(PLAN, 8);
    let amounts = |e: &Event| -> Vec<(u16, u32)> {
        let ring = e.keyring();
        let file = hongbao::ticket::ShardFile::open(&e.file("s1", "h0", 0)).unwrap();
        file.records()
            .iter()
            .map(|r| {
                let t = r.open(&ring).unwrap();
                (t.batch_id, t.amount_cents)
            })
            .collect()
    };
    assert_eq!(amounts(&a), amounts(&b));
    assert_ne!(amounts(&a), amounts(&c));
    // Keys come from the OS, so the sealed bytes differ even with the same seed.
    assert_ne!(
        fs::read(a.file("s1", "h0", 0)).unwrap(),
        fs::read(b.file("s1", "h0", 0)).unwrap()
    );
}

#[test]
fn consecutive_envelopes_come_from_different_sponsors() {
    let event = make_event();
    let ring = event.keyring();
    // In slot s1 no merchant holds a majority of any file, so no neighbours share a batch.
    for (host, core) in [("h0", 0), ("h0", 1), ("h1", 0)] {
        let file = hongbao::ticket::ShardFile::open(&event.file("s1", host, core)).unwrap();
        let batches: Vec<u16> = file
            .records()
            .iter()
            .map(|r| r.open(&ring).unwrap().batch_id)
            .collect();
        assert!(batches.len() > 1000);
        assert!(batches.windows(2).all(|w| w[0] != w[1]));
    }
}

#[test]
fn keys_respect_the_cap_and_are_kept_apart() {
    let event = make_event();
    let ring = event.keyring();
    // 9,000,000 cents at a 2,000,000 cap need at least five keys.
    assert!(ring.entries().len() >= 5);
    let manifest =
        hongbao::manifest::Manifest::load(&event.variant().join("manifest.json")).unwrap();
    for k in &manifest.keys {
        assert!(k.amount_cents <= 2_000_000);
    }
    assert!(!event.keyring.starts_with(&event.out));
}

#[test]
fn variants_are_written_side_by_side_with_distinct_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = Plan::from_toml(PLAN).unwrap();
    plan.expand_variants(3).unwrap();
    let out = tmp.path().join("event");
    let keyring = tmp.path().join("event.keyring");
    let summary = generate(&plan, &gen_options(&out, &keyring, Some(3))).unwrap();
    assert_eq!(summary.variants.len(), 3);
    let report = verify(&verify_options(&out, &keyring, 10)).unwrap();
    assert!(report.ok(), "{:#?}", report.findings.shown);
    assert_eq!(report.variants, vec!["A", "B", "C"]);
    assert_eq!(report.envelopes, 3 * 38_000);
    // A single variant verifies on its own too.
    let one = verify(&VerifyOptions {
        dir: out.join("B"),
        keyring,
        plan: None,
        threads: 1,
        progress: false,
        findings_max: 10,
    })
    .unwrap();
    assert!(one.ok());
    assert_eq!(one.envelopes, 38_000);
}

#[test]
fn refuses_to_overwrite_or_to_put_keys_with_tickets() {
    let event = make_event();
    let plan = Plan::from_toml(PLAN).unwrap();
    let again = generate(
        &plan,
        &gen_options(&event.out, &event.out.with_file_name("other.keyring"), None),
    );
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("already holds files"));
    let inside = generate(
        &plan,
        &gen_options(
            &event.out.with_file_name("fresh"),
            &event.out.with_file_name("fresh").join("k.keyring"),
            None,
        ),
    );
    assert!(inside
        .unwrap_err()
        .to_string()
        .contains("apart from ticket files"));
    let existing_keyring = generate(
        &plan,
        &gen_options(&event.out.with_file_name("fresh2"), &event.keyring, None),
    );
    assert!(existing_keyring
        .unwrap_err()
        .to_string()
        .contains("refusing to overwrite keys"));
}
