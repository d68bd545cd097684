//! Workspace CRUD, filters and search, revisions, environments and persistence, through the
//! client against a real node.

mod common;

use aienv::api::{CreateWorkspace, ShareRequest, UpdateWorkspace};
use aienv::client::ListQuery;
use common::TestNode;

fn create(
    name: &str,
    kind: &str,
    tags: &[&str],
    tools: &[&str],
    langs: &[&str],
) -> CreateWorkspace {
    CreateWorkspace {
        name: name.into(),
        title: Some(format!("Title of {name}")),
        description: Some(format!("Description of {name}")),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        kind: Some(kind.into()),
        tools: tools.iter().map(|s| s.to_string()).collect(),
        languages: langs.iter().map(|s| s.to_string()).collect(),
        ..CreateWorkspace::default()
    }
}

fn names(items: &[aienv::api::WorkspaceDto]) -> Vec<&str> {
    items.iter().map(|w| w.name.as_str()).collect()
}

#[actix_rt::test]
async fn crud_filter_search_revisions() {
    let node = TestNode::spawn();
    let client = node.admin();

    client
        .create(&create(
            "llama-ft",
            "fine-tuning",
            &["nlp", "llm"],
            &["jupyterlab"],
            &["python"],
        ))
        .await
        .unwrap();
    client
        .create(&create(
            "yolo-train",
            "training",
            &["vision"],
            &["vscode"],
            &["python"],
        ))
        .await
        .unwrap();
    client
        .create(&create("rust-infer", "inference", &["llm"], &[], &["rust"]))
        .await
        .unwrap();

    // Name clash.
    let error = client
        .create(&create("llama-ft", "general", &[], &[], &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(409), Some("name-taken"))
    );

    let all = client.list(&ListQuery::default()).await.unwrap();
    assert_eq!(names(&all.items), ["llama-ft", "rust-infer", "yolo-train"]);
    let check = |query: ListQuery, expected: &'static [&'static str]| {
        let client = client.clone();
        async move {
            let page = client.list(&query).await.unwrap();
            assert_eq!(names(&page.items), expected, "{query:?}");
        }
    };
    check(
        ListQuery {
            kind: Some("training".into()),
            ..Default::default()
        },
        &["yolo-train"],
    )
    .await;
    check(
        ListQuery {
            tag: Some("llm".into()),
            ..Default::default()
        },
        &["llama-ft", "rust-infer"],
    )
    .await;
    check(
        ListQuery {
            tool: Some("jupyterlab".into()),
            ..Default::default()
        },
        &["llama-ft"],
    )
    .await;
    check(
        ListQuery {
            lang: Some("rust".into()),
            ..Default::default()
        },
        &["rust-infer"],
    )
    .await;
    check(
        ListQuery {
            q: Some("DESCRIPTION yolo".into()),
            ..Default::default()
        },
        &["yolo-train"],
    )
    .await;
    check(
        ListQuery {
            q: Some("nothing-matches".into()),
            ..Default::default()
        },
        &[],
    )
    .await;

    // Pagination with a cursor.
    let first = client
        .list(&ListQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (first.total, first.next_cursor.as_deref()),
        (3, Some("rust-infer"))
    );
    let second = client
        .list(&ListQuery {
            limit: Some(2),
            cursor: first.next_cursor,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&second.items), ["yolo-train"]);

    // Update bumps the revision; a stale expected revision is refused.
    let updated = client
        .update(
            "llama-ft",
            &UpdateWorkspace {
                title: Some("New title".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.revision, 2);
    let stale = client
        .update(
            "llama-ft",
            &UpdateWorkspace {
                title: Some("x".into()),
                expected_revision: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some("revision-conflict"));

    // Share, unshare, rename.
    let shared = client
        .share("llama-ft", &ShareRequest::default())
        .await
        .unwrap();
    assert!(shared.sharing.enabled);
    assert_eq!(shared.revision, 3);
    check(
        ListQuery {
            shared: Some(true),
            ..Default::default()
        },
        &["llama-ft"],
    )
    .await;
    let renamed = client
        .update(
            "llama-ft",
            &UpdateWorkspace {
                name: Some("llama-ft2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((renamed.name.as_str(), renamed.revision), ("llama-ft2", 4));
    assert_eq!(
        client.get("llama-ft").await.unwrap_err().status(),
        Some(404)
    );
    let by_id = client.get(&renamed.id.to_string()).await.unwrap();
    assert_eq!(by_id.workspace.name, "llama-ft2");

    // History and restore.
    let history = client.revisions("llama-ft2").await.unwrap();
    let changes: Vec<(u64, &str)> = history
        .iter()
        .map(|r| (r.revision, r.change.as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            (1, "created"),
            (2, "updated"),
            (3, "sharing-changed"),
            (4, "updated")
        ]
    );
    let first_revision = client.revision("llama-ft2", 1).await.unwrap();
    assert!(first_revision.workspace_yaml.contains("Title of llama-ft"));
    let restored = client.restore("llama-ft2", 1).await.unwrap();
    assert_eq!(
        (
            restored.revision,
            restored.title.as_str(),
            restored.name.as_str()
        ),
        (5, "Title of llama-ft", "llama-ft")
    );
    assert!(!restored.sharing.enabled);
    assert_eq!(
        client.revision("llama-ft", 99).await.unwrap_err().code(),
        Some("revision-not-found")
    );

    // YAML editing round trip.
    let text = client.manifest("llama-ft").await.unwrap();
    let edited = text.replace("title: Title of llama-ft", "title: Edited in YAML");
    let after = client
        .put_manifest("llama-ft", edited.clone())
        .await
        .unwrap();
    assert_eq!(
        (after.title.as_str(), after.revision),
        ("Edited in YAML", 6)
    );
    // The same text again is now stale (revision 5 in it).
    let conflict = client.put_manifest("llama-ft", edited).await.unwrap_err();
    assert_eq!(conflict.code(), Some("revision-conflict"));

    // Environments.
    let env = "schema_version: 1\nruntime: process\ntools:\n  - {name: lab, kind: jupyterlab, command: [jupyter, lab]}\n";
    let with_env = client
        .put_environment("llama-ft", "gpu", env.into())
        .await
        .unwrap();
    assert_eq!(with_env.environments, ["gpu"]);
    assert!(client
        .environment("llama-ft", "gpu")
        .await
        .unwrap()
        .contains("jupyterlab"));
    let detail = client.get("llama-ft").await.unwrap();
    assert_eq!(detail.environment_specs["gpu"]["runtime"], "process");
    let path = std::path::PathBuf::from(detail.workspace.path.clone().unwrap());
    assert!(path.join("environments/gpu/environment.yaml").is_file());
    let bad_env = client
        .put_environment(
            "llama-ft",
            "gpu",
            "schema_version: 1\nruntime: Pod Man\n".into(),
        )
        .await
        .unwrap_err();
    assert_eq!(bad_env.code(), Some("invalid-yaml"));
    assert!(
        bad_env.to_string().contains("is not a runtime"),
        "{bad_env}"
    );
    assert!(
        bad_env
            .to_string()
            .contains("environments/gpu/environment.yaml:2"),
        "{bad_env}"
    );

    // Delete.
    client.delete("yolo-train").await.unwrap();
    assert_eq!(
        client.get("yolo-train").await.unwrap_err().code(),
        Some("workspace-not-found")
    );
    assert_eq!(node.dir_names("workspaces").len(), 2);
    // Its files are removed in the background.
    common::eventually("the deleted workspace's files are gone", || async {
        node.dir_names("trash").is_empty()
    })
    .await;
}

#[actix_rt::test]
async fn templates_and_adopting_a_directory() {
    let node = TestNode::spawn();
    let client = node.admin();

    let notebook = client
        .create(&CreateWorkspace {
            name: "nb".into(),
            template: Some("notebook".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(notebook.workspace.kind, "notebook");
    assert_eq!(notebook.workspace.environments, ["default"]);
    let root = std::path::PathBuf::from(notebook.workspace.path.unwrap());
    for file in [
        "workspace.yaml",
        "environments/default/environment.yaml",
        "projects/main/requirements.txt",
    ] {
        assert!(root.join(file).is_file(), "{file}");
    }
    for dir in ["projects", "environments", "data", "scripts"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    let unknown = client
        .create(&CreateWorkspace {
            name: "x".into(),
            template: Some("cobol".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("bad-request"));
    assert!(node.dir_names("staging").is_empty());

    // Adopt a plain project directory: it becomes projects/<name>.
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("requirements.txt"), "torch\n").unwrap();
    std::fs::create_dir(source.path().join("src")).unwrap();
    std::fs::write(source.path().join("src/train.py"), "print(1)\n").unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", source.path().join("python")).unwrap();
    let adopted = client
        .create(&CreateWorkspace {
            name: "adopted".into(),
            from_dir: Some(source.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(adopted.workspace.languages, ["python"]);
    assert_eq!(adopted.workspace.projects[0].path, "projects/adopted");
    let root = std::path::PathBuf::from(adopted.workspace.path.unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("projects/adopted/src/train.py")).unwrap(),
        "print(1)\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("projects/adopted/python"))
            .unwrap()
            .to_str(),
        Some("/usr/bin/python3")
    );

    // Adopt a workspace directory: its workspace.yaml and environments are kept and validated.
    let ws_dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    std::fs::write(
        ws_dir.path().join("workspace.yaml"),
        format!("schema_version: 1\nid: {id}\nname: kept\ntitle: Kept title\nrevision: 7\ncreated: 2026-01-01T00:00:00Z\nupdated: 2026-01-01T00:00:00Z\nenvironments: [cpu, missing]\n"),
    )
    .unwrap();
    std::fs::create_dir_all(ws_dir.path().join("environments/cpu")).unwrap();
    std::fs::write(
        ws_dir.path().join("environments/cpu/environment.yaml"),
        "schema_version: 1\nruntime: process\n",
    )
    .unwrap();
    let kept = client
        .create(&CreateWorkspace {
            from_dir: Some(ws_dir.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            kept.workspace.name.as_str(),
            kept.workspace.title.as_str(),
            kept.workspace.id
        ),
        ("kept", "Kept title", id)
    );
    assert_eq!(kept.workspace.environments, ["cpu", "missing"]);
    assert!(
        kept.notes
            .iter()
            .any(|n| n.contains("created missing environments/missing")),
        "{:?}",
        kept.notes
    );

    // A workspace-shaped directory without workspace.yaml keeps its environments.
    let shaped = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(shaped.path().join("environments/gpu")).unwrap();
    std::fs::write(
        shaped.path().join("environments/gpu/environment.yaml"),
        "schema_version: 1\nruntime: docker\n",
    )
    .unwrap();
    std::fs::create_dir_all(shaped.path().join("data")).unwrap();
    std::fs::write(shaped.path().join("data/x.csv"), "a,b\n").unwrap();
    let shaped_ws = client
        .create(&CreateWorkspace {
            name: "shaped".into(),
            from_dir: Some(shaped.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(shaped_ws.workspace.environments, ["gpu"]);
    assert!(shaped_ws.workspace.projects.is_empty());
    let root = std::path::PathBuf::from(shaped_ws.workspace.path.unwrap());
    assert!(root.join("data/x.csv").is_file() && root.join("workspace.yaml").is_file());

    // An invalid workspace.yaml in the adopted directory names the file, line and field.
    std::fs::write(
        ws_dir.path().join("workspace.yaml"),
        "schema_version: 1\nname: other\nrevison: 1\n",
    )
    .unwrap();
    let error = client
        .create(&CreateWorkspace {
            from_dir: Some(ws_dir.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid-yaml"));
    let message = error.to_string();
    assert!(
        message.contains("workspace.yaml:3") && message.contains("revison"),
        "{message}"
    );
    assert!(node.dir_names("staging").is_empty());
}

#[actix_rt::test]
async fn persists_across_restart() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let mut node = TestNode::spawn_on(&data, &[]);
    let client = node.admin();
    for i in 0..5 {
        client
            .create(&create(&format!("ws-{i}"), "general", &["t"], &[], &[]))
            .await
            .unwrap();
    }
    client
        .update(
            "ws-1",
            &UpdateWorkspace {
                title: Some("changed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client
        .share("ws-2", &ShareRequest::default())
        .await
        .unwrap();
    client.delete("ws-4").await.unwrap();
    let node_id = client.node().await.unwrap().id;
    node.stop();

    let node = TestNode::spawn_on(&data, &[]);
    let client = node.admin();
    assert_eq!(client.node().await.unwrap().id, node_id, "node id is kept");
    let all = client.list(&ListQuery::default()).await.unwrap();
    assert_eq!(names(&all.items), ["ws-0", "ws-1", "ws-2", "ws-3"]);
    let ws1 = client.get("ws-1").await.unwrap().workspace;
    assert_eq!((ws1.title.as_str(), ws1.revision), ("changed", 2));
    assert!(client.get("ws-2").await.unwrap().workspace.sharing.enabled);
    assert_eq!(client.revisions("ws-1").await.unwrap().len(), 2);
}

#[actix_rt::test]
async fn anonymous_lan_clients_see_only_shared_workspaces() {
    let node = TestNode::spawn();
    let admin = node.admin();
    admin
        .create(&create("public", "general", &[], &[], &[]))
        .await
        .unwrap();
    admin
        .create(&create("private", "general", &[], &[], &[]))
        .await
        .unwrap();
    admin
        .create(&create("friends", "general", &[], &[], &[]))
        .await
        .unwrap();
    admin
        .share("public", &ShareRequest::default())
        .await
        .unwrap();
    admin
        .share(
            "friends",
            &ShareRequest {
                mode: Some("peers".into()),
                peers: vec!["gpu-box".into()],
            },
        )
        .await
        .unwrap();

    let anonymous = node.anonymous();
    let listed = anonymous.list(&ListQuery::default()).await.unwrap();
    assert_eq!(names(&listed.items), ["public"]);
    assert!(
        listed.items[0].path.is_none(),
        "paths are not shown to anonymous clients"
    );
    assert!(anonymous.get("public").await.is_ok());
    assert_eq!(
        anonymous.get("private").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        anonymous.manifest("friends").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(anonymous.node().await.unwrap().workspaces, 1);
    assert!(anonymous.node().await.unwrap().data_dir.is_none());
}

#[actix_rt::test]
async fn errors_name_the_files_people_wrote_and_commands_may_be_one_line() {
    let node = TestNode::spawn();
    let admin = node.admin();
    let source = tempfile::tempdir().unwrap();
    let env_dir = source.path().join("environments/web");
    std::fs::create_dir_all(&env_dir).unwrap();
    let env_file = env_dir.join("environment.yaml");
    std::fs::write(
        &env_file,
        "schema_version: 1\nruntime: process\ntools:\n  - {name: x, kind: htp}\n",
    )
    .unwrap();
    let from = |name: &str, dir: &std::path::Path| CreateWorkspace {
        name: name.into(),
        from_dir: Some(dir.display().to_string()),
        ..CreateWorkspace::default()
    };
    let error = admin
        .create(&from("demo", source.path()))
        .await
        .unwrap_err();
    let message = error.to_string();
    let written = env_file.canonicalize().unwrap().display().to_string();
    assert!(message.contains(&format!("{written}:4:")), "{message}");
    assert!(!message.contains("staging"), "{message}");

    // A path that does not exist is the caller's mistake, not the node's.
    let error = admin
        .create(&from("nowhere", std::path::Path::new("/nonexistent/dir")))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.to_string().contains("/nonexistent/dir"), "{error}");

    // One line, split as a shell would; shell syntax is refused with the way out.
    std::fs::write(
        &env_file,
        "schema_version: 1\nruntime: process\ntools:\n  - {name: web, kind: http, command: python3 -m http.server $PORT --bind \"127.0.0.1\"}\n",
    )
    .unwrap();
    admin.create(&from("demo", source.path())).await.unwrap();
    let yaml = admin.environment("demo", "web").await.unwrap();
    assert!(
        yaml.contains("- python3") && yaml.contains("- $PORT") && yaml.contains("- \"127.0.0.1\""),
        "{yaml}"
    );
    let error = admin
        .put_environment(
            "demo",
            "web",
            "schema_version: 1\nruntime: process\ntools:\n  - {name: web, kind: http, command: 'python3 app.py | tee log'}\n".into(),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("shell: true"), "{error}");
}
