//! The node's own description: `GET /node` (identity, discovery counters, resources).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `GET /api/v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// The key id people compare (readable form of `key_fingerprint`).
    #[serde(default)]
    pub key_id: String,
    /// SHA-256 of the node key's SubjectPublicKeyInfo, hex.
    #[serde(default)]
    pub key_fingerprint: String,
    /// SHA-256 of the node's TLS certificate, as browsers show it.
    #[serde(default)]
    pub certificate_sha256: String,
    /// Whether `id` is a UUID kept from before node keys (else it is derived from the key).
    #[serde(default)]
    pub legacy_id: bool,
    /// aienv version.
    pub version: String,
    /// Data directory (only shown to logged-in users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// When the node started.
    pub started: DateTime<Utc>,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Workspaces on this node visible to the caller.
    pub workspaces: usize,
    /// What the store repaired at start-up (only shown to logged-in users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_repairs: Option<Vec<String>>,
    /// This host's resources.
    pub resources: ResourcesDto,
    /// LAN discovery status.
    pub discovery: DiscoveryDto,
}

/// Discovery status in `GET /api/v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveryDto {
    /// Interfaces the multicast group is joined on.
    pub interfaces: Vec<String>,
    /// Why discovery is not running, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Digest of this node's shared catalog.
    pub catalog_digest: String,
    /// Shared workspaces.
    pub shared_workspaces: u32,
    /// Datagram counters.
    pub datagrams: DatagramCounters,
    /// Announcements and answers refused because they presented another key than the one
    /// their node id belongs to.
    #[serde(default)]
    pub key_conflicts: u64,
}

/// What the Announcer sent, accepted and dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatagramCounters {
    /// Sent (per interface).
    pub sent: u64,
    /// Accepted.
    pub accepted: u64,
    /// Own datagrams looped back.
    pub own: u64,
    /// Claiming this node's id from another instance.
    pub forged: u64,
    /// Malformed.
    pub malformed: u64,
    /// Oversized.
    pub oversized: u64,
    /// Unknown version.
    pub unknown_version: u64,
    /// Replayed (old sequence).
    pub replayed: u64,
    /// Over the per-sender rate.
    pub flood: u64,
}

impl From<&aienv_actors::discovery::Counters> for DatagramCounters {
    fn from(c: &aienv_actors::discovery::Counters) -> DatagramCounters {
        DatagramCounters {
            sent: c.sent,
            accepted: c.accepted,
            own: c.own,
            forged: c.forged,
            malformed: c.malformed,
            oversized: c.oversized,
            unknown_version: c.unknown_version,
            replayed: c.replayed,
            flood: c.flood,
        }
    }
}

/// Host resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResourcesDto {
    /// CPU model (only for this node).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_model: String,
    /// Logical cores.
    pub cpu_cores: u32,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Available memory, bytes.
    pub memory_available: u64,
    /// Free disk in the data dir, bytes.
    pub disk_free: u64,
    /// GPUs.
    pub gpus: Vec<GpuDto>,
    /// OS.
    pub os: String,
    /// Architecture.
    pub arch: String,
}

/// One GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuDto {
    /// `nvidia`, `amd`, `intel` or a PCI vendor id.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Memory, bytes (0 when unknown).
    pub memory: u64,
}

impl From<&aienv_actors::resources::Gpu> for GpuDto {
    fn from(g: &aienv_actors::resources::Gpu) -> GpuDto {
        GpuDto {
            vendor: g.vendor.clone(),
            model: g.model.clone(),
            memory: g.memory,
        }
    }
}

impl From<&aienv_actors::resources::Resources> for ResourcesDto {
    fn from(r: &aienv_actors::resources::Resources) -> ResourcesDto {
        ResourcesDto {
            cpu_model: r.cpu_model.clone(),
            cpu_cores: r.cpu_cores,
            memory_total: r.memory_total,
            memory_available: r.memory_available,
            disk_free: r.disk_free,
            gpus: r.gpus.iter().map(GpuDto::from).collect(),
            os: r.os.clone(),
            arch: r.arch.clone(),
        }
    }
}

impl From<&aienv_actors::discovery::wire::ResourceSummary> for ResourcesDto {
    fn from(r: &aienv_actors::discovery::wire::ResourceSummary) -> ResourcesDto {
        ResourcesDto {
            cpu_model: String::new(),
            cpu_cores: r.cpu_cores,
            memory_total: r.memory_total,
            memory_available: r.memory_available,
            disk_free: r.disk_free,
            gpus: r.gpus.iter().map(GpuDto::from).collect(),
            os: r.os.clone(),
            arch: r.arch.clone(),
        }
    }
}

impl ResourcesDto {
    /// Back to the announcement summary (for static peers read over HTTP).
    pub fn to_summary(&self) -> aienv_actors::discovery::wire::ResourceSummary {
        aienv_actors::discovery::wire::ResourceSummary {
            cpu_cores: self.cpu_cores,
            memory_total: self.memory_total,
            memory_available: self.memory_available,
            disk_free: self.disk_free,
            gpus: self
                .gpus
                .iter()
                .map(|g| aienv_actors::resources::Gpu {
                    vendor: g.vendor.clone(),
                    model: g.model.clone(),
                    memory: g.memory,
                })
                .collect(),
            os: self.os.clone(),
            arch: self.arch.clone(),
        }
    }
}
