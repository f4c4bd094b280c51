//! Every signal an operator or a supervisor may send is handled or ignored, never a kill by
//! the default action (README, "Signals"): SIGHUP reloads the key lists and the reloadable
//! settings, SIGUSR1 prints a status line, SIGUSR2 / SIGALRM / SIGPIPE / SIGXFSZ are ignored,
//! SIGQUIT (like SIGTERM and SIGINT) stops gracefully.

mod common;

use std::time::Duration;

use common::{wait_until, Event};
use hongbao::wire::ops::{ErrorCode, Reply, ShakeOutcome};

fn signal(server: &common::Server, sig: i32) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(server.child.id() as i32, sig);
    }
}

#[test]
fn signals_reload_report_are_ignored_or_stop_gracefully() {
    let event = Event::new();
    let lists = event.path().join("keys.toml");
    std::fs::write(&lists, "deny = []\n").unwrap();
    let settings = event.path().join("serve.toml");
    std::fs::write(&settings, "[pacing]\nenabled = false\n").unwrap();
    let mut server = event.serve(
        "data",
        &[
            "--cores",
            "1",
            "--config",
            "serve.toml",
            "--key-lists",
            "keys.toml",
        ],
    );
    let mut c = server.client(&event.auth(3));
    let Reply::Shake(s) = c.shake().unwrap() else {
        panic!()
    };
    let token = s.token.expect("pacing is off: every shake wins");
    let key_id = u16::from_le_bytes(token[24..26].try_into().unwrap());

    // Ignored: the server goes on.
    for sig in [libc::SIGUSR2, libc::SIGALRM, libc::SIGPIPE, libc::SIGXFSZ] {
        signal(&server, sig);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(c.ping(b"alive").unwrap(), Reply::Pong(_)));
    assert!(server.child.try_wait().unwrap().is_none());

    // SIGUSR1: a status line.
    signal(&server, libc::SIGUSR1);
    wait_until("no status line after SIGUSR1", || {
        server.stderr().contains("hongbao serve: status:")
    });

    // SIGHUP: the key lists are read again even though their file's time did not change
    // (polling would not see it), and the settings file's reloadable settings.
    let mtime = std::fs::metadata(&lists).unwrap().modified().unwrap();
    std::fs::write(&lists, format!("deny = [{key_id}]\n")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&lists)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::write(
        &settings,
        "[pacing]\nenabled = true\nquota_per_second = 1\n[store]\ndisk_free_min_mb = 1073741824\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.metric("hongbao_key_list_reloads_total"), 0);
    signal(&server, libc::SIGHUP);
    wait_until("key lists not reloaded on SIGHUP", || {
        server.metric("hongbao_key_list_reloads_total") == 1
    });
    wait_until("the watermark not reloaded on SIGHUP", || {
        server.metric("hongbao_disk_low") == 1
    });
    assert_eq!(
        server.metric("hongbao_disk_free_min_bytes"),
        1073741824u64 << 20
    );
    match c.open(&token).unwrap() {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::KeyDenied as u16),
        other => panic!("{other:?}"),
    }
    // Pacing is on again: at most a few of many shakes win.
    let mut won = 0;
    for uid in 100..160u64 {
        let mut u = server.client(&event.auth(uid));
        if matches!(u.shake().unwrap(), Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope) {
            won += 1;
        }
    }
    assert!(
        won <= 5,
        "{won} of 60 shakes won after pacing was turned on"
    );
    // A settings file that does not parse keeps every current setting.
    std::fs::write(&settings, "[pacing]\nenabled = maybe\n").unwrap();
    signal(&server, libc::SIGHUP);
    wait_until("no word of the bad settings file", || {
        server.stderr().contains("settings not reloaded")
    });
    assert_eq!(server.metric("hongbao_disk_low"), 1);

    // SIGQUIT: a graceful stop.
    signal(&server, libc::SIGQUIT);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}
