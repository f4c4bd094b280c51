//! In-process hot path of one server core, without sockets and without fsync: shakes (admission,
//! issue under reservations, shake-token CBC-MAC, signed one by one as for an unpipelined
//! connection, or 16 together as the server signs the answers of a pipelined read) and opens (token check, keyring decrypt, key
//! lists, claim bit, claim record appended, answered at batch completion), driven through the
//! same engine the server runs, with the log's batches "written" to memory. Peer measured in the
//! same run: one AES-128 block encryption per operation (the floor of any sealed-token design).
//!
//! Run: `cargo bench --bench serve -- [--ops N]`. Under `cargo test --all-targets` it does a
//! small smoke run. `bench/callgrind-serve.sh` runs it under callgrind: each phase is its own
//! never-inlined function, so instructions per operation are the phase's inclusive cost / N.

#[path = "common.rs"]
mod common;

use std::time::Instant;

use aes::cipher::{BlockEncrypt, KeyInit};
use clap::Parser;
use hongbao::serve::config::ConfigFile;
use hongbao::shake::engine::{Engine, OpenRequest, Route};
use hongbao::ticket::lists::KeyLists;
use hongbao::ticket::Keyring;
use hongbao::token::{Shake, TokenBody, TokenKeys, SHAKE_TOKEN_BYTES};
use hongbao::wire::ops::{OpResult, ShakeOutcome};

#[derive(Parser)]
struct Args {
    /// Shakes of each kind, and opens (default 4,000,000; 20,000 for the smoke run).
    #[arg(long)]
    ops: Option<u64>,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Runs every pending batch "to disk" (memory) and returns the answers.
fn drain(engine: &mut Engine, answers: &mut Vec<(Route, OpResult)>) {
    while let Some(batch) = engine.take_batch() {
        std::hint::black_box(&batch.bytes);
        engine.batch_done(batch.end, 0, answers);
    }
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let n = args.ops.unwrap_or(if smoke { 20_000 } else { 4_000_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    // Two hosts (a backup park is required); host h gets about half.
    common::generate_event(dir.path(), 4 * n + 40_000);
    hongbao::serve::keys::create_key_file(&dir.path().join("auth.keys")).expect("auth keys");
    let mut file = ConfigFile::default();
    file.server.tickets = Some(dir.path().join("event/A"));
    file.server.keyring = Some(dir.path().join("bench.keyring"));
    file.server.data = Some(dir.path().join("data"));
    file.server.auth_keys = Some(dir.path().join("auth.keys"));
    file.server.rehearse = Some(true);
    file.server.host = Some("h".into());
    file.pacing.enabled = Some(false);
    let config = file.resolve().expect("config");
    let mut prepared = hongbao::serve::setup::prepare(&config, 1).expect("prepare");
    let keyring = prepared.keyring;
    let token_keys = prepared.token_keys.clone();
    let lists = KeyLists::default();
    let mut engine = Engine::new(prepared.cores.remove(0).parts);
    engine.warm_up();
    let mut answers = Vec::new();
    drain(&mut engine, &mut answers);
    let now = hongbao::serve::setup::now_ms() + 1_000;

    // Shakes: every one wins (no pacing), as the hardest case. The tokens are kept for the
    // opens in memory touched beforehand: a server writes them into a reused reply buffer, so
    // first-touch page faults of a fresh 256 MiB vector are not part of a shake's cost.
    let mut tokens = touched(n);
    let started = Instant::now();
    phase_shakes_that_win(&mut engine, &token_keys, 0, now, &mut tokens);
    let shake_s = started.elapsed().as_secs_f64();
    let mut tokens = touched(n);
    let started = Instant::now();
    phase_shakes_that_win_pipelined(&mut engine, &token_keys, n, now, &mut tokens);
    let piped_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    phase_opens(&mut engine, &tokens, &token_keys, &keyring, &lists);
    let open_s = started.elapsed().as_secs_f64();

    // Losing shakes: pacing on with a quota of one envelope per second, so nearly every shake
    // is decided by the buckets alone (the common case in a real event).
    engine.set_pacing(
        true,
        hongbao::admission::PacingConfig {
            quota_per_second: 1,
            ..Default::default()
        },
    );
    let started = Instant::now();
    phase_shakes_that_lose(&mut engine, n, now);
    let lose_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    phase_peer_aes(n);
    let aes_s = started.elapsed().as_secs_f64();
    report(
        n,
        smoke,
        &[
            ("shake that wins, token signed alone", shake_s),
            (
                "shake that wins, tokens signed 16 at a time (a pipelined read)",
                piped_s,
            ),
            (
                "shake that loses (caps + pacing + quota + sponsor roll)",
                lose_s,
            ),
            ("open (check token + decrypt + claim + record)", open_s),
            ("peer: one AES-128 block", aes_s),
        ],
    );
}

/// Room for `n` tokens, every page written once (the vector is then emptied).
fn touched(n: u64) -> Vec<[u8; SHAKE_TOKEN_BYTES]> {
    let mut v = vec![[1u8; SHAKE_TOKEN_BYTES]; n as usize];
    std::hint::black_box(&mut v);
    v.clear();
    v
}

/// Winning shakes, each token signed as soon as it is issued (what the server does for a
/// connection that sends one request at a time).
#[inline(never)]
fn phase_shakes_that_win(e: &mut Engine, k: &TokenKeys, first: u64, now: u64, t: &mut Tokens) {
    win_signed(e, k, first, now, t, 1);
}

/// Winning shakes whose tokens are signed 16 at a time, as the server signs the answers of a
/// pipelined read of 16 shakes (their AES chains interleave).
#[inline(never)]
fn phase_shakes_that_win_pipelined(
    e: &mut Engine,
    k: &TokenKeys,
    first: u64,
    now: u64,
    t: &mut Tokens,
) {
    win_signed(e, k, first, now, t, 16);
}

type Tokens = Vec<[u8; SHAKE_TOKEN_BYTES]>;

/// Winning shakes of uids `first..first + tokens.capacity()`, their tokens signed `batch` at a
/// time (one by one for 1).
fn win_signed(
    engine: &mut Engine,
    keys: &TokenKeys,
    first: u64,
    now: u64,
    tokens: &mut Tokens,
    batch: usize,
) {
    let n = tokens.capacity() as u64;
    let mut read: Vec<TokenBody> = Vec::with_capacity(batch);
    win(engine, first, n, now, |body| {
        if batch == 1 {
            tokens.push(keys.sign(&body));
            return;
        }
        read.push(body);
        if read.len() == batch {
            keys.sign_all(&read, tokens);
            read.clear();
        }
    });
    keys.sign_all(&read, tokens);
    assert_eq!(tokens.len() as u64, n, "every shake won");
}

/// Shakes of uids `first..first + n` (every one wins), the token bodies handed to `take`.
fn win(engine: &mut Engine, first: u64, n: u64, now: u64, mut take: impl FnMut(TokenBody)) {
    let mut answers = Vec::new();
    for uid in first..first + n {
        match engine.shake(uid, now, Route::Local(uid)) {
            Some(OpResult::Shake(s)) if s.outcome == ShakeOutcome::Envelope => {
                take(s.token.expect("token"))
            }
            Some(other) => panic!("shake answered {other:?}"),
            None => {}
        }
        if uid % 1024 == 1023 {
            drain(engine, &mut answers);
            for (_, a) in answers.drain(..) {
                if let OpResult::Shake(s) = a {
                    take(s.token.expect("token"));
                }
            }
        }
    }
    drain(engine, &mut answers);
    for (_, a) in answers.drain(..) {
        if let OpResult::Shake(s) = a {
            take(s.token.expect("token"));
        }
    }
}

/// Opens: the full check path of the connection's core plus the owner's claim.
#[inline(never)]
fn phase_opens(
    engine: &mut Engine,
    tokens: &[[u8; 64]],
    token_keys: &TokenKeys,
    keyring: &Keyring,
    lists: &KeyLists,
) {
    let mut answers = Vec::new();
    let mut opened = 0u64;
    for (i, token) in tokens.iter().enumerate() {
        let shake = Shake::decode(token, token_keys).expect("our token");
        let ticket = shake.ticket.open(keyring).expect("opens");
        assert!(lists.allows(ticket.key_id));
        let req = OpenRequest {
            uid: shake.uid,
            record: shake.ticket,
            ticket,
            issuing_core: shake.issuing_core,
            now_unix: 0,
        };
        assert!(engine.open(req, Route::Local(i as u64)).is_none());
        if i % 4096 == 4095 {
            drain(engine, &mut answers);
            opened += answers.drain(..).count() as u64;
        }
    }
    drain(engine, &mut answers);
    opened += answers.drain(..).count() as u64;
    assert_eq!(opened, tokens.len() as u64, "every open answered");
}

#[inline(never)]
fn phase_shakes_that_lose(engine: &mut Engine, n: u64, now: u64) {
    let mut lost = 0u64;
    for uid in 0..n {
        match engine.shake(uid, now + uid / 1_000_000, Route::Local(uid)) {
            Some(OpResult::Shake(s)) if s.outcome != ShakeOutcome::Envelope => lost += 1,
            _ => {}
        }
    }
    assert!(lost >= n - 1_000, "{lost} of {n} shakes lost");
}

/// Peer: one AES-128 block per operation.
#[inline(never)]
fn phase_peer_aes(n: u64) {
    let cipher = aes::Aes128::new(&[3u8; 16].into());
    let mut block = aes::Block::default();
    for i in 0..n {
        block[..8].copy_from_slice(&i.to_le_bytes());
        cipher.encrypt_block(&mut block);
        std::hint::black_box(&block);
    }
}

fn report(n: u64, smoke: bool, rows: &[(&str, f64)]) {
    let aes_s = rows.last().expect("the peer is the last row").1;
    let rate = |s: f64| n as f64 / s / 1e6;
    if smoke {
        println!("smoke run ({n} ops); `cargo bench --bench serve` measures for real");
    }
    println!("## In-process hot path of one core (no sockets, no fsync)\n");
    println!(
        "- command: `cargo bench --bench serve -- --ops {n}`\n- machine: {}\n- date: {}\n",
        common::machine(),
        common::today()
    );
    println!("| operation | M ops/s | ns/op | vs one AES block |");
    println!("|---|---:|---:|---:|");
    for &(name, s) in rows {
        println!(
            "| {name} | {:.2} | {:.0} | {:.1}x |",
            rate(s),
            s * 1e9 / n as f64,
            s / aes_s
        );
    }
}
