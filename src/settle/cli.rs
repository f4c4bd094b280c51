//! The `hongbao settle` command line: options, the pass loop (`--follow`), the summary lines.
//! Runs on the main thread of its own process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::pg::{is_postgres, PgLedger};
use super::sink::Sink;
use super::{data_identity, open_ledger, settle_pass, Pass, SettleError, BATCH_DEFAULT};

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
}

/// Runs the command: exit 0 when the ledger holds no conflicting claims, 1 when it does
/// (held for reconciliation), errors are the caller's exit 2.
pub fn run(args: SettleArgs) -> Result<ExitCode, String> {
    let (mut ledger, host) = open_sink(&args.data, &args.db).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    if args.follow {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
        }
    }
    loop {
        let pass = settle_pass(ledger.as_mut(), &host, &args.data, args.batch)
            .map_err(|e| e.to_string())?;
        if pass.recorded > 0 || pass.conflicts > 0 || !args.follow {
            print_pass(&host, &pass);
        }
        if !args.follow || stop.load(Ordering::Relaxed) {
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
fn open_sink(data: &std::path::Path, db: &str) -> Result<(Box<dyn Sink>, String), SettleError> {
    if is_postgres(db) {
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
    let (ledger, host) = open_ledger(data, std::path::Path::new(db))?;
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
    eprintln!(
        "settle {host}: {} new claims ({}), {} read again, {} held as conflicts; positions {}",
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
