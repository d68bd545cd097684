//! The JSON Schemas of `workspace.yaml`, `environment.yaml` and the discovery datagram body,
//! generated from the Rust types.
//! The checked-in copies in `schemas/` must equal these (a test compares them).

use aienv_actors::discovery::wire::Announcement;
use aienv_actors::model::{EnvironmentSpec, WorkspaceManifest};

/// `(file name in schemas/, pretty JSON)` for every generated schema.
pub fn generated() -> Vec<(&'static str, String)> {
    let pretty = |schema: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        text
    };
    vec![
        (
            "workspace.schema.json",
            pretty(schemars::schema_for!(WorkspaceManifest)),
        ),
        (
            "environment.schema.json",
            pretty(schemars::schema_for!(EnvironmentSpec)),
        ),
        (
            "discovery-announcement.schema.json",
            pretty(schemars::schema_for!(Announcement)),
        ),
    ]
}
