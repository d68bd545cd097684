//! Trust between nodes, attacked: an impostor that copies a real node's id and name, requests
//! that name a peer in headers, peers that are known but not trusted, trust revoked.

mod common;

use std::time::Duration;

use aienv::api::{CreateWorkspace, ShareRequest, TransferRequestDto};
use aienv::client::{Client, NetworkQuery};
use common::{eventually, TestNode};
use futures_util::StreamExt;

async fn share(node: &TestNode, name: &str, peers: &[&str]) {
    let client = node.admin();
    let created = client
        .create(&CreateWorkspace {
            name: name.into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let root = std::path::PathBuf::from(created.workspace.path.unwrap());
    std::fs::write(root.join("data/marker.txt"), format!("content of {name}\n")).unwrap();
    let request = if peers.is_empty() {
        ShareRequest::default()
    } else {
        ShareRequest {
            mode: Some("peers".into()),
            peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    };
    client.share(name, &request).await.unwrap();
}

/// Starts a node that claims `victim`'s id and name with a key of its own (as a host on the
/// LAN can: it writes the id into a legacy `node-id` file).
fn impostor(dir: &std::path::Path, victim: &TestNode, name: &str, port: u16) -> TestNode {
    std::fs::create_dir_all(dir).unwrap();
    let id = victim.node_id();
    std::fs::write(dir.join("node-id"), format!("{id}\n")).unwrap();
    TestNode::spawn_discovering(dir, name, port)
}

impl TestNode {
    /// The node's id: its legacy `node-id`, or the one its key derives.
    fn node_id(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node-id"))
            .map(|id| id.trim().to_string())
            .unwrap_or_else(|_| self.key.node_id().to_string())
    }
}

/// With a derived id (`legacy` false) the key must derive the id; with a legacy id, the first
/// key seen is pinned. Either way an impostor's key is refused, counted and shown, its
/// catalog never appears, and clones from the real node keep working.
async fn impostor_is_refused(legacy: bool) {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let alpha_dir = temp.path().join("alpha");
    if legacy {
        std::fs::create_dir_all(&alpha_dir).unwrap();
        std::fs::write(
            alpha_dir.join("node-id"),
            format!("{}\n", uuid::Uuid::new_v4()),
        )
        .unwrap();
    }
    let mut alpha = TestNode::spawn_discovering(&alpha_dir, "alpha", port);
    let beta = TestNode::spawn_discovering(&temp.path().join("beta"), "beta", port);
    share(&alpha, "real-ws", &[]).await;
    let client = beta.admin();
    eventually("beta lists alpha's workspace", || async {
        let entries = client
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap();
        entries.iter().any(|e| e.workspace.name == "real-ws")
    })
    .await;
    let alpha_id = client.peers().await.unwrap()[0].id;
    let mut events = client.events().await.unwrap();

    let evil = impostor(&temp.path().join("evil"), &alpha, "alpha", port);
    assert_ne!(evil.key, alpha.key);
    share(&evil, "evil-ws", &[]).await;
    eventually("beta shows alpha in conflict", || async {
        let peers = client.peers().await.unwrap();
        peers.iter().any(|p| {
            p.id == alpha_id
                && p.state == "conflict"
                && p.key_id == alpha.key.to_readable()
                && p.conflict
                    .as_ref()
                    .is_some_and(|c| c.key_id == evil.key.to_readable() && c.count >= 1)
        })
    })
    .await;
    // The event says who claimed what.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = actix_rt::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if message["type"] == "peer_conflict" {
            assert_eq!(message["conflict"]["id"], alpha_id.to_string());
            assert_eq!(
                message["conflict"]["presented_key_id"],
                evil.key.to_readable()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no peer_conflict event"
        );
    }
    let node = client.node().await.unwrap();
    assert!(node.discovery.key_conflicts >= 1);
    // Exactly one alpha, with the real key; the real catalog, never the impostor's.
    let peers = client.peers().await.unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    let entries = client
        .network_catalog(&NetworkQuery::default())
        .await
        .unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.workspace.name.as_str()).collect();
    assert_eq!(names, ["real-ws"]);
    // A clone from alpha reaches the real alpha.
    let job = common::transfer(&client, "clone", Some("alpha"), "real-ws").await;
    assert_eq!(job.state, "done", "{job:?}");
    let cloned = client.get("real-ws").await.unwrap();
    let path = std::path::PathBuf::from(cloned.workspace.path.unwrap());
    assert_eq!(
        std::fs::read_to_string(path.join("data/marker.txt")).unwrap(),
        "content of real-ws\n"
    );
    // With the real alpha gone, the impostor still gets nowhere.
    alpha.kill9();
    // The impostor goes on announcing: wait until several more of its claims were refused.
    let refused = client.node().await.unwrap().discovery.key_conflicts;
    eventually(
        "more of the impostor's announcements are refused",
        || async { client.node().await.unwrap().discovery.key_conflicts >= refused + 10 },
    )
    .await;
    let entries = client
        .network_catalog(&NetworkQuery::default())
        .await
        .unwrap();
    assert!(
        entries.iter().all(|e| e.workspace.name != "evil-ws"),
        "{entries:?}"
    );
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("alpha".into()),
            workspace: "evil-ws".into(),
            ..TransferRequestDto::default()
        })
        .await;
    assert!(job.is_err(), "{job:?}");
    // The pin survives a restart of the observer.
    drop(events);
    drop(beta);
}

#[actix_rt::test]
async fn an_impostor_copying_a_derived_id_is_refused() {
    impostor_is_refused(false).await;
}

#[actix_rt::test]
async fn an_impostor_copying_a_legacy_id_is_refused() {
    impostor_is_refused(true).await;
}

/// `sharing.peers` works only for trusted keys over mutual TLS: no header, no announced
/// name, no plain-HTTP request counts; trust is checked on every request, so revoking it
/// takes effect at once.
#[actix_rt::test]
async fn a_workspace_shared_with_a_peer_is_seen_only_by_that_peers_trusted_key() {
    let temp = tempfile::tempdir().unwrap();
    let b_identity = common::node_identity(&temp.path().join("b"), "node-b");
    let b_id = b_identity.id.to_string();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    share(&a, "secret", &["node-b"]).await;
    share(&a, "by-id", &[&b_id]).await;
    share(&a, "open", &[]).await;
    let listed = |catalog: aienv::api::CatalogDto| -> Vec<String> {
        let mut names: Vec<String> = catalog.items.into_iter().map(|i| i.name).collect();
        names.sort();
        names
    };

    // Spoofed headers, on plain HTTP and over TLS, change nothing.
    for header in ["node-b", b_id.as_str()] {
        let mut response = awc::Client::default()
            .get(format!("{}/api/v1/catalog", a.url))
            .insert_header(("X-Aienv-Peer", header))
            .send()
            .await
            .unwrap();
        let body: aienv::api::CatalogDto = response.json().await.unwrap();
        assert_eq!(listed(body), ["open"]);
        let status = awc::Client::default()
            .get(format!("{}/api/v1/workspaces/secret/snapshot", a.url))
            .insert_header(("X-Aienv-Peer", header))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 404);
    }
    let stranger = common::node_identity(&temp.path().join("c"), "node-c");
    let as_stranger = common::tls_client(&stranger, a.key);
    let mut response = as_stranger
        .get(format!("{}/api/v1/catalog", a.tls_url))
        .insert_header(("X-Aienv-Peer", b_id.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed(response.json().await.unwrap()),
        ["open"],
        "another key naming B in a header"
    );

    // B's own key, before anyone trusted it: known at most, sees what the LAN sees.
    let as_b = Client::as_node(&a.tls_url, None, &b_identity, a.key);
    assert_eq!(listed(as_b.catalog().await.unwrap()), ["open"]);
    let refused = as_b.snapshot("secret").await.unwrap_err();
    assert_eq!(refused.status(), Some(404));

    // A person on A trusts B by the key id read off B's machine, with B's name.
    let admin = a.admin();
    let wrong = admin
        .trust_peer(
            &b_identity.key.to_readable(),
            Some(&stranger.key.to_readable()),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("key-mismatch"), "{wrong}");
    let typo = {
        let mut id = b_identity.key.to_readable().into_bytes();
        id[3] = if id[3] == b'A' { b'B' } else { b'A' };
        String::from_utf8(id).unwrap()
    };
    let refused = admin.trust_peer(&typo, None).await.unwrap_err();
    assert_eq!(refused.code(), Some("invalid-key-id"), "{refused}");
    let record = admin
        .trust_peer(&b_identity.key.to_readable(), None)
        .await
        .unwrap();
    assert_eq!(record.id, b_identity.id);
    assert_eq!(
        admin.trusted_peers().await.unwrap(),
        vec![record.clone()],
        "listed as trusted"
    );
    // Shared by id: B now sees it; by name: only once the trust record carries the name.
    assert_eq!(listed(as_b.catalog().await.unwrap()), ["by-id", "open"]);
    assert!(!as_b.snapshot("by-id").await.unwrap().is_empty());
    // The stranger's key still sees only the LAN's share, whatever it claims.
    let mut response = as_stranger
        .get(format!("{}/api/v1/catalog", a.tls_url))
        .insert_header(("X-Aienv-Peer", b_id.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(listed(response.json().await.unwrap()), ["open"]);
    // Plain HTTP with B's id in the header: still nothing.
    let mut response = awc::Client::default()
        .get(format!("{}/api/v1/catalog", a.url))
        .insert_header(("X-Aienv-Peer", b_id.as_str()))
        .send()
        .await
        .unwrap();
    let body: aienv::api::CatalogDto = response.json().await.unwrap();
    assert_eq!(listed(body), ["open"]);

    // Revoked: from the next request on, B sees what the LAN sees.
    admin.untrust_peer(&b_id).await.unwrap();
    assert_eq!(listed(as_b.catalog().await.unwrap()), ["open"]);
    assert_eq!(
        as_b.snapshot("by-id").await.unwrap_err().status(),
        Some(404)
    );
    assert!(admin.trusted_peers().await.unwrap().is_empty());
    let again = admin.untrust_peer(&b_id).await.unwrap_err();
    assert_eq!(again.code(), Some("peer-not-found"));
}

/// Nodes that know each other by name: B polls A as a static peer and clones over mutual
/// TLS; A trusts B by name after comparing its key id, and the share by name reaches B.
#[actix_rt::test]
async fn trust_by_name_after_comparing_the_key_id() {
    let temp = tempfile::tempdir().unwrap();
    // Each polls the other as a static peer.
    let (port_a, port_b) = (common::free_tcp_port(), common::free_tcp_port());
    let node = |name: &str, port: u16, peer_port: u16| {
        let peer = format!("https://127.0.0.1:{peer_port}");
        TestNode::spawn_with_env(
            &temp.path().join(name),
            &[
                "--name",
                name,
                "--announce-interval",
                "0.2",
                "--http-port",
                &port.to_string(),
            ],
            &[("AIENV_DISCOVERY_STATIC_PEERS", peer.as_str())],
        )
    };
    let a = node("node-a", port_a, port_b);
    let b = node("node-b", port_b, port_a);
    share(&a, "team", &["node-b"]).await;
    share(&a, "lan", &[]).await;
    let admin_a = a.admin();
    let admin_b = b.admin();
    eventually("A sees B (static peer, untrusted)", || async {
        admin_a
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "node-b" && p.state == "online" && !p.trusted)
    })
    .await;
    eventually("B lists the LAN share only", || async {
        let entries = admin_b
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap();
        entries
            .iter()
            .map(|e| e.workspace.name.as_str())
            .collect::<Vec<_>>()
            == ["lan"]
    })
    .await;
    // The CLI: compare, then trust by name.
    let shown = admin_a.peers().await.unwrap();
    let b_row = shown.iter().find(|p| p.name == "node-b").unwrap();
    assert_eq!(b_row.key_id, b.key.to_readable());
    let output = a.cli(&["peers", "trust", "node-b", "--key", &b.key.to_readable()]);
    assert!(output.status.success(), "{output:?}");
    let output = a.cli(&["peers", "--trusted"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("node-b") && text.contains(&b.key.to_readable()),
        "{text}"
    );
    eventually("B sees the share by name once trusted", || async {
        let entries = admin_b
            .network_catalog(&NetworkQuery::default())
            .await
            .unwrap();
        entries.iter().any(|e| e.workspace.name == "team")
    })
    .await;
    let job = common::transfer(&admin_b, "clone", Some("node-a"), "team").await;
    assert_eq!(job.state, "done", "{job:?}");
    let detail = admin_b.get("team").await.unwrap();
    assert_eq!(
        detail
            .workspace
            .origin
            .as_ref()
            .map(|o| o.peer_name.as_str()),
        Some("node-a")
    );
    // Revoked: the next sync is refused by A (B no longer sees the workspace).
    let output = a.cli(&["peers", "untrust", "node-b"]);
    assert!(output.status.success(), "{output:?}");
    let job = common::transfer(&admin_b, "sync", None, "team").await;
    assert_eq!(job.state, "failed", "{job:?}");
}

/// Pairing with a short code: shown on B, typed on A; each then trusts the other. The proof
/// is bound to the keys of the connection: a third key that learnt the code cannot use it.
#[actix_rt::test]
async fn pairing_with_a_code_makes_both_nodes_trust_each_other() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let a = TestNode::spawn_discovering(&temp.path().join("a"), "node-a", port);
    let b = TestNode::spawn_discovering(&temp.path().join("b"), "node-b", port);
    let (admin_a, admin_b) = (a.admin(), b.admin());
    for (client, other) in [(&admin_a, "node-b"), (&admin_b, "node-a")] {
        eventually("the nodes hear each other", || async {
            client
                .peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.name == other && p.state == "online")
        })
        .await;
    }
    // No code shown: refused.
    let refused = admin_a.pair("node-b", "AAAAA-AAAAA").await.unwrap_err();
    assert_eq!(refused.code(), Some("pairing-refused"), "{refused}");

    // B shows a code (the CLI), A types a wrong one, then the right one.
    let output = b.cli(&["--json", "peers", "pair", "--show"]);
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let code = shown["code"].as_str().unwrap().to_string();
    assert_eq!(shown["key_id"], b.key.to_readable());
    let wrong = admin_a.pair("node-b", "AAAAA-AAAAB").await.unwrap_err();
    assert_eq!(wrong.code(), Some("pairing-refused"), "{wrong}");
    assert!(admin_a.trusted_peers().await.unwrap().is_empty());

    // A third key that learnt the code (over a shoulder) and proves it for itself: the proof
    // binds the caller's key, so B pairs with whoever calls only if that caller computed it.
    let stranger = common::node_identity(&temp.path().join("m"), "node-m");
    let proof_for_a = {
        use ring::hmac;
        let key = hmac::Key::new(hmac::HMAC_SHA256, code.replace('-', "").as_bytes());
        let mut context = hmac::Context::with_key(&key);
        context.update(b"aienv pair request");
        context.update(&b.key.0);
        context.update(&a.key.0);
        context
            .sign()
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let mut relayed = common::tls_client(&stranger, b.key)
        .post(format!("{}/api/v1/pairing/confirm", b.tls_url))
        .send_json(&serde_json::json!({"proof": proof_for_a}))
        .await
        .unwrap();
    assert_eq!(relayed.status().as_u16(), 403);
    let _ = relayed.body().await;
    // Plain HTTP has no key: refused.
    let mut plain = awc::Client::default()
        .post(format!("{}/api/v1/pairing/confirm", b.url))
        .send_json(&serde_json::json!({"proof": proof_for_a}))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 403);
    let _ = plain.body().await;

    let output = a.cli(&["peers", "pair", "node-b", "--code", &code.to_lowercase()]);
    assert!(output.status.success(), "{output:?}");
    let trusted_by_a = admin_a.trusted_peers().await.unwrap();
    assert_eq!(trusted_by_a.len(), 1);
    assert_eq!(trusted_by_a[0].key_id, b.key.to_readable());
    let trusted_by_b = admin_b.trusted_peers().await.unwrap();
    assert_eq!(trusted_by_b.len(), 1, "{trusted_by_b:?}");
    assert_eq!(trusted_by_b[0].key_id, a.key.to_readable());
    assert_eq!(trusted_by_b[0].name, "node-a");
    assert_eq!(trusted_by_b[0].by, "pairing");
    // Single use.
    let again = admin_a.pair("node-b", &code).await.unwrap_err();
    assert_eq!(again.code(), Some("pairing-refused"));

    // Five wrong codes withdraw a code.
    let shown = admin_b.pairing_code().await.unwrap();
    for _ in 0..5 {
        let _ = admin_a.pair("node-b", "AAAAA-AAAAB").await.unwrap_err();
    }
    let withdrawn = admin_a.pair("node-b", &shown.code).await.unwrap_err();
    assert!(
        withdrawn.to_string().contains("no pairing code"),
        "{withdrawn}"
    );
}
