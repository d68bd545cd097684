//! Nodes on separate hosts: three network namespaces joined by a bridge, each with its own
//! address, discover each other by multicast; one is cut off and the others see it go.

mod common;

use std::process::Command;

use common::lan::{ip, start_host, Lan};
use common::{eventually, TestNode};

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
