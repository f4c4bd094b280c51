//! A graceful stop under load loses no answer (docs/SAFETY.md, "Work lost at shutdown"):
//! clients keep pipelining opens, without pause, while the server gets SIGTERM. Every claim
//! the server made durable must have been answered to its client: the server stops reading,
//! commits, writes every answer, and closes so that the kernel delivers them (a socket
//! closed with unread input is reset, and the reset throws away answers not yet delivered).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::Event;
use hongbao::wire::ops::{encode_request, ErrorCode, Reply, ShakeOutcome, OP_OPEN, OP_SHAKE};

const WORKERS: u64 = 4;
/// Tokens each worker opens (more than it can open before the stop).
const TOKENS: usize = 40_000;
/// Opens written per millisecond by each worker.
const OPENS_PER_MS: usize = 48;

fn tokens(c: &mut hongbao::client::Client, n: usize) -> Vec<[u8; 64]> {
    let mut tokens = Vec::with_capacity(n);
    while tokens.len() < n {
        for _ in 0..256 {
            c.send(OP_SHAKE, &[]);
        }
        c.flush().unwrap();
        for _ in 0..256 {
            match c.recv().unwrap() {
                (_, Reply::Shake(s)) if s.outcome == ShakeOutcome::Envelope => {
                    tokens.push(s.token.unwrap())
                }
                (_, other) => panic!("{other:?}"),
            }
        }
    }
    tokens.truncate(n);
    tokens
}

struct Outcome {
    /// (envelope id, uid) of every open answered with its claim.
    acknowledged: Vec<(u64, u64)>,
    sent: usize,
}

fn stop_under_load(net: &str) {
    let event = Event::new();
    let mut server = event.serve("data", &["--cores", "2", "--no-pacing", "--net", net]);
    let sent_total = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let uid = 100 + w;
        let mut c = server.client(&event.auth(uid));
        let tokens = tokens(&mut c, TOKENS);
        let mut writer = c.try_clone_stream().unwrap();
        let sent_total = sent_total.clone();
        // Request ids from 1_000_000 on, one per token, in order.
        let write = std::thread::spawn(move || {
            let mut sent = 0;
            let mut out = BytesMut::new();
            for chunk in tokens.chunks(OPENS_PER_MS) {
                for t in chunk {
                    encode_request(OP_OPEN, 1_000_000 + sent as u64, t, &mut out);
                    sent += 1;
                }
                if writer.write_all(&out).is_err() {
                    break;
                }
                sent_total.fetch_add(chunk.len(), Ordering::Relaxed);
                out.clear();
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        let read = std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            while let Ok((_, reply)) = c.recv() {
                match reply {
                    Reply::Open(o) => {
                        assert!(!o.again, "a fresh token answered as a repeat: {o:?}");
                        acknowledged.push((o.envelope_id, uid));
                    }
                    Reply::Error { code, .. } => {
                        assert_eq!(code, ErrorCode::Busy as u16, "only overload refuses")
                    }
                    other => panic!("{other:?}"),
                }
            }
            acknowledged
        });
        workers.push((write, read));
    }
    // Stop while every worker is writing.
    while sent_total.load(Ordering::Relaxed) < WORKERS as usize * 5_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.stderr());
    let mut outcomes = Vec::new();
    for (write, read) in workers {
        let sent = write.join().unwrap();
        outcomes.push(Outcome {
            acknowledged: read.join().unwrap(),
            sent,
        });
    }
    let acknowledged: HashMap<u64, u64> = outcomes
        .iter()
        .flat_map(|o| o.acknowledged.iter().copied())
        .collect();
    let sent: usize = outcomes.iter().map(|o| o.sent).sum();
    let claims = event.claims("data");
    let claimed: HashSet<(u64, u64)> = claims.iter().copied().collect();
    assert_eq!(claimed.len(), claims.len(), "an envelope claimed twice");
    let unanswered: Vec<_> = claims
        .iter()
        .filter(|(e, uid)| acknowledged.get(e) != Some(uid))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{net}: {} of {} durable claims were never answered (first: {:x?})",
        unanswered.len(),
        claims.len(),
        unanswered.first()
    );
    for (e, uid) in &acknowledged {
        assert!(
            claimed.contains(&(*e, *uid)),
            "acknowledged open {e:x} lost"
        );
    }
    // The stop came in the middle of the load, or the test proves nothing.
    assert!(
        sent > acknowledged.len() && acknowledged.len() >= WORKERS as usize * 1_000,
        "{net}: {sent} opens sent, {} answered",
        acknowledged.len()
    );
    eprintln!(
        "{net}: {sent} opens sent, {} answered and durable, none unanswered",
        acknowledged.len()
    );
}

#[test]
fn sigterm_under_pipelined_opens_answers_every_claim() {
    stop_under_load("uring");
}

#[test]
fn sigterm_under_pipelined_opens_answers_every_claim_on_glommio_sockets() {
    stop_under_load("glommio");
}
