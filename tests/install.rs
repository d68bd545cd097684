//! `deploy/install.sh` for one user (no root, no system packages, no service) and the node
//! in the background with `aienv daemon start|status|stop`, for real.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn install(prefix: &Path, extra: &[&str]) -> Output {
    Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/install.sh"))
        .args([
            "--skip-system-deps",
            "--skip-service-install",
            "--non-interactive",
            "--prefix",
        ])
        .arg(prefix)
        .args(extra)
        // The binary under test, instead of a release build.
        .env("AIENV_BINARY", common::binary())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn install_then_run_the_node_in_the_background() {
    let temp = tempfile::tempdir().unwrap();
    let prefix = temp.path().join("prefix");
    let binary = prefix.join("bin/aienv");
    // Twice: it updates in place.
    for _ in 0..2 {
        let output = install(&prefix, &[]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("daemon start"), "{}", text(&output));
    }
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("aienv "));

    let data = temp.path().join("data");
    let daemon = |args: &[&str]| {
        Command::new(&binary)
            .arg("daemon")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .args(["--http-port", "0", "--local-port", "0", "--no-discovery"])
            .env_remove("AIENV_CONFIG")
            .env("XDG_CONFIG_HOME", temp.path().join("no-config"))
            .output()
            .unwrap()
    };
    let status = daemon(&["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));

    let started = daemon(&["start"]);
    assert!(started.status.success(), "{}", text(&started));
    let out = text(&started);
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("aienv: listening on "))
        .unwrap_or_else(|| panic!("no address in {out}"))
        .to_string();
    assert!(out.contains("running in the background"), "{out}");
    // It answers, detached from this process.
    let health = actix_rt::System::new().block_on(async {
        awc::Client::default()
            .get(format!("{url}/api/v1/health"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(health.ok(), Some(200));
    let status = daemon(&["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(text(&status).contains(&url), "{}", text(&status));
    // Starting again finds it running.
    let again = daemon(&["start"]);
    assert!(again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let stopped = daemon(&["stop"]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    let status = daemon(&["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    let log = std::fs::read_to_string(data.join("aienv.log")).unwrap();
    assert!(
        log.contains("node stopped"),
        "a clean shutdown is logged: {log}"
    );

    let removed = install(&prefix, &["--uninstall"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(!binary.exists());
}
