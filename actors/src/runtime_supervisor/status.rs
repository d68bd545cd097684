//! What the supervisor publishes: each environment's state, allocation and tools, and the
//! read view the tool proxy and the status API use without a round trip to the actor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{RuntimeKind, ToolKind};

use super::allocation::Allocation;

/// States of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvState {
    /// Not running.
    Stopped,
    /// Running its set-up.
    SettingUp,
    /// Waiting in a scheduler's queue (a Slurm job not yet started; the notes say why).
    Queued,
    /// Started; tools not yet answering.
    Starting,
    /// Every tool that can run answers.
    Running,
    /// Running, but a tool failed or stopped answering.
    Degraded,
    /// Being stopped.
    Stopping,
    /// Set-up, start or every tool failed (see `error`).
    Failed,
}

impl EnvState {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvState::Stopped => "stopped",
            EnvState::SettingUp => "setting-up",
            EnvState::Queued => "queued",
            EnvState::Starting => "starting",
            EnvState::Running => "running",
            EnvState::Degraded => "degraded",
            EnvState::Stopping => "stopping",
            EnvState::Failed => "failed",
        }
    }

    /// Whether something of the environment is (or is about to be) running.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            EnvState::SettingUp
                | EnvState::Queued
                | EnvState::Starting
                | EnvState::Running
                | EnvState::Degraded
                | EnvState::Stopping
        )
    }
}

/// States of a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolState {
    /// Waiting for the environment to start.
    Pending,
    /// Started, not answering yet.
    Starting,
    /// Answering.
    Ready,
    /// Stopped answering its health checks.
    Unhealthy,
    /// Waiting to be started again.
    Restarting,
    /// Ended and not restarted (per policy).
    Exited,
    /// Ended too often, or never answered.
    Failed,
    /// Cannot run on this host (see `detail` for what to install).
    Unavailable,
    /// The environment is stopped.
    Stopped,
}

impl ToolState {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolState::Pending => "pending",
            ToolState::Starting => "starting",
            ToolState::Ready => "ready",
            ToolState::Unhealthy => "unhealthy",
            ToolState::Restarting => "restarting",
            ToolState::Exited => "exited",
            ToolState::Failed => "failed",
            ToolState::Unavailable => "unavailable",
            ToolState::Stopped => "stopped",
        }
    }
}

/// One tool of an environment.
#[derive(Debug, Clone)]
pub struct ToolStatus {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ToolKind,
    /// State.
    pub state: ToolState,
    /// The URL path that opens it on this node (`/w/<workspace>/<tool>/<path>`); for the
    /// terminal, the dashboard's terminal view.
    pub url: String,
    /// `/w/<workspace>/<tool>/`.
    pub base_path: String,
    /// Where the proxy sends requests (loopback).
    pub upstream: Option<SocketAddr>,
    /// Process id of a process tool.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Exit status, failing check, or what to install.
    pub detail: Option<String>,
    /// The secret the proxy presents to the tool; never shown.
    pub token: Option<String>,
    /// Whether the proxy strips the base path.
    pub strip_prefix: bool,
    /// When it first answered in this run.
    pub ready_at: Option<DateTime<Utc>>,
}

/// One environment of a workspace.
#[derive(Debug, Clone)]
pub struct EnvStatus {
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// Its name.
    pub workspace_name: String,
    /// The environment's name.
    pub environment: String,
    /// The backend it runs on.
    pub backend: RuntimeKind,
    /// State.
    pub state: EnvState,
    /// What this host gives it.
    pub allocation: Option<Allocation>,
    /// The peer it runs for, when a peer placed it here.
    pub borrower: Option<super::Borrower>,
    /// What runs (`processes (…)`, `container …`, `domain …`).
    pub instance: Option<String>,
    /// Tools.
    pub tools: Vec<ToolStatus>,
    /// Why it failed.
    pub error: Option<String>,
    /// Decisions worth telling (variant chosen, less than preferred, skipped steps).
    pub notes: Vec<String>,
    /// How its processes are confined (`standard: …`, `off: not confined; …`).
    pub sandbox: String,
    /// Its log files' directory.
    pub log_dir: PathBuf,
    /// Whether it starts with the node.
    pub autostart: bool,
    /// When `run` was asked.
    pub started: Option<DateTime<Utc>>,
    /// When every tool first answered.
    pub ready_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated: DateTime<Utc>,
}

impl EnvStatus {
    /// Whether the environment has settled: running with every tool answering (or unable
    /// to run), failed, or stopped.
    pub fn settled(&self) -> bool {
        match self.state {
            EnvState::Running | EnvState::Failed | EnvState::Stopped => true,
            EnvState::Degraded => self.tools.iter().all(|t| {
                !matches!(
                    t.state,
                    ToolState::Starting | ToolState::Restarting | ToolState::Pending
                )
            }),
            _ => false,
        }
    }
}

/// Where the proxy sends a tool's requests.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// The tool's loopback address.
    pub upstream: SocketAddr,
    /// Its base path.
    pub base_path: String,
    /// Strip the base path before forwarding.
    pub strip_prefix: bool,
    /// Token to present (`Authorization: token …`).
    pub token: Option<String>,
    /// Kind.
    pub kind: ToolKind,
}

/// Why a tool cannot be reached through the proxy.
#[derive(Debug, Clone)]
pub enum ProxyMiss {
    /// No such workspace or tool is known.
    Unknown,
    /// Known but not running (state, detail).
    NotRunning(String),
}

/// The published read view.
#[derive(Debug, Clone, Default)]
pub struct RuntimesView {
    /// Sequence number of the last event reflected here.
    pub seq: u64,
    /// Environments that ran since the node started.
    pub envs: Vec<Arc<EnvStatus>>,
}

impl RuntimesView {
    /// The environment `environment` of workspace `workspace` (id).
    pub fn find(&self, workspace: Uuid, environment: &str) -> Option<Arc<EnvStatus>> {
        self.envs
            .iter()
            .find(|e| e.workspace_id == workspace && e.environment == environment)
            .cloned()
    }

    /// Environments currently running (or starting).
    pub fn active(&self) -> usize {
        self.envs.iter().filter(|e| e.state.is_active()).count()
    }

    /// Where `/w/<workspace>/<tool>/` goes.
    pub fn proxy_target(&self, workspace: &str, tool: &str) -> Result<ProxyTarget, ProxyMiss> {
        let mut known = None;
        for env in self.envs.iter().filter(|e| e.workspace_name == workspace) {
            for status in env.tools.iter().filter(|t| t.name == tool) {
                match (status.state, status.upstream) {
                    (
                        ToolState::Ready | ToolState::Unhealthy | ToolState::Starting,
                        Some(upstream),
                    ) if env.state.is_active() => {
                        return Ok(ProxyTarget {
                            upstream,
                            base_path: status.base_path.clone(),
                            strip_prefix: status.strip_prefix,
                            token: status.token.clone(),
                            kind: status.kind,
                        })
                    }
                    _ => {
                        known = Some(format!(
                            "tool `{tool}` of `{workspace}` is {}{}",
                            status.state.as_str(),
                            status
                                .detail
                                .as_deref()
                                .map_or(String::new(), |d| format!(": {d}"))
                        ))
                    }
                }
            }
        }
        Err(known.map_or(ProxyMiss::Unknown, ProxyMiss::NotRunning))
    }
}
