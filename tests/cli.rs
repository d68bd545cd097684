//! The CLI as a user runs it: tables, --json, exit codes, one-line errors, config provenance.

mod common;

use std::process::Command;

use common::TestNode;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn workspace_commands_tables_json_and_exit_codes() {
    let node = TestNode::spawn();
    let created = node.cli(&[
        "ws",
        "create",
        "demo",
        "--template",
        "notebook",
        "--tag",
        "nlp",
        "--title",
        "Demo",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("created workspace `demo`"));

    let table = node.cli(&["ws", "ls"]);
    let text = stdout(&table);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("demo") && text.contains("notebook") && text.contains("nlp"),
        "{text}"
    );

    let json = node.cli(&["--json", "ws", "ls", "--tag", "nlp"]);
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(list[0]["name"], "demo");
    let none: serde_json::Value =
        serde_json::from_slice(&node.cli(&["--json", "ws", "ls", "nomatch"]).stdout).unwrap();
    assert_eq!(none.as_array().unwrap().len(), 0);

    let edit = node.cli(&["ws", "edit", "demo", "--add-tag", "llm", "--rm-tag", "nlp"]);
    assert!(stdout(&edit).contains("revision 2"), "{}", stderr(&edit));
    let shown: serde_json::Value =
        serde_json::from_slice(&node.cli(&["--json", "ws", "show", "demo"]).stdout).unwrap();
    assert_eq!(shown["tags"], serde_json::json!(["llm"]));

    // Editing through a file (the $EDITOR path uses the same call).
    let manifest = tempfile::NamedTempFile::new().unwrap();
    let current = String::from_utf8(
        Command::new(common::binary())
            .args(["--node", &node.url, "ws", "show", "demo", "--json"])
            .env("AIENV_TOKEN", node.token())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(current.contains("\"revision\": 2"));
    let bad = "schema_version: 1\nnot_a_field: true\n";
    std::fs::write(manifest.path(), bad).unwrap();
    let invalid = node.cli(&[
        "ws",
        "edit",
        "demo",
        "--file",
        manifest.path().to_str().unwrap(),
    ]);
    assert_eq!(invalid.status.code(), Some(6), "{}", stderr(&invalid));
    let message = stderr(&invalid);
    assert!(
        message.starts_with("aienv: error: workspace.yaml:2:1: field `not_a_field`"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "errors are one line: {message}");

    let history = node.cli(&["ws", "history", "demo"]);
    assert!(stdout(&history).contains("created") && stdout(&history).contains("updated"));
    assert!(node.cli(&["ws", "share", "demo"]).status.success());
    let restored = node.cli(&["ws", "restore", "demo", "1"]);
    assert!(
        stdout(&restored).contains("as revision 4"),
        "{}",
        stderr(&restored)
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("demo.tar.zst");
    let export = node.cli(&["ws", "export", "demo", "-o", archive.to_str().unwrap()]);
    assert!(export.status.success(), "{}", stderr(&export));
    let clash = node.cli(&["ws", "import", archive.to_str().unwrap()]);
    assert_eq!(clash.status.code(), Some(4), "{}", stderr(&clash));
    assert!(stderr(&clash).contains("already exists"));
    let import = node.cli(&[
        "ws",
        "import",
        archive.to_str().unwrap(),
        "--as",
        "demo-copy",
    ]);
    assert!(
        stdout(&import).contains("imported workspace `demo-copy`"),
        "{}",
        stderr(&import)
    );

    assert_eq!(node.cli(&["ws", "show", "missing"]).status.code(), Some(3));
    assert_eq!(
        node.cli(&["ws", "create", "Bad_Name"]).status.code(),
        Some(6)
    );
    let refused = node.cli(&["ws", "rm", "demo"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "rm without --yes and no terminal is refused"
    );
    assert!(node.cli(&["ws", "rm", "demo", "--yes"]).status.success());

    // No credentials: exit code 5 and a hint.
    let anonymous = Command::new(common::binary())
        .args(["--node", &node.url, "ws", "create", "x"])
        .env_remove("AIENV_TOKEN")
        .env("AIENV_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(anonymous.status.code(), Some(5), "{}", stderr(&anonymous));
    assert!(stderr(&anonymous).contains("AIENV_TOKEN"));

    // The local admin token is found through --data-dir for a loopback node.
    let local = Command::new(common::binary())
        .args(["--node", &node.url, "--data-dir"])
        .arg(&node.data_dir)
        .args(["--json", "node"])
        .env_remove("AIENV_TOKEN")
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert!(
        info["data_dir"].is_string(),
        "logged in through the token file: {info}"
    );

    // Unreachable node: exit code 7.
    let unreachable = Command::new(common::binary())
        .args(["--node", "http://127.0.0.1:1", "node"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(7));
}

#[test]
fn config_show_names_the_source_of_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "name: lab-node\nhttp:\n  port: 4100\n").unwrap();
    let output = Command::new(common::binary())
        .args(["--json", "config", "show", "--config"])
        .arg(&config)
        .args(["--http-port", "4200"])
        .env("AIENV_LOG_LEVEL", "debug")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let setting = |key: &str| {
        shown["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(setting("name")["value"], "lab-node");
    assert_eq!(setting("name")["source"]["kind"], "file");
    assert_eq!(setting("http.port")["value"], 4200);
    assert_eq!(setting("http.port")["source"]["name"], "--http-port");
    assert_eq!(setting("log.level")["source"]["name"], "AIENV_LOG_LEVEL");
    assert_eq!(setting("http.bind")["source"]["kind"], "default");

    std::fs::write(&config, "http:\n  port: not-a-port\n").unwrap();
    let bad = Command::new(common::binary())
        .args(["config", "show", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(6));
    assert!(stderr(&bad).contains("config.yaml:2"), "{}", stderr(&bad));
}
