//! Running environments on real nodes: the process backend (set-up, tools, limits,
//! restarts, clean stop), the tool proxy behind the node's login, the terminal WebSocket,
//! autostart, detection and adaptation errors. Docker and libvirt have their own files.

mod common;

use std::path::Path;
use std::time::Duration;

use aienv::api::{CreateWorkspace, RunRequest};
use awc::ws::{Frame, Message};
use common::runtime::{alive, get, host_pid, read_until, run, workspace, HELLO};
use common::{eventually, TestNode};
use futures_util::{SinkExt, StreamExt};

#[actix_rt::test]
async fn process_environment_runs_tools_behind_the_proxy_and_stops_clean() {
    let node = TestNode::spawn();
    let spec = "schema_version: 1
runtime: process
python: {requirements: [requirements.txt]}
resources: {cpus: {min: 1}, memory: {min: 256MiB, preferred: 2GiB}}
setup: [{name: marker, run: echo set-up-ran >> setup-count.txt}]
restart: {policy: on-failure, max_restarts: 2, stop_timeout_seconds: 3}
tools:
  - {name: app, kind: http, shell: true, command: ['sleep 1000 & echo $! > sleep.pid; exec python hello.py']}
  - {name: crasher, kind: http, command: [python, -c, 'import sys; print(\"crashing\"); sys.exit(3)']}
  - {name: term, kind: terminal}
";
    let root = workspace(
        &node,
        "proc",
        &[
            ("hello.py", HELLO),
            ("requirements.txt", "# nothing to install\n"),
        ],
        "web",
        spec,
    )
    .await;
    let admin = node.admin();
    let statuses = run(&admin, "proc").await;
    let status = &statuses[0];
    assert_eq!(status.state, "degraded", "{status:#?}");
    let tool = |name: &str| {
        status
            .tools
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(tool("app").state, "ready", "{status:#?}");
    assert_eq!(tool("app").url, "/w/proc/app/");
    // The crashing tool was restarted per policy, then given up on.
    let crasher = tool("crasher");
    assert_eq!(crasher.state, "failed", "{crasher:#?}");
    assert_eq!(crasher.restarts, 2, "{crasher:#?}");
    assert!(
        crasher.detail.as_deref().unwrap().contains("exit status 3"),
        "{crasher:#?}"
    );
    // Adapted to the host: one core pinned, memory limited, thread variables set.
    let allocation = status.allocation.as_ref().unwrap();
    assert_eq!(allocation.cpus, Some(1.0));
    assert_eq!(allocation.cpuset.len(), 1);
    assert!(allocation.memory.unwrap() >= 256 << 20);
    assert_eq!(allocation.env["OMP_NUM_THREADS"], "1");
    assert!(
        status.instance.as_deref().unwrap().contains("limits:"),
        "{status:#?}"
    );

    // Through the proxy, with the node's login only; the venv is the environment's own.
    let token = format!("Bearer {}", node.token());
    let (code, body) = get(
        &format!("{}/w/proc/app/some/page?x=1", node.url),
        Some(&token),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("hello /w/proc/app/some/page?x=1 base=/w/proc/app/ threads=1"),
        "{body}"
    );
    assert!(
        body.contains("/runtime/") && body.trim_end().ends_with("/web/venv"),
        "venv outside the workspace: {body}"
    );
    let (code, body) = get(&format!("{}/w/proc/app/", node.url), None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("log in"), "{body}");
    let (code, _) = get(&format!("{}/w/proc/app/", node.url), Some("Bearer wrong")).await;
    assert_eq!(code, 401);
    let (code, _) = get(&format!("{}/w/proc/nope/", node.url), Some(&token)).await;
    assert_eq!(code, 404);
    // Bodies go both ways; the tool's own headers and status come back.
    let client = awc::Client::builder().disable_redirects().finish();
    let mut response = client
        .post(format!("{}/w/proc/app/echo", node.url))
        .insert_header(("Authorization", token.as_str()))
        .send_body(vec![7u8; 300_000])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.body().limit(1 << 20).await.unwrap().len(), 300_000);
    // A chunked answer is decoded and relayed whole, twice on the same connection.
    for _ in 0..2 {
        let (code, body) = get(&format!("{}/w/proc/app/chunked", node.url), Some(&token)).await;
        assert_eq!(code, 200);
        assert!(
            body.starts_with("chunked answer xxx") && body.len() == 15 + 70000,
            "{}",
            body.len()
        );
    }
    // The path without its slash is redirected to the tool's directory.
    let response = client
        .get(format!("{}/w/proc/app", node.url))
        .insert_header(("Authorization", token.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 308);
    assert_eq!(response.headers().get("location").unwrap(), "/w/proc/app/");

    // Set-up ran once; logs hold the tools' output.
    assert_eq!(
        std::fs::read_to_string(Path::new(&root).join("setup-count.txt")).unwrap(),
        "set-up-ran\n"
    );
    let mut logs = admin.logs("proc", None, None, false, None).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("[web/app] hello tool listening"), "{text}");
    assert!(text.contains("[web/crasher] crashing"), "{text}");
    assert!(text.contains("[web/setup] -- marker"), "{text}");

    // Stop: every process of the environment, and what they started, is gone.
    let app_pid = tool("app").pid.unwrap() as i32;
    let sleep_pid: i32 = std::fs::read_to_string(Path::new(&root).join("sleep.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The tool knows its child by its sandbox's PID namespace.
    let sleep_pid = host_pid(sleep_pid, Path::new(&root)).expect("the sleep, seen from the host");
    assert!(alive(app_pid) && alive(sleep_pid));
    let stopped = admin.stop("proc", None).await.unwrap();
    assert_eq!(stopped[0].state, "stopped", "{stopped:#?}");
    eventually("the tool and its child are gone", || async {
        !alive(app_pid) && !alive(sleep_pid)
    })
    .await;
    let (code, _) = get(&format!("{}/w/proc/app/", node.url), Some(&token)).await;
    assert_eq!(code, 503, "a stopped tool answers 503 tool-not-running");

    // Running again skips the set-up already done.
    let statuses = run(&admin, "proc").await;
    assert_eq!(statuses[0].tools[0].state, "ready");
    assert_eq!(
        std::fs::read_to_string(Path::new(&root).join("setup-count.txt")).unwrap(),
        "set-up-ran\n"
    );
    admin.stop("proc", None).await.unwrap();
}

#[actix_rt::test]
async fn terminal_runs_a_login_shell_in_the_environment() {
    let node = TestNode::spawn();
    workspace(
        &node,
        "term",
        &[],
        "shell",
        "schema_version: 1\nruntime: process\nenv: {GREETING: from-the-spec}\ntools: [{name: term, kind: terminal}]\n",
    )
    .await;
    let admin = node.admin();
    // No terminal before the environment runs.
    let Err(error) = admin.terminal("term", None, 80, 24).await else {
        panic!("a terminal opened on a stopped environment")
    };
    assert!(error.to_string().contains("not running"), "{error}");
    let statuses = run(&admin, "term").await;
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");

    let framed = admin.terminal("term", None, 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary(
        "echo PID=$$ \"$GREETING\" $AIENV_ENVIRONMENT\n".into(),
    ))
    .await
    .unwrap();
    let seen = read_until(&mut stream, "from-the-spec shell").await;
    let pid: i32 = seen
        .split("PID=")
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .last()
        .expect("the shell's pid");
    let root = node
        .admin()
        .get("term")
        .await
        .unwrap()
        .workspace
        .path
        .unwrap();
    let pid = host_pid(pid, Path::new(&root)).expect("the shell, seen from the host");
    sink.send(Message::Binary("echo $((6*7))\n".into()))
        .await
        .unwrap();
    read_until(&mut stream, "42").await;
    // Resize is honoured; text frames may carry JSON input too.
    sink.send(Message::Text(
        r#"{"type":"resize","cols":123,"rows":45}"#.into(),
    ))
    .await
    .unwrap();
    sink.send(Message::Text(
        r#"{"type":"input","data":"stty size\n"}"#.into(),
    ))
    .await
    .unwrap();
    read_until(&mut stream, "45 123").await;
    // UTF-8 round-trips.
    sink.send(Message::Binary("echo 'grüße ✓'\n".into()))
        .await
        .unwrap();
    read_until(&mut stream, "grüße ✓").await;
    // Ctrl-C interrupts the foreground command, the shell stays.
    sink.send(Message::Binary("echo sleep-start; sleep 100\n".into()))
        .await
        .unwrap();
    // The output line (not the echoed input, which goes on with `; sleep`): the command runs.
    read_until(&mut stream, "sleep-start\r\n").await;
    sink.send(Message::Binary(vec![3].into())).await.unwrap();
    sink.send(Message::Binary("echo after-interrupt\n".into()))
        .await
        .unwrap();
    read_until(&mut stream, "after-interrupt").await;
    assert!(alive(pid));
    // Closing the socket ends the shell.
    sink.send(Message::Close(None)).await.unwrap();
    drop(sink);
    drop(stream);
    eventually("the shell is gone after the socket closed", || async {
        !alive(pid)
    })
    .await;

    // The shell's own exit closes the socket.
    let framed = admin.terminal("term", None, 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary("exit\n".into())).await.unwrap();
    let closed = close_reason(&mut stream, "the socket closes when the shell exits").await;
    assert_eq!(closed.as_deref(), Some("the shell exited"));

    // Without the node's login there is no terminal.
    let anonymous = node.anonymous();
    let Err(error) = anonymous.terminal("term", None, 80, 24).await else {
        panic!("a terminal opened without a login")
    };
    assert!(
        error.to_string().contains("login") || error.to_string().contains("401"),
        "{error}"
    );

    // Stop ends every shell of the environment, and what runs in it.
    let framed = admin.terminal("term", None, 80, 24).await.unwrap();
    let (mut sink, mut stream) = framed.split();
    sink.send(Message::Binary("sleep 1000 & echo bg=$!\n".into()))
        .await
        .unwrap();
    read_until(&mut stream, "bg=").await;
    admin.stop("term", None).await.unwrap();
    let closed = close_reason(
        &mut stream,
        "the terminal closes when its environment stops",
    )
    .await;
    assert_eq!(closed.as_deref(), Some("the environment stopped"));
}

/// The reason the node gives when it closes a terminal WebSocket (20 s at most: `what` says
/// what was expected).
async fn close_reason(
    stream: &mut (impl futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin),
    what: &str,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = stream.next().await {
            if let Ok(Frame::Close(reason)) = frame {
                return reason.and_then(|r| r.description);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[actix_rt::test]
async fn autostart_environments_come_back_with_the_node() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let mut node = TestNode::spawn_on(&data, &[]);
    workspace(
        &node,
        "auto",
        &[("hello.py", HELLO)],
        "svc",
        "schema_version: 1\nruntime: process\nautostart: true\ntools: [{name: app, kind: http, command: [python3, hello.py]}]\n",
    )
    .await;
    node.stop();
    let node = TestNode::spawn_on(&data, &[]);
    let admin = node.admin();
    eventually("the autostart environment runs", || async {
        admin
            .status("auto")
            .await
            .is_ok_and(|s| s[0].state == "running")
    })
    .await;
    let (code, body) = get(
        &format!("{}/w/auto/app/", node.url),
        Some(&format!("Bearer {}", node.token())),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    admin.stop("auto", None).await.unwrap();
}

#[actix_rt::test]
async fn environments_that_do_not_fit_are_refused_with_the_figures() {
    let node = TestNode::spawn();
    workspace(
        &node,
        "huge",
        &[],
        "big",
        "schema_version: 1\nruntime: process\nresources: {memory: {min: 100TiB}}\n",
    )
    .await;
    let error = node
        .admin()
        .run("huge", &RunRequest::default())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("does not fit") && text.contains("needs at least 102400.0 GiB of memory"),
        "{text}"
    );
    assert_eq!(error.code(), Some("does-not-fit"));
    let error = node
        .admin()
        .run(
            "huge",
            &RunRequest {
                environment: Some("small".into()),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("environment-not-found"), "{error}");
    assert!(error.to_string().contains("(it has: big)"), "{error}");
}

#[actix_rt::test]
async fn detection_proposes_and_the_cli_writes_an_environment() {
    let node = TestNode::spawn();
    let dir = node.data_dir.parent().unwrap().join("nb");
    // Adopting a directory makes it the project `projects/nb`.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("requirements.txt"), "pandas\njupyterlab\n").unwrap();
    std::fs::write(dir.join("explore.ipynb"), "{}").unwrap();
    let admin = node.admin();
    admin
        .create(&CreateWorkspace {
            name: "nb".into(),
            from_dir: Some(dir.display().to_string()),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let output = node.cli(&["env", "detect", "nb"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("kind: jupyterlab") && text.contains("projects/nb/requirements.txt"),
        "{text}"
    );
    assert!(
        admin
            .get("nb")
            .await
            .unwrap()
            .workspace
            .environments
            .is_empty(),
        "shown, not written"
    );
    let output = node.cli(&["env", "detect", "nb", "--write"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        admin.get("nb").await.unwrap().workspace.environments,
        vec!["default"]
    );
    let output = node.cli(&["env", "detect", "nb", "--write"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
}

#[actix_rt::test]
async fn jupyterlab_opens_through_the_proxy_without_a_second_login() {
    let Some(wheels) = common::runtime::wheelhouse() else {
        common::skip("no JupyterLab wheels in target/test-wheels (run `python3 -m pip download jupyterlab -d target/test-wheels`, as .ci/run does)");
        return;
    };
    let node = TestNode::spawn();
    let root = workspace(
        &node,
        "nb",
        &[("hello.ipynb", "{\"cells\": [], \"metadata\": {}, \"nbformat\": 4, \"nbformat_minor\": 5}")],
        "lab",
        "schema_version: 1\nruntime: process\npython: {requirements: [requirements.txt]}\ntools: [{name: lab, kind: jupyterlab, path: /lab}]\n",
    )
    .await;
    common::runtime::wheels_into(&wheels, Path::new(&root));
    let admin = node.admin();
    let statuses = run(&admin, "nb").await;
    let lab = &statuses[0].tools[0];
    assert_eq!(lab.state, "ready", "{statuses:#?}");
    assert_eq!(lab.url, "/w/nb/lab/lab");
    let auth = format!("Bearer {}", node.token());

    // Signed in by the node: JupyterLab's API answers without its own token.
    let (code, body) = get(&format!("{}/w/nb/lab/api/status", node.url), Some(&auth)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"started\""), "{body}");
    let (code, body) = get(&format!("{}/w/nb/lab/lab", node.url), Some(&auth)).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("JupyterLab"),
        "{}",
        &body[..body.len().min(500)]
    );
    let (code, body) = get(
        &format!("{}/w/nb/lab/api/contents/hello.ipynb", node.url),
        Some(&auth),
    )
    .await;
    assert_eq!(code, 200, "the workspace is JupyterLab's root: {body}");
    // Refused without the node's login.
    let (code, _) = get(&format!("{}/w/nb/lab/api/status", node.url), None).await;
    assert_eq!(code, 401);

    // A kernel, started and spoken to over the proxied WebSocket.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut response = client
        .post(format!("{}/w/nb/lab/api/kernels", node.url))
        .insert_header(("Authorization", auth.as_str()))
        .send_json(&serde_json::json!({"name": "python3"}))
        .await
        .unwrap();
    let body = response.body().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let kernel: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = kernel["id"].as_str().unwrap();
    let url = format!("{}/w/nb/lab/api/kernels/{id}/channels", node.url).replacen("http", "ws", 1);
    let (_, framed) = client
        .ws(url)
        .max_frame_size(16 << 20)
        .header("Authorization", auth.as_str())
        .connect()
        .await
        .unwrap();
    let (mut sink, mut stream) = framed.split();
    let request = serde_json::json!({
        "header": {"msg_id": "aienv-1", "username": "test", "session": "aienv", "msg_type": "execute_request", "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": "print(6*7)", "silent": false, "store_history": false, "user_expressions": {}, "allow_stdin": false}
    });
    sink.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(frame) = stream.next().await {
            if let Ok(Frame::Text(bytes)) = frame {
                let message: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if message["msg_type"] == "stream" {
                    return message["content"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
            }
        }
        String::new()
    })
    .await
    .expect("the kernel answers over the proxied WebSocket");
    assert_eq!(output.trim(), "42");
    admin.stop("nb", None).await.unwrap();
}

#[actix_rt::test]
async fn deleting_a_running_workspace_stops_it_first() {
    let node = TestNode::spawn();
    workspace(
        &node,
        "doomed",
        &[("hello.py", HELLO)],
        "web",
        "schema_version: 1\nruntime: process\ntools: [{name: app, kind: http, command: python3 hello.py}]\n",
    )
    .await;
    let admin = node.admin();
    let statuses = run(&admin, "doomed").await;
    let pid = statuses[0].tools[0].pid.expect("the tool runs") as i32;
    assert!(alive(pid));
    admin.delete("doomed").await.unwrap();
    // Nothing keeps running from the trash, and the node forgets its environments.
    assert!(!alive(pid), "the tool outlived its workspace");
    eventually("the deleted workspace leaves the runtimes", || async {
        admin
            .runtimes()
            .await
            .unwrap()
            .iter()
            .all(|s| s.workspace != "doomed")
    })
    .await;
}
