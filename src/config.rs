//! The node's configuration: built-in defaults, overridden by a YAML file, overridden by
//! `AIENV_*` environment variables, overridden by command-line flags. `main` resolves it once
//! and hands each part its own section; nothing reads the environment deeper down.
//!
//! Every setting remembers where its value came from, for `aienv config show`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name shown to peers (default: the host name).
    pub name: String,
    /// Where the node keeps its index, workspaces, id and token.
    pub data_dir: PathBuf,
    /// The HTTP server.
    pub http: HttpConfig,
    /// The workspace store.
    pub store: StoreSection,
    /// LAN discovery.
    pub discovery: DiscoveryConfig,
    /// Clones and syncs between nodes.
    pub transfer: TransferSection,
    /// Running environments.
    pub runtime: RuntimeSection,
    /// The lab cluster: what trusted peers may run here.
    pub cluster: ClusterSection,
    /// Git for workspaces' projects.
    pub git: GitSection,
    /// Headless runs, incoming webhooks and outgoing notifications.
    pub ci: CiSection,
    /// Logging.
    pub log: LogConfig,
}

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the TLS listener (peers, and browsers on other machines).
    pub bind: IpAddr,
    /// Port of the TLS listener, the one announced to peers (0 picks a free one).
    pub port: u16,
    /// Port of the plain-HTTP listener on 127.0.0.1 only, for the CLI and a browser on this
    /// machine (0 picks a free one).
    pub local_port: u16,
    /// Whether to open the plain-HTTP loopback listener at all.
    pub local_http: bool,
    /// Accept requests from public (non-private) addresses.
    pub allow_public: bool,
    /// Extra host names this node answers to (besides IP literals, `localhost` and the host
    /// name), for the DNS-rebinding check.
    pub hostnames: Vec<String>,
    /// Extra browser origins allowed to open the event stream.
    pub allowed_origins: Vec<String>,
    /// Largest JSON or YAML request body in bytes.
    pub max_body_bytes: usize,
    /// Largest archive upload in bytes.
    pub max_upload_bytes: u64,
    /// Worker threads (0: one per CPU core).
    pub workers: usize,
    /// Events an event-stream client may fall behind before it is sent a fresh snapshot.
    pub event_buffer: usize,
    /// Ports for tools' own origins, `FIRST-LAST` (two per opened tool: TLS and loopback),
    /// or `0` for any free port.
    pub tool_ports: String,
}

impl HttpConfig {
    /// `tool_ports` as an inclusive range; `(0, 0)` for any free port.
    pub fn tool_port_range(&self) -> Result<(u16, u16), String> {
        let text = self.tool_ports.trim();
        if text == "0" {
            return Ok((0, 0));
        }
        let range = text.split_once('-').and_then(|(first, last)| {
            Some((
                first.trim().parse::<u16>().ok()?,
                last.trim().parse::<u16>().ok()?,
            ))
        });
        match range {
            Some((first, last)) if first > 0 && first <= last => Ok((first, last)),
            _ => Err("write it as FIRST-LAST (such as 37800-37999, FIRST at least 1), or 0 for any free port".into()),
        }
    }
}

/// LAN discovery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Announce this node and listen for others by UDP multicast.
    pub enabled: bool,
    /// Multicast group.
    pub group: std::net::Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Interfaces to announce on (such as `lo` for a one-host cluster); empty: every up,
    /// multicast-capable, non-loopback interface.
    pub interfaces: Vec<String>,
    /// Milliseconds between periodic announcements (at least 200).
    pub announce_interval_ms: u64,
    /// `host:port` of nodes to poll over mutual TLS where multicast does not reach;
    /// `host:port#KEY-ID` accepts only that key.
    pub static_peers: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            enabled: true,
            group: std::net::Ipv4Addr::new(239, 255, 77, 77),
            port: 37777,
            interfaces: Vec::new(),
            announce_interval_ms: 10_000,
            static_peers: Vec::new(),
        }
    }
}

/// Transfer settings (both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSection {
    /// Clone and sync jobs running at once; more wait in the queue.
    pub max_jobs: usize,
    /// Chunk batch requests in flight per source.
    pub window: usize,
    /// When to ask sources to zstd-compress chunks: `auto` (except from this host),
    /// `always` or `never`. Incompressible chunks always travel raw.
    pub compress: CompressSetting,
    /// Seconds a job waits for an unreachable source before it fails.
    pub source_wait_seconds: u64,
    /// Chunk batches this node serves at once, to all peers.
    pub max_uploads: usize,
    /// Chunk batches this node serves at once to one peer.
    pub max_uploads_per_peer: usize,
    /// Chunk places a clone plans and fetches at a time: what the clone holds in memory
    /// (about 250 bytes a place) no matter how many files the workspace has.
    pub plan_window: usize,
}

impl Default for TransferSection {
    fn default() -> TransferSection {
        TransferSection {
            max_jobs: 2,
            window: 4,
            compress: CompressSetting::Auto,
            source_wait_seconds: 600,
            max_uploads: 32,
            max_uploads_per_peer: 8,
            plan_window: 32_768,
        }
    }
}

/// Runtime settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Start environments marked `autostart` when the node starts.
    pub autostart: bool,
    /// libvirt connection for environments that name none.
    pub libvirt_uri: String,
    /// The unprivileged user environments run as when the node runs as root (made as a
    /// system user when missing).
    pub run_as: String,
    /// Workspaces (names or ids) cloned from peers that may still run with `sandbox: off`:
    /// only a local admin, who edits this file, decides that.
    pub allow_unsandboxed: Vec<String>,
    /// The lab's Slurm cluster (the `slurm` runtime).
    pub slurm: SlurmSection,
    /// Seconds a runtime plugin's `prepare` or `launch` may take before it is stopped.
    pub plugin_timeout_seconds: u64,
}

impl Default for RuntimeSection {
    fn default() -> RuntimeSection {
        RuntimeSection {
            autostart: true,
            libvirt_uri: "qemu:///system".into(),
            run_as: "aienv-env".into(),
            allow_unsandboxed: Vec::new(),
            slurm: SlurmSection::default(),
            plugin_timeout_seconds: 1800,
        }
    }
}

/// `cluster`: whether trusted peers may place environments on this node, and what their
/// environments may hold together here. The limits go out with the node's offer, so peers
/// rank this node by what it really lends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `off` (no peer's work runs here) or `trusted` (peers a person trusts may place work).
    pub accept: AcceptSetting,
    /// CPU cores peers' environments may hold together; -1: all of the host's.
    pub lend_cpus: i64,
    /// Memory in MiB peers' environments may hold together; -1: all free for environments.
    pub lend_memory_mib: i64,
    /// GPUs peers' environments may hold together; -1: all; 0: none.
    pub lend_gpus: i64,
    /// Seconds an executing peer may stay silent before its environments show `lost`.
    pub lost_after_seconds: u64,
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            accept: AcceptSetting::Off,
            lend_cpus: -1,
            lend_memory_mib: -1,
            lend_gpus: -1,
            lost_after_seconds: 10,
        }
    }
}

impl ClusterSection {
    /// The limits as the runtime supervisor applies them.
    pub fn limits(&self) -> aienv_actors::runtime_supervisor::LendLimits {
        let bound = |value: i64| u64::try_from(value).ok();
        aienv_actors::runtime_supervisor::LendLimits {
            cpus: bound(self.lend_cpus).map(|v| v.min(u32::MAX as u64) as u32),
            memory: bound(self.lend_memory_mib).map(|mib| mib.saturating_mul(1 << 20)),
            gpus: bound(self.lend_gpus).map(|v| v.min(u32::MAX as u64) as u32),
        }
    }
}

/// `git`: how the node runs git for workspaces' projects. Credentials live here only: git
/// gets them through the node's credential helper, and they never enter a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSection {
    /// Credentials by remote URL prefix (`url`, `username`, and `password` or
    /// `password_file`).
    pub credentials: Vec<crate::git_credentials::GitCredential>,
    /// Seconds a clone or fetch may take before it is stopped.
    pub timeout_seconds: u64,
}

impl Default for GitSection {
    fn default() -> GitSection {
        GitSection {
            credentials: Vec::new(),
            timeout_seconds: 600,
        }
    }
}

/// `ci`: headless runs (`aienv ci`), webhooks that start them, and notifications of what
/// happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CiSection {
    /// Runs at once; the rest wait in order.
    pub max_running: usize,
    /// Finished runs kept with their logs.
    pub keep_runs: usize,
    /// Incoming webhooks: `POST /api/v1/hooks/<name>`.
    pub hooks: Vec<IncomingHook>,
    /// Outgoing notifications: signed JSON to a URL for chosen events.
    pub notify: Vec<NotifyTarget>,
}

impl Default for CiSection {
    fn default() -> CiSection {
        CiSection {
            max_running: 2,
            keep_runs: 500,
            hooks: Vec::new(),
            notify: Vec::new(),
        }
    }
}

/// One incoming webhook (GitHub, Gitea, GitLab and compatible forges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingHook {
    /// Its name: the last segment of its URL.
    pub name: String,
    /// The shared secret (GitHub/Gitea: the HMAC key of `X-Hub-Signature-256`; GitLab: the
    /// `X-Gitlab-Token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file holding the secret (read at each delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The workspace it runs in.
    pub workspace: String,
    /// The environment (default: the workspace's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Pull the workspace's git projects before the command.
    #[serde(default = "yes")]
    pub pull: bool,
    /// The command's argument vector.
    pub command: Vec<String>,
    /// Only pushes to these branches start a run (empty: every delivery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Seconds the command may run.
    #[serde(default = "an_hour")]
    pub timeout_seconds: u64,
}

fn yes() -> bool {
    true
}

fn an_hour() -> u64 {
    3600
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Aienv-Signature-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Which events: `transfer_done`, `transfer_failed`, `environment_failed`,
    /// `ci_finished` (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// The events notifications can carry.
pub const NOTIFY_EVENTS: [&str; 4] = [
    "transfer_done",
    "transfer_failed",
    "environment_failed",
    "ci_finished",
];

/// `cluster.accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptSetting {
    /// No peer's work runs here.
    Off,
    /// Trusted peers may place work here.
    Trusted,
}

impl AcceptSetting {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptSetting::Off => "off",
            AcceptSetting::Trusted => "trusted",
        }
    }
}

/// `runtime.slurm`: where slurmrestd listens and the job defaults. Empty means unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSection {
    /// `unix:/path/to/slurmrestd.sock` (local auth: jobs run as slurmrestd's user) or
    /// `http://host:port` (JWT auth with `user` and `token_file`).
    pub url: String,
    /// User name sent with the JWT.
    pub user: String,
    /// File holding the JWT (`scontrol token`); read at each submission.
    pub token_file: String,
    /// Partition jobs go to unless the environment names one.
    pub partition: String,
    /// Account charged unless the environment names one.
    pub account: String,
    /// Wall-clock limit in minutes unless the environment gives one; 0: the partition's.
    pub time_limit_minutes: u32,
}

impl SlurmSection {
    /// The runtime supervisor's view of these settings.
    pub fn to_runtime(&self) -> aienv_actors::runtime_supervisor::slurm::SlurmConfig {
        let set = |text: &str| (!text.is_empty()).then(|| text.to_string());
        aienv_actors::runtime_supervisor::slurm::SlurmConfig {
            url: self.url.clone(),
            user: self.user.clone(),
            token_file: set(&self.token_file).map(PathBuf::from),
            partition: set(&self.partition),
            account: set(&self.account),
            time_limit_minutes: (self.time_limit_minutes > 0).then_some(self.time_limit_minutes),
        }
    }
}

/// `transfer.compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressSetting {
    /// Compress except from a source on this host.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Workspace store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Index page cache in MiB.
    pub cache_mib: u64,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `aienv=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: host_name(),
            data_dir: default_data_dir(),
            http: HttpConfig::default(),
            store: StoreSection::default(),
            discovery: DiscoveryConfig::default(),
            transfer: TransferSection::default(),
            runtime: RuntimeSection::default(),
            cluster: ClusterSection::default(),
            git: GitSection::default(),
            ci: CiSection::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 37778,
            local_port: 37779,
            local_http: true,
            allow_public: false,
            hostnames: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 64 * 1024 * 1024 * 1024,
            workers: 0,
            event_buffer: 1024,
            tool_ports: "37800-37999".into(),
        }
    }
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection { cache_mib: 64 }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    /// Built in.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A resolved configuration with the source of every setting.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration.
    pub config: Config,
    /// Source of each setting, by dotted key (`http.port`).
    pub sources: BTreeMap<String, Source>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file is invalid.
    #[error(transparent)]
    File(#[from] aienv_actors::yaml::YamlError),
    /// An explicitly named config file does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// An environment variable or flag has a value of the wrong type.
    #[error("{origin}: `{value}` is not a valid value for `{key}`: {message}")]
    BadValue {
        /// The setting.
        key: String,
        /// Where the value came from.
        origin: Source,
        /// The value.
        value: String,
        /// Why it is wrong.
        message: String,
    },
}

/// Names the config file to read: `explicit` (from `--config` or `AIENV_CONFIG`), else the
/// user's `$XDG_CONFIG_HOME/aienv/config.yaml`, else `/etc/aienv/config.yaml`, when present.
pub fn config_file(explicit: Option<&Path>, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env.get("AIENV_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let user = env
        .get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|home| Path::new(home).join(".config")))
        .map(|dir| dir.join("aienv").join("config.yaml"));
    [user, Some(PathBuf::from("/etc/aienv/config.yaml"))]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
}

/// Resolves the configuration from `file`, the environment `env` and the flag values `flags`
/// (dotted key → (flag name, value)).
pub fn resolve(
    file: Option<&Path>,
    explicit_file: bool,
    env: &BTreeMap<String, String>,
    flags: &[(&str, &str, String)],
) -> Result<Resolved, ConfigError> {
    let mut merged = serde_json::to_value(Config::default()).expect("config serializes");
    let mut sources = BTreeMap::new();
    let mut leaves = Vec::new();
    collect_leaves(&merged, "", &mut leaves);
    for key in &leaves {
        sources.insert(key.clone(), Source::Default);
    }

    let mut used_file = None;
    if let Some(path) = file {
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::File(aienv_actors::yaml::YamlError {
                    file: path.to_path_buf(),
                    line: None,
                    column: None,
                    field: None,
                    message: format!("cannot read: {e}"),
                })
            })?;
            // Parse once typed (precise errors, unknown keys refused) and once untyped (to
            // know which keys the file sets).
            let typed: Config = aienv_actors::yaml::from_str(&text, path)?;
            let typed = serde_json::to_value(typed).expect("config serializes");
            let present: Value = aienv_actors::yaml::from_str(&text, path)?;
            let mut keys = Vec::new();
            collect_leaves(&present, "", &mut keys);
            for key in keys {
                if let (Some(value), Some(slot)) =
                    (pointer(&typed, &key), pointer_mut(&mut merged, &key))
                {
                    *slot = value.clone();
                    sources.insert(key, Source::File(path.to_path_buf()));
                }
            }
            used_file = Some(path.to_path_buf());
        } else if explicit_file {
            return Err(ConfigError::Missing(path.to_path_buf()));
        }
    }

    for key in &leaves {
        let mut names = vec![format!("AIENV_{}", key.to_uppercase().replace('.', "_"))];
        if key == "data_dir" {
            names.push("AIENV_DATA_DIR".into());
        }
        for name in names {
            if let Some(raw) = env.get(&name) {
                let source = Source::Env(name.clone());
                set_leaf(&mut merged, key, raw, &source)?;
                sources.insert(key.clone(), source);
                break;
            }
        }
    }

    for (key, flag, raw) in flags {
        let source = Source::Flag(flag.to_string());
        set_leaf(&mut merged, key, raw, &source)?;
        sources.insert(key.to_string(), source);
    }

    let config: Config = serde_json::from_value(merged).map_err(|error| ConfigError::BadValue {
        key: "configuration".into(),
        origin: Source::Default,
        value: String::new(),
        message: error.to_string(),
    })?;
    if let Err(message) = config.http.tool_port_range() {
        let key = "http.tool_ports";
        return Err(ConfigError::BadValue {
            key: key.into(),
            origin: sources.get(key).cloned().unwrap_or(Source::Default),
            value: config.http.tool_ports.clone(),
            message,
        });
    }
    if !config.runtime.slurm.url.is_empty() {
        if let Err(message) = aienv_actors::runtime_supervisor::slurm::rest::Endpoint::parse(
            &config.runtime.slurm.url,
        ) {
            let key = "runtime.slurm.url";
            return Err(ConfigError::BadValue {
                key: key.into(),
                origin: sources.get(key).cloned().unwrap_or(Source::Default),
                value: config.runtime.slurm.url.clone(),
                message,
            });
        }
    }
    for (key, value) in [
        ("cluster.lend_cpus", config.cluster.lend_cpus),
        ("cluster.lend_memory_mib", config.cluster.lend_memory_mib),
        ("cluster.lend_gpus", config.cluster.lend_gpus),
    ] {
        if value < -1 {
            return Err(ConfigError::BadValue {
                key: key.into(),
                origin: sources.get(key).cloned().unwrap_or(Source::Default),
                value: value.to_string(),
                message: "must be -1 (all) or a count of at least 0".into(),
            });
        }
    }
    for (index, credential) in config.git.credentials.iter().enumerate() {
        let key = "git.credentials";
        let bad = |message: &str| ConfigError::BadValue {
            key: format!("{key}[{index}]"),
            origin: sources.get(key).cloned().unwrap_or(Source::Default),
            value: credential.url.clone(),
            message: message.into(),
        };
        if !credential.url.contains("://") {
            return Err(bad(
                "`url` must be a URL prefix such as https://git.example.org/",
            ));
        }
        if credential.password.is_some() == credential.password_file.is_some() {
            return Err(bad("give exactly one of `password` and `password_file`"));
        }
    }
    check_ci(&config.ci, &sources)?;
    if config.discovery.announce_interval_ms < 200 {
        let key = "discovery.announce_interval_ms";
        return Err(ConfigError::BadValue {
            key: key.into(),
            origin: sources.get(key).cloned().unwrap_or(Source::Default),
            value: config.discovery.announce_interval_ms.to_string(),
            message: "must be at least 200 (milliseconds)".into(),
        });
    }
    Ok(Resolved {
        config,
        sources,
        file: used_file,
    })
}

/// Checks `ci.hooks` and `ci.notify`: names, secrets, commands, URLs and events.
fn check_ci(ci: &CiSection, sources: &BTreeMap<String, Source>) -> Result<(), ConfigError> {
    let origin = |key: &str| sources.get(key).cloned().unwrap_or(Source::Default);
    let mut names = std::collections::HashSet::new();
    for (index, hook) in ci.hooks.iter().enumerate() {
        let bad = |message: String| ConfigError::BadValue {
            key: format!("ci.hooks[{index}]"),
            origin: origin("ci.hooks"),
            value: hook.name.clone(),
            message,
        };
        if !aienv_actors::model::is_slug(&hook.name) {
            return Err(bad(
                "`name` must be lower-case letters, digits and hyphens (it is part of the URL)"
                    .into(),
            ));
        }
        if !names.insert(hook.name.clone()) {
            return Err(bad("two hooks have this `name`".into()));
        }
        if hook.secret.is_some() == hook.secret_file.is_some() {
            return Err(bad(
                "give exactly one of `secret` and `secret_file`: a webhook without a secret would run for anyone".into(),
            ));
        }
        if hook.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(bad("`secret` must be at least 16 characters".into()));
        }
        if hook.command.is_empty() || hook.command[0].is_empty() {
            return Err(bad(
                "`command` is empty: give the program and its arguments".into(),
            ));
        }
    }
    for (index, target) in ci.notify.iter().enumerate() {
        let bad = |message: String| ConfigError::BadValue {
            key: format!("ci.notify[{index}]"),
            origin: origin("ci.notify"),
            value: target.url.clone(),
            message,
        };
        let lower = target.url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(bad("`url` must be an http:// or https:// URL".into()));
        }
        if target.secret.is_some() && target.secret_file.is_some() {
            return Err(bad("give at most one of `secret` and `secret_file`".into()));
        }
        if let Some(unknown) = target
            .events
            .iter()
            .find(|e| !NOTIFY_EVENTS.contains(&e.as_str()))
        {
            return Err(bad(format!(
                "event `{unknown}` is not one of {}",
                NOTIFY_EVENTS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Sets `key` from the text `raw`, typed like its default.
fn set_leaf(merged: &mut Value, key: &str, raw: &str, source: &Source) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::BadValue {
        key: key.to_string(),
        origin: source.clone(),
        value: raw.to_string(),
        message,
    };
    let slot = pointer_mut(merged, key).ok_or_else(|| bad("no such setting".into()))?;
    let value = match slot {
        Value::Bool(_) => match raw {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => return Err(bad("expected true or false".into())),
        },
        Value::Number(_) if raw.trim().starts_with('-') => Value::Number(
            raw.trim()
                .parse::<i64>()
                .map_err(|e| bad(format!("expected a whole number ({e})")))?
                .into(),
        ),
        Value::Number(_) => Value::Number(
            raw.trim()
                .parse::<u64>()
                .map_err(|e| bad(format!("expected a whole number ({e})")))?
                .into(),
        ),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(raw.to_string()),
    };
    // Check the type now so the error names the variable or flag.
    let mut probe = serde_json::to_value(Config::default()).expect("config serializes");
    *pointer_mut(&mut probe, key).expect("key exists") = value.clone();
    serde_json::from_value::<Config>(probe).map_err(|e| bad(e.to_string()))?;
    *slot = value;
    Ok(())
}

fn collect_leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(child, &path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix.to_string()),
        _ => {}
    }
}

fn pointer<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.pointer(&format!("/{}", key.replace('.', "/")))
}

fn pointer_mut<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    value.pointer_mut(&format!("/{}", key.replace('.', "/")))
}

/// The user's default data dir: `$XDG_DATA_HOME/aienv` or `~/.local/share/aienv`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("aienv");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/aienv"),
        None => PathBuf::from("/var/lib/aienv"),
    }
}

/// The machine's host name, or `aienv-node`.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let name = if ok {
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "aienv-node".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example is a valid configuration naming every section.
    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config: Config = aienv_actors::yaml::from_str(&text, &path).unwrap();
        assert_eq!(config.transfer, TransferSection::default());
        assert_eq!(config.discovery, DiscoveryConfig::default());
        for section in [
            "http:",
            "store:",
            "discovery:",
            "transfer:",
            "runtime:",
            "log:",
        ] {
            assert!(
                text.contains(&format!("\n{section}")),
                "{section} is documented"
            );
        }
    }

    #[test]
    fn layers_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "name: from-file\nhttp:\n  port: 4000\n  hostnames: [lab.local]\n",
        )
        .unwrap();
        let env = BTreeMap::from([
            ("AIENV_HTTP_PORT".to_string(), "5000".to_string()),
            ("AIENV_DATA_DIR".to_string(), "/tmp/x".to_string()),
        ]);
        let flags = [("name", "--name", "from-flag".to_string())];
        let resolved = resolve(Some(&file), true, &env, &flags).unwrap();
        assert_eq!(resolved.config.name, "from-flag");
        assert_eq!(resolved.config.http.port, 5000);
        assert_eq!(resolved.config.http.hostnames, ["lab.local"]);
        assert_eq!(resolved.config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(resolved.sources["name"], Source::Flag("--name".into()));
        assert_eq!(
            resolved.sources["http.port"],
            Source::Env("AIENV_HTTP_PORT".into())
        );
        assert_eq!(
            resolved.sources["http.hostnames"],
            Source::File(file.clone())
        );
        assert_eq!(resolved.sources["log.level"], Source::Default);

        let env = BTreeMap::from([("AIENV_HTTP_PORT".to_string(), "lots".to_string())]);
        let error = resolve(None, false, &env, &[]).unwrap_err().to_string();
        assert!(
            error.contains("AIENV_HTTP_PORT") && error.contains("lots"),
            "{error}"
        );

        std::fs::write(&file, "http:\n  prot: 1\n").unwrap();
        let error = resolve(Some(&file), true, &BTreeMap::new(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("config.yaml:2") && error.contains("prot"),
            "{error}"
        );
    }
}
