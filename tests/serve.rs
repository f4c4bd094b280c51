//! `hongbao serve` over loopback, as clients see it: shake and open exactly once, every refusal
//! with its code, bad input answered while the server keeps serving, key lists reloaded live,
//! per-user caps, and a graceful stop that keeps every acknowledged claim.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{http, Event};
use hongbao::client::Client;
use hongbao::wire::ops::{ErrorCode, Reply, ShakeOutcome, OP_OPEN, OP_PING, OP_REPLY, OP_SHAKE};

fn envelope(reply: Reply) -> [u8; 64] {
    match reply {
        Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => s.token.unwrap(),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

fn error_code(reply: Reply) -> u16 {
    match reply {
        Reply::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn shake_then_open_exactly_once_across_cores() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    let mut opened = Vec::new();
    let mut amounts = Vec::new();
    let mut envelopes = HashSet::new();
    for uid in 1..=24u64 {
        let mut c = server.client(&event.auth(uid));
        let token = envelope(c.shake().unwrap());
        let envelope_id = u64::from_le_bytes(token[16..24].try_into().unwrap());
        assert!(envelopes.insert(envelope_id), "ticket issued twice");
        match c.open(&token).unwrap() {
            Reply::Open(o) => {
                assert_eq!(o.envelope_id, envelope_id);
                assert!(o.amount_cents > 0);
                assert!(!o.again && o.claimed_unix > 0);
                opened.push((envelope_id, uid));
                amounts.push(o.amount_cents);
            }
            other => panic!("{other:?}"),
        }
        // Opening again answers the same claim again (the user may have lost the answer);
        // nothing new is claimed.
        match c.open(&token).unwrap() {
            Reply::Open(o) => {
                assert!(o.again, "{o:?}");
                assert_eq!(
                    (o.envelope_id, o.amount_cents),
                    (envelope_id, *amounts.last().unwrap())
                );
            }
            other => panic!("{other:?}"),
        }
        // Another user cannot open it, on any core.
        let mut thief = server.client(&event.auth(uid + 1000));
        assert_eq!(
            error_code(thief.open(&token).unwrap()),
            ErrorCode::WrongUser as u16
        );
        // Any flipped byte is refused (a tag mismatch, or the version byte).
        for i in [0usize, 5, 17, 30, 40, 63] {
            let mut bad = token;
            bad[i] ^= 0x20;
            let code = error_code(c.open(&bad).unwrap());
            assert_eq!(code, ErrorCode::TokenInvalid as u16, "byte {i}");
        }
        // The connection is still fine after all those refusals.
        assert!(matches!(c.ping(b"ok").unwrap(), Reply::Pong(p) if p == b"ok"));
    }
    // Pipelined: many shakes, then their opens, in one write each; replies in order.
    let mut c = server.client(&event.auth(77));
    let ids: Vec<u64> = (0..32).map(|_| c.send(OP_SHAKE, &[])).collect();
    c.flush().unwrap();
    let mut tokens = Vec::new();
    for id in ids {
        let (got, reply) = c.recv().unwrap();
        assert_eq!(got, id);
        tokens.push(envelope(reply));
    }
    let ids: Vec<u64> = tokens.iter().map(|t| c.send(OP_OPEN, t)).collect();
    c.flush().unwrap();
    for (id, t) in ids.iter().zip(&tokens) {
        let (got, reply) = c.recv().unwrap();
        assert_eq!(got, *id);
        let Reply::Open(o) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            o.envelope_id,
            u64::from_le_bytes(t[16..24].try_into().unwrap())
        );
        opened.push((o.envelope_id, 77));
    }
    // HTTP: shake and open with curl-like requests.
    let auth = event.auth_hex(5000);
    let (status, body) = http(server.http, "POST", "/shake", Some(&auth), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outcome"], "envelope");
    let token = v["token"].as_str().unwrap().to_string();
    let (status, body) = http(server.http, "POST", "/open", Some(&auth), &token);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    opened.push((v["envelope_id"].as_u64().unwrap(), 5000));
    assert_eq!(v["again"], false, "{body}");
    let (status, again) = http(server.http, "POST", "/open", Some(&auth), &token);
    assert_eq!(status, 200, "{again}");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["again"], true);
    assert_eq!(again["envelope_id"], v["envelope_id"]);
    assert_eq!(again["amount_cents"], v["amount_cents"]);
    let (status, _) = http(
        server.http,
        "POST",
        "/open",
        Some(&event.auth_hex(5001)),
        &token,
    );
    assert_eq!(status, 403);
    // Both cores did work, and the metrics say so.
    let (status, metrics) = http(server.http, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("hongbao_opens_total"), opened.len() as u64);
    assert_eq!(count("hongbao_opens_again_total"), 25);
    // Every acknowledged open is a durable claim of the right user, and nothing else is.
    let mut claims = event.claims("data");
    claims.sort();
    opened.sort();
    assert_eq!(claims, opened);
}

#[test]
fn bad_input_is_answered_and_the_server_keeps_serving() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    // Before HELLO: refused, connection kept.
    let mut c = Client::connect(server.binary).unwrap();
    assert_eq!(
        error_code(c.shake().unwrap()),
        ErrorCode::Unauthenticated as u16
    );
    // A forged auth token, and an expired one.
    let mut forged = event.auth(9);
    forged[10] ^= 1;
    assert_eq!(
        error_code(c.hello(&forged).unwrap()),
        ErrorCode::AuthInvalid as u16
    );
    let expired = hongbao::token::Auth {
        uid: 9,
        expires_unix: 1_000,
    }
    .encode(&event.auth_keys);
    assert_eq!(
        error_code(c.hello(&expired).unwrap()),
        ErrorCode::AuthExpired as u16
    );
    assert_eq!(
        error_code(c.hello(b"short").unwrap()),
        ErrorCode::Malformed as u16
    );
    // Unknown op, bad payloads.
    assert!(matches!(c.hello(&event.auth(9)).unwrap(), Reply::Hello(h) if h.uid == 9));
    assert_eq!(
        error_code(c.call(0x42, b"").unwrap()),
        ErrorCode::UnknownOp as u16
    );
    assert_eq!(
        error_code(c.call(OP_SHAKE, b"x").unwrap()),
        ErrorCode::Malformed as u16
    );
    assert_eq!(
        error_code(c.open(&[0u8; 10]).unwrap()),
        ErrorCode::Malformed as u16
    );
    assert_eq!(
        error_code(c.open(&[0u8; 64]).unwrap()),
        ErrorCode::TokenInvalid as u16
    );
    assert_eq!(
        error_code(c.call(OP_PING, &[0u8; 2000]).unwrap()),
        ErrorCode::TooLarge as u16
    );
    // A frame of another protocol version is skipped and answered.
    let mut frame = vec![0u8; 16];
    frame[..4].copy_from_slice(&16u32.to_le_bytes());
    frame[4] = 9;
    frame[8..16].copy_from_slice(&555u64.to_le_bytes());
    c.send_raw(&frame);
    c.flush().unwrap();
    let (id, reply) = c.recv().unwrap();
    assert_eq!((id, error_code(reply)), (555, ErrorCode::Version as u16));
    assert!(matches!(c.ping(b"still here").unwrap(), Reply::Pong(_)));
    // An oversized frame: answered, then closed (no way to find the next frame).
    c.send_raw(&(10u32 << 20).to_le_bytes());
    c.send_raw(&[1u8; 12]);
    c.flush().unwrap();
    let (_, reply) = c.recv().unwrap();
    assert_eq!(error_code(reply), ErrorCode::TooLarge as u16);
    assert!(c.recv().is_err(), "closed after an unrecoverable frame");
    // Garbage and oversized HTTP: 4xx and closed.
    for garbage in [
        b"GARBAGE\r\n\r\n".to_vec(),
        b"DELETE /shake HTTP/1.1\r\n\r\n".to_vec(),
        [b"GET /".to_vec(), vec![b'a'; 20_000]].concat(),
        b"POST /open HTTP/1.1\r\nContent-Length: 999999\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&garbage).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let status: u16 = text[9..12].parse().unwrap();
        assert!((400..500).contains(&status), "{text}");
        // The error body every other answer has: name, code and back-off.
        let body: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        let (name, code) = if status == 413 || status == 431 {
            ("too_large", ErrorCode::TooLarge)
        } else {
            ("malformed", ErrorCode::Malformed)
        };
        assert_eq!(body["error"], name, "{text}");
        assert_eq!(body["code"], code as u16, "{text}");
        assert_eq!(body["backoff_ms"], 0, "{text}");
    }
    // Request smuggling: two different lengths are refused and the connection closed, so
    // the bytes after the first length are never taken for a request of their own.
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /nope HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcdeGET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    let (status, body) = http(server.http, "POST", "/shake", None, "");
    assert_eq!(status, 401, "{body}");
    // A token that is not 64 hex digits does not have the request's layout, as over the
    // binary protocol (HELLO with a short token above).
    let (status, body) = http(server.http, "POST", "/shake", Some("zz"), "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"malformed\""), "{body}");
    let (status, body) = http(
        server.http,
        "POST",
        "/open",
        Some(&event.auth_hex(10)),
        "abc",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"malformed\""), "{body}");
    let (status, _) = http(server.http, "GET", "/nowhere", None, "");
    assert_eq!(status, 404);
    // Still serving, on fresh connections.
    let mut c = server.client(&event.auth(10));
    let token = envelope(c.shake().unwrap());
    assert!(matches!(c.open(&token).unwrap(), Reply::Open(_)));
    let (status, body) = http(server.http, "GET", "/healthz", None, "");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn denied_keys_are_refused_after_a_live_reload() {
    let event = Event::new();
    let lists = event.path().join("keys.toml");
    std::fs::write(&lists, "deny = []\n").unwrap();
    let server = event.serve(
        "data",
        &["--cores", "1", "--no-pacing", "--key-lists", "keys.toml"],
    );
    let mut c = server.client(&event.auth(3));
    let first = envelope(c.shake().unwrap());
    let second = envelope(c.shake().unwrap());
    let key_id = u16::from_le_bytes(first[24..26].try_into().unwrap());
    assert_eq!(
        key_id,
        u16::from_le_bytes(second[24..26].try_into().unwrap())
    );
    let reloads = || -> u64 {
        let (_, m) = http(server.http, "GET", "/metrics", None, "");
        m.lines()
            .filter(|l| l.starts_with("hongbao_key_list_reloads_total"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    };
    let wait_for = |n: u64| {
        let start = Instant::now();
        while reloads() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "key lists not reloaded"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // mtime granularity: make sure the change is seen as a change.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&lists, format!("deny = [{key_id}]\n")).unwrap();
    wait_for(1);
    assert_eq!(
        error_code(c.open(&first).unwrap()),
        ErrorCode::KeyDenied as u16
    );
    // A broken file keeps the old lists.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&lists, "deny = [\"nonsense\"]\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        error_code(c.open(&first).unwrap()),
        ErrorCode::KeyDenied as u16
    );
    std::fs::write(&lists, "deny = []\n").unwrap();
    wait_for(2);
    assert!(matches!(c.open(&first).unwrap(), Reply::Open(_)));
    assert!(matches!(c.open(&second).unwrap(), Reply::Open(_)));
}

#[test]
fn per_user_caps_and_interval_are_enforced_on_every_core() {
    let event = Event::new();
    let server = event.serve(
        "data",
        &["--cores", "2", "--no-pacing", "--envelopes-per-user", "2"],
    );
    for uid in [1u64, 2, 3, 4] {
        // Several connections of one user (landing on either core) share one count.
        let mut won = 0;
        for _ in 0..3 {
            let mut c = server.client(&event.auth(uid));
            for _ in 0..2 {
                match c.shake().unwrap() {
                    Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => won += 1,
                    Reply::Shake(s) => assert_eq!(s.outcome, ShakeOutcome::Capped),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(won, 2, "uid {uid}");
    }
    drop(server);
    let server = event.serve("data2", &["--no-pacing", "--min-interval-ms", "60000"]);
    let mut c = server.client(&event.auth(1));
    envelope(c.shake().unwrap());
    match c.shake().unwrap() {
        Reply::Shake(s) => {
            assert_eq!(s.outcome, ShakeOutcome::TooSoon);
            assert!(s.backoff_ms > 50_000 && s.backoff_ms <= 60_000, "{s:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pacing_and_quota_limit_envelopes() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "1", "--quota", "20"]);
    let mut c = server.client(&event.auth(1));
    let start = Instant::now();
    let (mut won, mut shakes) = (0u64, 0u64);
    while start.elapsed() < Duration::from_millis(1500) {
        match c.shake().unwrap() {
            Reply::Shake(s) => {
                shakes += 1;
                if s.outcome == ShakeOutcome::Envelope {
                    won += 1;
                }
                assert!(matches!(
                    s.outcome,
                    ShakeOutcome::Envelope | ShakeOutcome::Nothing | ShakeOutcome::Sponsor
                ));
            }
            other => panic!("{other:?}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // At most the quota per second plus one burst (100 ms of quota), and the slot's pace.
    let bound = (20.0 * (elapsed + 0.1)).ceil() as u64 + 2;
    assert!(
        won <= bound,
        "{won} envelopes in {elapsed:.2} s over a quota of 20/s"
    );
    assert!(won >= 1 && shakes > won * 5, "{won} of {shakes}");
}

#[test]
fn sigterm_stops_gracefully_with_every_acknowledged_claim_durable() {
    let event = Event::new();
    let mut server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    let mut c = server.client(&event.auth(42));
    let ids: Vec<u64> = (0..64).map(|_| c.send(OP_SHAKE, &[])).collect();
    c.flush().unwrap();
    let tokens: Vec<[u8; 64]> = ids.iter().map(|_| envelope(c.recv().unwrap().1)).collect();
    for t in &tokens {
        c.send(OP_OPEN, t);
    }
    c.flush().unwrap();
    let mut acknowledged = Vec::new();
    for _ in &tokens {
        if let (_, Reply::Open(o)) = c.recv().unwrap() {
            acknowledged.push((o.envelope_id, 42));
        }
    }
    assert_eq!(acknowledged.len(), 64);
    let status = server.terminate();
    assert!(status.success(), "{}", server.stderr());
    let mut claims = event.claims("data");
    claims.sort();
    acknowledged.sort();
    assert_eq!(claims, acknowledged);
    // A restart recovers: the same tokens answer their claims again (nothing new is
    // claimed), new shakes get new tickets.
    let server = event.serve("data", &["--cores", "2", "--no-pacing"]);
    let mut c = server.client(&event.auth(42));
    for token in &tokens {
        match c.open(token).unwrap() {
            Reply::Open(o) => assert!(
                o.again && acknowledged.contains(&(o.envelope_id, 42)),
                "{o:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let fresh = envelope(c.shake().unwrap());
    assert!(tokens.iter().all(|t| t[16..24] != fresh[16..24]));
}

#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    // `| head -1` closes the pipe after the ready line; the server's later "stopped" line must
    // not turn into a panic (which would abort it): it stops on its own after --for and exits 0.
    let event = Event::new();
    let script = format!(
        "set -o pipefail; '{}' serve --tickets d/event/A --keyring d/keys/demo.keyring \
         --data data --auth-keys auth.keys --listen 127.0.0.1:0 --http 127.0.0.1:0 \
         --rehearse --for 2 | head -1",
        common::bin()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(event.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hongbao serve: ready"), "{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A PING frame with a 1,000-byte payload (the answer echoes it).
fn ping_frame(request_id: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(1016);
    f.extend_from_slice(&1016u32.to_le_bytes());
    f.extend_from_slice(&[hongbao::wire::frame::PROTOCOL_VERSION, OP_PING, 0, 0]);
    f.extend_from_slice(&request_id.to_le_bytes());
    f.extend_from_slice(&[7u8; 1000]);
    f
}

/// A client that pipelines far more than it reads: the server stops taking its input instead
/// of buffering it, keeps serving everybody else meanwhile, and still answers every request of
/// the flood, in order, once the client reads. Run on both network paths.
#[test]
fn a_client_that_floods_without_reading_is_held_back_and_answered_in_full() {
    let event = Event::new();
    for net in ["uring", "glommio"] {
        let data = format!("data-{net}");
        let server = event.serve(&data, &["--cores", "1", "--no-pacing", "--net", net]);
        let pid = server.child.id();
        let before = rss_kib(pid);
        let mut flood = TcpStream::connect(server.binary).unwrap();
        flood
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Write up to 64 MiB of pings without reading; stop when the server stops taking them.
        let frame_len = ping_frame(0).len();
        let mut written = 0usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut next_id = 0u64;
        while written < 64 << 20 {
            if pending.is_empty() {
                for _ in 0..64 {
                    pending.extend_from_slice(&ping_frame(next_id));
                    next_id += 1;
                }
            }
            match flood.write(&pending) {
                Ok(n) => {
                    written += n;
                    pending.drain(..n);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => panic!("{net}: flood write failed: {e}"),
            }
        }
        assert!(
            written < 64 << 20,
            "{net}: the server took all 64 MiB without the client reading a byte"
        );
        // Everybody else is still served.
        let mut other = server.client(&event.auth(5));
        assert!(
            matches!(other.ping(b"hi").unwrap(), Reply::Pong(_)),
            "{net}"
        );
        assert!(matches!(other.shake().unwrap(), Reply::Shake(_)), "{net}");
        let grown = rss_kib(pid).saturating_sub(before);
        assert!(
            grown < 48 << 10,
            "{net}: server memory grew by {grown} KiB while one client flooded it"
        );
        // Every whole frame written is answered, in order.
        let answered = written / frame_len;
        flood
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut header = [0u8; 16];
        let mut body = vec![0u8; 2048];
        for expected in 0..answered as u64 {
            flood.read_exact(&mut header).unwrap();
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            let id = u64::from_le_bytes(header[8..16].try_into().unwrap());
            assert_eq!(
                (id, header[5]),
                (expected, OP_REPLY | OP_PING),
                "{net}: answer out of order"
            );
            flood.read_exact(&mut body[..len - 16]).unwrap();
        }
        drop(flood);
        assert!(
            matches!(other.ping(b"bye").unwrap(), Reply::Pong(_)),
            "{net}"
        );
    }
}

/// Both network paths serve both protocols the same way (the HTTP and binary tests above run
/// on the default io_uring path).
#[test]
fn the_glommio_network_path_serves_shakes_and_opens() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2", "--no-pacing", "--net", "glommio"]);
    let mut c = server.client(&event.auth(21));
    let token = envelope(c.shake().unwrap());
    assert!(matches!(c.open(&token).unwrap(), Reply::Open(o) if !o.again));
    assert!(matches!(c.open(&token).unwrap(), Reply::Open(o) if o.again));
    let (status, body) = http(server.http, "POST", "/shake", Some(&event.auth_hex(22)), "");
    assert_eq!(status, 200, "{body}");
}

/// With a single receive buffer per core, hundreds of connections sending at once keep running
/// out of buffers (their receives end with ENOBUFS and are re-armed): every request is still
/// answered exactly once and in order.
#[test]
fn receive_buffer_exhaustion_loses_nothing() {
    let event = Event::new();
    std::fs::write(
        event.path().join("tiny.toml"),
        "[server]\nrecv_buffers = 1\n",
    )
    .unwrap();
    let server = event.serve("data", &["--cores", "2", "--config", "tiny.toml"]);
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.binary).unwrap())
        .collect();
    let per_conn = 40u64;
    for c in conns.iter_mut() {
        let burst: Vec<u8> = (0..per_conn).flat_map(ping_frame).collect();
        c.write_all(&burst).unwrap();
    }
    let mut header = [0u8; 16];
    let mut body = vec![0u8; 2048];
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for expected in 0..per_conn {
            c.read_exact(&mut header).unwrap();
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            let id = u64::from_le_bytes(header[8..16].try_into().unwrap());
            assert_eq!(id, expected);
            c.read_exact(&mut body[..len - 16]).unwrap();
            assert!(
                body[..len - 16].iter().all(|&b| b == 7),
                "payload echoed intact"
            );
        }
    }
    let mut c = server.client(&event.auth(3));
    assert!(matches!(c.shake().unwrap(), Reply::Shake(_)));
    // The path under test was taken.
    let (_, metrics) = http(server.http, "GET", "/metrics", None, "");
    let nobufs: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("hongbao_recv_nobufs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(nobufs > 0, "no receive ran out of buffers:\n{metrics}");
}

/// Far more small requests in one read than a connection may have in flight (4,096): the rest
/// wait in the decoder and are started as answers go out; every one is answered, in order.
/// Run on both network paths.
#[test]
fn a_read_with_more_requests_than_may_be_in_flight_is_answered_in_full() {
    let event = Event::new();
    for net in ["uring", "glommio"] {
        let data = format!("data-{net}");
        let server = event.serve(&data, &["--cores", "1", "--no-pacing", "--net", net]);
        let stream = TcpStream::connect(server.binary).unwrap();
        const N: u64 = 20_000;
        let mut batch = Vec::with_capacity(16 * N as usize);
        for id in 0..N {
            batch.extend_from_slice(&16u32.to_le_bytes());
            batch.extend_from_slice(&[hongbao::wire::frame::PROTOCOL_VERSION, OP_PING, 0, 0]);
            batch.extend_from_slice(&id.to_le_bytes());
        }
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || writer.write_all(&batch).unwrap());
        let mut reader = stream;
        reader
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut header = [0u8; 16];
        for expected in 0..N {
            reader.read_exact(&mut header).unwrap();
            let len = u32::from_le_bytes(header[..4].try_into().unwrap());
            let id = u64::from_le_bytes(header[8..16].try_into().unwrap());
            assert_eq!(
                (len, id, header[5]),
                (16, expected, OP_REPLY | OP_PING),
                "{net}: answer {expected}"
            );
        }
        sending.join().unwrap();
    }
}

/// Runs `hongbao serve` expected to refuse to start; returns its exit code and standard error
/// (killed after 20 s if it wrongly starts serving).
fn serve_refused(event: &Event, data: &str, listen: &str, http: &str) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(common::bin())
        .args(common::serve_args(data, listen, http))
        .current_dir(event.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// One server per data directory (two would issue the same tickets twice), and a server never
/// joins another's port (SO_REUSEPORT would let it, and clients would be spread over both).
/// After the first server is killed with -9, its data directory can be served again.
#[test]
fn a_second_server_on_the_same_data_or_port_is_refused() {
    let event = Event::new();
    let mut first = event.serve("data", &["--cores", "1"]);
    let (code, err) = serve_refused(&event, "data", "127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is in use by another hongbao serve")
            && err.contains(&format!("(pid {})", first.child.id())),
        "{err}"
    );
    // Every refusal is one clear line, never a backtrace (a blocking job of the refused
    // server's log outliving its executor panicked in some starts: vendor/PATCHES.md).
    for _ in 0..20 {
        let (code, err) = serve_refused(&event, "data2", &first.binary.to_string(), "127.0.0.1:0");
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("the port is in use by another process"),
            "{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace") && !err.contains("fatal"),
            "{err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
    }
    let (code, err) = serve_refused(&event, "data3", "127.0.0.1:0", &first.http.to_string());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("HTTP listener") && err.contains("in use"),
        "{err}"
    );
    // The first server still serves; once it is gone, its directory and port are free again.
    let mut c = first.client(&event.auth(9));
    assert!(matches!(c.ping(b"x").unwrap(), Reply::Pong(_)));
    first.kill9();
    let again = event.serve("data", &["--cores", "1"]);
    let mut c = again.client(&event.auth(9));
    assert!(matches!(c.shake().unwrap(), Reply::Shake(_)));
}
