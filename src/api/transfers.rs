//! Transfers: clone and sync jobs and where a clone came from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use aienv_actors::transfer_queue::JobInfo;
use aienv_actors::workspace_store::Origin;

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
    /// Sync of a placed workspace's results: overwrite what changed here since it was placed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
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
    /// `clone`, `sync` or `push` (a peer's clone pushed into a workspace here).
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
    /// The clone arrived, but its `post_clone` hook failed: why, with the end of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_error: Option<String>,
    /// A sync or push refused because both sides changed these paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
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
            hook_error: job.hook_error.clone(),
            conflicts: job.conflicts.clone(),
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

/// `POST /workspaces/{ws}/push`: send a clone's changes back to its origin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushAsk {
    /// Apply even where the origin changed the same paths (the clone's versions win).
    #[serde(default)]
    pub force: bool,
}

/// What a push did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushResultDto {
    /// `done` (a new revision on the origin) or `up-to-date` (nothing to send).
    pub state: String,
    /// The origin node.
    pub peer: String,
    /// The workspace there.
    pub workspace: String,
    /// The push job on the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Uuid>,
    /// The origin workspace's revision afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Paths sent.
    pub changes: usize,
    /// What was done, and what was left out (uncommitted work in git projects).
    pub notes: Vec<String>,
}
