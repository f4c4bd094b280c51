//! Ship throughput: claims published to NATS JetStream per second with every acknowledgement
//! awaited (`hongbao ship`'s publish, 1,024 acknowledgements in flight), from per-core logs
//! written as a server writes them, into a fresh stream of the nats-server at
//! HONGBAO_TEST_NATS (`source .ci/services.sh` starts one). The peer, in the same run on the
//! same server: the same number of messages of the same size published to another fresh stream
//! with acknowledgements in the same window, without reading any log or encoding any claim.
//!
//! Run: `cargo bench --bench ship -- [--claims N]` (default 400,000 over two core logs). Under
//! `cargo test --all-targets` it does a small smoke run, or skips without a server.

mod common;

use std::collections::VecDeque;
use std::time::Instant;

use clap::Parser;
use common::write_logs;
use hongbao::ship::{ensure_stream, publish, read_claims};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    claims: Option<u32>,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let Ok(url) = std::env::var("HONGBAO_TEST_NATS") else {
        println!("ship bench skipped: needs nats-server; `source .ci/services.sh` (as root) first");
        return;
    };
    let total = args
        .claims
        .unwrap_or(if args.bench { 400_000 } else { 4_000 });
    let per_core = total / 2;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    write_logs(&data, per_core);
    let id = hongbao::settle::data_identity(&data).expect("identity");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pid = std::process::id();
    let (ship_s, peer_s, bytes) = runtime.block_on(async {
        let client = async_nats::connect(&url).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let (ship_stream, peer_stream) = (
            format!("HB_BENCH_SHIP_{pid}"),
            format!("HB_BENCH_PEER_{pid}"),
        );
        ensure_stream(&js, &ship_stream, 1).await.expect("stream");
        ensure_stream(&js, &peer_stream, 1).await.expect("stream");
        let started = Instant::now();
        let mut bytes = 0;
        for core in 0..2u16 {
            let (claims, _) = read_claims(
                &data.join(format!("core-{core}")),
                core,
                Default::default(),
                usize::MAX,
            )
            .expect("claims");
            bytes = hongbao::ship::body(&id, core, claims[0].0, &claims[0].1).len();
            let shipped = publish(&js, &ship_stream, &id, core, &claims)
                .await
                .expect("publish");
            assert_eq!(shipped.stored, u64::from(per_core));
        }
        let ship_s = started.elapsed().as_secs_f64();
        let payload = bytes::Bytes::from(vec![b'x'; bytes]);
        let subject = hongbao::ship::subject(&peer_stream, "h1");
        let started = Instant::now();
        let mut acks = VecDeque::new();
        for _ in 0..total {
            if acks.len() >= 1024 {
                let ack: async_nats::jetstream::context::PublishAckFuture =
                    acks.pop_front().expect("not empty");
                ack.await.expect("ack");
            }
            acks.push_back(
                js.publish(subject.clone(), payload.clone())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("ack");
        }
        let peer_s = started.elapsed().as_secs_f64();
        for s in [ship_stream, peer_stream] {
            let _ = js.delete_stream(&s).await;
        }
        (ship_s, peer_s, bytes)
    });
    let n = f64::from(total);
    println!("| what ({total} messages of ~{bytes} bytes, acks awaited) | seconds | per second | vs peer |");
    println!("|---|---:|---:|---:|");
    println!(
        "| peer: bare JetStream publish, same size, same window | {peer_s:.2} | {:.0} | 1.00 |",
        n / peer_s
    );
    println!(
        "| hongbao ship: read the logs, encode, publish with message ids | {ship_s:.2} | {:.0} | {:.2} |",
        n / ship_s,
        peer_s / ship_s
    );
}
