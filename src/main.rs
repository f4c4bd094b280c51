//! The `hongbao` command line: one subcommand per job. Parses flags, runs the job from the
//! library, prints a human summary, and maps outcomes to exit codes
//! (0 success, 1 verification found problems, 2 bad input or failure).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hongbao::claims::{parse_position, stream_claims};
use hongbao::gen::{format_cents, generate, GenOptions, GenSummary};
use hongbao::inspect::{inspect, Inspection};
use hongbao::plan::{Plan, PlanFile};
use hongbao::ticket::Keyring;
use hongbao::verify::{verify, VerifyOptions, VerifyReport, FINDINGS_SHOWN_DEFAULT};
use hongbao::DEMO_PLAN;

#[derive(Parser)]
#[command(name = "hongbao", version, about = "Red-envelope and IM fan-out appliance", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate encrypted ticket shards, batch configs, manifests and a keyring from a plan.
    Gen {
        /// The budget plan (TOML; see `hongbao plan-example` and docs/formats/plan.md).
        #[arg(long)]
        plan: PathBuf,
        /// Output directory; each variant is written to OUT/<variant>/.
        #[arg(long)]
        out: PathBuf,
        /// Keyring path (mode 0600). Default: a per-user key store apart from every ticket
        /// directory, $XDG_DATA_HOME/hongbao/keys/<event>-<unix time>.keyring (or under
        /// ~/.local/share); the path is printed.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// Master seed: the same plan and seed give the same amounts and order (not the same
        /// keys). Default: drawn from the OS and recorded in the keyring.
        #[arg(long)]
        seed: Option<u64>,
        /// Generate N alternative plans (A, B, C, ...) side by side (R3).
        #[arg(long)]
        variants: Option<u32>,
        /// Worker threads. Default: all CPUs.
        #[arg(long)]
        threads: Option<usize>,
        /// Replace an earlier generation in OUT and an existing keyring.
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Re-check a generation: decrypt every ticket, check bounds, totals, uniqueness, checksums.
    Verify {
        /// A variant directory (with manifest.json) or the OUT directory of `gen`.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        keyring: PathBuf,
        /// Your own copy of the plan, compared byte for byte with the copy beside the tickets.
        #[arg(long)]
        plan: Option<PathBuf>,
        #[arg(long)]
        threads: Option<usize>,
        /// How many findings to print in full (all are counted).
        #[arg(long, default_value_t = FINDINGS_SHOWN_DEFAULT)]
        show: usize,
        #[arg(long)]
        quiet: bool,
    },
    /// Decode one ticket file: header, first records, amount percentiles per batch, and how
    /// often neighbours share a sponsor.
    Inspect {
        /// A .tix file.
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        keyring: PathBuf,
        /// How many leading records to print.
        #[arg(long, default_value_t = 8)]
        records: usize,
    },
    /// Stream the claims in a server data directory's per-core logs as JSON lines (the queue
    /// to the payments side). Read-only; safe while the server runs.
    Claims {
        /// The server's data directory (holding core-0/, core-1/, ...).
        #[arg(long)]
        data: PathBuf,
        /// Resume after a position printed as a claim's "next" (CORE:SEGMENT:OFFSET); once per
        /// core.
        #[arg(long)]
        from: Vec<String>,
    },
    /// Validate a plan and print what it would generate, without generating anything.
    CheckPlan {
        #[arg(long)]
        plan: PathBuf,
    },
    /// Print the demo plan, a commented starting point for your own.
    PlanExample,
    /// The main job on embedded defaults: write the demo plan, generate it, verify it.
    Demo {
        /// Working directory for the demo (plan, tickets, keys).
        #[arg(long, default_value = "hongbao-demo")]
        dir: PathBuf,
        /// Multiply every budget and count (1 = about 2.3 million envelopes).
        #[arg(long, default_value_t = 1)]
        scale: u64,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Gen {
            plan,
            out,
            keyring,
            seed,
            variants,
            threads,
            force,
            quiet,
        } => {
            let mut plan = Plan::load(&plan).map_err(|e| e.to_string())?;
            if let Some(n) = variants {
                plan.expand_variants(n).map_err(|e| e.to_string())?;
            }
            let keyring = match keyring {
                Some(k) => k,
                None => default_keyring(&plan.event_name)?,
            };
            let opts = GenOptions {
                out,
                keyring,
                seed,
                threads: threads.unwrap_or_else(default_threads),
                force,
                progress: !quiet && std::io::stderr().is_terminal(),
            };
            let summary = generate(&plan, &opts).map_err(|e| e.to_string())?;
            print_gen(&plan, &summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            dir,
            keyring,
            plan,
            threads,
            show,
            quiet,
        } => {
            let opts = VerifyOptions {
                dir,
                keyring,
                plan,
                threads: threads.unwrap_or_else(default_threads),
                progress: !quiet && std::io::stderr().is_terminal(),
                findings_max: show,
            };
            let report = verify(&opts).map_err(|e| e.to_string())?;
            print_verify(&report);
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Inspect {
            file,
            keyring,
            records,
        } => {
            let (keyring, too_open) = Keyring::load(&keyring).map_err(|e| e.to_string())?;
            if too_open {
                eprintln!("warning: the keyring is readable by group or others; chmod 600 it");
            }
            let report = inspect(&file, &keyring, records).map_err(|e| e.to_string())?;
            print_inspection(&file, &report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Claims { data, from } => {
            let mut starts = std::collections::BTreeMap::new();
            for f in &from {
                let (core, position) = parse_position(f).map_err(|e| e.to_string())?;
                starts.insert(core, position);
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let (count, ends) =
                stream_claims(&data, &starts, &mut out).map_err(|e| e.to_string())?;
            std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
            let resume: Vec<String> = ends
                .iter()
                .map(|(core, p)| format!("--from {core}:{}:{}", p.segment, p.offset))
                .collect();
            eprintln!("{count} claims; resume with: {}", resume.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckPlan { plan } => {
            let plan = Plan::load(&plan).map_err(|e| e.to_string())?;
            print_plan(&plan)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PlanExample => {
            print!("{DEMO_PLAN}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            scale,
            seed,
            threads,
        } => demo(&dir, scale, seed, threads.unwrap_or_else(default_threads)),
    }
}

/// The per-user key store, like ssh keeps keys: apart from every ticket directory.
fn default_keyring(event: &str) -> Result<PathBuf, String> {
    let base = match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
        (Some(data), _) if !data.is_empty() => PathBuf::from(data),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".local/share"),
        _ => {
            return Err(
                "no HOME or XDG_DATA_HOME to hold the keyring; pass --keyring PATH (outside \
                 the ticket directory)"
                    .into(),
            )
        }
    };
    Ok(base
        .join("hongbao")
        .join("keys")
        .join(format!("{event}-{}.keyring", hongbao::gen::now_unix())))
}

fn print_plan(plan: &Plan) -> Result<(), String> {
    let allocations = plan.allocate().map_err(|e| e.to_string())?;
    println!(
        "plan {} ({}) is valid: fingerprint {}",
        plan.event_name,
        plan.currency,
        &plan.fingerprint_hex()[..16]
    );
    println!(
        "  {} envelopes, {} {} from {} merchants over {} slots",
        plan.total_envelopes(),
        format_cents(plan.total_cents()),
        plan.currency,
        plan.merchants.len(),
        plan.slots.len()
    );
    for m in &plan.merchants {
        println!(
            "  merchant {:>6} {:<24} {:>12} envelopes {:>16} {} in [{}, {}]",
            m.id,
            m.name,
            m.count,
            format_cents(m.budget_cents),
            plan.currency,
            format_cents(m.min_cents),
            format_cents(m.max_cents)
        );
    }
    let keys: u64 = allocations
        .iter()
        .flat_map(|a| &a.shards)
        .map(|s| s.key_reserved as u64)
        .sum();
    println!(
        "  {} variant(s) x {} shard files each; at most {keys} keys of {} {} each",
        allocations.len(),
        plan.shards_per_variant(),
        format_cents(plan.key_cap_cents),
        plan.currency
    );
    Ok(())
}

fn print_inspection(file: &Path, r: &Inspection) {
    let h = &r.header;
    println!(
        "{}: shard {:08x} (variant {}, slot {}, host {}, core {}, backup host {}), {} envelopes, \
         {}, body checksum {}",
        file.display(),
        h.shard_ordinal.get(),
        h.variant,
        h.slot_index.get(),
        h.host_index.get(),
        h.core.get(),
        h.backup_host_index.get(),
        h.record_count.get(),
        format_cents(h.amount_cents.get()),
        if r.body_crc_ok { "ok" } else { "MISMATCH" }
    );
    println!("  first records:");
    for (index, ticket) in &r.first {
        match ticket {
            Ok(t) => println!(
                "    #{index:<6} envelope {}  key {:>5}  batch {:>5}  {:>10}",
                t.envelope_id,
                t.key_id,
                t.batch_id,
                format_cents(t.amount_cents as u64)
            ),
            Err(e) => println!("    #{index:<6} does not open: {e}"),
        }
    }
    println!("  amounts per batch (cents):");
    println!(
        "    {:>5} {:>12} {:>16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "batch", "envelopes", "total", "min", "p1", "p10", "p50", "p90", "p99", "max"
    );
    for b in &r.batches {
        let p: Vec<String> = b
            .percentiles
            .iter()
            .map(|(_, v)| format!("{v:>8}"))
            .collect();
        println!(
            "    {:>5} {:>12} {:>16} {:>8} {} {:>8}",
            b.batch_id,
            b.envelopes,
            format_cents(b.amount_cents),
            b.min_cents,
            p.join(" "),
            b.max_cents
        );
    }
    let total = h.record_count.get().max(1);
    println!(
        "  neighbours from the same batch: {} of {} ({:.4}%), longest same-batch run {}",
        r.same_batch_neighbours,
        total.saturating_sub(1),
        100.0 * r.same_batch_neighbours as f64 / total as f64,
        r.longest_same_batch_run
    );
    if r.records_not_opened > 0 {
        println!(
            "  {} records do not open with this keyring (run verify for details)",
            r.records_not_opened
        );
    }
}

fn print_gen(plan: &Plan, summary: &GenSummary) {
    let rate = summary.envelopes as f64 / summary.seconds.max(1e-9);
    println!(
        "generated {} envelopes in {:.2} s ({:.1} M tickets/s on {} threads, {:.1} M/s per thread)",
        summary.envelopes,
        summary.seconds,
        rate / 1e6,
        summary.threads,
        rate / 1e6 / summary.threads as f64
    );
    for v in &summary.variants {
        println!(
            "  variant {:<10} {:>12} envelopes {:>18} {} {:>6} files {:>6} keys  {}",
            v.name,
            v.envelopes,
            format_cents(v.amount_cents),
            plan.currency,
            v.shards,
            v.keys,
            v.dir.display()
        );
    }
    println!(
        "  keyring {} (mode 0600; keep it apart from the ticket files)",
        summary.keyring.display()
    );
    println!("  seed {} (recorded in the keyring)", summary.seed);
}

fn print_verify(report: &VerifyReport) {
    let rate = report.envelopes as f64 / report.seconds.max(1e-9);
    if report.keyring_too_open {
        eprintln!("warning: the keyring is readable by group or others; chmod 600 it");
    }
    if report.ok() {
        println!(
            "verify OK: variants {}: {} files, {} envelopes, {} total, {} keys; every ticket \
             decrypted and checked in {:.2} s ({:.1} M tickets/s)",
            report.variants.join(", "),
            report.files,
            report.envelopes,
            format_cents(report.amount_cents),
            report.keys,
            report.seconds,
            rate / 1e6
        );
        return;
    }
    println!(
        "verify FAILED: {} problem(s) in variants {} ({} files, {} tickets passed every check)",
        report.findings.total,
        report.variants.join(", "),
        report.files,
        report.envelopes
    );
    for (kind, n) in &report.findings.by_kind {
        println!("  {:>10}  {}", n, kind.label());
    }
    for finding in &report.findings.shown {
        println!("  {finding}");
    }
    let hidden = report.findings.total - report.findings.shown.len() as u64;
    if hidden > 0 {
        println!("  ... and {hidden} more (raise --show to list them)");
    }
}

fn demo(dir: &Path, scale: u64, seed: Option<u64>, threads: usize) -> Result<ExitCode, String> {
    if scale == 0 {
        return Err("--scale must be at least 1".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plan_text = if scale == 1 {
        DEMO_PLAN.to_string()
    } else {
        let mut file: PlanFile = toml::from_str(DEMO_PLAN).map_err(|e| e.to_string())?;
        for m in &mut file.merchants {
            m.budget_cents *= scale;
            m.count = m.count.map(|c| c * scale);
        }
        file.event.key_cap_cents = file.event.key_cap_cents.max(25_000_000);
        toml::to_string(&file).map_err(|e| e.to_string())?
    };
    let plan_path = dir.join("plan.toml");
    std::fs::write(&plan_path, &plan_text).map_err(|e| format!("{}: {e}", plan_path.display()))?;
    let plan = Plan::from_toml(&plan_text).map_err(|e| e.to_string())?;
    let out = dir.join("event");
    let keyring = dir.join("keys").join("demo.keyring");
    println!(
        "demo: plan {} ({} envelopes, {} {})",
        plan_path.display(),
        plan.total_envelopes(),
        format_cents(plan.total_cents()),
        plan.currency
    );
    let progress = std::io::stderr().is_terminal();
    let summary = generate(
        &plan,
        &GenOptions {
            out: out.clone(),
            keyring: keyring.clone(),
            seed,
            threads,
            force: true,
            progress,
        },
    )
    .map_err(|e| e.to_string())?;
    print_gen(&plan, &summary);
    let report = verify(&VerifyOptions {
        dir: out.clone(),
        keyring: keyring.clone(),
        plan: Some(plan_path.clone()),
        threads,
        progress,
        findings_max: FINDINGS_SHOWN_DEFAULT,
    })
    .map_err(|e| e.to_string())?;
    print_verify(&report);
    let me = std::env::args().next().unwrap_or_else(|| "hongbao".into());
    println!(
        "next: {me} verify --dir {} --keyring {}   (try damaging a file first)",
        out.display(),
        keyring.display()
    );
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
