//! The lab cluster across hosts: three network namespaces on a bridge, trusted pairwise,
//! lending different amounts. host0 places a workspace's environment on the peer the rule
//! picks, reaches its tool, logs and stop through its own node, sees it `lost` when the
//! executing host is cut off; refusals (beyond the lending limits, an untrusted requester)
//! come back with the figures.

mod common;

use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, PlacementDto, RunRequest};
use aienv::client::{Client, ClientError};
use awc::ws::Message;
use common::eventually;
use common::lan::{ip, start_host_with, Lan};
use common::runtime::read_until;
use futures_util::{SinkExt, StreamExt};

const SPEC: &str = "schema_version: 1
runtime: process
resources:
  cpus: {min: 0.5, preferred: 2}
  memory: {min: 128MiB, preferred: 512MiB}
tools: [{name: web, kind: http, strip_prefix: true, shell: true, command: ['echo tool-started; exec python3 -m http.server $PORT --bind 127.0.0.1']}]
";

/// Asks for more CPU than host1 lends, less than its host has.
const WIDE: &str = "schema_version: 1
runtime: process
resources:
  cpus: {min: 1.5}
tools: [{name: web, kind: http, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]
";

const MARKER: &str = "served-from-the-placed-workspace";

fn bwrap_available() -> bool {
    std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits up to `seconds` until `check` holds.
async fn within<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn placement(client: &Client, workspace: &str) -> Option<PlacementDto> {
    client
        .placements()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.workspace == workspace)
}

/// Waits up to `seconds` until the requester's placement of `lab` satisfies `check`.
async fn placement_until(
    client: &Client,
    seconds: u64,
    what: &str,
    check: impl Fn(&PlacementDto) -> bool,
) {
    within(seconds, what, || async {
        placement(client, "lab").await.is_some_and(|p| check(&p))
    })
    .await;
}

fn place(environment: &str, on: &str) -> RunRequest {
    RunRequest {
        environment: Some(environment.into()),
        on: Some(on.into()),
        ..RunRequest::default()
    }
}

/// Calls `path` of the node at `base` holding `key` as the node `identity` (mutual TLS, as
/// nodes call each other), and checks the answer against the OpenAPI document.
async fn as_peer(
    identity: &aienv_actors::identity::NodeIdentity,
    base: &str,
    key: aienv_actors::identity::KeyFingerprint,
    method: &str,
    template: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let config = aienv::tls::client_config(Some(identity), key).unwrap();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .finish();
    let request = client.request(method.parse().unwrap(), format!("{base}/api/v1{path}"));
    let mut response = match body {
        Some(body) => request.send_json(&body).await.unwrap(),
        None => request.send().await.unwrap(),
    };
    let status = response.status().as_u16();
    let bytes = response.body().limit(16 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let spec = common::openapi::load_spec();
    common::openapi::check_answer(&spec, method, template, status, &value, path);
    (status, value, text)
}

fn refusal(error: ClientError) -> String {
    match error {
        ClientError::Api { code, message, .. } => format!("{code}: {message}"),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[actix_rt::test]
async fn a_workspace_runs_on_the_best_peer_and_is_reached_through_the_requester() {
    let lan = match Lan::create(3) {
        Ok(lan) => lan,
        Err(reason) => {
            common::skip(&format!(
                "cannot build a bridged network of namespaces (needs root and iproute2): {reason}"
            ));
            return;
        }
    };
    if !bwrap_available() {
        common::skip(
            "bubblewrap is not installed (Debian: bubblewrap): placed workspaces run boxed",
        );
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        common::skip("the ranking this test checks needs a host with at least 2 CPU cores");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let host0_env = [("AIENV_CLUSTER_LOST_AFTER_SECONDS", "3")];
    let (n0, host0) = start_host_with(&lan, 0, temp.path(), &host0_env);
    let (_n1, host1) = start_host_with(
        &lan,
        1,
        temp.path(),
        &[
            ("AIENV_CLUSTER_ACCEPT", "trusted"),
            ("AIENV_CLUSTER_LEND_CPUS", "1"),
            ("AIENV_CLUSTER_LEND_MEMORY_MIB", "256"),
        ],
    );
    let (n2, host2) = start_host_with(
        &lan,
        2,
        temp.path(),
        &[
            ("AIENV_CLUSTER_ACCEPT", "trusted"),
            ("AIENV_CLUSTER_LEND_CPUS", "2"),
            ("AIENV_CLUSTER_LEND_MEMORY_MIB", "1024"),
        ],
    );
    let hosts = [&host0, &host1, &host2];
    for (i, client) in hosts.iter().enumerate() {
        eventually(&format!("host{i} sees the two others"), || async {
            let peers = client.peers().await.unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p.state == "online")
        })
        .await;
        for j in 0..3 {
            if i != j {
                client.trust_peer(&format!("host{j}"), None).await.unwrap();
            }
        }
    }

    host0
        .create(&CreateWorkspace {
            name: "lab".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let root = host0.get("lab").await.unwrap().workspace.path.unwrap();
    std::fs::write(format!("{root}/index.html"), MARKER).unwrap();
    host0
        .put_environment("lab", "web", SPEC.into())
        .await
        .unwrap();
    host0
        .put_environment("lab", "wide", WIDE.into())
        .await
        .unwrap();

    // The ranking: host2 gives the preferred 2 CPUs and 512 MiB, host1 lends 1 CPU and
    // 256 MiB; host0 (this node) is no candidate.
    let ranking = host0.placement("lab", Some("web")).await.unwrap();
    assert_eq!(ranking.chosen.as_deref(), Some("host2"), "{ranking:#?}");
    assert!(
        ranking.reason.contains("meets the preferred"),
        "{}",
        ranking.reason
    );
    assert_eq!(ranking.candidates.len(), 2, "{ranking:#?}");
    let host1_fit = &ranking.candidates[1];
    assert_eq!(host1_fit.peer_name, "host1");
    assert!(host1_fit.fits && !host1_fit.preferred_met, "{host1_fit:#?}");
    assert_eq!(host1_fit.allocation.cpus, 1.0);
    assert_eq!(host1_fit.allocation.memory_bytes, 256 << 20);
    assert!(ranking.workspace_bytes >= MARKER.len() as u64);
    assert_eq!(ranking.candidates[0].bytes_to_move, ranking.workspace_bytes);

    // Run on the best: host2 clones the workspace from host0 and runs it for host0.
    let placed = host0.run_on("lab", &place("web", "best")).await.unwrap();
    assert_eq!(placed.placement.peer_name, "host2");
    placement_until(&host0, 180, "the environment runs on host2", |p| {
        p.state == "running"
    })
    .await;
    let shown = placement(&host0, "lab").await.unwrap();
    let allocation = shown.remote.as_ref().unwrap().allocation.clone().unwrap();
    assert_eq!(allocation.amounts.memory_bytes, 512 << 20, "{shown:#?}");
    // The requester's status shows it as running there.
    let status = host0.status("lab").await.unwrap();
    let web = status.iter().find(|s| s.environment == "web").unwrap();
    assert_eq!(web.state, "running", "{web:#?}");
    assert_eq!(web.placement.as_ref().unwrap().peer_name, "host2");

    // The owner of host2 sees whose environment runs on it.
    let lent = host2.runtimes().await.unwrap();
    let on_host2 = lent.iter().find(|s| s.workspace == "lab").unwrap();
    let borrower = on_host2
        .lent_to
        .as_ref()
        .expect("host2 knows it runs it for a peer");
    assert_eq!(borrower.peer_name, "host0");
    assert_eq!(borrower.user, "admin");
    assert!(
        on_host2.sandbox.starts_with("standard"),
        "{}",
        on_host2.sandbox
    );
    let offer = host2.cluster_offer().await.unwrap();
    assert_eq!(offer.runs.len(), 1);
    assert_eq!(offer.lent.memory_bytes, 512 << 20);

    // The tool answers through host0's node, with host0's credentials.
    let (code, body) = host0.tool_get("/w/lab/web/index.html").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, MARKER);
    // Without them, nothing.
    let anonymous = Client::with_key(host0.base(), None, n0.key);
    let (code, _) = anonymous.tool_get("/w/lab/web/index.html").await.unwrap();
    assert_eq!(code, 401);

    // The peer-facing API, called as host0 (its own certificate) and checked against the
    // OpenAPI document.
    let identity =
        aienv_actors::identity::load_or_create(&temp.path().join("host0"), "host0").unwrap();
    let workspace_id = host0.get("lab").await.unwrap().workspace.id;
    let spec_json = serde_json::to_value(
        aienv_actors::yaml::from_str::<aienv_actors::model::EnvironmentSpec>(
            SPEC,
            std::path::Path::new("environment.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let h2 = (host2.base().to_string(), n2.key);
    let run_path = format!("/cluster/runs/{workspace_id}/web");
    let run_template = "/cluster/runs/{id}/{env}";
    let (code, offer, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "GET",
        "/cluster/offer",
        "/cluster/offer",
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(offer["runs"][0]["lent_to"]["peer_name"], "host0", "{offer}");
    // A fit for one listed chunk of 10 bytes, with the workspace's bytes stated or not.
    let fit = |workspace_bytes: Option<u64>| {
        let mut body = serde_json::json!({"environment": "web", "spec": spec_json, "chunks": [{"hash": "00".repeat(32), "size": 10}]});
        if let Some(bytes) = workspace_bytes {
            body["workspace_bytes"] = bytes.into();
        }
        as_peer(
            &identity,
            &h2.0,
            h2.1,
            "POST",
            "/cluster/fit",
            "/cluster/fit",
            Some(body),
        )
    };
    let (code, answer, _) = fit(None).await;
    // What the running environment holds counts: host2 has nothing left to lend.
    assert_eq!(code, 200);
    assert_eq!(answer["fits"], false, "{answer}");
    let refused = answer["refusal"].as_str().unwrap();
    assert!(
        refused.contains("needs at least 0.5 CPU cores; 0 left")
            && refused.contains("lends 2 CPU cores to peers, 2 of it held by peers' environments"),
        "{answer}"
    );
    assert_eq!(answer["bytes_held"], 0, "{answer}");
    // The disk a clone needs is the workspace's bytes as stated, not only the listed chunks'
    // (the list holds the largest chunks only); a statement below the list is refused.
    let (code, answer, _) = fit(Some(1 << 60)).await;
    assert_eq!(code, 200);
    assert_eq!(answer["fits"], false, "{answer}");
    assert!(
        answer["refusal"]
            .as_str()
            .unwrap()
            .starts_with("needs 1073741824.0 GiB of disk for the workspace"),
        "{answer}"
    );
    let (code, error, _) = fit(Some(9)).await;
    assert_eq!(code, 422, "{error}");
    assert_eq!(error["error"]["code"], "invalid-field", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("workspace_bytes: 9 is less than the 10 bytes"),
        "{error}"
    );
    let (code, run, _) =
        as_peer(&identity, &h2.0, h2.1, "GET", run_template, &run_path, None).await;
    assert_eq!(
        (code, run["state"].as_str()),
        (200, Some("running")),
        "{run}"
    );
    let (code, _, text) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "GET",
        "/cluster/runs/{id}/{env}/logs",
        &format!("{run_path}/logs?tail=5"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert!(text.contains("[web/web]"), "{text}");
    // Asking again while it runs answers its state.
    let again = serde_json::json!({"workspace_id": workspace_id, "workspace_name": "lab", "environment": "web", "user": "admin", "spec": spec_json});
    let (code, run, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "POST",
        "/cluster/runs",
        "/cluster/runs",
        Some(again),
    )
    .await;
    assert_eq!(
        (code, run["state"].as_str()),
        (200, Some("running")),
        "{run}"
    );
    // Another node's run is not found; a hostile spec is refused.
    let other = format!("/cluster/runs/{}/web", uuid::Uuid::new_v4());
    let (code, error, _) = as_peer(&identity, &h2.0, h2.1, "GET", run_template, &other, None).await;
    assert_eq!(
        (code, error["error"]["code"].as_str()),
        (404, Some("run-not-found"))
    );
    let hostile = serde_json::json!({"workspace_id": workspace_id, "workspace_name": "../etc", "environment": "web", "user": "admin", "spec": spec_json});
    let (code, _, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "POST",
        "/cluster/runs",
        "/cluster/runs",
        Some(hostile),
    )
    .await;
    assert_eq!(code, 422);
    // A workspace larger than host2's free disk is refused with the figures.
    let huge: Vec<serde_json::Value> = (0..300u32)
        .map(|i| serde_json::json!({"hash": format!("{i:064x}"), "size": u32::MAX}))
        .collect();
    let (code, fit, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "POST",
        "/cluster/fit",
        "/cluster/fit",
        Some(serde_json::json!({"environment": "web", "spec": {"schema_version": 1}, "chunks": huge})),
    )
    .await;
    assert_eq!((code, fit["fits"].as_bool()), (200, Some(false)));
    assert!(
        fit["refusal"]
            .as_str()
            .unwrap()
            .contains("of disk for the workspace"),
        "{fit}"
    );
    let greedy = serde_json::json!({"environment": "web", "spec": {"schema_version": 1, "resources": {"memory": {"min": "900GiB"}}}});
    let (code, fit, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "POST",
        "/cluster/fit",
        "/cluster/fit",
        Some(greedy),
    )
    .await;
    assert_eq!((code, fit["fits"].as_bool()), (200, Some(false)));
    assert!(
        fit["refusal"]
            .as_str()
            .unwrap()
            .contains("needs at least 900.0 GiB"),
        "{fit}"
    );

    // The requester goes away: host2 keeps running what it accepted; back, host0 finds it.
    drop(n0);
    within(60, "host2 notices host0 is gone", || async {
        host2
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "host0" && p.state != "online")
    })
    .await;
    assert!(
        host2
            .runtimes()
            .await
            .unwrap()
            .iter()
            .any(|s| s.workspace == "lab" && s.state == "running"),
        "host2 stopped the environment when its requester went away"
    );
    let (n0, host0) = start_host_with(&lan, 0, temp.path(), &host0_env);
    placement_until(
        &host0,
        60,
        "host0 finds its environment on host2 again",
        |p| p.state == "running" && p.peer_name == "host2",
    )
    .await;
    let (code, body) = host0.tool_get("/w/lab/web/index.html").await.unwrap();
    assert_eq!((code, body.as_str()), (200, MARKER));

    // Logs come from host2 through host0.
    let mut logs = host0
        .logs("lab", Some("web"), None, false, None)
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("tool-started"), "{text}");
    assert!(text.contains("GET /index.html"), "{text}");

    // A shell there, through host0: it runs on host2, in the clone.
    let framed = host0.terminal("lab", Some("web"), 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary(
        "mkdir -p results && echo trained > results/out.txt; cat index.html; echo; echo ON=$AIENV_ENVIRONMENT-$(cat /proc/sys/kernel/hostname)\n"
            .into(),
    ))
    .await
    .unwrap();
    let seen = read_until(&mut stream, "ON=web-").await;
    assert!(seen.contains(MARKER), "{seen}");
    sink.send(Message::Binary("exit\n".into())).await.unwrap();
    drop(sink);

    // Beyond what host1 lends: refused with the figures.
    let error = host0
        .run_on("lab", &place("wide", "host1"))
        .await
        .unwrap_err();
    let message = refusal(error);
    assert!(
        message.contains("needs at least 1.5 CPU cores; 1 left")
            && message.contains("lends 1 CPU cores"),
        "{message}"
    );

    // Stopped on host2 (here through the peer API): host0 sees it end.
    let (code, run, _) = as_peer(
        &identity,
        &h2.0,
        h2.1,
        "POST",
        "/cluster/runs/{id}/{env}/stop",
        &format!("{run_path}/stop"),
        None,
    )
    .await;
    assert_eq!(
        (code, run["state"].as_str()),
        (200, Some("stopped")),
        "{run}"
    );
    placement_until(&host0, 30, "host0 sees it stopped", |p| {
        p.state == "stopped"
    })
    .await;
    // Its results come back with a sync: only if nothing changed here since it was placed,
    // unless forced.
    let sync = aienv::api::TransferRequestDto {
        kind: "sync".into(),
        workspace: "lab".into(),
        ..Default::default()
    };
    let note = format!("{root}/local-note.txt");
    std::fs::write(&note, "mine").unwrap();
    let message = refusal(host0.start_transfer(&sync).await.unwrap_err());
    assert!(message.starts_with("changed-here:"), "{message}");
    std::fs::remove_file(&note).unwrap();
    let job = host0.start_transfer(&sync).await.unwrap();
    let job = common::finished(&host0, job.id).await;
    assert_eq!(job.state, "done", "{job:?}");
    assert_eq!(job.peer_name, "host2");
    assert_eq!(
        std::fs::read_to_string(format!("{root}/results/out.txt")).unwrap(),
        "trained\n"
    );
    // host0's workspace is still its own: no origin, same sharing.
    let lab = host0.get("lab").await.unwrap().workspace;
    assert!(lab.origin.is_none(), "{lab:?}");

    // Run again there, with the CLI on host0 (it waits until the tool answers), and stop
    // from host0: it stops on host2 and host0 forgets it.
    let cli = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.namespaces[0],
            common::binary(),
            "--node",
            &n0.url,
        ])
        .args([
            "run",
            "lab",
            "web",
            "--on",
            "best",
            "--explain",
            "--timeout",
            "120",
        ])
        .env("AIENV_TOKEN", n0.token())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(printed.contains("chosen: host2"), "{printed}");
    assert!(printed.contains("lab/web on host2: running"), "{printed}");
    assert!(printed.contains("/w/lab/web/"), "{printed}");
    host0.stop("lab", Some("web")).await.unwrap();
    within(60, "host2 stopped it", || async {
        host2
            .runtimes()
            .await
            .unwrap()
            .iter()
            .filter(|s| s.workspace == "lab")
            .all(|s| s.state == "stopped")
    })
    .await;
    // Kept as stopped: its results can still come back.
    assert_eq!(placement(&host0, "lab").await.unwrap().state, "stopped");

    // Named: host1 runs it (a clone there too); then host1 is cut off: `lost` on host0.
    host0.run_on("lab", &place("web", "host1")).await.unwrap();
    placement_until(&host0, 180, "the environment runs on host1", |p| {
        p.state == "running"
    })
    .await;
    ip(&["-n", &lan.namespaces[1], "link", "set", "eth1", "down"]).unwrap();
    placement_until(&host0, 60, "host0 shows it lost", |p| {
        p.state == "lost" && p.lost_since.is_some()
    })
    .await;
    let (code, body) = host0.tool_get("/w/lab/web/index.html").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("host1"), "{body}");

    // An untrusted requester is refused: host2 no longer trusts host0.
    host2.untrust_peer("host0").await.unwrap();
    let error = host0
        .run_on("lab", &place("web", "host2"))
        .await
        .unwrap_err();
    let message = refusal(error);
    assert!(
        message.contains("runs work only for peers it trusts"),
        "{message}"
    );
}
