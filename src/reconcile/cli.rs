//! The `hongbao reconcile` command line: options, the JSON report (stdout or `--report`), the
//! human summary on stderr, and the exit status (0 consistent, 1 findings, 2 cannot run).
//! Runs on the main thread of its own process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{reconcile, ReconcileOptions, Report};
use crate::gen::format_cents;
use crate::verify::FINDINGS_SHOWN_DEFAULT;

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The variant directory `gen` wrote (OUT/<variant>, holding manifest.json).
    #[arg(long)]
    pub tickets: PathBuf,
    #[arg(long)]
    pub keyring: PathBuf,
    /// A host's data directory; once per host whose claims are reconciled.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// The ledger `hongbao settle` wrote.
    #[arg(long, default_value = "ledger.sqlite")]
    pub db: PathBuf,
    /// The key lists the servers ran with: claims under a refused key are held.
    #[arg(long)]
    pub key_lists: Option<PathBuf>,
    /// Your own copy of the plan, compared byte for byte with the copy beside the tickets.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Credit only the claims of this slot's files (the others stay pending).
    #[arg(long)]
    pub slot: Option<String>,
    /// Check and report, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the JSON report here instead of to standard output.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip drawing every ticket's amount again from the keyring's seed (faster).
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    /// How many findings to keep in full (all are counted).
    #[arg(long, default_value_t = FINDINGS_SHOWN_DEFAULT)]
    pub show: usize,
}

pub fn run(args: ReconcileArgs, threads: usize) -> Result<ExitCode, String> {
    let opts = ReconcileOptions {
        tickets: args.tickets,
        keyring: args.keyring,
        plan: args.plan,
        data: args.data,
        db: args.db,
        key_lists: args.key_lists,
        slot: args.slot,
        dry_run: args.dry_run,
        regenerate: !args.quick,
        threads: args.threads.unwrap_or(threads),
        findings_max: args.show,
    };
    let report = reconcile(&opts).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).expect("a report serializes");
    match &args.report {
        Some(path) => {
            std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}").map_err(|e| e.to_string())?;
        }
    }
    for line in summary(&report) {
        eprintln!("{line}");
    }
    Ok(if report.consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The human summary.
pub fn summary(r: &Report) -> Vec<String> {
    let mut lines = vec![format!(
        "reconcile {} variant {} (run {}, hosts {}{}): {} in {:.2} s",
        r.event,
        r.variant,
        r.run,
        r.hosts.join(", "),
        r.slot
            .as_ref()
            .map(|s| format!(", slot {s}"))
            .unwrap_or_default(),
        if r.consistent {
            "consistent"
        } else {
            "FINDINGS"
        },
        r.seconds
    )];
    lines.push(format!(
        "  (a, b) tickets: {} files, {} envelopes, {}: {} findings",
        r.tickets.files,
        r.tickets.envelopes,
        format_cents(r.tickets.amount_cents),
        r.tickets.findings
    ));
    lines.extend(r.tickets.shown.iter().map(|f| format!("    {f}")));
    match &r.ledger.problem {
        None => lines.push(format!(
            "  (c) ledger: {} claims, {}, {} second claims held in conflicts",
            r.ledger.claims,
            format_cents(r.ledger.cents),
            r.ledger.conflicts
        )),
        Some(p) => lines.push(format!("  (c) ledger: INCONSISTENT: {p}")),
    }
    lines.push(format!(
        "  (d) claims: {} read from the logs, {} match their rows, {} not settled yet; {} rows \
         checked against their tickets; {} findings",
        r.logs.claims_read, r.logs.matched, r.logs.unsettled, r.rows.rows_checked, r.findings.total
    ));
    if r.logs.rows_of_other_hosts > 0 {
        lines.push(format!(
            "      {} ledger rows of hosts whose data was not given were left as they are",
            r.logs.rows_of_other_hosts
        ));
    }
    lines.extend(r.findings.shown.iter().map(|f| format!("    {f}")));
    let c = &r.changed;
    lines.push(match &r.not_applied_because {
        None => format!(
            "  credited now {} claims ({}); held now {} claims ({})",
            c.credited.claims,
            format_cents(c.credited.cents),
            c.held.claims,
            format_cents(c.held.cents)
        ),
        Some(why) => format!("  {why}"),
    });
    let e = &r.money.event;
    lines.push(format!(
        "  money: planned {}; credited {}, pending {}, held {}; unclaimed {} (never issued {})",
        format_cents(e.planned.cents),
        format_cents(e.credited.cents),
        format_cents(e.pending.cents),
        format_cents(e.held.cents),
        format_cents(e.unclaimed_cents),
        format_cents(e.unissued.cents)
    ));
    if r.unissued_files_not_counted > 0 {
        lines.push(format!(
            "    (never issued is counted on the files of the hosts read; {} files of other \
             hosts are not)",
            r.unissued_files_not_counted
        ));
    }
    for s in &r.money.sponsors {
        lines.push(format!(
            "    sponsor {} {}: credited {}, pending {}, held {}, to return {}",
            s.merchant_id,
            s.name,
            format_cents(s.money.credited.cents),
            format_cents(s.money.pending.cents),
            format_cents(s.money.held.cents),
            format_cents(s.money.unclaimed_cents)
        ));
    }
    lines
}
