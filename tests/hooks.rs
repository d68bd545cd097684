//! Hooks at their moments, between real nodes: `post_clone` when a clone arrives (confined:
//! it cannot touch the node's data dir), the workspace's then the environment's `pre_run`
//! before the tools start, `post_stop` after a stop, with the documented variables; a
//! failing `pre_run` stops the run with its output, and a failing `post_clone` leaves the
//! clone and says why.

mod common;

use std::path::PathBuf;

use aienv::api::{RunRequest, ShareRequest};
use common::runtime::workspace;
use common::{eventually, TestNode};

const MAIN: &str = r#"schema_version: 1
runtime: process
hooks:
  pre_run: {unix: 'echo "env pre_run $AIENV_ENVIRONMENT hook=$AIENV_HOOK origin=$AIENV_ORIGIN" >> hooks.txt'}
  post_stop: {unix: 'echo "env post_stop $AIENV_ENVIRONMENT" >> hooks.txt'}
tools: [{name: app, kind: http, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]
"#;

const BROKEN: &str = r#"schema_version: 1
runtime: process
hooks:
  pre_run: {unix: 'echo "checking the data"; echo "missing data/train.csv" >&2; exit 3'}
tools: [{name: app, kind: http, shell: true, command: ["touch started.txt; exec python3 -m http.server $PORT --bind 127.0.0.1"]}]
"#;

fn bwrap_available() -> bool {
    let found = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip(
            "bubblewrap is not installed (Debian: bubblewrap): hooks of clones run confined",
        );
    }
    found
}

async fn add_hooks(node: &TestNode, workspace: &str, hooks: &str) {
    let admin = node.admin();
    let text = admin.manifest(workspace).await.unwrap();
    admin
        .put_manifest(workspace, format!("{text}{hooks}"))
        .await
        .unwrap();
    admin
        .share(workspace, &ShareRequest::default())
        .await
        .unwrap();
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[actix_rt::test]
async fn hooks_run_at_their_moments_and_a_failing_one_fails_its_step_with_its_output() {
    if !bwrap_available() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    workspace(&a, "demo", &[], "main", MAIN).await;
    a.admin()
        .put_environment("demo", "broken", BROKEN.to_string())
        .await
        .unwrap();
    add_hooks(
        &a,
        "demo",
        r#"hooks:
  post_clone: {unix: 'echo "post_clone $AIENV_WORKSPACE from $AIENV_ORIGIN in $AIENV_WORKSPACE_DIR" > arrived.txt; D=$(dirname "$(dirname "$AIENV_WORKSPACE_DIR")"); if touch "$D/planted" 2>/dev/null; then echo escaped >> arrived.txt; fi'}
  pre_run: {unix: 'echo "workspace pre_run $AIENV_ENVIRONMENT" >> hooks.txt'}
"#,
    )
    .await;
    workspace(&a, "failing", &[], "main", MAIN).await;
    add_hooks(
        &a,
        "failing",
        "hooks:\n  post_clone: {unix: 'echo \"fetching the dataset\"; echo \"no route to the data server\" >&2; exit 4'}\n",
    )
    .await;

    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    let admin = b.admin();
    eventually("B lists A's workspaces", || async {
        admin
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;

    // post_clone: once the clone is in place, confined.
    let job = common::transfer(&admin, "clone", Some("node-a"), "demo").await;
    assert_eq!(job.state, "done", "{job:?}");
    assert!(job.hook_error.is_none(), "{job:?}");
    assert!(
        job.notes.iter().any(|n| n == "the post_clone hook ran"),
        "{job:?}"
    );
    let root = PathBuf::from(admin.get("demo").await.unwrap().workspace.path.unwrap());
    assert_eq!(
        lines(&root.join("arrived.txt")),
        vec![format!(
            "post_clone demo from node-a/demo in {}",
            root.display()
        )],
        "the hook ran once, with its variables, and could not write the node's data dir"
    );
    assert!(!b.data_dir.join("planted").exists());

    // A failing post_clone: the clone is there, the job says why with the hook's output,
    // and the CLI fails.
    let job = common::transfer(&admin, "clone", Some("node-a"), "failing").await;
    assert_eq!(job.state, "done", "{job:?}");
    let error = job.hook_error.expect("the hook's failure is reported");
    assert!(
        error.contains("post_clone hook of workspace `failing` failed: exit status 4"),
        "{error}"
    );
    assert!(error.contains("no route to the data server"), "{error}");
    assert!(error.contains("fetching the dataset"), "{error}");
    assert!(admin.get("failing").await.is_ok(), "the clone stays");
    let out = b.cli(&["clone", "node-a/failing", "--as", "failing-again"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`failing-again` arrived, but"), "{stderr}");

    // pre_run: the workspace's, then the environment's, before the tools; post_stop after.
    let statuses = admin
        .run(
            "demo",
            &RunRequest {
                environment: Some("main".into()),
                wait: true,
                timeout_seconds: Some(120),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    assert_eq!(
        lines(&root.join("hooks.txt")),
        vec![
            "workspace pre_run main".to_string(),
            "env pre_run main hook=pre_run origin=node-a/demo".to_string(),
        ]
    );
    admin.stop("demo", Some("main")).await.unwrap();
    eventually("post_stop ran", || async {
        lines(&root.join("hooks.txt")).len() == 3
    })
    .await;
    assert_eq!(lines(&root.join("hooks.txt"))[2], "env post_stop main");

    // A failing pre_run stops the run, with its output; the tools never start.
    let statuses = admin
        .run(
            "demo",
            &RunRequest {
                environment: Some("broken".into()),
                wait: true,
                timeout_seconds: Some(120),
                ..RunRequest::default()
            },
        )
        .await;
    let error = match statuses {
        Ok(statuses) => statuses[0].error.clone().unwrap_or_default(),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("pre_run hook of environment `broken` of `demo` failed: exit status 3"),
        "{error}"
    );
    assert!(error.contains("missing data/train.csv"), "{error}");
    assert!(error.contains("checking the data"), "{error}");
    assert!(!root.join("started.txt").exists(), "a tool started");
}
