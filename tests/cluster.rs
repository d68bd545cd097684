//! The lab cluster across hosts: three network namespaces on a bridge, trusted pairwise,
//! lending different amounts. host0 places a workspace's environment on the peer the rule
//! picks, reaches its tool, logs and stop through its own node, sees it `lost` when the
//! executing host is cut off; refusals (beyond the lending limits, an untrusted requester)
//! come back with the figures.

mod common;

use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, PlacementDto, RunRequest};
use aienv::client::{Client, ClientError};
use common::eventually;
use common::lan::{ip, start_host_with, Lan};
use futures_util::StreamExt;

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

fn place(environment: &str, on: &str) -> RunRequest {
    RunRequest {
        environment: Some(environment.into()),
        on: Some(on.into()),
        ..RunRequest::default()
    }
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
    let temp = tempfile::tempdir().unwrap();
    let (_n0, host0) = start_host_with(
        &lan,
        0,
        temp.path(),
        &[("AIENV_CLUSTER_LOST_AFTER_SECONDS", "3")],
    );
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
    let (_n2, host2) = start_host_with(
        &lan,
        2,
        temp.path(),
        &[
            ("AIENV_CLUSTER_ACCEPT", "trusted"),
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
    within(180, "the environment runs on host2", || async {
        placement(&host0, "lab")
            .await
            .is_some_and(|p| p.state == "running")
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
    let anonymous = Client::with_key(host0.base(), None, _n0.key);
    let (code, _) = anonymous.tool_get("/w/lab/web/index.html").await.unwrap();
    assert_eq!(code, 401);

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

    // Stop from host0 stops it on host2.
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
    assert!(placement(&host0, "lab").await.is_none());

    // Named: host1 runs it (a clone there too); then host1 is cut off: `lost` on host0.
    host0.run_on("lab", &place("web", "host1")).await.unwrap();
    within(180, "the environment runs on host1", || async {
        placement(&host0, "lab")
            .await
            .is_some_and(|p| p.state == "running")
    })
    .await;
    ip(&["-n", &lan.namespaces[1], "link", "set", "eth1", "down"]).unwrap();
    within(60, "host0 shows it lost", || async {
        placement(&host0, "lab")
            .await
            .is_some_and(|p| p.state == "lost" && p.lost_since.is_some())
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
