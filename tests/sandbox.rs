//! Foreign code, boxed: a workspace cloned from a peer runs its tool, which tries to read the
//! node's secrets, write outside its workspace and reach the network; and it cannot switch
//! its own sandbox off.

mod common;

use std::path::PathBuf;

use aienv::api::RunRequest;
use common::runtime::{run, workspace};
use common::{eventually, TestNode};

/// What the probe tries, one `key=value` line each, into `report.txt` in its workspace.
const PROBE: &str = r#"D=$(dirname "$(dirname "$AIENV_WORKSPACE_DIR")")
{
echo "uid=$(id -u)"
if cat "$D/admin.token" >/dev/null 2>&1; then echo token=read; else echo token=hidden; fi
if cat "$D/node.key" >/dev/null 2>&1; then echo key=read; else echo key=hidden; fi
if cat "$D"/workspaces/*/data/secret.txt >/dev/null 2>&1; then echo others=read; else echo others=hidden; fi
if touch /etc/aienv-sandbox-probe 2>/dev/null; then echo etc=written; else echo etc=refused; fi
if touch "$D/planted" 2>/dev/null; then echo datadir=written; else echo datadir=refused; fi
if touch /tmp/probe 2>/dev/null; then echo tmp=ok; else echo tmp=refused; fi
if touch "$AIENV_WORKSPACE_DIR/made-here" 2>/dev/null; then echo workspace=ok; else echo workspace=refused; fi
if touch "$HOME/made-here" 2>/dev/null; then echo home=ok; else echo home=refused; fi
if [ "$(ls /proc | grep -c '^[0-9][0-9]*$')" -lt 10 ]; then echo processes=private; else echo processes=shared; fi
if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)' "$PROBE_PORT" 2>/dev/null; then echo network=ok; else echo network=refused; fi
} > "$AIENV_WORKSPACE_DIR/report.txt"
"#;

fn bwrap_available() -> bool {
    std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn report(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(root.join("report.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[actix_rt::test]
async fn a_tool_of_a_cloned_workspace_runs_boxed() {
    if !bwrap_available() {
        common::skip("bubblewrap is not installed (Debian: bubblewrap)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "origin"]);
    let port = a.tls_url.rsplit(':').next().unwrap().to_string();
    let spec = format!(
        "schema_version: 1\nruntime: process\nenv: {{PROBE_PORT: \"{port}\"}}\ntools: [{{name: app, kind: http, shell: true, command: [\"sh probe.sh; exec python3 -m http.server $PORT --bind 127.0.0.1\"]}}]\n"
    );
    workspace(&a, "probe", &[("probe.sh", PROBE)], "box", &spec).await;
    workspace(
        &a,
        "open",
        &[],
        "free",
        "schema_version: 1\nruntime: process\nsandbox: off\ntools: [{name: app, kind: http, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]\n",
    )
    .await;
    // A Slurm job is not confined on its compute node: from a peer, it needs a local admin.
    workspace(
        &a,
        "hpc",
        &[],
        "job",
        "schema_version: 1\nruntime: slurm\ntools: [{name: app, kind: http, command: [python3, -m, http.server, $PORT]}]\n",
    )
    .await;
    let admin_a = a.admin();
    for shared in ["probe", "open", "hpc"] {
        admin_a
            .share(shared, &aienv::api::ShareRequest::default())
            .await
            .unwrap();
    }

    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "runner", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    let admin_b = b.admin();
    // A workspace of B's own with a secret, which the probe must not read.
    workspace(
        &b,
        "mine",
        &[("data/secret.txt", "top secret")],
        "x",
        "schema_version: 1\n",
    )
    .await;
    eventually("B lists A's workspaces", || async {
        admin_b
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .len()
            == 3
    })
    .await;
    for workspace in ["probe", "open", "hpc"] {
        let job = common::transfer(&admin_b, "clone", Some("origin"), workspace).await;
        assert_eq!(job.state, "done", "{job:?}");
    }

    let statuses = run(&admin_b, "probe").await;
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    assert!(
        statuses[0].sandbox.starts_with("standard"),
        "{}",
        statuses[0].sandbox
    );
    let root = PathBuf::from(admin_b.get("probe").await.unwrap().workspace.path.unwrap());
    eventually("the probe wrote its report", || async {
        report(&root).contains_key("network")
    })
    .await;
    let found = report(&root);
    let uid: u32 = found["uid"].parse().unwrap();
    assert_ne!(uid, 0, "the tool runs as root: {found:?}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            statuses[0].sandbox.contains("aienv-env"),
            "{}",
            statuses[0].sandbox
        );
    }
    let expected = [
        ("token", "hidden"),
        ("key", "hidden"),
        ("others", "hidden"),
        ("etc", "refused"),
        ("datadir", "refused"),
        ("tmp", "ok"),
        ("workspace", "ok"),
        ("home", "ok"),
        ("processes", "private"),
        ("network", "ok"),
    ];
    for (what, value) in expected {
        assert_eq!(
            found.get(what).map(String::as_str),
            Some(value),
            "{what}: {found:?}"
        );
    }
    assert!(!std::path::Path::new("/etc/aienv-sandbox-probe").exists());
    assert!(!b.data_dir.join("planted").exists());
    admin_b.stop("probe", None).await.unwrap();

    // `sandbox: off` from a peer: refused, naming the setting that allows it.
    let refused = admin_b
        .run(
            "open",
            &RunRequest {
                wait: true,
                timeout_seconds: Some(120),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("sandbox-refused"), "{refused}");
    assert!(
        refused.to_string().contains("runtime.allow_unsandboxed"),
        "{refused}"
    );
    let refused = admin_b
        .run("hpc", &RunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("sandbox-refused"), "{refused}");
    assert!(
        refused.to_string().contains("Slurm job runs unconfined")
            && refused.to_string().contains("runtime.allow_unsandboxed"),
        "{refused}"
    );
    // The same environment at its origin runs, shown unboxed.
    let statuses = run(&admin_a, "open").await;
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    assert!(
        statuses[0].sandbox.starts_with("off"),
        "{}",
        statuses[0].sandbox
    );
    admin_a.stop("open", None).await.unwrap();
    // A local admin allows it on B explicitly.
    drop(b);
    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "runner", "--announce-interval", "0.2"],
        &[
            ("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str()),
            ("AIENV_RUNTIME_ALLOW_UNSANDBOXED", "open"),
        ],
    );
    let statuses = run(&b.admin(), "open").await;
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    assert!(
        statuses[0].sandbox.starts_with("off"),
        "{}",
        statuses[0].sandbox
    );
    b.admin().stop("open", None).await.unwrap();
}
