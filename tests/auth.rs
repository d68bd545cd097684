//! Mutating routes need a login; wrong credentials change nothing; the admin token and node
//! users work; requests naming a foreign host are refused.

mod common;

use std::process::Command;

use aienv::api::CreateWorkspace;
use aienv::client::{Client, Credentials};
use common::TestNode;

/// Every mutating route, as (method, path, body).
fn mutating_routes() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("POST", "/api/v1/workspaces", r#"{"name":"intruder"}"#),
        ("PATCH", "/api/v1/workspaces/target", r#"{"title":"pwned"}"#),
        ("DELETE", "/api/v1/workspaces/target", ""),
        (
            "PUT",
            "/api/v1/workspaces/target/manifest",
            "schema_version: 1\n",
        ),
        (
            "PUT",
            "/api/v1/workspaces/target/environments/x",
            "schema_version: 1\n",
        ),
        ("DELETE", "/api/v1/workspaces/target/environments/x", ""),
        ("POST", "/api/v1/workspaces/target/share", "{}"),
        ("POST", "/api/v1/workspaces/target/unshare", ""),
        ("POST", "/api/v1/workspaces/target/revisions/1/restore", ""),
        ("POST", "/api/v1/workspaces/import", "zzz"),
    ]
}

async fn status_of(
    node: &TestNode,
    method: &str,
    path: &str,
    body: &str,
    auth: Option<&str>,
) -> u16 {
    let client = awc::Client::default();
    let mut request = client
        .request(method.parse().unwrap(), format!("{}{path}", node.url))
        .insert_header((
            "content-type",
            if body.starts_with('{') {
                "application/json"
            } else {
                "application/yaml"
            },
        ));
    if let Some(auth) = auth {
        request = request.insert_header(("authorization", auth));
    }
    request
        .send_body(body.to_string())
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[actix_rt::test]
async fn mutating_routes_need_valid_credentials() {
    let node = TestNode::spawn();
    let admin = node.admin();
    admin
        .create(&CreateWorkspace {
            name: "target".into(),
            title: Some("original".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = admin.get("target").await.unwrap().workspace;

    let wrong_basic = format!("Basic {}", aienv::auth::base64_encode(b"admin:guess"));
    for (method, path, body) in mutating_routes() {
        for auth in [
            None,
            Some("Bearer not-the-token"),
            Some(wrong_basic.as_str()),
            Some("Garbage"),
        ] {
            let status = status_of(&node, method, path, body, auth).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
        }
    }
    let after = admin.get("target").await.unwrap().workspace;
    assert_eq!(
        (after.revision, after.title.as_str()),
        (before.revision, "original")
    );
    assert_eq!(admin.list(&Default::default()).await.unwrap().total, 1);

    // The admin token works.
    let token = format!("Bearer {}", node.token());
    assert_eq!(
        status_of(
            &node,
            "POST",
            "/api/v1/workspaces/target/share",
            "{}",
            Some(&token)
        )
        .await,
        200
    );

    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.data_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[actix_rt::test]
async fn node_users_log_in_with_basic_auth() {
    let node = TestNode::spawn();
    common::add_user(&node.data_dir, "ada", "member", "correct horse battery");

    // No restart needed: the node reads the users file when it changes.
    let ada = Client::new(
        &node.url,
        Some(Credentials::Basic {
            user: "ada".into(),
            password: "correct horse battery".into(),
        }),
    );
    let created = ada
        .create(&CreateWorkspace {
            name: "by-ada".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let history = ada.revisions("by-ada").await.unwrap();
    assert_eq!(history[0].by, "ada");
    assert_eq!(created.workspace.revision, 1);

    let mallory = Client::new(
        &node.url,
        Some(Credentials::Basic {
            user: "ada".into(),
            password: "wrong password".into(),
        }),
    );
    let error = mallory.delete("by-ada").await.unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert!(node.admin().get("by-ada").await.is_ok());

    // Removing the user revokes access.
    let output = Command::new(common::binary())
        .args(["user", "rm", "ada", "--data-dir"])
        .arg(&node.data_dir)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(ada.delete("by-ada").await.unwrap_err().status(), Some(401));
}

#[actix_rt::test]
async fn foreign_host_names_are_refused() {
    let node = TestNode::spawn();
    let client = awc::Client::default();
    let refused = client
        .get(format!("{}/api/v1/health", node.url))
        .insert_header(("host", "attacker.example:37778"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    for host in ["localhost:1234", "127.0.0.1", "test-node"] {
        let ok = client
            .get(format!("{}/api/v1/health", node.url))
            .insert_header(("host", host))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200, "{host}");
    }
}

/// A dashboard session made over TLS (another machine) gets a `Secure` cookie, so the browser
/// never sends it in clear; one made on the loopback listener cannot be `Secure` (plain HTTP).
#[actix_rt::test]
async fn a_session_made_over_tls_has_a_secure_cookie() {
    let node = TestNode::spawn();
    let body = serde_json::json!({"token": node.token()});
    let config = aienv::tls::client_config(None, node.key).unwrap();
    let tls = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .finish();
    let response = tls
        .post(format!("{}/api/v1/session", node.tls_url))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let response = awc::Client::default()
        .post(format!("{}/api/v1/session", node.url))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// `name=value` of a response's session cookie.
fn session_cookie(response: &awc::ClientResponse<impl futures_util::Stream>) -> String {
    common::set_cookie(response.headers(), "aienv_session=")
}

#[actix_rt::test]
async fn the_banner_and_aienv_open_sign_the_dashboard_in_once() {
    let node = TestNode::spawn();
    assert!(
        node.banner
            .contains(&format!("aienv: dashboard on this machine: {}/", node.url)),
        "{}",
        node.banner
    );
    let link = node
        .banner
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.contains("?ticket=")))
        .unwrap_or_else(|| panic!("no sign-in link in {}", node.banner))
        .to_string();
    assert!(link.starts_with(&format!("{}/_aienv/sign-in?ticket=", node.url)));
    let client = awc::Client::builder().disable_redirects().finish();
    let response = client.get(&link).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers().get("location").unwrap(), "/");
    let cookie = session_cookie(&response);
    let mut session = client
        .get(format!("{}/api/v1/session", node.url))
        .insert_header(("cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status().as_u16(), 200);
    let body: serde_json::Value = session.json().await.unwrap();
    assert_eq!(
        (body["user"].as_str(), body["role"].as_str()),
        (Some("admin"), Some("admin"))
    );
    // Once only.
    let mut again = client.get(&link).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401);
    let body = again.body().await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("aienv open"));

    // `aienv open` with no workspace: a fresh link, for this machine's browser.
    let output = node.cli(&["open", "--print"]);
    assert!(output.status.success(), "{output:?}");
    let link = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        link.starts_with(&format!("{}/_aienv/sign-in?ticket=", node.url)),
        "{link}"
    );
    let response = client.get(&link).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    // A page cannot mint links with the cookie alone (the CSRF token is needed).
    let cookie = session_cookie(&response);
    let response = client
        .post(format!("{}/api/v1/session/ticket", node.url))
        .insert_header(("cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}
