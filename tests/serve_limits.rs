//! The server against its descriptor limit (set low with `prlimit`). On glommio's sockets,
//! connections beyond what the limit allows (keeping a reserve for the log) are closed at
//! once, the log keeps working, the server says how to raise the limit, and it serves new
//! clients once the flood is gone. The io_uring path is not bound by the limit (direct
//! descriptors) but by `server.connections_max`.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use common::Event;
use hongbao::client::Client;
use hongbao::wire::ops::Reply;

/// Lets this test process hold the flood's client sockets.
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(8192);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Connections still open (nothing to read, or unread data) and shed (closed by the server).
fn held_and_shed(flood: &[TcpStream]) -> (usize, usize) {
    let (mut held, mut shed) = (0, 0);
    for s in flood {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => shed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held += 1,
            _ => {}
        }
    }
    (held, shed)
}

/// The log still opens, writes and syncs: a claim made now is durable and answered.
fn claim_works(net: &str, early: &mut Client) {
    let token = match early.shake().unwrap() {
        Reply::Shake(s) => s.token.expect("no pacing: every shake wins"),
        other => panic!("{net}: {other:?}"),
    };
    assert!(
        matches!(early.open(&token).unwrap(), Reply::Open(_)),
        "{net}"
    );
}

#[test]
fn glommio_sockets_beyond_the_descriptor_limit_are_shed_and_the_log_keeps_working() {
    raise_own_nofile();
    let net = "glommio";
    let event = Event::new();
    let server = event.serve_under(
        &["prlimit", "--nofile=512:512"],
        "data",
        &["--cores", "1", "--no-pacing", "--net", net],
    );
    // A client from before the flood.
    let mut early = server.client(&event.auth(7));
    let flood: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(server.binary).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (_, shed) = held_and_shed(&flood);
    // 512 - 128 reserved = 384 connections for one core (the early client is one of them).
    assert!(
        (1000 - 384..=1000 - 300).contains(&shed),
        "{net}: {shed} of 1000 flood connections were closed"
    );
    claim_works(net, &mut early);
    let log = server.stderr();
    assert!(
        log.contains("allows 384 connections per core"),
        "{net}: {log}"
    );
    assert!(!log.contains("fatal"), "{net}: {log}");
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client::connect(server.binary)
        .unwrap_or_else(|e| panic!("{net}: {e}; server log:\n{}", server.stderr()));
    match c.ping(b"back") {
        Ok(Reply::Pong(p)) => assert_eq!(p, b"back"),
        other => panic!("{net}: not serving again: {other:?}"),
    }
}

/// The io_uring path holds its sockets as direct descriptors, outside the descriptor table: a
/// limit of 512 descriptors does not bound it. 1,000 connections spread over several rings
/// (each ring's table is capped by the limit) and every one of them is served; the log keeps
/// its descriptors. Then `server.connections_max` bounds a core, and the rest are shed.
#[test]
fn the_io_uring_path_serves_more_connections_than_the_descriptor_limit() {
    raise_own_nofile();
    let event = Event::new();
    let mut server = event.serve_under(
        &["prlimit", "--nofile=512:512"],
        "data",
        &["--cores", "1", "--no-pacing", "--net", "uring"],
    );
    let mut early = server.client(&event.auth(7));
    let mut flood: Vec<Client> = (0..1000)
        .map(|i| {
            Client::connect(server.binary)
                .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", server.stderr()))
        })
        .collect();
    for (i, c) in flood.iter_mut().enumerate() {
        let payload = (i as u32).to_le_bytes();
        match c.ping(&payload) {
            Ok(Reply::Pong(p)) => assert_eq!(p, payload, "connection {i}"),
            other => panic!("connection {i}: {other:?}; log:\n{}", server.stderr()),
        }
    }
    claim_works("uring", &mut early);
    // The early client, the flood, and the metrics request itself.
    let metrics = common::http(server.http, "GET", "/metrics", None, "").1;
    let open: u64 = metrics
        .lines()
        .find(|l| l.starts_with("hongbao_connections_open"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(open, 1002, "{metrics}");
    // 512 slots per ring (the descriptor limit): 1,003 connections take two rings, and no
    // connection was accepted into a full table.
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {metrics}"))
    };
    assert_eq!(gauge("hongbao_net_rings"), 2, "{metrics}");
    assert_eq!(gauge("hongbao_accept_table_full_total"), 0, "{metrics}");
    let log = server.stderr();
    assert!(!log.contains("fatal") && !log.contains("failed"), "{log}");
    // A graceful stop shuts every connection's reads, in every ring (through the ring: they
    // are direct descriptors), and the server drains and exits without cutting any.
    let status = server.terminate();
    let log = server.stderr();
    assert!(status.success(), "{status:?}: {log}");
    assert!(!log.contains("cutting"), "{log}");
    drop(flood);
    drop(early);

    // The configured bound holds on this path too.
    std::fs::write(
        event.path().join("bound.toml"),
        "[server]\nconnections_max = 300\n",
    )
    .unwrap();
    let server = event.serve_under(
        &["prlimit", "--nofile=512:512"],
        "data-bound",
        &[
            "--cores",
            "1",
            "--no-pacing",
            "--net",
            "uring",
            "--config",
            "bound.toml",
        ],
    );
    let flood: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(server.binary).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (held, shed) = held_and_shed(&flood);
    assert_eq!((held, shed), (300, 700), "{}", server.stderr());
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client::connect(server.binary).unwrap();
    match c.ping(b"back") {
        Ok(Reply::Pong(p)) => assert_eq!(p, b"back"),
        other => panic!("not serving again: {other:?}"),
    }
}
