//! The live event stream: snapshot first, then every change in order; cross-origin browser
//! connections and anonymous clients are refused.

mod common;

use std::time::Duration;

use aienv::api::{CreateWorkspace, ShareRequest, UpdateWorkspace};
use common::TestNode;
use futures_util::StreamExt;

#[actix_rt::test]
async fn snapshot_then_events_in_order() {
    let node = TestNode::spawn();
    let client = node.admin();
    client
        .create(&CreateWorkspace {
            name: "before".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut stream = client.events().await.unwrap();
    let snapshot = stream.next().await.unwrap().unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["workspaces"][0]["name"], "before");
    assert_eq!(snapshot["node"]["name"], "test-node");
    let mut last_seq = snapshot["seq"].as_u64().unwrap();

    client
        .create(&CreateWorkspace {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .update(
            "a",
            &UpdateWorkspace {
                title: Some("t".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client.share("a", &ShareRequest::default()).await.unwrap();
    client.restore("a", 1).await.unwrap();
    client.delete("before").await.unwrap();
    for i in 0..20 {
        client
            .create(&CreateWorkspace {
                name: format!("n{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    while seen.len() < 25 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(event["type"], "workspace_changed");
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "events in order: {seq} after {last_seq}");
        last_seq = seq;
        seen.push(format!(
            "{} {}",
            event["change"].as_str().unwrap(),
            event["name"].as_str().unwrap()
        ));
    }
    let mut expected = vec![
        "created a".to_string(),
        "updated a".into(),
        "sharing-changed a".into(),
        "restored a".into(),
        "deleted before".into(),
    ];
    expected.extend((0..20).map(|i| format!("created n{i}")));
    assert_eq!(seen, expected);
}

#[actix_rt::test]
async fn cross_origin_and_anonymous_upgrades_are_refused() {
    let node = TestNode::spawn();
    let url = format!("{}/api/v1/events", node.url.replacen("http", "ws", 1));
    let token = format!("Bearer {}", node.token());

    let client = awc::Client::default();
    let foreign = client
        .ws(&url)
        .header("authorization", token.clone())
        .origin("http://evil.example")
        .connect()
        .await;
    match foreign {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 403)
        }
        other => panic!("cross-origin upgrade not refused: {:?}", other.map(|_| ())),
    }

    let anonymous = client.ws(&url).connect().await;
    match anonymous {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 401)
        }
        other => panic!("anonymous upgrade not refused: {:?}", other.map(|_| ())),
    }

    // Same origin (a dashboard served by the node itself) is fine.
    let origin = node.url.clone();
    let same = client
        .ws(&url)
        .header("authorization", token)
        .origin(origin.as_str())
        .connect()
        .await;
    assert!(same.is_ok());
}

#[actix_rt::test]
async fn a_stalled_client_is_resnapshotted_and_does_not_stall_the_node() {
    let temp = tempfile::tempdir().unwrap();
    let node = TestNode::spawn_with_env(
        &temp.path().join("data"),
        &[],
        &[("AIENV_HTTP_EVENT_BUFFER", "8")],
    );
    let client = node.admin();
    // Open a stream, take the snapshot, then stop reading while ~12 MB of events are published
    // (more than the socket buffers hold, so the gateway's subscriber falls behind the bus).
    let mut stalled = client.events().await.unwrap();
    assert_eq!(stalled.next().await.unwrap().unwrap()["type"], "snapshot");
    let big = "x".repeat(9500);
    let count = 1200;
    for i in 0..count {
        client
            .create(&CreateWorkspace {
                name: format!("w{i}"),
                description: Some(big.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The node kept answering throughout.
    assert_eq!(client.list(&Default::default()).await.unwrap().total, count);

    // Reading again, the client finds a resync snapshot instead of the events it missed, and
    // the state it ends with is complete.
    let mut names = std::collections::BTreeSet::new();
    let mut resynced = false;
    while names.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), stalled.next())
            .await
            .expect("message within 30 s")
            .unwrap()
            .unwrap();
        match message["type"].as_str().unwrap() {
            "snapshot" => {
                assert_eq!(message["resync"], true);
                resynced = true;
                names = message["workspaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["name"].as_str().unwrap().to_string())
                    .collect();
            }
            "workspace_changed" => {
                names.insert(message["name"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected message type {other}"),
        }
    }
    assert!(
        resynced,
        "a client that fell behind must get a resync snapshot"
    );
}
