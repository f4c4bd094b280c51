//! The server against its descriptor limit (set low with `prlimit`): connections beyond what
//! the limit allows (keeping a reserve for the log) are closed at once, the log keeps working,
//! the server says how to raise the limit, and it serves new clients once the flood is gone.
//! Both network paths.

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

#[test]
fn connections_beyond_the_descriptor_limit_are_shed_and_the_log_keeps_working() {
    raise_own_nofile();
    for net in ["uring", "glommio"] {
        let event = Event::new();
        let server = event.serve_under(
            &["prlimit", "--nofile=512:512"],
            &format!("data-{net}"),
            &["--cores", "1", "--no-pacing", "--net", net],
        );
        // A client from before the flood.
        let mut early = server.client(&event.auth(7));
        let flood: Vec<TcpStream> = (0..1000)
            .filter_map(|_| TcpStream::connect(server.binary).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let mut shed = 0;
        for s in &flood {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            if matches!((&*s).read(&mut b), Ok(0)) {
                shed += 1;
            }
        }
        // 512 - 128 reserved = 384 connections for one core (the early client is one of them).
        assert!(
            (1000 - 384..=1000 - 300).contains(&shed),
            "{net}: {shed} of 1000 flood connections were closed"
        );
        // The log still opens, writes and syncs: a claim made now is durable and answered.
        let token = match early.shake().unwrap() {
            Reply::Shake(s) => s.token.expect("no pacing: every shake wins"),
            other => panic!("{net}: {other:?}"),
        };
        assert!(
            matches!(early.open(&token).unwrap(), Reply::Open(_)),
            "{net}"
        );
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
}
