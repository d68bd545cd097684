//! CI without a person, on real nodes: `aienv ci` passes its command's exit code through and
//! writes its report and JUnit XML, clones or syncs `PEER/WS` first; a signed webhook
//! (GitHub's HMAC, GitLab's token) pulls the git project and starts a run, a bad signature
//! runs nothing, a repeated delivery runs once; notifications arrive signed and are retried
//! after a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aienv::api::{CreateWorkspace, GitSourceDto, ShareRequest};
use common::git_server::{bare_repository, git, GitServer};
use common::{eventually, TestNode};

const HOOK_SECRET: &str = "0123456789abcdef-hook-secret";
const NOTIFY_SECRET: &str = "notify-secret-0123456789";

/// A request the receiver saw: its headers (names lower-cased), body, and the status it got.
type Seen = (Vec<(String, String)>, Vec<u8>, u16);

/// A notification receiver: answers 500 to the first request, 200 after; keeps every
/// request's headers and body.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/aienv", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end().to_string();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut seen = kept.lock().unwrap();
            let status = if seen.is_empty() { 500 } else { 200 };
            seen.push((headers, body, status));
            drop(seen);
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Receiver { url, seen }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn deliver(
    node: &TestNode,
    body: &str,
    headers: &[(&str, String)],
) -> (u16, serde_json::Value) {
    let client = awc::Client::default();
    let mut request = client
        .post(format!("{}/api/v1/hooks/model", node.url))
        .insert_header(("Content-Type", "application/json"));
    for (name, value) in headers {
        request = request.insert_header((*name, value.clone()));
    }
    let mut response = request.send_body(body.to_string()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.body().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn runs(node: &TestNode) -> Vec<aienv::api::CiRunDto> {
    node.admin().ci_runs(None).await.unwrap()
}

async fn finished_run(node: &TestNode, id: &str) -> aienv::api::CiRunDto {
    let admin = node.admin();
    eventually(&format!("run {id} finished"), || async {
        matches!(
            admin.ci_run(id).await.unwrap().state.as_str(),
            "passed" | "failed" | "error"
        )
    })
    .await;
    admin.ci_run(id).await.unwrap()
}

#[actix_rt::test]
async fn ci_runs_headless_from_the_cli_and_from_signed_webhooks_and_notifies() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip("git is not installed (apt install git)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    bare_repository(&repos, "tool");
    let server = GitServer::start(&repos, None);
    let notified = receiver();
    let config = temp.path().join("a.yaml");
    std::fs::write(
        &config,
        format!(
            r#"ci:
  hooks:
    - name: model
      secret: {HOOK_SECRET}
      workspace: tool
      environment: main
      branches: [main]
      command: [sh, -c, 'git -C projects/tool log -1 --format=%s > last-commit.txt; echo "hook run by $AIENV_CI_BY for $AIENV_CI_EVENT"']
  notify:
    - url: {}
      secret: {NOTIFY_SECRET}
      events: [ci_finished]
"#,
            notified.url
        ),
    )
    .unwrap();
    let a = TestNode::spawn_on(
        &temp.path().join("a"),
        &["--name", "node-a", "--config", config.to_str().unwrap()],
    );
    let admin = a.admin();
    let created = admin
        .create(&CreateWorkspace {
            git: Some(GitSourceDto {
                url: format!("{}/tool.git", server.url),
                git_ref: None,
            }),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let root = PathBuf::from(created.workspace.path.unwrap());
    admin
        .put_environment(
            "tool",
            "main",
            "schema_version: 1\nruntime: process\n".into(),
        )
        .await
        .unwrap();
    admin.share("tool", &ShareRequest::default()).await.unwrap();

    // A passing command: its output streamed, the report and the JUnit XML written.
    let report = temp.path().join("report.json");
    let junit = temp.path().join("junit.xml");
    let out = a.cli(&[
        "ci",
        "tool",
        "main",
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo building $AIENV_WORKSPACE; mkdir -p out; printf '<testsuite name=\"t\" tests=\"3\" failures=\"1\" errors=\"0\"></testsuite>' > out/junit.xml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("building tool"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(summary["state"], "passed", "{summary}");
    assert_eq!(summary["exit_code"], 0);
    assert!(
        summary["timings"]["command"].as_f64().is_some(),
        "{summary}"
    );
    assert!(summary["log"]["url"].as_str().unwrap().ends_with("/log"));
    assert_eq!(summary["junit"][0]["path"], "out/junit.xml");
    assert_eq!(summary["junit"][0]["tests"], 3);
    assert_eq!(summary["junit"][0]["failures"], 1);
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("tests=\"3\""));

    // A failing command: its exit code is aienv's.
    let out = a.cli(&["ci", "tool", "--", "sh", "-c", "echo broken >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed: exit status 3"), "{stderr}");

    // PEER/WS from another node: cloned the first time, synced the next.
    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    eventually("B lists A's workspace", || async {
        !b.admin()
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    for expected in ["clone of node-a/tool", "sync of node-a/tool"] {
        let out = b.cli(&[
            "ci",
            "node-a/tool",
            "main",
            "--",
            "test",
            "-d",
            "projects/tool/.git",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }

    // Webhooks: a push to main, signed the GitHub way.
    let work = repos.join("tool-work");
    std::fs::write(work.join("CHANGELOG"), "pushed\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "pushed from the forge"]);
    git(
        &work,
        &[
            "push",
            "-q",
            repos.join("tool.git").to_str().unwrap(),
            "main",
        ],
    );
    let before = runs(&a).await.len();
    let body = r#"{"ref":"refs/heads/main","after":"x"}"#;
    let signature = aienv::http::webhook::sign(HOOK_SECRET.as_bytes(), body.as_bytes());
    let signed = |delivery: &str| {
        vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", signature.clone()),
        ]
    };

    // Bad signatures and tokens run nothing.
    let wrong = aienv::http::webhook::sign(b"not-the-secret-at-all", body.as_bytes());
    for headers in [
        vec![("X-Hub-Signature-256", wrong)],
        vec![("X-Gitlab-Token", "not-the-secret".to_string())],
        vec![],
    ] {
        let (status, answer) = deliver(&a, body, &headers).await;
        assert_eq!(status, 401, "{answer}");
    }
    // The signature covers the body: another body with the same signature is refused.
    let (status, _) = deliver(&a, r#"{"ref":"refs/heads/evil"}"#, &signed("d0")).await;
    assert_eq!(status, 401);
    assert_eq!(
        runs(&a).await.len(),
        before,
        "a refused delivery ran something"
    );

    let (status, answer) = deliver(&a, body, &signed("d1")).await;
    assert_eq!(status, 202, "{answer}");
    let run_id = answer["run_id"].as_str().unwrap().to_string();
    let run = finished_run(&a, &run_id).await;
    assert_eq!(run.state, "passed", "{run:?}");
    assert_eq!(run.by, "hook:model");
    assert!(
        run.notes.iter().any(|n| n.contains("fast-forwarded")),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("last-commit.txt")).unwrap(),
        "pushed from the forge\n",
        "the hook pulled the project before its command"
    );
    let (_, next, _) = a.admin().ci_log(&run_id, 0).await.unwrap();
    assert!(next > 0);
    let (log, _, _) = a.admin().ci_log(&run_id, 0).await.unwrap();
    assert!(String::from_utf8_lossy(&log).contains("hook run by hook:model for push"));

    // The same delivery again runs nothing new.
    let (status, answer) = deliver(&a, body, &signed("d1")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(answer["run_id"].as_str().unwrap(), run_id);
    // A push to another branch and a ping start nothing.
    let other = r#"{"ref":"refs/heads/feature"}"#;
    let other_signature = aienv::http::webhook::sign(HOOK_SECRET.as_bytes(), other.as_bytes());
    let (status, answer) = deliver(
        &a,
        other,
        &[
            ("X-GitHub-Event", "push".to_string()),
            ("X-Hub-Signature-256", other_signature),
        ],
    )
    .await;
    assert_eq!(
        (status, answer["run_id"].is_null()),
        (200, true),
        "{answer}"
    );
    let mut ping = signed("d2");
    ping[0].1 = "ping".into();
    let (status, answer) = deliver(&a, body, &ping).await;
    assert_eq!((status, answer["ignored"].as_str()), (200, Some("ping")));
    assert_eq!(runs(&a).await.len(), before + 1);

    // GitLab's token.
    let (status, answer) = deliver(
        &a,
        body,
        &[
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", HOOK_SECRET.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    finished_run(&a, answer["run_id"].as_str().unwrap()).await;

    // Notifications: every finished run, signed; the first attempt failed and was retried
    // with the same delivery id.
    let finished_runs = runs(&a).await.len();
    eventually("every finished run was notified", || async {
        let seen = notified.seen.lock().unwrap();
        seen.iter().filter(|(_, _, status)| *status == 200).count() >= finished_runs
    })
    .await;
    let seen = notified.seen.lock().unwrap().clone();
    let (first_headers, _, first_status) = &seen[0];
    assert_eq!(*first_status, 500);
    let first_delivery = header(first_headers, "x-aienv-delivery").unwrap();
    assert!(
        seen[1..].iter().any(|(h, _, status)| *status == 200
            && header(h, "x-aienv-delivery") == Some(first_delivery)),
        "the failed delivery was retried"
    );
    for (headers, body, _) in &seen {
        assert_eq!(header(headers, "x-aienv-event"), Some("ci_finished"));
        assert_eq!(
            header(headers, "x-aienv-signature-256"),
            Some(aienv::http::webhook::sign(NOTIFY_SECRET.as_bytes(), body).as_str())
        );
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["event"], "ci_finished");
        assert_eq!(json["node"]["name"], "node-a");
        assert!(json["data"]["number"].as_u64().is_some(), "{json}");
    }
}

#[actix_rt::test]
async fn ci_runs_on_a_trusted_peer_with_its_output_exit_code_and_reports_back_here() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let lend = [("AIENV_CLUSTER_ACCEPT", "trusted")];
    let spawn = |name: &str| {
        let port = port.to_string();
        TestNode::spawn_with_env(
            &temp.path().join(name),
            &[
                "--name",
                name,
                "--discovery-iface",
                "lo",
                "--discovery-port",
                &port,
                "--announce-interval",
                "0.2",
            ],
            &lend,
        )
    };
    let (a, b) = (spawn("node-a"), spawn("node-b"));
    let (admin_a, admin_b) = (a.admin(), b.admin());
    admin_a
        .create(&CreateWorkspace {
            name: "model".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    admin_a
        .put_environment(
            "model",
            "main",
            "schema_version: 1\nruntime: process\n".into(),
        )
        .await
        .unwrap();
    let root = PathBuf::from(admin_a.get("model").await.unwrap().workspace.path.unwrap());
    std::fs::write(
        root.join("train.sh"),
        "echo trained on $(cat /proc/sys/kernel/hostname)\n",
    )
    .unwrap();
    for (admin, other) in [(&admin_a, "node-b"), (&admin_b, "node-a")] {
        eventually(&format!("{other} is seen"), || async {
            admin.peers().await.unwrap().iter().any(|p| p.name == other)
        })
        .await;
    }
    // B does not trust A yet: it runs nothing for it, and the workspace is not fetched.
    admin_a.trust_peer("node-b", None).await.unwrap();
    let out = a.cli(&["ci", "model", "--on", "node-b", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node-b"), "{stderr}");
    assert!(admin_b.ci_runs(None).await.unwrap().is_empty());

    admin_b.trust_peer("node-a", None).await.unwrap();
    let report = temp.path().join("report.json");
    let junit = temp.path().join("junit.xml");
    let out = a.cli(&[
        "ci",
        "model",
        "--on",
        "node-b",
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "sh train.sh; echo \"workspace $AIENV_WORKSPACE for $AIENV_CI_BY\"; printf '<testsuite name=\"r\" tests=\"2\" failures=\"0\" errors=\"1\"></testsuite>' > remote.xml; exit 7",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stdout}\n{stderr}");
    assert!(stderr.contains("on node-b"), "{stderr}");
    assert!(stdout.contains("trained on"), "{stdout}");
    assert!(
        stdout.contains("workspace model for admin@node-a"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(summary["state"], "failed", "{summary}");
    assert_eq!(summary["exit_code"], 7);
    assert_eq!(summary["junit"][0]["path"], "remote.xml");
    assert_eq!(summary["junit"][0]["errors"], 1);
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("tests=\"2\""));
    // Here the run says where it ran; there, whom it ran for; the file was written there.
    let here = &admin_a.ci_runs(None).await.unwrap()[0];
    assert_eq!(here.peer.as_deref(), Some("node-b"));
    assert!(
        here.backend.as_deref().unwrap().ends_with("on node-b"),
        "{here:?}"
    );
    let there = admin_b.ci_runs(None).await.unwrap();
    assert_eq!(there.len(), 1);
    assert_eq!(there[0].for_peer.as_deref(), Some("node-a"));
    assert_eq!(Some(there[0].id), here.remote_run);
    assert!(!root.join("remote.xml").exists());
    let clone = PathBuf::from(admin_b.get("model").await.unwrap().workspace.path.unwrap());
    assert!(clone.join("remote.xml").exists());
    // The run is over: B, by its own key, may no longer fetch the workspace.
    let identity = Arc::new(aienv_actors::identity::load_or_create(&b.data_dir, "node-b").unwrap());
    let endpoint = aienv_actors::peer_registry::PeerEndpoint {
        url: a.tls_url.clone(),
        key: a.key,
    };
    let unshared = aienv::cluster_client::client(&identity, &endpoint)
        .get(format!("{}/api/v1/workspaces/model/snapshot", a.tls_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unshared.status().as_u16(), 404);

    // A second run syncs the clone there, and `best` picks the only peer.
    std::fs::write(root.join("train.sh"), "echo retrained\n").unwrap();
    let out = a.cli(&[
        "ci", "model", "main", "--on", "best", "--", "sh", "train.sh",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("retrained"), "{stdout}");
}

#[actix_rt::test]
async fn a_running_ci_command_holds_its_allocation() {
    let node = TestNode::spawn();
    let admin = node.admin();
    let total = admin.node().await.unwrap().resources.memory_total;
    // Each needs 46 % of the memory: one fits (10 % is kept for the host), two do not.
    let spec = format!(
        "schema_version: 1\nruntime: process\nresources: {{memory: {{min: {}MiB}}}}\n",
        (total * 46 / 100) >> 20
    );
    admin
        .create(&CreateWorkspace {
            name: "big".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    for name in ["job", "service"] {
        admin
            .put_environment("big", name, spec.clone())
            .await
            .unwrap();
    }
    let run = admin
        .ci_start(&aienv::api::CiRunRequest {
            workspace: "big".into(),
            environment: Some("job".into()),
            command: vec!["sleep".into(), "5".into()],
            ..aienv::api::CiRunRequest::default()
        })
        .await
        .unwrap();
    let id = run.id.to_string();
    eventually("the CI command runs", || async {
        std::fs::read_to_string(node.data_dir.join(format!("ci/{id}.log")))
            .is_ok_and(|l| l.contains("== command:"))
    })
    .await;
    let refused = admin
        .run(
            "big",
            &aienv::api::RunRequest {
                environment: Some("service".into()),
                ..aienv::api::RunRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("does-not-fit"), "{refused}");
    assert!(
        refused.to_string().contains("held by running environments"),
        "{refused}"
    );
    let done = finished_run(&node, &id).await;
    assert_eq!(done.state, "passed", "{done:?}");
}

#[actix_rt::test]
async fn ci_runs_reach_only_those_who_may_use_their_workspace() {
    use futures_util::StreamExt;
    let node = TestNode::spawn();
    common::add_user(&node.data_dir, "val", "viewer", "correct horse battery");
    let admin = node.admin();
    admin
        .create(&CreateWorkspace {
            name: "secret".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    admin
        .put_environment(
            "secret",
            "main",
            "schema_version: 1\nruntime: process\n".into(),
        )
        .await
        .unwrap();
    let out = node.cli(&["ci", "secret", "--", "echo", "token=hunter2"]);
    assert!(out.status.success(), "{out:?}");
    let viewer = aienv::client::Client::new(
        &node.url,
        Some(aienv::client::Credentials::Basic {
            user: "val".into(),
            password: "correct horse battery".into(),
        }),
    );
    assert!(viewer.ci_runs(None).await.unwrap().is_empty());
    let mut stream = viewer.events().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["ci_runs"], serde_json::json!([]), "{first}");
    // Another run, then a change the viewer sees: the run's events never came before it.
    let out = node.cli(&["ci", "secret", "--", "echo", "again"]);
    assert!(out.status.success(), "{out:?}");
    admin
        .create(&CreateWorkspace {
            name: "later".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    loop {
        let message = stream.next().await.unwrap().unwrap();
        assert_ne!(message["type"], "ci_run_changed", "{message}");
        if message["type"] == "workspace_changed" && message["name"] == "later" {
            break;
        }
    }
    // The admin's stream has them.
    let mut stream = admin.events().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first["ci_runs"].as_array().unwrap().len(), 2, "{first}");
}
