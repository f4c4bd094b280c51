//! The host tuning scripts in check mode (they never change the host then): every script runs,
//! prints its table, and exits 0 (nothing to change) or 1 (something falls short, with what
//! apply would do); bad usage exits 2. Apply mode changes the host and is not run here.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new("bash")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LC_ALL", "C")
        .output()
        .expect("bash runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_script_checks_without_changing_anything() {
    for script in ["limits", "net", "irq", "cpu"] {
        let path = format!("tuning/{script}.sh");
        let (code, text) = run(&[&path, "check"]);
        assert!(code == 0 || code == 1, "{path}: exit {code}\n{text}");
        assert!(text.starts_with("setting"), "{path}: a table first\n{text}");
        if script != "limits" {
            // The lib's scripts end with what apply would do, or say nothing is to change.
            let last = text.lines().last().unwrap_or_default();
            assert!(
                (code == 0 && last == "nothing to change")
                    || (code == 1 && text.contains("apply would:")),
                "{path}: exit {code}\n{text}"
            );
        }
    }
    let (code, text) = run(&["tuning/all.sh", "check"]);
    assert!(code == 0 || code == 1, "all.sh: exit {code}\n{text}");
    for script in ["limits", "net", "irq", "cpu"] {
        assert!(
            text.contains(&format!("== tuning/{script}.sh check")),
            "{text}"
        );
    }
}

#[test]
fn net_check_names_each_setting() {
    let (_, text) = run(&["tuning/net.sh", "check"]);
    for name in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.core.rmem_max",
        "fs.file-max",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn bad_usage_exits_2() {
    for script in ["net", "irq", "cpu", "all"] {
        let (code, text) = run(&[&format!("tuning/{script}.sh"), "bogus"]);
        assert_eq!(code, 2, "{script}: {text}");
        assert!(text.contains("usage"), "{script}: {text}");
    }
}
