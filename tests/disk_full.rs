//! The disk's free-space watermark (docs/SAFETY.md, "A full disk"): on a small tmpfs, the
//! server refuses opens and IM writes with a retryable answer once the free space is below
//! `store.disk_free_min_mb`, before any write of its own can meet a full disk, and keeps
//! answering shakes; with space freed it serves opens again. A restart on a disk below the
//! watermark serves shakes and says why opens are refused; on a full disk it refuses to start
//! saying the disk is full, and leaves no temporary file behind.
//!
//! Mounting the tmpfs needs root (CI runs as root). Elsewhere the test says how to run it and
//! passes; with `CI` set it fails instead.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{run, serve_args, wait_until, Event};
use hongbao::im::{Class, Target};
use hongbao::wire::ops::{ErrorCode, Reply, ShakeOutcome};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    hongbao::fsutil::free_bytes(path).unwrap()
}

/// Grows `filler` until the file system has about `left` bytes free.
fn fill_to(fs: &Path, filler: &Path, left: u64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    let chunk = vec![7u8; 64 << 10];
    while free_bytes(fs) > left {
        let n = (free_bytes(fs) - left).min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n.max(1)]).is_err() {
            break;
        }
    }
    f.sync_all().ok();
}

fn token(c: &mut hongbao::client::Client) -> [u8; 64] {
    match c.shake().unwrap() {
        Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => s.token.unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_watermark_refuses_writes_before_the_disk_is_full_and_shakes_go_on() {
    let Some(fs) = Tmpfs::mount(64) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (needs root), and CI must run this test"
        );
        eprintln!("skipped: mounting a tmpfs needs root; run the tests as root to include it");
        return;
    };
    let event = Event::new();
    std::fs::write(
        event.path().join("serve.toml"),
        "[store]\ndisk_free_min_mb = 24\npending_bytes = 1048576\nsegment_bytes = 4194304\n",
    )
    .unwrap();
    let data = fs.path.join("data");
    let data_arg = data.to_str().unwrap();
    let extra = ["--cores", "2", "--no-pacing", "--config", "serve.toml"];
    let mut server = event.serve(data_arg, &extra);
    let mut c = server.client(&event.auth(5));
    let mut acknowledged = Vec::new();
    let first = token(&mut c);
    match c.open(&first).unwrap() {
        Reply::Open(o) => acknowledged.push((o.envelope_id, 5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.metric("hongbao_disk_low"), 0);

    // Below the watermark (20 MiB free of 24): refused, retryably; shakes go on.
    let filler = fs.path.join("filler");
    fill_to(&fs.path, &filler, 20 << 20);
    wait_until("the watermark not noticed", || {
        server.metric("hongbao_disk_low") == 1
    });
    let waiting = token(&mut c);
    for _ in 0..200 {
        match c.open(&waiting).unwrap() {
            Reply::Error {
                code, backoff_ms, ..
            } => {
                assert_eq!(code, ErrorCode::Busy as u16);
                assert!(backoff_ms > 0);
            }
            other => panic!("an open was claimed below the watermark: {other:?}"),
        }
        token(&mut c);
    }
    match c
        .im_send(1, Target::User(6), Class::Chat, b"hello")
        .unwrap()
    {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::Busy as u16),
        other => panic!("an IM send was stored below the watermark: {other:?}"),
    }
    wait_until("refusals not counted", || {
        server.metric("hongbao_disk_refused_total") >= 201
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("disk space low"),
        "{}",
        server.stderr()
    );

    // Space freed: the same token opens.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the watermark not cleared", || {
        server.metric("hongbao_disk_low") == 0
    });
    match c.open(&waiting).unwrap() {
        Reply::Open(o) => {
            assert!(!o.again);
            acknowledged.push((o.envelope_id, 5));
        }
        other => panic!("{other:?}"),
    }
    assert!(server.terminate().success(), "{}", server.stderr());

    // A restart below the watermark serves shakes, and says why opens are refused. Well below
    // it: recovery cuts the preallocated tail of each core's newest segment (up to 4 MiB
    // each), which must not lift the disk above the watermark again.
    fill_to(&fs.path, &filler, 12 << 20);
    let mut server = event.serve(data_arg, &extra);
    assert!(server
        .stderr()
        .contains("are refused (busy) until space is freed"));
    let mut c = server.client(&event.auth(7));
    let t = token(&mut c);
    match c.open(&t).unwrap() {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::Busy as u16),
        other => panic!("{other:?}: {}", server.stderr()),
    }
    assert!(server.terminate().success(), "{}", server.stderr());

    // A restart on a full disk: it starts read-only (cutting the newest segment's
    // preallocated space at recovery frees a little) or refuses, saying the disk is full;
    // never anything else.
    fill_to(&fs.path, &filler, 0);
    let started = |data: &str| {
        let mut args: Vec<&str> = serve_args(data, "127.0.0.1:0", "127.0.0.1:0").to_vec();
        args.extend(extra);
        args.extend(["--for", "2"]);
        let out = run(&args, event.path());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code(), err)
    };
    let (code, err) = started(data_arg);
    assert!(
        (code == Some(0) && err.contains("are refused (busy) until space is freed"))
            || (code == Some(2) && err.contains("the disk is full")),
        "{code:?}: {err}"
    );
    // A new data directory on a full disk: one clear line, nothing left behind.
    fill_to(&fs.path, &filler, 0);
    let fresh = fs.path.join("fresh");
    let (code, err) = started(fresh.to_str().unwrap());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the disk is full"), "{err}");
    for dir in [&data, &fresh] {
        let leftovers: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    // With room again, every acknowledged claim is there.
    std::fs::remove_file(&filler).unwrap();
    let mut server = event.serve(data_arg, &extra);
    assert!(server.terminate().success(), "{}", server.stderr());
    let claims = event.claims(data_arg);
    for a in &acknowledged {
        assert!(claims.contains(a), "{a:?} lost");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
