//! Discovery benchmark: nodes on one host over loopback multicast.
//!
//! Run: `cargo bench --bench discovery` (`BENCH_NODES`, default 10; `BENCH_RUNS`, default 20;
//! `BENCH_IDLE_NODES`, default 50). Reports the time from a node's start until every other
//! node lists it (p50/p99), the time for a share to reach every other node's catalog, the
//! datagram size with 1, 100 and 1,000 shared workspaces, and the idle CPU of many nodes.
//! Figures, not assertions.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, ShareRequest};
use aienv::client::{Client, Credentials};
use futures_util::StreamExt;

struct Node {
    child: Child,
    client: Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start(data: &Path, name: &str, port: u16, id: Option<uuid::Uuid>) -> Node {
    std::fs::create_dir_all(data).unwrap();
    if let Some(id) = id {
        std::fs::write(data.join("node-id"), format!("{id}\n")).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_aienv"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--local-port",
            "0",
            "--discovery-iface",
            "lo",
        ])
        .args([
            "--discovery-port",
            &port.to_string(),
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data)
        .env("AIENV_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("aienv: listening on ")
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Node {
        child,
        client: Client::new(&url, Some(Credentials::Token(token))),
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Waits until every stream reports `predicate` for an event.
async fn all_see(
    streams: &mut [futures_util::stream::LocalBoxStream<
        'static,
        Result<serde_json::Value, aienv::client::ClientError>,
    >],
    predicate: impl Fn(&serde_json::Value) -> bool,
) {
    for stream in streams.iter_mut() {
        loop {
            let event = stream.next().await.unwrap().unwrap();
            if predicate(&event) {
                break;
            }
        }
    }
}

fn main() {
    let nodes: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let idle_nodes: usize = std::env::var("BENCH_IDLE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let temp = tempfile::tempdir().unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    println!("aienv discovery benchmark: {nodes} nodes on one host (lo), {runs} runs, default 10 s interval");

    actix_rt::System::new().block_on(async {
        let cluster: Vec<Node> = (0..nodes - 1)
            .map(|i| {
                start(
                    &temp.path().join(format!("c{i}")),
                    &format!("c{i}"),
                    port,
                    None,
                )
            })
            .collect();
        let mut join_ms = Vec::new();
        let mut share_ms = Vec::new();
        for run in 0..runs {
            let mut streams = Vec::new();
            for node in &cluster {
                let mut stream = node.client.events().await.unwrap();
                stream.next().await.unwrap().unwrap(); // snapshot
                streams.push(stream);
            }
            let id = uuid::Uuid::new_v4();
            let started = Instant::now();
            let newcomer = start(
                &temp.path().join(format!("n{run}")),
                &format!("n{run}"),
                port,
                Some(id),
            );
            let idv = id.to_string();
            all_see(&mut streams, |e| {
                e["type"] == "peer_joined" && e["peer"]["id"] == idv.as_str()
            })
            .await;
            join_ms.push(started.elapsed().as_secs_f64() * 1000.0);

            newcomer
                .client
                .create(&CreateWorkspace {
                    name: "shared".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let shared = Instant::now();
            newcomer
                .client
                .share("shared", &ShareRequest::default())
                .await
                .unwrap();
            all_see(&mut streams, |e| {
                e["type"] == "peer_updated"
                    && e["peer"]["id"] == idv.as_str()
                    && e["peer"]["catalog_size"] == 1
            })
            .await;
            share_ms.push(shared.elapsed().as_secs_f64() * 1000.0);
            drop(newcomer);
        }
        println!();
        println!(
            "{:<52} {:>9} {:>9} {:>9}",
            "measure", "p50 ms", "p99 ms", "target"
        );
        let (mut a, mut b) = (join_ms.clone(), join_ms.clone());
        println!(
            "{:<52} {:>9.1} {:>9.1} {:>9}",
            format!("start → listed by all {} others", nodes - 1),
            percentile(&mut a, 50.0),
            percentile(&mut b, 99.0),
            "250/500"
        );
        let (mut a, mut b) = (share_ms.clone(), share_ms.clone());
        println!(
            "{:<52} {:>9.1} {:>9.1} {:>9}",
            "share → in every other node's catalog",
            percentile(&mut a, 50.0),
            percentile(&mut b, 99.0),
            "p99 500"
        );

        // Datagram size against catalog size, captured off the wire.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        listener.set_reuse_address(true).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener
            .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
            .unwrap();
        listener
            .join_multicast_v4(&Ipv4Addr::new(239, 255, 77, 77), &Ipv4Addr::LOCALHOST)
            .unwrap();
        let listener: UdpSocket = listener.into();
        listener
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let sharer_id = uuid::Uuid::new_v4();
        let sharer = start(&temp.path().join("sharer"), "sharer", port, Some(sharer_id));
        let mut created = 0;
        println!();
        for target in [1usize, 100, 1000] {
            while created < target {
                let name = format!("ws-{created:04}");
                sharer
                    .client
                    .create(&CreateWorkspace {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                sharer
                    .client
                    .share(&name, &ShareRequest::default())
                    .await
                    .unwrap();
                created += 1;
            }
            // The next announcement from the sharer after the change.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut buffer = [0u8; 2048];
            let size = loop {
                assert!(Instant::now() < deadline, "no announcement captured");
                let (n, _) = listener.recv_from(&mut buffer).unwrap();
                match aienv_actors::discovery::wire::decode(&buffer[..n]) {
                    Ok(d)
                        if d.announcement.node_id == sharer_id
                            && d.announcement.shared_workspaces as usize == target =>
                    {
                        break n
                    }
                    _ => continue,
                }
            };
            println!("datagram with {target:>4} shared workspaces: {size} bytes (limit 1400)");
        }
        drop(sharer);
        drop(cluster);
    });

    // Idle CPU of many nodes.
    let idle: Vec<Node> = (0..idle_nodes)
        .map(|i| {
            start(
                &temp.path().join(format!("idle{i}")),
                &format!("idle{i}"),
                port,
                None,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let ticks = |node: &Node| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", node.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before: Vec<u64> = idle.iter().map(ticks).collect();
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut percent: Vec<f64> = idle
        .iter()
        .zip(before)
        .map(|(node, before)| (ticks(node) - before) as f64 / hz / window.as_secs_f64() * 100.0)
        .collect();
    let mean = percent.iter().sum::<f64>() / percent.len() as f64;
    let max = percentile(&mut percent, 100.0);
    println!();
    println!("{idle_nodes} idle nodes on one host: CPU per node mean {mean:.2} %, max {max:.2} % of one core (target < 1 %)");
}
