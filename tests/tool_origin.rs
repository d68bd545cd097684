//! Tools on their own origins: the dashboard sends a browser to a tool's own listener with a
//! single-use ticket; that origin serves only its tool, only to its own session; the node's
//! cookies never reach a tool and a tool cannot set them; the API refuses pages of tool
//! origins. The same attacks from a real page in Chromium, with JupyterLab, are in
//! `tool_origin_in_chromium`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use awc::http::header::HeaderMap;
use common::runtime::{run, workspace, HELLO};
use common::TestNode;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

fn plain() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .finish()
}

/// A browser-like TLS client: no client certificate, the node's key pinned.
fn browser_tls(node: &TestNode) -> awc::Client {
    let config = aienv::tls::client_config(None, node.key).unwrap();
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .finish()
}

async fn send(
    client: &awc::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut request = client.request(method.parse().unwrap(), url);
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send_body(body.to_string()).await.unwrap();
    let body = response.body().limit(8 << 20).await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// `name=value` of the first `Set-Cookie` named `name…`.
fn cookie(answer: &Answer, prefix: &str) -> String {
    common::set_cookie(&answer.headers, prefix)
}

/// Signs into the dashboard with the admin token: the session cookie.
async fn dashboard_cookie(client: &awc::Client, base: &str, token: &str) -> String {
    let answer = send(
        client,
        "POST",
        &format!("{base}/api/v1/session"),
        &[("content-type", "application/json")],
        &format!("{{\"token\": \"{token}\"}}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    cookie(&answer, "aienv_session=")
}

/// Origin (`scheme://host:port`) of a URL.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    format!("{scheme}://{}", rest.split('/').next().unwrap())
}

const SPEC: &str = "schema_version: 1
runtime: process
tools:
  - {name: app, kind: http, command: [python3, hello.py]}
  - {name: other, kind: http, command: [python3, hello.py]}
";

#[actix_rt::test]
async fn each_tool_has_its_own_origin_and_session() {
    let node = TestNode::spawn();
    workspace(&node, "site", &[("hello.py", HELLO)], "web", SPEC).await;
    let statuses = run(&node.admin(), "site").await;
    assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    let client = plain();
    let session = dashboard_cookie(&client, &node.url, &node.token()).await;
    let dashboard = node.url.clone();

    // A browser (cookie, navigation) on the dashboard's /w/ is sent to the tool's origin.
    let answer = send(
        &client,
        "GET",
        &format!("{dashboard}/w/site/app/page?x=1"),
        &[("cookie", &session), ("sec-fetch-mode", "navigate")],
        "",
    )
    .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let sign_in = answer.location();
    let app = origin_of(&sign_in);
    assert!(sign_in.contains("/_aienv/sign-in?ticket="), "{sign_in}");
    assert_ne!(
        app,
        origin_of(&dashboard),
        "the tool must not share the dashboard's origin"
    );
    assert!(app.starts_with("http://127.0.0.1:"), "{app}");

    // The cookie alone is never proxied on the dashboard's origin (a fetch, not a navigation).
    let answer = send(
        &client,
        "GET",
        &format!("{dashboard}/w/site/app/page"),
        &[("cookie", &session), ("sec-fetch-mode", "cors")],
        "",
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // On the tool's origin the dashboard's cookie grants nothing: a navigation goes back to
    // the dashboard, anything else is refused.
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/page"),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), format!("{dashboard}/w/site/app/page"));
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/page"),
        &[("cookie", &session), ("sec-fetch-mode", "cors")],
        "",
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // The ticket signs in once and lands where the person was going.
    let answer = send(&client, "GET", &sign_in, &[], "").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location(), "/w/site/app/page?x=1");
    let port = app.rsplit(':').next().unwrap();
    let app_cookie = cookie(&answer, &format!("aienv_tool_{port}="));
    let set = answer.set_cookies().join(" ");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let again = send(&client, "GET", &sign_in, &[], "").await;
    assert_eq!(again.status, 401, "a ticket works once: {}", again.body);
    assert!(again.body.contains("ticket-invalid"), "{}", again.body);

    let both = format!("{session}; {app_cookie}; theme=dark");
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/page?x=1"),
        &[("cookie", &both)],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body.starts_with("hello /w/site/app/page?x=1"),
        "{}",
        answer.body
    );

    // The tool sees none of the node's cookies and cannot set them; its own pass.
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/headers"),
        &[("cookie", &both)],
        "",
    )
    .await;
    assert_eq!(answer.body.trim(), "cookie=theme=dark", "{}", answer.body);
    assert_eq!(answer.set_cookies(), vec!["tool_own=1; Path=/".to_string()]);

    // The origin serves its tool only: not the API, not another tool.
    for path in ["/api/v1/session", "/api/v1/workspaces", "/w/site/other/"] {
        let answer = send(
            &client,
            "GET",
            &format!("{app}{path}"),
            &[("cookie", &both)],
            "",
        )
        .await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(answer.body.contains("not-this-tool"), "{}", answer.body);
    }
    // Pages of other origins get nothing from it, whatever they send.
    let answer = send(
        &client,
        "POST",
        &format!("{app}/w/site/app/echo"),
        &[("cookie", &both), ("origin", &origin_of(&dashboard))],
        "x",
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("origin-not-allowed"));

    // Another tool's origin does not take this tool's cookie.
    let ticket = send(
        &client,
        "POST",
        &format!("{dashboard}/api/v1/workspaces/site/tools/other/ticket"),
        &[("authorization", &format!("Bearer {}", node.token()))],
        "",
    )
    .await;
    assert_eq!(ticket.status, 200, "{}", ticket.body);
    let ticket: aienv::api::SignInLinkDto = serde_json::from_str(&ticket.body).unwrap();
    assert_eq!(ticket.expires_in_seconds, 60);
    let other = origin_of(&ticket.url);
    assert_ne!(other, app);
    let answer = send(
        &client,
        "GET",
        &format!("{other}/w/site/other/"),
        &[("cookie", &both), ("sec-fetch-mode", "cors")],
        "",
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    // Nor this tool's ticket.
    let answer = send(&client, "GET", &ticket.url.replace(&other, &app), &[], "").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    let answer = send(&client, "GET", &ticket.url, &[], "").await;
    assert_eq!(
        answer.status, 401,
        "spent on the wrong tool: {}",
        answer.body
    );

    // The API refuses every page of a tool origin, reads included.
    for (method, path) in [
        ("GET", "/api/v1/session"),
        ("GET", "/api/v1/workspaces"),
        ("DELETE", "/api/v1/workspaces/site"),
    ] {
        let answer = send(
            &client,
            method,
            &format!("{dashboard}{path}"),
            &[("cookie", &session), ("origin", &app)],
            "",
        )
        .await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.body);
        assert!(
            answer.body.contains("origin-not-allowed"),
            "{}",
            answer.body
        );
    }
    assert!(node.admin().get("site").await.is_ok());

    // The CLI opens tools the same way: a link that signs in once.
    let output = node.cli(&["open", "site", "app", "--print"]);
    assert!(output.status.success(), "{output:?}");
    let link = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(origin_of(&link), app, "the same tool keeps its origin");
    let answer = send(&client, "GET", &link, &[], "").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location(), "/w/site/app/");

    // A stopped tool's origin stays (open tabs work again after a restart); a deleted
    // workspace's origins close.
    node.admin().stop("site", None).await.unwrap();
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/"),
        &[("cookie", &both)],
        "",
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    node.admin().delete("site").await.unwrap();
    let port: u16 = port.parse().unwrap();
    common::eventually(
        "the deleted workspace's tool origin closes",
        || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_err() },
    )
    .await;
}

#[actix_rt::test]
async fn tool_origins_over_tls_for_other_machines() {
    let node = TestNode::spawn();
    workspace(&node, "site", &[("hello.py", HELLO)], "web", SPEC).await;
    run(&node.admin(), "site").await;
    let client = browser_tls(&node);
    let session = dashboard_cookie(&client, &node.tls_url, &node.token()).await;
    let answer = send(
        &client,
        "GET",
        &format!("{}/w/site/app/", node.tls_url),
        &[("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let sign_in = answer.location();
    assert!(sign_in.starts_with("https://127.0.0.1:"), "{sign_in}");
    let app = origin_of(&sign_in);
    // The TLS origin has its own port, apart from the loopback one.
    let local = send(
        &plain(),
        "POST",
        &format!("{}/api/v1/workspaces/site/tools/app/ticket", node.url),
        &[("authorization", &format!("Bearer {}", node.token()))],
        "",
    )
    .await;
    let local: aienv::api::SignInLinkDto = serde_json::from_str(&local.body).unwrap();
    assert!(local.url.starts_with("http://127.0.0.1:"), "{}", local.url);
    assert_ne!(
        origin_of(&local.url).rsplit(':').next(),
        app.rsplit(':').next()
    );

    let answer = send(&client, "GET", &sign_in, &[], "").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let set = answer.set_cookies().join(" ");
    assert!(
        set.contains("Secure"),
        "a cookie set over TLS is Secure: {set}"
    );
    let port = app.rsplit(':').next().unwrap();
    let app_cookie = cookie(&answer, &format!("aienv_tool_{port}="));
    let answer = send(
        &client,
        "GET",
        &format!("{app}/w/site/app/x"),
        &[("cookie", &app_cookie)],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.starts_with("hello /w/site/app/x"));
    // Plain HTTP to the TLS origin gets nowhere.
    let clear = plain()
        .get(format!("{}/w/site/app/x", app.replace("https", "http")))
        .insert_header(("cookie", app_cookie.as_str()))
        .send()
        .await;
    assert!(
        clear.as_ref().is_err() || clear.as_ref().is_ok_and(|r| r.status().as_u16() != 200),
        "plain HTTP on a TLS origin answered"
    );
}

/// The attacks of a hostile tool page, from a real page in Chromium: a JupyterLab opened
/// from the dashboard (no token prompt), whose page then tries the node's API, its
/// WebSockets and another tool.
#[test]
fn tool_origin_in_chromium() {
    let Some((e2e, chromium)) = common::browser() else {
        return;
    };
    let Some(wheels) = common::runtime::wheelhouse() else {
        return common::skip("no JupyterLab wheels in target/test-wheels (run `python3 -m pip download jupyterlab -d target/test-wheels`, as .ci/run does)");
    };
    let node = TestNode::spawn();
    actix_rt::System::new().block_on(async {
        let root = workspace(
            &node,
            "nb",
            &[
                ("hello.py", HELLO),
                ("hello.ipynb", "{\"cells\": [], \"metadata\": {}, \"nbformat\": 4, \"nbformat_minor\": 5}"),
            ],
            "lab",
            "schema_version: 1\nruntime: process\npython: {requirements: [requirements.txt]}\ntools:\n  - {name: lab, kind: jupyterlab, path: /lab}\n  - {name: app, kind: http, command: [python, hello.py]}\n  - {name: term, kind: terminal}\n",
        )
        .await;
        common::runtime::wheels_into(&wheels, Path::new(&root));
        let statuses = run(&node.admin(), "nb").await;
        assert_eq!(statuses[0].state, "running", "{statuses:#?}");
    });
    let script = Command::new("node")
        .arg(e2e.join("tool_origin.mjs"))
        .current_dir(&e2e)
        .env("NODE_URL", &node.url)
        .env("TOKEN", node.token())
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut script = script;
    let mut passed = false;
    for line in BufReader::new(script.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("e2e: {line}");
        passed |= line == "PASS";
    }
    let status = script.wait().unwrap();
    assert!(
        status.success() && passed,
        "the tool-origin test in Chromium failed (see e2e: lines above)"
    );
    // Nothing the page tried changed the node.
    actix_rt::System::new().block_on(async {
        let list = node.admin().list_all(&Default::default()).await.unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
    });
}
