//! The JSON Schemas of `workspace.yaml`, `environment.yaml` and the discovery datagram body,
//! generated from the Rust types.
//! The checked-in copies in `schemas/` must equal these (a test compares them).

use aienv_actors::discovery::wire::Announcement;
use aienv_actors::model::{EnvironmentSpec, WorkspaceManifest};

/// `(file name in schemas/, pretty JSON)` for every generated schema.
pub fn generated() -> Vec<(String, String)> {
    let pretty = |schema: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        text
    };
    vec![
        (
            "workspace.schema.json".to_string(),
            pretty(schemars::schema_for!(WorkspaceManifest)),
        ),
        (
            "environment.schema.json".to_string(),
            pretty(schemars::schema_for!(EnvironmentSpec)),
        ),
        (
            "discovery-announcement.schema.json".to_string(),
            pretty(schemars::schema_for!(Announcement)),
        ),
    ]
    .into_iter()
    .chain(
        aienv_actors::runtime_supervisor::plugin::protocol::schemas()
            .into_iter()
            .map(|(name, schema)| (format!("runtime-plugin/{name}"), pretty(schema))),
    )
    .collect()
}
