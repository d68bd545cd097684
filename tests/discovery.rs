//! LAN discovery with real nodes: three nodes on one host over loopback multicast, abusive
//! datagrams, static peers over HTTP.

mod common;

use std::net::UdpSocket;

use aienv::api::{CreateWorkspace, PeerDto, ShareRequest};
use aienv::client::{Client, NetworkQuery};
use aienv_actors::discovery::wire::{self, Announcement, Datagram, ResourceSummary, Scheme};
use aienv_actors::identity::KeyFingerprint;
use common::{eventually, TestNode};
use futures_util::StreamExt;

/// Polls `check` until it holds (deadline 15 s: a correctness deadline, not a timing claim).
fn state_of(peers: &[PeerDto], name: &str) -> Option<String> {
    peers
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.state.clone())
}

#[actix_rt::test]
async fn three_nodes_find_each_other_share_and_leave() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let mut nodes: Vec<TestNode> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|name| TestNode::spawn_discovering(&temp.path().join(name), name, port))
        .collect();
    let clients: Vec<Client> = nodes.iter().map(|n| n.admin()).collect();

    for (i, client) in clients.iter().enumerate() {
        eventually(
            &format!("node {i} lists the other two as online"),
            || async {
                let peers = client.peers().await.unwrap();
                peers.len() == 2 && peers.iter().all(|p| p.state == "online")
            },
        )
        .await;
    }
    let alpha_view = clients[0].peers().await.unwrap();
    let beta = alpha_view.iter().find(|p| p.name == "beta").unwrap();
    assert!(beta.resources.cpu_cores >= 1 && beta.resources.memory_total > 0);
    assert_eq!(beta.url.as_deref(), Some(nodes[1].tls_url.as_str()));
    assert_eq!(beta.key_id, nodes[1].key.to_readable());
    assert!(!beta.trusted);

    // A share on alpha shows up in the others' network catalog.
    clients[0]
        .create(&CreateWorkspace {
            name: "llm-lab".into(),
            tags: vec!["nlp".into()],
            kind: Some("training".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    clients[0]
        .create(&CreateWorkspace {
            name: "private".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    clients[0]
        .share("llm-lab", &ShareRequest::default())
        .await
        .unwrap();
    for client in &clients[1..] {
        eventually("the share appears in the network catalog", || async {
            let entries = client
                .network_catalog(&NetworkQuery::default())
                .await
                .unwrap();
            entries.len() == 1
                && entries[0].workspace.name == "llm-lab"
                && entries[0].peer_name == "alpha"
        })
        .await;
    }
    let filtered = clients[1]
        .network_catalog(&NetworkQuery {
            tag: Some("nlp".into()),
            q: Some("LLM".into()),
            peer: Some("alpha".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    let none = clients[1]
        .network_catalog(&NetworkQuery {
            kind: Some("dataset".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    // Unsharing removes it again.
    clients[0].unshare("llm-lab").await.unwrap();
    eventually("the unshare reaches beta", || async {
        clients[1]
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap()
            .is_empty()
    })
    .await;

    // Shared with beta by name: beta sees it once alpha trusts it, gamma never does.
    clients[0]
        .share(
            "llm-lab",
            &ShareRequest {
                mode: Some("peers".into()),
                peers: vec!["beta".into()],
            },
        )
        .await
        .unwrap();
    // Trust is a person's decision: until then beta is only known and sees nothing of it.
    let beta_key = nodes[1].key.to_readable();
    eventually("the share reached beta's view of alpha", || async {
        let peers = clients[1].peers().await.unwrap();
        peers.iter().any(|p| p.name == "alpha" && p.catalog_current)
    })
    .await;
    assert!(clients[1]
        .network_catalog(&NetworkQuery::default())
        .await
        .unwrap()
        .is_empty());
    let trusted = clients[0]
        .trust_peer("beta", Some(&beta_key))
        .await
        .unwrap();
    assert_eq!(trusted.key_id, beta_key);
    assert_eq!(trusted.name, "beta");
    eventually("beta sees what is shared with it by name", || async {
        clients[1]
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    eventually("gamma fetched alpha's new catalog", || async {
        let peers = clients[2].peers().await.unwrap();
        let alpha = peers.iter().find(|p| p.name == "alpha").unwrap();
        alpha.shared_workspaces == 1 && alpha.catalog_current
    })
    .await;
    assert!(clients[2]
        .network_catalog(&NetworkQuery::default())
        .await
        .unwrap()
        .is_empty());

    // SIGTERM: the goodbye makes gamma `gone` at once — alpha's first event about gamma is
    // `peer_left`, with no `stale` before it.
    let mut events = clients[0].events().await.unwrap();
    assert_eq!(events.next().await.unwrap().unwrap()["type"], "snapshot");
    nodes[2].stop();
    let first = loop {
        let event = events.next().await.unwrap().unwrap();
        // Resource refreshes may still report it online; the first change of state counts.
        if event["peer"]["name"] == "gamma" && event["peer"]["state"] != "online" {
            break event;
        }
    };
    assert_eq!(first["type"], "peer_left", "{first}");
    assert_eq!(first["peer"]["state"], "gone");

    // kill -9: no goodbye; beta turns stale, then gone, on time.
    nodes[1].kill9();
    let mut states = Vec::new();
    while states.len() < 2 {
        let event = events.next().await.unwrap().unwrap();
        let state = event["peer"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if event["peer"]["name"] == "beta" && state != "online" && states.last() != Some(&state) {
            states.push(state);
        }
    }
    assert_eq!(states, ["stale", "gone"]);
    let peers = clients[0].peers().await.unwrap();
    assert_eq!(state_of(&peers, "beta").as_deref(), Some("gone"));
    assert_eq!(state_of(&peers, "gamma").as_deref(), Some("gone"));
}

fn announcement(node_id: uuid::Uuid, seq: u64, name: &str) -> Announcement {
    Announcement {
        node_id,
        instance: 1,
        name: name.into(),
        http_port: 9,
        scheme: Scheme::Https,
        // Legacy-style (random) ids: the first key seen for each is pinned.
        tls_fingerprint: Some(KeyFingerprint::of_spki(node_id.as_bytes()).to_hex()),
        protocol_version: 1,
        catalog_digest: "00".into(),
        shared_workspaces: 0,
        resources: ResourceSummary::default(),
        running_environments: 0,
        seq,
        uptime_seconds: 1,
    }
}

#[actix_rt::test]
async fn abusive_datagrams_are_dropped_and_counted() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let node = TestNode::spawn_discovering(&temp.path().join("n"), "target", port);
    let client = node.admin();
    let own_id = client.node().await.unwrap().id;
    eventually("the node listens for datagrams", || async {
        client.node().await.unwrap().discovery.interfaces == ["lo"]
    })
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ("127.0.0.1", port);
    let send = |bytes: &[u8]| {
        socket.send_to(bytes, to).unwrap();
    };

    let stranger = uuid::Uuid::new_v4();
    let valid = wire::encode(&Datagram {
        goodbye: false,
        announcement: announcement(stranger, 5, "stranger"),
    })
    .unwrap();
    send(&valid);
    send(&valid); // replayed: same seq
    let older = wire::encode(&Datagram {
        goodbye: false,
        announcement: announcement(stranger, 4, "stranger"),
    })
    .unwrap();
    send(&older); // replayed: older seq
    let forged = wire::encode(&Datagram {
        goodbye: true,
        announcement: announcement(own_id, 99, "impostor"),
    })
    .unwrap();
    send(&forged);
    send(&valid[..valid.len() / 2]); // truncated
    send(&vec![7u8; 1500]); // oversized
    let mut future = valid.clone();
    future[4] = 9;
    send(&future); // unknown version
    send(b"hello, is this the discovery port?"); // random
    let mut bad_name = announcement(uuid::Uuid::new_v4(), 1, "ok");
    bad_name.name = "\u{1b}[31mred".into();
    send(
        &wire::encode(&Datagram {
            goodbye: false,
            announcement: bad_name,
        })
        .unwrap(),
    );
    eventually("the node counted every kind of bad datagram", || async {
        let d = client.node().await.unwrap().discovery.datagrams;
        d.replayed >= 2
            && d.forged >= 1
            && d.oversized >= 1
            && d.unknown_version >= 1
            && d.malformed >= 3
    })
    .await;
    // A flood from one node id: far more than its rate in one burst.
    let flooder = uuid::Uuid::new_v4();
    for seq in 1..=200 {
        send(
            &wire::encode(&Datagram {
                goodbye: false,
                announcement: announcement(flooder, seq, "flooder"),
            })
            .unwrap(),
        );
    }
    eventually("the flood was cut off", || async {
        client.node().await.unwrap().discovery.datagrams.flood >= 1
    })
    .await;
    // Random bytes, half of them behind our magic and version.
    let before = client.node().await.unwrap().discovery.datagrams;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes: Vec<u8> = (0..(state % 1400) as usize)
            .map(|j| (state >> (j % 56)) as u8)
            .collect();
        if i % 2 == 0 && bytes.len() > 6 {
            bytes[..4].copy_from_slice(wire::MAGIC);
            bytes[4] = 1;
            bytes[5] = (i % 4) as u8;
        }
        send(&bytes);
    }
    eventually("the random datagrams were dropped as malformed", || async {
        let after = client.node().await.unwrap().discovery.datagrams;
        after.malformed >= before.malformed + 150 && after.accepted == before.accepted
    })
    .await;
    // The node is up and correct: the stranger is a peer; the impostor's goodbye changed
    // nothing; no malformed datagram made a peer.
    let peers = client.peers().await.unwrap();
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"stranger"), "{names:?}");
    assert!(
        names.iter().all(|n| ["stranger", "flooder"].contains(n)),
        "{names:?}"
    );
    assert_eq!(client.health().await.unwrap().status, "ok");
}

#[actix_rt::test]
async fn static_peer_over_http_only() {
    let temp = tempfile::tempdir().unwrap();
    let far = TestNode::spawn_on(
        &temp.path().join("far"),
        &["--name", "far-away", "--no-discovery"],
    );
    let address = far.tls_url.clone();
    let near = TestNode::spawn_with_env(
        &temp.path().join("near"),
        &[
            "--name",
            "near",
            "--no-discovery",
            "--announce-interval",
            "0.2",
        ],
        &[("AIENV_DISCOVERY_STATIC_PEERS", address.as_str())],
    );
    let client = near.admin();
    eventually("the static peer is listed online", || async {
        let peers = client.peers().await.unwrap();
        peers.len() == 1
            && peers[0].name == "far-away"
            && peers[0].state == "online"
            && peers[0].source == "static"
    })
    .await;
    let far_client = far.admin();
    far_client
        .create(&CreateWorkspace {
            name: "remote-ws".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    far_client
        .share("remote-ws", &ShareRequest::default())
        .await
        .unwrap();
    eventually("the static peer's share appears", || async {
        let entries = client
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap();
        entries
            .iter()
            .any(|e| e.workspace.name == "remote-ws" && e.peer_name == "far-away")
    })
    .await;
    far_client
        .update(
            "remote-ws",
            &aienv::api::UpdateWorkspace {
                title: Some("Changed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually("the static peer's change follows", || async {
        let entries = client
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap();
        entries.iter().any(|e| e.workspace.title == "Changed")
    })
    .await;
    // `peers` mode: shared with this node by name (the far node knows it as a peer only if
    // it hears it; here the near node names itself with its id, so share by id and by name).
    let near_id = client.node().await.unwrap().id.to_string();
    // The far node has never heard of the near one: it trusts it by the key id a person
    // read off the near machine.
    far_client
        .trust_peer(&near.key.to_readable(), None)
        .await
        .unwrap();
    for (name, peers) in [
        ("by-id", vec![near_id.clone()]),
        ("for-others", vec!["someone-else".to_string()]),
    ] {
        far_client
            .create(&CreateWorkspace {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        far_client
            .share(
                name,
                &ShareRequest {
                    mode: Some("peers".into()),
                    peers,
                },
            )
            .await
            .unwrap();
    }
    eventually(
        "a workspace shared with this node by id appears",
        || async {
            let entries = client
                .network_catalog(&NetworkQuery::default())
                .await
                .unwrap();
            entries.iter().any(|e| e.workspace.name == "by-id")
        },
    )
    .await;
    let names: Vec<String> = client
        .network_catalog(&NetworkQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.workspace.name)
        .collect();
    assert!(!names.contains(&"for-others".to_string()), "{names:?}");
    // An anonymous client of the far node sees neither.
    let anonymous: Vec<String> = far
        .anonymous()
        .catalog()
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(anonymous, ["remote-ws"]);

    let node = client.node().await.unwrap();
    assert!(node.discovery.problem.unwrap().contains("off"));
}

/// A static peer written with its key id (`https://host:port#KEY-ID`) is reached only if it
/// presents that key: with another key it is never listed.
#[actix_rt::test]
async fn a_static_peer_with_a_pinned_key_is_reached_only_with_that_key() {
    let temp = tempfile::tempdir().unwrap();
    let far = TestNode::spawn_on(
        &temp.path().join("far"),
        &["--name", "far-away", "--no-discovery"],
    );
    let other = TestNode::spawn_on(
        &temp.path().join("other"),
        &["--name", "other", "--no-discovery"],
    );
    let pinned = format!("{}#{}", far.tls_url, far.key.to_readable());
    let wrong = format!("{}#{}", other.tls_url, far.key.to_readable().to_lowercase());
    let near = TestNode::spawn_with_env(
        &temp.path().join("near"),
        &[
            "--name",
            "near",
            "--no-discovery",
            "--announce-interval",
            "0.2",
        ],
        &[(
            "AIENV_DISCOVERY_STATIC_PEERS",
            format!("{pinned},{wrong}").as_str(),
        )],
    );
    let client = near.admin();
    eventually("the pinned static peer is listed", || async {
        let peers = client.peers().await.unwrap();
        peers
            .iter()
            .any(|p| p.name == "far-away" && p.key_id == far.key.to_readable())
    })
    .await;
    // Both addresses are polled in every round: once the pinned peer was heard in three more
    // rounds, the node behind the wrong key was asked (and refused) three more times too.
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    eventually("three more polling rounds", || async {
        let peers = client.peers().await.unwrap();
        let mut seen = seen.borrow_mut();
        if let Some(far) = peers.iter().find(|p| p.name == "far-away") {
            seen.insert(far.last_seen);
        }
        seen.len() >= 4
    })
    .await;
    let peers = client.peers().await.unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(peers.iter().all(|p| p.name != "other"));
}
