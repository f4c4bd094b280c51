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
        regenerate: true,
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
        regenerate: true,
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

// ---- What only the order rules and the replay from the seed catch ----------------------

/// The event with a small key cap: several keys per file.
fn make_keyed_event() -> Event {
    make_event_with(
        &PLAN.replace("key_cap_cents = 2_000_000", "key_cap_cents = 100_000"),
        42,
    )
}

fn quick(event: &Event) -> VerifyReport {
    let mut opts = verify_options(&event.out, &event.keyring, 1000);
    opts.regenerate = false;
    verify(&opts).unwrap()
}

fn manifest(event: &Event) -> serde_json::Value {
    serde_json::from_slice(&fs::read(event.variant().join("manifest.json")).unwrap()).unwrap()
}

fn save_manifest(event: &Event, m: &serde_json::Value) {
    fs::write(
        event.variant().join("manifest.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

/// What an insider holding the keyring does after changing records: the file's checksums in
/// its header and in the manifest made to match again, so that only the content rules can
/// tell.
fn fix_checksums(event: &Event, path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let body = crc32c::crc32c(&bytes[HEADER_BYTES..]);
    bytes[76..80].copy_from_slice(&body.to_le_bytes());
    let header = crc32c::crc32c(&bytes[..124]);
    bytes[124..128].copy_from_slice(&header.to_le_bytes());
    fs::write(path, &bytes).unwrap();
    let mut m = manifest(event);
    let relative = path
        .strip_prefix(event.variant())
        .unwrap()
        .to_string_lossy()
        .to_string();
    for s in m["shards"].as_array_mut().unwrap() {
        if s["path"] == relative.as_str() {
            s["body_crc32c"] = format!("{body:08x}").into();
        }
    }
    save_manifest(event, &m);
}

/// The file's keys from the manifest: (id, first index, envelopes, cents), in order.
fn file_keys(event: &Event, path: &Path) -> Vec<(u16, u64, u64, u64)> {
    let ordinal = u32::from_le_bytes(fs::read(path).unwrap()[16..20].try_into().unwrap());
    let m = manifest(event);
    let mut keys: Vec<_> = m["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["shard_ordinal"] == ordinal)
        .map(|k| {
            let n = |f: &str| k[f].as_u64().unwrap();
            (
                n("id") as u16,
                n("first_index"),
                n("envelopes"),
                n("amount_cents"),
            )
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn an_edited_first_index_in_the_manifest_is_found() {
    let event = make_keyed_event();
    let path = event.file("s0", "h0", 0);
    let keys = file_keys(&event, &path);
    assert!(keys.len() >= 3, "{keys:?}");
    let mut m = manifest(&event);
    for k in m["keys"].as_array_mut().unwrap() {
        if k["id"] == keys[1].0 {
            k["first_index"] = (keys[1].1 + 1).into();
        }
    }
    save_manifest(&event, &m);
    let report = quick(&event);
    let found: Vec<String> = report
        .findings
        .shown
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert!(
        found.iter().any(|f| f.contains("run starts at record")),
        "{found:#?}"
    );
}

#[test]
fn a_record_resealed_under_the_neighbouring_key_is_found_although_totals_agree() {
    let event = make_keyed_event();
    let ring = event.keyring();
    let path = event.file("s0", "h0", 0);
    let keys = file_keys(&event, &path);
    // The last record of the first key, sealed with the second key instead.
    let (first, second) = (keys[0], keys[1]);
    let index = second.1 - 1;
    let ticket = read_record(&path, index).open(&ring).unwrap();
    assert_eq!(ticket.key_id, first.0);
    let moved = Ticket {
        key_id: second.0,
        ..ticket
    };
    write_record(
        &path,
        index,
        &TicketRecord::seal(&moved, ring.cipher(second.0).unwrap()),
    );
    fix_checksums(&event, &path);
    let amount = ticket.amount_cents as u64;
    let mut m = manifest(&event);
    for k in m["keys"].as_array_mut().unwrap() {
        let id = k["id"].as_u64().unwrap() as u16;
        let n = |k: &serde_json::Value, f: &str| k[f].as_u64().unwrap();
        if id == first.0 {
            k["envelopes"] = (n(k, "envelopes") - 1).into();
            k["amount_cents"] = (n(k, "amount_cents") - amount).into();
        } else if id == second.0 {
            k["envelopes"] = (n(k, "envelopes") + 1).into();
            k["amount_cents"] = (n(k, "amount_cents") + amount).into();
            k["first_index"] = index.into();
        }
    }
    save_manifest(&event, &m);
    let report = quick(&event);
    assert_eq!(
        report.findings.total,
        count(&report, FindingKind::KeyOrder),
        "{:#?}",
        report.findings.shown
    );
    assert_eq!(count(&report, FindingKind::KeyOrder), 1);
    assert!(places(&report, FindingKind::KeyOrder)[0].contains(&format!("record {index}")));
}

/// Batches of the file's records, in order (all open).
fn batches_of(ring: &Keyring, path: &Path, n: u64) -> Vec<u16> {
    (0..n)
        .map(|i| read_record(path, i).open(ring).unwrap().batch_id)
        .collect()
}

#[test]
fn records_reordered_so_that_neighbours_share_a_sponsor_are_found() {
    let event = make_keyed_event();
    let ring = event.keyring();
    let path = event.file("s0", "h0", 0);
    let keys = file_keys(&event, &path);
    // Inside the first key's run (neither record starts a run): swap the contents of two
    // records of different sponsors so that one lands beside a record of its own sponsor.
    let (start, end) = (keys[0].1 + 1, keys[1].1 - 1);
    let batches = batches_of(&ring, &path, keys[1].1 + 1);
    let pairs = |b: &[u16]| b.windows(2).filter(|w| w[0] == w[1]).count();
    let before = pairs(&batches);
    let (i, j) = (start..end)
        .flat_map(|i| (i + 1..end).map(move |j| (i, j)))
        .find(|&(i, j)| {
            let mut b = batches.clone();
            b.swap(i as usize, j as usize);
            pairs(&b) > before
        })
        .expect("a swap that puts a sponsor beside itself");
    let (a, b) = (
        read_record(&path, i).open(&ring).unwrap(),
        read_record(&path, j).open(&ring).unwrap(),
    );
    let cipher = ring.cipher(a.key_id).unwrap();
    let at = |t: Ticket, from: Ticket| Ticket {
        envelope_id: from.envelope_id,
        ..t
    };
    write_record(&path, i, &TicketRecord::seal(&at(b, a), cipher));
    write_record(&path, j, &TicketRecord::seal(&at(a, b), cipher));
    fix_checksums(&event, &path);
    let report = quick(&event);
    assert_eq!(
        count(&report, FindingKind::Interleave),
        1,
        "{:#?}",
        report.findings.shown
    );
    assert_eq!(report.findings.total, 1, "{:#?}", report.findings.shown);
    // Drawn again from the seed, both records show as altered too.
    assert_eq!(count(&event.check(), FindingKind::Altered), 2);
}

#[test]
fn money_moved_between_two_envelopes_is_found_only_by_the_replay() {
    // 164 cents from one envelope to another of the same key and sponsor: every total holds.
    let event = make_keyed_event();
    let ring = event.keyring();
    let path = event.file("s0", "h0", 0);
    let keys = file_keys(&event, &path);
    let in_run: Vec<(u64, Ticket)> = (keys[0].1 + 1..keys[1].1 - 1)
        .map(|i| (i, read_record(&path, i).open(&ring).unwrap()))
        .collect();
    let (from, to) = in_run
        .iter()
        .flat_map(|a| in_run.iter().map(move |b| (*a, *b)))
        .find(|((i, a), (j, b))| {
            i != j
                && a.batch_id == 1
                && b.batch_id == 1
                && a.amount_cents > 300
                && b.amount_cents < 1700
        })
        .expect("two envelopes of sponsor One with room");
    let cipher = ring.cipher(from.1.key_id).unwrap();
    let less = Ticket {
        amount_cents: from.1.amount_cents - 164,
        ..from.1
    };
    let more = Ticket {
        amount_cents: to.1.amount_cents + 164,
        ..to.1
    };
    write_record(&path, from.0, &TicketRecord::seal(&less, cipher));
    write_record(&path, to.0, &TicketRecord::seal(&more, cipher));
    fix_checksums(&event, &path);
    let quick = quick(&event);
    assert!(
        quick.ok(),
        "totals alone cannot see it: {:#?}",
        quick.findings.shown
    );
    let report = event.check();
    assert_eq!(
        count(&report, FindingKind::Altered),
        2,
        "{:#?}",
        report.findings.shown
    );
    assert_eq!(report.findings.total, 2);
}

#[test]
fn a_deleted_variant_directory_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = Plan::from_toml(PLAN).unwrap();
    plan.expand_variants(3).unwrap();
    let out = tmp.path().join("event");
    let keyring = tmp.path().join("event.keyring");
    generate(&plan, &gen_options(&out, &keyring, Some(3))).unwrap();
    fs::remove_dir_all(out.join("C")).unwrap();
    let report = verify(&verify_options(&out, &keyring, 10)).unwrap();
    assert_eq!(
        count(&report, FindingKind::FileMissing),
        1,
        "{:#?}",
        report.findings.shown
    );
    assert!(report.findings.shown[0].detail.contains("variant index 2"));
}
