//! `hongbao reconcile`: the check before money moves. Four checks over one variant's tickets,
//! the keyring, the hosts' logs and the ledger (docs/formats/reconcile.md):
//! (a) budget against the batch config and (b) ticket files against the plan, by `verify`;
//! (c) envelope ids unique in the tickets (`verify`) and in the claims (the ledger's
//! `conflicts`); (d) every claim against its ticket and its ledger row ([`logs`],
//! [`tickets`]). Rows that pass move from `pending` to `credited`, rows with a finding to
//! `held`, all in one transaction with the users' totals; the report says what moved and what
//! money goes back to each sponsor ([`totals`]).
//!
//! A command of its own process, on its own thread; never in a server.

pub mod book;
pub mod cli;
pub mod findings;
pub mod logs;
pub mod tickets;
pub mod totals;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::manifest::{BatchConfig, Manifest, BATCHES_FILE, MANIFEST_FILE};
use crate::settle::db::{
    check_ledger, Broken, DbError, Ledger, LedgerIdentity, Totals as LedgerTotals,
};
use crate::ticket::lists::KeyLists;
use crate::ticket::Keyring;
use crate::verify::{verify, VerifyError, VerifyOptions, VerifyReport};
use book::Applied;
use findings::Findings;
use logs::{HostLogs, LogCounts};
use tickets::{TicketCounts, TicketSide};
use totals::Totals;

/// The `format` field of a report.
pub const REPORT_FORMAT: &str = "hongbao-reconcile-1";

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// The variant directory `gen` wrote (manifest.json, batches.toml, plan.toml, files).
    pub tickets: PathBuf,
    pub keyring: PathBuf,
    /// The operator's own plan copy, compared with the one beside the tickets.
    pub plan: Option<PathBuf>,
    /// Each host's data directory.
    pub data: Vec<PathBuf>,
    /// The ledger database `hongbao settle` wrote.
    pub db: PathBuf,
    /// The key lists the servers ran with.
    pub key_lists: Option<PathBuf>,
    /// Credit only the claims of this slot's files.
    pub slot: Option<String>,
    /// Check and report; change nothing.
    pub dry_run: bool,
    /// Have verify draw every ticket's amount again from the seed.
    pub regenerate: bool,
    pub threads: usize,
    pub findings_max: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Data(String),
}

/// What `verify` said of the tickets.
#[derive(Debug, Clone, Serialize)]
pub struct TicketsSection {
    pub files: usize,
    pub envelopes: u64,
    pub amount_cents: u64,
    pub regenerated: bool,
    pub findings: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub shown: Vec<String>,
}

impl TicketsSection {
    fn new(r: &VerifyReport) -> TicketsSection {
        TicketsSection {
            files: r.files,
            envelopes: r.envelopes,
            amount_cents: r.amount_cents,
            regenerated: r.regenerated,
            findings: r.findings.total,
            by_kind: r
                .findings
                .by_kind
                .iter()
                .map(|(k, n)| (k.label().to_string(), *n))
                .collect(),
            shown: r.findings.shown.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// The ledger's own invariants (users' totals against rows, positions against rows).
#[derive(Debug, Clone, Serialize)]
pub struct LedgerSection {
    pub consistent: bool,
    pub problem: Option<String>,
    pub claims: u64,
    pub cents: u64,
    pub conflicts: u64,
}

/// The report (JSON on stdout or in `--report`; docs/formats/reconcile.md).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub event: String,
    pub variant: String,
    pub generation: String,
    pub run: i64,
    pub started_unix: i64,
    pub seconds: f64,
    /// No finding anywhere: tickets, ledger invariants, claims.
    pub consistent: bool,
    /// The state changes were made (not a dry run, tickets and ledger invariants sound).
    pub applied: bool,
    pub not_applied_because: Option<String>,
    pub hosts: Vec<String>,
    pub slot: Option<String>,
    pub tickets: TicketsSection,
    pub ledger: LedgerSection,
    pub logs: LogCounts,
    pub rows: TicketCounts,
    pub findings: Findings,
    pub changed: Applied,
    pub money: Totals,
    /// Files whose unissued tickets were not counted: their host's logs were not given.
    pub unissued_files_not_counted: usize,
    pub timings: Timings,
}

/// Seconds spent in each part of a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// `verify` of the tickets (checks a, b and c in the tickets).
    pub verify_s: f64,
    /// The ledger's own invariants, before anything moves.
    pub ledger_s: f64,
    /// The logs against the ledger rows, in position order.
    pub logs_s: f64,
    /// The ledger rows against their tickets, in envelope order.
    pub tickets_s: f64,
    /// The state changes and the invariant checks around them.
    pub apply_s: f64,
    /// Counting the tickets never issued.
    pub unissued_s: f64,
}

/// Everything read before the ledger is locked.
struct Inputs {
    manifest: Manifest,
    batches: BatchConfig,
    keyring: Keyring,
    lists: Option<KeyLists>,
    hosts: Vec<HostLogs>,
    scope: Vec<u32>,
}

fn load_inputs(opts: &ReconcileOptions) -> Result<Inputs, ReconcileError> {
    let manifest = Manifest::load(&opts.tickets.join(MANIFEST_FILE)).map_err(|e| {
        ReconcileError::Data(format!("{e} (--tickets names one variant directory)"))
    })?;
    let batches = BatchConfig::load(&opts.tickets.join(BATCHES_FILE))
        .map_err(|e| ReconcileError::Data(e.to_string()))?;
    let (keyring, _) =
        Keyring::load(&opts.keyring).map_err(|e| ReconcileError::Data(e.to_string()))?;
    let lists = match &opts.key_lists {
        Some(p) => Some(KeyLists::load(p).map_err(|e| ReconcileError::Data(e.to_string()))?),
        None => None,
    };
    let mut hosts = Vec::new();
    for data in &opts.data {
        hosts.push(host_logs(&manifest, data)?);
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    if let Some(w) = hosts.windows(2).find(|w| w[0].host == w[1].host) {
        return Err(ReconcileError::Data(format!(
            "{} and {} are both data directories of host {}",
            w[0].data.display(),
            w[1].data.display(),
            w[0].host
        )));
    }
    let scope: Vec<u32> = match &opts.slot {
        None => manifest.shards.iter().map(|s| s.ordinal).collect(),
        Some(slot) if manifest.slots.iter().any(|s| &s.name == slot) => manifest
            .shards
            .iter()
            .filter(|s| &s.slot == slot)
            .map(|s| s.ordinal)
            .collect(),
        Some(slot) => {
            return Err(ReconcileError::Data(format!(
                "the event has no slot named {slot:?}"
            )))
        }
    };
    Ok(Inputs {
        manifest,
        batches,
        keyring,
        lists,
        hosts,
        scope,
    })
}

/// A host's data directory, after checking it belongs to the manifest's generation.
fn host_logs(manifest: &Manifest, data: &std::path::Path) -> Result<HostLogs, ReconcileError> {
    let id = crate::settle::data_identity(data).map_err(|e| ReconcileError::Data(e.to_string()))?;
    let ours = (&manifest.event, &manifest.variant, &manifest.generation);
    if (&id.event, &id.variant, &id.generation) != ours {
        return Err(ReconcileError::Data(format!(
            "{}: its logs are of event {:?} variant {:?} generation {}, the tickets of {:?} {:?} {}",
            data.display(),
            id.event,
            id.variant,
            id.generation,
            ours.0,
            ours.1,
            ours.2
        )));
    }
    let cores = crate::settle::log_dirs(data).map_err(|e| ReconcileError::Data(e.to_string()))?;
    Ok(HostLogs {
        host: id.host,
        data: data.to_path_buf(),
        cores,
    })
}

/// Runs the checks, makes the state changes (unless a dry run, or the tickets or the ledger's
/// own invariants are unsound) and returns the report.
pub fn reconcile(opts: &ReconcileOptions) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let inputs = load_inputs(opts)?;
    let verified = verify(&VerifyOptions {
        dir: opts.tickets.clone(),
        keyring: opts.keyring.clone(),
        plan: opts.plan.clone(),
        threads: opts.threads.max(1),
        progress: false,
        findings_max: opts.findings_max,
        regenerate: opts.regenerate,
    })?;
    if !opts.db.exists() {
        return Err(ReconcileError::Data(format!(
            "{}: no ledger here; `hongbao settle` writes it",
            opts.db.display()
        )));
    }
    let m = &inputs.manifest;
    let mut ledger = Ledger::open(
        &opts.db,
        &LedgerIdentity {
            event: m.event.clone(),
            variant: m.variant.clone(),
            generation: m.generation.clone(),
        },
    )?;
    // The whole run is one write transaction: settle waits, and every row seen is one that
    // the state changes cover.
    ledger.begin()?;
    let outcome = checked_run(opts, &inputs, &verified, ledger.conn(), started);
    match outcome {
        Ok(report) if report.applied => {
            ledger.commit()?;
            Ok(report)
        }
        Ok(report) => {
            ledger.rollback();
            Ok(report)
        }
        Err(e) => {
            ledger.rollback();
            Err(e)
        }
    }
}

fn ledger_section(conn: &rusqlite::Connection) -> Result<LedgerSection, ReconcileError> {
    Ok(match check_ledger(conn) {
        Ok(LedgerTotals {
            claims,
            cents,
            conflicts,
        }) => LedgerSection {
            consistent: true,
            problem: None,
            claims,
            cents,
            conflicts,
        },
        Err(Broken::Sql(e)) => return Err(e.into()),
        Err(Broken::Invariant(problem)) => LedgerSection {
            consistent: false,
            problem: Some(problem),
            claims: 0,
            cents: 0,
            conflicts: 0,
        },
    })
}

/// The checks and state changes inside the run's transaction.
fn checked_run(
    opts: &ReconcileOptions,
    inputs: &Inputs,
    verified: &VerifyReport,
    conn: &rusqlite::Connection,
    started: Instant,
) -> Result<Report, ReconcileError> {
    let started_unix = crate::gen::now_unix();
    let mut timings = Timings {
        verify_s: verified.seconds,
        ..Timings::default()
    };
    let mut phase = Instant::now();
    let mut lap = || {
        let s = phase.elapsed().as_secs_f64();
        phase = Instant::now();
        s
    };
    let ledger = ledger_section(conn)?;
    timings.ledger_s = lap();
    let host_names: Vec<String> = inputs.hosts.iter().map(|h| h.host.clone()).collect();
    book::prepare(conn, &host_names, &inputs.scope)?;
    let mut findings = Findings::new(opts.findings_max);
    let (log_counts, reservations) = logs::check_logs(conn, &inputs.hosts, &mut findings)?;
    timings.logs_s = lap();
    let given: HashSet<String> = host_names.iter().cloned().collect();
    let side = TicketSide {
        variant_dir: &opts.tickets,
        manifest: &inputs.manifest,
        keyring: &inputs.keyring,
        lists: inputs.lists.as_ref(),
        hosts: &given,
        reservations: &reservations,
    };
    let rows = tickets::check_tickets(conn, &side, &mut findings)?;
    timings.tickets_s = lap();
    let not_applied_because = if !verified.ok() {
        Some("the tickets failed verification: nothing is credited".to_string())
    } else if !ledger.consistent {
        Some("the ledger's own totals are inconsistent: nothing is credited".to_string())
    } else if opts.dry_run {
        Some("dry run: nothing was changed (the states shown are what a run would make)".into())
    } else {
        None
    };
    let run = book::next_run(conn)?;
    let mut changed = Applied::default();
    if verified.ok() && ledger.consistent {
        changed = book::apply(conn, run)?;
        // The money invariants again, after the state changes: a failure rolls them back.
        match check_ledger(conn) {
            Ok(_) => {}
            Err(Broken::Sql(e)) => return Err(e.into()),
            Err(Broken::Invariant(m)) => {
                return Err(ReconcileError::Data(format!("after crediting: {m}")))
            }
        }
    }
    let by_state = book::by_batch(conn)?;
    timings.apply_s = lap();
    let (unissued, not_counted) = tickets::unissued(&side)?;
    timings.unissued_s = lap();
    let money = totals::totals(&inputs.manifest, &inputs.batches, &by_state, &unissued);
    let consistent = verified.ok() && ledger.consistent && findings.total == 0;
    let mut report = Report {
        format: REPORT_FORMAT,
        event: inputs.manifest.event.clone(),
        variant: inputs.manifest.variant.clone(),
        generation: inputs.manifest.generation.clone(),
        run,
        started_unix,
        seconds: 0.0,
        consistent,
        applied: not_applied_because.is_none(),
        not_applied_because,
        hosts: host_names,
        slot: opts.slot.clone(),
        tickets: TicketsSection::new(verified),
        ledger,
        logs: log_counts,
        rows,
        findings,
        changed,
        money,
        unissued_files_not_counted: not_counted,
        timings,
    };
    report.seconds = started.elapsed().as_secs_f64();
    if report.applied {
        let json = serde_json::to_string(&report).expect("a report serializes");
        book::record_run(
            conn,
            &book::RunRow {
                run,
                started_unix,
                seconds: report.seconds,
                consistent,
                applied: changed,
                findings: report.findings.total,
                report: &json,
            },
        )?;
    }
    Ok(report)
}
