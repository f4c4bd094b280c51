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
        /// Skip drawing every amount again from the keyring's seed (faster; totals, keys and
        /// order are still checked, but a change that keeps every total is not caught).
        #[arg(long)]
        quick: bool,
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
    /// Record the durable claims of a server's data directory in the ledger database (SQLite),
    /// each exactly once, pending until reconciliation; safe beside a running server
    /// (docs/formats/ledger.md). --follow keeps going until SIGINT/SIGTERM.
    Settle(hongbao::settle::cli::SettleArgs),
    /// Check every claim against its ticket and the ledger, then credit what passes
    /// (docs/formats/reconcile.md). Exit 0 consistent, 1 findings, 2 cannot run.
    Reconcile(hongbao::reconcile::cli::ReconcileArgs),
    /// Publish a host's durable claims to a NATS JetStream stream, each once (its log position
    /// is the message id), the position saved after every acknowledged batch
    /// (docs/formats/ship.md). --follow keeps going until SIGINT/SIGTERM.
    Ship(hongbao::ship::cli::ShipArgs),
    /// Serve a generated event: shakes and opens over the binary protocol and HTTP, one pinned
    /// executor per core, claims made durable in per-core logs (docs/PROTOCOL.md).
    Serve(Box<ServeArgs>),
    /// Load a server: closed loop (connections x pipeline depth) or open loop at a fixed rate
    /// (latency from intended send times), io_uring threads pinned to CPUs, per-second
    /// progress, HdrHistogram percentiles per operation and outcome; --out writes
    /// summary.json, report.md, report.html with SVG charts and .hgrm files
    /// (docs/formats/load-report.md).
    Load(Box<hongbao::load::LoadArgs>),
    /// Render runs of `hongbao load` side by side: a markdown table per operation with ratios
    /// against the first run (standard output) and, with --out, report.html with SVG charts.
    Report {
        /// summary.json files (or the --out directories of `hongbao load` holding them); the
        /// first is the baseline of the ratios.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Write report.md, report.html and the SVG charts into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create an auth key file (mode 0600): the key the login side signs auth tokens with.
    AuthKeys {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print auth tokens (hex, one per line) for uids FIRST, FIRST+1, ... signed with the
    /// current key of an auth key file: for curl, wrk scripts and load tests.
    AuthToken {
        #[arg(long)]
        auth_keys: PathBuf,
        #[arg(long)]
        uid: u64,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Lifetime of the tokens in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u32,
    },
    /// Validate a plan and print what it would generate, without generating anything.
    CheckPlan {
        #[arg(long)]
        plan: PathBuf,
    },
    /// Print the demo plan, a commented starting point for your own.
    PlanExample,
    /// The main job on embedded defaults: write the demo plan, generate it, verify it, then
    /// serve it on loopback (a rehearsal of its first slot), show a shake and an open, and keep
    /// serving until Ctrl-C.
    Demo {
        /// Working directory for the demo (plan, tickets, keys, server data).
        #[arg(long, default_value = "hongbao-demo")]
        dir: PathBuf,
        /// Multiply every budget and count (1 = about 2.3 million envelopes).
        #[arg(long, default_value_t = 1)]
        scale: u64,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        threads: Option<usize>,
        /// Generate and verify only; do not serve.
        #[arg(long)]
        no_serve: bool,
        /// Stop serving after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        serve_for: Option<u64>,
        #[arg(long, default_value = hongbao::serve::config::LISTEN_DEFAULT)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = hongbao::serve::config::HTTP_DEFAULT)]
        http: std::net::SocketAddr,
    },
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Settings file (TOML, docs/formats/serve-config.md); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A variant directory written by `gen` (holding manifest.json).
    #[arg(long)]
    tickets: Option<PathBuf>,
    #[arg(long)]
    keyring: Option<PathBuf>,
    /// Data directory: per-core logs (core-<k>/), event.json, token.keys.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Auth key file (see `hongbao auth-keys`).
    #[arg(long)]
    auth_keys: Option<PathBuf>,
    /// Key allow/deny lists (TOML), re-read when it changes.
    #[arg(long)]
    key_lists: Option<PathBuf>,
    /// Which host of the plan this server is (default: the first).
    #[arg(long)]
    host: Option<String>,
    /// Binary protocol address (port 0: any free port, printed when ready).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// HTTP address.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Executors (default: the plan's cores for this host, at most the CPUs available).
    #[arg(long)]
    cores: Option<usize>,
    /// CPUs to pin executors to, comma-separated, in core order.
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Socket path: `uring` (the core's own io_uring; default) or `glommio`.
    #[arg(long, value_enum)]
    net: Option<hongbao::serve::config::NetPath>,
    /// Shift the event's schedule so its first slot (or --rehearse-slot) starts now.
    #[arg(long)]
    rehearse: bool,
    #[arg(long)]
    rehearse_slot: Option<String>,
    /// Every shake wins while tickets last (no slot pacing, no quota): drills and benchmarks.
    #[arg(long)]
    no_pacing: bool,
    /// Most envelopes per second per core (0: no quota).
    #[arg(long)]
    quota: Option<u32>,
    /// Most envelopes one user may win (0: no cap).
    #[arg(long)]
    envelopes_per_user: Option<u32>,
    /// Shortest time between two shakes of one user, in ms (0: none).
    #[arg(long)]
    min_interval_ms: Option<u32>,
    /// Stop by itself after this many seconds.
    #[arg(long = "for")]
    run_for: Option<u64>,
}

/// Counts the heap in use (`hongbao_heap_bytes`, `im.memory_max_mb`): src/heap.rs.
#[global_allocator]
static ALLOCATOR: hongbao::heap::Counting = hongbao::heap::Counting;

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
            quick,
        } => {
            let opts = VerifyOptions {
                dir,
                keyring,
                plan,
                threads: threads.unwrap_or_else(default_threads),
                progress: !quiet && std::io::stderr().is_terminal(),
                findings_max: show,
                regenerate: !quick,
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
        Command::Settle(args) => hongbao::settle::cli::run(args),
        Command::Reconcile(args) => hongbao::reconcile::cli::run(args, default_threads()),
        Command::Ship(args) => hongbao::ship::cli::run(args),
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
            no_serve,
            serve_for,
            listen,
            http,
        } => {
            let code = demo(&dir, scale, seed, threads.unwrap_or_else(default_threads))?;
            if no_serve || code != ExitCode::SUCCESS {
                return Ok(code);
            }
            demo_serve(&dir, listen, http, serve_for)
        }
        Command::Load(args) => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let outcome = hongbao::load::run(&args, command)?;
            print!("{}", hongbao::load::stats::markdown(&outcome.summary));
            for path in &outcome.written {
                eprintln!("wrote {}", path.display());
            }
            if let Some(reason) = &outcome.summary.stop_reason {
                eprintln!(
                    "hongbao load: the run ended early ({reason}); the results above cover \
                     the {:.1} s measured",
                    outcome.summary.measured_s
                );
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { runs, out } => {
            let mut summaries = Vec::new();
            for path in &runs {
                summaries.push(hongbao::load::report::read_summary(path)?);
            }
            let report = hongbao::load::report::render(&summaries);
            print!("{}", report.markdown);
            if let Some(dir) = out {
                for path in hongbao::load::report::write(&report, &dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            // Before anything slow (recovery): no signal may kill the server by default.
            let signals = hongbao::runtime::Signals::install()?;
            let config = serve_config((*args).clone())?;
            // A SIGHUP reads the settings file again, with the same flags over it.
            let reload = move || serve_config((*args).clone());
            serve(config, signals, &reload)
        }
        Command::AuthKeys { out } => {
            hongbao::serve::keys::create_key_file(&out).map_err(|e| e.to_string())?;
            println!("wrote {} (mode 0600)", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::AuthToken {
            auth_keys,
            uid,
            count,
            ttl,
        } => {
            let (keys, _) =
                hongbao::serve::keys::load_key_file(&auth_keys).map_err(|e| e.to_string())?;
            let expires = (hongbao::gen::now_unix() as u64).saturating_add(ttl as u64);
            let expires_unix = u32::try_from(expires).map_err(|_| "expiry beyond 2106")?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            for u in uid..uid.saturating_add(count) {
                let token = hongbao::token::Auth {
                    uid: u,
                    expires_unix,
                }
                .encode_hex(&keys);
                writeln!(out, "{token}").map_err(|e| e.to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve_config(a: ServeArgs) -> Result<hongbao::serve::config::ServeConfig, String> {
    use hongbao::serve::config::ConfigFile;
    let mut file = match &a.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let s = &mut file.server;
    macro_rules! over {
        ($field:expr, $flag:expr) => {
            if let Some(v) = $flag {
                $field = Some(v);
            }
        };
    }
    over!(s.tickets, a.tickets);
    over!(s.keyring, a.keyring);
    over!(s.data, a.data);
    over!(s.auth_keys, a.auth_keys);
    over!(s.key_lists, a.key_lists);
    over!(s.host, a.host);
    over!(s.listen, a.listen);
    over!(s.http, a.http);
    over!(s.cores, a.cores);
    over!(s.cpus, a.cpus);
    over!(s.rehearse_slot, a.rehearse_slot);
    over!(s.net, a.net);
    if a.rehearse {
        s.rehearse = Some(true);
    }
    if a.no_pacing {
        file.pacing.enabled = Some(false);
    }
    over!(file.pacing.quota_per_second, a.quota);
    over!(file.caps.envelopes_per_user, a.envelopes_per_user);
    over!(file.caps.min_interval_ms, a.min_interval_ms);
    let mut config = file.resolve()?;
    config.run_for = a.run_for.map(std::time::Duration::from_secs);
    Ok(config)
}

/// Prints a status line of a running server. A closed or broken stdout (a supervisor that
/// went away, `| head -1`) must not stop the server: `println!` would panic, and a panic
/// stops the server by design, so write errors are ignored here.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn serve(
    config: hongbao::serve::config::ServeConfig,
    signals: hongbao::runtime::Signals,
    reload: &dyn Fn() -> Result<hongbao::serve::config::ServeConfig, String>,
) -> Result<ExitCode, String> {
    install_fail_stop_panic_hook();
    let cpus = core_count();
    let prepared = hongbao::serve::setup::prepare(&config, cpus)?;
    for line in &prepared.report {
        eprintln!("{line}");
    }
    let event = prepared.event.clone();
    let host = prepared.host.clone();
    let finished = hongbao::runtime::run(
        &config,
        prepared,
        signals,
        Some(reload),
        |binary, http, cores| {
            use std::io::Write;
            // One line, parsed by scripts and tests: keep its shape.
            say!("hongbao serve: ready binary {binary} http {http} cores {cores} event {event} host {host}");
            let _ = std::io::stdout().flush();
        },
    )?;
    print_stopped(&finished);
    Ok(ExitCode::SUCCESS)
}

/// Serves the demo event generated in `dir` and shows one shake and one open through it.
fn demo_serve(
    dir: &Path,
    listen: std::net::SocketAddr,
    http: std::net::SocketAddr,
    serve_for: Option<u64>,
) -> Result<ExitCode, String> {
    use hongbao::serve::config::ConfigFile;
    let tickets = std::fs::read_dir(dir.join("event"))
        .map_err(|e| format!("{}: {e}", dir.join("event").display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(hongbao::manifest::MANIFEST_FILE).exists())
        .min()
        .ok_or("the demo generated no variant directory")?;
    // The demo generated a new event, so yesterday's server data belongs to another one.
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    }
    let auth_path = dir.join("keys").join("auth.keys");
    let auth_keys =
        hongbao::serve::keys::load_or_create_key_file(&auth_path).map_err(|e| e.to_string())?;
    let mut file = ConfigFile::default();
    file.server.tickets = Some(tickets);
    file.server.keyring = Some(dir.join("keys").join("demo.keyring"));
    file.server.data = Some(data);
    file.server.auth_keys = Some(auth_path.clone());
    file.server.listen = Some(listen);
    file.server.http = Some(http);
    file.server.rehearse = Some(true);
    let mut config = file.resolve()?;
    config.run_for = serve_for.map(std::time::Duration::from_secs);
    let uid = 1001;
    let expires_unix = (hongbao::gen::now_unix() + 86_400) as u32;
    let auth = hongbao::token::Auth { uid, expires_unix };
    let auth_bytes = auth.encode(&auth_keys);
    let auth_hex = auth.encode_hex(&auth_keys);
    let friend = hongbao::token::Auth {
        uid: uid + 1,
        expires_unix,
    };
    let friend_bytes = friend.encode(&auth_keys);
    let friend_hex = friend.encode_hex(&auth_keys);
    install_fail_stop_panic_hook();
    let signals = hongbao::runtime::Signals::install()?;
    let prepared = hongbao::serve::setup::prepare(&config, core_count())?;
    for line in &prepared.report {
        say!("{line}");
    }
    let me = std::env::args().next().unwrap_or_else(|| "hongbao".into());
    let auth_display = auth_path.display().to_string();
    let data_display = dir.join("data").display().to_string();
    let variant_dir = config.tickets.clone();
    let finished = hongbao::runtime::run(
        &config,
        prepared,
        signals,
        None,
        move |binary, http, cores| {
            say!("hongbao serve: ready binary {binary} http {http} cores {cores}");
            std::thread::spawn(move || {
                match demo_round_trip(binary, &auth_bytes) {
                    Ok(lines) => lines.iter().for_each(|l| say!("{l}")),
                    Err(e) => say!("demo client: {e}"),
                }
                match demo_im(binary, &auth_bytes, &friend_bytes) {
                    Ok(lines) => lines.iter().for_each(|l| say!("{l}")),
                    Err(e) => say!("demo IM client: {e}"),
                }
                say!("try it yourself (user {uid}):");
                say!("  curl -s -X POST -H 'Authorization: Bearer {auth_hex}' http://{http}/shake");
                say!("  curl -s -X POST -H 'Authorization: Bearer {auth_hex}' --data <token> http://{http}/open");
                say!("  curl -s -X POST -H 'Authorization: Bearer {auth_hex}' --data 'hello' 'http://{http}/im/send?to=user:{}&appinfo=1234'", uid + 1);
                say!("  curl -s -H 'Authorization: Bearer {friend_hex}' 'http://{http}/im/sync?after=0'   # as user {}", uid + 1);
                say!("  curl -s http://{http}/metrics | grep hongbao_shakes_total");
                say!("  tokens for other users: {me} auth-token --auth-keys {auth_display} --uid 2000 --count 10");
                match serve_for {
                    Some(s) => {
                        say!("serving for {s} s (claims: {me} claims --data {data_display})")
                    }
                    None => {
                        say!("serving until Ctrl-C (claims: {me} claims --data {data_display})")
                    }
                }
            });
        },
    )?;
    print_stopped(&finished);
    demo_money(dir, &variant_dir)
}

/// The end of the demo: the claims settled into an embedded ledger, then reconciled against the
/// tickets and credited (what `hongbao settle` and `hongbao reconcile` do).
fn demo_money(dir: &Path, tickets: &Path) -> Result<ExitCode, String> {
    let data = dir.join("data");
    let db = dir.join("ledger.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let old = PathBuf::from(format!("{}{suffix}", db.display()));
        if old.exists() {
            std::fs::remove_file(&old).map_err(|e| format!("{}: {e}", old.display()))?;
        }
    }
    let (mut ledger, host) = hongbao::settle::open_ledger(&data, &db).map_err(|e| e.to_string())?;
    let pass =
        hongbao::settle::settle_pass(&mut ledger, &host, &data, hongbao::settle::BATCH_DEFAULT)
            .map_err(|e| e.to_string())?;
    drop(ledger);
    say!(
        "settled: {} claims ({}) into {}",
        pass.recorded,
        format_cents(pass.cents),
        db.display()
    );
    let report = hongbao::reconcile::reconcile(&hongbao::reconcile::ReconcileOptions {
        tickets: tickets.to_path_buf(),
        keyring: dir.join("keys").join("demo.keyring"),
        plan: None,
        data: vec![data],
        db: db.clone(),
        key_lists: None,
        slot: None,
        dry_run: false,
        regenerate: false,
        threads: default_threads(),
        findings_max: FINDINGS_SHOWN_DEFAULT,
    })
    .map_err(|e| e.to_string())?;
    let json = dir.join("reconcile.json");
    let text = serde_json::to_string_pretty(&report).expect("a report serializes");
    std::fs::write(&json, text + "\n").map_err(|e| format!("{}: {e}", json.display()))?;
    for line in hongbao::reconcile::cli::summary(&report) {
        say!("{line}");
    }
    say!("report: {}", json.display());
    Ok(if report.consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Shakes (obeying the back-off hints) until an envelope comes, opens it, opens it again.
fn demo_round_trip(addr: std::net::SocketAddr, auth: &[u8]) -> Result<Vec<String>, String> {
    use hongbao::wire::ops::{Reply, ShakeOutcome};
    let mut lines = Vec::new();
    let mut client = hongbao::client::Client::connect(addr).map_err(|e| e.to_string())?;
    match client.hello(auth).map_err(|e| e.to_string())? {
        Reply::Hello(h) => lines.push(format!(
            "demo client: HELLO as user {} (core {} of {})",
            h.uid, h.core, h.cores
        )),
        other => return Err(format!("HELLO answered {other:?}")),
    }
    for attempt in 1..=400 {
        match client.shake().map_err(|e| e.to_string())? {
            Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => {
                let token = s.token.expect("an envelope carries a token");
                lines.push(format!(
                    "demo client: shake {attempt} won an envelope (token {}...)",
                    &hex::encode(token)[..16]
                ));
                match client.open(&token).map_err(|e| e.to_string())? {
                    Reply::Open(o) => lines.push(format!(
                        "demo client: opened envelope {} worth {} (batch {}), claim durable",
                        o.envelope_id,
                        format_cents(o.amount_cents as u64),
                        o.batch_id
                    )),
                    other => lines.push(format!("demo client: open answered {other:?}")),
                }
                match client.open(&token).map_err(|e| e.to_string())? {
                    Reply::Open(o) if o.again => lines.push(format!(
                        "demo client: opening it again claims nothing more: the same claim is \
                         answered again (again = 1, worth {})",
                        format_cents(o.amount_cents as u64)
                    )),
                    other => lines.push(format!("demo client: second open answered {other:?}")),
                }
                return Ok(lines);
            }
            Reply::Shake(s) => {
                std::thread::sleep(std::time::Duration::from_millis(
                    s.backoff_ms.clamp(5, 1000) as u64,
                ));
            }
            other => return Err(format!("SHAKE answered {other:?}")),
        }
    }
    lines.push("demo client: no envelope in 400 shakes (the slot paces its envelopes)".into());
    Ok(lines)
}

/// The IM half of the demo: a group, a message to it, a retried send, and the member's pull.
fn demo_im(addr: std::net::SocketAddr, auth: &[u8], friend: &[u8]) -> Result<Vec<String>, String> {
    use hongbao::im::{Class, ImReply, Target};
    use hongbao::wire::im::ImDecoded;
    use hongbao::wire::ops::Reply;
    let e = |e: std::io::Error| e.to_string();
    let mut lines = Vec::new();
    let mut a = hongbao::client::Client::connect(addr).map_err(e)?;
    let mut b = hongbao::client::Client::connect(addr).map_err(e)?;
    a.hello(auth).map_err(e)?;
    b.hello(friend).map_err(e)?;
    let gid = 1;
    match a.group_create(gid, &[1002, 1003]).map_err(e)? {
        Reply::Im(ImDecoded::Reply(ImReply::Group { members, .. })) => lines.push(format!(
            "demo IM: user 1001 created group {gid} with {members} members"
        )),
        other => return Err(format!("GROUP_CREATE answered {other:?}")),
    }
    // User 1002 is online: its first SYNC starts pushes to its connection.
    b.im_sync(0, 0).map_err(e)?;
    let body = "Happy new year! Shake for red envelopes at 20:00".as_bytes();
    for attempt in ["sent", "retried with the same appinfo"] {
        match a
            .im_send(0x2026, Target::Group(gid), Class::Chat, body)
            .map_err(e)?
        {
            Reply::Im(ImDecoded::Reply(ImReply::Sent { seq, duplicate, .. })) => {
                lines.push(format!(
                    "demo IM: message {attempt}: seq {seq} in the sender's stream{}",
                    if duplicate {
                        ", stored once (duplicate)"
                    } else {
                        ""
                    }
                ))
            }
            other => return Err(format!("SEND answered {other:?}")),
        }
    }
    if let Some((uid, max_seq)) = b.wait_push(std::time::Duration::from_secs(2)).map_err(e)? {
        lines.push(format!(
            "demo IM: PUSH to user {uid}: stream now at seq {max_seq}"
        ));
    }
    let (read_seq, sender_seq) = match b.im_sync(0, 0).map_err(e)? {
        Reply::Im(ImDecoded::Page { entries, .. }) if !entries.is_empty() => {
            let m = &entries[0];
            lines.push(format!(
                "demo IM: user 1002 pulled seq {}: from {} to group {}: {:?}",
                m.seq,
                m.sender,
                m.to.id(),
                String::from_utf8_lossy(&m.body)
            ));
            (m.seq, m.sender_seq)
        }
        other => return Err(format!("SYNC answered {other:?}")),
    };
    // User 1002 marks it read; the receipt reaches the sender's read list.
    b.im_ack_read(read_seq).map_err(e)?;
    for _ in 0..200 {
        match a.im_read_list(sender_seq, 0).map_err(e)? {
            Reply::Im(ImDecoded::Reply(ImReply::Readers {
                read, unread, uids, ..
            })) if read > 0 => {
                let (readers, rest) = uids.split_at(read as usize);
                lines.push(format!(
                    "demo IM: read receipt: user 1001 sees its message read by {readers:?}, \
                     unread by {unread} ({rest:?})"
                ));
                break;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    Ok(lines)
}

fn print_stopped(finished: &hongbao::runtime::Finished) {
    say!(
        "hongbao serve: stopped; {} shakes, {} envelopes issued, {} opened ({} in durable claims)",
        finished.shakes,
        finished.envelopes,
        finished.opens,
        format_cents(finished.claimed_cents)
    );
}

/// CPUs this process may run on.
fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A panic anywhere in the server is a broken invariant: stop the whole process at once, so no
/// core goes on answering on top of it (recovery on restart keeps what is durable).
fn install_fail_stop_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("fatal: stopping the server after a panic (nothing unanswered was acknowledged)");
        std::process::abort();
    }));
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
             decrypted and checked{} in {:.2} s ({:.1} M tickets/s)",
            report.variants.join(", "),
            report.files,
            report.envelopes,
            format_cents(report.amount_cents),
            report.keys,
            if report.regenerated {
                ", and drawn again from the seed"
            } else {
                " (--quick: amounts not drawn again from the seed)"
            },
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
        regenerate: true,
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
