//! The RuntimeSupervisor actor: runs workspaces' environments and their tools.
//!
//! Data flow: callers hold a [`RuntimeSupervisorHandle`]. [`Run`] looks the workspace up in
//! the store's view, sizes each environment to this host ([`allocation`]), picks the
//! backend (process, docker, libvirt) and builds a [`LaunchPlan`]; a [`runner`] future per
//! environment sets it up, launches it, probes its tools and restarts them per policy,
//! reporting back by messages. The actor alone changes state and publishes
//! `RuntimeChanged` / `ToolReady` events and the [`RuntimesView`] the tool proxy reads.
//!
//! Runtime state (venvs, set-up records, logs) lives in `<data-dir>/runtime/<workspace
//! id>/<environment>/`, never in the workspace: it belongs to this host.

pub mod allocation;
mod backend;
pub mod command;
pub mod detect;
pub mod docker;
mod error;
mod health;
pub mod hooks;
pub mod lending;
#[cfg(feature = "libvirt")]
pub mod libvirt;
mod limits;
mod logs;
mod plan;
pub mod plugin;
mod process;
mod runner;
pub mod sandbox;
pub mod slurm;
mod status;
pub mod terminal;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::NodeEvent;
use crate::model::{EnvironmentSpec, RuntimeKind, SandboxMode};
use crate::resources::{self, Resources};
use crate::shutdown::Shutdown;
use crate::workspace_store::{WorkspaceEntry, WorkspaceStoreHandle};

pub use allocation::{Allocation, Held};
pub use backend::{expand, Backend, LaunchPlan, ToolPlan};
pub use error::RuntimeError;
pub use lending::{Amounts, Borrower, LendLimits};
pub use plan::free_port;

/// Appends to a log file the way the supervisor's logs are written (created when missing).
pub fn append_log(path: &std::path::Path, text: &str) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    logs::append(path, text);
}
use plan::Confinement;
pub use status::{
    EnvState, EnvStatus, ProxyMiss, ProxyTarget, RuntimesView, ToolState, ToolStatus,
};
pub use terminal::{Terminal, TerminalInput, TerminalTarget};

/// Settings of the supervisor.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `<data-dir>/runtime`.
    pub dir: PathBuf,
    /// The data dir (whose file system's free space counts as the host's disk).
    pub data_dir: PathBuf,
    /// This node's id (labels containers).
    pub node_id: Uuid,
    /// libvirt URI used when an environment names none.
    pub libvirt_uri: String,
    /// Start `autostart` environments when the node starts.
    pub autostart: bool,
    /// The user environments run as when the node runs as root (made if missing).
    pub run_as: String,
    /// Workspaces (names or ids) a local admin allows to run with `sandbox: off` although
    /// they were cloned from a peer.
    pub allow_unsandboxed: Vec<String>,
    /// The lab's Slurm cluster, when it has one.
    pub slurm: slurm::SlurmConfig,
    /// What trusted peers' environments may hold together here.
    pub lend: LendLimits,
    /// Deadline of a runtime plugin's `prepare` and `launch`.
    pub plugin_timeout: Duration,
}

impl RuntimeConfig {
    /// Defaults for a node whose data lives in `data_dir`.
    pub fn new(data_dir: &std::path::Path, node_id: Uuid) -> RuntimeConfig {
        RuntimeConfig {
            dir: data_dir.join("runtime"),
            data_dir: data_dir.to_path_buf(),
            node_id,
            libvirt_uri: "qemu:///system".into(),
            autostart: true,
            run_as: "aienv-env".into(),
            allow_unsandboxed: Vec::new(),
            slurm: slurm::SlurmConfig::default(),
            lend: LendLimits::default(),
            plugin_timeout: Duration::from_secs(1800),
        }
    }
}

/// One environment of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvKey {
    /// Workspace id.
    pub workspace: Uuid,
    /// Environment name.
    pub environment: String,
}

/// What a runner tells the supervisor.
#[derive(Debug)]
pub enum RunReport {
    /// The environment entered a state.
    State {
        key: EnvKey,
        state: EnvState,
        error: Option<String>,
    },
    /// Notes from set-up.
    Notes { key: EnvKey, notes: Vec<String> },
    /// The instance started.
    Launched {
        key: EnvKey,
        instance: String,
        terminal: TerminalTarget,
        /// Where the tools listen, when not on this host.
        host: Option<std::net::IpAddr>,
    },
    /// A tool changed.
    Tool {
        key: EnvKey,
        name: String,
        state: ToolState,
        detail: Option<String>,
        pid: Option<u32>,
        restarts: u32,
    },
}

struct Active {
    run_id: u64,
    cancel: Shutdown,
}

/// The actor.
pub struct RuntimeSupervisor {
    config: Arc<RuntimeConfig>,
    store: WorkspaceStoreHandle,
    bus: EventBus,
    envs: HashMap<EnvKey, EnvStatus>,
    active: HashMap<EnvKey, Active>,
    terminals: HashMap<EnvKey, TerminalTarget>,
    next_run: u64,
    host: Resources,
    process: Rc<process::ProcessBackend>,
    docker: Rc<docker::DockerBackend>,
    slurm: Rc<slurm::SlurmBackend>,
    #[cfg(feature = "libvirt")]
    libvirt: Rc<libvirt::LibvirtBackend>,
    view_sender: watch::Sender<Arc<RuntimesView>>,
    /// What this host offers for confinement.
    confinement: Confinement,
    /// Headless commands running now (CI runs): their allocations, and whether a peer's.
    commands: HashMap<u64, (allocation::Allocation, bool)>,
}

impl Actor for RuntimeSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _ = std::fs::create_dir_all(&self.config.dir);
        // A deleted workspace's environments are forgotten (see the StreamHandler below).
        ctx.add_stream(self.bus.stream());
        let killed = process::kill_leftovers(&self.config.dir);
        if killed > 0 {
            tracing::warn!(
                processes = killed,
                "killed tool processes left by an earlier run of the node"
            );
        }
        // Containers a previous run of this node left behind (killed, crashed) go first.
        let docker = self.docker.clone();
        let node = self.config.node_id;
        let autostart = self.config.autostart;
        ctx.wait(
            async move {
                match tokio::time::timeout(Duration::from_secs(5), docker.remove_leftovers(node))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!(containers = n, "removed containers left by an earlier run")
                    }
                    _ => {}
                }
            }
            .into_actor(self)
            .map(move |_, actor, ctx| {
                if autostart {
                    actor.autostart(ctx);
                }
            }),
        );
        ctx.run_interval(Duration::from_secs(30), |actor, ctx| {
            let data_dir = actor.config.data_dir.clone();
            ctx.spawn(
                async move {
                    tokio::task::spawn_blocking(move || resources::detect(&data_dir))
                        .await
                        .ok()
                }
                .into_actor(actor)
                .map(|resources, actor, _| {
                    if let Some(resources) = resources {
                        actor.host = resources;
                    }
                }),
            );
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        for active in self.active.values() {
            active.cancel.trigger();
        }
        Running::Stop
    }
}

/// Starts environments of a workspace.
#[derive(Message)]
#[rtype(result = "Result<Vec<Arc<EnvStatus>>, RuntimeError>")]
struct Start {
    workspace: String,
    environment: Option<String>,
    backend: Option<RuntimeKind>,
    /// The peer it runs for, when a peer placed it here (sized within the lending limits).
    borrower: Option<Borrower>,
}

/// How an environment would be sized for a peer now, or why it would not fit; nothing starts.
#[derive(Message)]
#[rtype(result = "Result<Allocation, String>")]
struct FitForPeer {
    name: String,
    spec: Box<EnvironmentSpec>,
}

/// What this node lends and what peers' environments hold of it now.
#[derive(Message)]
#[rtype(result = "Lending")]
struct LendingNow;

/// The answer to [`LendingNow`].
#[derive(Debug, Clone)]
pub struct Lending {
    /// This host.
    pub host: Resources,
    /// The limits.
    pub limits: LendLimits,
    /// What peers' environments hold.
    pub lent: Amounts,
    /// What is left to lend.
    pub left: Amounts,
    /// What every running environment holds (peers' included), as a share of the host's
    /// CPU cores: the load the placement rule compares.
    pub load: f64,
}

impl Handler<FitForPeer> for RuntimeSupervisor {
    type Result = Result<Allocation, String>;

    fn handle(&mut self, message: FitForPeer, _: &mut Self::Context) -> Self::Result {
        let none = EnvKey {
            workspace: Uuid::nil(),
            environment: String::new(),
        };
        lending::fit(
            &message.name,
            &message.spec,
            &self.host,
            &self.held(&none),
            &self.config.lend,
            &self.lent(&none),
        )
    }
}

impl Handler<LendingNow> for RuntimeSupervisor {
    type Result = MessageResult<LendingNow>;

    fn handle(&mut self, _: LendingNow, _: &mut Self::Context) -> Self::Result {
        let none = EnvKey {
            workspace: Uuid::nil(),
            environment: String::new(),
        };
        let lent = self.lent(&none);
        let cores = self.host.cpu_cores.max(1) as f64;
        let busy: f64 = self
            .envs
            .values()
            .filter(|s| s.state.is_active() && s.backend != RuntimeKind::Slurm)
            .map(|s| s.allocation.as_ref().and_then(|a| a.cpus).unwrap_or(cores))
            .sum();
        MessageResult(Lending {
            left: lending::available(&self.host, &self.config.lend, &lent),
            host: self.host.clone(),
            limits: self.config.lend,
            lent,
            load: busy / cores,
        })
    }
}

/// Stops environments of a workspace (all when `workspace` is `None`).
#[derive(Message)]
#[rtype(result = "Result<Vec<EnvKey>, RuntimeError>")]
struct Stop {
    workspace: Option<String>,
    environment: Option<String>,
}

/// Where a terminal for an environment attaches.
#[derive(Message)]
#[rtype(result = "Result<TerminalTarget, RuntimeError>")]
struct TerminalFor {
    workspace: String,
    environment: Option<String>,
}

impl Handler<Start> for RuntimeSupervisor {
    type Result = Result<Vec<Arc<EnvStatus>>, RuntimeError>;

    fn handle(&mut self, message: Start, ctx: &mut Self::Context) -> Self::Result {
        let entry = self.store.get(&message.workspace)?;
        let names = select_environments(&entry, message.environment.as_deref())?;
        if names.is_empty() {
            return Err(RuntimeError::BadRequest(format!(
                "workspace `{}` has no environments: add one (`aienv env detect {}` proposes one)",
                entry.manifest.name, entry.manifest.name
            )));
        }
        let mut started = Vec::new();
        for name in names {
            started.push(self.start_env(
                &entry,
                &name,
                message.backend,
                message.borrower.clone(),
                ctx,
            )?);
        }
        Ok(started)
    }
}

impl Handler<Stop> for RuntimeSupervisor {
    type Result = Result<Vec<EnvKey>, RuntimeError>;

    fn handle(&mut self, message: Stop, _: &mut Self::Context) -> Self::Result {
        let workspace = match &message.workspace {
            Some(target) => Some(self.store.get(target)?),
            None => None,
        };
        if let (Some(entry), Some(environment)) = (&workspace, &message.environment) {
            select_environments(entry, Some(environment))?;
        }
        let keys: Vec<EnvKey> = self
            .active
            .keys()
            .filter(|key| {
                workspace
                    .as_ref()
                    .is_none_or(|w| w.manifest.id == key.workspace)
            })
            .filter(|key| {
                message
                    .environment
                    .as_ref()
                    .is_none_or(|e| *e == key.environment)
            })
            .cloned()
            .collect();
        for key in &keys {
            tracing::info!(workspace = %key.workspace, environment = %key.environment, "stopping");
            self.active[key].cancel.trigger();
        }
        Ok(keys)
    }
}

impl Handler<TerminalFor> for RuntimeSupervisor {
    type Result = Result<TerminalTarget, RuntimeError>;

    fn handle(&mut self, message: TerminalFor, _: &mut Self::Context) -> Self::Result {
        let entry = self.store.get(&message.workspace)?;
        let names = select_environments(&entry, message.environment.as_deref())?;
        names
            .iter()
            .map(|name| EnvKey {
                workspace: entry.manifest.id,
                environment: name.clone(),
            })
            .find_map(|key| self.terminals.get(&key).cloned())
            .ok_or_else(|| {
                RuntimeError::NotRunning(match &message.environment {
                    Some(name) => format!("{}/{name}", entry.manifest.name),
                    None => entry.manifest.name.clone(),
                })
            })
    }
}

impl Handler<runner::Envelope> for RuntimeSupervisor {
    type Result = ();

    fn handle(&mut self, envelope: runner::Envelope, _: &mut Self::Context) {
        let key = match &envelope.report {
            RunReport::State { key, .. }
            | RunReport::Notes { key, .. }
            | RunReport::Launched { key, .. }
            | RunReport::Tool { key, .. } => key.clone(),
        };
        // Reports of a run that was replaced meanwhile are old news.
        if self
            .active
            .get(&key)
            .is_none_or(|a| a.run_id != envelope.run_id)
        {
            return;
        }
        let Some(status) = self.envs.get_mut(&key) else {
            return;
        };
        let mut ready = None;
        match envelope.report {
            RunReport::State { state, error, .. } => {
                if status.state == state && error.is_none() {
                    return;
                }
                status.state = state;
                if error.is_some() {
                    status.error = error;
                }
                if state == EnvState::Running && status.ready_at.is_none() {
                    status.ready_at = Some(Utc::now());
                }
                if matches!(state, EnvState::Stopped | EnvState::Failed) {
                    self.active.remove(&key);
                    self.terminals.remove(&key);
                    status.instance = None;
                    for tool in &mut status.tools {
                        if tool.state != ToolState::Unavailable {
                            tool.state = ToolState::Stopped;
                            tool.pid = None;
                        }
                    }
                    tracing::info!(workspace = %status.workspace_name, environment = %status.environment, state = state.as_str(), error = ?status.error, "environment ended");
                }
            }
            RunReport::Notes { notes, .. } => status.notes.extend(notes),
            RunReport::Launched {
                instance,
                terminal,
                host,
                ..
            } => {
                tracing::info!(workspace = %status.workspace_name, environment = %status.environment, %instance, "environment launched");
                status.instance = Some(instance);
                if let Some(host) = host {
                    for tool in &mut status.tools {
                        if let Some(upstream) = &mut tool.upstream {
                            upstream.set_ip(host);
                        }
                    }
                }
                self.terminals.insert(key.clone(), terminal);
            }
            RunReport::Tool {
                name,
                state,
                detail,
                pid,
                restarts,
                ..
            } => {
                if let Some(tool) = status.tools.iter_mut().find(|t| t.name == name) {
                    if state == ToolState::Ready && tool.ready_at.is_none() {
                        tool.ready_at = Some(Utc::now());
                        ready = Some(name.clone());
                    }
                    tool.state = state;
                    // A stop keeps the last word on why a tool ended.
                    if detail.is_some() || matches!(state, ToolState::Starting | ToolState::Ready) {
                        tool.detail = detail;
                    }
                    if pid.is_some() {
                        tool.pid = pid;
                    }
                    tool.restarts = restarts.max(tool.restarts);
                }
            }
        }
        status.updated = Utc::now();
        self.publish(&key, ready);
    }
}

impl RuntimeSupervisor {
    fn held(&self, except: &EnvKey) -> Held {
        let mut held = Held::default();
        // Jobs a scheduler placed elsewhere hold nothing of this host.
        for (key, status) in &self.envs {
            if key != except && status.state.is_active() && status.backend != RuntimeKind::Slurm {
                if let Some(allocation) = &status.allocation {
                    held.add(allocation);
                }
            }
        }
        for (allocation, _) in self.commands.values() {
            held.add(allocation);
        }
        held
    }

    /// What peers' environments (other than `except`) hold.
    fn lent(&self, except: &EnvKey) -> Amounts {
        let mut lent = Amounts::default();
        for (key, status) in &self.envs {
            if key != except && status.state.is_active() && status.borrower.is_some() {
                if let Some(allocation) = &status.allocation {
                    lent.add(allocation);
                }
            }
        }
        for (allocation, _) in self.commands.values().filter(|(_, lent)| *lent) {
            lent.add(allocation);
        }
        lent
    }

    fn backend(&self, kind: RuntimeKind) -> Result<Rc<dyn Backend>, RuntimeError> {
        match kind {
            RuntimeKind::Process | RuntimeKind::Auto => Ok(self.process.clone()),
            RuntimeKind::Docker => Ok(self.docker.clone()),
            RuntimeKind::Slurm => Ok(self.slurm.clone()),
            #[cfg(feature = "libvirt")]
            RuntimeKind::Libvirt => Ok(self.libvirt.clone()),
            #[cfg(not(feature = "libvirt"))]
            RuntimeKind::Libvirt => Err(RuntimeError::BackendUnavailable {
                backend: "libvirt",
                reason: "this aienv was built without the `libvirt` cargo feature; rebuild with `cargo build --release --features libvirt` (needs libvirt's development files, Debian: libvirt-dev)".into(),
            }),
            RuntimeKind::Plugin(name) => Ok(Rc::new(plugin::PluginBackend::find(
                name,
                &self.config.data_dir,
                self.config.plugin_timeout,
            )?)),
        }
    }

    /// Which backend an environment runs on: the one asked for, else the spec's, else
    /// docker for a container spec, libvirt for a VM spec, processes otherwise.
    fn choose_backend(spec: &EnvironmentSpec, asked: Option<RuntimeKind>) -> RuntimeKind {
        match asked
            .filter(|k| *k != RuntimeKind::Auto)
            .unwrap_or(spec.runtime)
        {
            RuntimeKind::Auto if spec.docker.is_some() => RuntimeKind::Docker,
            RuntimeKind::Auto if spec.libvirt.is_some() => RuntimeKind::Libvirt,
            RuntimeKind::Auto if spec.slurm.is_some() => RuntimeKind::Slurm,
            RuntimeKind::Auto => RuntimeKind::Process,
            kind => kind,
        }
    }

    fn start_env(
        &mut self,
        entry: &WorkspaceEntry,
        name: &str,
        asked: Option<RuntimeKind>,
        borrower: Option<Borrower>,
        ctx: &mut Context<Self>,
    ) -> Result<Arc<EnvStatus>, RuntimeError> {
        let key = EnvKey {
            workspace: entry.manifest.id,
            environment: name.to_string(),
        };
        if self.active.contains_key(&key) {
            // Already running (or starting): `run` is idempotent.
            return Ok(Arc::new(self.envs[&key].clone()));
        }
        let spec = entry.environments[name].clone();
        let kind = Self::choose_backend(&spec, asked);
        let backend = self.backend(kind)?;
        if self.host.cpu_cores == 0 {
            self.host = resources::detect(&self.config.data_dir);
        }
        if borrower.is_some()
            && matches!(
                kind,
                RuntimeKind::Slurm | RuntimeKind::Libvirt | RuntimeKind::Plugin(_)
            )
        {
            return Err(RuntimeError::BadRequest(format!(
                "environment `{name}` runs on {}, which this node does not lend to peers: only processes and containers run for peers",
                kind.as_str()
            )));
        }
        let allocation = if kind == RuntimeKind::Slurm {
            allocation::requested(&spec)
        } else if borrower.is_some() {
            lending::fit(
                name,
                &spec,
                &self.host,
                &self.held(&key),
                &self.config.lend,
                &self.lent(&key),
            )
            .map_err(|reason| RuntimeError::DoesNotFit {
                environment: name.to_string(),
                reason,
            })?
        } else {
            allocation::allocate(name, &spec, &self.host, &self.held(&key)).map_err(|reason| {
                RuntimeError::DoesNotFit {
                    environment: name.to_string(),
                    reason,
                }
            })?
        };
        let plan = plan::launch_plan(
            &self.config,
            &self.confinement,
            entry,
            name,
            &spec,
            kind,
            allocation.clone(),
        )?;
        let mut notes = allocation.notes.clone();
        let sandbox = match kind {
            RuntimeKind::Process => {
                if spec.sandbox != SandboxMode::Off && !plan.sandbox.confined() {
                    notes.push(
                        "not confined: bubblewrap is not installed (Debian: apt-get install bubblewrap)"
                            .into(),
                    );
                }
                plan.sandbox.describe()
            }
            RuntimeKind::Docker if spec.sandbox == SandboxMode::Off => {
                "off: container with the engine's default capabilities".into()
            }
            RuntimeKind::Docker => format!(
                "{}: container without privileges, capabilities dropped, no-new-privileges{}",
                spec.sandbox.as_str(),
                if spec.sandbox == SandboxMode::Strict {
                    ", as an unprivileged user"
                } else {
                    ""
                }
            ),
            RuntimeKind::Slurm => {
                "a Slurm job on a compute node, as the user slurmrestd authenticates".into()
            }
            _ => "virtual machine".into(),
        };
        self.next_run += 1;
        let run_id = self.next_run;
        let cancel = Shutdown::new();
        let now = Utc::now();
        let status = EnvStatus {
            workspace_id: entry.manifest.id,
            workspace_name: entry.manifest.name.clone(),
            environment: name.to_string(),
            backend: kind,
            state: EnvState::SettingUp,
            notes,
            sandbox,
            allocation: Some(allocation),
            borrower,
            instance: None,
            tools: plan
                .tools
                .iter()
                .map(|tool| ToolStatus {
                    name: tool.name.clone(),
                    kind: tool.kind,
                    state: if tool.runs() {
                        ToolState::Pending
                    } else {
                        ToolState::Ready
                    },
                    url: if tool.runs() {
                        format!(
                            "{}{}",
                            tool.base_path,
                            spec.tools
                                .iter()
                                .find(|t| t.name == tool.name)
                                .and_then(|t| t.path.as_deref())
                                .unwrap_or("")
                                .trim_start_matches('/')
                        )
                    } else {
                        format!("/#run/{}/{}", entry.manifest.name, name)
                    },
                    base_path: tool.base_path.clone(),
                    upstream: tool
                        .runs()
                        .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], tool.port))),
                    pid: None,
                    restarts: 0,
                    detail: None,
                    token: tool.token.clone(),
                    strip_prefix: tool.strip_prefix,
                    ready_at: None,
                })
                .collect(),
            error: None,
            log_dir: plan.log_dir(),
            autostart: spec.autostart,
            started: Some(now),
            ready_at: None,
            updated: now,
        };
        tracing::info!(workspace = %entry.manifest.name, environment = name, backend = kind.as_str(), allocation = ?status.allocation, "starting environment");
        self.envs.insert(key.clone(), status);
        self.active.insert(
            key.clone(),
            Active {
                run_id,
                cancel: cancel.clone(),
            },
        );
        self.publish(&key, None);
        ctx.spawn(
            runner::run(runner::Run {
                key: key.clone(),
                run_id,
                plan,
                backend,
                supervisor: ctx.address(),
                cancel,
            })
            .into_actor(self),
        );
        Ok(Arc::new(self.envs[&key].clone()))
    }

    fn autostart(&mut self, ctx: &mut Context<Self>) {
        let view = self.store.view();
        let wanted: Vec<(Arc<WorkspaceEntry>, String)> = view
            .iter()
            .flat_map(|entry| {
                entry
                    .environments
                    .iter()
                    .filter(|(_, spec)| spec.autostart)
                    .map(|(name, _)| (entry.clone(), name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (entry, name) in wanted {
            tracing::info!(workspace = %entry.manifest.name, environment = %name, "autostart");
            if let Err(error) = self.start_env(&entry, &name, None, None, ctx) {
                tracing::warn!(workspace = %entry.manifest.name, environment = %name, %error, "autostart failed");
            }
        }
    }

    fn publish(&mut self, key: &EnvKey, ready: Option<String>) {
        let Some(status) = self.envs.get(key) else {
            return;
        };
        let status = Arc::new(status.clone());
        let sender = &self.view_sender;
        let envs = &self.envs;
        self.bus
            .publish(NodeEvent::RuntimeChanged(status.clone()), |seq| {
                sender.send_replace(Arc::new(build_view(envs, seq)));
            });
        if let Some(tool) = ready {
            self.bus
                .publish(NodeEvent::ToolReady { status, tool }, |_| {});
        }
    }
}

/// Forgets the environments of a deleted workspace (its deletion stopped them first), so the
/// view lists only environments of workspaces that exist.
impl StreamHandler<Arc<crate::event_bus::Envelope>> for RuntimeSupervisor {
    fn handle(&mut self, envelope: Arc<crate::event_bus::Envelope>, _: &mut Self::Context) {
        let NodeEvent::WorkspaceChanged(changed) = &envelope.event else {
            return;
        };
        if changed.change != crate::events::WorkspaceChange::Deleted {
            return;
        }
        let before = self.envs.len();
        self.envs
            .retain(|_, status| status.workspace_id != changed.id || status.state.is_active());
        if self.envs.len() != before {
            let seq = self.view_sender.borrow().seq;
            self.view_sender
                .send_replace(Arc::new(build_view(&self.envs, seq)));
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

fn build_view(envs: &HashMap<EnvKey, EnvStatus>, seq: u64) -> RuntimesView {
    let mut list: Vec<Arc<EnvStatus>> = envs.values().cloned().map(Arc::new).collect();
    list.sort_by(|a, b| {
        (a.workspace_name.as_str(), a.environment.as_str())
            .cmp(&(b.workspace_name.as_str(), b.environment.as_str()))
    });
    RuntimesView { seq, envs: list }
}

/// The environments `wanted` names, or all of the workspace's.
fn select_environments(
    entry: &WorkspaceEntry,
    wanted: Option<&str>,
) -> Result<Vec<String>, RuntimeError> {
    match wanted {
        Some(name) if entry.environments.contains_key(name) => Ok(vec![name.to_string()]),
        Some(name) => Err(RuntimeError::EnvironmentNotFound {
            workspace: entry.manifest.name.clone(),
            name: name.to_string(),
            known: entry.environments.keys().cloned().collect(),
        }),
        None => Ok(entry.environments.keys().cloned().collect()),
    }
}

/// Cloneable handle to the supervisor.
#[derive(Clone)]
pub struct RuntimeSupervisorHandle {
    addr: Addr<RuntimeSupervisor>,
    view: watch::Receiver<Arc<RuntimesView>>,
    store: WorkspaceStoreHandle,
    dir: PathBuf,
    data_dir: PathBuf,
    slurm: slurm::SlurmConfig,
    /// The plugins' last `check` answers and when they were asked.
    plugins: Arc<tokio::sync::Mutex<Option<PluginAnswers>>>,
}

/// When the plugins were last asked, and what they answered.
type PluginAnswers = (std::time::Instant, Vec<plugin::PluginInfo>);

impl RuntimeSupervisorHandle {
    /// Starts the supervisor on the current arbiter.
    pub fn start(
        config: RuntimeConfig,
        store: WorkspaceStoreHandle,
        bus: EventBus,
    ) -> RuntimeSupervisorHandle {
        let (view_sender, view) = watch::channel(Arc::new(RuntimesView::default()));
        let dir = config.dir.clone();
        let data_dir = config.data_dir.clone();
        let slurm_config = config.slurm.clone();
        let host = resources::detect(&config.data_dir);
        let confinement = Confinement::detect(&config);
        let slurm = Rc::new(slurm::SlurmBackend::new(config.slurm.clone()));
        #[cfg(feature = "libvirt")]
        let libvirt = Rc::new(libvirt::LibvirtBackend::new(&config.libvirt_uri));
        let addr = RuntimeSupervisor {
            config: Arc::new(config),
            store: store.clone(),
            bus,
            envs: HashMap::new(),
            active: HashMap::new(),
            terminals: HashMap::new(),
            next_run: 0,
            host,
            process: Rc::new(process::ProcessBackend),
            docker: Rc::new(docker::DockerBackend::default()),
            slurm,
            #[cfg(feature = "libvirt")]
            libvirt,
            view_sender,
            confinement,
            commands: HashMap::new(),
        }
        .start();
        RuntimeSupervisorHandle {
            addr,
            view,
            store,
            dir,
            data_dir,
            slurm: slurm_config,
            plugins: Arc::default(),
        }
    }

    /// The lab's Slurm partitions and what is free in them now; `None` when this node has no
    /// Slurm configured.
    pub async fn slurm_partitions(&self) -> Result<Option<Vec<slurm::Partition>>, RuntimeError> {
        if self.slurm.url.is_empty() {
            return Ok(None);
        }
        let backend = slurm::SlurmBackend::new(self.slurm.clone());
        backend.partitions().await.map(Some)
    }

    /// The current read view.
    pub fn view(&self) -> Arc<RuntimesView> {
        self.view.borrow().clone()
    }

    /// Resolves when the run of `environment` of `workspace_id` that is active now ends
    /// (stopped, failed, or replaced by a new run); at once when none is active. Terminals
    /// wait on it: Stop ends every shell of the environment.
    pub fn run_ended(
        &self,
        workspace_id: Uuid,
        environment: &str,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let mut view = self.view.clone();
        let environment = environment.to_string();
        let run_of = move |view: &RuntimesView| {
            view.envs
                .iter()
                .find(|e| e.workspace_id == workspace_id && e.environment == environment)
                .filter(|e| e.state.is_active() && e.state != EnvState::Stopping)
                .map(|e| e.started)
        };
        let current = run_of(&view.borrow());
        async move {
            let Some(started) = current else {
                return;
            };
            while view.changed().await.is_ok() {
                if run_of(&view.borrow()) != Some(started) {
                    return;
                }
            }
        }
    }

    /// Every environment of `workspace` with its state (stopped ones included).
    pub fn status(&self, workspace: &str) -> Result<Vec<Arc<EnvStatus>>, RuntimeError> {
        let entry = self.store.get(workspace)?;
        let view = self.view();
        Ok(entry
            .environments
            .iter()
            .map(|(name, spec)| {
                view.find(entry.manifest.id, name).unwrap_or_else(|| {
                    let log_dir = self
                        .dir
                        .join(entry.manifest.id.to_string())
                        .join(name)
                        .join("logs");
                    Arc::new(stopped_status(&entry, name, spec, log_dir))
                })
            })
            .collect())
    }

    /// Starts the environments (all, or `environment`) of `workspace`.
    pub async fn run(
        &self,
        workspace: &str,
        environment: Option<&str>,
        backend: Option<RuntimeKind>,
    ) -> Result<Vec<Arc<EnvStatus>>, RuntimeError> {
        self.addr
            .send(Start {
                workspace: workspace.to_string(),
                environment: environment.map(str::to_string),
                backend,
                borrower: None,
            })
            .await
            .map_err(|_| RuntimeError::Gone)?
    }

    /// Starts `environment` of `workspace` for a trusted peer, sized within what this node
    /// lends (see [`lending`]).
    pub async fn run_for_peer(
        &self,
        workspace: &str,
        environment: &str,
        borrower: Borrower,
    ) -> Result<Arc<EnvStatus>, RuntimeError> {
        let mut started = self
            .addr
            .send(Start {
                workspace: workspace.to_string(),
                environment: Some(environment.to_string()),
                backend: None,
                borrower: Some(borrower),
            })
            .await
            .map_err(|_| RuntimeError::Gone)??;
        started.pop().ok_or(RuntimeError::Gone)
    }

    /// How `spec` would be sized for a peer now, or why it would not fit.
    pub async fn fit_for_peer(
        &self,
        name: &str,
        spec: EnvironmentSpec,
    ) -> Result<Result<Allocation, String>, RuntimeError> {
        self.addr
            .send(FitForPeer {
                name: name.to_string(),
                spec: Box::new(spec),
            })
            .await
            .map_err(|_| RuntimeError::Gone)
    }

    /// Runs a command headless in an environment (a CI run).
    pub async fn run_command(
        &self,
        request: command::RunCommand,
    ) -> Result<command::CommandOutcome, RuntimeError> {
        self.addr
            .send(request)
            .await
            .map_err(|_| RuntimeError::Gone)?
    }

    /// Every runtime plugin on this host, with how its `check` went: asked all at once, at
    /// most every 15 s (callers meanwhile share the last answers, or wait for the one under
    /// way).
    pub async fn plugins(&self) -> Vec<plugin::PluginInfo> {
        let mut cached = self.plugins.lock().await;
        if let Some((at, infos)) = cached.as_ref() {
            if at.elapsed() < Duration::from_secs(15) {
                return infos.clone();
            }
        }
        let found = plugin::PluginBackend::discover(&self.data_dir);
        let infos = futures_util::future::join_all(found.iter().map(|p| p.info())).await;
        *cached = Some((std::time::Instant::now(), infos.clone()));
        infos
    }

    /// Where a clone's `post_clone` hook is asked for.
    pub fn post_clone_recipient(&self) -> Recipient<hooks::PostClone> {
        self.addr.clone().recipient()
    }

    /// What this node lends and what peers hold of it now.
    pub async fn lending(&self) -> Result<Lending, RuntimeError> {
        self.addr
            .send(LendingNow)
            .await
            .map_err(|_| RuntimeError::Gone)
    }

    /// Waits until the environments `keys` have settled (every tool answering, or failed),
    /// at most `timeout`; their statuses then.
    pub async fn wait_settled(
        &self,
        keys: &[(Uuid, String)],
        timeout: Duration,
    ) -> Vec<Arc<EnvStatus>> {
        let mut view = self.view.clone();
        let settled = |view: &RuntimesView| {
            keys.iter()
                .all(|(id, name)| view.find(*id, name).is_none_or(|s| s.settled()))
        };
        let _ = tokio::time::timeout(timeout, view.wait_for(|v| settled(v))).await;
        let view = self.view();
        keys.iter()
            .filter_map(|(id, name)| view.find(*id, name))
            .collect()
    }

    /// Stops the environments (all, or `environment`) of `workspace` (every environment on
    /// the node when `None`) and waits until they stopped, at most `timeout`.
    pub async fn stop(
        &self,
        workspace: Option<&str>,
        environment: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Arc<EnvStatus>>, RuntimeError> {
        let keys = self
            .addr
            .send(Stop {
                workspace: workspace.map(str::to_string),
                environment: environment.map(str::to_string),
            })
            .await
            .map_err(|_| RuntimeError::Gone)??;
        let mut view = self.view.clone();
        let stopped = |view: &RuntimesView| {
            keys.iter().all(|key| {
                view.find(key.workspace, &key.environment)
                    .is_none_or(|s| !s.state.is_active())
            })
        };
        let _ = tokio::time::timeout(timeout, view.wait_for(|v| stopped(v))).await;
        let view = self.view();
        Ok(keys
            .iter()
            .filter_map(|key| view.find(key.workspace, &key.environment))
            .collect())
    }

    /// Where a terminal of a running environment of `workspace` attaches.
    pub async fn terminal(
        &self,
        workspace: &str,
        environment: Option<&str>,
    ) -> Result<TerminalTarget, RuntimeError> {
        self.addr
            .send(TerminalFor {
                workspace: workspace.to_string(),
                environment: environment.map(str::to_string),
            })
            .await
            .map_err(|_| RuntimeError::Gone)?
    }

    /// Proposes an environment for `workspace` from its project files (nothing written).
    pub async fn detect(&self, workspace: &str) -> Result<detect::Detection, RuntimeError> {
        let entry = self.store.get(workspace)?;
        let root = entry.path.clone();
        let projects: Vec<String> = entry
            .manifest
            .projects
            .iter()
            .map(|p| p.path.clone())
            .collect();
        tokio::task::spawn_blocking(move || detect::detect(&root, &projects))
            .await
            .map_err(|e| RuntimeError::BadRequest(e.to_string()))
    }
}

fn stopped_status(
    entry: &WorkspaceEntry,
    name: &str,
    spec: &EnvironmentSpec,
    log_dir: PathBuf,
) -> EnvStatus {
    EnvStatus {
        workspace_id: entry.manifest.id,
        workspace_name: entry.manifest.name.clone(),
        environment: name.to_string(),
        backend: RuntimeSupervisor::choose_backend(spec, None),
        state: EnvState::Stopped,
        sandbox: spec.sandbox.as_str().to_string(),
        allocation: None,
        borrower: None,
        instance: None,
        tools: spec
            .tools
            .iter()
            .map(|tool| ToolStatus {
                name: tool.name.clone(),
                kind: tool.kind,
                state: ToolState::Stopped,
                url: format!("/w/{}/{}/", entry.manifest.name, tool.name),
                base_path: format!("/w/{}/{}/", entry.manifest.name, tool.name),
                upstream: None,
                pid: None,
                restarts: 0,
                detail: None,
                token: None,
                strip_prefix: tool.strips_prefix(),
                ready_at: None,
            })
            .collect(),
        error: None,
        notes: Vec::new(),
        log_dir,
        autostart: spec.autostart,
        started: None,
        ready_at: None,
        updated: Utc::now(),
    }
}

/// Log files of an environment's run, by label (`setup`, a tool's name, `container`).
pub fn log_files(status: &EnvStatus) -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&status.log_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(label) = name.strip_suffix(".log") {
                files.insert(label.to_string(), entry.path());
            }
        }
    }
    files
}
