//! Who may do what on a node: roles (admin, member, viewer) and each workspace's owner and
//! members, checked on every route, in the tool proxy (both origins) and the terminal.

mod common;

use std::process::Command;
use std::time::Duration;

use aienv::api::{AccessUpdate, CreateWorkspace, RunRequest, ShareRequest, TransferRequestDto};
use aienv::client::{Client, ClientError, Credentials};
use common::runtime::HELLO;
use common::TestNode;

fn add_user(node: &TestNode, name: &str, role: &str) {
    common::add_user(&node.data_dir, name, role, "correct horse battery");
}

/// `aienv user …` on the node's data dir.
fn user_cli(node: &TestNode, args: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .args(args)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .output()
        .unwrap()
}

fn user(node: &TestNode, name: &str) -> Client {
    Client::new(
        &node.url,
        Some(Credentials::Basic {
            user: name.into(),
            password: "correct horse battery".into(),
        }),
    )
}

fn basic(name: &str) -> String {
    format!(
        "Basic {}",
        aienv::auth::base64_encode(format!("{name}:correct horse battery").as_bytes())
    )
}

/// The error must be a 403 whose message says `needle`.
fn forbidden<T: std::fmt::Debug>(result: Result<T, ClientError>, needle: &str) {
    match result {
        Err(ClientError::Api {
            status: 403,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "forbidden", "{message}");
            assert!(message.contains(needle), "`{needle}` not in: {message}");
        }
        other => panic!("expected 403 ({needle}), got {other:?}"),
    }
}

async fn status_of(url: &str, authorization: &str, method: &str) -> u16 {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .finish()
        .request(method.parse().unwrap(), url)
        .insert_header(("authorization", authorization))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const SPEC: &str = "schema_version: 1
runtime: process
tools:
  - {name: app, kind: http, command: [python3, hello.py]}
  - {name: term, kind: terminal}
";

#[actix_rt::test]
async fn members_reach_only_their_workspaces_and_viewers_only_browse_and_clone() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let node = TestNode::spawn_discovering(&temp.path().join("here"), "here", port);
    let peer = TestNode::spawn_discovering(&temp.path().join("there"), "there", port);
    for (name, role) in [
        ("ada", "member"),
        ("bob", "member"),
        ("vic", "viewer"),
        ("root2", "admin"),
    ] {
        add_user(&node, name, role);
    }
    let (ada, bob, vic) = (user(&node, "ada"), user(&node, "bob"), user(&node, "vic"));

    // Ada makes a workspace: hers.
    ada.create(&CreateWorkspace {
        name: "ada-ws".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let root = ada.get("ada-ws").await.unwrap().workspace.path.unwrap();
    std::fs::write(std::path::Path::new(&root).join("hello.py"), HELLO).unwrap();
    ada.put_environment("ada-ws", "web", SPEC.into())
        .await
        .unwrap();
    let access = ada.access("ada-ws").await.unwrap();
    assert_eq!(
        (access.owner.as_str(), access.role.as_str()),
        ("ada", "member")
    );
    assert!(access.may_use && access.may_change && access.may_grant);

    // Bob browses it, and nothing more.
    assert_eq!(bob.get("ada-ws").await.unwrap().workspace.name, "ada-ws");
    let access = bob.access("ada-ws").await.unwrap();
    assert!(!access.may_use && !access.may_change && !access.may_grant);
    forbidden(bob.delete("ada-ws").await, "it belongs to `ada`");
    forbidden(
        bob.run("ada-ws", &RunRequest::default()).await,
        "may not run or open",
    );
    forbidden(
        bob.put_environment("ada-ws", "web", SPEC.into()).await,
        "may not change",
    );
    forbidden(
        bob.share("ada-ws", &ShareRequest::default()).await,
        "may not change",
    );
    forbidden(
        bob.set_access(
            "ada-ws",
            &AccessUpdate {
                members: Some(vec!["bob".into()]),
                ..Default::default()
            },
        )
        .await,
        "only its owner `ada`",
    );
    // Nor does he learn which user names exist by trying.
    forbidden(
        bob.set_access(
            "ada-ws",
            &AccessUpdate {
                members: Some(vec!["nobody".into()]),
                ..Default::default()
            },
        )
        .await,
        "only its owner `ada`",
    );
    // Members are users of this node.
    let error = ada
        .set_access(
            "ada-ws",
            &AccessUpdate {
                members: Some(vec!["nobody".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(422));

    // Ada runs it; Bob reaches neither its tool (either origin) nor its terminal or logs.
    let statuses = ada
        .run(
            "ada-ws",
            &RunRequest {
                wait: true,
                timeout_seconds: Some(120),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    let tool = format!("{}/w/ada-ws/app/", node.url);
    assert_eq!(status_of(&tool, &basic("ada"), "GET").await, 200);
    assert_eq!(status_of(&tool, &basic("bob"), "GET").await, 403);
    forbidden(
        bob.tool_ticket("ada-ws", "app").await,
        "may not run or open",
    );
    forbidden(
        bob.logs("ada-ws", None, None, false, None)
            .await
            .map(|_| ()),
        "may not run or open",
    );
    let terminal = bob.terminal("ada-ws", None, 80, 24).await;
    assert!(
        matches!(terminal, Err(ClientError::Api { status: 403, .. })),
        "{:?}",
        terminal.err()
    );
    let ticket = ada.tool_ticket("ada-ws", "app").await.unwrap();
    let origin = ticket.url.split("/_aienv/").next().unwrap().to_string();
    assert_eq!(
        status_of(&format!("{origin}/w/ada-ws/app/"), &basic("bob"), "GET").await,
        403
    );

    // Made a member, Bob may use it: run, stop, its tool, its terminal.
    ada.set_access(
        "ada-ws",
        &AccessUpdate {
            members: Some(vec!["bob".into(), "vic".into()]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&tool, &basic("bob"), "GET").await, 200);
    let bob_ticket = bob.tool_ticket("ada-ws", "app").await.unwrap();
    let client = awc::Client::builder().disable_redirects().finish();
    let response = client.get(&bob_ticket.url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let bob_cookie = common::set_cookie(response.headers(), "aienv_tool_");
    let on_origin = |cookie: String| {
        let url = format!("{origin}/w/ada-ws/app/");
        async move {
            awc::Client::default()
                .get(url)
                .insert_header(("cookie", cookie))
                .insert_header(("sec-fetch-mode", "cors"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(on_origin(bob_cookie.clone()).await, 200);
    assert!(bob.terminal("ada-ws", None, 80, 24).await.is_ok());
    forbidden(
        bob.set_access(
            "ada-ws",
            &AccessUpdate {
                members: Some(vec![]),
                ..Default::default()
            },
        )
        .await,
        "only its owner `ada`",
    );
    // A viewer stays a viewer, member or not.
    forbidden(
        vic.run("ada-ws", &RunRequest::default()).await,
        "viewers browse and clone",
    );
    assert_eq!(status_of(&tool, &basic("vic"), "GET").await, 403);

    // Membership taken back: Bob's open tool session stops working on its next request.
    ada.set_access(
        "ada-ws",
        &AccessUpdate {
            members: Some(vec![]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(on_origin(bob_cookie).await, 403);
    forbidden(bob.stop("ada-ws", None).await, "may not run or open");

    // Only admins give workspaces away, trust peers and pair.
    forbidden(
        ada.set_access(
            "ada-ws",
            &AccessUpdate {
                owner: Some("bob".into()),
                ..Default::default()
            },
        )
        .await,
        "only an admin",
    );
    let peer_id = peer.admin().node().await.unwrap().id.to_string();
    common::eventually("here sees there", || async {
        node.admin()
            .peers()
            .await
            .is_ok_and(|p| p.iter().any(|p| p.id.to_string() == peer_id))
    })
    .await;
    forbidden(
        ada.trust_peer("there", None).await,
        "only an admin may trust peers",
    );
    forbidden(ada.pairing_code().await, "only an admin may pair");
    let root2 = user(&node, "root2");
    root2.trust_peer("there", None).await.unwrap();
    root2
        .set_access(
            "ada-ws",
            &AccessUpdate {
                owner: Some("bob".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(bob.access("ada-ws").await.unwrap().may_grant);

    // A viewer cannot create, import, or make workspaces from the node's disk...
    forbidden(
        vic.create(&CreateWorkspace {
            name: "vic-ws".into(),
            ..Default::default()
        })
        .await,
        "viewers browse and clone",
    );
    // ...nor may a member read the node's files through `from_dir`.
    forbidden(
        ada.create(&CreateWorkspace {
            name: "etc".into(),
            from_dir: Some("/etc".into()),
            ..Default::default()
        })
        .await,
        "only an admin",
    );

    // A viewer clones: the clone is theirs to keep (sync, delete), not to run.
    peer.admin()
        .create(&CreateWorkspace {
            name: "shared".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    peer.admin()
        .put_environment("shared", "web", SPEC.into())
        .await
        .unwrap();
    peer.admin()
        .share("shared", &ShareRequest::default())
        .await
        .unwrap();
    common::eventually("here lists there's shared workspace", || async {
        node.admin()
            .network_catalog(&Default::default())
            .await
            .is_ok_and(|list| list.iter().any(|e| e.workspace.name == "shared"))
    })
    .await;
    let job = common::transfer(&vic, "clone", Some("there"), "shared").await;
    assert_eq!(job.state, "done", "{job:?}");
    let access = vic.access("shared").await.unwrap();
    assert_eq!(access.owner, "vic");
    assert!(!access.may_use);
    forbidden(
        vic.run("shared", &RunRequest::default()).await,
        "viewers browse and clone",
    );
    forbidden(bob.delete("shared").await, "it belongs to `vic`");
    let sync = vic
        .start_transfer(&TransferRequestDto {
            kind: "sync".into(),
            workspace: "shared".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    common::finished(&vic, sync.id).await;
    vic.delete("shared").await.unwrap();

    // Roles apply at once: made a member, Vic creates without signing in again.
    let output = user_cli(&node, &["user", "role", "vic", "member"]);
    assert!(output.status.success(), "{output:?}");
    vic.create(&CreateWorkspace {
        name: "vic-ws".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let output = user_cli(&node, &["user", "role", "vic", "boss"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin, member or viewer"));
    drop(peer);
}
