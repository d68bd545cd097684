//! The REST API's document (`schemas/openapi.yaml`) for tests: finding a response's schema
//! and checking a live answer against it.

use std::path::Path;

use serde_json::Value;

pub fn load_spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    aienv_actors::yaml::from_str(&text, &path).unwrap()
}

/// The JSON Schema of a response, with the document's components reachable by `$ref`.
pub fn response_schema(
    spec: &Value,
    template: &str,
    method: &str,
    status: u16,
) -> Option<(Option<String>, Option<Value>)> {
    let operation = &spec["paths"][template][method.to_lowercase()];
    let mut response = operation["responses"].get(status.to_string())?.clone();
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        response = spec.pointer(pointer).unwrap().clone();
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return Some((None, None));
    };
    let (media, body) = content.iter().next().unwrap();
    Some((Some(media.clone()), body.get("schema").cloned()))
}

/// Every media type documented for `status` of `method template` (an answer may carry any).
pub fn response_media_types(
    spec: &Value,
    template: &str,
    method: &str,
    status: u16,
) -> Vec<String> {
    let operation = &spec["paths"][template][method.to_lowercase()];
    let mut response = operation["responses"][status.to_string()].clone();
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        response = spec
            .pointer(reference.trim_start_matches('#'))
            .unwrap()
            .clone();
    }
    response
        .get("content")
        .and_then(Value::as_object)
        .map(|content| content.keys().cloned().collect())
        .unwrap_or_default()
}

/// Checks that `status` is documented for `method template` and that `body` (JSON) matches
/// its schema; panics naming `label` otherwise.
pub fn check_answer(
    spec: &Value,
    method: &str,
    template: &str,
    status: u16,
    body: &Value,
    label: &str,
) {
    let (media, schema) = response_schema(spec, template, method, status).unwrap_or_else(|| {
        panic!("{label}: status {status} is not documented for {method} {template}")
    });
    if media.as_deref() != Some("application/json") {
        return;
    }
    let mut root = schema.unwrap();
    root["components"] = spec["components"].clone();
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{label}: body does not match the documented schema: {errors:?}\n{body}"
    );
}

/// Operations only trusted peers may call (security: mutual TLS alone); they are exercised
/// between real nodes in `tests/cluster.rs`.
pub fn peer_only(spec: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let security = &operation["security"];
            let only_tls = security.as_array().is_some_and(|list| {
                !list.is_empty() && list.iter().all(|s| s.get("mutualTls").is_some())
            });
            if only_tls {
                found.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    found
}
