//! Crash test of the server (R7, R8, SAFETY.md): clients shake and open (paced, see below)
//! on two cores while the server is killed with SIGKILL at a random moment; then it restarts on
//! the same data, many times. Checked across all rounds:
//! - no ticket is ever issued twice (every shake token names a new envelope);
//! - every acknowledged open is a durable claim, of the user who opened it;
//! - no envelope is claimed twice, and every claim is of an issued envelope and its user;
//! - tokens handed out before a crash still open after it (or, when their claim became durable
//!   but the answer was lost with the process, opening again answers that claim: `again`).
//!
//! One round in four ends with SIGTERM instead: then every claim made durable in the round must
//! have been answered. `HONGBAO_CRASH_ROUNDS` (default 8), `HONGBAO_CRASH_EPOCH` (rounds per
//! data directory, default 20) and `HONGBAO_CRASH_SEED` control the run; `bench/crash-loop.sh N`
//! runs N rounds.

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

/// What the rounds of one data directory found.
#[derive(Default)]
struct Tally {
    rounds: usize,
    stops: usize,
    issued: usize,
    acknowledged: usize,
    learnt_again: usize,
    claims: usize,
    duplicates: usize,
    lost: usize,
    unissued: usize,
    unanswered_at_stop: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Durable claims as (envelope, uid); counted into the tally, nothing asserted yet.
fn check_claims(
    event: &Event,
    data: &str,
    issued: &HashMap<u64, u64>,
    t: &mut Tally,
) -> HashSet<u64> {
    let claims = event.claims(data);
    let mut claimed = HashSet::new();
    for (envelope, uid) in &claims {
        if !claimed.insert(*envelope) {
            t.duplicates += 1;
        }
        if issued.get(envelope) != Some(uid) {
            t.unissued += 1;
        }
    }
    t.claims = claims.len();
    claimed
}

/// `rounds` rounds on one data directory: each starts the server on it, loads it, and ends
/// it with SIGKILL (or, one round in four, SIGTERM) at a random moment.
fn rounds_on(event: &Event, data: &str, rounds: usize, rng: &mut impl Rng, t: &mut Tally) {
    let mut issued: HashMap<u64, u64> = HashMap::new();
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    let mut unanswered: Vec<(u64, [u8; 64])> = Vec::new();
    let mut tokens: HashMap<u64, [u8; 64]> = HashMap::new();
    for round in 0..rounds {
        let mut server = event.serve(data, &["--cores", "2", "--no-pacing"]);
        // Tokens from before the crash: they open now, or their claim was already durable
        // and its answer was lost with the process: opening again tells it (`again`).
        for (uid, token) in unanswered.drain(..) {
            let mut c = server.client(&event.auth(uid));
            match c.open(&token).unwrap() {
                Reply::Open(o) => {
                    assert_eq!(o.envelope_id, envelope_of(&token));
                    assert!(acknowledged.insert(o.envelope_id, uid).is_none());
                    t.learnt_again += o.again as usize;
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
        let graceful = rng.random_range(0..4) == 0;
        if graceful {
            let status = server.terminate();
            assert!(status.success(), "{status:?}: {}", server.stderr());
        } else {
            server.kill9();
        }
        let mut round_acks = HashSet::new();
        let mut round_tokens = Vec::new();
        let mut nothing = 0;
        for w in workers {
            let seen = w.join().unwrap();
            nothing += seen.nothing;
            for (envelope, uid, token) in seen.issued {
                assert!(
                    issued.insert(envelope, uid).is_none(),
                    "round {round}: envelope {envelope:x} issued twice"
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
            "round {round}: no work done before the end ({nothing} shakes won nothing)"
        );
        if graceful {
            // A graceful stop answers every claim it made.
            t.stops += 1;
            let mut at_stop = Tally::default();
            let claimed = check_claims(event, data, &issued, &mut at_stop);
            t.unanswered_at_stop += round_tokens
                .iter()
                .filter(|(e, _, _)| claimed.contains(e) && !round_acks.contains(e))
                .count();
        }
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
        t.rounds += 1;
    }
    // Recover once more (truncating the last torn tail), stop cleanly, and read the claims.
    let mut server = event.serve(data, &["--cores", "2", "--no-pacing"]);
    assert!(server.terminate().success(), "{}", server.stderr());
    let mut tally = Tally::default();
    let claimed = check_claims(event, data, &issued, &mut tally);
    t.claims += tally.claims;
    t.duplicates += tally.duplicates;
    t.unissued += tally.unissued;
    t.issued += issued.len();
    t.acknowledged += acknowledged.len();
    t.lost += acknowledged.keys().filter(|e| !claimed.contains(e)).count();
}

/// `HONGBAO_CRASH_ROUNDS` rounds (default 8), `HONGBAO_CRASH_EPOCH` per data directory
/// (default 20: the demo event's first slot holds enough tickets for about that many), then
/// every count checked. `bench/crash-loop.sh N` runs it long.
#[test]
fn kill9_under_load_never_loses_or_duplicates_money() {
    let rounds: usize = env_or("HONGBAO_CRASH_ROUNDS", 8);
    let epoch: usize = env_or("HONGBAO_CRASH_EPOCH", 20).max(1);
    let seed: u64 = env_or(
        "HONGBAO_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("crash test: {rounds} rounds, {epoch} per data directory, HONGBAO_CRASH_SEED={seed}");
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let event = Event::new();
    let mut t = Tally::default();
    let mut done = 0;
    while done < rounds {
        let n = epoch.min(rounds - done);
        let data = format!("data-{done}");
        rounds_on(&event, &data, n, &mut rng, &mut t);
        std::fs::remove_dir_all(event.path().join(&data)).unwrap();
        done += n;
        if rounds > epoch {
            eprintln!(
                "crash test: {done}/{rounds} rounds, {} acknowledged opens, {} claims, {} lost, \
                 {} duplicated so far",
                t.acknowledged, t.claims, t.lost, t.duplicates
            );
        }
    }
    eprintln!(
        "crash test: {} rounds ({} ended by SIGTERM, {} by SIGKILL), {} tickets issued, {} opens \
         acknowledged ({} of them learnt again after their answer died with the process), {} \
         claims durable; duplicated claims {}, acknowledged opens lost {}, claims of envelopes \
         not issued to their user {}, claims unanswered at a SIGTERM {} (seed {seed})",
        t.rounds,
        t.stops,
        t.rounds - t.stops,
        t.issued,
        t.acknowledged,
        t.learnt_again,
        t.claims,
        t.duplicates,
        t.lost,
        t.unissued,
        t.unanswered_at_stop
    );
    assert_eq!(t.duplicates, 0, "envelopes claimed twice (seed {seed})");
    assert_eq!(t.lost, 0, "acknowledged opens lost (seed {seed})");
    assert_eq!(
        t.unissued, 0,
        "claims of envelopes not issued to their user (seed {seed})"
    );
    assert_eq!(
        t.unanswered_at_stop, 0,
        "claims left unanswered by SIGTERM (seed {seed})"
    );
}
