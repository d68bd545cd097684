//! What a transfer job is and how far it got: the request, its state machine and progress.
//! [`JobInfo`] is both the published view of a job and (with the request) its persisted
//! record, so a job survives a node restart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::KeyFingerprint;
use crate::snapshot::Hash;

/// Clone a new workspace, update an existing clone from its source, or take a clone's
/// changes into a workspace of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferKind {
    /// A new workspace from a peer.
    Clone,
    /// Bring a clone up to date with its source.
    Sync,
    /// A peer's clone pushed its changes to a workspace of this node (see [`super::push`]).
    Push,
}

impl TransferKind {
    /// `clone`, `sync` or `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Clone => "clone",
            TransferKind::Sync => "sync",
            TransferKind::Push => "push",
        }
    }
}

/// The state machine of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for a free slot.
    Queued,
    /// Asking the source for its snapshot.
    FetchingManifest,
    /// Moving chunks.
    Transferring,
    /// Checking every file against the snapshot.
    Verifying,
    /// Relocating paths and moving the result into place.
    Materializing,
    /// Finished.
    Done,
    /// Stopped by an error (see `error`); can be retried.
    Failed,
    /// Stopped by a person; can be retried.
    Cancelled,
}

impl JobState {
    /// Stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::FetchingManifest => "fetching-manifest",
            JobState::Transferring => "transferring",
            JobState::Verifying => "verifying",
            JobState::Materializing => "materializing",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Done, failed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// For a clone, the peer (node name or id); for a sync, optional (the origin is used).
    pub peer: String,
    /// For a clone, the workspace on the peer (name or id); for a sync, the local clone.
    pub workspace: String,
    /// Local name for a clone.
    pub rename_to: Option<String>,
    /// Clone with sharing turned off.
    pub private: bool,
    /// Who asked.
    pub by: String,
    /// A transfer of a placement (lab cluster). For a clone: the source itself asked for it
    /// (it placed an environment here), and `workspace` is its workspace id and `rename_to`
    /// its name, taken as they are instead of looked up in the source's catalog. For a sync:
    /// the results come back to the placed workspace (not a clone) from `peer`, the node that
    /// ran it, whose clone has the same id; nothing is recorded as an origin.
    #[serde(default)]
    pub placed: bool,
    /// For a sync: take the source's version of paths both sides changed (otherwise such a
    /// sync is refused with the paths). For a push: the pushing clone's version wins.
    #[serde(default)]
    pub force: bool,
}

impl JobInfo {
    /// A queued job of `kind` for `request`, before its peer and workspaces are resolved.
    pub fn queued(kind: TransferKind, request: TransferRequest) -> JobInfo {
        let now = Utc::now();
        JobInfo {
            id: Uuid::new_v4(),
            kind,
            state: JobState::Queued,
            request,
            peer_id: Uuid::nil(),
            peer_key: None,
            peer_name: String::new(),
            workspace_id: Uuid::nil(),
            workspace_name: String::new(),
            target_name: String::new(),
            local_id: None,
            sources: Vec::new(),
            root: None,
            local_root: None,
            baseline: None,
            progress: Progress::default(),
            error: None,
            notes: Vec::new(),
            hook_error: None,
            conflicts: Vec::new(),
            attempts: 0,
            created: now,
            updated: now,
            started: None,
            finished: None,
        }
    }
}

/// Counters of a job; `bytes_*` count file content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Content bytes of the snapshot.
    pub bytes_total: u64,
    /// Content bytes in place (fetched, copied locally, or already there).
    pub bytes_done: u64,
    /// Bytes received over the network (after compression, frame headers included).
    pub bytes_fetched: u64,
    /// Content bytes fetched from peers (before compression).
    pub bytes_from_peers: u64,
    /// Content bytes copied from chunks already on this node (dedup).
    pub bytes_local: u64,
    /// Content bytes unchanged in the clone (sync) or already transferred (resume).
    pub bytes_present: u64,
    /// Files in the snapshot.
    pub files_total: u64,
    /// Files complete.
    pub files_done: u64,
    /// Chunks fetched from peers.
    pub chunks_fetched: u64,
    /// Chunks rejected because their content did not match their hash.
    pub chunks_bad: u64,
    /// Current rate in content bytes per second.
    pub rate: u64,
    /// Estimated seconds left.
    pub eta_seconds: Option<u64>,
}

/// One job as everyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: Uuid,
    /// Clone or sync.
    pub kind: TransferKind,
    /// Where it stands.
    pub state: JobState,
    /// The request.
    pub request: TransferRequest,
    /// The source node.
    pub peer_id: Uuid,
    /// The key the source must present (the origin's recorded key for a sync).
    #[serde(default)]
    pub peer_key: Option<KeyFingerprint>,
    /// Its name.
    pub peer_name: String,
    /// The source workspace's id.
    pub workspace_id: Uuid,
    /// The source workspace's name.
    pub workspace_name: String,
    /// The local workspace's name (the clone's, or the synced one's).
    pub target_name: String,
    /// The local workspace's id, once known.
    pub local_id: Option<Uuid>,
    /// Names of the peers chunks are fetched from.
    pub sources: Vec<String>,
    /// The snapshot's root hash, once fetched.
    pub root: Option<Hash>,
    /// Root of the local workspace right after the job (done jobs).
    #[serde(default)]
    pub local_root: Option<Hash>,
    /// For a sync: the local root the last transfer of this clone left, if known.
    #[serde(default)]
    pub baseline: Option<Hash>,
    /// Counters.
    pub progress: Progress,
    /// Why it failed.
    pub error: Option<String>,
    /// What was done on the way (relocations, environments to rebuild, dedup, ...).
    pub notes: Vec<String>,
    /// A clone that arrived but whose `post_clone` hook failed: why, with its output (the
    /// job is done; the workspace is in place).
    #[serde(default)]
    pub hook_error: Option<String>,
    /// Paths both sides changed (a refused sync or push), up to
    /// [`super::push::MAX_LISTED_CONFLICTS`].
    #[serde(default)]
    pub conflicts: Vec<String>,
    /// How many times it was started.
    pub attempts: u32,
    /// When it was asked for.
    pub created: DateTime<Utc>,
    /// Last change of state.
    pub updated: DateTime<Utc>,
    /// When it started its current attempt.
    pub started: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished: Option<DateTime<Utc>>,
}
