//! Environments at run time: run and stop, allocations, tools, status and detection.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /workspaces/{ws}/run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// One environment (all of the workspace's when omitted).
    #[serde(default)]
    pub environment: Option<String>,
    /// `process`, `docker`, `libvirt` or `auto` (the spec's choice when omitted).
    #[serde(default)]
    pub backend: Option<String>,
    /// Answer once every tool answers or failed (at most `timeout_seconds`).
    #[serde(default)]
    pub wait: bool,
    /// How long `wait` waits (default 600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Run it on a trusted peer instead: its name or id, or `best` (the placement rule's
    /// choice). Needs `environment`.
    #[serde(default)]
    pub on: Option<String>,
}

/// `POST /workspaces/{ws}/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// One environment (all of the workspace's when omitted).
    #[serde(default)]
    pub environment: Option<String>,
}

/// What an environment got on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocationDto {
    /// Variant chosen.
    pub variant: Option<String>,
    /// CPU quota in cores (`null`: unlimited).
    pub cpus: Option<f64>,
    /// Pinned cores.
    pub cpuset: Vec<u32>,
    /// Memory limit, bytes (`null`: unlimited).
    pub memory: Option<u64>,
    /// GPU indexes.
    pub gpus: Vec<u32>,
    /// Thread and device variables set.
    pub env: BTreeMap<String, String>,
    /// Decisions worth knowing.
    pub notes: Vec<String>,
}

impl From<&aienv_actors::runtime_supervisor::Allocation> for AllocationDto {
    fn from(a: &aienv_actors::runtime_supervisor::Allocation) -> AllocationDto {
        AllocationDto {
            variant: a.variant.clone(),
            cpus: a.cpus,
            cpuset: a.cpuset.clone(),
            memory: a.memory,
            gpus: a.gpus.clone(),
            env: a.env.clone(),
            notes: a.notes.clone(),
        }
    }
}

/// One tool of an environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolDto {
    /// Name.
    pub name: String,
    /// `jupyterlab`, `vscode`, `terminal` or `http`.
    pub kind: String,
    /// `pending`, `starting`, `ready`, `unhealthy`, `restarting`, `exited`, `failed`,
    /// `unavailable` or `stopped`.
    pub state: String,
    /// Path on this node that opens it.
    pub url: String,
    /// Process id, for a process tool.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Exit status, failing health check, or what to install.
    pub detail: Option<String>,
    /// When it first answered in this run.
    pub ready_at: Option<DateTime<Utc>>,
}

/// One environment and its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentStatusDto {
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Workspace name.
    pub workspace: String,
    /// Environment name.
    pub environment: String,
    /// `process`, `docker` or `libvirt`.
    pub backend: String,
    /// `stopped`, `setting-up`, `queued` (a Slurm job waiting), `starting`, `running`,
    /// `degraded`, `stopping` or `failed`.
    pub state: String,
    /// What this host gives it (while it runs).
    pub allocation: Option<AllocationDto>,
    /// What runs.
    pub instance: Option<String>,
    /// Tools.
    pub tools: Vec<ToolDto>,
    /// Why it failed.
    pub error: Option<String>,
    /// Decisions worth knowing.
    pub notes: Vec<String>,
    /// How its processes are confined: `standard: …`, `strict: …`, `off: …` (unboxed), or
    /// what a container or VM gets.
    pub sandbox: String,
    /// Starts with the node.
    pub autostart: bool,
    /// When `run` was asked.
    pub started: Option<DateTime<Utc>>,
    /// When every tool first answered.
    pub ready_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// The peer it runs for, when a trusted peer placed it on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lent_to: Option<BorrowerDto>,
    /// Where it runs when this node placed it on a peer (its state is then the peer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<super::PlacementDto>,
}

/// The peer (and person there) an environment runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowerDto {
    /// The peer's node id.
    pub peer_id: Uuid,
    /// Its name as trusted here.
    pub peer_name: String,
    /// Who asked on that peer.
    pub user: String,
}

impl From<&aienv_actors::runtime_supervisor::Borrower> for BorrowerDto {
    fn from(b: &aienv_actors::runtime_supervisor::Borrower) -> BorrowerDto {
        BorrowerDto {
            peer_id: b.peer,
            peer_name: b.peer_name.clone(),
            user: b.user.clone(),
        }
    }
}

impl From<&aienv_actors::runtime_supervisor::EnvStatus> for EnvironmentStatusDto {
    fn from(s: &aienv_actors::runtime_supervisor::EnvStatus) -> EnvironmentStatusDto {
        EnvironmentStatusDto {
            workspace_id: s.workspace_id,
            workspace: s.workspace_name.clone(),
            environment: s.environment.clone(),
            backend: s.backend.as_str().to_string(),
            state: s.state.as_str().to_string(),
            allocation: s.allocation.as_ref().map(AllocationDto::from),
            instance: s.instance.clone(),
            tools: s
                .tools
                .iter()
                .map(|t| ToolDto {
                    name: t.name.clone(),
                    kind: t.kind.as_str().to_string(),
                    state: t.state.as_str().to_string(),
                    url: t.url.clone(),
                    pid: t.pid,
                    restarts: t.restarts,
                    detail: t.detail.clone(),
                    ready_at: t.ready_at,
                })
                .collect(),
            error: s.error.clone(),
            notes: s.notes.clone(),
            sandbox: s.sandbox.clone(),
            autostart: s.autostart,
            started: s.started,
            ready_at: s.ready_at,
            updated: s.updated,
            lent_to: s.borrower.as_ref().map(BorrowerDto::from),
            placement: None,
        }
    }
}

/// `POST /workspaces/{ws}/environments/detect`: a proposal, not yet written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionDto {
    /// The proposed `environment.yaml`.
    pub yaml: String,
    /// What was read and what it contributed.
    pub findings: Vec<String>,
}

/// `GET /slurm/partitions`: the lab's Slurm partitions beside the peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlurmPartitionsDto {
    /// Whether this node has a slurmrestd configured (`runtime.slurm.url`).
    pub configured: bool,
    /// Every partition.
    pub partitions: Vec<SlurmPartitionDto>,
    /// Why slurmrestd could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A Slurm partition and what is free in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlurmPartitionDto {
    /// Name.
    pub name: String,
    /// `UP`, `DOWN`, `DRAIN`, `INACTIVE`.
    pub state: String,
    /// Nodes.
    pub nodes: u32,
    /// Nodes with nothing allocated.
    pub nodes_idle: u32,
    /// CPUs.
    pub cpus: u32,
    /// CPUs free on nodes that take jobs.
    pub cpus_free: u32,
    /// Memory, bytes.
    pub memory: u64,
    /// Memory free on nodes that take jobs, bytes.
    pub memory_free: u64,
    /// GPUs.
    pub gpus: u32,
    /// GPUs free on nodes that take jobs.
    pub gpus_free: u32,
}

impl From<&aienv_actors::runtime_supervisor::slurm::Partition> for SlurmPartitionDto {
    fn from(p: &aienv_actors::runtime_supervisor::slurm::Partition) -> SlurmPartitionDto {
        SlurmPartitionDto {
            name: p.name.clone(),
            state: p.state.clone(),
            nodes: p.nodes,
            nodes_idle: p.nodes_idle,
            cpus: p.cpus,
            cpus_free: p.cpus_free,
            memory: p.memory,
            memory_free: p.memory_free,
            gpus: p.gpus,
            gpus_free: p.gpus_free,
        }
    }
}

/// A runtime plugin on the node (`GET /runtimes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginDto {
    /// Its name (`runtime: <name>`).
    pub name: String,
    /// Its executable.
    pub path: String,
    /// Whether its `check` answered ok in the protocol this node speaks.
    pub healthy: bool,
    /// Its version, when it said.
    pub version: Option<String>,
    /// What it drives, or why it is not usable (with its stderr).
    pub detail: String,
}

impl From<&aienv_actors::runtime_supervisor::plugin::PluginInfo> for PluginDto {
    fn from(info: &aienv_actors::runtime_supervisor::plugin::PluginInfo) -> PluginDto {
        PluginDto {
            name: info.name.clone(),
            path: info.path.display().to_string(),
            healthy: info.healthy,
            version: info.version.clone(),
            detail: info.detail.clone(),
        }
    }
}
