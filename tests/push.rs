//! Changes back to the origin between real nodes: a clone's edits land on the origin as a
//! new revision once the origin trusts the clone's node and lists it as a writer (an
//! untrusted or unlisted peer is refused, nothing applied); a path changed on both sides is
//! refused with its name, and `--force` decides; a plain sync keeps the clone's own changes
//! and takes the origin's; git projects go back as a branch named for the clone, never
//! moving the origin's own branches.

mod common;

use std::path::{Path, PathBuf};

use aienv::api::{CreateWorkspace, GitSourceDto, ShareRequest, TransferRequestDto};
use aienv::client::Client;
use common::git_server::{bare_repository, git, GitServer};
use common::{eventually, finished, free_udp_port, TestNode};

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path)).ok()
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn root_of(client: &Client, workspace: &str) -> PathBuf {
    PathBuf::from(client.get(workspace).await.unwrap().workspace.path.unwrap())
}

/// Two nodes that find each other over loopback multicast.
fn two_nodes(temp: &Path) -> (TestNode, TestNode) {
    let port = free_udp_port();
    (
        TestNode::spawn_discovering(&temp.join("a"), "node-a", port),
        TestNode::spawn_discovering(&temp.join("b"), "node-b", port),
    )
}

/// B clones A's `workspace`.
async fn clone_it(a: &TestNode, b: &TestNode, workspace: &str) {
    a.admin()
        .share(workspace, &ShareRequest::default())
        .await
        .unwrap();
    let client = b.admin();
    eventually("B sees A's workspace", || async {
        client
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.peer_name == "node-a" && e.workspace.name == workspace)
    })
    .await;
    let admin_a = a.admin();
    eventually("A sees B", || async {
        admin_a
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "node-b")
    })
    .await;
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("node-a".into()),
            workspace: workspace.into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap();
    assert_eq!(finished(&client, job.id).await.state, "done");
}

/// The last transfer was a sync with nothing to do, answered by its quick check: the
/// source's "not modified" and the clone's snapshot at the root its last transfer left.
async fn quick_check_answered(client: &Client) {
    let transfers = client.transfers().await.unwrap();
    let last = &transfers[0];
    assert_eq!(last.kind, "sync");
    assert!(
        last.notes.iter().any(|n| n.contains("already up to date")),
        "{:?}",
        last.notes
    );
    assert_eq!(
        last.progress.bytes_fetched, 0,
        "the quick check did not answer: a manifest came, {last:?}"
    );
}

fn run(node: &TestNode, args: &[&str]) -> (Option<i32>, String, String) {
    let out = node.cli(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn a_clone_pushes_its_changes_back_and_conflicts_are_refused_with_their_paths() {
    let temp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(temp.path());
    let (admin_a, admin_b) = (a.admin(), b.admin());
    admin_a
        .create(&CreateWorkspace {
            name: "proj".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let origin = root_of(&admin_a, "proj").await;
    for (path, text) in [
        ("a.txt", "a1\n"),
        ("b.txt", "b1\n"),
        ("c.txt", "c1\n"),
        ("dir/d.txt", "d1\n"),
    ] {
        write(&origin, path, text);
    }
    clone_it(&a, &b, "proj").await;
    let clone = root_of(&admin_b, "proj").await;
    let revision = admin_a.get("proj").await.unwrap().workspace.revision;

    // The clone edits, adds and removes.
    write(&clone, "a.txt", "a2 from b\n");
    write(&clone, "new.txt", "new on b\n");
    std::fs::remove_file(clone.join("c.txt")).unwrap();

    // The origin does not trust B: refused, nothing applied.
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("does not trust"), "{stderr}");
    // Trusted but not a writer: refused, and told how to allow it.
    admin_a.trust_peer("node-b", None).await.unwrap();
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("aienv ws access proj --writer node-b"),
        "{stderr}"
    );
    assert_eq!(read(&origin, "a.txt").as_deref(), Some("a1\n"));
    assert_eq!(
        admin_a.get("proj").await.unwrap().workspace.revision,
        revision
    );
    // A name that is no trusted peer cannot be a writer.
    let (code, _, stderr) = run(&a, &["ws", "access", "proj", "--writer", "nobody"]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("`nobody` is not a trusted peer"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run(&a, &["ws", "access", "proj", "--writer", "node-b"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("writers  node-b"), "{stdout}");

    // Now it lands, as a new revision by the clone.
    let (code, stdout, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("pushed 3 changed paths to node-a/proj"),
        "{stdout}"
    );
    assert_eq!(read(&origin, "a.txt").as_deref(), Some("a2 from b\n"));
    assert_eq!(read(&origin, "new.txt").as_deref(), Some("new on b\n"));
    assert_eq!(read(&origin, "c.txt"), None);
    assert_eq!(read(&origin, "b.txt").as_deref(), Some("b1\n"));
    let pushed = admin_a.get("proj").await.unwrap().workspace;
    assert_eq!(pushed.revision, revision + 1);
    let history = admin_a.revisions("proj").await.unwrap();
    let last = history.iter().max_by_key(|r| r.revision).unwrap();
    assert_eq!(
        (last.change.as_str(), last.by.as_str()),
        ("pushed", "proj@node-b")
    );
    let jobs = admin_a.transfers().await.unwrap();
    assert!(
        jobs.iter().any(|j| j.kind == "push" && j.state == "done"),
        "the push is a transfer on the origin: {jobs:?}"
    );
    hostile_pushes_are_refused(&a, &b, &origin).await;
    // Pushing again has nothing to send.
    let (code, stdout, _) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("nothing to push"), "{stdout}");

    // Both change b.txt: the push is refused with the path, nothing applied.
    write(&origin, "b.txt", "b from a\n");
    write(&clone, "b.txt", "b from b\n");
    write(&clone, "other.txt", "would have gone\n");
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("both changed: b.txt"), "{stderr}");
    assert_eq!(read(&origin, "b.txt").as_deref(), Some("b from a\n"));
    assert_eq!(read(&origin, "other.txt"), None);
    // So is a sync: it would overwrite the clone's b.txt.
    let (code, _, stderr) = run(&b, &["sync", "proj"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("b.txt"), "{stderr}");
    assert_eq!(read(&clone, "b.txt").as_deref(), Some("b from b\n"));
    let failed = admin_b.transfers().await.unwrap();
    assert!(
        failed
            .iter()
            .any(|j| j.kind == "sync" && j.state == "failed"),
        "{failed:?}"
    );

    // A sync keeps what only the clone changed and takes what only the origin changed;
    // `--force` takes the origin's version of what both changed.
    write(&origin, "dir/d.txt", "d2 from a\n");
    let (code, _, stderr) = run(&b, &["sync", "proj", "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read(&clone, "b.txt").as_deref(), Some("b from a\n"));
    assert_eq!(read(&clone, "dir/d.txt").as_deref(), Some("d2 from a\n"));
    write(&clone, "local.txt", "only on b\n");
    write(&origin, "a.txt", "a3 from a\n");
    let (code, _, stderr) = run(&b, &["sync", "proj"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read(&clone, "a.txt").as_deref(), Some("a3 from a\n"));
    assert_eq!(read(&clone, "local.txt").as_deref(), Some("only on b\n"));
    let synced = admin_b.transfers().await.unwrap();
    assert!(
        synced[0]
            .notes
            .iter()
            .any(|n| n.contains("kept what this clone changed")),
        "{:?}",
        synced[0].notes
    );
    // The clone's snapshot after that sync (amended from the one before it, not walked) is
    // the baseline a sync with nothing new checks first: answered without a manifest.
    let (code, _, stderr) = run(&b, &["sync", "proj"]);
    assert_eq!(code, Some(0), "{stderr}");
    quick_check_answered(&admin_b).await;
    // ... and pushes it on.
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read(&origin, "local.txt").as_deref(), Some("only on b\n"));
    assert_eq!(read(&origin, "a.txt").as_deref(), Some("a3 from a\n"));

    // A forced push overwrites what the origin changed too.
    write(&origin, "new.txt", "new from a\n");
    write(&clone, "new.txt", "new from b, forced\n");
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(4), "{stderr}");
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push", "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        read(&origin, "new.txt").as_deref(),
        Some("new from b, forced\n")
    );

    // Untrusted again: refused.
    admin_a.untrust_peer("node-b").await.unwrap();
    write(&clone, "late.txt", "x\n");
    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert_eq!(read(&origin, "late.txt"), None);
}

/// The origin checks the push again against its workspace as it is when the content has
/// arrived: a pushed path its own user changed while the push fetched is a conflict, and
/// that change stays; a change beside the pushed paths stays too, and the push lands.
#[actix_rt::test]
async fn what_the_origin_changes_while_a_push_fetches_is_kept() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let a = TestNode::spawn_discovering(&temp.path().join("a"), "node-a", port);
    // B serves its chunks slowly: the origin's push job is fetching for a while.
    let b = TestNode::spawn_discovering_with(
        &temp.path().join("b"),
        "node-b",
        port,
        &["--test-chunk-delay-ms", "1500"],
    );
    let (admin_a, admin_b) = (a.admin(), b.admin());
    admin_a
        .create(&CreateWorkspace {
            name: "proj".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let origin = root_of(&admin_a, "proj").await;
    for (path, text) in [("x.txt", "x1\n"), ("y.txt", "y1\n"), ("sub/z.txt", "z1\n")] {
        write(&origin, path, text);
    }
    clone_it(&a, &b, "proj").await;
    let clone = root_of(&admin_b, "proj").await;
    admin_a.trust_peer("node-b", None).await.unwrap();
    let (code, _, stderr) = run(&a, &["ws", "access", "proj", "--writer", "node-b"]);
    assert_eq!(code, Some(0), "{stderr}");

    // B pushes; while the origin fetches, its user changes `path` to `text` (not when the
    // push ended before fetching: its answer then says why).
    let push_changing = |path: &'static str, text: &'static str| {
        let (admin_a, admin_b, origin) = (admin_a.clone(), admin_b.clone(), origin.clone());
        async move {
            let done = std::cell::Cell::new(false);
            let push = async {
                let pushed = admin_b.push("proj", false).await;
                done.set(true);
                pushed
            };
            let change = async {
                eventually("the origin's push job is fetching", || async {
                    done.get()
                        || admin_a
                            .transfers()
                            .await
                            .unwrap()
                            .iter()
                            .any(|j| j.kind == "push" && j.state == "transferring")
                })
                .await;
                if !done.get() {
                    write(&origin, path, text);
                }
            };
            futures_util::future::join(push, change).await.0
        }
    };

    // B takes the origin's state with a forced sync, and waits for the job to be done, not
    // only for its files: until then the clone's base is the one before.
    let take_the_origins_state = || {
        let admin_b = admin_b.clone();
        async move {
            let synced = admin_b
                .start_transfer(&TransferRequestDto {
                    kind: "sync".into(),
                    workspace: "proj".into(),
                    force: true,
                    ..TransferRequestDto::default()
                })
                .await
                .unwrap()
                .id;
            eventually("the clone took the origin's state", || async {
                admin_b
                    .transfer(&synced.to_string())
                    .await
                    .is_ok_and(|job| job.state == "done")
            })
            .await;
        }
    };

    // Beside the pushed path: the push lands and the origin's own change stays.
    write(&clone, "x.txt", "x2 from b\n");
    let pushed = push_changing("sub/z.txt", "z2 on a\n").await;
    let pushed = pushed.unwrap();
    assert_eq!(pushed.state, "done", "{pushed:?}");
    assert_eq!(read(&origin, "x.txt").as_deref(), Some("x2 from b\n"));
    assert_eq!(read(&origin, "sub/z.txt").as_deref(), Some("z2 on a\n"));
    let revision = admin_a.get("proj").await.unwrap().workspace.revision;

    // The same path: a conflict, nothing applied, the origin's change kept.
    write(&clone, "y.txt", "y2 from b\n");
    write(&clone, "new.txt", "would have come\n");
    let pushed = push_changing("y.txt", "y2 on a\n").await;
    match pushed {
        Err(aienv::client::ClientError::Api {
            status,
            code,
            details,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (409, "conflict"));
            assert_eq!(details.unwrap()["paths"], serde_json::json!(["y.txt"]));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(read(&origin, "y.txt").as_deref(), Some("y2 on a\n"));
    assert_eq!(read(&origin, "new.txt"), None);
    assert_eq!(
        admin_a.get("proj").await.unwrap().workspace.revision,
        revision
    );

    // A directory the push removes, where the origin adds a file meanwhile: refused, and
    // the file is still there.
    take_the_origins_state().await;
    assert_eq!(read(&clone, "y.txt").as_deref(), Some("y2 on a\n"));
    std::fs::remove_dir_all(clone.join("sub")).unwrap();
    write(&clone, "x.txt", "x3 from b\n");
    let pushed = push_changing("sub/late.txt", "added on a\n").await;
    assert!(
        matches!(&pushed, Err(aienv::client::ClientError::Api { status: 409, code, .. }) if code == "conflict"),
        "{pushed:?}"
    );
    assert_eq!(
        read(&origin, "sub/late.txt").as_deref(),
        Some("added on a\n")
    );
    assert_eq!(read(&origin, "x.txt").as_deref(), Some("x2 from b\n"));

    // A path the origin already had as pushed when the push began (so its plan leaves it
    // alone), changed back to the base while the push runs: the rule would take the
    // clone's version again, but nothing would write it. Refused, naming it.
    take_the_origins_state().await;
    assert_eq!(
        read(&clone, "sub/late.txt").as_deref(),
        Some("added on a\n")
    );
    write(&clone, "x.txt", "x4 from b\n");
    write(&origin, "x.txt", "x4 from b\n");
    write(&clone, "w.txt", "needs a fetch\n");
    let pushed = push_changing("x.txt", "x2 from b\n").await;
    match pushed {
        Err(aienv::client::ClientError::Api {
            status,
            code,
            details,
            message,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
            assert_eq!(details.unwrap()["paths"], serde_json::json!(["x.txt"]));
            assert!(message.contains("push again"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(read(&origin, "x.txt").as_deref(), Some("x2 from b\n"));
    assert_eq!(read(&origin, "w.txt"), None);

    // A declared project that becomes a git checkout on the origin while the push runs: its
    // files now go back only as commits, so the push that writes one is refused.
    let manifest = admin_a.manifest("proj").await.unwrap();
    assert!(manifest.contains("\nprojects: []\n"), "{manifest}");
    let declared = manifest.replace(
        "\nprojects: []\n",
        "\nprojects:\n- name: lib\n  path: lib\n",
    );
    admin_a.put_manifest("proj", declared).await.unwrap();
    take_the_origins_state().await;
    write(&clone, "lib/new.py", "print('from b')\n");
    let pushed = push_changing("lib/.git/HEAD", "ref: refs/heads/main\n").await;
    match pushed {
        Err(aienv::client::ClientError::Api { message, .. }) => {
            assert!(
                message.contains("push request refused as the workspace is now")
                    && message.contains("`lib`")
                    && message.contains("a git project's files go back as commits"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(read(&origin, "lib/new.py"), None);
}

/// The origin fetches a push's content from the clone's node: when it has no address for it
/// (here it never saw it: discovery is off and only the clone lists the origin), the push is
/// refused at once, naming that node and what to set, instead of a job waiting for a peer
/// it cannot reach while the pushing side waits with it.
#[actix_rt::test]
async fn a_push_the_origin_cannot_fetch_is_refused_at_once_naming_the_clone() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(
        &temp.path().join("a"),
        &["--name", "node-a", "--announce-interval", "0.2"],
    );
    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    let (admin_a, admin_b) = (a.admin(), b.admin());
    admin_a
        .create(&CreateWorkspace {
            name: "proj".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let origin = root_of(&admin_a, "proj").await;
    write(&origin, "a.txt", "a1\n");
    admin_a
        .share("proj", &ShareRequest::default())
        .await
        .unwrap();
    eventually("B sees A's workspace", || async {
        admin_b
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.peer_name == "node-a" && e.workspace.name == "proj")
    })
    .await;
    let job = admin_b
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("node-a".into()),
            workspace: "proj".into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap();
    assert_eq!(finished(&admin_b, job.id).await.state, "done");
    // A trusts B's key (never seen: it is named by its id) and lets it write.
    let trusted = admin_a
        .trust_peer(&b.key.to_readable(), None)
        .await
        .unwrap();
    let (code, _, stderr) = run(&a, &["ws", "access", "proj", "--writer", &trusted.name]);
    assert_eq!(code, Some(0), "{stderr}");
    let clone = root_of(&admin_b, "proj").await;
    write(&clone, "a.txt", "a2 from b\n");

    let (code, _, stderr) = run(&b, &["sync", "proj", "--push"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`node-a` cannot fetch the pushed files: it has no address for `{}`",
            trusted.name
        )) && stderr.contains("discovery.static_peers"),
        "{stderr}"
    );
    assert_eq!(read(&origin, "a.txt").as_deref(), Some("a1\n"));
    assert!(
        admin_a.transfers().await.unwrap().is_empty(),
        "no push job was queued"
    );
}

#[actix_rt::test]
async fn git_projects_go_back_as_a_branch_named_for_the_clone() {
    let found = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip("git is not installed (apt install git)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let (_, head) = bare_repository(&repos, "tool");
    let server = GitServer::start(&repos, None);
    let (a, b) = two_nodes(temp.path());
    let created = a
        .admin()
        .create(&CreateWorkspace {
            git: Some(GitSourceDto {
                url: format!("{}/tool.git", server.url),
                git_ref: None,
            }),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let origin = PathBuf::from(created.workspace.path.unwrap()).join("projects/tool");
    clone_it(&a, &b, "tool").await;
    let admin_a = a.admin();
    admin_a.trust_peer("node-b", None).await.unwrap();
    let (code, _, stderr) = run(&a, &["ws", "access", "tool", "--writer", "node-b"]);
    assert_eq!(code, Some(0), "{stderr}");

    let clone = root_of(&b.admin(), "tool").await.join("projects/tool");
    write(&clone, "feature.py", "print('from b')\n");
    git(&clone, &["add", "feature.py"]);
    git(&clone, &["commit", "-q", "-m", "feature on b"]);
    let commit = git(&clone, &["rev-parse", "HEAD"]);
    write(&clone, "README.md", "uncommitted on b\n");

    let (code, stdout, stderr) = run(&b, &["sync", "tool", "--push"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("branch aienv/node-b/main set to"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 uncommitted paths were not pushed"),
        "{stdout}"
    );
    assert_eq!(git(&origin, &["rev-parse", "aienv/node-b/main"]), commit);
    assert_eq!(
        git(&origin, &["log", "-1", "--format=%s", "aienv/node-b/main"]),
        "feature on b"
    );
    // The origin's own branch and working tree did not move.
    assert_eq!(git(&origin, &["rev-parse", "main"]), head);
    assert_eq!(read(&origin, "feature.py"), None);
    assert_eq!(read(&origin, "README.md").as_deref(), Some("first\n"));
    git(&origin, &["fsck", "--no-progress", "--connectivity-only"]);
    // A plain sync keeps the clone's git state (its commit, not pushed to `main`) and its
    // uncommitted edit.
    let (code, _, stderr) = run(&b, &["sync", "tool"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), commit);
    assert_eq!(
        read(&clone, "README.md").as_deref(),
        Some("uncommitted on b\n")
    );
    let (code, _, stderr) = run(&b, &["sync", "tool"]);
    assert_eq!(code, Some(0), "{stderr}");
    quick_check_answered(&b.admin()).await;
    // Nothing new: the branch is already there, and no revision is added for nothing.
    let revision = admin_a.get("tool").await.unwrap().workspace.revision;
    let (code, stdout, stderr) = run(&b, &["sync", "tool", "--push"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("nothing to push"), "{stdout}");
    assert!(stdout.contains("already at"), "{stdout}");
    assert_eq!(
        admin_a.get("tool").await.unwrap().workspace.revision,
        revision
    );
}

/// A writer speaking the protocol itself, with B's own key over mutual TLS: what a push may
/// never change is refused by the origin (not merely left out by an honest clone), a
/// malformed body is refused, and content the clone cannot serve fails the push with nothing
/// applied.
async fn hostile_pushes_are_refused(a: &TestNode, b: &TestNode, origin: &Path) {
    use aienv_actors::snapshot::{EntryKind, Hash, SnapshotEntry};
    use aienv_actors::transfer_queue::push::{Change, PushRequest, PUSH_FORMAT};
    let identity =
        std::sync::Arc::new(aienv_actors::identity::load_or_create(&b.data_dir, "node-b").unwrap());
    let peer = aienv_actors::peer_registry::PeerEndpoint {
        url: a.tls_url.clone(),
        key: a.key,
    };
    let file = |path: &str, content: &[u8]| SnapshotEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        size: content.len() as u64,
        hash: Some(Hash::of(content)),
        target: None,
        chunks: Vec::new(),
    };
    let clone_id = b.admin().get("proj").await.unwrap().workspace.id;
    let request = |changes: Vec<Change>| PushRequest {
        format: PUSH_FORMAT,
        source_workspace_id: clone_id,
        source_name: "proj".into(),
        source_root: "/nowhere".into(),
        base_root: Hash([0; 32]),
        force: true,
        changes,
        branches: Vec::new(),
    };
    let send = |body: Vec<u8>| {
        let client = aienv::cluster_client::client(&identity, &peer);
        let url = format!("{}/api/v1/workspaces/proj/pushes", peer.url);
        async move {
            let mut response = client
                .post(url)
                .content_type(aienv::http::PUSH_TYPE)
                .send_body(body)
                .await
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            (response.status().as_u16(), body)
        }
    };
    let sharing = b"schema_version: 1\nname: proj\nsharing: {enabled: true}\n";
    let (status, body) = send(
        request(vec![Change {
            path: "workspace.yaml".into(),
            base: None,
            new: Some(file("workspace.yaml", sharing)),
        }])
        .encode(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid-push");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workspace.yaml"),
        "{body}"
    );
    let (status, body) = send(b"not a push".to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid-push"))
    );
    // Content the clone does not have: the origin fetches, gets nothing, applies nothing.
    let revision = a.admin().get("proj").await.unwrap().workspace.revision;
    let (status, body) = send(
        request(vec![Change {
            path: "forged.txt".into(),
            base: None,
            new: Some(file("forged.txt", b"content nobody serves")),
        }])
        .encode(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "push-failed");
    assert!(!origin.join("forged.txt").exists());
    assert_eq!(
        a.admin().get("proj").await.unwrap().workspace.revision,
        revision
    );
}
