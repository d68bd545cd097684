//! The command line's arguments: every command, subcommand and flag, with its help text.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use super::{runtime, transfer, workspace};

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
    /// Run a command headless in a workspace's environment, for pipelines:
    /// `aienv ci [PEER/]WS [ENV] -- CMD...` (its output streamed, its exit code passed
    /// through); `aienv ci runs`, `aienv ci log RUN`.
    Ci(super::ci::CiArgs),
    /// Update a clone from the node it was cloned from (only what changed moves).
    Sync {
        /// The local clone (name or id), or a workspace placed on a peer (its results come
        /// back from there).
        workspace: String,
        /// Sync from this node instead of the origin (one sharing the same workspace), or,
        /// for a placed workspace, from the peer it ran on.
        #[arg(long)]
        peer: Option<String>,
        /// Return once queued instead of following the transfer.
        #[arg(long)]
        no_wait: bool,
        /// Send this clone's changes back to its origin instead (the origin must list this
        /// node as a writer: `aienv ws access WS --writer NODE` there).
        #[arg(long)]
        push: bool,
        /// Where both sides changed the same paths since the last sync: take the origin's
        /// versions (a sync otherwise keeps this clone's own changes and refuses those paths),
        /// or with --push overwrite the origin's. For a placed workspace: its results
        /// overwrite what changed here since it was placed.
        #[arg(long)]
        force: bool,
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
        /// Run it on a trusted peer: its name or id, or `best` (the placement rule's choice).
        #[arg(long, value_name = "PEER|best")]
        on: Option<String>,
        /// With --on: print every candidate's fit and why the peer was chosen.
        #[arg(long, requires = "on")]
        explain: bool,
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
    /// Show the lab's Slurm partitions and what is free in them (`runtime.slurm` on the node).
    Slurm,
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show what this host offers (CPU, memory, disk, GPUs), as a node here would announce it.
    Resources,
    /// git's credential helper protocol, answered from the node's `git.credentials` (git
    /// runs this; people do not).
    #[command(hide = true)]
    GitCredential {
        /// The node's credentials file.
        #[arg(long)]
        file: PathBuf,
        /// get, store or erase.
        operation: String,
    },
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
    pub(super) fn flags(
        &self,
        data_dir: Option<&Path>,
    ) -> Vec<(&'static str, &'static str, String)> {
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
