//! The server out of file descriptors (its own process limit set low): connections over the
//! limit cannot be accepted, the accept loop says so and pauses instead of spinning, and once
//! clients go away the server accepts and serves again. A separate test binary, because the
//! limit is set on the test process for the child to inherit.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::Event;
use hongbao::client::Client;
use hongbao::wire::ops::Reply;

fn set_nofile(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn out_of_descriptors_the_server_pauses_accepting_and_recovers() {
    for net in ["uring", "glommio"] {
        let event = Event::new();
        set_nofile(256);
        let server = event.serve(&format!("data-{net}"), &["--cores", "1", "--net", net]);
        set_nofile(4096);
        // Far more connections than the server has descriptors for. The kernel completes the
        // handshakes (backlog); the server cannot accept them all.
        let flood: Vec<TcpStream> = (0..600)
            .filter_map(|_| TcpStream::connect(server.binary).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let log = server.stderr();
        assert!(log.contains("accept failed"), "{net}: {log}");
        let failures = log.matches("accept failed").count();
        assert!(
            failures < 200,
            "{net}: {failures} accept errors in 0.5 s: the accept loop spins"
        );
        drop(flood);
        // Descriptors come back as the server sees the flood's connections close; a new
        // client (which waits in the backlog meanwhile) is served.
        let mut c = Client::connect(server.binary).unwrap();
        match c.ping(b"back") {
            Ok(Reply::Pong(p)) => assert_eq!(p, b"back"),
            other => panic!("{net}: not serving again: {other:?}"),
        }
    }
}
