//! Nodes on separate hosts: three network namespaces joined by a bridge, each with its own
//! address, discover each other by multicast; one is cut off and the others see it go.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use aienv::client::{Client, Credentials};
use common::TestNode;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A bridge with `hosts` namespaces on it; everything is removed on drop.
struct Lan {
    bridge: String,
    namespaces: Vec<String>,
}

impl Lan {
    fn create(hosts: usize) -> Result<Lan, String> {
        let tag = std::process::id() % 100_000;
        let mut lan = Lan {
            bridge: format!("avbr{tag}"),
            namespaces: Vec::new(),
        };
        ip(&[
            "link",
            "add",
            &lan.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["addr", "add", "10.99.0.1/24", "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        for i in 0..hosts {
            let ns = format!("aienv-lan-{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            lan.namespaces.push(ns.clone());
            let outer = format!("av{tag}o{i}");
            let inner = format!("eth{i}");
            // The inner end is created inside the namespace: its name may exist outside.
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &lan.bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.99.0.{}/24", 10 + i),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inner])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn nodes_on_separate_hosts_discover_each_other_and_see_one_cut_off() {
    let lan = match Lan::create(3) {
        Ok(lan) => lan,
        Err(reason) => {
            common::skip(&format!(
                "cannot build a bridged network of namespaces (needs root and iproute2): {reason}"
            ));
            return;
        }
    };
    let temp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut clients = Vec::new();
    for (i, ns) in lan.namespaces.iter().enumerate() {
        let data = temp.path().join(format!("host{i}"));
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                ns,
                common::binary(),
                "serve",
                "--http-port",
                "0",
                "--bind",
                "0.0.0.0",
            ])
            .args([
                "--name",
                &format!("host{i}"),
                "--discovery-iface",
                &format!("eth{i}"),
                "--announce-interval",
                "0.2",
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("AIENV_LOG", "warn")
            .env("XDG_CONFIG_HOME", data.join("no-config"));
        let node = TestNode::start(command, &data);
        let port = node.url.rsplit(':').next().unwrap().to_string();
        let url = format!("http://10.99.0.{}:{port}", 10 + i);
        clients.push(Client::new(&url, Some(Credentials::Token(node.token()))));
        nodes.push(node);
    }

    for (i, client) in clients.iter().enumerate() {
        eventually(&format!("host{i} lists the two others online"), || async {
            let peers = client.peers().await.unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p.state == "online")
        })
        .await;
        let peers = client.peers().await.unwrap();
        for peer in &peers {
            // Each peer is known by its own address on the LAN, not loopback.
            assert!(
                peer.addresses[0].starts_with("10.99.0."),
                "{:?}",
                peer.addresses
            );
        }
    }

    // Cut host2 off the network: the others see it stale, then gone.
    ip(&["-n", &lan.namespaces[2], "link", "set", "eth2", "down"]).unwrap();
    for client in &clients[..2] {
        eventually("host2 is gone", || async {
            let peers = client.peers().await.unwrap();
            peers.iter().any(|p| p.name == "host2" && p.state == "gone")
                && peers
                    .iter()
                    .any(|p| p.name != "host2" && p.state == "online")
        })
        .await;
    }

    // Bring it back: its next announcement reaches the others, who list it online again.
    ip(&["-n", &lan.namespaces[2], "link", "set", "eth2", "up"]).unwrap();
    let _ = ip(&[
        "-n",
        &lan.namespaces[2],
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "eth2",
    ]);
    for client in &clients[..2] {
        eventually("host2 is back online", || async {
            let peers = client.peers().await.unwrap();
            peers
                .iter()
                .any(|p| p.name == "host2" && p.state == "online")
        })
        .await;
    }
    drop(nodes);
}
