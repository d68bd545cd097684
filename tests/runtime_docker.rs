//! The docker backend against a real engine (Debian's `docker.io`, started by `.ci/run`):
//! a tiny image imported from busybox-static, limits visible to `docker inspect`, a tool
//! through the node's proxy, logs, a TTY `exec` terminal, and a clean stop.

mod common;

use std::process::{Command, Stdio};

use aienv::api::{CreateWorkspace, RunRequest};
use awc::ws::Message;
use common::runtime as runtimes;
use common::TestNode;
use futures_util::{SinkExt, StreamExt};

const IMAGE: &str = "aienv-test-busybox:1";

fn docker(args: &[&str]) -> Option<String> {
    let output = Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).to_string())
}

/// A busybox root file system imported as an image (no registry is reachable).
fn ensure_image() -> Result<(), String> {
    if docker(&["image", "inspect", IMAGE]).is_some() {
        return Ok(());
    }
    let tarball = runtimes::busybox_rootfs()?;
    let mut import = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tarball)
        .map_err(|e| e.to_string())?;
    match import.wait() {
        Ok(status) if status.success() => Ok(()),
        other => Err(format!("docker import failed: {other:?}")),
    }
}

#[actix_rt::test]
async fn docker_environment_runs_a_container_with_limits_behind_the_proxy() {
    if docker(&["version", "--format", "{{.Server.APIVersion}}"]).is_none() {
        common::skip("no Docker engine answers (Debian: docker.io, then `dockerd &`)");
        return;
    }
    if let Err(why) = ensure_image() {
        common::skip(&format!("cannot build the test image: {why}"));
        return;
    }
    let node = TestNode::spawn();
    let spec = format!(
        "schema_version: 1
runtime: docker
docker: {{image: '{IMAGE}'}}
resources: {{cpus: {{min: 1}}, memory: {{min: 64MiB, preferred: 128MiB}}}}
env: {{GREETING: from-the-spec}}
restart: {{stop_timeout_seconds: 2}}
hooks:
  pre_run: {{unix: 'if [ -f /.dockerenv ]; then where=container; else where=host; fi; echo pre_run in $where as $AIENV_HOOK for $AIENV_ENVIRONMENT > /workspace/hook.txt'}}
  post_stop: {{unix: 'echo post_stop >> /workspace/hook.txt'}}
tools:
  - {{name: web, kind: http, strip_prefix: true, command: [sh, -c, 'echo container-started $GREETING; exec httpd -f -v -p $PORT -h /workspace/www']}}
  - {{name: term, kind: terminal}}
"
    );
    runtimes::workspace(
        &node,
        "dock",
        &[("www/index.html", "hello from a container\n")],
        "box",
        &spec,
    )
    .await;
    let admin = node.admin();
    let statuses = runtimes::run(&admin, "dock").await;
    let status = &statuses[0];
    assert_eq!(status.state, "running", "{status:#?}");
    assert_eq!(status.backend, "docker");
    // The pre_run hook ran in a container of the image, with the workspace mounted.
    let root = std::path::PathBuf::from(admin.get("dock").await.unwrap().workspace.path.unwrap());
    let hook = std::fs::read_to_string(root.join("hook.txt")).unwrap();
    assert_eq!(hook, "pre_run in container as pre_run for box\n");
    let instance = status.instance.clone().unwrap();
    let name = instance
        .strip_prefix("container ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{instance}"))
        .to_string();

    // The tool, through the node's proxy.
    let auth = format!("Bearer {}", node.token());
    let (code, body) = runtimes::get(&format!("{}/w/dock/web/", node.url), Some(&auth)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "hello from a container\n");
    let (code, _) = runtimes::get(&format!("{}/w/dock/web/", node.url), None).await;
    assert_eq!(code, 401);

    // The allocation as container limits; ports published on loopback only.
    let inspect = docker(&["inspect", &name]).expect("docker inspect");
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["NanoCpus"], 1_000_000_000i64, "{host}");
    assert_eq!(host["Memory"], 128i64 << 20, "{host}");
    let bindings = host["PortBindings"].as_object().unwrap();
    assert!(!bindings.is_empty());
    for binding in bindings.values() {
        assert_eq!(binding[0]["HostIp"], "127.0.0.1", "{host}");
    }
    assert_eq!(
        inspect[0]["Config"]["Labels"]["dev.aienv.node"]
            .as_str()
            .map(str::len),
        Some(36)
    );

    // Logs stream from the container.
    common::eventually("the container's output is in the logs", || async {
        let mut logs = admin
            .logs("dock", None, Some("container"), false, None)
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(chunk) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text.contains("[box/container] container-started from-the-spec")
    })
    .await;

    // A TTY exec terminal in the container.
    let framed = admin.terminal("dock", None, 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary("echo $((6*7)) $GREETING\n".into()))
        .await
        .unwrap();
    runtimes::read_until(&mut stream, "42 from-the-spec").await;
    sink.send(Message::Text(
        r#"{"type":"resize","cols":101,"rows":33}"#.into(),
    ))
    .await
    .unwrap();
    sink.send(Message::Binary("stty size\n".into()))
        .await
        .unwrap();
    runtimes::read_until(&mut stream, "33 101").await;
    sink.send(Message::Close(None)).await.unwrap();
    drop((sink, stream));

    // Stop removes the container.
    let stopped = admin.stop("dock", None).await.unwrap();
    assert_eq!(stopped[0].state, "stopped", "{stopped:#?}");
    assert!(
        std::fs::read_to_string(root.join("hook.txt"))
            .unwrap()
            .ends_with("post_stop\n"),
        "post_stop ran after the stop"
    );
    assert!(
        docker(&["inspect", &name]).is_none(),
        "container {name} is removed"
    );

    // Asking for docker without an image is refused with the field to set.
    admin
        .create(&CreateWorkspace {
            name: "noimage".into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    admin
        .put_environment(
            "noimage",
            "x",
            "schema_version: 1\ntools: [{name: t, kind: terminal}]\n".into(),
        )
        .await
        .unwrap();
    let statuses = admin
        .run(
            "noimage",
            &RunRequest {
                backend: Some("docker".into()),
                wait: true,
                timeout_seconds: Some(60),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    let error = statuses[0].error.clone().unwrap_or_default();
    assert!(error.contains("docker.image"), "{error}");
}
