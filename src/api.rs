//! The REST API's JSON shapes (v1), shared by the server and the client. They match
//! `schemas/openapi.yaml`; conversions from the actors' types are explicit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use aienv_actors::model::{Project, Sharing, SharingMode, WorkspaceManifest};
use aienv_actors::transfer_queue::JobInfo;
use aienv_actors::workspace_store::{
    ImportSummary, Origin, RevisionInfo, RevisionRecord, WorkspaceEntry,
};

/// The one error shape: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine code, human message and optional structured details of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine code such as `workspace-not-found`.
    pub code: String,
    /// One-line human message.
    pub message: String,
    /// Structured details (field errors, locations), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
}

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

/// Sharing settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingDto {
    /// Shared or not.
    pub enabled: bool,
    /// `lan` or `peers`.
    pub mode: String,
    /// Allowed peers in `peers` mode.
    pub peers: Vec<String>,
}

/// A code project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectDto {
    /// Name.
    pub name: String,
    /// Workspace-relative path.
    pub path: String,
    /// Git remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    /// Git revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_rev: Option<String>,
}

/// A workspace as listed and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceDto {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Languages.
    pub languages: Vec<String>,
    /// Tools.
    pub tools: Vec<String>,
    /// Current revision.
    pub revision: u64,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Sharing.
    pub sharing: SharingDto,
    /// Projects.
    pub projects: Vec<ProjectDto>,
    /// Environment names.
    pub environments: Vec<String>,
    /// Directory on the node (only for logged-in users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where this clone came from (clones only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginDto>,
}

impl WorkspaceDto {
    /// Converts a store entry; `show_path` reveals the directory.
    pub fn from_entry(entry: &WorkspaceEntry, show_path: bool) -> WorkspaceDto {
        let manifest: &WorkspaceManifest = &entry.manifest;
        WorkspaceDto {
            id: manifest.id,
            name: manifest.name.clone(),
            title: manifest.title.clone(),
            description: manifest.description.clone(),
            tags: manifest.tags.clone(),
            kind: manifest.kind.as_str().to_string(),
            languages: manifest.languages.clone(),
            tools: manifest.tools.clone(),
            revision: manifest.revision,
            created: manifest.created,
            updated: manifest.updated,
            sharing: SharingDto::from(&manifest.sharing),
            projects: manifest.projects.iter().map(ProjectDto::from).collect(),
            environments: entry.environments.keys().cloned().collect(),
            path: show_path.then(|| entry.path.display().to_string()),
            origin: entry.origin.as_deref().map(OriginDto::from),
        }
    }
}

impl From<&Sharing> for SharingDto {
    fn from(sharing: &Sharing) -> SharingDto {
        SharingDto {
            enabled: sharing.enabled,
            mode: match sharing.mode {
                SharingMode::Lan => "lan",
                SharingMode::Peers => "peers",
            }
            .to_string(),
            peers: sharing.peers.clone(),
        }
    }
}

impl From<&Project> for ProjectDto {
    fn from(project: &Project) -> ProjectDto {
        ProjectDto {
            name: project.name.clone(),
            path: project.path.clone(),
            git_url: project.git.as_ref().map(|g| g.url.clone()),
            git_rev: project.git.as_ref().and_then(|g| g.rev.clone()),
        }
    }
}

/// A workspace with its environments' specs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceDetail {
    /// The workspace.
    #[serde(flatten)]
    pub workspace: WorkspaceDto,
    /// Environment specs by name, in their `environment.yaml` form.
    pub environment_specs: BTreeMap<String, serde_json::Value>,
}

impl WorkspaceDetail {
    /// Converts a store entry.
    pub fn from_entry(entry: &WorkspaceEntry, show_path: bool) -> WorkspaceDetail {
        WorkspaceDetail {
            workspace: WorkspaceDto::from_entry(entry, show_path),
            environment_specs: entry
                .environments
                .iter()
                .map(|(name, spec)| {
                    let value = serde_json::to_value(spec).expect("specs serialize");
                    (name.clone(), value)
                })
                .collect(),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspacePage {
    /// Workspaces on this page.
    pub items: Vec<WorkspaceDto>,
    /// Matches in all.
    pub total: usize,
    /// Pass as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/workspaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Name (slug); may be omitted when `from_dir` holds a `workspace.yaml`.
    #[serde(default)]
    pub name: String,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Languages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Built-in template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Directory on the node to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dir: Option<String>,
}

/// `PATCH /api/v1/workspaces/{ws}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspace {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// New type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// New languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    /// New tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Refuse with 409 unless the workspace is at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
}

/// `POST /api/v1/workspaces/{ws}/share`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// `lan` (default) or `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Allowed peers for `peers` mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Result of create and import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedDto {
    /// The new workspace.
    pub workspace: WorkspaceDto,
    /// What was done on the way.
    pub notes: Vec<String>,
    /// For imports, what the archive held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSummaryDto>,
}

/// What an import unpacked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSummaryDto {
    /// Workspace id in the archive.
    pub source_id: Uuid,
    /// Workspace name in the archive.
    pub source_name: String,
    /// Revision in the archive.
    pub source_revision: u64,
    /// Files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of content.
    pub bytes: u64,
    /// Links pointing outside the workspace, kept as links.
    pub external_links: Vec<ExternalLink>,
}

/// A symlink whose target is outside the workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalLink {
    /// Link path in the workspace.
    pub path: String,
    /// Its target.
    pub target: String,
}

impl From<&ImportSummary> for ImportSummaryDto {
    fn from(summary: &ImportSummary) -> ImportSummaryDto {
        ImportSummaryDto {
            source_id: summary.source_id,
            source_name: summary.source_name.clone(),
            source_revision: summary.source_revision,
            files: summary.files,
            dirs: summary.dirs,
            symlinks: summary.symlinks,
            bytes: summary.bytes,
            external_links: summary
                .external_links
                .iter()
                .map(|(path, target)| ExternalLink {
                    path: path.clone(),
                    target: target.clone(),
                })
                .collect(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionDto {
    /// Revision number.
    pub revision: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: String,
    /// Kind of change.
    pub change: String,
}

impl From<&RevisionInfo> for RevisionDto {
    fn from(info: &RevisionInfo) -> RevisionDto {
        RevisionDto {
            revision: info.revision,
            at: info.at,
            by: info.by.clone(),
            change: info.change.clone(),
        }
    }
}

/// One revision with its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionDetail {
    /// The history entry.
    #[serde(flatten)]
    pub info: RevisionDto,
    /// `workspace.yaml` at that revision.
    pub workspace_yaml: String,
    /// `environment.yaml` texts by environment.
    pub environments: BTreeMap<String, String>,
}

impl From<&RevisionRecord> for RevisionDetail {
    fn from(record: &RevisionRecord) -> RevisionDetail {
        RevisionDetail {
            info: RevisionDto {
                revision: record.revision,
                at: record.at,
                by: record.by.clone(),
                change: record.change.clone(),
            },
            workspace_yaml: record.workspace_yaml.clone(),
            environments: record.environments.clone(),
        }
    }
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

/// A workspace in a node's catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntryDto {
    /// Workspace id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Languages.
    pub languages: Vec<String>,
    /// Tools.
    pub tools: Vec<String>,
    /// Revision.
    pub revision: u64,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Environment names.
    pub environments: Vec<String>,
}

impl From<&aienv_actors::catalog::CatalogEntry> for CatalogEntryDto {
    fn from(e: &aienv_actors::catalog::CatalogEntry) -> CatalogEntryDto {
        CatalogEntryDto {
            id: e.id,
            name: e.name.clone(),
            title: e.title.clone(),
            description: e.description.clone(),
            tags: e.tags.clone(),
            kind: e.kind.as_str().to_string(),
            languages: e.languages.clone(),
            tools: e.tools.clone(),
            revision: e.revision,
            updated: e.updated,
            environments: e.environments.clone(),
        }
    }
}

impl CatalogEntryDto {
    /// Converts back to the actors' type; `None` for an unknown type name.
    pub fn to_entry(&self) -> Option<aienv_actors::catalog::CatalogEntry> {
        Some(aienv_actors::catalog::CatalogEntry {
            id: self.id,
            name: self.name.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            kind: aienv_actors::model::WorkspaceKind::parse(&self.kind)?,
            languages: self.languages.clone(),
            tools: self.tools.clone(),
            revision: self.revision,
            updated: self.updated,
            environments: self.environments.clone(),
        })
    }
}

/// `GET /api/v1/catalog`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogDto {
    /// The node.
    pub node_id: Uuid,
    /// Digest of the whole shared catalog (as announced).
    pub digest: String,
    /// Workspaces shared with the caller.
    pub items: Vec<CatalogEntryDto>,
}

/// A peer, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerDto {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// `online`, `stale` or `gone`.
    pub state: String,
    /// `multicast` or `static`.
    pub source: String,
    /// Its API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Addresses it was heard from.
    pub addresses: Vec<String>,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// Its resources.
    pub resources: ResourcesDto,
    /// Shared workspaces it announced.
    pub shared_workspaces: u32,
    /// Workspaces in its fetched catalog.
    pub catalog_size: usize,
    /// Why the last catalog fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_error: Option<String>,
    /// Whether the catalog held is the one it announced last.
    pub catalog_current: bool,
    /// Running environments it announced.
    pub running_environments: u32,
    /// Seconds it has been up.
    pub uptime_seconds: u64,
    /// Its key id (readable).
    pub key_id: String,
    /// Whether a person trusts it.
    pub trusted: bool,
    /// Another key that claimed its id, if any did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<PeerConflictDto>,
}

/// Another key presented under a peer's id (refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConflictDto {
    /// The key id presented last.
    pub key_id: String,
    /// Where it came from.
    pub address: String,
    /// When it was seen last.
    pub last_seen: DateTime<Utc>,
    /// How many times it was refused.
    pub count: u64,
    /// Whether it was seen recently (the peer's state is then `conflict`).
    pub active: bool,
}

/// The `peer_conflict` event's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictEventDto {
    /// The id claimed.
    pub id: Uuid,
    /// The name claimed.
    pub name: String,
    /// Where the claim came from.
    pub address: String,
    /// The key id presented.
    pub presented_key_id: String,
    /// The key id the id belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_key_id: Option<String>,
    /// `announcement` or `handshake`.
    pub via: String,
}

impl From<&aienv_actors::peer_registry::ConflictReport> for ConflictEventDto {
    fn from(c: &aienv_actors::peer_registry::ConflictReport) -> ConflictEventDto {
        ConflictEventDto {
            id: c.id,
            name: c.name.clone(),
            address: c.address.to_string(),
            presented_key_id: c.presented.to_readable(),
            expected_key_id: c.expected.map(|k| k.to_readable()),
            via: c.via.to_string(),
        }
    }
}

/// A trusted peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPeerDto {
    /// Node id.
    pub id: Uuid,
    /// Key id (readable): trust follows this key.
    pub key_id: String,
    /// Its name when trusted (what `sharing.peers` may list).
    pub name: String,
    /// When it was trusted.
    pub since: DateTime<Utc>,
    /// Who trusted it.
    pub by: String,
}

impl From<&aienv_actors::peer_registry::TrustedPeer> for TrustedPeerDto {
    fn from(t: &aienv_actors::peer_registry::TrustedPeer) -> TrustedPeerDto {
        TrustedPeerDto {
            id: t.id,
            key_id: t.key.to_readable(),
            name: t.name.clone(),
            since: t.since,
            by: t.by.clone(),
        }
    }
}

/// `POST /pairing`: the code to type on the other node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingCodeDto {
    /// `XXXXX-XXXXX`.
    pub code: String,
    /// When it stops working (5 minutes; single use).
    pub expires_at: DateTime<Utc>,
    /// This node's key id, to show beside the code.
    pub key_id: String,
}

/// `POST /peers/{peer}/pair`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The code shown on the peer.
    pub code: String,
}

/// `POST /pairing/confirm` (node to node) and its answer: an HMAC-SHA256 proof of the code
/// bound to both nodes' keys, 64 hex digits (see `schemas/identity.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfirm {
    /// The proof.
    pub proof: String,
}

/// `POST /peers/{peer}/trust`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The key id the person compared with the one the peer shows; refused if it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
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

impl From<&aienv_actors::peer_registry::PeerInfo> for PeerDto {
    fn from(p: &aienv_actors::peer_registry::PeerInfo) -> PeerDto {
        PeerDto {
            id: p.id,
            name: p.name.clone(),
            state: p.state_name().to_string(),
            source: match p.source {
                aienv_actors::peer_registry::PeerSource::Multicast => "multicast",
                aienv_actors::peer_registry::PeerSource::Static => "static",
            }
            .to_string(),
            url: p.base_url(),
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            last_seen: p.last_seen,
            resources: ResourcesDto::from(&p.resources),
            shared_workspaces: p.shared_workspaces,
            catalog_size: p.catalog.len(),
            catalog_error: p.catalog_error.clone(),
            catalog_current: p.catalog_current,
            running_environments: p.running_environments,
            uptime_seconds: p.uptime_seconds,
            key_id: p.key.to_readable(),
            trusted: p.trusted,
            conflict: p.conflict.as_ref().map(|c| PeerConflictDto {
                key_id: c.key.to_readable(),
                address: c.address.to_string(),
                last_seen: c.last_seen,
                count: c.count,
                active: c.active,
            }),
        }
    }
}

/// One workspace in the merged network catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkEntryDto {
    /// The sharing peer's id.
    pub peer_id: Uuid,
    /// Its name.
    pub peer_name: String,
    /// Its API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    /// The workspace.
    pub workspace: CatalogEntryDto,
}

/// Where a clone came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginDto {
    /// Source node id.
    pub peer_id: Uuid,
    /// Source node name.
    pub peer_name: String,
    /// Source workspace id.
    pub workspace_id: Uuid,
    /// Source workspace name.
    pub workspace_name: String,
    /// Source revision at the last clone or sync.
    pub revision: u64,
    /// Source root hash at the last clone or sync.
    pub root: String,
    /// When it was cloned.
    pub cloned_at: DateTime<Utc>,
    /// When it was last synced.
    pub synced_at: Option<DateTime<Utc>>,
    /// Paths rewritten because they embedded the source's path.
    pub relocated: Vec<String>,
    /// What must be rebuilt on this host, with why.
    pub needs_rebuild: Vec<String>,
}

impl From<&Origin> for OriginDto {
    fn from(origin: &Origin) -> OriginDto {
        OriginDto {
            peer_id: origin.peer_id,
            peer_name: origin.peer_name.clone(),
            workspace_id: origin.workspace_id,
            workspace_name: origin.workspace_name.clone(),
            revision: origin.revision,
            root: origin.root.to_hex(),
            cloned_at: origin.cloned_at,
            synced_at: origin.synced_at,
            relocated: origin.relocated.keys().cloned().collect(),
            needs_rebuild: origin.needs_rebuild.clone(),
        }
    }
}

/// Body of `POST /api/v1/transfers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequestDto {
    /// `clone` or `sync`.
    pub kind: String,
    /// Clone: the peer's name or id. Sync: optional, the clone's origin by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Clone: the workspace on the peer. Sync: the local clone.
    pub workspace: String,
    /// Clone under this local name.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub rename_to: Option<String>,
    /// Clone with sharing turned off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// Counters of a transfer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressDto {
    /// Content bytes of the snapshot.
    pub bytes_total: u64,
    /// Content bytes in place.
    pub bytes_done: u64,
    /// Bytes received over the network.
    pub bytes_fetched: u64,
    /// Content bytes fetched from peers.
    pub bytes_from_peers: u64,
    /// Content bytes copied from this node (dedup).
    pub bytes_local: u64,
    /// Content bytes already in place.
    pub bytes_present: u64,
    /// Files in the snapshot.
    pub files_total: u64,
    /// Files complete.
    pub files_done: u64,
    /// Chunks fetched.
    pub chunks_fetched: u64,
    /// Chunks rejected as corrupted.
    pub chunks_bad: u64,
    /// Content bytes per second.
    pub rate: u64,
    /// Seconds left, when known.
    pub eta_seconds: Option<u64>,
}

/// One transfer job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferDto {
    /// Job id.
    pub id: Uuid,
    /// `clone` or `sync`.
    pub kind: String,
    /// `queued`, `fetching-manifest`, `transferring`, `verifying`, `materializing`, `done`,
    /// `failed` or `cancelled`.
    pub state: String,
    /// Source node id.
    pub peer_id: Uuid,
    /// Source node name.
    pub peer_name: String,
    /// Source workspace id.
    pub workspace_id: Uuid,
    /// Source workspace name.
    pub workspace_name: String,
    /// Local workspace name.
    pub target_name: String,
    /// Local workspace id, once known.
    pub local_id: Option<Uuid>,
    /// Peers chunks come from.
    pub sources: Vec<String>,
    /// Snapshot root hash, once known.
    pub root: Option<String>,
    /// Counters.
    pub progress: ProgressDto,
    /// Why it failed.
    pub error: Option<String>,
    /// What was done on the way.
    pub notes: Vec<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Who asked.
    pub by: String,
    /// When it was asked for.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Start of the current attempt.
    pub started: Option<DateTime<Utc>>,
    /// End.
    pub finished: Option<DateTime<Utc>>,
}

impl From<&JobInfo> for TransferDto {
    fn from(job: &JobInfo) -> TransferDto {
        let p = &job.progress;
        TransferDto {
            id: job.id,
            kind: job.kind.as_str().to_string(),
            state: job.state.as_str().to_string(),
            peer_id: job.peer_id,
            peer_name: job.peer_name.clone(),
            workspace_id: job.workspace_id,
            workspace_name: job.workspace_name.clone(),
            target_name: job.target_name.clone(),
            local_id: job.local_id,
            sources: job.sources.clone(),
            root: job.root.map(|r| r.to_hex()),
            progress: ProgressDto {
                bytes_total: p.bytes_total,
                bytes_done: p.bytes_done,
                bytes_fetched: p.bytes_fetched,
                bytes_from_peers: p.bytes_from_peers,
                bytes_local: p.bytes_local,
                bytes_present: p.bytes_present,
                files_total: p.files_total,
                files_done: p.files_done,
                chunks_fetched: p.chunks_fetched,
                chunks_bad: p.chunks_bad,
                rate: p.rate,
                eta_seconds: p.eta_seconds,
            },
            error: job.error.clone(),
            notes: job.notes.clone(),
            attempts: job.attempts,
            by: job.request.by.clone(),
            created: job.created,
            updated: job.updated,
            started: job.started,
            finished: job.finished,
        }
    }
}

impl TransferDto {
    /// Whether the job is done, failed or cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "cancelled")
    }
}

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

/// A workspace's owner and members, and what the caller may do with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessDto {
    /// Owner's user name (`admin`: the admin token).
    pub owner: String,
    /// Users who may use and change it like its owner.
    pub members: Vec<String>,
    /// The caller.
    pub you: String,
    /// The caller's role: `admin`, `member` or `viewer`.
    pub role: String,
    /// Whether the caller may run it, open its tools and terminal.
    pub may_use: bool,
    /// Whether the caller may change it.
    pub may_change: bool,
    /// Whether the caller may change its members.
    pub may_grant: bool,
}

/// `PUT /workspaces/{ws}/access`: fields left out stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessUpdate {
    /// New owner (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The whole member list (the owner or an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

/// A link that signs a browser in once: into the dashboard, or into a tool's own origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignInLinkDto {
    /// Opens the dashboard or the tool signed in; works once.
    pub url: String,
    /// Seconds the link stays valid.
    pub expires_in_seconds: u64,
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
    /// `stopped`, `setting-up`, `starting`, `running`, `degraded`, `stopping` or `failed`.
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

/// Filter and page of a workspace listing (`GET /workspaces` query), as the server reads it
/// and the client writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Shared only / unshared only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Cursor from the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Filter of the network catalog (`GET /network/catalog` query).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkQuery {
    /// Type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Only this peer (name or id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}
