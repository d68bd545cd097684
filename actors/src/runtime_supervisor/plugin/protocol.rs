//! The runtime plugin protocol, version `aienv-runtime/1`: one request line in, progress lines
//! and one response line out, per call (schemas/runtime-plugin.md). These types are the
//! normative shape: the JSON Schemas in `schemas/runtime-plugin/` are generated from them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The protocol this build speaks.
pub const PROTOCOL: &str = "aienv-runtime/1";

/// Every request: `{"protocol": "aienv-runtime/1", "op": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Is the plugin usable here, and what is it?
    Check {
        /// Always `aienv-runtime/1`.
        protocol: String,
    },
    /// Set the environment up (idempotent; may take long; progress lines welcome).
    Prepare {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// What to set up.
        environment: Environment,
    },
    /// Start the environment and its tools; answer with a handle for later calls.
    Launch {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// What to start.
        environment: Environment,
    },
    /// Is it still running?
    Status {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// From `launch`.
        handle: String,
    },
    /// Output since `cursor`.
    Logs {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// From `launch`.
        handle: String,
        /// From the previous `logs` answer; absent the first time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Stop and remove everything `launch` started.
    Stop {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// From `launch`.
        handle: String,
        /// Seconds to wait after asking nicely before killing.
        grace_seconds: u64,
    },
    /// The command that opens an interactive shell inside the environment.
    Terminal {
        /// Always `aienv-runtime/1`.
        protocol: String,
        /// From `launch`.
        handle: String,
    },
}

/// The environment as the node planned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The node's id (label what you create with it, to find leftovers).
    pub node_id: String,
    /// The workspace.
    pub workspace: Workspace,
    /// The environment's name.
    pub name: String,
    /// Its `environment.yaml`, as JSON (environment.schema.json).
    pub spec: serde_json::Value,
    /// What this host gives it.
    pub allocation: Allocation,
    /// Variables for set-up and tools (the spec's, the variant's, the allocation's).
    pub env: BTreeMap<String, String>,
    /// The container image, when the spec or its variant names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The tools to start, each on its port.
    pub tools: Vec<Tool>,
    /// A directory the plugin may keep state in.
    pub state_dir: String,
    /// Where the node keeps this environment's logs.
    pub log_dir: String,
}

/// The workspace an environment belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its directory on this node (the tools' working directory).
    pub path: String,
}

/// What the environment gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// The variant chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// CPU quota in cores (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in bytes (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// GPU indexes.
    pub gpus: Vec<u32>,
}

/// One tool to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// `jupyterlab`, `vscode`, `http`, `terminal`.
    pub kind: String,
    /// Its command (`$PORT` and `$BASE_PATH` expanded); empty for a terminal.
    pub argv: Vec<String>,
    /// Whether `argv` is one shell command line.
    pub shell: bool,
    /// The port it must listen on (0 for a terminal).
    pub port: u16,
    /// The path prefix it is served under.
    pub base_path: String,
}

/// Every answer has `ok`; a failure has `error` (and nothing else is read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    /// `false`.
    pub ok: bool,
    /// What went wrong, for the person.
    pub error: String,
}

/// The answer to `check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckAnswer {
    /// `true`: usable here.
    pub ok: bool,
    /// The plugin's name (the `<name>` of `aienv-runtime-<name>`).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The protocol it speaks: `aienv-runtime/1`.
    pub protocol: String,
    /// What it drives (`podman 4.3.1`), for the person.
    #[serde(default)]
    pub detail: String,
}

/// The answer to `prepare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareAnswer {
    /// `true`.
    pub ok: bool,
    /// What the person should know.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The answer to `launch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchAnswer {
    /// `true`.
    pub ok: bool,
    /// Names what was started, for every later call (at most 1024 bytes).
    pub handle: String,
    /// What runs, for the person (`container 3f2a…`).
    pub describe: String,
    /// Where the tools listen when it is not 127.0.0.1 on the ports asked for.
    #[serde(default)]
    pub tools: Vec<ToolAddress>,
    /// Tools that could not start, and why.
    #[serde(default)]
    pub unavailable: Vec<ToolUnavailable>,
}

/// Where a tool listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolAddress {
    /// The tool.
    pub name: String,
    /// Host (IP literal); 127.0.0.1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port.
    pub port: u16,
}

/// A tool that could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolUnavailable {
    /// The tool.
    pub tool: String,
    /// What to do about it.
    pub hint: String,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusAnswer {
    /// `true`.
    pub ok: bool,
    /// `running` or `exited`.
    pub state: RunState,
    /// The exit code, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// More, for the person.
    #[serde(default)]
    pub detail: String,
}

/// Whether a launched environment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// It runs.
    Running,
    /// It ended.
    Exited,
}

/// The answer to `logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsAnswer {
    /// `true`.
    pub ok: bool,
    /// Output since the cursor asked for (at most 1 MiB).
    pub text: String,
    /// Where the next call starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The answer to `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopAnswer {
    /// `true`.
    pub ok: bool,
}

/// The answer to `terminal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalAnswer {
    /// `true`.
    pub ok: bool,
    /// The command the node runs in a PTY to give the person a shell inside.
    pub argv: Vec<String>,
}

/// A line a plugin may print before its answer (`prepare`, `launch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressLine {
    /// What happens now, for the person.
    pub progress: String,
}

/// `(file name under schemas/runtime-plugin/, schema)` of every message.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("request.schema.json", schemars::schema_for!(Request)),
        ("failure.schema.json", schemars::schema_for!(Failure)),
        ("progress.schema.json", schemars::schema_for!(ProgressLine)),
        (
            "check.answer.schema.json",
            schemars::schema_for!(CheckAnswer),
        ),
        (
            "prepare.answer.schema.json",
            schemars::schema_for!(PrepareAnswer),
        ),
        (
            "launch.answer.schema.json",
            schemars::schema_for!(LaunchAnswer),
        ),
        (
            "status.answer.schema.json",
            schemars::schema_for!(StatusAnswer),
        ),
        ("logs.answer.schema.json", schemars::schema_for!(LogsAnswer)),
        ("stop.answer.schema.json", schemars::schema_for!(StopAnswer)),
        (
            "terminal.answer.schema.json",
            schemars::schema_for!(TerminalAnswer),
        ),
    ]
}
