//! The checked-in JSON Schemas in `schemas/` equal the ones generated from the Rust types.
//! Regenerate with `AIENV_UPDATE_SCHEMAS=1 cargo test --test schemas`.

// The time limit every test binary has.
mod common;

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var("AIENV_UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    for (name, generated) in aienv::schemas::generated() {
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run AIENV_UPDATE_SCHEMAS=1 cargo test --test schemas",
                path.display()
            )
        });
        assert!(
            checked_in == generated,
            "{} is out of date with the Rust types; run AIENV_UPDATE_SCHEMAS=1 cargo test --test schemas",
            path.display()
        );
    }
}

#[test]
fn schemas_accept_real_files_and_reject_unknown_fields() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("workspace.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let good = serde_json::json!({
        "schema_version": 1,
        "id": "6a1f0e2c-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "name": "demo",
        "type": "notebook",
        "revision": 2,
        "created": "2026-01-01T00:00:00Z",
        "updated": "2026-01-02T00:00:00Z",
        "sharing": {"enabled": true, "mode": "peers", "peers": ["gpu-box"]},
        "projects": [{"name": "main", "path": "projects/main", "git": {"url": "https://example.org/x.git"}}],
        "environments": ["default"]
    });
    assert!(validator.is_valid(&good));
    let mut unknown = good.clone();
    unknown["colour"] = "red".into();
    assert!(!validator.is_valid(&unknown));
    let mut bad_type = good;
    bad_type["type"] = "cooking".into();
    assert!(!validator.is_valid(&bad_type));
}
