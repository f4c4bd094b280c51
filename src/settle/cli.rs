//! The `hongbao settle` command line: options, the pass loop (`--follow`), the summary lines.
//! Runs on the main thread of its own process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::SettleMetrics;
use super::pg::{is_postgres, PgLedger};
use super::sink::Sink;
use super::{data_identity, open_ledger, settle_pass_limited, Pass, SettleError, BATCH_DEFAULT};

/// How often `--follow` looks for new claims.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct SettleArgs {
    /// The server's data directory (holding event.json and core-0/, core-1/, ...). It may be
    /// in use by a running server.
    #[arg(long)]
    pub data: PathBuf,
    /// The ledger (docs/formats/ledger.md): a SQLite file, created when absent, or a
    /// PostgreSQL database, `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (tables created when
    /// absent).
    #[arg(long, default_value = "ledger.sqlite")]
    pub db: String,
    /// Claims per transaction.
    #[arg(long, default_value_t = BATCH_DEFAULT)]
    pub batch: usize,
    /// Keep settling new claims as they become durable, until SIGINT or SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// Record at most this many claims per second (the rest wait in the logs: the lag). For
    /// sparing a shared database, and for drills of a slow ledger. At least 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Load this big-envelope list (written by `gen` beside the keyring, `*.big`;
    /// docs/formats/big.md) into the ledger first: a claim of a listed envelope that matches it
    /// is credited at once, one that differs is held. SQLite ledgers only, today.
    #[arg(long)]
    pub preload: Option<PathBuf>,
    /// Serve settle's own metrics (GET /metrics, Prometheus text: claims recorded, lag in
    /// claims and seconds) at this address, e.g. 127.0.0.1:9108.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs the command: exit 0 when the ledger holds no conflicting claims, 1 when it does
/// (held for reconciliation), errors are the caller's exit 2.
pub fn run(args: SettleArgs) -> Result<ExitCode, String> {
    let (mut ledger, host) =
        open_sink(&args.data, &args.db, args.preload.as_deref()).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    if args.follow || args.rate.is_some() {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
        }
    }
    let metrics = Arc::new(Mutex::new(SettleMetrics::default()));
    if let Some(addr) = args.metrics {
        let bound = super::metrics::serve(addr, metrics.clone())
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        eprintln!("settle: metrics on http://{bound}/metrics");
    }
    let mut last = Instant::now();
    let mut allowance = 0f64;
    loop {
        let budget = match args.rate {
            None => u64::MAX,
            Some(rate) => {
                // Claims earned since the last pass, at most one second's worth saved up.
                allowance = (allowance + last.elapsed().as_secs_f64() * rate as f64)
                    .min(rate.max(1) as f64);
                last = Instant::now();
                allowance as u64
            }
        };
        let pass = settle_pass_limited(ledger.as_mut(), &host, &args.data, args.batch, budget)
            .map_err(|e| e.to_string())?;
        allowance -= pass.recorded as f64 + pass.again as f64 + pass.conflicts as f64;
        allowance = allowance.max(0.0);
        if let Ok(mut m) = metrics.lock() {
            m.add(&pass, crate::gen::now_unix());
        }
        if pass.recorded > 0 || pass.conflicts > 0 || (!args.follow && args.rate.is_none()) {
            print_pass(&host, &pass);
        }
        // Without --follow: until nothing waits (a --rate spreads the claims over passes).
        if (!args.follow && pass.behind == 0) || stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    // The money invariants over the whole ledger, once at the end (a full scan).
    let totals = ledger.check().map_err(|e| e.to_string())?;
    eprintln!(
        "ledger {}: {} claims, {} pending or credited, {} conflicting claims held",
        shown_db(&args.db),
        totals.claims,
        cents(totals.cents),
        totals.conflicts
    );
    Ok(if totals.conflicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The ledger `db` names, for the event of `data`, and the data directory's host.
fn open_sink(
    data: &std::path::Path,
    db: &str,
    preload: Option<&std::path::Path>,
) -> Result<(Box<dyn Sink>, String), SettleError> {
    if is_postgres(db) {
        if preload.is_some() {
            return Err(SettleError::Data(
                "--preload works with a SQLite ledger only, today".into(),
            ));
        }
        let id = data_identity(data)?;
        let ledger = PgLedger::open(
            db,
            &super::db::LedgerIdentity {
                event: id.event,
                variant: id.variant,
                generation: id.generation,
            },
        )?;
        return Ok((Box::new(ledger), id.host));
    }
    let (mut ledger, host) = open_ledger(data, std::path::Path::new(db))?;
    if let Some(path) = preload {
        let list = crate::big::BigList::load(path).map_err(SettleError::Data)?;
        let added = ledger.preload(&list)?;
        eprintln!(
            "settle: {} big envelopes of at least {} cents preloaded ({added} new)",
            list.entries.len(),
            list.threshold_cents
        );
    }
    Ok((Box::new(ledger), host))
}

/// `db` for messages: a PostgreSQL URL without its password.
fn shown_db(db: &str) -> String {
    if is_postgres(db) {
        super::pg::shown(db)
    } else {
        db.to_string()
    }
}

fn print_pass(host: &str, pass: &Pass) {
    let positions: Vec<String> = pass
        .positions
        .iter()
        .map(|(core, p)| format!("{core}:{}:{}", p.segment, p.offset))
        .collect();
    let big = match (pass.credited, pass.held) {
        (0, 0) => String::new(),
        (c, h) => format!("; big envelopes: {c} credited at once, {h} held"),
    };
    let behind = match pass.behind {
        0 => String::new(),
        n => format!("; {n} claims wait in the logs (--rate)"),
    };
    eprintln!(
        "settle {host}: {} new claims ({}), {} read again, {} held as conflicts; positions {}{big}{behind}",
        pass.recorded,
        cents(pass.cents),
        pass.again,
        pass.conflicts,
        positions.join(" ")
    );
}

fn cents(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}
