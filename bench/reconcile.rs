//! Reconciliation throughput: claims checked per second by `hongbao reconcile` (the logs
//! against the ledger rows, then every row against its decrypted ticket), on one thread, over
//! an event generated from the demo plan with every ticket of one host claimed. The peer,
//! measured in the same run on the same ledger, is the floor of its reads: one scan of the
//! `claims` table in envelope order summing the amounts (no logs, no tickets, no decrypt).
//!
//! Run: `cargo bench --bench reconcile -- [--dir DIR] [--scale N]` (default scale 2: about
//! 2.3 M claims on host bj-a-01; DIR defaults to a fresh directory under the system temp dir).
//! `--keep` leaves the files for a run of the command itself (e.g. under `/usr/bin/time -v`).
//! Under `cargo test --all-targets` it does a small smoke run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use hongbao::gen::{generate, GenOptions};
use hongbao::ledger::{ClaimRecord, ReservationRecord, KIND_CLAIM, KIND_RESERVATION};
use hongbao::manifest::{Manifest, MANIFEST_FILE};
use hongbao::plan::{Plan, PlanFile};
use hongbao::reconcile::{reconcile, ReconcileOptions};
use hongbao::settle::{open_ledger, settle_pass, BATCH_DEFAULT};
use hongbao::store::{FileLog, StoreOptions};
use hongbao::ticket::{Keyring, ShardFile};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    scale: Option<u64>,
    /// Keep the event, logs and ledger (and print where), e.g. to run `hongbao reconcile` on them.
    #[arg(long)]
    keep: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

const HOST: &str = "bj-a-01";

/// The demo plan with every sponsor's budget and count times `scale`.
fn plan(scale: u64) -> Plan {
    let mut file: PlanFile = toml::from_str(hongbao::DEMO_PLAN).expect("demo plan");
    for m in &mut file.merchants {
        m.budget_cents *= scale;
        m.count = m.count.map(|c| c * scale);
    }
    file.event.key_cap_cents = file.event.key_cap_cents.max(25_000_000);
    Plan::from_toml(&toml::to_string(&file).expect("plan text")).expect("plan")
}

/// A data directory of host bj-a-01 in which every ticket of its files was issued and claimed
/// (the smoke run: the first `limit` of each file). Returns the claims written.
fn write_logs(variant: &Path, keyring: &Keyring, data: &Path, limit: usize) -> u64 {
    let manifest = Manifest::load(&variant.join(MANIFEST_FILE)).expect("manifest");
    std::fs::create_dir_all(data).expect("data dir");
    std::fs::write(
        data.join("event.json"),
        format!(
            r#"{{"format":"hongbao-data-1","event":"{}","variant":"{}","generation":"{}","host":"{HOST}"}}"#,
            manifest.event, manifest.variant, manifest.generation
        ),
    )
    .expect("event.json");
    let mut written = 0u64;
    for core in 0..2u16 {
        let dir = data.join(format!("core-{core}"));
        let (mut log, _) =
            FileLog::open(&dir, core, StoreOptions::default(), |_, _| {}).expect("log");
        for shard in &manifest.shards {
            if shard.host != HOST || shard.core != u32::from(core) {
                continue;
            }
            let file = ShardFile::open(&variant.join(&shard.path)).expect("ticket file");
            let records = &file.records()[..file.records().len().min(limit)];
            let r = ReservationRecord {
                shard_ordinal: U32::new(shard.ordinal),
                end: U32::new(records.len() as u32),
            };
            log.append(KIND_RESERVATION, 0, 0, r.as_bytes())
                .expect("append");
            for (i, record) in records.iter().enumerate() {
                let t = record.open(keyring).expect("ticket opens");
                let uid = (i as u64).wrapping_mul(2_654_435_761) % 5_000_000 + 1;
                let c = ClaimRecord {
                    envelope_id: U64::new(t.envelope_id.0),
                    uid: U64::new(uid),
                    amount_cents: U32::new(t.amount_cents),
                    batch_id: U16::new(t.batch_id),
                    key_id: U16::new(t.key_id),
                    claimed_unix: U32::new(1_800_000_000),
                    issuing_core: U16::new(core),
                    reserved: U16::new(0),
                };
                log.append(KIND_CLAIM, uid, i as u64, c.as_bytes())
                    .expect("append");
                if i % 4096 == 4095 {
                    log.commit().expect("commit");
                }
                written += 1;
            }
            log.commit().expect("commit");
        }
        log.close().expect("close");
    }
    written
}

/// The peer: one scan of `claims` in envelope order, summing the amounts.
fn peer(db: &Path) -> (f64, u64) {
    let conn = rusqlite::Connection::open(db).expect("ledger");
    let started = Instant::now();
    let mut stmt = conn
        .prepare("SELECT envelope_id, uid, amount_cents, batch_id, key_id FROM claims ORDER BY envelope_id")
        .expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    let mut sum = 0u64;
    while let Some(r) = rows.next().expect("row") {
        sum += r.get::<_, i64>(2).expect("amount") as u64;
    }
    (started.elapsed().as_secs_f64(), sum)
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let scale = args.scale.unwrap_or(if smoke { 1 } else { 2 });
    let limit = if smoke { 2_000 } else { usize::MAX };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hongbao-reconcile-bench-{}", std::process::id()));
    let keyring_path = dir.join("keys/bench.keyring");
    generate(
        &plan(scale),
        &GenOptions {
            out: dir.join("event"),
            keyring: keyring_path.clone(),
            seed: Some(7),
            threads: 2,
            force: true,
            progress: false,
        },
    )
    .expect("generate");
    let variant = dir.join("event/A");
    let (keyring, _) = Keyring::load(&keyring_path).expect("keyring");
    let data = dir.join("data");
    let claims = write_logs(&variant, &keyring, &data, limit);
    let db = dir.join("ledger.sqlite");
    let (mut ledger, host) = open_ledger(&data, &db).expect("ledger");
    let pass = settle_pass(&mut ledger, &host, &data, BATCH_DEFAULT).expect("settle");
    assert_eq!(pass.recorded, claims);
    drop(ledger);

    let (peer_s, peer_sum) = peer(&db);
    let report = reconcile(&ReconcileOptions {
        tickets: variant,
        keyring: keyring_path,
        plan: None,
        data: vec![data],
        db,
        key_lists: None,
        slot: None,
        dry_run: false,
        regenerate: false,
        threads: 1,
        findings_max: 10,
    })
    .expect("reconcile");
    assert!(report.consistent, "{:?}", report.findings);
    assert_eq!(report.changed.credited.claims, claims);
    assert_eq!(report.changed.credited.cents, peer_sum);
    let t = report.timings;
    let checked = t.logs_s + t.tickets_s;
    let n = claims as f64;
    println!("| what (one thread) | claims | seconds | claims/s | vs peer |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| peer: scan of `claims` in envelope order | {claims} | {peer_s:.2} | {:.0} | 1.00 |",
        n / peer_s
    );
    println!(
        "| reconcile (d): logs vs rows + rows vs tickets | {claims} | {checked:.2} | {:.0} | {:.2} |",
        n / checked,
        peer_s / checked
    );
    println!(
        "|   of which logs vs rows (position order) | | {:.2} | {:.0} | |",
        t.logs_s,
        n / t.logs_s
    );
    println!(
        "|   of which rows vs tickets (envelope order) | | {:.2} | {:.0} | |",
        t.tickets_s,
        n / t.tickets_s
    );
    println!(
        "\nverify (quick, 1 thread) {:.2} s for {} tickets; ledger invariants {:.2} s; crediting {:.2} s; never-issued count {:.2} s; whole run {:.2} s",
        t.verify_s, report.tickets.envelopes, t.ledger_s, t.apply_s, t.unissued_s, report.seconds
    );
    if args.keep {
        println!("kept in {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
}
