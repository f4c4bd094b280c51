//! Test harness for `hongbao serve`: a generated demo event, an auth key file, and a server
//! process on ephemeral loopback ports that is killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hongbao::client::Client;
use hongbao::token::{Auth, TokenKeys};
use hongbao::wire::ops::Reply;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hongbao")
}

pub fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("binary runs")
}

/// A generated event (the demo plan) with its keyring and an auth key file.
pub struct Event {
    pub dir: tempfile::TempDir,
    pub auth_keys: TokenKeys,
}

impl Event {
    pub fn new() -> Event {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            &["demo", "--dir", "d", "--no-serve", "--seed", "7"],
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(&["auth-keys", "--out", "auth.keys"], dir.path());
        assert!(out.status.success());
        let (auth_keys, _) =
            hongbao::serve::keys::load_key_file(&dir.path().join("auth.keys")).unwrap();
        Event { dir, auth_keys }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn auth(&self, uid: u64) -> [u8; 32] {
        Auth {
            uid,
            expires_unix: (hongbao::gen::now_unix() + 3600) as u32,
        }
        .encode(&self.auth_keys)
    }

    pub fn auth_hex(&self, uid: u64) -> String {
        hex::encode(self.auth(uid))
    }

    /// Starts a server on this event with data in `data` (relative to the event dir).
    pub fn serve(&self, data: &str, extra: &[&str]) -> Server {
        self.serve_under(&[], data, extra)
    }

    /// As `serve`, with the server started through `wrapper` (e.g. `prlimit --nofile=..`).
    pub fn serve_under(&self, wrapper: &[&str], data: &str, extra: &[&str]) -> Server {
        let mut args: Vec<&str> = wrapper[1.min(wrapper.len())..].to_vec();
        let program = if wrapper.is_empty() {
            bin()
        } else {
            wrapper[0]
        };
        if !wrapper.is_empty() {
            args.push(bin());
        }
        args.extend(serve_args(data, "127.0.0.1:0", "127.0.0.1:0"));
        args.extend_from_slice(extra);
        Server::start_program(program, self.path(), &args)
    }

    /// Durable claims as (envelope id, uid), in log order, read with `hongbao claims`.
    pub fn claims(&self, data: &str) -> Vec<(u64, u64)> {
        let out = run(&["claims", "--data", data], self.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ordinal = v["shard_ordinal"].as_u64().unwrap();
                let index = v["index"].as_u64().unwrap();
                (ordinal << 32 | index, v["uid"].as_u64().unwrap())
            })
            .collect()
    }
}

pub struct Server {
    pub child: Child,
    pub binary: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    pub fn start(cwd: &Path, args: &[&str]) -> Server {
        Server::start_program(bin(), cwd, args)
    }

    pub fn start_program(program: &str, cwd: &Path, args: &[&str]) -> Server {
        let log = cwd.join(format!("serve-{}.err", rand_suffix()));
        let mut child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().unwrap();
        // Lines of stdout through a channel (and drained after "ready", so the server never
        // blocks on it): a server that never gets ready fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ready = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("hongbao serve: ready") => break line,
                Ok(_) => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server did not start ({}): {}",
                        if matches!(e, std::sync::mpsc::RecvTimeoutError::Timeout) {
                            "not ready within 60 s"
                        } else {
                            "it exited"
                        },
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        let words: Vec<&str> = ready.split_whitespace().collect();
        let binary = words[words.iter().position(|w| *w == "binary").unwrap() + 1]
            .parse()
            .unwrap();
        let http = words[words.iter().position(|w| *w == "http").unwrap() + 1]
            .parse()
            .unwrap();
        Server {
            child,
            binary,
            http,
            log,
        }
    }

    pub fn client(&self, auth: &[u8]) -> Client {
        let mut c = Client::connect(self.binary).unwrap();
        match c.hello(auth).unwrap() {
            Reply::Hello(_) => c,
            other => panic!("HELLO: {other:?}"),
        }
    }

    /// Users `uids`, each shaking `shakes` times and opening every envelope won: the
    /// acknowledged opens as (envelope id, uid, cents). Any other answer to an open fails.
    pub fn shake_and_open(
        &self,
        event: &Event,
        uids: std::ops::RangeInclusive<u64>,
        shakes: usize,
    ) -> Vec<(u64, u64, u32)> {
        use hongbao::wire::ops::ShakeOutcome;
        let mut opened = Vec::new();
        for uid in uids {
            let mut c = self.client(&event.auth(uid));
            for _ in 0..shakes {
                let token = match c.shake().unwrap() {
                    Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => s.token.unwrap(),
                    _ => continue,
                };
                match c.open(&token).unwrap() {
                    Reply::Open(o) => opened.push((o.envelope_id, uid, o.amount_cents)),
                    other => panic!("an open was not acknowledged: {other:?}"),
                }
            }
        }
        opened
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric of `/metrics`, summed over its series (cores, labels).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = http(self.http, "GET", "/metrics", None, "");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits up to 30 s for metric `name` to satisfy `ok` (described by `what`); counters are
    /// published by each core's 10 ms tick.
    pub fn wait_metric(&self, name: &str, what: &str, ok: impl Fn(u64) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok(self.metric(name)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stayed at {} (not {what}) for 30 s",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits up to 30 s for `done`; `what` says what did not happen.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} (30 s)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `hongbao serve` arguments for this event's demo tickets (a rehearsal), data in `data`,
/// listening on `listen` (binary) and `http`.
pub fn serve_args<'a>(data: &'a str, listen: &'a str, http: &'a str) -> [&'a str; 14] {
    [
        "serve",
        "--tickets",
        "d/event/A",
        "--keyring",
        "d/keys/demo.keyring",
        "--data",
        data,
        "--auth-keys",
        "auth.keys",
        "--listen",
        listen,
        "--http",
        http,
        "--rehearse",
    ]
}

/// A data directory with `n` claims per core, written as a server writes them.
pub fn write_claims(data: &Path, cores: u16, n: u32) -> Vec<(u64, u64, u32)> {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("event.json"),
        r#"{"format":"hongbao-data-1","event":"e","variant":"A","generation":"g","host":"h1"}"#,
    )
    .unwrap();
    let mut all = Vec::new();
    for core in 0..cores {
        let options = hongbao::store::StoreOptions {
            segment_bytes_max: 2 << 20,
            ..hongbao::store::StoreOptions::default()
        };
        let dir = data.join(format!("core-{core}"));
        let (mut log, _) = hongbao::store::FileLog::open(&dir, core, options, |_, _| {}).unwrap();
        for i in 0..n {
            let envelope = (u64::from(core) << 32) | u64::from(i);
            let uid = u64::from(i % 97) + 1;
            let cents = 1 + i.wrapping_mul(7919) % 20_000;
            let c = hongbao::ledger::ClaimRecord {
                envelope_id: zerocopy::little_endian::U64::new(envelope),
                uid: zerocopy::little_endian::U64::new(uid),
                amount_cents: zerocopy::little_endian::U32::new(cents),
                batch_id: zerocopy::little_endian::U16::new(1),
                key_id: zerocopy::little_endian::U16::new(1),
                claimed_unix: zerocopy::little_endian::U32::new(1_800_000_000),
                issuing_core: zerocopy::little_endian::U16::new(core),
                reserved: zerocopy::little_endian::U16::new(0),
            };
            log.append(
                hongbao::ledger::KIND_CLAIM,
                uid,
                u64::from(i),
                zerocopy::IntoBytes::as_bytes(&c),
            )
            .unwrap();
            if i % 1000 == 999 {
                log.commit().unwrap();
            }
            all.push((envelope, uid, cents));
        }
        log.close().unwrap();
    }
    all.sort();
    all
}

/// A PostgreSQL database of its own for one test, dropped at the end; None (after one line
/// saying how to enable it) when no server is configured, a failure under CI.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

pub fn test_database(test: &str) -> Option<TestDb> {
    let Ok(admin) = std::env::var("HONGBAO_TEST_PG") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: source .ci/services.sh first"
        );
        eprintln!(
            "skipped {test}: needs PostgreSQL; run `source .ci/services.sh` (as root) to enable"
        );
        return None;
    };
    let name = format!(
        "hb_{}_{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id()
    );
    let mut client =
        postgres::Client::connect(&admin, postgres::NoTls).expect("HONGBAO_TEST_PG connects");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        client
            .batch_execute(&sql)
            .expect("create the test database");
    }
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("a URL with a database");
    Some(TestDb {
        url: format!("{base}/{name}"),
        admin,
        name,
    })
}

impl TestDb {
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
