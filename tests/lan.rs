//! Nodes on separate hosts: three network namespaces joined by a bridge, each with its own
//! address, discover each other by multicast; one is cut off and the others see it go.

mod common;

use std::process::Command;

use aienv::client::{Client, Credentials};
use common::{eventually, TestNode};

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
    /// Unique per LAN in this process (names and the subnet 10.99.<subnet>.0/24).
    tag: u32,
    subnet: u32,
    /// Whether an iptables rule lets the bridge's traffic through (removed on drop).
    accept_rule: bool,
}

fn bridge_netfilter() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables").args(args).output().map_err(|e| {
        format!("iptables: {e} (needed: br_netfilter filters bridged traffic here)")
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

static LANS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Lan {
    /// A bridge with `hosts` namespaces, each linked to it.
    fn create(hosts: usize) -> Result<Lan, String> {
        let mut lan = Lan::unlinked(hosts)?;
        for i in 0..hosts {
            lan.link(i)?;
        }
        Ok(lan)
    }

    /// A bridge with `hosts` namespaces that have no network link yet.
    fn unlinked(hosts: usize) -> Result<Lan, String> {
        let subnet = LANS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = (std::process::id() % 10_000) * 10 + subnet;
        let lan_bridge = format!("avbr{tag}");
        let mut lan = Lan {
            bridge: lan_bridge,
            namespaces: Vec::new(),
            tag,
            subnet,
            accept_rule: false,
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
        ip(&[
            "addr",
            "add",
            &format!("10.99.{subnet}.1/24"),
            "dev",
            &lan.bridge,
        ])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        // With br_netfilter loaded (Docker loads it and sets FORWARD to DROP), frames crossing
        // a bridge go through iptables' FORWARD chain: let this bridge's own traffic pass.
        if bridge_netfilter() {
            iptables(&[
                "-I",
                "FORWARD",
                "-i",
                &lan.bridge,
                "-o",
                &lan.bridge,
                "-j",
                "ACCEPT",
            ])?;
            lan.accept_rule = true;
        }
        for i in 0..hosts {
            let ns = format!("aienv-lan-{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            lan.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// Host `i`'s address, with `suffix` (such as `/24`).
    fn address(&self, i: usize, suffix: &str) -> String {
        format!("10.99.{}.{}{suffix}", self.subnet, 10 + i)
    }

    /// Plugs host `i` into the bridge as `eth{i}` with its address.
    fn link(&mut self, i: usize) -> Result<(), String> {
        let tag = self.tag;
        let ns = self.namespaces[i].clone();
        let outer = format!("av{tag}o{i}");
        let inner = format!("eth{i}");
        // The inner end is created inside the namespace: its name may exist outside.
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ])?;
        ip(&["link", "set", &outer, "master", &self.bridge])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &self.address(i, "/24"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inner])?;
        Ok(())
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
        if self.accept_rule {
            let _ = iptables(&[
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
    }
}

/// Starts the node of host `i` inside its namespace, announcing on `eth{i}`.
fn start_host(lan: &Lan, i: usize, dir: &std::path::Path) -> (TestNode, Client) {
    let data = dir.join(format!("host{i}"));
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &lan.namespaces[i],
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
    let port = node.tls_url.rsplit(':').next().unwrap().to_string();
    // From outside the host only TLS answers, and only with the key its node id names.
    let client = Client::with_key(
        &format!("https://{}:{port}", lan.address(i, "")),
        Some(Credentials::Token(node.token())),
        node.key,
    );
    (node, client)
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
    for i in 0..lan.namespaces.len() {
        let (node, client) = start_host(&lan, i, temp.path());
        clients.push(client);
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
                peer.addresses[0].starts_with(&format!("10.99.{}.", lan.subnet)),
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

#[actix_rt::test]
async fn a_node_starts_announcing_when_its_interface_appears() {
    let mut lan = match Lan::unlinked(2) {
        Ok(lan) => lan,
        Err(reason) => {
            common::skip(&format!(
                "cannot build a bridged network of namespaces (needs root and iproute2): {reason}"
            ));
            return;
        }
    };
    lan.link(0).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let (_first, first) = start_host(&lan, 0, temp.path());
    // Host 1's node starts before its network interface exists; it says so.
    let data = temp.path().join("host1");
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &lan.namespaces[1],
            common::binary(),
            "serve",
            "--http-port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--name",
            "host1",
            "--discovery-iface",
            "eth1",
            "--announce-interval",
            "0.2",
            "--data-dir",
        ])
        .arg(&data)
        .env("AIENV_LOG", "warn")
        .env("XDG_CONFIG_HOME", data.join("no-config"));
    let _second = TestNode::start(command, &data);
    // Plug it in: within the interface rescan the node joins the group and is discovered.
    lan.link(1).unwrap();
    eventually("host1 appears once its interface exists", || async {
        let peers = first.peers().await.unwrap();
        peers
            .iter()
            .any(|p| p.name == "host1" && p.state == "online")
    })
    .await;
}

/// A clone between two hosts goes over mutual TLS and nothing of the workspace crosses the
/// LAN in clear: a capture on the bridge holds the announcements (the control: names are in
/// clear there) but neither the workspace's name nor its content.
#[actix_rt::test]
async fn a_clone_between_hosts_crosses_the_lan_encrypted() {
    let lan = match Lan::create(2) {
        Ok(lan) => lan,
        Err(reason) => {
            common::skip(&format!(
                "cannot build a bridged network of namespaces (needs root and iproute2): {reason}"
            ));
            return;
        }
    };
    if Command::new("tcpdump").arg("--version").output().is_err() {
        common::skip("tcpdump is not installed (Debian: tcpdump)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let (a, a_client) = start_host(&lan, 0, temp.path());
    let (_b, b_client) = start_host(&lan, 1, temp.path());
    let marker = "AIENV-CONTENT-MARKER-7f3a9c";
    a_client
        .create(&aienv::api::CreateWorkspace {
            name: "confidential-lab".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let capture = temp.path().join("lan.pcap");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", &lan.bridge, "-U", "-s", "0", "-w"])
        .arg(&capture)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The control, and the sign that the capture runs: announcements carry names in clear.
    eventually("tcpdump captures host0's announcements", || async {
        std::fs::read(&capture).is_ok_and(|bytes| bytes.windows(5).any(|w| w == b"host0"))
    })
    .await;
    // Write the content only through the node's own directory (the admin sees the path).
    let path = a_client
        .get("confidential-lab")
        .await
        .unwrap()
        .workspace
        .path;
    let root = std::path::PathBuf::from(path.expect("admins see the path"));
    // Incompressible bytes with the marker every 4 KiB: chunks travel raw, so only TLS can
    // hide the marker.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut content = Vec::with_capacity(256 * 1024);
    while content.len() < 256 * 1024 {
        if content.len() % 4096 == 0 {
            content.extend_from_slice(marker.as_bytes());
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        content.push(state as u8);
    }
    std::fs::write(root.join("data/notes.bin"), &content).unwrap();
    a_client
        .share("confidential-lab", &aienv::api::ShareRequest::default())
        .await
        .unwrap();
    eventually("host1 lists the workspace", || async {
        b_client
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap_or_default()
            .iter()
            .any(|e| e.workspace.name == "confidential-lab")
    })
    .await;
    let job = b_client
        .start_transfer(&aienv::api::TransferRequestDto {
            kind: "clone".into(),
            peer: Some("host0".into()),
            workspace: "confidential-lab".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the clone is done", || async {
        b_client
            .transfer(&job.id.to_string())
            .await
            .is_ok_and(|j| j.state == "done")
    })
    .await;
    let cloned = b_client.get("confidential-lab").await.unwrap();
    assert_eq!(cloned.workspace.origin.as_ref().unwrap().peer_name, "host0");
    // Stop the capture once it holds at least the clone's content (written packet by packet).
    eventually("the capture holds the clone's traffic", || async {
        std::fs::metadata(&capture).is_ok_and(|m| m.len() > content.len() as u64)
    })
    .await;
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    let _ = tcpdump.wait();
    let bytes = std::fs::read(&capture).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"host0"),
        "the capture holds the announcements ({} bytes)",
        bytes.len()
    );
    assert!(
        bytes.len() > 30_000,
        "the clone crossed the bridge: {} bytes",
        bytes.len()
    );
    assert!(
        !contains(marker.as_bytes()),
        "workspace content crossed in clear"
    );
    assert!(
        !contains(b"confidential-lab"),
        "the catalog crossed in clear"
    );
    drop(a);
}
