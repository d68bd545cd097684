//! `environments/<name>/environment.yaml`: how one environment of a workspace is set up and
//! which tools it offers. The runtime issue extends this with resources and variants.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{validate_relative_path, ValidationErrors};

/// File name of an environment spec inside `environments/<name>/`.
pub const ENVIRONMENT_FILE: &str = "environment.yaml";
/// The `schema_version` this build writes and reads.
pub const ENVIRONMENT_SCHEMA_VERSION: u32 = 1;

/// The contents of `environment.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "aienv environment.yaml")]
pub struct EnvironmentSpec {
    /// Format version of this file; this build understands 1.
    pub schema_version: u32,
    /// What the environment is for.
    #[serde(default)]
    pub description: String,
    /// Where the environment runs.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The Python environment, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonSpec>,
    /// A set-up script per platform, run after the Python environment is built.
    #[serde(default, skip_serializing_if = "SetupScripts::is_empty")]
    pub scripts: SetupScripts,
    /// Ordered set-up steps, run once and again when this spec changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<SetupStep>,
    /// Commands run before every start and after every stop (`pre_run`, `post_stop`).
    #[serde(default, skip_serializing_if = "super::Hooks::is_empty")]
    pub hooks: super::Hooks,
    /// The container image (docker runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    /// The virtual machine (libvirt runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtSpec>,
    /// Where the Slurm job goes (slurm runtime); the node's `runtime.slurm` settings
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmSpec>,
    /// Resources wanted; the node sizes the environment to what the host has.
    #[serde(default, skip_serializing_if = "ResourceWants::is_empty")]
    pub resources: ResourceWants,
    /// Alternatives chosen by what the host has (the first that fits wins), e.g. `cuda`
    /// before `cpu`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantSpec>,
    /// Environment variables for setup and tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Extra ports published on loopback (docker; processes use the host's ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Workspace directories mounted into a container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Tools the environment offers in the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// How tools are checked once started.
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: HealthSpec,
    /// What happens when a tool exits or stops answering.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartSpec,
    /// Start the environment when the node starts (and keep it running).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autostart: bool,
    /// How its local processes are confined: `standard` (the default: writes only to the
    /// workspace, its runtime dir and a private /tmp; the node's data and other processes
    /// hidden; never as root), `strict` (also other homes and mounts hidden) or `off`
    /// (refused for a workspace cloned from a peer unless a local admin allows it in
    /// `runtime.allow_unsandboxed`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub sandbox: SandboxMode,
}

/// How an environment's local processes are confined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// bubblewrap: read-only system, private /tmp, node data hidden, workspace writable,
    /// own PID and IPC namespaces.
    #[default]
    Standard,
    /// `standard`, plus other homes and mounts hidden and an own UTS namespace.
    Strict,
    /// Not confined (still never as root).
    Off,
}

impl SandboxMode {
    /// `standard`, `strict` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Standard => "standard",
            SandboxMode::Strict => "strict",
            SandboxMode::Off => "off",
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Where an environment runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// Chosen by the node: docker when the spec names an image and an engine answers,
    /// libvirt when it names a VM, slurm when it has a `slurm` section, local processes
    /// otherwise.
    #[default]
    Auto,
    /// Local processes.
    Process,
    /// A Docker container.
    Docker,
    /// A libvirt virtual machine.
    Libvirt,
    /// A Slurm job on a compute node of the lab's cluster.
    Slurm,
    /// A runtime plugin: the executable `aienv-runtime-<name>` (schemas/runtime-plugin.md).
    Plugin(PluginName),
}

/// A runtime plugin's name: a slug of at most [`PluginName::MAX`] bytes, kept inline so
/// [`RuntimeKind`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginName {
    bytes: [u8; PluginName::MAX],
    len: u8,
}

impl PluginName {
    /// Longest name.
    pub const MAX: usize = 32;

    /// The name, if `name` is a slug short enough and not a built-in runtime's.
    pub fn new(name: &str) -> Option<PluginName> {
        if name.len() > Self::MAX
            || !super::is_slug(name)
            || RuntimeKind::BUILT_IN.iter().any(|k| k.as_str() == name)
        {
            return None;
        }
        let mut bytes = [0; Self::MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(PluginName {
            bytes,
            len: name.len() as u8,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("built from a str")
    }
}

impl std::fmt::Debug for PluginName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl RuntimeKind {
    /// The runtimes built into aienv.
    pub const BUILT_IN: [RuntimeKind; 5] = [
        RuntimeKind::Auto,
        RuntimeKind::Process,
        RuntimeKind::Docker,
        RuntimeKind::Libvirt,
        RuntimeKind::Slurm,
    ];

    /// Stable lower-case name (a plugin's own name).
    pub fn as_str(&self) -> &str {
        match self {
            RuntimeKind::Auto => "auto",
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Libvirt => "libvirt",
            RuntimeKind::Slurm => "slurm",
            RuntimeKind::Plugin(name) => name.as_str(),
        }
    }

    /// Parses a runtime name as YAML, the API and the CLI take it: a built-in one, or any
    /// other slug as a plugin's.
    pub fn parse(name: &str) -> Option<RuntimeKind> {
        Self::BUILT_IN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .or_else(|| PluginName::new(name).map(RuntimeKind::Plugin))
    }
}

impl Serialize for RuntimeKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuntimeKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RuntimeKind::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{name}` is not a runtime: auto, process, docker, libvirt, slurm, or a plugin's \
                 name (lower-case letters, digits and hyphens, at most {} characters)",
                PluginName::MAX
            ))
        })
    }
}

impl JsonSchema for RuntimeKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RuntimeKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Where an environment runs: `auto` (the node chooses: docker when the spec names an image, libvirt when it names a VM, slurm when it has a `slurm` section, local processes otherwise), `process`, `docker`, `libvirt`, `slurm`, or the name of a runtime plugin (the executable `aienv-runtime-<name>`, schemas/runtime-plugin.md).",
            "type": "string",
            "pattern": "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
        })
    }
}

/// A Python environment managed by aienv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// Interpreter version wanted (`3.11`), when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Which tool builds the environment.
    #[serde(default)]
    pub manager: PythonManager,
    /// Requirement files, workspace-relative (pip options such as `--find-links` inside
    /// them are honoured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Project directories with a `pyproject.toml`, installed with pip (workspace-relative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// A conda `environment.yml`, workspace-relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conda_file: Option<String>,
}

/// Python environment managers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PythonManager {
    /// `python -m venv` and pip.
    #[default]
    Venv,
    /// conda or mamba.
    Conda,
}

/// Set-up scripts per platform, workspace-relative (conventionally `scripts/init.sh` and
/// `scripts/init.ps1`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupScripts {
    /// Run with `sh` on Linux and macOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<String>,
    /// Run with PowerShell on Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<String>,
}

impl SetupScripts {
    /// Whether no script is set.
    pub fn is_empty(&self) -> bool {
        self.unix.is_none() && self.windows.is_none()
    }
}

/// One set-up step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupStep {
    /// Label shown in progress output.
    pub name: String,
    /// Command line, run by `sh -c` in the workspace root.
    pub run: String,
}

/// The container of a docker environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// Image to run (present locally or pullable by the engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A Dockerfile to build the image from, workspace-relative (its directory is the
    /// build context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Where the workspace is mounted inside the container.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Command of the container when it runs no tool (defaults to the image's own): a list
    /// of words or one line.
    #[serde(
        default,
        deserialize_with = "super::command::deserialize",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "super::command::schema")]
    pub command: Vec<String>,
}

fn default_workdir() -> String {
    "/workspace".to_string()
}

/// The virtual machine of a libvirt environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSpec {
    /// Connection URI (`qemu:///system`, `test:///default`); the node's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Boot disk image (qcow2 or raw), workspace-relative; none makes a diskless VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// libvirt network to attach (e.g. `default`); none makes a VM without a NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Domain type: `kvm` when `/dev/kvm` is usable, `qemu` (emulation) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_type: Option<String>,
}

/// Where an environment's Slurm job goes, over the node's `runtime.slurm` defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// Partition (queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Account charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Wall-clock limit in minutes; the partition's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_minutes: Option<u32>,
}

/// Resources an environment wants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceWants {
    /// CPU cores (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Want<f64>>,
    /// Memory (`512MiB`, `4GiB`, or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Want<ByteSize>>,
    /// GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Want<u32>>,
}

impl ResourceWants {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none() && self.gpus.is_none()
    }
}

/// A resource wanted: at least `min`, ideally `preferred`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "T: Deserialize<'de>"))]
pub struct Want<T> {
    /// Below this the environment does not start.
    pub min: T,
    /// What it would like; defaults to `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<T>,
}

impl<T: Copy> Want<T> {
    /// `preferred`, or `min` when none is given.
    pub fn preferred(&self) -> T {
        self.preferred.unwrap_or(self.min)
    }
}

/// A byte count written as `512MiB`, `4GiB`, `2G`, `100M` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes, or a number with a unit: `512MiB`, `4GiB`, `2G`.",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGT]i?B?|[kKMGT]B|B)?\s*$"}
            ]
        })
    }
}

impl ByteSize {
    /// Parses `4GiB`, `512 MiB`, `2G`, `1.5GiB`, `1000`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size such as 512MiB or 4GiB"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}` (use KiB, MiB, GiB, TiB)"
                ))
            }
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
            return Err(format!("`{text}` is too large"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0.is_multiple_of((size / 1024).max(1)) {
                let value = self.0 as f64 / size as f64;
                return if value.fract() == 0.0 {
                    write!(f, "{value}{unit}")
                } else {
                    write!(f, "{value:.1}{unit}")
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// One alternative of an environment, e.g. `cuda` (needs a GPU) or `cpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Variant name (slug).
    pub name: String,
    /// What the host must have for this variant.
    #[serde(default)]
    pub requires: VariantRequires,
    /// Extra requirement files for this variant (workspace-relative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Another docker image for this variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A variant's needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantRequires {
    /// At least this many GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// GPUs of this vendor (`nvidia`, `amd`, `intel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<String>,
}

/// A port published on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port inside the environment.
    pub port: u16,
    /// Port on the host (any free one when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
}

/// A workspace directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Workspace-relative source directory.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// How tools are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Seconds between checks of a running tool.
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// Seconds one check may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Failed checks in a row before a tool counts as unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds a starting tool has to answer for the first time.
    #[serde(default = "default_start_period")]
    pub start_period_seconds: u32,
}

fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    5
}
fn default_retries() -> u32 {
    3
}
fn default_start_period() -> u32 {
    300
}

impl Default for HealthSpec {
    fn default() -> HealthSpec {
        HealthSpec {
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            retries: default_retries(),
            start_period_seconds: default_start_period(),
        }
    }
}

/// When a tool that exited or stopped answering is started again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// The policy.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Restarts in a row (without a healthy minute in between) before giving up.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: u32,
}

fn default_max_restarts() -> u32 {
    5
}
fn default_stop_timeout() -> u32 {
    10
}

impl Default for RestartSpec {
    fn default() -> RestartSpec {
        RestartSpec {
            policy: RestartPolicy::OnFailure,
            max_restarts: default_max_restarts(),
            stop_timeout_seconds: default_stop_timeout(),
        }
    }
}

/// Restart policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart when a tool exits with an error or stops answering.
    #[default]
    OnFailure,
    /// Restart whenever a tool exits.
    Always,
}

/// A tool offered in the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Tool name (slug), part of its URL `/w/<workspace>/<tool>/`.
    pub name: String,
    /// What the tool is.
    pub kind: ToolKind,
    /// Command and arguments, as a list of words or one line split as a shell would (no
    /// shell runs); `$PORT` and `$BASE_PATH` are expanded. JupyterLab and VS Code have a
    /// default command.
    #[serde(
        default,
        deserialize_with = "super::command::deserialize",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "super::command::schema")]
    pub command: Vec<String>,
    /// Run the command through `sh -c` (its arguments joined) instead of directly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shell: bool,
    /// Fixed port, when the tool cannot take one from `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to open below the tool's URL (and to probe for health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether the proxy removes `/w/<workspace>/<tool>` before forwarding: for tools that
    /// cannot be told a base path. Default: kept for JupyterLab and http tools (which get
    /// `$BASE_PATH`), removed for VS Code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
}

impl ToolSpec {
    /// Whether the proxy strips the tool's prefix.
    pub fn strips_prefix(&self) -> bool {
        self.strip_prefix.unwrap_or(self.kind == ToolKind::Vscode)
    }
}

/// Kinds of browser tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// JupyterLab.
    Jupyterlab,
    /// VS Code in the browser (code-server).
    Vscode,
    /// The node's own terminal.
    Terminal,
    /// Any HTTP application.
    Http,
}

impl ToolKind {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Jupyterlab => "jupyterlab",
            ToolKind::Vscode => "vscode",
            ToolKind::Terminal => "terminal",
            ToolKind::Http => "http",
        }
    }
}

impl EnvironmentSpec {
    /// An empty spec of the current version.
    pub fn new(description: &str) -> EnvironmentSpec {
        EnvironmentSpec {
            schema_version: ENVIRONMENT_SCHEMA_VERSION,
            description: description.to_string(),
            runtime: RuntimeKind::Auto,
            python: None,
            scripts: SetupScripts::default(),
            setup: Vec::new(),
            hooks: super::Hooks::default(),
            docker: None,
            libvirt: None,
            slurm: None,
            resources: ResourceWants::default(),
            variants: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            tools: Vec::new(),
            health: HealthSpec::default(),
            restart: RestartSpec::default(),
            autostart: false,
            sandbox: SandboxMode::Standard,
        }
    }

    /// Checks everything serde cannot: names, paths, ports, uniqueness.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.schema_version != ENVIRONMENT_SCHEMA_VERSION {
            errors.add(
                "schema_version",
                format!(
                    "version {} is not supported; this aienv reads version {ENVIRONMENT_SCHEMA_VERSION}",
                    self.schema_version
                ),
            );
        }
        errors.check_len("description", &self.description, 10_000);
        if let Some(python) = &self.python {
            for (index, file) in python.requirements.iter().enumerate() {
                if let Err(message) = validate_relative_path(file) {
                    errors.add(format!("python.requirements[{index}]"), message);
                }
            }
            for (index, dir) in python.projects.iter().enumerate() {
                if let Err(message) = validate_relative_path(dir) {
                    errors.add(format!("python.projects[{index}]"), message);
                }
            }
            if let Some(file) = &python.conda_file {
                if let Err(message) = validate_relative_path(file) {
                    errors.add("python.conda_file", message);
                }
            }
        }
        for (field, script) in [
            ("scripts.unix", &self.scripts.unix),
            ("scripts.windows", &self.scripts.windows),
        ] {
            if let Some(Err(message)) = script.as_deref().map(validate_relative_path) {
                errors.add(field, message);
            }
        }
        if let Some(docker) = &self.docker {
            if let Some(Err(message)) = docker.build.as_deref().map(validate_relative_path) {
                errors.add("docker.build", message);
            }
            if docker.image.is_none() && docker.build.is_none() {
                errors.add("docker", "needs an `image` or a `build` Dockerfile");
            }
            if !docker.workdir.starts_with('/') {
                errors.add(
                    "docker.workdir",
                    "must be an absolute path inside the container",
                );
            }
        }
        if let Some(Err(message)) = self
            .libvirt
            .as_ref()
            .and_then(|vm| vm.disk.as_deref())
            .map(validate_relative_path)
        {
            errors.add("libvirt.disk", message);
        }
        if let Some(slurm) = &self.slurm {
            for (field, value) in [
                ("slurm.partition", &slurm.partition),
                ("slurm.account", &slurm.account),
            ] {
                if value.as_deref().is_some_and(|v| {
                    v.is_empty()
                        || v.len() > 64
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                }) {
                    errors.add(field, "must be 1-64 letters, digits, `-`, `_` or `.`");
                }
            }
            if slurm.time_limit_minutes == Some(0) {
                errors.add("slurm.time_limit_minutes", "must be at least 1");
            }
        }
        if let Some(cpus) = &self.resources.cpus {
            if !(cpus.min > 0.0 && cpus.min <= 4096.0) {
                errors.add("resources.cpus.min", "must be between 0 and 4096");
            }
            if cpus.preferred() < cpus.min {
                errors.add("resources.cpus.preferred", "is below `min`");
            }
        }
        if let Some(memory) = &self.resources.memory {
            if memory.min.0 < 16 << 20 {
                errors.add("resources.memory.min", "must be at least 16MiB");
            }
            if memory.preferred() < memory.min {
                errors.add("resources.memory.preferred", "is below `min`");
            }
        }
        if let Some(gpus) = &self.resources.gpus {
            if gpus.preferred() < gpus.min {
                errors.add("resources.gpus.preferred", "is below `min`");
            }
        }
        let mut variants = BTreeSet::new();
        for (index, variant) in self.variants.iter().enumerate() {
            errors.check_slug(&format!("variants[{index}].name"), &variant.name);
            if !variants.insert(&variant.name) {
                errors.add(
                    format!("variants[{index}].name"),
                    format!("`{}` is listed twice", variant.name),
                );
            }
            for (file_index, file) in variant.requirements.iter().enumerate() {
                if let Err(message) = validate_relative_path(file) {
                    errors.add(
                        format!("variants[{index}].requirements[{file_index}]"),
                        message,
                    );
                }
            }
            check_env_names(&mut errors, &format!("variants[{index}].env"), &variant.env);
        }
        for (index, port) in self.ports.iter().enumerate() {
            if port.port == 0 || port.host == Some(0) {
                errors.add(
                    format!("ports[{index}]"),
                    "ports must be between 1 and 65535",
                );
            }
        }
        for (index, volume) in self.volumes.iter().enumerate() {
            if let Err(message) = validate_relative_path(&volume.source) {
                errors.add(format!("volumes[{index}].source"), message);
            }
            if !volume.target.starts_with('/') || volume.target.contains("..") {
                errors.add(
                    format!("volumes[{index}].target"),
                    "must be an absolute path inside the container, without `..`",
                );
            }
        }
        if self.health.interval_seconds == 0 || self.health.timeout_seconds == 0 {
            errors.add("health", "interval and timeout must be at least one second");
        }
        for (index, step) in self.setup.iter().enumerate() {
            if step.run.trim().is_empty() {
                errors.add(format!("setup[{index}].run"), "is empty");
            }
        }
        check_env_names(&mut errors, "env", &self.env);
        let mut names = BTreeSet::new();
        for (index, tool) in self.tools.iter().enumerate() {
            errors.check_slug(&format!("tools[{index}].name"), &tool.name);
            if !names.insert(&tool.name) {
                errors.add(
                    format!("tools[{index}].name"),
                    format!("`{}` is listed twice", tool.name),
                );
            }
            if tool.port == Some(0) {
                errors.add(
                    format!("tools[{index}].port"),
                    "must be between 1 and 65535",
                );
            }
            if let Some(path) = &tool.path {
                if !path.starts_with('/') && !path.is_empty() || path.contains("..") {
                    errors.add(
                        format!("tools[{index}].path"),
                        "must start with `/` and not contain `..`",
                    );
                }
            }
            if tool.kind == ToolKind::Terminal && !tool.command.is_empty() {
                errors.add(
                    format!("tools[{index}].command"),
                    "a terminal tool is the node's own terminal and takes no command",
                );
            }
            if tool.kind == ToolKind::Http && tool.command.is_empty() {
                errors.add(
                    format!("tools[{index}].command"),
                    "an http tool needs a command to start it",
                );
            }
        }
        self.hooks.validate(&mut errors, false);
        errors.into_result()
    }
}

fn check_env_names(errors: &mut ValidationErrors, field: &str, env: &BTreeMap<String, String>) {
    for name in env.keys() {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            errors.add(format!("{field}.{name}"), "is not a valid variable name");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;
    use std::path::Path;

    #[test]
    fn parse_and_validate() {
        let text = "schema_version: 1
runtime: process
python: {version: '3.11', requirements: [projects/main/requirements.txt]}
setup: [{name: deps, run: pip install -r requirements.txt}]
env: {OMP_NUM_THREADS: '4'}
tools:
  - {name: lab, kind: jupyterlab, command: [jupyter, lab, --port, $PORT]}
";
        let spec: EnvironmentSpec = yaml::from_str(text, Path::new("environment.yaml")).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Process);

        let bad = text.replace("kind: jupyterlab", "kind: emacs");
        let error = yaml::from_str::<EnvironmentSpec>(&bad, Path::new("environment.yaml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tools[0].kind"), "{error}");

        let mut spec = spec;
        spec.tools.push(spec.tools[0].clone());
        spec.env.insert("1BAD".into(), String::new());
        let error = spec.validate().unwrap_err().to_string();
        assert!(
            error.contains("tools[1].name") && error.contains("env.1BAD"),
            "{error}"
        );
    }
}
