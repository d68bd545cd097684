//! The store's side of transfers: snapshots of its workspaces, chunk reads for serving and
//! local dedup, and committing what the TransferQueue built — a new clone (staging dir
//! renamed into place) or a sync (a plan of renames and removals applied to a clone).
//!
//! The TransferQueue does the long work (fetching, verifying, writing into its own staging
//! area); only the short commit runs on the store's thread, like imports.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Arrived, Taken, Touched};
use crate::events::WorkspaceChange;
use crate::model::{Sharing, WORKSPACE_FILE};
use crate::snapshot::{EntryKind, Hash, Snapshot};
use crate::snapshot_receive::SnapshotEntries;
use crate::snapshot_writer::SnapshotWriter;
use crate::yaml;

use super::chunk_index::{ChunkIndex, ChunkReader, ScanStats};
use super::error::StoreError;
use super::view::{StoreView, WorkspaceEntry};
use super::{
    fsio, workspace_dir, CommitNew, Created, Layout, WorkspaceStore, WorkspaceStoreHandle,
};

/// Where a clone came from; lets `sync` find its source again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Node it was cloned from.
    pub peer_id: Uuid,
    /// That node's key: later syncs talk only to it (absent in clones made before keys).
    #[serde(default)]
    pub peer_key: Option<crate::identity::KeyFingerprint>,
    /// That node's name at the time.
    pub peer_name: String,
    /// The source workspace's id.
    pub workspace_id: Uuid,
    /// The source workspace's name.
    pub workspace_name: String,
    /// Source revision at the last clone or sync.
    pub revision: u64,
    /// Source root hash at the last clone or sync.
    pub root: Hash,
    /// When it was cloned.
    pub cloned_at: DateTime<Utc>,
    /// When it was last synced.
    pub synced_at: Option<DateTime<Utc>>,
    /// Files rewritten because they embedded the source's workspace path: path → the
    /// source's hash of it (so a sync knows the local difference is ours).
    pub relocated: BTreeMap<String, Hash>,
    /// What must be rebuilt on this host (a venv whose base interpreter is missing), with
    /// the reason.
    pub needs_rebuild: Vec<String>,
}

/// A clone built in staging by the TransferQueue, ready to be committed.
#[derive(Debug)]
pub struct CloneRequest {
    /// The finished, verified tree (on the same file system as the workspaces).
    pub staging: PathBuf,
    /// Where it came from.
    pub origin: Origin,
    /// Local name instead of the source's.
    pub rename_to: Option<String>,
    /// Turn sharing off in the clone.
    pub private: bool,
    /// Notes to hand back (relocations, links kept, ...).
    pub notes: Vec<String>,
    /// The files a start after a crash must find intact, every other file of `staging`
    /// having been flushed: the clone is then committed before its write-back is done (see
    /// [`WorkspaceStoreHandle::flush`]). `None`: the file system is flushed first.
    pub unflushed: Option<Unflushed>,
}

/// The files of a clone committed before its write-back: those of `snapshot` that `arrived`
/// names. Kept as a snapshot of them (with every directory, so it reads back as a valid
/// one), written from the received one's list without a second list in memory.
#[derive(Debug, Clone)]
pub struct Unflushed {
    /// What was received.
    pub snapshot: SnapshotEntries,
    /// Which of its files arrived as it says.
    pub arrived: Arrived,
}

impl Unflushed {
    /// Writes the record to `path` atomically and durably.
    pub(super) fn write_file(&self, path: &Path) -> Result<(), StoreError> {
        let dir = path.parent().expect("a record inside a directory");
        let mut files = SnapshotWriter::new(dir);
        let writing = |error| StoreError::io("writing", path)(error);
        self.snapshot.for_each(
            StoreError::io("reading the received snapshot for", path),
            |e| {
                let kept = e.kind == EntryKind::Dir
                    || (e.kind == EntryKind::File && self.arrived.contains(&e.path));
                if kept {
                    files.push(e).map_err(&writing)
                } else {
                    Ok(())
                }
            },
        )?;
        let head = self.snapshot.head();
        fsio::write_atomic_with(path, |out| files.finish(&head, out).map(|_| ()))?;
        Ok(())
    }
}

/// The changes that make a clone equal to a newer snapshot of its source. Every path is
/// workspace-relative and was validated as part of the snapshot.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Directory holding the new file versions, named as in `files`.
    pub staging: PathBuf,
    /// Paths to remove (files, links, or whole directories), deepest first.
    pub remove: Vec<String>,
    /// Directories to create, parents first.
    pub dirs: Vec<String>,
    /// Symbolic links to create or replace: path, target.
    pub links: Vec<(String, String)>,
    /// Files to move into place: staged name, path.
    pub files: Vec<(String, String)>,
    /// Modes to set (files and directories), applied last.
    pub modes: Vec<(String, u32)>,
}

impl SyncPlan {
    /// Past this many paths, the snapshot after a commit is taken by a walk rather than
    /// amended: the list of touched paths is held whole, and a walk costs no more then.
    pub const MAX_TOUCHED: usize = 65_536;

    /// What committing it changes in the tree: its paths, and `workspace.yaml` (the commit
    /// writes the clone's own). `None` past [`Self::MAX_TOUCHED`] paths.
    pub fn touched(&self) -> Option<Touched> {
        let count = self.remove.len()
            + self.dirs.len()
            + self.links.len()
            + self.files.len()
            + self.modes.len();
        if count >= Self::MAX_TOUCHED {
            return None;
        }
        let mut touched = Touched::default();
        self.remove.iter().for_each(|path| touched.removed(path));
        let changed = self
            .dirs
            .iter()
            .chain(self.links.iter().map(|(path, _)| path));
        let changed = changed
            .chain(self.files.iter().map(|(_, path)| path))
            .chain(self.modes.iter().map(|(path, _)| path));
        changed.for_each(|path| touched.changed(path));
        touched.changed(WORKSPACE_FILE);
        Some(touched)
    }
}

/// Reads chunks out of the files that hold them, off the actor: for serving peers and for
/// local dedup. Cheap to clone.
#[derive(Clone)]
pub struct ChunkStore {
    chunks: ChunkIndex,
    view: tokio::sync::watch::Receiver<Arc<StoreView>>,
}

impl ChunkStore {
    /// The chunk `hash` of `workspace`, verified; `None` when no indexed file holds it any
    /// more (the file changed: the next snapshot re-reads it).
    pub fn read(&self, workspace: Uuid, hash: &Hash) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        self.reader(workspace)?
            .read_into(hash, &mut data)
            .then_some(data)
    }

    /// A reader of `workspace`'s chunks for one request (`None`: no such workspace here):
    /// [`ChunkStore::read`] for a batch, the root opened once.
    pub fn reader(&self, workspace: Uuid) -> Option<ChunkReader> {
        let root = self
            .view
            .borrow()
            .find(&workspace.to_string())
            .map(|entry| entry.path.clone())?;
        Some(self.chunks.reader(workspace, root))
    }

    /// Copies the chunk `hash` from any workspace of this node into `target` at `offset`
    /// without hashing it, from a file unchanged since it was indexed. `false` when no such
    /// copy exists (then read it with [`ChunkStore::find_local`]).
    pub fn copy_local(&self, hash: &Hash, target: &std::fs::File, offset: u64) -> bool {
        let view = self.view.borrow().clone();
        self.chunks.locate(hash, None).iter().any(|location| {
            view.find(&location.workspace.to_string())
                .is_some_and(|entry| {
                    self.chunks
                        .copy_unchanged(&entry.path, location, target, offset)
                })
        })
    }

    /// Whether any workspace of this node held `hash` when last indexed (an estimate of what
    /// a transfer would not need to fetch; nothing is read).
    pub fn holds(&self, hash: &Hash) -> bool {
        !self.chunks.locate(hash, None).is_empty()
    }

    /// The chunk `hash` from any workspace of this node, verified.
    pub fn find_local(&self, hash: &Hash) -> Option<Vec<u8>> {
        let view = self.view.borrow().clone();
        self.chunks.locate(hash, None).iter().find_map(|location| {
            let entry = view.find(&location.workspace.to_string())?;
            self.chunks.read_verified(&entry.path, location, hash)
        })
    }
}

/// Applies a sync plan to a clone.
#[derive(Message)]
#[rtype(result = "Result<Arc<WorkspaceEntry>, StoreError>")]
struct CommitSync {
    id: Uuid,
    plan: SyncPlan,
    /// The clone's new origin state; `None` for a workspace that is not a clone (a placed
    /// workspace's results coming back).
    origin: Option<Origin>,
    by: String,
    /// `Synced`, or `Pushed` (a peer's changes: always a new revision).
    change: WorkspaceChange,
}

impl Handler<CommitSync> for WorkspaceStore {
    type Result = Result<Arc<WorkspaceEntry>, StoreError>;

    fn handle(&mut self, message: CommitSync, _: &mut Self::Context) -> Self::Result {
        let CommitSync {
            id,
            plan,
            origin,
            by,
            change,
        } = message;
        let old = self.find(&id.to_string())?;
        let root = old.path.clone();
        apply(&root, &plan)?;
        fsio::sync_filesystem(&root)?;
        let loaded = workspace_dir::load(&root, true)?;
        let mut manifest = loaded.manifest;
        // The clone keeps its own identity; content and metadata follow the source.
        manifest.id = old.manifest.id;
        manifest.name = old.manifest.name.clone();
        manifest.sharing = old.manifest.sharing.clone();
        let manifest_path = root.join(WORKSPACE_FILE);
        let local_text = fs::read_to_string(&manifest_path).unwrap_or_default();
        if change == WorkspaceChange::Pushed
            || manifest.revision < old.manifest.revision
            || (manifest.revision == old.manifest.revision
                && yaml::to_string(&manifest) != yaml::to_string(&old.manifest))
        {
            manifest.revision = old.manifest.revision + 1;
        }
        let text = yaml::to_string(&manifest);
        if text != local_text {
            fsio::write_atomic(&manifest_path, text.as_bytes())?;
        }
        if let Some(origin) = &origin {
            self.index.put_origin(id, origin)?;
        }
        self.index_and_publish(
            manifest,
            loaded.environments,
            root,
            change,
            Some(&old.manifest.name),
            &by,
        )
    }
}

/// Applies the plan's removals, directories, links, files and modes, in that order. Paths
/// never pass through a link: the snapshot was validated, and removals come first.
fn apply(root: &Path, plan: &SyncPlan) -> Result<(), StoreError> {
    for path in &plan.remove {
        fsio::remove_tree(&root.join(path))?;
    }
    for path in &plan.dirs {
        let full = root.join(path);
        match fs::symlink_metadata(&full) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                fsio::remove_tree(&full)?;
                fs::create_dir(&full).map_err(StoreError::io("creating directory", &full))?;
            }
            Err(_) => fs::create_dir(&full).map_err(StoreError::io("creating directory", &full))?,
        }
    }
    for (path, target) in &plan.links {
        let full = root.join(path);
        fsio::remove_tree(&full)?;
        std::os::unix::fs::symlink(target, &full)
            .map_err(StoreError::io("creating link", &full))?;
    }
    for (staged, path) in &plan.files {
        let from = plan.staging.join(staged);
        let full = root.join(path);
        if fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
            fsio::remove_tree(&full)?;
        }
        fs::rename(&from, &full).map_err(StoreError::io("moving into place", &full))?;
    }
    for (path, mode) in plan.modes.iter().rev() {
        let full = root.join(path);
        fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
            .map_err(StoreError::io("setting mode of", &full))?;
    }
    Ok(())
}

impl WorkspaceStoreHandle {
    /// A snapshot of the workspace `target` (id or name), hashing only files that changed
    /// since the last one. Runs off the actor.
    pub async fn snapshot(&self, target: &str) -> Result<(Arc<Snapshot>, ScanStats), StoreError> {
        self.on_chunk_index(target, |chunks, id, name, revision, root| {
            chunks.snapshot(id, name, revision, root)
        })
        .await
    }

    /// [`snapshot`](Self::snapshot) with the entries left in the memo's file: the root and
    /// totals at once, the rest by [`Taken::load`] (blocking).
    pub async fn take_snapshot(&self, target: &str) -> Result<Taken, StoreError> {
        self.on_chunk_index(target, |chunks, id, name, revision, root| {
            chunks.take(id, name, revision, root)
        })
        .await
    }

    /// The workspace's snapshot as the last pass left it, without a walk
    /// ([`ChunkIndex::last_taken`]).
    pub async fn last_snapshot(&self, target: &str) -> Result<Option<Taken>, StoreError> {
        self.on_chunk_index(target, |chunks, id, name, revision, root| {
            Ok(chunks.last_taken(id, name, revision, root))
        })
        .await
    }

    /// The snapshot of the workspace `target` after a commit that changed only `touched`,
    /// amended from `before`, its snapshot from before the commit, without a walk
    /// ([`ChunkIndex::amend`]). Runs off the actor.
    pub async fn amend_snapshot(
        &self,
        target: &str,
        before: Arc<Taken>,
        touched: Touched,
    ) -> Result<Taken, StoreError> {
        self.on_chunk_index(target, move |chunks, id, name, revision, root| {
            chunks.amend(id, name, revision, root, &before, &touched)
        })
        .await
    }

    /// Whether the paths `touched` names are on disk as `before`, a snapshot of the
    /// workspace `target`, has them ([`Taken::unchanged`]). Runs off the actor.
    pub async fn unchanged_since(
        &self,
        target: &str,
        before: Arc<Taken>,
        touched: Touched,
    ) -> Result<bool, StoreError> {
        self.on_chunk_index(target, move |_, _, _, _, root| {
            before.unchanged(root, &touched)
        })
        .await
    }

    /// Runs `pass` on the chunk index for the workspace `target`, off the actor.
    async fn on_chunk_index<T: Send + 'static>(
        &self,
        target: &str,
        pass: impl FnOnce(&ChunkIndex, Uuid, &str, u64, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let entry = self.get(target)?;
        let chunks = self.chunks.clone();
        tokio::task::spawn_blocking(move || {
            pass(
                &chunks,
                entry.manifest.id,
                &entry.manifest.name,
                entry.manifest.revision,
                &entry.path,
            )
        })
        .await
        .map_err(|_| StoreError::Unavailable)?
    }

    /// The chunk reader for serving peers and local dedup.
    pub fn chunk_store(&self) -> ChunkStore {
        ChunkStore {
            chunks: self.chunks.clone(),
            view: self.view.clone(),
        }
    }

    /// Where the workspace with `id` lives (or will live) on this node.
    pub fn workspace_root(&self, id: Uuid) -> PathBuf {
        self.layout.workspace(id)
    }

    /// The store's layout (staging for transfers must be on the same file system).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Commits a verified clone built in staging as a new workspace.
    pub async fn commit_clone(
        &self,
        request: CloneRequest,
        by: &str,
    ) -> Result<Created, StoreError> {
        let CloneRequest {
            staging,
            origin,
            rename_to,
            private,
            notes,
            unflushed,
        } = request;
        let loaded = {
            let staging = staging.clone();
            tokio::task::spawn_blocking(move || workspace_dir::load(&staging, false))
                .await
                .map_err(|_| StoreError::Unavailable)??
        };
        let mut manifest = loaded.manifest;
        if private {
            manifest.sharing = Sharing {
                enabled: false,
                ..manifest.sharing
            };
        }
        self.send(CommitNew {
            prepared: workspace_dir::Prepared {
                staging,
                manifest,
                environments: loaded.environments,
                notes,
                from_peer: None,
            },
            rename_to,
            change: WorkspaceChange::Cloned,
            import: None,
            origin: Some(origin),
            unflushed,
            by: by.to_string(),
        })
        .await?
    }

    /// Finishes a clone committed before its write-back (`CloneRequest::unflushed`): waits
    /// for its file system to be flushed, then forgets the record a start after a crash
    /// would check. Off the actor: a large write-back delays nothing else.
    pub async fn flush(&self, id: Uuid) -> Result<(), StoreError> {
        // Test hook: leave the record, as a crash before the write-back would.
        if std::env::var_os("AIENV_TEST_LEAVE_UNFLUSHED").is_some() {
            return Ok(());
        }
        let root = self.get(&id.to_string())?.path.clone();
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || super::finish_flush(&layout, id, &root))
            .await
            .map_err(|_| StoreError::Unavailable)?
    }

    /// Applies a sync plan to the clone `id` and records the new origin state (none for a
    /// workspace that is not a clone). `change` is `Synced`, or `Pushed` for a peer's
    /// changes (a new revision even when `workspace.yaml` stayed as it was).
    pub async fn commit_sync(
        &self,
        id: Uuid,
        plan: SyncPlan,
        origin: Option<Origin>,
        by: &str,
        change: WorkspaceChange,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(CommitSync {
            id,
            plan,
            origin,
            by: by.to_string(),
            change,
        })
        .await?
    }

    /// Records freshly written files of a clone or sync (those of `snapshot` that `arrived`
    /// names, put in place at `committed_at`) in the chunk index, off the actor, so its next
    /// snapshot only stats them and their chunks serve local dedup at once.
    pub async fn record_snapshot(
        &self,
        id: Uuid,
        snapshot: SnapshotEntries,
        arrived: Arrived,
        committed_at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.record(id, arrived, committed_at, move |root, each| {
            snapshot.for_each(StoreError::io("reading the snapshot of", root), each)
        })
        .await
    }

    /// [`record_snapshot`](Self::record_snapshot) for the files a sync or push wrote, given
    /// as their entries: the rest of the workspace is not read through for them.
    pub async fn record_files(
        &self,
        id: Uuid,
        files: Vec<crate::snapshot::SnapshotEntry>,
        arrived: Arrived,
        committed_at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.record(id, arrived, committed_at, move |_, each| {
            files.iter().try_for_each(each)
        })
        .await
    }

    /// Records in the chunk index the arrived files among the entries `entries` hands over
    /// (given the workspace's root), off the actor.
    async fn record(
        &self,
        id: Uuid,
        arrived: Arrived,
        committed_at: std::time::SystemTime,
        entries: impl FnOnce(
                &Path,
                &mut dyn FnMut(&crate::snapshot::SnapshotEntry) -> Result<(), StoreError>,
            ) -> Result<(), StoreError>
            + Send
            + 'static,
    ) -> Result<(), StoreError> {
        let root = self.get(&id.to_string())?.path.clone();
        let chunks = self.chunks.clone();
        tokio::task::spawn_blocking(move || {
            chunks.record_from(id, &root, &arrived, committed_at, |each| {
                entries(&root, each)
            })
        })
        .await
        .map_err(|_| StoreError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan touches its own paths, `workspace.yaml` and the directory holding each path;
    /// a removal takes its subtree; past the bound, nothing is listed and the snapshot after
    /// the commit is walked.
    #[test]
    fn a_plan_lists_what_its_commit_touches_up_to_a_bound() {
        let plan = SyncPlan {
            remove: vec!["old".into()],
            dirs: vec!["new".into()],
            links: vec![("new/link".into(), "../x".into())],
            files: vec![("f0".into(), "a/b/file".into())],
            modes: vec![("a/b/file".into(), 0o600)],
            ..SyncPlan::default()
        };
        let mut expected = Touched::default();
        for path in ["new", "new/link", "a/b/file", WORKSPACE_FILE] {
            expected.changed(path);
        }
        expected.removed("old");
        assert_eq!(plan.touched(), Some(expected.clone()));
        // `a/b` is listed for `a/b/file`; `a`, whose own entries did not change, is not.
        assert_eq!(expected.len(), 6);
        let mut with_a = expected.clone();
        with_a.changed("a");
        assert_eq!(with_a.len(), 7);
        let big = SyncPlan {
            files: (0..SyncPlan::MAX_TOUCHED)
                .map(|i| (format!("f{i}"), format!("p{i}")))
                .collect(),
            ..SyncPlan::default()
        };
        assert_eq!(big.touched(), None);
    }
}
