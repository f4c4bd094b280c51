//! Crash test of the server (R7, R8, SAFETY.md): clients shake and open (paced, see below)
//! on two cores while the server is killed with SIGKILL at a random moment; then it restarts on
//! the same data, many times. Checked across all rounds:
//! - no ticket is ever issued twice (every shake token names a new envelope);
//! - every acknowledged open is a durable claim, of the user who opened it;
//! - no envelope is claimed twice, and every claim is of an issued envelope and its user;
//! - tokens handed out before a crash still open after it (or, when their claim became durable
//!   but the answer was lost with the process, opening again answers that claim: `again`).
//!
//! `HONGBAO_CRASH_ROUNDS` (default 8) and `HONGBAO_CRASH_SEED` control the run.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::Event;
use hongbao::client::Client;
use hongbao::wire::ops::{ErrorCode, Reply, ShakeOutcome, OP_OPEN, OP_SHAKE};
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct Seen {
    /// envelope id -> (uid, token)
    issued: Vec<(u64, u64, [u8; 64])>,
    acknowledged: Vec<(u64, u64)>,
    /// Shakes that won nothing (the slot's tickets ran out).
    nothing: usize,
}

/// Shakes per second per worker. The demo event has ~790,000 tickets in its first slot; at
/// full speed four workers would use them up within a dozen rounds, after which every shake
/// wins nothing and the rounds test nothing. Paced, 24 rounds fit.
const SHAKES_PER_SECOND: f64 = 6_000.0;

fn envelope_of(token: &[u8; 64]) -> u64 {
    u64::from_le_bytes(token[16..24].try_into().unwrap())
}

/// Shakes and opens in pipelined batches until the server goes away.
fn worker(addr: SocketAddr, auth: [u8; 32], uid: u64, batch: usize) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut c) = Client::connect(addr) else {
        return seen;
    };
    if !matches!(c.hello(&auth), Ok(Reply::Hello(_))) {
        return seen;
    }
    let started = std::time::Instant::now();
    let mut shaken = 0usize;
    loop {
        let due = Duration::from_secs_f64(shaken as f64 / SHAKES_PER_SECOND);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        shaken += batch;
        for _ in 0..batch {
            c.send(OP_SHAKE, &[]);
        }
        if c.flush().is_err() {
            return seen;
        }
        let mut tokens = Vec::with_capacity(batch);
        for _ in 0..batch {
            match c.recv() {
                Ok((_, Reply::Shake(s))) if s.outcome == ShakeOutcome::Envelope => {
                    let t = s.token.unwrap();
                    seen.issued.push((envelope_of(&t), uid, t));
                    tokens.push(t);
                }
                Ok((_, Reply::Shake(_))) => seen.nothing += 1,
                Ok((_, Reply::Error { .. })) => {}
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(_) => return seen,
            }
        }
        for t in &tokens {
            c.send(OP_OPEN, t);
        }
        if c.flush().is_err() {
            return seen;
        }
        for _ in &tokens {
            match c.recv() {
                Ok((_, Reply::Open(o))) => seen.acknowledged.push((o.envelope_id, uid)),
                Ok((_, Reply::Error { code, .. })) => {
                    assert_eq!(
                        code,
                        ErrorCode::Busy as u16,
                        "only overload may refuse a fresh token"
                    )
                }
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(_) => return seen,
            }
        }
    }
}

#[test]
fn kill9_under_load_never_loses_or_duplicates_money() {
    let rounds: usize = std::env::var("HONGBAO_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("HONGBAO_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {rounds} rounds, HONGBAO_CRASH_SEED={seed}");
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let event = Event::new();
    let mut issued: HashMap<u64, u64> = HashMap::new();
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    let mut unanswered: Vec<(u64, [u8; 64])> = Vec::new();
    let mut tokens: HashMap<u64, [u8; 64]> = HashMap::new();
    let mut lost_answers = 0usize;
    for round in 0..rounds {
        let mut server = event.serve("data", &["--cores", "2", "--no-pacing"]);
        // Tokens from before the crash: they open now, or their claim was already durable
        // and its answer was lost with the process: opening again tells it (`again`).
        for (uid, token) in unanswered.drain(..) {
            let mut c = server.client(&event.auth(uid));
            match c.open(&token).unwrap() {
                Reply::Open(o) => {
                    assert_eq!(o.envelope_id, envelope_of(&token));
                    assert!(acknowledged.insert(o.envelope_id, uid).is_none());
                    if o.again {
                        lost_answers += 1;
                    }
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        // Acknowledged claims stay claimed: opening again answers the same claim.
        for (&envelope, &uid) in acknowledged.iter().take(20) {
            if let Some(&token) = tokens.get(&envelope) {
                let mut c = server.client(&event.auth(uid));
                assert!(
                    matches!(c.open(&token).unwrap(), Reply::Open(o) if o.again && o.envelope_id == envelope)
                );
            }
        }
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let uid = 1 + round as u64 * 100 + w;
                let auth = event.auth(uid);
                let addr = server.binary;
                let batch = [1, 4, 16, 64][w as usize];
                std::thread::spawn(move || worker(addr, auth, uid, batch))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(100..700)));
        server.kill9();
        let mut round_acks = HashSet::new();
        let mut round_tokens = Vec::new();
        let mut nothing = 0;
        for w in workers {
            let seen = w.join().unwrap();
            nothing += seen.nothing;
            for (envelope, uid, token) in seen.issued {
                assert!(
                    issued.insert(envelope, uid).is_none(),
                    "round {round}: envelope {envelope:x} issued twice (seed {seed})"
                );
                round_tokens.push((envelope, uid, token));
            }
            for (envelope, uid) in seen.acknowledged {
                assert!(acknowledged.insert(envelope, uid).is_none(), "opened twice");
                round_acks.insert(envelope);
            }
        }
        assert!(
            !round_tokens.is_empty(),
            "round {round}: no work done before the kill ({nothing} shakes won nothing)"
        );
        for (envelope, _, token) in &round_tokens {
            tokens.insert(*envelope, *token);
        }
        unanswered.extend(
            round_tokens
                .into_iter()
                .filter(|(e, _, _)| !round_acks.contains(e))
                .take(50)
                .map(|(_, uid, token)| (uid, token)),
        );
    }
    // Recover once more (truncating the last torn tail), stop cleanly, and read the claims.
    let mut server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    assert!(server.terminate().success(), "{}", server.stderr());
    let claims = event.claims("data");
    let mut claimed = HashSet::new();
    for (envelope, uid) in &claims {
        assert!(
            claimed.insert(*envelope),
            "envelope {envelope:x} claimed twice"
        );
        assert_eq!(
            issued.get(envelope),
            Some(uid),
            "claim of an envelope not issued to its user"
        );
    }
    for (envelope, uid) in &acknowledged {
        assert!(
            claims.contains(&(*envelope, *uid)),
            "acknowledged claim {envelope:x} lost (seed {seed})"
        );
    }
    eprintln!(
        "crash test: {} tickets issued, {} opens acknowledged ({lost_answers} of them learnt \
         again after their answer died with the process), {} claims durable, over {rounds} kills",
        issued.len(),
        acknowledged.len(),
        claims.len()
    );
}
