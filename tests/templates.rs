//! Workspace templates between real nodes: a workspace offered as a template with
//! parameters, listed on another node beside the built-in ones, a new workspace made from it
//! there (fetched with the transfer machinery) with the parameters filled in; missing or
//! wrong values refused before anything moves; a local template used the same way.

mod common;

use std::path::PathBuf;

use aienv::api::ShareRequest;
use common::runtime::workspace;
use common::{eventually, TestNode};

const TEMPLATE: &str = r#"template:
  parameters:
    - {name: python, description: interpreter version, default: '3.11', choices: ['3.10', '3.11', '3.12']}
    - {name: model, description: the model to fine-tune}
  files: [README.md]
"#;

#[actix_rt::test]
async fn a_shared_template_makes_a_workspace_on_another_node_with_its_parameters_filled_in() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    workspace(
        &a,
        "starter",
        &[
            ("README.md", "Fine-tunes {{ model }} on Python {{python}}; {{ unknown }} stays.\n"),
            ("data/keep.txt", "kept\n"),
        ],
        "main",
        "schema_version: 1\nruntime: process\npython: {version: '{{ python }}'}\nenv: {MODEL: '{{ model }}'}\n",
    )
    .await;
    let admin_a = a.admin();
    let text = admin_a.manifest("starter").await.unwrap();
    admin_a
        .put_manifest("starter", format!("{text}{TEMPLATE}"))
        .await
        .unwrap();
    // An environment asking to run unconfined: from a peer's template, it must not.
    admin_a
        .put_environment(
            "starter",
            "open",
            "schema_version: 1\nruntime: process\nsandbox: off\ntools: [{name: t, kind: terminal}]\n"
                .into(),
        )
        .await
        .unwrap();
    admin_a
        .share("starter", &ShareRequest::default())
        .await
        .unwrap();
    // `ws template` on a plain workspace, and off again.
    workspace(&a, "plain", &[], "x", "schema_version: 1\n").await;
    let out = a.cli(&["ws", "template", "plain"]);
    assert!(out.status.success());
    assert!(admin_a
        .get("plain")
        .await
        .unwrap()
        .workspace
        .template
        .is_some());
    let out = a.cli(&["ws", "template", "plain", "--off"]);
    assert!(out.status.success());
    assert!(admin_a
        .get("plain")
        .await
        .unwrap()
        .workspace
        .template
        .is_none());

    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    let admin_b = b.admin();
    eventually("B sees A's template", || async {
        admin_b.templates().await.unwrap()["network"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
    })
    .await;
    let listed = b.cli(&["ws", "templates"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for expected in [
        "python",
        "notebook",
        "node-a/starter",
        "python=3.11, model (required)",
    ] {
        assert!(listed.contains(expected), "{expected}: {listed}");
    }

    // A value missing, or not a choice: refused, nothing fetched or made.
    for (args, expected) in [
        (vec!["--set", "python=3.12"], "`model` needs a value"),
        (
            vec!["--set", "model=x", "--set", "python=2.7"],
            "not one of 3.10, 3.11, 3.12",
        ),
        (vec!["--set", "model=x\"; rm -rf /"], "letters, digits"),
    ] {
        let mut command = vec!["ws", "create", "refused", "--template", "node-a/starter"];
        command.extend(args);
        let out = b.cli(&command);
        assert_eq!(out.status.code(), Some(6), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(admin_b
        .list_all(&Default::default())
        .await
        .unwrap()
        .is_empty());

    let out = b.cli(&[
        "ws",
        "create",
        "mine",
        "--template",
        "node-a/starter",
        "--set",
        "model=meta/llama-3",
        "--set",
        "python=3.12",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fetched template node-a/starter"),
        "{stderr}"
    );
    assert!(
        stderr.contains("made from template `")
            && stderr.contains("model=meta/llama-3, python=3.12"),
        "{stderr}"
    );
    let mine = admin_b.get("mine").await.unwrap();
    let root = PathBuf::from(mine.workspace.path.clone().unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("README.md")).unwrap(),
        "Fine-tunes meta/llama-3 on Python 3.12; {{ unknown }} stays.\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/keep.txt")).unwrap(),
        "kept\n"
    );
    let spec = &mine.environment_specs["main"];
    assert_eq!(spec["python"]["version"], "3.12");
    assert_eq!(spec["env"]["MODEL"], "meta/llama-3");
    let source_id = admin_a.get("starter").await.unwrap().workspace.id;
    assert_ne!(mine.workspace.id, source_id, "a new workspace, not a clone");
    assert!(mine.workspace.origin.is_none());
    assert_eq!(mine.workspace.from_peer.as_deref(), Some("node-a"));
    let error = admin_b
        .run(
            "mine",
            &aienv::api::RunRequest {
                environment: Some("open".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("asks for `sandbox: off`"), "{error}");
    assert!(error.contains("came from `node-a`"), "{error}");
    assert!(mine.workspace.template.is_none());
    assert!(!mine.workspace.sharing.enabled);
    assert_eq!(mine.workspace.revision, 1);
    let names: Vec<String> = admin_b
        .list_all(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, vec!["mine"], "the fetched copy is gone");

    // The same template used where it lives.
    let out = a.cli(&[
        "ws",
        "create",
        "here",
        "--template",
        "starter",
        "--set",
        "model=tiny",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let here = admin_a.get("here").await.unwrap();
    assert_eq!(here.environment_specs["main"]["python"]["version"], "3.11");
    assert!(here.workspace.from_peer.is_none());
}
