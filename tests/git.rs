//! Git projects between real nodes, against a real git server on loopback (`git
//! http-backend`): `ws create --git`, a clone that arrives as a checkout rebuilt from the
//! remote with the source's uncommitted work on top (or the transferred copy when the remote
//! is gone), private repositories through the node's credential helper, clear errors and no
//! prompt for a wrong credential, and a hostile `.git/config` that never runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, GitSourceDto, ShareRequest, TransferRequestDto};
use aienv::client::Client;
use common::git_server::{bare_repository, git, GitServer};
use common::{eventually, finished, TestNode};

fn have_git() -> bool {
    let found = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip("git is not installed (apt install git)");
    }
    found
}

/// A node whose only peer is `source`.
fn peer_of(dir: &Path, name: &str, source: &TestNode) -> TestNode {
    TestNode::spawn_with_env(
        dir,
        &["--name", name, "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", source.tls_url.as_str())],
    )
}

async fn create_from_git(client: &Client, url: &str, git_ref: Option<&str>) -> PathBuf {
    let created = client
        .create(&CreateWorkspace {
            git: Some(GitSourceDto {
                url: url.into(),
                git_ref: git_ref.map(str::to_string),
            }),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    PathBuf::from(created.workspace.path.unwrap())
}

async fn clone_from(client: &Client, peer: &str, workspace: &str) -> aienv::api::TransferDto {
    eventually(&format!("{peer}/{workspace} is listed"), || async {
        client
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.peer_name == peer && e.workspace.name == workspace)
    })
    .await;
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some(peer.into()),
            workspace: workspace.into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap();
    let job = finished(client, job.id).await;
    assert_eq!(job.state, "done", "{job:?}");
    job
}

#[actix_rt::test]
async fn a_git_project_arrives_as_a_checkout_from_its_remote_with_the_source_work_on_top() {
    if !have_git() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let (first, second) = bare_repository(&repos, "tool");
    let (_, offline_head) = bare_repository(&repos, "offline");
    let server = GitServer::start(&repos, None);
    let offline_server = GitServer::start(&repos, None);

    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let client_a = a.admin();

    // `ws create --git URL@REF` (the CLI's spelling): a tag checks out detached at its commit.
    let url = format!("{}/tool.git", server.url);
    let out = a.cli(&["ws", "create", "tagged", "--git", &format!("{url}@v1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tagged = client_a.get("tagged").await.unwrap().workspace;
    let project = &tagged.projects[0];
    assert_eq!(project.path, "projects/tool");
    let state = project.git.as_ref().expect("a checkout's state is shown");
    assert_eq!(state.commit.as_deref(), Some(first.as_str()));
    assert_eq!(state.branch, None, "a tag is checked out detached");
    assert!(
        tagged.environments.contains(&"default".to_string()),
        "detection proposed one"
    );

    // The default branch, named after the repository; the source works on it.
    let root = create_from_git(&client_a, &url, None).await;
    let checkout = root.join("projects/tool");
    client_a
        .share("tool", &ShareRequest::default())
        .await
        .unwrap();
    std::fs::write(checkout.join("README.md"), "first\nedited on a\n").unwrap();
    std::fs::write(checkout.join("notes.txt"), "untracked\n").unwrap();
    git(&checkout, &["config", "user.name", "Only On A"]);
    let shown = client_a.get("tool").await.unwrap().workspace;
    let state = shown.projects[0].git.clone().unwrap();
    assert_eq!(state.commit.as_deref(), Some(second.as_str()));
    assert_eq!(state.branch.as_deref(), Some("main"));
    assert!(state.dirty);
    assert_eq!(state.changed, vec!["README.md", "notes.txt"]);
    assert_eq!(state.remotes[0].name, "origin");
    assert_eq!(state.remotes[0].url, url);
    let text = a.cli(&["ws", "show", "tool"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("on main (origin/main"), "{text}");
    assert!(
        text.contains("2 uncommitted: README.md, notes.txt"),
        "{text}"
    );

    // A workspace whose remote will be gone when it is cloned.
    let offline_url = format!("{}/offline.git", offline_server.url);
    let offline_root = create_from_git(&client_a, &offline_url, None).await;
    client_a
        .share("offline", &ShareRequest::default())
        .await
        .unwrap();
    git(
        &offline_root.join("projects/offline"),
        &["config", "user.name", "Kept"],
    );

    let b = peer_of(&temp.path().join("b"), "node-b", &a);
    let client_b = b.admin();
    let served_before = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    let job = clone_from(&client_b, "node-a", "tool").await;
    let note = job
        .notes
        .iter()
        .find(|n| n.starts_with("projects/tool:"))
        .unwrap_or_else(|| panic!("a note for the project: {:?}", job.notes));
    assert!(note.contains(&format!("checked out from {url}")), "{note}");
    assert!(
        note.contains("2 uncommitted change(s) laid on top: README.md, notes.txt"),
        "{note}"
    );
    assert!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst) > served_before,
        "the history came from the remote"
    );
    let clone = b
        .admin()
        .get("tool")
        .await
        .unwrap()
        .workspace
        .path
        .map(PathBuf::from)
        .unwrap();
    let there = clone.join("projects/tool");
    assert_eq!(git(&there, &["rev-parse", "HEAD"]), second);
    assert_eq!(git(&there, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(git(&there, &["remote", "get-url", "origin"]), url);
    assert_eq!(
        git(&there, &["rev-parse", "--abbrev-ref", "main@{upstream}"]),
        "origin/main"
    );
    assert_eq!(
        std::fs::read_to_string(there.join("README.md")).unwrap(),
        "first\nedited on a\n"
    );
    assert_eq!(
        git(&there, &["status", "--porcelain"]),
        "M README.md\n?? notes.txt"
    );
    let config = std::fs::read_to_string(there.join(".git/config")).unwrap();
    assert!(
        !config.contains("Only On A"),
        "the repository was rebuilt: {config}"
    );
    let shown = client_b.get("tool").await.unwrap().workspace;
    let state = shown.projects[0].git.clone().unwrap();
    assert_eq!(state.commit.as_deref(), Some(second.as_str()));
    assert_eq!(state.changed_count, 2);

    // The remote is gone: the transferred checkout is used as it came.
    offline_server.shut();
    let job = clone_from(&client_b, "node-a", "offline").await;
    let note = job
        .notes
        .iter()
        .find(|n| n.starts_with("projects/offline:"))
        .unwrap();
    assert!(note.contains("kept the transferred checkout"), "{note}");
    assert!(note.contains("not reachable"), "{note}");
    let there = PathBuf::from(
        client_b
            .get("offline")
            .await
            .unwrap()
            .workspace
            .path
            .unwrap(),
    )
    .join("projects/offline");
    assert_eq!(git(&there, &["rev-parse", "HEAD"]), offline_head);
    assert_eq!(git(&there, &["config", "user.name"]), "Kept");
    assert_eq!(git(&there, &["status", "--porcelain"]), "");
}

#[actix_rt::test]
async fn a_private_repository_is_reached_with_the_node_credentials_and_a_wrong_one_fails_clearly() {
    if !have_git() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let (_, second) = bare_repository(&repos, "secret");
    let server = GitServer::start(&repos, Some(("alice", "s3cret-token")));
    let url = format!("{}/secret.git", server.url);
    let token_file = temp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();

    let with_config = |name: &str, password_file: &Path| {
        let config = temp.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "git:\n  credentials:\n    - url: {}/\n      username: alice\n      password_file: {}\n",
                server.url,
                password_file.display()
            ),
        )
        .unwrap();
        TestNode::spawn_on(
            &temp.path().join(name),
            &["--name", name, "--config", config.to_str().unwrap()],
        )
    };

    let good = with_config("good", &token_file);
    let root = create_from_git(&good.admin(), &url, None).await;
    let checkout = root.join("projects/secret");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), second);
    // Nothing of the credential is in the workspace.
    let mut found = Vec::new();
    grep(&root, b"s3cret-token", &mut found);
    assert!(found.is_empty(), "the token leaked into {found:?}");
    // `config show` never prints a password.
    let wrong_file = temp.path().join("wrong-token");
    std::fs::write(&wrong_file, "not-it\n").unwrap();

    // `config show` never prints a password.
    let inline = temp.path().join("inline.yaml");
    std::fs::write(
        &inline,
        "git:\n  credentials:\n    - url: https://h/\n      username: u\n      password: inline-secret\n",
    )
    .unwrap();
    let shown = good.cli(&["config", "show", "--config", inline.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("git.credentials"), "{shown}");
    assert!(!shown.contains("inline-secret"), "{shown}");

    // Without credentials, and with a wrong one: a clear error, at once, no prompt.
    for node in [
        TestNode::spawn_on(&temp.path().join("none"), &["--name", "none"]),
        with_config("wrong", &wrong_file),
    ] {
        let started = Instant::now();
        let error = node
            .admin()
            .create(&CreateWorkspace {
                git: Some(GitSourceDto {
                    url: url.clone(),
                    git_ref: None,
                }),
                ..CreateWorkspace::default()
            })
            .await
            .unwrap_err();
        let text = error.to_string();
        assert_eq!(error.status(), Some(422), "{text}");
        assert!(text.contains("refused access"), "{text}");
        assert!(text.contains("git.credentials"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "git waited for a prompt"
        );
        assert!(
            node.admin().get("secret").await.is_err(),
            "nothing was created"
        );
    }
}

#[actix_rt::test]
async fn a_hostile_git_config_is_never_run_by_the_node() {
    if !have_git() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let repos = temp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    bare_repository(&repos, "tool");
    let server = GitServer::start(&repos, None);
    let url = format!("{}/tool.git", server.url);
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = create_from_git(&a.admin(), &url, None).await;
    a.admin()
        .share("tool", &ShareRequest::default())
        .await
        .unwrap();
    let checkout = root.join("projects/tool");
    let marker = temp.path().join("ran");
    // What an environment (or the peer that sent the workspace) could write.
    git(
        &checkout,
        &[
            "config",
            "core.fsmonitor",
            &format!("touch {}; false", marker.display()),
        ],
    );
    std::fs::write(checkout.join("README.md"), "changed\n").unwrap();

    let state = a.admin().get("tool").await.unwrap().workspace.projects[0]
        .git
        .clone()
        .unwrap();
    let error = state.error.expect("the node refused to run git there");
    assert!(error.contains("core.fsmonitor"), "{error}");

    let b = peer_of(&temp.path().join("b"), "node-b", &a);
    let job = clone_from(&b.admin(), "node-a", "tool").await;
    let note = job
        .notes
        .iter()
        .find(|n| n.starts_with("projects/tool:"))
        .unwrap();
    assert!(note.contains("kept the transferred copy"), "{note}");
    assert!(note.contains("core.fsmonitor"), "{note}");
    assert!(!marker.exists(), "the repository's fsmonitor command ran");

    // A manifest whose project is declared with a credential in its URL is refused.
    let manifest = a.admin().manifest("tool").await.unwrap();
    let leaked = manifest.replace(&url, "http://bob:hunter2@127.0.0.1:1/x.git");
    let error = a
        .admin()
        .put_manifest("tool", leaked)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("projects[0].git.url"), "{error}");
    assert!(error.contains("credential"), "{error}");
}

fn grep(dir: &Path, needle: &[u8], found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            grep(&path, needle, found);
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
}
