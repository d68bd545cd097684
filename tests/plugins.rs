//! Runtime plugins on a real node: the reference plugin (`deploy/plugins/aienv-runtime-podman`)
//! runs an environment in a real Podman container, reached through the node's proxy, listed
//! healthy with its version; plugins that crash, hang or print garbage each fail their call
//! with a clear error and their stderr, and the node stays healthy.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aienv::api::RunRequest;
use awc::ws::Message;
use common::runtime::{get, workspace};
use common::TestNode;
use futures_util::{SinkExt, StreamExt};

const IMAGE: &str = "localhost/aienv-plugin-test";
/// Global podman flags for this machine: the vfs storage driver, and runc where crun (the
/// default) refuses cgroups in hybrid mode (v1 controllers beside a v2 hierarchy that has
/// some too).
static PODMAN_GLOBAL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let hybrid = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|controllers| !controllers.trim().is_empty());
    if hybrid {
        "--storage-driver vfs --runtime runc".into()
    } else {
        "--storage-driver vfs".into()
    }
});
/// This machine's container engine refuses podman's default rlimits; docker's are lower.
const PODMAN_RUN: &str = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024";

fn podman(args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("podman")
        .args(PODMAN_GLOBAL.split(' '))
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A busybox image made from this machine's static busybox (no registry needed).
fn ensure_image() -> Result<(), String> {
    if podman(&["image", "exists", IMAGE]).is_some() {
        return Ok(());
    }
    let tarball = common::runtime::busybox_rootfs()?;
    let mut import = std::process::Command::new("podman")
        .args(PODMAN_GLOBAL.split(' '))
        .args(["import", "-", IMAGE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tarball)
        .map_err(|e| e.to_string())?;
    match import.wait() {
        Ok(status) if status.success() => Ok(()),
        other => Err(format!("podman import failed: {other:?}")),
    }
}

fn reference_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/plugins")
}

/// A node whose PATH holds the reference plugins, configured for this machine's podman.
fn node(dir: &Path, extra: &[&str]) -> TestNode {
    let path = format!(
        "{}:{}",
        reference_plugins().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    TestNode::spawn_with_env(
        dir,
        extra,
        &[
            ("PATH", path.as_str()),
            ("AIENV_PODMAN_GLOBAL", PODMAN_GLOBAL.as_str()),
            ("AIENV_PODMAN_RUN", PODMAN_RUN),
        ],
    )
}

#[actix_rt::test]
async fn the_podman_plugin_runs_an_environment_end_to_end_through_the_proxy() {
    if podman(&["--version"]).is_none() {
        common::skip("podman is not installed (Debian: podman)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    if let Err(why) = ensure_image() {
        common::skip(&format!("cannot make the podman test image: {why}"));
        return;
    }
    let node = node(&temp.path().join("data"), &[]);
    let root = workspace(
        &node,
        "pod",
        &[("www/index.html", "hello from podman\n")],
        "box",
        &format!(
            "schema_version: 1\nruntime: podman\ndocker: {{image: '{IMAGE}'}}\nresources: {{memory: {{min: 64MiB, preferred: 128MiB}}}}\ntools:\n  - {{name: web, kind: http, strip_prefix: true, command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:$PORT', -h, www]}}\n  - {{name: term, kind: terminal}}\n"
        ),
    )
    .await;
    let admin = node.admin();

    let plugins = admin.plugins().await.unwrap();
    let podman_plugin = plugins.iter().find(|p| p.name == "podman").unwrap();
    assert!(podman_plugin.healthy, "{podman_plugin:?}");
    assert_eq!(podman_plugin.version.as_deref(), Some("1.0.0"));
    assert!(
        podman_plugin.detail.starts_with("podman version"),
        "{podman_plugin:?}"
    );

    let statuses = admin
        .run(
            "pod",
            &RunRequest {
                wait: true,
                timeout_seconds: Some(180),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    let status = &statuses[0];
    assert_eq!(status.state, "running", "{status:#?}");
    assert_eq!(status.backend, "podman");
    let instance = status.instance.clone().unwrap();
    assert!(instance.contains("(plugin podman)"), "{instance}");
    let container = podman(&[
        "ps",
        "--filter",
        "label=aienv.workspace",
        "--format",
        "{{.ID}} {{.Labels}}",
    ])
    .unwrap_or_default();
    assert!(!container.is_empty(), "a container runs");
    let limits = podman(&["ps", "-q", "--filter", "label=aienv.workspace"])
        .and_then(|id| podman(&["inspect", "--format", "{{.HostConfig.Memory}}", &id]))
        .unwrap();
    assert_eq!(
        limits,
        (128u64 << 20).to_string(),
        "sized to the allocation"
    );

    // The tool, through the node's proxy, signed in.
    let auth = format!("Bearer {}", node.token());
    let (code, body) = get(&format!("{}/w/pod/web/", node.url), Some(&auth)).await;
    assert_eq!((code, body.as_str()), (200, "hello from podman\n"));
    let (code, _) = get(&format!("{}/w/pod/web/", node.url), None).await;
    assert_eq!(code, 401);
    let _ = root;

    // The terminal is a shell inside the container (the plugin's `terminal` command).
    let framed = admin.terminal("pod", None, 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary(
        "echo $((6*7)) $(cat /proc/1/cmdline | tr '\\0' ' ')\n".into(),
    ))
    .await
    .unwrap();
    common::runtime::read_until(&mut stream, "42 /bin/sh -c").await;
    sink.send(Message::Close(None)).await.unwrap();
    drop((sink, stream));

    let stopped = admin.stop("pod", None).await.unwrap();
    assert_eq!(stopped[0].state, "stopped", "{stopped:#?}");
    // This workspace's containers only: another run's leftovers are not this one's.
    let label = format!("label=aienv.workspace={}", status.workspace_id);
    assert_eq!(
        podman(&["ps", "-aq", "--filter", &label]).unwrap_or_default(),
        "",
        "the container is removed"
    );
}

/// Broken plugins, written into the node's own plugins directory.
const BROKEN: &[(&str, &str)] = &[
    (
        "crashy",
        "#!/bin/sh\necho 'boom: libfoo.so.1 not found' >&2\nexit 3\n",
    ),
    (
        "garbage",
        "#!/bin/sh\nread line\necho 'Hello! I do not speak JSON.'\n",
    ),
    (
        "hangs",
        "#!/bin/sh\nread line\necho 'thinking about it' >&2\nexec sleep 1000\n",
    ),
    (
        "refuses",
        "#!/bin/sh\nread line\necho '{\"ok\": false, \"error\": \"no GPU driver on this host\"}'\n",
    ),
];

#[actix_rt::test]
async fn plugins_that_crash_hang_or_print_garbage_fail_clearly_and_the_node_stays_up() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (name, script) in BROKEN {
        let path = plugins.join(format!("aienv-runtime-{name}"));
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = temp.path().join("node.yaml");
    std::fs::write(&config, "runtime:\n  plugin_timeout_seconds: 3\n").unwrap();
    let node = node(&data, &["--config", config.to_str().unwrap()]);
    let admin = node.admin();
    for (name, _) in BROKEN {
        workspace(
            &node,
            &format!("with-{name}"),
            &[],
            "main",
            &format!("schema_version: 1\nruntime: {name}\ntools: [{{name: t, kind: terminal}}]\n"),
        )
        .await;
    }

    // Listed, unusable, with why; the hanging one's check is cut at its deadline.
    let started = std::time::Instant::now();
    let listed = admin.plugins().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    let detail = |name: &str| {
        let plugin = listed.iter().find(|p| p.name == name).unwrap();
        assert!(!plugin.healthy, "{plugin:?}");
        plugin.detail.clone()
    };
    assert!(detail("crashy").contains("boom: libfoo.so.1 not found"));
    assert!(
        detail("crashy").contains("exit status 3"),
        "{}",
        detail("crashy")
    );
    assert!(
        detail("garbage").contains("not the protocol"),
        "{}",
        detail("garbage")
    );
    assert!(detail("garbage").contains("Hello! I do not speak JSON."));
    assert!(
        detail("hangs").contains("did not answer within 10 s"),
        "{}",
        detail("hangs")
    );
    assert!(
        detail("hangs").contains("thinking about it"),
        "{}",
        detail("hangs")
    );
    assert!(detail("refuses").contains("no GPU driver on this host"));

    // Running on each fails with the plugin, the call and what it said.
    for (name, expected) in [
        ("crashy", "boom: libfoo.so.1 not found"),
        ("garbage", "Hello! I do not speak JSON."),
        ("hangs", "did not answer within 3 s"),
        ("refuses", "no GPU driver on this host"),
    ] {
        let statuses = admin
            .run(
                &format!("with-{name}"),
                &RunRequest {
                    wait: true,
                    timeout_seconds: Some(60),
                    ..RunRequest::default()
                },
            )
            .await
            .unwrap();
        let status = &statuses[0];
        assert_eq!(status.state, "failed", "{status:#?}");
        let error = status.error.clone().unwrap_or_default();
        assert!(
            error.contains(&format!("runtime plugin `{name}` failed at `prepare`")),
            "{error}"
        );
        assert!(error.contains(expected), "{error}");
    }
    // A runtime nobody installed.
    workspace(
        &node,
        "with-missing",
        &[],
        "main",
        "schema_version: 1\nruntime: nowhere\n",
    )
    .await;
    let error = admin
        .run("with-missing", &RunRequest::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no runtime plugin `nowhere`"), "{error}");
    assert!(error.contains("aienv-runtime-nowhere"), "{error}");

    // The node is fine.
    let info = admin.node().await.unwrap();
    assert_eq!(info.name, "test-node");
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", "exec sleep 1000|sleep 1000"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftovers.stdout).trim().is_empty(),
        "the hanging plugin was killed"
    );
}
