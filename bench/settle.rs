//! Settle throughput: claims recorded in the SQLite ledger per second by one settle pass (one
//! thread), from per-core logs written as a server writes them. The peer, measured in the same
//! run on the same file system, is the floor of the sink: the same rows inserted into the same
//! `claims` table with one prepared statement in one transaction (no log reading, no user
//! totals, no positions).
//!
//! Run: `cargo bench --bench settle -- [--dir DIR] [--claims N]` (default 2,000,000 claims over
//! two core logs; DIR defaults to a fresh directory under the system temp dir). Under
//! `cargo test --all-targets` it does a small smoke run.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use common::{claim, write_logs};
use hongbao::settle::{open_ledger, settle_pass, BATCH_DEFAULT};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    claims: Option<u32>,
    #[arg(long, hide = true)]
    bench: bool,
}

/// The peer: the same rows, one prepared INSERT each, one transaction.
fn peer(db: &Path, per_core: u32) -> f64 {
    let conn = rusqlite::Connection::open(db).expect("peer db");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE claims (envelope_id INTEGER PRIMARY KEY, uid INTEGER NOT NULL,
           amount_cents INTEGER NOT NULL, batch_id INTEGER NOT NULL, key_id INTEGER NOT NULL,
           claimed_unix INTEGER NOT NULL, issuing_core INTEGER NOT NULL, host TEXT NOT NULL,
           core INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
           state TEXT NOT NULL);",
    )
    .expect("schema");
    let started = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    {
        let mut insert = conn
            .prepare("INSERT INTO claims VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'h1', ?8, 0, ?9, 'pending')")
            .expect("prepare");
        for core in 0..2u16 {
            for i in 0..per_core {
                let c = claim(core, i);
                insert
                    .execute(rusqlite::params![
                        c.envelope_id.get() as i64,
                        c.uid.get() as i64,
                        c.amount_cents.get(),
                        c.batch_id.get(),
                        c.key_id.get(),
                        c.claimed_unix.get(),
                        core,
                        core,
                        i64::from(i) * 64,
                    ])
                    .expect("insert");
            }
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let total = args
        .claims
        .unwrap_or(if smoke { 20_000 } else { 2_000_000 });
    let per_core = total / 2;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hongbao-settle-bench-{}", std::process::id()));
    let data = dir.join("data");
    write_logs(&data, per_core);

    let peer_s = peer(&dir.join("peer.sqlite"), per_core);
    let (mut ledger, host) = open_ledger(&data, &dir.join("ledger.sqlite")).expect("ledger");
    let started = Instant::now();
    let pass = settle_pass(&mut ledger, &host, &data, BATCH_DEFAULT).expect("settle");
    let settle_s = started.elapsed().as_secs_f64();
    assert_eq!(pass.recorded, u64::from(per_core) * 2);
    let n = f64::from(per_core * 2);
    println!("| what | claims | seconds | claims/s | vs peer |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| peer: one prepared INSERT per row, one transaction | {} | {peer_s:.2} | {:.0} | 1.00 |",
        per_core * 2,
        n / peer_s
    );
    println!(
        "| settle pass (read logs, claims + users + positions, {BATCH_DEFAULT}/transaction) | {} | {settle_s:.2} | {:.0} | {:.2} |",
        per_core * 2,
        n / settle_s,
        peer_s / settle_s
    );
    let check_started = Instant::now();
    assert_eq!(ledger.check().expect("invariants").claims, pass.recorded);
    let check_s = check_started.elapsed().as_secs_f64();

    println!("\nthe ledger's invariant check (a full scan, once per settle run): {check_s:.2} s");
    match std::env::var("HONGBAO_TEST_PG") {
        Ok(admin) => postgres_table(&admin, &dir, &data, per_core),
        Err(_) => println!("\n(PostgreSQL: not measured; `source .ci/services.sh` first)"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Settle into PostgreSQL against the peer `psql \copy` of the same rows (CSV) into the same
/// table, each into a fresh database of the server at `admin`.
fn postgres_table(admin: &str, dir: &Path, data: &Path, per_core: u32) {
    let fresh = |name: &str| -> String {
        let mut c = postgres::Client::connect(admin, postgres::NoTls).expect("PostgreSQL");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .expect("drop");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create");
        let base = admin.rsplit_once('/').expect("a URL").0;
        format!("{base}/{name}")
    };
    let n = f64::from(per_core * 2);
    // The peer: the rows as CSV, loaded by psql's \copy into a claims table of the same shape.
    let csv = dir.join("claims.csv");
    let mut text = String::new();
    for core in 0..2u16 {
        for i in 0..per_core {
            let c = claim(core, i);
            text.push_str(&format!(
                "{},{},{},{},{},{},{core},h1,{core},0,{},pending\n",
                c.envelope_id.get() as i64,
                c.uid.get() as i64,
                c.amount_cents.get(),
                c.batch_id.get(),
                c.key_id.get(),
                c.claimed_unix.get(),
                i64::from(i) * 64
            ));
        }
    }
    std::fs::write(&csv, text).expect("csv");
    let peer_url = fresh("hb_bench_peer");
    let mut c = postgres::Client::connect(&peer_url, postgres::NoTls).expect("peer db");
    c.batch_execute(
        r#"CREATE TABLE claims (envelope_id BIGINT PRIMARY KEY, uid BIGINT NOT NULL,
           amount_cents BIGINT NOT NULL, batch_id INTEGER NOT NULL, key_id INTEGER NOT NULL,
           claimed_unix BIGINT NOT NULL, issuing_core INTEGER NOT NULL, host TEXT NOT NULL,
           core INTEGER NOT NULL, segment BIGINT NOT NULL, "offset" BIGINT NOT NULL,
           state TEXT NOT NULL)"#,
    )
    .expect("peer schema");
    let started = Instant::now();
    let status = std::process::Command::new("psql")
        .arg(&peer_url)
        .args([
            "-q",
            "-c",
            &format!("\\copy claims FROM '{}' (FORMAT csv)", csv.display()),
        ])
        .status()
        .expect("psql runs");
    assert!(status.success());
    let peer_s = started.elapsed().as_secs_f64();
    let url = fresh("hb_bench_settle");
    let identity = hongbao::settle::db::LedgerIdentity {
        event: "bench".into(),
        variant: "A".into(),
        generation: "g".into(),
    };
    let mut ledger = hongbao::settle::pg::PgLedger::open(&url, &identity).expect("pg ledger");
    let started = Instant::now();
    let pass = settle_pass(&mut ledger, "h1", data, BATCH_DEFAULT).expect("settle");
    let settle_s = started.elapsed().as_secs_f64();
    assert_eq!(pass.recorded, u64::from(per_core) * 2);
    println!("\n| PostgreSQL | claims | seconds | claims/s | vs peer |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| peer: psql \\copy of the rows as CSV into the same table | {} | {peer_s:.2} | {:.0} | 1.00 |",
        per_core * 2,
        n / peer_s
    );
    println!(
        "| settle pass (binary COPY + set-based insert, users, positions; {BATCH_DEFAULT}/transaction) | {} | {settle_s:.2} | {:.0} | {:.2} |",
        per_core * 2,
        n / settle_s,
        peer_s / settle_s
    );
}
