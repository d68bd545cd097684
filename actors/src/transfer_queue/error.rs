//! Errors of the TransferQueue.

use crate::snapshot::SnapshotError;
use crate::workspace_store::StoreError;

/// Everything a transfer can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No known peer has this name or id.
    #[error("no peer named or with id `{name}`{}", suggest(.close))]
    PeerNotFound {
        /// What was asked for.
        name: String,
        /// Close matches.
        close: Vec<String>,
    },
    /// The peer does not share such a workspace with this node.
    #[error("peer `{peer}` shares no workspace named or with id `{name}`{}", suggest(.close))]
    WorkspaceNotFound {
        /// The peer.
        peer: String,
        /// What was asked for.
        name: String,
        /// Close matches.
        close: Vec<String>,
    },
    /// A clone would take a name this node already uses.
    #[error("a workspace named `{0}` already exists here: clone it under another name (`as`; `--as NAME` in the CLI) or sync the existing clone")]
    NameTaken(String),
    /// A sync was asked for a workspace that is not a clone.
    #[error("workspace `{0}` was not cloned from another node, so it has nothing to sync from")]
    NotAClone(String),
    /// No job has this id.
    #[error("no transfer with id `{0}`")]
    JobNotFound(String),
    /// The job cannot do that in its state.
    #[error("transfer {id} is {state}: {why}")]
    WrongState {
        /// Job id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was refused.
        why: &'static str,
    },
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The source's snapshot was refused.
    #[error("the source's manifest was refused: {0}")]
    Manifest(#[from] SnapshotError),
    /// The workspace holds paths that differ only by letter case, and this node's file
    /// system folds case.
    #[error("the workspace holds paths that differ only by letter case ({pairs}), which the file system of {dir} cannot hold (it folds case): rename one of each pair on the source, or clone onto a case-sensitive file system")]
    CaseCollision {
        /// Where the clone would be written.
        dir: String,
        /// Some of the pairs.
        pairs: String,
    },
    /// Not enough disk space.
    #[error("not enough disk space in {path}: {needed} bytes needed, {available} available")]
    DiskFull {
        /// Where.
        path: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The disk filled up mid-way.
    #[error("the disk is full (writing {0}); free space and retry: what arrived is kept")]
    NoSpace(String),
    /// No source could be reached for too long, or every source refused.
    #[error("no source can serve the workspace: {0}")]
    NoSource(String),
    /// Both sides changed the same paths since the clone's last sync; nothing was applied.
    #[error("{count} paths were changed on both sides since the last sync: {}{}; {hint}", .paths.iter().take(10).map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "), if *.count > 10 { ", ..." } else { "" })]
    Conflict {
        /// Some of the paths (up to a thousand), in byte order.
        paths: Vec<String>,
        /// How many in all.
        count: usize,
        /// What the person can do about it.
        hint: &'static str,
    },
    /// The clone has no record of what it last synced to (cloned by an older version).
    #[error("`{0}` has no record of the origin's content at its last sync (it was cloned by an older aienv): sync it once (`aienv sync {0}`), then push")]
    NoBase(String),
    /// The record of what a clone last took from its origin is damaged on disk.
    #[error("the record of what this clone last took from its origin ({path}) cannot be read ({source}): `sync --force` takes the origin's content as it is (this clone's own changes are then replaced) and records it again")]
    BaseDamaged {
        /// The record's file.
        path: String,
        /// Why it cannot be read.
        source: SnapshotError,
    },
    /// The source changed its content during the transfer.
    #[error("the source changed during the transfer ({0}); retry to fetch the new version")]
    SourceChanged(String),
    /// A chunk kept arriving corrupted.
    #[error("chunk {0} arrived corrupted {1} times; giving up")]
    TooManyBadChunks(String, u32),
    /// The finished tree does not match the snapshot.
    #[error("verification failed: {0}")]
    Verification(String),
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store refused the result.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue is not running.
    #[error("transfer queue is not running")]
    Unavailable,
}

impl TransferError {
    /// Wraps an I/O error with what was being done to which path; a full disk gets its own
    /// message.
    pub fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> TransferError {
        let path = path.display().to_string();
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                TransferError::NoSpace(path)
            } else {
                TransferError::Io {
                    action,
                    path,
                    source,
                }
            }
        }
    }
}

fn suggest(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}
