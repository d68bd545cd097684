//! Lab cluster benchmark, two nodes on this host (loopback, data on tmpfs): a requester R
//! and an executor E that lends to it.
//!
//! - `run --on E` to the first answer of the tool through R, with the workspace already on
//!   E, beside the tool's own start (the same environment run locally on E, to its first
//!   answer through E's proxy), alternating, `BENCH_ROUNDS` (5) each;
//! - the same with a 1 GiB workspace that must move (`BENCH_BIG_MIB`, 1024; 0 skips), beside
//!   a plain clone of it to E, alternating, `BENCH_BIG_ROUNDS` (2) each;
//! - a small request to the tool through R (relayed over mutual TLS) against the same request
//!   to E's proxy directly: p50 and p99 of `BENCH_REQUESTS` (1000) sequential requests each,
//!   on keep-alive connections, in alternating blocks of 100.
//!
//! - with `BENCH_PLACE_FILES=N` (0 by default): the placement decision for a workspace of N
//!   small files (0.5–2 KiB, each its own content) on R, E holding none of it: the first
//!   decision (a snapshot walk included) and the median of three more, what E answered, and
//!   each node's peak resident memory over the decisions.
//!
//! Run: `cargo bench --bench cluster` (needs bubblewrap and python3, like any placed
//! workspace). Figures, not assertions. The placement decision among 50 candidates is
//! measured by `tests/cluster_scale.rs` (it prints it).

use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, RunRequest, ShareRequest, TransferRequestDto};
use aienv::client::Client;

#[path = "../common/mod.rs"]
mod common;
use common::TestNode;

const SPEC: &str = "schema_version: 1\nruntime: process\nresources: {cpus: {min: 0.5}}\nrestart: {policy: 'no'}\ntools: [{name: web, kind: http, strip_prefix: true, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]\n";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env_number("BENCH_ROUNDS", 5);
    let big_mib = env_number("BENCH_BIG_MIB", 1024);
    let big_rounds = env_number("BENCH_BIG_ROUNDS", 2);
    let requests = env_number("BENCH_REQUESTS", 1000);
    let place_files = env_number("BENCH_PLACE_FILES", 0);
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("bubblewrap is not installed (apt-get install bubblewrap): placed workspaces run boxed; nothing to measure");
        return;
    }
    println!("aienv cluster benchmark: {rounds} rounds, {big_mib} MiB workspace × {big_rounds}, {requests} requests");
    actix_rt::System::new().block_on(run(rounds, big_mib, big_rounds, requests, place_files));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits until `path` answers 200 through `client`'s node; the time it took.
async fn first_answer(client: &Client, path: &str, started: Instant) -> f64 {
    loop {
        if let Ok((200, _)) = client.tool_get(path).await {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{path} never answered"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn placed_state(client: &Client, workspace: &str) -> Option<String> {
    client
        .placements()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.workspace == workspace)
        .map(|p| p.state)
}

async fn stop_placed(r: &Client, e: &Client, workspace: &str) {
    r.stop(workspace, Some("web")).await.unwrap();
    // Wait until E has really stopped it (the lending limits free up).
    for _ in 0..600 {
        let active = e
            .runtimes()
            .await
            .unwrap()
            .iter()
            .any(|s| s.workspace == workspace && s.state != "stopped" && s.state != "failed");
        // A stopped placement is kept (its results can still come back).
        let placed = placed_state(r, workspace).await;
        if !active && placed.as_deref().is_none_or(|state| state == "stopped") {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{workspace} did not stop on E: E's runtimes {:?}, R's placement {:?}",
        e.runtimes()
            .await
            .unwrap()
            .iter()
            .map(|s| (&s.workspace, &s.state))
            .collect::<Vec<_>>(),
        placed_state(r, workspace).await
    );
}

async fn create(client: &Client, name: &str) -> String {
    client
        .create(&CreateWorkspace {
            name: name.into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    client
        .put_environment(name, "web", SPEC.into())
        .await
        .unwrap();
    client.get(name).await.unwrap().workspace.path.unwrap()
}

async fn run(
    rounds: usize,
    big_mib: usize,
    big_rounds: usize,
    requests: usize,
    place_files: usize,
) {
    let shm = std::path::Path::new("/dev/shm");
    let temp = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    println!(
        "data on {} ({})",
        temp.path().display(),
        if shm.is_dir() {
            "tmpfs"
        } else {
            "the temp dir's file system"
        }
    );
    let port = common::free_udp_port();
    let e_node = TestNode::spawn_with_env(
        &temp.path().join("executor"),
        &[
            "--name",
            "executor",
            "--discovery-iface",
            "lo",
            "--discovery-port",
            &port.to_string(),
            "--announce-interval",
            "1",
        ],
        &[("AIENV_CLUSTER_ACCEPT", "trusted"), ("AIENV_LOG", "error")],
    );
    let r_node = TestNode::spawn_with_env(
        &temp.path().join("requester"),
        &[
            "--name",
            "requester",
            "--discovery-iface",
            "lo",
            "--discovery-port",
            &port.to_string(),
            "--announce-interval",
            "1",
        ],
        &[("AIENV_LOG", "error")],
    );
    let (e, r) = (e_node.admin(), r_node.admin());
    for (client, other) in [(&e, "requester"), (&r, "executor")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .peers()
            .await
            .unwrap_or_default()
            .iter()
            .any(|p| p.name == other && p.state == "online")
        {
            assert!(Instant::now() < deadline, "{other} never showed up");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        client.trust_peer(other, None).await.unwrap();
    }

    // The small workspace, on R (placed) and a twin on E (run locally: the tool's own start).
    let root = create(&r, "small").await;
    std::fs::write(format!("{root}/index.html"), "hello\n").unwrap();
    let twin = create(&e, "twin").await;
    std::fs::write(format!("{twin}/index.html"), "hello\n").unwrap();
    let place = RunRequest {
        environment: Some("web".into()),
        on: Some("executor".into()),
        ..RunRequest::default()
    };
    // A first placement brings the workspace to E; the rounds then find it there.
    let started = Instant::now();
    r.run_on("small", &place).await.unwrap();
    let first = first_answer(&r, "/w/small/web/index.html", started).await;
    println!("first placement of the small workspace (clone included): {first:.0} ms");
    stop_placed(&r, &e, "small").await;

    let (mut placed, mut local) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        e.run(
            "twin",
            &RunRequest {
                environment: Some("web".into()),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
        local.push(first_answer(&e, "/w/twin/web/index.html", started).await);
        e.stop("twin", None).await.unwrap();

        let started = Instant::now();
        r.run_on("small", &place).await.unwrap();
        placed.push(first_answer(&r, "/w/small/web/index.html", started).await);
        stop_placed(&r, &e, "small").await;
    }
    let (placed_ms, local_ms) = (median(&mut placed), median(&mut local));
    println!(
        "run --on PEER → first tool answer through the requester, workspace already there: median {placed_ms:.0} ms; the tool's own start (run on E, answer through E): {local_ms:.0} ms; placement adds {:.0} ms (target < 1000 ms)",
        placed_ms - local_ms
    );

    // Relay latency: the same small request through R and to E directly.
    r.run_on("small", &place).await.unwrap();
    first_answer(&r, "/w/small/web/index.html", Instant::now()).await;
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    let mut sent = 0;
    while sent < requests {
        for (client, out) in [(&r, &mut through), (&e, &mut direct)] {
            for _ in 0..100.min(requests - sent) {
                let started = Instant::now();
                let (code, _) = client.tool_get("/w/small/web/index.html").await.unwrap();
                assert_eq!(code, 200);
                out.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        sent += 100;
    }
    let (t50, t99) = (
        percentile(&mut through, 0.5),
        percentile(&mut through, 0.99),
    );
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    println!(
        "tool request through the requester: p50 {t50:.2} ms, p99 {t99:.2} ms; to the executor directly: p50 {d50:.2} ms, p99 {d99:.2} ms; added p50 {:.2} ms, p99 {:.2} ms",
        t50 - d50,
        t99 - d99
    );
    stop_placed(&r, &e, "small").await;

    if place_files > 0 {
        decide_many(&r, [&r_node, &e_node], place_files).await;
    }
    if big_mib == 0 {
        return;
    }
    // The big workspace: incompressible data, shared with E for the plain clone.
    let big = create(&r, "big").await;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(format!("{big}/data/weights.bin")).unwrap();
    for _ in 0..big_mib {
        for byte in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    std::fs::write(format!("{big}/index.html"), "hello\n").unwrap();
    r.share("big", &ShareRequest::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !e
        .network_catalog(&aienv::client::NetworkQuery::default())
        .await
        .unwrap_or_default()
        .iter()
        .any(|entry| entry.workspace.name == "big")
    {
        assert!(Instant::now() < deadline, "E never listed `big`");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let place_big = RunRequest {
        environment: Some("web".into()),
        on: Some("executor".into()),
        ..RunRequest::default()
    };
    let (mut clones, mut placements) = (Vec::new(), Vec::new());
    for _ in 0..big_rounds {
        let started = Instant::now();
        let job = e
            .start_transfer(&TransferRequestDto {
                kind: "clone".into(),
                peer: Some("requester".into()),
                workspace: "big".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        loop {
            let state = e.transfer(&job.id.to_string()).await.unwrap().state;
            if state == "done" {
                break;
            }
            assert!(state != "failed", "the clone failed");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        clones.push(started.elapsed().as_secs_f64() * 1000.0);
        e.delete("big").await.unwrap();

        let started = Instant::now();
        r.run_on("big", &place_big).await.unwrap();
        placements.push(first_answer(&r, "/w/big/web/index.html", started).await);
        stop_placed(&r, &e, "big").await;
        e.delete("big").await.unwrap();
    }
    let (clone_ms, placed_big_ms) = (median(&mut clones), median(&mut placements));
    println!(
        "run --on PEER with {big_mib} MiB to move → first tool answer: median {placed_big_ms:.0} ms; a plain clone of it: {clone_ms:.0} ms; placement − clone = {:.0} ms (target ≤ 1000 ms)",
        placed_big_ms - clone_ms
    );
}

fn peak_mib(node: &TestNode) -> f64 {
    let pid = node.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// The placement decision for a workspace of `files` small files, E holding none of it.
async fn decide_many(r: &Client, nodes: [&TestNode; 2], files: usize) {
    let root = create(r, "many").await;
    for i in 0..files {
        let dir = format!("{root}/d{:04}", i / 200);
        if i % 200 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let line = format!("file {i} of the many\n");
        let size = 512 + (i * 7919) % 1536;
        let content: String = line.repeat(size / line.len() + 1)[..size].to_string();
        std::fs::write(format!("{dir}/f{i}.txt"), content).unwrap();
    }
    for node in nodes {
        let pid = node.child.as_ref().unwrap().id();
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
    let (mut first, mut again, mut last) = (None, Vec::new(), None);
    for round in 0..4 {
        let started = Instant::now();
        let ranking = r.placement("many", Some("web")).await.unwrap();
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        if round == 0 {
            first = Some(wall);
        } else {
            again.push(wall);
        }
        last = Some(ranking);
    }
    let ranking = last.unwrap();
    let candidate = &ranking.candidates[0];
    println!(
        "placement decision, {files} files ({} bytes): first {:.0} ms (its snapshot walk included), then median {:.0} ms; E: {}; peak memory over the decisions, R / E: {:.1} / {:.1} MiB",
        ranking.workspace_bytes,
        first.unwrap(),
        median(&mut again),
        match &candidate.refusal {
            Some(refusal) => format!("refused: {refusal}"),
            None => format!(
                "fits, bytes_held {}, bytes_to_move {}",
                candidate.bytes_held, candidate.bytes_to_move
            ),
        },
        peak_mib(nodes[0]),
        peak_mib(nodes[1]),
    );
}
