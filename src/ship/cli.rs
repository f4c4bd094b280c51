//! The `hongbao ship` command line: options, the publish loop (`--follow`), the summary lines.
//! Runs on the main thread of its own process, in a single-threaded tokio runtime.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::state::ShipState;
use super::{ensure_stream, publish, read_claims, Shipped};
use crate::claims::parse_position;

#[derive(Debug, clap::Args)]
pub struct ShipArgs {
    /// The server's data directory (it may be in use by a running server).
    #[arg(long)]
    pub data: PathBuf,
    /// The NATS server (or one of the cluster), e.g. nats://127.0.0.1:4222.
    #[arg(long)]
    pub nats: String,
    /// The JetStream stream (created when absent, on subjects hongbao.<STREAM>.claims.>).
    #[arg(long, default_value = "HONGBAO_CLAIMS")]
    pub stream: String,
    /// Copies of the stream when it is created (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Claims published before their acknowledgements are awaited and the position saved.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Start a core's log here instead of at the saved position (CORE:SEGMENT:OFFSET; again
    /// for other cores): re-sends a range. The stream drops what it already has (within its
    /// duplicate window).
    #[arg(long)]
    pub from: Vec<String>,
    /// Keep publishing new claims as they become durable, until SIGINT or SIGTERM.
    #[arg(long)]
    pub follow: bool,
}

pub fn run(args: ShipArgs) -> Result<ExitCode, String> {
    let id = crate::settle::data_identity(&args.data).map_err(|e| e.to_string())?;
    let mut state = ShipState::load(&args.data, &args.stream)?;
    for f in &args.from {
        let (core, at) = parse_position(f).map_err(|e| e.to_string())?;
        state.set(core, at);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(&args.nats)
            .await
            .map_err(|e| format!("{}: {e}", args.nats))?;
        let js = async_nats::jetstream::new(client);
        ensure_stream(&js, &args.stream, args.replicas).await?;
        loop {
            let dirs = crate::settle::log_dirs(&args.data).map_err(|e| e.to_string())?;
            let mut pass = Shipped::default();
            for (core, dir) in dirs {
                loop {
                    let from = state.position(core);
                    let (claims, next) = read_claims(&dir, core, from, args.batch.max(1))?;
                    let shipped = publish(&js, &args.stream, &id, core, &claims).await?;
                    pass.stored += shipped.stored;
                    pass.duplicates += shipped.duplicates;
                    state.set(core, next);
                    state.save(&args.data)?;
                    if claims.len() < args.batch.max(1) || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            if pass.stored + pass.duplicates > 0 || !args.follow {
                eprintln!(
                    "ship {}: {} claims stored in {}, {} re-sends dropped as duplicates",
                    id.host, pass.stored, args.stream, pass.duplicates
                );
            }
            if !args.follow || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<(), String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
