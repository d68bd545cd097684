//! The cluster at lab scale: 50 lending nodes and one requester on this host, discovering
//! each other over loopback. Each idles under 1 % of a CPU; a placement asks all 50 and
//! ranks them; the dashboard's cluster view and "Run on…" dialog show them all in Chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use aienv::api::CreateWorkspace;
use common::{eventually, TestNode};

const PEERS: usize = 50;

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    field(11) + field(12)
}

#[actix_rt::test]
async fn fifty_nodes_idle_rank_and_render() {
    let Some((e2e, chromium)) = common::browser() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port().to_string();
    let args = |name: &str| {
        vec![
            "--name".to_string(),
            name.to_string(),
            "--discovery-iface".into(),
            "lo".into(),
            "--discovery-port".into(),
            port.clone(),
            // The default interval: what a lab's nodes idle with.
            "--announce-interval".into(),
            "10".into(),
        ]
    };
    let spawn = |name: &str, env: &[(&str, &str)]| {
        let owned = args(name);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        TestNode::spawn_with_env(&temp.path().join(name), &refs, env)
    };
    let hub = spawn("hub", &[]);
    let mut peers = Vec::new();
    for i in 0..PEERS {
        // Lending 1 or 2 CPUs: the rule has something to choose by.
        let cpus = if i % 7 == 3 { "2" } else { "1" };
        peers.push(spawn(
            &format!("n{i:02}"),
            &[
                ("AIENV_CLUSTER_ACCEPT", "trusted"),
                ("AIENV_CLUSTER_LEND_CPUS", cpus),
            ],
        ));
    }
    let admin = hub.admin();
    // 51 nodes starting on two cores take a while to hear each other.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let peers = admin.peers().await.unwrap_or_default();
        if peers.iter().filter(|p| p.state == "online").count() == PEERS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hub sees {} of the 50 peers online",
            peers.len()
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, peer) in peers.iter().enumerate() {
        let name = format!("n{i:02}");
        admin.trust_peer(&name, None).await.unwrap();
        let client = peer.admin();
        eventually(&format!("{name} sees the hub"), || async {
            client
                .peers()
                .await
                .unwrap_or_default()
                .iter()
                .any(|p| p.name == "hub" && p.state == "online")
        })
        .await;
        client.trust_peer("hub", None).await.unwrap();
    }

    // Idle: nothing asked of any node for 10 s.
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let all: Vec<&TestNode> = std::iter::once(&hub).chain(peers.iter()).collect();
    let before: Vec<u64> = all.iter().map(|n| cpu_ticks(n.pid().unwrap())).collect();
    let window = Duration::from_secs(10);
    actix_rt::time::sleep(window).await;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let shares: Vec<f64> = all
        .iter()
        .zip(&before)
        .map(|(n, b)| {
            (cpu_ticks(n.pid().unwrap()) - b) as f64 / ticks_per_second / window.as_secs_f64()
        })
        .collect();
    let worst = shares.iter().cloned().fold(0.0, f64::max);
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    eprintln!(
        "idle CPU over {} s, 51 nodes: mean {:.2} %, worst {:.2} %",
        window.as_secs(),
        mean * 100.0,
        worst * 100.0
    );
    assert!(
        worst < 0.01,
        "a node used {:.2} % of a CPU idle",
        worst * 100.0
    );

    // A placement among 50 candidates.
    admin
        .create(&CreateWorkspace {
            name: "scale".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    admin
        .put_environment(
            "scale",
            "web",
            "schema_version: 1\nruntime: process\nresources: {cpus: {min: 0.5, preferred: 2}}\ntools: [{name: web, kind: http, strip_prefix: true, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]\n".into(),
        )
        .await
        .unwrap();
    let ranking = admin.placement("scale", Some("web")).await.unwrap();
    assert_eq!(ranking.candidates.len(), PEERS, "{ranking:#?}");
    assert!(ranking.candidates.iter().all(|c| c.fits), "{ranking:#?}");
    let best = ranking.chosen.clone().unwrap();
    // The preferred 2 CPUs come only from the nodes lending 2: the first of them by name.
    assert_eq!(best, "n03", "{}", ranking.reason);
    assert!(
        ranking.reason.contains("meets the preferred"),
        "{}",
        ranking.reason
    );
    eprintln!(
        "placement among {PEERS} candidates: decided in {:.0} ms",
        ranking.decided_ms
    );

    // The dashboard shows them all.
    let mut script = Command::new("node")
        .arg(e2e.join("cluster.mjs"))
        .current_dir(&e2e)
        .env("NODE_URL", &hub.url)
        .env("TOKEN", hub.token())
        .env("PEERS", PEERS.to_string())
        .env("CHROMIUM", &chromium)
        .env(
            "SCREENSHOT_DIR",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots"),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut passed = false;
    for line in BufReader::new(script.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("e2e: {line}");
        passed |= line == "PASS";
    }
    assert!(
        script.wait().unwrap().success() && passed,
        "the cluster view test failed (see e2e: lines above)"
    );
    drop(peers);
}
