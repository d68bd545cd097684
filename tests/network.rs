//! Requests from public addresses are refused unless the config allows them. The client runs
//! in a network namespace of the test's own, joined to the host by a veth pair carrying
//! addresses from a documentation range that the node must treat as public.

mod common;

use std::process::Command;

use common::TestNode;

/// A network namespace with a veth link to the host; removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create(tag: &str, host_ip: &str, ns_ip: &str) -> Result<Netns, String> {
        let name = format!("aienv-{tag}-{}", std::process::id());
        // The tag's first letter keeps two namespaces of one test apart (names have at most
        // 15 bytes).
        let initial = tag.chars().next().unwrap_or('x');
        let host_if = format!("av{}{initial}h", std::process::id() % 100_000);
        let ns_if = format!("av{}{initial}n", std::process::id() % 100_000);
        let netns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                ns_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                ns_if.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/24"),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{ns_ip}/24"),
                "dev".into(),
                ns_if.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                ns_if,
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in steps {
            let output = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(netns)
    }

    /// Runs the aienv CLI inside the namespace.
    fn aienv(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, common::binary()])
            .args(args)
            .env_remove("AIENV_TOKEN")
            .env("AIENV_DATA_DIR", "/nonexistent")
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A namespace's veth pair goes with it only once the kernel has cleaned the namespace
        // up, later: deleting the host end removes the pair at once.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn public_source_addresses_are_refused_unless_allowed() {
    let netns = match Netns::create("pub", "203.0.113.1", "203.0.113.2") {
        Ok(netns) => netns,
        Err(reason) => {
            common::skip(&format!(
                "cannot create a network namespace (needs root and iproute2): {reason}"
            ));
            return;
        }
    };
    let temp = tempfile::tempdir().unwrap();
    let node = TestNode::spawn_on(&temp.path().join("a"), &["--bind", "0.0.0.0"]);
    let port = node.tls_url.rsplit(':').next().unwrap().to_string();
    let url = format!("https://203.0.113.1:{port}");
    let key = node.key.to_readable();

    let refused = netns.aienv(&["--node", &url, "--node-key", &key, "node"]);
    assert_eq!(
        refused.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("203.0.113.2") && message.contains("allow_public"),
        "{message}"
    );

    // The same node configuration with http.allow_public answers.
    let allowed_node = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--bind", "0.0.0.0"],
        &[("AIENV_HTTP_ALLOW_PUBLIC", "true")],
    );
    let port = allowed_node.tls_url.rsplit(':').next().unwrap().to_string();
    let allowed = netns.aienv(&[
        "--node",
        &format!("https://203.0.113.1:{port}"),
        "--node-key",
        &allowed_node.key.to_readable(),
        "--json",
        "node",
    ]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(info["name"], "test-node");
    assert!(
        info.get("data_dir").is_none(),
        "anonymous callers do not see the data dir"
    );

    // A private address (the LAN case) is accepted by the default configuration.
    drop(netns);
    let lan = Netns::create("lan", "10.77.0.1", "10.77.0.2").unwrap();
    let port = node.tls_url.rsplit(':').next().unwrap().to_string();
    let ok = lan.aienv(&[
        "--node",
        &format!("https://10.77.0.1:{port}"),
        "--node-key",
        &key,
        "node",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // From another host nothing answers in clear: the LAN port speaks only TLS, and the
    // plain-HTTP listener is on the node's loopback.
    let plain = lan.aienv(&["--node", &format!("http://10.77.0.1:{port}"), "node"]);
    assert!(!plain.status.success(), "{plain:?}");
    let local_port = node.url.rsplit(':').next().unwrap().to_string();
    let plain = lan.aienv(&["--node", &format!("http://10.77.0.1:{local_port}"), "node"]);
    assert_eq!(plain.status.code(), Some(7), "{plain:?}");
    // A key other than the node's is refused in the handshake: no impostor in the middle.
    let wrong = lan.aienv(&[
        "--node",
        &format!("https://10.77.0.1:{port}"),
        "--node-key",
        &allowed_node.key.to_readable(),
        "node",
    ]);
    assert_eq!(wrong.status.code(), Some(7), "{wrong:?}");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("peer key mismatch"),
        "{wrong:?}"
    );
    // Without a key for an https node the CLI says what to give.
    let no_key = lan.aienv(&["--node", &format!("https://10.77.0.1:{port}"), "node"]);
    assert_eq!(no_key.status.code(), Some(6), "{no_key:?}");
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--node-key"));
}
