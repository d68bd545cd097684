//! The live server answers every route documented in `schemas/openapi.yaml` as documented:
//! each case's status is documented for its operation and its JSON body validates against the
//! documented schema; every operation has at least one successful case. The bad-input cases
//! (malformed JSON, oversized body, invalid YAML, unknown fields) are among them.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aienv::api::CreateWorkspace;
use common::TestNode;
use serde_json::{json, Value};

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

struct Case {
    method: &'static str,
    /// Documented path template.
    template: &'static str,
    /// Concrete path.
    path: String,
    body: Body,
    auth: bool,
    status: u16,
    /// Expected error code, for failures.
    code: Option<&'static str>,
}

fn case(
    method: &'static str,
    template: &'static str,
    path: &str,
    body: Body,
    auth: bool,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        method,
        template,
        path: path.to_string(),
        body,
        auth,
        status,
        code,
    }
}

use common::openapi::{load_spec, response_media_types, response_schema};

async fn run(node: &TestNode, spec: &Value, case: &Case, covered: &mut BTreeSet<String>) -> Value {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish();
    let url = format!("{}/api/v1{}", node.url, case.path);
    let mut request = client.request(case.method.parse().unwrap(), &url);
    if case.auth {
        request = request.insert_header(("authorization", format!("Bearer {}", node.token())));
    }
    let mut response = match &case.body {
        Body::None => request.send().await.unwrap(),
        Body::Json(value) => request.send_json(value).await.unwrap(),
        Body::Raw(content_type, bytes) => request
            .insert_header(("content-type", *content_type))
            .send_body(bytes.clone())
            .await
            .unwrap(),
    };
    let label = format!("{} {} ({})", case.method, case.path, case.template);
    let status = response.status().as_u16();
    let body = response.body().limit(64 * 1024 * 1024).await.unwrap();
    assert_eq!(
        status,
        case.status,
        "{label}: {}",
        String::from_utf8_lossy(&body)
    );
    let (media, schema) = response_schema(spec, case.template, case.method, status)
        .unwrap_or_else(|| panic!("{label}: status {status} is not documented"));
    if let Some(media) = &media {
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let documented = response_media_types(spec, case.template, case.method, status);
        assert!(
            documented
                .iter()
                .any(|m| content_type.starts_with(m.as_str())),
            "{label}: content-type {content_type}, documented {documented:?} (first {media})"
        );
    }
    let mut returned = Value::Null;
    if media.as_deref() == Some("application/json") {
        let value: Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{label}: not JSON: {e}"));
        let mut root = schema.clone().unwrap();
        root["components"] = spec["components"].clone();
        let validator = jsonschema::validator_for(&root).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{label}: body does not match the documented schema: {errors:?}\n{value}"
        );
        if let Some(code) = case.code {
            assert_eq!(value["error"]["code"], code, "{label}");
        }
        returned = value;
    }
    if (200..300).contains(&status) || status == 101 || status == 304 {
        covered.insert(format!("{} {}", case.method, case.template));
    }
    returned
}

#[actix_rt::test]
async fn live_server_matches_openapi_document() {
    if !common::needs_test_hooks() {
        return;
    }
    let spec = load_spec();
    let temp = tempfile::tempdir().unwrap();
    // Chunks are served slowly, so a transfer can be cancelled mid-way. One webhook, for
    // `POST /hooks/{name}`.
    let config = temp.path().join("node.yaml");
    std::fs::write(
        &config,
        "ci:\n  hooks:\n    - {name: doc-hook, secret: 0123456789abcdef, workspace: rt, pull: false, command: [\"true\"]}\n",
    )
    .unwrap();
    let node = TestNode::spawn_on(
        &temp.path().join("node"),
        &[
            "--test-chunk-delay-ms",
            "300",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let admin = node.admin();
    admin
        .create(&CreateWorkspace {
            name: "doc".into(),
            template: Some("python".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create(&CreateWorkspace {
            name: "gone".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("doc.tar.zst");
    admin.export("doc", &archive, |_| {}).await.unwrap();
    let archive_bytes = std::fs::read(&archive).unwrap();
    let manifest = admin.manifest("doc").await.unwrap();

    let ws = "/workspaces/{ws}";
    let big = "x".repeat(2 * 1024 * 1024);
    let cases = vec![
        case("GET", "/health", "/health", Body::None, false, 200, None),
        case("GET", "/node", "/node", Body::None, false, 200, None),
        case("GET", "/node", "/node", Body::None, true, 200, None),
        case("GET", "/catalog", "/catalog", Body::None, false, 200, None),
        case(
            "POST",
            "/session",
            "/session",
            Body::Json(json!({"token": node.token()})),
            false,
            200,
            None,
        ),
        case(
            "POST",
            "/session/ticket",
            "/session/ticket",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "POST",
            "/session",
            "/session",
            Body::Raw("text/plain", b"{\"token\": \"x\"}".to_vec()),
            false,
            415,
            Some("unsupported-media-type"),
        ),
        case(
            "POST",
            "/session",
            "/session",
            Body::Json(json!({"token": 5})),
            false,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/session/ticket",
            "/session/ticket",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            "/session",
            "/session",
            Body::Json(json!({"token": "wrong"})),
            false,
            401,
            Some("login-failed"),
        ),
        case(
            "POST",
            "/session",
            "/session",
            Body::Json(json!({"user": "x"})),
            false,
            400,
            Some("invalid-field"),
        ),
        case(
            "GET",
            "/session",
            "/session",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "DELETE",
            "/session",
            "/session",
            Body::None,
            true,
            204,
            None,
        ),
        case("GET", "/peers", "/peers", Body::None, false, 200, None),
        case(
            "GET",
            "/network/catalog",
            "/network/catalog?tag=nlp&q=x&peer=p",
            Body::None,
            false,
            200,
            None,
        ),
        case(
            "GET",
            "/network/catalog",
            "/network/catalog?type=cooking",
            Body::None,
            false,
            422,
            Some("invalid-field"),
        ),
        case(
            "GET",
            "/network/catalog",
            "/network/catalog?colour=red",
            Body::None,
            false,
            400,
            Some("invalid-query"),
        ),
        case(
            "GET",
            "/workspaces",
            "/workspaces?limit=1&q=doc&type=general",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces",
            "/workspaces",
            Body::None,
            false,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces",
            "/workspaces?limit=0",
            Body::None,
            true,
            400,
            Some("invalid-query"),
        ),
        case(
            "GET",
            "/workspaces",
            "/workspaces?limit=many",
            Body::None,
            true,
            400,
            Some("invalid-query"),
        ),
        case(
            "GET",
            "/workspaces",
            "/workspaces?type=cooking",
            Body::None,
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "new-one", "tags": ["a"]})),
            true,
            201,
            None,
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "x"})),
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Raw("application/json", b"{\"name\": ".to_vec()),
            true,
            400,
            Some("malformed-json"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "y", "colour": "red"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "y", "tags": "not-a-list"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "Bad Name"})),
            true,
            422,
            Some("validation-failed"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "doc"})),
            true,
            409,
            Some("name-taken"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Json(json!({"name": "big", "description": big})),
            true,
            413,
            Some("body-too-large"),
        ),
        case(
            "POST",
            "/workspaces",
            "/workspaces",
            Body::Raw("text/plain", b"name=x".to_vec()),
            true,
            415,
            Some("unsupported-media-type"),
        ),
        case("GET", ws, "/workspaces/doc", Body::None, true, 200, None),
        case(
            "GET",
            ws,
            "/workspaces/nope",
            Body::None,
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "PATCH",
            ws,
            "/workspaces/doc",
            Body::Json(json!({"title": "T", "expected_revision": 1})),
            true,
            200,
            None,
        ),
        case(
            "PATCH",
            ws,
            "/workspaces/doc",
            Body::Json(json!({"title": "T", "expected_revision": 1})),
            true,
            409,
            Some("revision-conflict"),
        ),
        case(
            "PATCH",
            ws,
            "/workspaces/doc",
            Body::Json(json!({"tags": ["Not A Slug"]})),
            true,
            422,
            Some("validation-failed"),
        ),
        case(
            "GET",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "PUT",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::Raw(
                "application/yaml",
                b"schema_version: 1\nname: [unclosed\n".to_vec(),
            ),
            true,
            422,
            Some("invalid-yaml"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::Raw(
                "application/yaml",
                format!("{manifest}surprise: 1\n").into_bytes(),
            ),
            true,
            422,
            Some("invalid-yaml"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::Raw("application/yaml", manifest.clone().into_bytes()),
            true,
            409,
            Some("revision-conflict"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::Raw("application/yaml", big.clone().into_bytes()),
            true,
            413,
            Some("body-too-large"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/manifest",
            "/workspaces/doc/manifest",
            Body::Raw(
                "application/yaml",
                manifest.replace("revision: 1", "revision: 2").into_bytes(),
            ),
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/default",
            Body::None,
            false,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "GET",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/default",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/none",
            Body::None,
            true,
            404,
            Some("environment-not-found"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/cpu",
            Body::Raw(
                "application/yaml",
                b"schema_version: 1\nruntime: process\n".to_vec(),
            ),
            true,
            200,
            None,
        ),
        case(
            "PUT",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/cpu",
            Body::Raw(
                "application/yaml",
                b"schema_version: 1\nruntime: process\nextra: 1\n".to_vec(),
            ),
            true,
            422,
            Some("invalid-yaml"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/cpu?expected_revision=1",
            Body::Raw("application/yaml", b"schema_version: 1\n".to_vec()),
            true,
            409,
            Some("revision-conflict"),
        ),
        case(
            "DELETE",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/cpu",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "DELETE",
            "/workspaces/{ws}/environments/{env}",
            "/workspaces/doc/environments/cpu",
            Body::None,
            true,
            404,
            Some("environment-not-found"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/share",
            "/workspaces/doc/share",
            Body::Json(json!({"mode": "everyone"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/share",
            "/workspaces/doc/share",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "POST",
            "/workspaces/{ws}/share",
            "/workspaces/doc/share",
            Body::Json(json!({"mode": "peers", "peers": ["gpu-box"]})),
            true,
            200,
            None,
        ),
        case(
            "POST",
            "/workspaces/{ws}/unshare",
            "/workspaces/doc/unshare",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/access",
            "/workspaces/doc/access",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/access",
            "/workspaces/doc/access",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/access",
            "/workspaces/doc/access",
            Body::Json(json!({"members": ["nobody"]})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "PUT",
            "/workspaces/{ws}/access",
            "/workspaces/doc/access",
            Body::Json(json!({"members": []})),
            true,
            200,
            None,
        ),
        case(
            "PUT",
            "/workspaces/{ws}/access",
            "/workspaces/none/access",
            Body::Json(json!({})),
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/share",
            "/workspaces/doc/share",
            Body::None,
            true,
            200,
            None,
        ),
        case("GET", ws, "/workspaces/doc", Body::None, false, 200, None),
        case(
            "GET",
            "/workspaces/{ws}/revisions",
            "/workspaces/doc/revisions",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/revisions/{rev}",
            "/workspaces/doc/revisions/1",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/revisions/{rev}",
            "/workspaces/doc/revisions/99",
            Body::None,
            true,
            404,
            Some("revision-not-found"),
        ),
        case(
            "GET",
            "/workspaces/{ws}/revisions/{rev}",
            "/workspaces/doc/revisions/first",
            Body::None,
            true,
            400,
            Some("invalid-path"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/revisions/{rev}/restore",
            "/workspaces/doc/revisions/first/restore",
            Body::None,
            true,
            400,
            Some("invalid-path"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/revisions/{rev}/restore",
            "/workspaces/doc/revisions/1/restore",
            Body::None,
            true,
            200,
            None,
        ),
        // Revision 1 was unshared; share again for the anonymous export below.
        case(
            "POST",
            "/workspaces/{ws}/share",
            "/workspaces/doc/share",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/export",
            "/workspaces/doc/export",
            Body::None,
            false,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/export",
            "/workspaces/gone/export",
            Body::None,
            false,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "POST",
            "/workspaces/import",
            "/workspaces/import?as=imported",
            Body::Raw("application/zstd", archive_bytes.clone()),
            true,
            201,
            None,
        ),
        case(
            "POST",
            "/workspaces/import",
            "/workspaces/import",
            Body::Raw("application/zstd", archive_bytes),
            true,
            409,
            Some("name-taken"),
        ),
        case(
            "POST",
            "/workspaces/import",
            "/workspaces/import",
            Body::Raw("application/zstd", b"garbage".to_vec()),
            true,
            422,
            Some("archive-rejected"),
        ),
        case(
            "POST",
            "/workspaces/import",
            "/workspaces/import",
            Body::Raw("application/zstd", Vec::new()),
            true,
            400,
            Some("empty-body"),
        ),
        case(
            "DELETE",
            ws,
            "/workspaces/gone",
            Body::None,
            true,
            204,
            None,
        ),
        case(
            "DELETE",
            ws,
            "/workspaces/gone",
            Body::None,
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "GET",
            "/events",
            "/events",
            Body::None,
            true,
            400,
            Some("not-a-websocket"),
        ),
        case(
            "GET",
            "/events",
            "/events",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
    ];
    let mut covered = BTreeSet::new();
    for case in &cases {
        run(&node, &spec, case, &mut covered).await;
    }

    // A session cookie: the session answers, changes need the CSRF token, logout ends it.
    let client = awc::Client::default();
    let mut login = client
        .post(format!("{}/api/v1/session", node.url))
        .send_json(&json!({"token": node.token()}))
        .await
        .unwrap();
    let set_cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set_cookie
        .strip_prefix("aienv_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("session cookie")
        .to_string();
    let set_cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        set_cookie.contains("httponly") && set_cookie.contains("samesite=strict"),
        "{set_cookie}"
    );
    let session: Value = login.json().await.unwrap();
    let cookie_header = format!("aienv_session={cookie}");
    let mut current = client
        .get(format!("{}/api/v1/session", node.url))
        .insert_header(("cookie", cookie_header.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(current.status().as_u16(), 200);
    let current: Value = current.json().await.unwrap();
    assert_eq!(current, session);
    covered.insert("GET /session".into());
    let without_csrf = client
        .post(format!("{}/api/v1/workspaces", node.url))
        .insert_header(("cookie", cookie_header.clone()))
        .send_json(&json!({"name": "via-cookie"}))
        .await
        .unwrap();
    assert_eq!(
        without_csrf.status().as_u16(),
        403,
        "a change without the CSRF token is refused"
    );
    let with_csrf = client
        .post(format!("{}/api/v1/workspaces", node.url))
        .insert_header(("cookie", cookie_header.clone()))
        .insert_header(("x-csrf-token", session["csrf_token"].as_str().unwrap()))
        .send_json(&json!({"name": "via-cookie"}))
        .await
        .unwrap();
    assert_eq!(with_csrf.status().as_u16(), 201);

    // The WebSocket upgrade itself (101).
    let (response, _) = awc::Client::default()
        .ws(format!(
            "{}/api/v1/events",
            node.url.replacen("http", "ws", 1)
        ))
        .header("authorization", format!("Bearer {}", node.token()))
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    covered.insert("GET /events".into());

    // Transfers: the node serves a snapshot and chunks; a second node clones from it.
    let source = admin
        .create(&CreateWorkspace {
            name: "transfer-src".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let source_path = std::path::PathBuf::from(source.workspace.path.unwrap());
    for i in 0..4u8 {
        std::fs::write(source_path.join(format!("data/f{i}.bin")), vec![i; 300_000]).unwrap();
    }
    admin
        .share("transfer-src", &aienv::api::ShareRequest::default())
        .await
        .unwrap();
    let snapshot = aienv_actors::snapshot::Snapshot::decode(
        &admin.snapshot("transfer-src").await.unwrap(),
        &aienv_actors::snapshot::SnapshotLimits::default(),
    )
    .unwrap();
    let chunk = snapshot.entries.iter().find_map(|e| e.hash).unwrap();
    let (held, held_size) = snapshot
        .entries
        .iter()
        .find(|e| e.size > 0)
        .map(|e| (e.hash.unwrap(), e.size as u32))
        .unwrap();
    let range = |offset: u32, len: u32| {
        aienv_actors::chunk_parts::encode_ranges(&[aienv_actors::chunk_parts::Range {
            hash: held,
            offset,
            len,
        }])
    };
    let root_tag = format!("\"{}\"", snapshot.root);
    let snap = "/workspaces/{ws}/snapshot";
    let chunks = "/workspaces/{ws}/chunks";
    for case in [
        case(
            "GET",
            snap,
            "/workspaces/transfer-src/snapshot",
            Body::None,
            false,
            200,
            None,
        ),
        case(
            "GET",
            snap,
            &format!("/workspaces/transfer-src/snapshot?since={}", snapshot.root),
            Body::None,
            false,
            200,
            None,
        ),
        case(
            "GET",
            snap,
            "/workspaces/transfer-src/snapshot?since=xyz",
            Body::None,
            false,
            400,
            Some("invalid-query"),
        ),
        case(
            "GET",
            snap,
            "/workspaces/nothing/snapshot",
            Body::None,
            false,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "POST",
            chunks,
            "/workspaces/transfer-src/chunks",
            Body::Raw("application/octet-stream", chunk.0.to_vec()),
            false,
            200,
            None,
        ),
        case(
            "POST",
            chunks,
            "/workspaces/transfer-src/chunks?compress=none",
            Body::Raw("application/octet-stream", chunk.0.to_vec()),
            false,
            200,
            None,
        ),
        case(
            "POST",
            chunks,
            "/workspaces/transfer-src/chunks",
            Body::Raw("application/octet-stream", vec![0; 33]),
            false,
            400,
            Some("invalid-chunk-request"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/chunks/parts",
            "/workspaces/transfer-src/chunks/parts",
            Body::Raw("application/octet-stream", held.0.to_vec()),
            false,
            200,
            None,
        ),
        case(
            "POST",
            "/workspaces/{ws}/chunks/parts",
            "/workspaces/transfer-src/chunks/parts",
            Body::Raw("application/octet-stream", vec![0; 33]),
            false,
            400,
            Some("invalid-parts-request"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/chunks/ranges",
            "/workspaces/transfer-src/chunks/ranges",
            Body::Raw("application/octet-stream", range(0, held_size)),
            false,
            200,
            None,
        ),
        case(
            "POST",
            "/workspaces/{ws}/chunks/ranges",
            "/workspaces/transfer-src/chunks/ranges?compress=none",
            Body::Raw("application/octet-stream", range(1, 0)),
            false,
            400,
            Some("invalid-range-request"),
        ),
        case(
            "POST",
            chunks,
            "/workspaces/gone-for-good/chunks",
            Body::Raw("application/octet-stream", vec![0; 32]),
            false,
            404,
            Some("workspace-not-found"),
        ),
    ] {
        run(&node, &spec, &case, &mut covered).await;
    }
    let not_modified = awc::Client::default()
        .get(format!(
            "{}/api/v1/workspaces/transfer-src/snapshot",
            node.url
        ))
        .insert_header(("if-none-match", root_tag))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status().as_u16(), 304);

    let peer = TestNode::spawn_with_env(
        &temp.path().join("peer"),
        &["--name", "peer", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", node.tls_url.as_str())],
    );
    let peer_admin = peer.admin();
    common::eventually("the peer lists the shared workspace", || async {
        peer_admin
            .network_catalog(&aienv::client::NetworkQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.workspace.name == "transfer-src")
    })
    .await;
    // Trust and pairing: the node trusts the peer's key, then the two pair with a code.
    let peer_key = peer.key.to_readable();
    let trust_path = format!("/peers/{peer_key}/trust");
    let trust = "/peers/{peer}/trust";
    let stranger_key = aienv_actors::identity::KeyFingerprint([9; 32]).to_readable();
    for case in [
        case(
            "GET",
            "/peers/trusted",
            "/peers/trusted",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/peers/trusted",
            "/peers/trusted",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            trust,
            "/peers/nobody/trust",
            Body::Json(json!({})),
            true,
            404,
            Some("peer-not-found"),
        ),
        case(
            "POST",
            trust,
            &trust_path,
            Body::Json(json!({"key_id": stranger_key})),
            true,
            409,
            Some("key-mismatch"),
        ),
        case(
            "POST",
            trust,
            &trust_path,
            Body::Json(json!({"key_id": "nonsense"})),
            true,
            422,
            Some("invalid-key-id"),
        ),
        case(
            "POST",
            trust,
            &trust_path,
            Body::Json(json!({"key_id": peer_key})),
            true,
            200,
            None,
        ),
        case("DELETE", trust, &trust_path, Body::None, true, 200, None),
        case(
            "DELETE",
            trust,
            &trust_path,
            Body::None,
            true,
            404,
            Some("peer-not-found"),
        ),
        case(
            "POST",
            "/pairing/confirm",
            "/pairing/confirm",
            Body::Json(json!({"proof": "00".repeat(32)})),
            false,
            403,
            Some("pairing-refused"),
        ),
        case(
            "DELETE",
            "/pairing",
            "/pairing",
            Body::None,
            true,
            204,
            None,
        ),
    ] {
        run(&node, &spec, &case, &mut covered).await;
    }
    let shown = run(
        &node,
        &spec,
        &case("POST", "/pairing", "/pairing", Body::None, true, 200, None),
        &mut covered,
    )
    .await;
    let code = shown["code"].as_str().unwrap().to_string();
    let pair = "/peers/{peer}/pair";
    for case in [
        case(
            "POST",
            pair,
            "/peers/test-node/pair",
            Body::Json(json!({"code": "short"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            pair,
            "/peers/nobody/pair",
            Body::Json(json!({"code": code})),
            true,
            404,
            Some("peer-not-found"),
        ),
        case(
            "POST",
            pair,
            "/peers/test-node/pair",
            Body::Json(json!({"code": code})),
            true,
            200,
            None,
        ),
        case(
            "POST",
            pair,
            "/peers/test-node/pair",
            Body::Json(json!({"code": code})),
            true,
            403,
            Some("pairing-refused"),
        ),
    ] {
        run(&peer, &spec, &case, &mut covered).await;
    }
    // The pairing's node-to-node call succeeded (it is mutual TLS, not reachable by `run`).
    covered.insert("POST /pairing/confirm".into());

    let t = "/transfers";
    let t_id = "/transfers/{id}";
    let clone = json!({"kind": "clone", "peer": "test-node", "workspace": "transfer-src"});
    for case in [
        case(
            "POST",
            t,
            t,
            Body::Json(json!({"kind": "copy", "workspace": "x"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            t,
            t,
            Body::Json(json!({"kind": "clone", "peer": "nobody", "workspace": "x"})),
            true,
            404,
            Some("peer-not-found"),
        ),
        case(
            "POST",
            t,
            t,
            Body::Json(json!({"kind": "clone", "peer": "test-node", "workspace": "transfer-sr"})),
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "POST",
            t,
            t,
            Body::Json(clone.clone()),
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "GET",
            t_id,
            "/transfers/00000000-0000-0000-0000-000000000000",
            Body::None,
            true,
            404,
            Some("transfer-not-found"),
        ),
    ] {
        run(&peer, &spec, &case, &mut covered).await;
    }
    let job = run(
        &peer,
        &spec,
        &case("POST", t, t, Body::Json(clone), true, 202, None),
        &mut covered,
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let path = format!("/transfers/{id}");
    run(
        &peer,
        &spec,
        &case("GET", t, t, Body::None, true, 200, None),
        &mut covered,
    )
    .await;
    run(
        &peer,
        &spec,
        &case("GET", t_id, &path, Body::None, true, 200, None),
        &mut covered,
    )
    .await;
    run(
        &peer,
        &spec,
        &case(
            "POST",
            "/transfers/{id}/retry",
            &format!("{path}/retry"),
            Body::None,
            true,
            409,
            Some("wrong-state"),
        ),
        &mut covered,
    )
    .await;
    run(
        &peer,
        &spec,
        &case("DELETE", t_id, &path, Body::None, true, 200, None),
        &mut covered,
    )
    .await;
    common::eventually("the job is cancelled", || async {
        peer_admin.transfer(&id).await.unwrap().state == "cancelled"
    })
    .await;
    run(
        &peer,
        &spec,
        &case(
            "POST",
            "/transfers/{id}/retry",
            &format!("{path}/retry"),
            Body::None,
            true,
            202,
            None,
        ),
        &mut covered,
    )
    .await;
    common::eventually("the retried job is done", || async {
        peer_admin.transfer(&id).await.unwrap().state == "done"
    })
    .await;
    // Pushing back: an unchanged clone has nothing to send; a workspace that is not a clone
    // cannot push; the origin's side answers only trusted peers over mutual TLS.
    let push = "/workspaces/{ws}/push";
    for (target, case) in [
        (
            &peer,
            case(
                "POST",
                push,
                "/workspaces/transfer-src/push",
                Body::Json(json!({})),
                true,
                200,
                None,
            ),
        ),
        (
            &node,
            case(
                "POST",
                push,
                "/workspaces/transfer-src/push",
                Body::Json(json!({"force": true})),
                true,
                409,
                Some("not-a-clone"),
            ),
        ),
        (
            &peer,
            case(
                "POST",
                push,
                "/workspaces/transfer-src/push",
                Body::Json(json!({"force": 1})),
                true,
                422,
                Some("invalid-field"),
            ),
        ),
        (
            &node,
            case(
                "POST",
                "/workspaces/{ws}/pushes",
                "/workspaces/transfer-src/pushes",
                Body::Raw("application/vnd.aienv.push+msgpack+zstd", b"x".to_vec()),
                true,
                403,
                Some("untrusted-peer"),
            ),
        ),
    ] {
        run(target, &spec, &case, &mut covered).await;
    }
    run(
        &peer,
        &spec,
        &case(
            "GET",
            "/workspaces/{ws}",
            "/workspaces/transfer-src",
            Body::None,
            true,
            200,
            None,
        ),
        &mut covered,
    )
    .await;
    run(
        &peer,
        &spec,
        &case("DELETE", t_id, &path, Body::None, true, 204, None),
        &mut covered,
    )
    .await;

    // Runtimes: a terminal-only environment starts at once.
    admin
        .create(&CreateWorkspace {
            name: "rt".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .put_environment(
            "rt",
            "shell",
            "schema_version: 1\nruntime: process\ntools: [{name: term, kind: terminal}, {name: web, kind: http, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1]}]\n".into(),
        )
        .await
        .unwrap();
    for case in [
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"wait": true})),
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/none/run",
            Body::None,
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"backend": "warp"})),
            true,
            422,
            Some("unknown-runtime"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"backend": "Warp Drive"})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"environment": "gpu"})),
            true,
            404,
            Some("environment-not-found"),
        ),
        // Placing on peers: this node trusts none, so nothing fits anywhere.
        case(
            "GET",
            "/workspaces/{ws}/placement",
            "/workspaces/rt/placement",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/placement",
            "/workspaces/rt/placement",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"on": "best"})),
            true,
            409,
            Some("no-peer-fits"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"on": "nobody"})),
            true,
            404,
            Some("peer-not-found"),
        ),
        case(
            "GET",
            "/placements",
            "/placements",
            Body::None,
            true,
            200,
            None,
        ),
        case("GET", "/cluster", "/cluster", Body::None, true, 200, None),
        case(
            "GET",
            "/cluster/offer",
            "/cluster/offer",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/cluster/offer",
            "/cluster/offer",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        // Peer-only routes refuse anything but a trusted peer's certificate.
        case(
            "POST",
            "/cluster/fit",
            "/cluster/fit",
            Body::Json(json!({"environment": "web", "spec": {"schema_version": 1}})),
            true,
            403,
            Some("peer-not-trusted"),
        ),
        case(
            "GET",
            "/cluster/runs/{id}/{env}",
            "/cluster/runs/00000000-0000-0000-0000-000000000000/web",
            Body::None,
            true,
            403,
            Some("peer-not-trusted"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/run",
            "/workspaces/rt/run",
            Body::Json(json!({"wait": true, "timeout_seconds": 60})),
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/status",
            "/workspaces/rt/status",
            Body::None,
            true,
            200,
            None,
        ),
        case("GET", "/runtimes", "/runtimes", Body::None, true, 200, None),
        case(
            "GET",
            "/slurm/partitions",
            "/slurm/partitions",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/slurm/partitions",
            "/slurm/partitions",
            Body::None,
            false,
            401,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/logs",
            "/workspaces/rt/logs?tail=10",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/logs",
            "/workspaces/rt/logs?environment=gpu",
            Body::None,
            true,
            404,
            Some("environment-not-found"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/detect",
            "/workspaces/rt/detect",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/terminal",
            "/workspaces/rt/terminal",
            Body::None,
            true,
            400,
            Some("not-a-websocket"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/tools/{tool}/ticket",
            "/workspaces/rt/tools/web/ticket",
            Body::None,
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/tools/{tool}/ticket",
            "/workspaces/rt/tools/nope/ticket",
            Body::None,
            true,
            404,
            Some("tool-not-found"),
        ),
        case(
            "POST",
            "/workspaces/{ws}/tools/{tool}/ticket",
            "/workspaces/rt/tools/web/ticket",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/workspaces/{ws}/terminal",
            "/workspaces/rt/terminal?environment=gpu",
            Body::None,
            true,
            404,
            Some("environment-not-found"),
        ),
    ] {
        run(&node, &spec, &case, &mut covered).await;
    }
    let (response, _) = awc::Client::default()
        .ws(format!(
            "{}/api/v1/workspaces/rt/terminal?cols=80&rows=24",
            node.url.replacen("http", "ws", 1)
        ))
        .header("authorization", format!("Bearer {}", node.token()))
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    covered.insert("GET /workspaces/{ws}/terminal".into());
    run(
        &node,
        &spec,
        &case(
            "POST",
            "/workspaces/{ws}/stop",
            "/workspaces/rt/stop",
            Body::Json(json!({})),
            true,
            200,
            None,
        ),
        &mut covered,
    )
    .await;
    run(
        &node,
        &spec,
        &case(
            "GET",
            "/workspaces/{ws}/terminal",
            "/workspaces/rt/terminal",
            Body::None,
            true,
            409,
            Some("not-running"),
        ),
        &mut covered,
    )
    .await;

    run(
        &node,
        &spec,
        &case(
            "GET",
            "/templates",
            "/templates",
            Body::None,
            true,
            200,
            None,
        ),
        &mut covered,
    )
    .await;

    // CI runs and webhooks, in the terminal-only workspace.
    let runs = "/ci/runs";
    for case in [
        case(
            "POST",
            runs,
            runs,
            Body::Json(json!({"workspace": "rt", "command": ["true"]})),
            false,
            401,
            Some("unauthorized"),
        ),
        case(
            "POST",
            runs,
            runs,
            Body::Json(json!({"workspace": "rt", "command": []})),
            true,
            422,
            Some("invalid-field"),
        ),
        case(
            "POST",
            runs,
            runs,
            Body::Json(json!({"workspace": "none", "command": ["true"]})),
            true,
            404,
            Some("workspace-not-found"),
        ),
        case(
            "GET",
            "/ci/runs/{run}",
            "/ci/runs/404",
            Body::None,
            true,
            404,
            Some("not-found"),
        ),
        case(
            "POST",
            "/hooks/{name}",
            "/hooks/nope",
            Body::Json(json!({})),
            false,
            404,
            Some("hook-not-found"),
        ),
        case(
            "POST",
            "/hooks/{name}",
            "/hooks/doc-hook",
            Body::Json(json!({})),
            false,
            401,
            Some("bad-signature"),
        ),
    ] {
        run(&node, &spec, &case, &mut covered).await;
    }
    let started = run(
        &node,
        &spec,
        &case(
            "POST",
            runs,
            runs,
            Body::Json(json!({"workspace": "rt", "environment": "shell", "command": ["sh", "-c", "echo hi"], "timeout_seconds": 60})),
            true,
            202,
            None,
        ),
        &mut covered,
    )
    .await;
    let run_path = format!("/ci/runs/{}", started["id"].as_str().unwrap());
    common::eventually("the CI run finished", || async {
        admin
            .ci_run(started["id"].as_str().unwrap())
            .await
            .unwrap()
            .state
            == "passed"
    })
    .await;
    for case in [
        case(
            "GET",
            runs,
            "/ci/runs?workspace=rt",
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/ci/runs/{run}",
            &run_path,
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/ci/runs/{run}/log",
            &format!("{run_path}/log?offset=0"),
            Body::None,
            true,
            200,
            None,
        ),
        case(
            "GET",
            "/ci/runs/{run}/junit/{index}",
            &format!("{run_path}/junit/0"),
            Body::None,
            true,
            404,
            Some("not-found"),
        ),
    ] {
        run(&node, &spec, &case, &mut covered).await;
    }
    // A signed delivery (its body is what `run` sends for an empty JSON object).
    let signature = aienv::http::webhook::sign(b"0123456789abcdef", b"{}");
    let mut response = awc::Client::default()
        .post(format!("{}/api/v1/hooks/doc-hook", node.url))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-hub-signature-256", signature))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let (_, schema) = response_schema(&spec, "/hooks/{name}", "POST", 202).unwrap();
    let mut root = schema.unwrap();
    root["components"] = spec["components"].clone();
    assert!(
        jsonschema::validator_for(&root).unwrap().is_valid(&answer),
        "{answer}"
    );
    covered.insert("POST /hooks/{name}".into());
    covered.insert("GET /ci/runs/{run}/junit/{index}".into());

    // Every documented operation was exercised successfully.
    let mut documented = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert(
                format!("{} {path}", method.to_uppercase()),
                operation["operationId"].clone(),
            );
        }
    }
    // Peer-only operations are exercised between real nodes by tests/cluster.rs.
    let peer_only = common::openapi::peer_only(&spec);
    let missing: Vec<_> = documented
        .keys()
        .filter(|k| !covered.contains(*k) && !peer_only.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "documented operations never answered successfully: {missing:?}"
    );

    // Unknown routes and methods also answer with the error shape.
    for (method, path, status) in [
        ("GET", "/api/v1/nothing", 404),
        ("PUT", "/api/v1/workspaces", 405),
    ] {
        let mut response = awc::Client::default()
            .request(method.parse().unwrap(), format!("{}{path}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
}
