//! The dashboard in real Chromium (Debian's `chromium`), driven by Playwright
//! (`tests/e2e/dashboard.mjs`) against three real nodes discovering each other over loopback.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::TestNode;

#[test]
fn dashboard_in_chromium() {
    if !common::needs_test_hooks() {
        return;
    }
    let Some((e2e, chromium)) = common::browser() else {
        return;
    };

    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let spawn = |name: &str| TestNode::spawn_discovering(&temp.path().join(name), name, port);
    // Alpha serves chunks slowly, so the clone's progress bar can be seen moving.
    let a = TestNode::spawn_discovering_with(
        &temp.path().join("alpha"),
        "alpha",
        port,
        &["--test-chunk-delay-ms", "150"],
    );
    let b = spawn("beta");
    let mut c = spawn("gamma");

    // An admin by role (trusting peers is an admin's), signed in with a password.
    common::add_user(&b.data_dir, "ada", "admin", "correct horse battery");

    // A repository to make a workspace from, on a real git server.
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    common::git_server::bare_repository(&repos, "tool");
    let git_server = common::git_server::GitServer::start(&repos, None);

    // Screenshots of every view, desktop and phone width, for a person to look at.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut script = Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .current_dir(&e2e)
        .env("NODE_A_URL", &a.url)
        .env("NODE_B_URL", &b.url)
        .env("NAME_A", "alpha")
        .env("GIT_URL", format!("{}/tool.git", git_server.url))
        .env("TOKEN_A", a.token())
        .env("USER_B", "ada")
        .env("PASSWORD_B", "correct horse battery")
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT_DIR", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_script = script.stdin.take().unwrap();
    let from_script = BufReader::new(script.stdout.take().unwrap());
    let mut passed = false;
    for line in from_script.lines() {
        let line = line.unwrap();
        eprintln!("e2e: {line}");
        match line.as_str() {
            "ACTION fill-a" => {
                // 16 MiB of data in alpha's shared workspace, to clone from beta.
                let root = std::fs::read_dir(a.data_dir.join("workspaces"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|dir| {
                        std::fs::read_to_string(dir.join("workspace.yaml"))
                            .is_ok_and(|text| text.contains("name: vision-lab"))
                    })
                    .expect("vision-lab exists on alpha");
                for i in 0..16u8 {
                    let data: Vec<u8> = (0..1usize << 20)
                        .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i) ^ (j >> 9) as u8)
                        .collect();
                    std::fs::write(root.join(format!("data/part{i}.bin")), data).unwrap();
                }
                writeln!(to_script, "done").unwrap();
            }
            "ACTION prepare-run" => {
                // A workspace on alpha with an HTTP tool and a terminal, to run from the page.
                actix_rt::System::new().block_on(async {
                    common::runtime::workspace(
                        &a,
                        "serve-demo",
                        &[("hello.py", common::runtime::HELLO)],
                        "web",
                        "schema_version: 1\nruntime: process\nresources: {cpus: {min: 1}}\ntools:\n  - {name: app, kind: http, command: [python3, hello.py]}\n  - {name: term, kind: terminal}\n",
                    )
                    .await;
                });
                writeln!(to_script, "done").unwrap();
            }
            "ACTION ci-run" => {
                // A CI run on alpha that fails with its own exit code, for the CI view.
                let out = a.cli(&[
                    "ci",
                    "serve-demo",
                    "--",
                    "sh",
                    "-c",
                    "echo from-the-ci-run; exit 3",
                ]);
                assert_eq!(out.status.code(), Some(3), "{out:?}");
                writeln!(to_script, "done").unwrap();
            }
            "ACTION kill-c" => {
                c.kill9();
                writeln!(to_script, "done").unwrap();
            }
            "PASS" => passed = true,
            _ => {}
        }
    }
    let status = script.wait().unwrap();
    assert!(
        status.success() && passed,
        "the dashboard test failed (see e2e: lines above)"
    );
    drop((a, b));
}
