//! A data directory whose log lost an acknowledged end refuses to start, naming what is gone
//! (docs/formats/log.md, "When the store refuses to start"; docs/SAFETY.md): a deleted newest
//! or first segment, a flipped byte in the final record after a clean stop, a deleted core
//! log. Put back, the same directory starts and every acknowledged claim is there.

mod common;

use std::path::{Path, PathBuf};

use common::{run, serve_args, Event};
use hongbao::im::{Class, Target};
use hongbao::wire::ops::{Reply, ShakeOutcome};

/// Starts a server that must refuse (exit 2); returns what it printed. `--for` stops one
/// that starts anyway, and the exit status then fails the test.
fn refused(event: &Event) -> String {
    let mut args: Vec<&str> = serve_args("data", "127.0.0.1:0", "127.0.0.1:0").to_vec();
    args.extend([
        "--cores",
        "2",
        "--no-pacing",
        "--config",
        "serve.toml",
        "--for",
        "3",
    ]);
    let out = run(&args, event.path());
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_log_missing_its_end_refuses_to_start_and_starts_when_restored() {
    let event = Event::new();
    // Small segments, so that one core's log has several.
    std::fs::write(
        event.path().join("serve.toml"),
        "[store]\nsegment_bytes = 4194304\n",
    )
    .unwrap();
    let extra = ["--cores", "2", "--no-pacing", "--config", "serve.toml"];
    let mut server = event.serve("data", &extra);
    let mut acknowledged = Vec::new();
    for uid in 1..=20u64 {
        let mut c = server.client(&event.auth(uid));
        let Reply::Shake(s) = c.shake().unwrap() else {
            panic!()
        };
        assert_eq!(s.outcome, ShakeOutcome::Envelope);
        match c.open(&s.token.unwrap()).unwrap() {
            Reply::Open(o) => acknowledged.push((o.envelope_id, uid)),
            other => panic!("{other:?}"),
        }
    }
    // 16 KiB messages roll the sender's home core's log over a few segments.
    let mut c = server.client(&event.auth(7));
    let body = vec![b'm'; 16 << 10];
    for n in 0..600u128 {
        assert!(matches!(
            c.im_send(n + 1, Target::User(8), Class::Chat, &body)
                .unwrap(),
            Reply::Im(_)
        ));
    }
    assert!(server.terminate().success(), "{}", server.stderr());
    let data = event.path().join("data");
    let rolled = (0..2)
        .map(|k| data.join(format!("core-{k}")))
        .find(|d| segments(d).len() >= 3)
        .expect("a core log rolled over three segments");
    let files = segments(&rolled);
    let aside = event.path().join("aside");

    // The newest segment gone.
    let newest = files.last().unwrap();
    std::fs::rename(newest, &aside).unwrap();
    let e = refused(&event);
    assert!(
        e.contains(&format!(
            "{} is missing",
            newest.file_name().unwrap().to_string_lossy()
        )),
        "{e}"
    );
    std::fs::rename(&aside, newest).unwrap();

    // The first segment gone, later ones present.
    let first = &files[0];
    std::fs::rename(first, &aside).unwrap();
    let e = refused(&event);
    assert!(e.contains("0000000000000000.log is missing"), "{e}");
    std::fs::rename(&aside, first).unwrap();

    // A flipped byte in the final record of a cleanly stopped log.
    let clean = std::fs::read(newest).unwrap();
    let mut flipped = clean.clone();
    // The newest segment keeps its preallocated zeros after a clean stop: its data ends at
    // its last byte that is not zero, which belongs to the final record.
    let at = flipped.iter().rposition(|&b| b != 0).unwrap();
    flipped[at] ^= 0x40;
    std::fs::write(newest, &flipped).unwrap();
    let e = refused(&event);
    assert!(e.contains("held records up to byte"), "{e}");
    assert!(
        e.contains(&*newest.file_name().unwrap().to_string_lossy()),
        "{e}"
    );
    // Nothing was cut: the operator still has every byte.
    assert_eq!(std::fs::read(newest).unwrap(), flipped);
    std::fs::write(newest, &clean).unwrap();

    // A whole core log gone.
    let core1 = data.join("core-1");
    std::fs::rename(&core1, &aside).unwrap();
    let e = refused(&event);
    assert!(e.contains("core-1/ is missing"), "{e}");
    std::fs::rename(&aside, &core1).unwrap();

    // Everything back: it starts, and every acknowledged claim is there.
    let mut server = event.serve("data", &extra);
    assert!(server.terminate().success(), "{}", server.stderr());
    let claims = event.claims("data");
    for a in &acknowledged {
        assert!(claims.contains(a), "acknowledged claim {a:?} lost");
    }
}
