//! The `aienv` command line. Every command except `serve`, `config` and `user` talks to a node
//! over REST through [`crate::client::Client`].

mod daemon;
mod output;
mod runtime;
mod transfer;
mod workspace;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;

use crate::client::{Client, Credentials};
use crate::config::{self, LogFormat};

pub use output::{exit, CliError};

/// aienv: share, clone and run AI environments across a LAN.
#[derive(Debug, Parser)]
#[command(name = "aienv", version, about, propagate_version = true)]
pub struct Cli {
    /// URL of the node to talk to.
    #[arg(
        long,
        global = true,
        env = "AIENV_NODE",
        default_value = "http://127.0.0.1:37779"
    )]
    pub node: String,
    /// Key id of the node at an `https://` URL (as `aienv node` shows it on that machine):
    /// the only key the CLI accepts there.
    #[arg(long, global = true, env = "AIENV_NODE_KEY")]
    pub node_key: Option<String>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Data dir of the local node (to read its admin token).
    #[arg(long, global = true, env = "AIENV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: the dashboard, the REST API and its event stream, discovery and transfers.
    Serve(ServeArgs),
    /// Manage workspaces.
    #[command(subcommand, visible_alias = "workspace")]
    Ws(workspace::WsCommand),
    /// Show the node's identity and state.
    Node,
    /// List the peers this node knows, with their state and resources.
    Peers {
        /// Keep the table up to date as peers come and go.
        #[arg(long)]
        watch: bool,
        /// List the peers this node trusts (seen or not) instead.
        #[arg(long, conflicts_with = "watch")]
        trusted: bool,
        #[command(subcommand)]
        action: Option<PeersCommand>,
    },
    /// Browse and search everything the network shares.
    Catalog {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only this peer (name or id).
        #[arg(long)]
        peer: Option<String>,
    },
    /// Clone a workspace another node shares: `aienv clone PEER/WORKSPACE`.
    Clone {
        /// The source as PEER/WORKSPACE (node name or id / workspace name or id).
        source: String,
        /// Local name for the clone.
        #[arg(long = "as")]
        rename_to: Option<String>,
        /// Turn sharing off in the clone.
        #[arg(long)]
        private: bool,
        /// Return once queued instead of following the transfer.
        #[arg(long)]
        no_wait: bool,
        /// Set the clone up and start it when it arrives (like `aienv run`).
        #[arg(long)]
        run: bool,
    },
    /// Update a clone from the node it was cloned from (only what changed moves).
    Sync {
        /// The local clone (name or id).
        workspace: String,
        /// Sync from this node instead of the origin (one sharing the same workspace).
        #[arg(long)]
        peer: Option<String>,
        /// Return once queued instead of following the transfer.
        #[arg(long)]
        no_wait: bool,
    },
    /// Set up and start a workspace's environments; returns once their tools answer (or
    /// fail), printing their URLs. The environments keep running under the node.
    Run {
        /// Workspace name or id.
        workspace: String,
        /// One environment (all when omitted).
        environment: Option<String>,
        /// Run on this backend: process, docker, libvirt (the environment's choice otherwise).
        #[arg(long)]
        backend: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Stop a workspace's environments (all, or one).
    Stop {
        /// Workspace name or id.
        workspace: String,
        /// One environment.
        environment: Option<String>,
    },
    /// Show running environments (or every environment of one workspace): state,
    /// allocation, tools and their URLs.
    Status {
        /// Workspace name or id.
        workspace: Option<String>,
    },
    /// Print an environment's logs (set-up, tools, container).
    Logs {
        /// Workspace name or id.
        workspace: String,
        /// One environment.
        environment: Option<String>,
        /// Only this log (a tool's name, `setup`, `container`).
        #[arg(long)]
        tool: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines of each log to start with.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Open a running tool in the browser, signed in on its own origin (or print a link that
    /// signs in once, within a minute).
    Open {
        /// Workspace name or id; without it, the dashboard opens signed in.
        workspace: Option<String>,
        /// Tool name (may be left out when the workspace has one tool to open).
        tool: Option<String>,
        /// Only print the URL.
        #[arg(long)]
        print: bool,
    },
    /// Attach this terminal to a running environment's shell (the node's terminal).
    Shell {
        /// Workspace name or id.
        workspace: String,
        /// One environment (the first running one otherwise).
        environment: Option<String>,
    },
    /// Environment helpers.
    #[command(subcommand)]
    Env(runtime::EnvCommand),
    /// List clone and sync jobs; cancel or retry one.
    Transfers {
        #[command(subcommand)]
        action: Option<transfer::TransfersAction>,
        /// Keep the table up to date.
        #[arg(long)]
        watch: bool,
    },
    /// Print the node's live event stream (one JSON object per line).
    Events,
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show what this host offers (CPU, memory, disk, GPUs), as a node here would announce it.
    Resources,
    /// Manage the node's users (works on the data dir directly).
    #[command(subcommand)]
    User(UserCommand),
    /// Run the node in the background where there is no service manager.
    #[command(subcommand)]
    Daemon(DaemonCommand),
}

/// `aienv daemon ...`.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start `aienv serve` in the background with these options (log and pid file in the
    /// data dir); waits until it listens and prints its addresses.
    Start(ServeArgs),
    /// Stop the node of this data dir (SIGTERM, then SIGKILL after 45 s).
    Stop(ServeArgs),
    /// Say whether the node of this data dir runs: exit 0 running, 1 dead with a pid file
    /// left, 3 stopped.
    Status(ServeArgs),
}

/// Search and filter flags shared by `ws ls` and `catalog`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Free-text search (every word must match).
    pub query: Vec<String>,
    /// Only this type.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Only workspaces listing this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only workspaces listing this language.
    #[arg(long = "lang")]
    pub language: Option<String>,
    /// Only workspaces with this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

impl FilterArgs {
    /// The free text, or `None` when no words were given.
    pub fn text(&self) -> Option<String> {
        (!self.query.is_empty()).then(|| self.query.join(" "))
    }
}

/// `aienv peers ...`: who this node trusts.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Trust a peer: it then sees what is shared with it by name, id or key id. Compare its
    /// key id (`aienv node` on that machine) with the one `aienv peers` shows first.
    Trust {
        /// The peer: its name, node id or key id.
        peer: String,
        /// The key id you compared; trust is refused if the peer presents another.
        #[arg(long)]
        key: Option<String>,
    },
    /// Pair with a short code instead of comparing key ids: `--show` on one node prints a
    /// code (5 minutes, single use); `PEER --code CODE` on the other pairs them, and each then
    /// trusts the other.
    Pair {
        /// The peer showing the code (name, id or key id).
        #[arg(required_unless_present = "show", conflicts_with = "show")]
        peer: Option<String>,
        /// The code shown on the peer.
        #[arg(long, requires = "peer")]
        code: Option<String>,
        /// Show a code here, for the other node to type.
        #[arg(long)]
        show: bool,
    },
    /// Revoke trust: from its next request on, the peer sees only what the LAN sees.
    Untrust {
        /// The peer: its name, node id or key id.
        peer: String,
    },
}

/// Flags of `aienv serve`; each overrides the config file and the environment.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Config file (default: $XDG_CONFIG_HOME/aienv/config.yaml, then /etc/aienv/config.yaml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Port of the TLS listener that peers and other machines use (0 picks a free one).
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Port of the plain-HTTP listener on 127.0.0.1, for this machine (0 picks a free one).
    #[arg(long)]
    pub local_port: Option<u16>,
    /// Address of the TLS listener.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Node name shown to peers.
    #[arg(long)]
    pub name: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// UDP port of LAN discovery.
    #[arg(long)]
    pub discovery_port: Option<u16>,
    /// Seconds between announcements (at least 0.2).
    #[arg(long)]
    pub announce_interval: Option<f64>,
    /// Interface to announce on, such as `lo` (repeatable); default: every LAN interface.
    #[arg(long = "discovery-iface")]
    pub discovery_ifaces: Vec<String>,
    /// Do not announce or listen by multicast (static peers still work).
    #[arg(long)]
    pub no_discovery: bool,
    /// Serve the dashboard from web-ui/ on disk (edit and reload) instead of the embedded copy.
    #[arg(long)]
    pub dev: bool,
    /// Test hook: corrupt the next N chunks this node serves (to test verification). Only
    /// in debug builds and with the `test-hooks` feature: never in a release binary.
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_corrupt_chunks: u32,
    /// Test hook: pause this many milliseconds before each chunk served.
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_chunk_delay_ms: u64,
}

/// `aienv config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting, its value and where the value came from.
    Show(ServeArgs),
}

/// `aienv user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is asked for, or read from stdin with --password-stdin.
    Add {
        /// Login name.
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// admin (everything, trust and pairing included), member (their own workspaces and
        /// those they are a member of) or viewer (browse and clone).
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Change a user's role (applies to their open sessions at once).
    Role {
        /// Login name.
        name: String,
        /// admin, member or viewer.
        role: String,
    },
    /// Remove a user.
    Rm {
        /// Login name.
        name: String,
    },
    /// List users.
    Ls,
}

impl ServeArgs {
    fn flags(&self, data_dir: Option<&Path>) -> Vec<(&'static str, &'static str, String)> {
        let mut flags = Vec::new();
        if let Some(port) = self.http_port {
            flags.push(("http.port", "--http-port", port.to_string()));
        }
        if let Some(port) = self.local_port {
            flags.push(("http.local_port", "--local-port", port.to_string()));
        }
        if let Some(bind) = self.bind {
            flags.push(("http.bind", "--bind", bind.to_string()));
        }
        if let Some(name) = &self.name {
            flags.push(("name", "--name", name.clone()));
        }
        if let Some(format) = &self.log_format {
            flags.push(("log.format", "--log-format", format.clone()));
        }
        if let Some(dir) = data_dir {
            flags.push(("data_dir", "--data-dir", dir.display().to_string()));
        }
        if let Some(port) = self.discovery_port {
            flags.push(("discovery.port", "--discovery-port", port.to_string()));
        }
        if let Some(seconds) = self.announce_interval {
            let ms = (seconds * 1000.0).round().max(0.0) as u64;
            flags.push((
                "discovery.announce_interval_ms",
                "--announce-interval",
                ms.to_string(),
            ));
        }
        if !self.discovery_ifaces.is_empty() {
            flags.push((
                "discovery.interfaces",
                "--discovery-iface",
                self.discovery_ifaces.join(","),
            ));
        }
        if self.no_discovery {
            flags.push(("discovery.enabled", "--no-discovery", "false".into()));
        }
        flags
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve(_)) {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`aienv ws ls | head`). Sockets are unaffected: they write with MSG_NOSIGNAL.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match &cli.command {
        Command::Serve(args) => serve(&cli, args),
        Command::Config(ConfigCommand::Show(args)) => config_show(&cli, args),
        Command::User(command) => user(&cli, command),
        Command::Daemon(command) => daemon_command(&cli, command),
        Command::Resources => {
            resources(&cli);
            Ok(())
        }
        _ => actix_rt::System::new().block_on(remote(&cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

#[cfg(any(debug_assertions, feature = "test-hooks"))]
fn test_hooks(args: &ServeArgs) -> crate::http::TestHooks {
    crate::http::TestHooks {
        corrupt_chunks: args.test_corrupt_chunks,
        chunk_delay_ms: args.test_chunk_delay_ms,
    }
}

#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
fn test_hooks(_: &ServeArgs) -> crate::http::TestHooks {
    crate::http::TestHooks::default()
}

fn daemon_command(cli: &Cli, command: &DaemonCommand) -> Result<(), CliError> {
    let args = match command {
        DaemonCommand::Start(args) | DaemonCommand::Stop(args) | DaemonCommand::Status(args) => {
            args
        }
    };
    let data_dir = resolve(cli, args)?.config.data_dir;
    match command {
        DaemonCommand::Start(_) => daemon::start(&data_dir),
        DaemonCommand::Stop(_) => daemon::stop(&data_dir),
        DaemonCommand::Status(_) => {
            let code = daemon::status(&data_dir, cli.json)?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
    }
}

fn resolve(cli: &Cli, args: &ServeArgs) -> Result<config::Resolved, CliError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = config::config_file(args.config.as_deref(), &env);
    let explicit = args.config.is_some() || env.contains_key("AIENV_CONFIG");
    // --data-dir on the command line is a flag; AIENV_DATA_DIR is read as an env layer.
    let flag_dir = cli.data_dir.as_deref().filter(|_| data_dir_flag_given());
    config::resolve(file.as_deref(), explicit, &env, &args.flags(flag_dir))
        .map_err(|e| CliError::with_code(exit::INVALID, e.to_string()))
}

/// Whether `--data-dir` was given on the command line (clap merges it with the env var).
fn data_dir_flag_given() -> bool {
    std::env::args().any(|a| a == "--data-dir" || a.starts_with("--data-dir="))
}

fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let resolved = resolve(cli, args)?;
    let config = resolved.config;
    init_tracing(&config.log.level, config.log.format);
    if let Some(file) = &resolved.file {
        tracing::info!(file = %file.display(), "read config file");
    }
    actix_rt::System::new()
        .block_on(crate::serve::serve(
            config,
            crate::serve::ServeOptions {
                dev_ui: args.dev,
                test_hooks: test_hooks(args),
            },
        ))
        .map_err(|e| CliError::new(e.to_string()))
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIENV_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn config_show(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let resolved = resolve(cli, args)?;
    let value = serde_json::to_value(&resolved.config).expect("config serializes");
    if cli.json {
        let settings: Vec<serde_json::Value> = resolved
            .sources
            .iter()
            .map(|(key, source)| {
                let pointer = format!("/{}", key.replace('.', "/"));
                serde_json::json!({
                    "key": key,
                    "value": value.pointer(&pointer),
                    "source": source,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "file": resolved.file,
            "settings": settings,
        }));
        return Ok(());
    }
    match &resolved.file {
        Some(file) => println!("config file: {}", file.display()),
        None => println!("config file: none"),
    }
    let rows: Vec<Vec<String>> = resolved
        .sources
        .iter()
        .map(|(key, source)| {
            let pointer = format!("/{}", key.replace('.', "/"));
            let shown = match value.pointer(&pointer) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            vec![key.clone(), shown, source.to_string()]
        })
        .collect();
    output::print_table(&["SETTING", "VALUE", "SOURCE"], &rows);
    Ok(())
}

fn resources(cli: &Cli) {
    let data_dir = local_data_dir(cli);
    let probe_dir = if data_dir.exists() {
        data_dir
    } else {
        PathBuf::from("/")
    };
    let detected = aienv_actors::resources::detect(&probe_dir);
    let dto = crate::api::ResourcesDto::from(&detected);
    if cli.json {
        output::print_json(&dto);
        return;
    }
    println!("cpu:    {} ({} cores)", dto.cpu_model, dto.cpu_cores);
    println!(
        "memory: {} total, {} available",
        output::bytes(dto.memory_total),
        output::bytes(dto.memory_available)
    );
    println!(
        "disk:   {} free in {}",
        output::bytes(dto.disk_free),
        probe_dir.display()
    );
    println!("os:     {} {}", dto.os, dto.arch);
    if dto.gpus.is_empty() {
        println!("gpus:   none");
    }
    for gpu in &dto.gpus {
        println!(
            "gpu:    {} {} ({})",
            gpu.vendor,
            gpu.model,
            output::bytes(gpu.memory)
        );
    }
}

fn local_data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir)
}

fn user(cli: &Cli, command: &UserCommand) -> Result<(), CliError> {
    use crate::auth::UsersFile;
    let data_dir = local_data_dir(cli);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| CliError::new(format!("data dir {}: {e}", data_dir.display())))?;
    let invalid = |e: crate::auth::AuthError| {
        let code = match e {
            crate::auth::AuthError::UserExists(_) => exit::CONFLICT,
            crate::auth::AuthError::NoSuchUser(_) => exit::NOT_FOUND,
            _ => exit::INVALID,
        };
        CliError::with_code(code, e.to_string())
    };
    let mut users = UsersFile::load(&data_dir).map_err(invalid)?;
    match command {
        UserCommand::Add {
            name,
            password_stdin,
            role,
        } => {
            let role = crate::auth::Role::parse(role)
                .ok_or_else(|| invalid(crate::auth::AuthError::BadRole(role.clone())))?;
            let password = read_password(*password_stdin)?;
            users.add(name, &password, role).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!(
                "added user `{name}` to {}",
                data_dir.join(crate::auth::USERS_FILE).display()
            );
        }
        UserCommand::Role { name, role } => {
            let role = crate::auth::Role::parse(role)
                .ok_or_else(|| invalid(crate::auth::AuthError::BadRole(role.clone())))?;
            users.set_role(name, role).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!("`{name}` is now {}", role.as_str());
        }
        UserCommand::Rm { name } => {
            users.remove(name).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!("removed user `{name}`");
        }
        UserCommand::Ls => {
            if cli.json {
                let list: Vec<_> = users
                    .users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "role": u.role.as_str(), "created": u.created}))
                    .collect();
                output::print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = users
                    .users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.as_str().to_string(),
                            u.created.to_rfc3339(),
                        ]
                    })
                    .collect();
                output::print_table(&["USER", "ROLE", "CREATED"], &rows);
            }
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, CliError> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        eprint!("password (input is shown; use --password-stdin to pipe it): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn print_peers(cli: &Cli, peers: &[crate::api::PeerDto]) {
    if cli.json {
        output::print_json(&peers);
        return;
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let gpus = if p.resources.gpus.is_empty() {
                "-".to_string()
            } else {
                p.resources
                    .gpus
                    .iter()
                    .map(|g| g.model.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                p.name.clone(),
                p.state.clone(),
                if p.trusted { "trusted" } else { "known" }.to_string(),
                p.key_id.clone(),
                p.url.clone().unwrap_or_default(),
                p.resources.cpu_cores.to_string(),
                output::bytes(p.resources.memory_total),
                output::cell(&gpus, 30),
                p.shared_workspaces.to_string(),
                p.last_seen.format("%H:%M:%S").to_string(),
            ]
        })
        .collect();
    output::print_table(
        &[
            "PEER",
            "STATE",
            "TRUST",
            "KEY ID",
            "URL",
            "CPUS",
            "RAM",
            "GPUS",
            "SHARED",
            "LAST SEEN",
        ],
        &rows,
    );
}

/// Credentials for talking to `node`: AIENV_TOKEN, else AIENV_USER/AIENV_PASSWORD, else the
/// local node's admin token — only when `node` is on this machine, so the token never leaves it.
fn credentials(cli: &Cli) -> Option<Credentials> {
    if let Ok(token) = std::env::var("AIENV_TOKEN") {
        return Some(Credentials::Token(token));
    }
    if let (Ok(user), Ok(password)) = (std::env::var("AIENV_USER"), std::env::var("AIENV_PASSWORD"))
    {
        return Some(Credentials::Basic { user, password });
    }
    let host = cli
        .node
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&cli.node)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']']);
    let local = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local {
        return None;
    }
    let path = local_data_dir(cli).join(crate::auth::TOKEN_FILE);
    std::fs::read_to_string(path)
        .ok()
        .map(|t| Credentials::Token(t.trim().to_string()))
}

async fn remote(cli: &Cli) -> Result<(), CliError> {
    let client = if cli.node.starts_with("https://") {
        let Some(key) = &cli.node_key else {
            return Err(CliError::with_code(
                exit::INVALID,
                format!(
                    "{} speaks TLS with its own key: give that key with --node-key KEY-ID (`aienv node` on that machine shows it)",
                    cli.node
                ),
            ));
        };
        let key = aienv_actors::identity::KeyFingerprint::parse(key)
            .map_err(|e| CliError::with_code(exit::INVALID, format!("--node-key: {e}")))?;
        Client::with_key(&cli.node, credentials(cli), key)
    } else {
        Client::new(&cli.node, credentials(cli))
    };
    match &cli.command {
        Command::Ws(command) => workspace::run(cli, &client, command).await,
        Command::Node => {
            let node = client.node().await?;
            if cli.json {
                output::print_json(&node);
            } else {
                println!("name:       {}", node.name);
                println!("key id:     {}", node.key_id);
                println!(
                    "id:         {}{}",
                    node.id,
                    if node.legacy_id {
                        " (kept from before node keys)"
                    } else {
                        ""
                    }
                );
                println!("tls cert:   SHA-256 {}", node.certificate_sha256);
                println!("version:    {}", node.version);
                if let Some(dir) = &node.data_dir {
                    println!("data dir:   {dir}");
                }
                println!("started:    {}", node.started.to_rfc3339());
                println!("uptime:     {} s", node.uptime_seconds);
                println!("workspaces: {}", node.workspaces);
                let r = &node.resources;
                println!("cpu:        {} ({} cores)", r.cpu_model, r.cpu_cores);
                println!(
                    "memory:     {} total, {} available",
                    output::bytes(r.memory_total),
                    output::bytes(r.memory_available)
                );
                println!("disk free:  {}", output::bytes(r.disk_free));
                for gpu in &r.gpus {
                    println!("gpu:        {} ({})", gpu.model, output::bytes(gpu.memory));
                }
                let d = &node.discovery;
                match &d.problem {
                    Some(problem) => println!("discovery:  {problem}"),
                    None => println!("discovery:  on {}", d.interfaces.join(", ")),
                }
                println!(
                    "shared:     {} workspaces (catalog {})",
                    d.shared_workspaces, d.catalog_digest
                );
                let c = &d.datagrams;
                println!(
                    "datagrams:  {} sent, {} accepted, dropped: {} own, {} forged, {} malformed, {} oversized, {} unknown version, {} replayed, {} flood",
                    c.sent, c.accepted, c.own, c.forged, c.malformed, c.oversized, c.unknown_version, c.replayed, c.flood
                );
                if d.key_conflicts > 0 {
                    println!(
                        "conflicts:  {} announcements or answers refused: another key claimed a known node's id (see `aienv peers`)",
                        d.key_conflicts
                    );
                }
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Trust { peer, key }),
            ..
        } => {
            let record = client.trust_peer(peer, key.as_deref()).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!(
                    "trusted {} ({}), key {}",
                    record.name, record.id, record.key_id
                );
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Pair { peer, code, show }),
            ..
        } => {
            if *show {
                let shown = client.pairing_code().await?;
                if cli.json {
                    output::print_json(&shown);
                } else {
                    println!("pairing code: {}", shown.code);
                    println!(
                        "type it on the other node within 5 minutes: aienv peers pair <this node> --code {}",
                        shown.code
                    );
                    println!("this node's key id: {}", shown.key_id);
                }
                return Ok(());
            }
            let (Some(peer), Some(code)) = (peer, code) else {
                return Err(CliError::with_code(
                    exit::USAGE,
                    "give the peer and the code it shows: aienv peers pair PEER --code CODE",
                ));
            };
            let record = client.pair(peer, code).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!(
                    "paired with {} ({}): each node now trusts the other; key {}",
                    record.name, record.id, record.key_id
                );
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Untrust { peer }),
            ..
        } => {
            let record = client.untrust_peer(peer).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!("no longer trusted: {} ({})", record.name, record.id);
            }
            Ok(())
        }
        Command::Peers { trusted: true, .. } => {
            let trusted = client.trusted_peers().await?;
            if cli.json {
                output::print_json(&trusted);
            } else {
                let rows: Vec<Vec<String>> = trusted
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.key_id.clone(),
                            t.since.format("%Y-%m-%d %H:%M").to_string(),
                            t.by.clone(),
                        ]
                    })
                    .collect();
                output::print_table(&["PEER", "KEY ID", "SINCE", "BY"], &rows);
            }
            Ok(())
        }
        Command::Peers { watch, .. } => {
            print_peers(cli, &client.peers().await?);
            if !*watch {
                return Ok(());
            }
            let mut stream = client.events().await?;
            while let Some(message) = stream.next().await {
                let message = message?;
                let kind = message["type"].as_str().unwrap_or_default();
                if kind.starts_with("peer_") || kind == "snapshot" {
                    if !cli.json && std::io::stdout().is_terminal() {
                        print!("\x1b[2J\x1b[H");
                    }
                    print_peers(cli, &client.peers().await?);
                }
            }
            Err(CliError::with_code(
                exit::UNREACHABLE,
                "the node closed the event stream",
            ))
        }
        Command::Catalog { filter, peer } => {
            let entries = client
                .network_catalog(&crate::client::NetworkQuery {
                    kind: filter.kind.clone(),
                    tool: filter.tool.clone(),
                    lang: filter.language.clone(),
                    tag: filter.tag.clone(),
                    q: filter.text(),
                    peer: peer.clone(),
                })
                .await?;
            if cli.json {
                output::print_json(&entries);
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.workspace.name.clone(),
                            e.peer_name.clone(),
                            e.workspace.kind.clone(),
                            e.workspace.revision.to_string(),
                            output::cell(&e.workspace.tags.join(","), 30),
                            output::cell(&e.workspace.title, 40),
                        ]
                    })
                    .collect();
                output::print_table(
                    &["WORKSPACE", "PEER", "TYPE", "REV", "TAGS", "TITLE"],
                    &rows,
                );
            }
            Ok(())
        }
        Command::Clone {
            source,
            rename_to,
            private,
            no_wait,
            run,
        } => {
            transfer::clone(
                cli,
                &client,
                source,
                rename_to.clone(),
                *private,
                *no_wait,
                *run,
            )
            .await
        }
        Command::Sync {
            workspace,
            peer,
            no_wait,
        } => transfer::sync(cli, &client, workspace, peer.clone(), *no_wait).await,
        Command::Transfers { action, watch } => {
            transfer::transfers(cli, &client, action, *watch).await
        }
        Command::Run {
            workspace,
            environment,
            backend,
            timeout,
        } => {
            runtime::run(
                cli,
                &client,
                workspace,
                environment.clone(),
                backend.clone(),
                *timeout,
            )
            .await
        }
        Command::Stop {
            workspace,
            environment,
        } => runtime::stop(cli, &client, workspace, environment.as_deref()).await,
        Command::Status { workspace } => runtime::status(cli, &client, workspace.as_deref()).await,
        Command::Logs {
            workspace,
            environment,
            tool,
            follow,
            tail,
        } => {
            runtime::logs(
                &client,
                workspace,
                environment.as_deref(),
                tool.as_deref(),
                *follow,
                *tail,
            )
            .await
        }
        Command::Open {
            workspace,
            tool,
            print,
        } => match workspace {
            Some(workspace) => {
                runtime::open(cli, &client, workspace, tool.as_deref(), *print).await
            }
            None => runtime::open_dashboard(cli, &client, *print).await,
        },
        Command::Shell {
            workspace,
            environment,
        } => runtime::shell(&client, workspace, environment.as_deref()).await,
        Command::Env(command) => runtime::env(cli, &client, command).await,
        Command::Events => {
            let mut stream = client.events().await?;
            while let Some(message) = stream.next().await {
                let message = message?;
                println!("{message}");
            }
            Err(CliError::with_code(
                exit::UNREACHABLE,
                "the node closed the event stream",
            ))
        }
        Command::Serve(_)
        | Command::Config(_)
        | Command::User(_)
        | Command::Daemon(_)
        | Command::Resources => {
            unreachable!("handled locally")
        }
    }
}
