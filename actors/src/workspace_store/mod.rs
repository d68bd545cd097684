//! The WorkspaceStore actor: owns the sled index and the workspace directories under
//! `<data-dir>/workspaces/<id>/`.
//!
//! Data flow: callers hold a [`WorkspaceStoreHandle`]. Reads (`get`, `list`) come from the
//! store's published [`StoreView`] without messaging. Changes are messages handled one at a
//! time on the store's own thread (a `SyncArbiter` of one, since every change does blocking
//! file and index I/O). Work that can take long — copying an adopted directory, unpacking an
//! archive, writing an export — runs off the actor in `spawn_blocking` on a staging directory
//! or a read-only walk, and only the short commit goes through the actor.
//!
//! Durability protocol (see `ARCHITECTURE.md`): files first (temp + fsync + rename), then the
//! index (one transaction + flush), then the view and the event. On start, [`reconcile`] makes
//! index and directories agree again after a crash.

mod archive;
mod chunk_index;
mod clone;
mod error;
mod file_chunks;
mod grouped_tree;
mod handle;
mod index;
mod reconcile;
mod sled_watchdog;
mod sorted_changes;
mod templates;
mod view;
mod workspace_dir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::{NodeEvent, WorkspaceChange, WorkspaceChanged};
use crate::fsio;
use crate::model::{
    EnvironmentSpec, Sharing, WorkspaceKind, WorkspaceManifest, ENVIRONMENT_FILE, WORKSPACE_FILE,
};
use crate::yaml;

pub use archive::{
    ArchiveError, ArchiveManifest, ExportSummary, ImportLimits, ImportSummary, CONTENT_PREFIX,
    FORMAT_VERSION as ARCHIVE_FORMAT_VERSION, MANIFEST_ENTRY,
};
pub use chunk_index::{
    file_clock_now, Arrived, ChunkIndex, ChunkLocation, ChunkReader, EncodedSnapshot, ScanStats,
    Taken, Touched, CHUNK_GROUP, FILE_GROUP,
};
pub use clone::{ChunkStore, CloneRequest, Origin, SyncPlan, Unflushed};
pub use error::StoreError;
pub use grouped_tree::{ChangeBuffer, GroupedTree};
pub use handle::WorkspaceStoreHandle;
pub use index::{open_database, RevisionRecord};
pub use reconcile::ReconcileReport;
pub use sled_watchdog::SledWatchdog;
pub use templates::TEMPLATE_NAMES;
pub use view::{ListFilter, Page, StoreView, Viewer, WorkspaceEntry, DEFAULT_PAGE, MAX_PAGE};
pub use workspace_dir::{repo_slug, CreateRequest};

use index::{Index, IndexRecord};

/// Configuration of the WorkspaceStore.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Bounds on imported archives.
    pub import_limits: ImportLimits,
    /// How git runs in projects (the node's credential helper, deadlines).
    pub git: crate::git::Git,
}

/// Directories under the data dir that the store owns.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data>/index`: the sled database.
    pub index: PathBuf,
    /// `<data>/workspaces`: one directory per workspace, named by id.
    pub workspaces: PathBuf,
    /// `<data>/staging`: workspaces being built (create, adopt, import).
    pub staging: PathBuf,
    /// `<data>/trash`: workspaces being deleted.
    pub trash: PathBuf,
    /// `<data>/quarantine`: directories found unreadable at start, kept for inspection.
    pub quarantine: PathBuf,
    /// `<data>/unflushed`: one record per clone made usable before its files were known to
    /// be on disk; checked at start, removed once they are.
    pub unflushed: PathBuf,
    /// `<data>/snapshots`: the last snapshot taken of each workspace, a cache emptied at start.
    pub snapshots: PathBuf,
}

impl Layout {
    fn new(data_dir: &Path) -> Layout {
        Layout {
            index: data_dir.join("index"),
            workspaces: data_dir.join("workspaces"),
            staging: data_dir.join("staging"),
            trash: data_dir.join("trash"),
            quarantine: data_dir.join("quarantine"),
            unflushed: data_dir.join("unflushed"),
            snapshots: data_dir.join("snapshots"),
        }
    }

    /// The record of clone `id` not yet known to be on disk.
    fn unflushed_record(&self, id: Uuid) -> PathBuf {
        self.unflushed.join(format!("{id}.snapshot"))
    }

    fn workspace(&self, id: Uuid) -> PathBuf {
        self.workspaces.join(id.to_string())
    }
}

/// One entry of a workspace's history as listed.
#[derive(Debug, Clone)]
pub struct RevisionInfo {
    /// Revision number.
    pub revision: u64,
    /// When it was made.
    pub at: chrono::DateTime<Utc>,
    /// Who made it.
    pub by: String,
    /// Kind of change.
    pub change: String,
}

/// A change to metadata fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WorkspacePatch {
    /// New name.
    pub name: Option<String>,
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New type.
    pub kind: Option<WorkspaceKind>,
    /// New languages.
    pub languages: Option<Vec<String>>,
    /// New tools.
    pub tools: Option<Vec<String>>,
    /// Make it a template (keeping parameters it declares) or not.
    pub template: Option<bool>,
}

/// The result of creating or importing a workspace.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new workspace.
    pub workspace: Arc<WorkspaceEntry>,
    /// What was done on the way (copied files, renamed, new id, external links, ...).
    pub notes: Vec<String>,
    /// For imports, what the archive contained.
    pub import: Option<ImportSummary>,
}

/// The actor. Construct it through [`WorkspaceStoreHandle::start`].
pub struct WorkspaceStore {
    layout: Layout,
    index: Index,
    view: StoreView,
    view_sender: watch::Sender<Arc<StoreView>>,
    bus: EventBus,
}

impl Actor for WorkspaceStore {
    type Context = SyncContext<Self>;

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Err(error) = self.index.flush() {
            tracing::error!(%error, "flushing the index at shutdown failed");
        }
        Running::Stop
    }
}

type Reply<T> = Result<T, StoreError>;

/// Commits a workspace prepared in staging (create, adopt, import).
#[derive(Message)]
#[rtype(result = "Reply<Created>")]
struct CommitNew {
    prepared: workspace_dir::Prepared,
    /// Rename to this name instead of failing on a name clash (`--as`).
    rename_to: Option<String>,
    change: WorkspaceChange,
    import: Option<ImportSummary>,
    /// For a clone, where it came from.
    origin: Option<Origin>,
    /// For a clone: the files a start after a crash must find intact (every other file was
    /// flushed already). Given, the clone is made visible before the write-back is done, and
    /// [`WorkspaceStoreHandle::flush`] finishes it; absent, the file system is flushed first.
    unflushed: Option<clone::Unflushed>,
    by: String,
}

/// Changes metadata fields.
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct Update {
    target: String,
    patch: WorkspacePatch,
    expected_revision: Option<u64>,
    by: String,
}

/// Replaces `workspace.yaml` with edited text.
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct ReplaceManifest {
    target: String,
    text: String,
    by: String,
}

/// Creates or replaces one environment's `environment.yaml`.
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct PutEnvironment {
    target: String,
    name: String,
    text: String,
    expected_revision: Option<u64>,
    by: String,
}

/// Removes one environment's `environment.yaml` (its other files stay).
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct RemoveEnvironment {
    target: String,
    name: String,
    expected_revision: Option<u64>,
    by: String,
}

/// Sets sharing.
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct SetSharing {
    target: String,
    sharing: Sharing,
    by: String,
}

/// Deletes a workspace.
#[derive(Message)]
#[rtype(result = "Reply<()>")]
struct Delete {
    target: String,
    by: String,
}

/// Lists a workspace's history.
#[derive(Message)]
#[rtype(result = "Reply<Vec<RevisionInfo>>")]
struct Revisions {
    target: String,
}

/// Reads one revision.
#[derive(Message)]
#[rtype(result = "Reply<RevisionRecord>")]
struct GetRevision {
    target: String,
    revision: u64,
}

/// Restores an earlier revision as a new revision.
#[derive(Message)]
#[rtype(result = "Reply<Arc<WorkspaceEntry>>")]
struct Restore {
    target: String,
    revision: u64,
    by: String,
}

impl WorkspaceStore {
    fn find(&self, target: &str) -> Reply<Arc<WorkspaceEntry>> {
        self.view
            .find(target)
            .ok_or_else(|| StoreError::NotFound(target.to_string()))
    }

    fn check_revision(entry: &WorkspaceEntry, expected: Option<u64>) -> Reply<()> {
        match expected {
            Some(expected) if expected != entry.manifest.revision => {
                Err(StoreError::RevisionConflict {
                    name: entry.manifest.name.clone(),
                    expected,
                    actual: entry.manifest.revision,
                })
            }
            _ => Ok(()),
        }
    }

    fn check_name_free(&self, name: &str, id: Uuid) -> Reply<()> {
        match self.index.id_by_name(name)? {
            Some(owner) if owner != id => Err(StoreError::NameTaken(name.to_string())),
            _ => Ok(()),
        }
    }

    /// Writes a new revision of an existing workspace: environment files first, then
    /// `workspace.yaml` (the commit point on disk), then the index, view and event.
    fn commit_change(
        &mut self,
        old: &WorkspaceEntry,
        mut manifest: WorkspaceManifest,
        environments: BTreeMap<String, EnvironmentSpec>,
        change: WorkspaceChange,
        by: &str,
    ) -> Reply<Arc<WorkspaceEntry>> {
        manifest.id = old.manifest.id;
        manifest.created = old.manifest.created;
        manifest.revision = old.manifest.revision + 1;
        manifest.updated = Utc::now().max(old.manifest.updated);
        manifest.environments = environments.keys().cloned().collect();
        manifest.validate().map_err(|errors| StoreError::Invalid {
            file: WORKSPACE_FILE.into(),
            errors,
        })?;
        self.check_name_free(&manifest.name, manifest.id)?;
        let root = old.path.clone();
        for (name, spec) in &environments {
            if old.environments.get(name) != Some(spec) {
                let path = workspace_dir::environment_file(&root, name);
                std::fs::create_dir_all(path.parent().expect("environment file has a parent"))
                    .map_err(StoreError::io("creating directory", &path))?;
                fsio::write_atomic(&path, yaml::to_string(spec).as_bytes())?;
            }
        }
        for name in old.environments.keys() {
            if !environments.contains_key(name) {
                let path = workspace_dir::environment_file(&root, name);
                std::fs::remove_file(&path).map_err(StoreError::io("removing", &path))?;
                let _ = std::fs::remove_dir(path.parent().expect("has a parent"));
            }
        }
        let manifest_text = yaml::to_string(&manifest);
        fsio::write_atomic(&root.join(WORKSPACE_FILE), manifest_text.as_bytes())?;
        self.index_and_publish(
            manifest,
            environments,
            root,
            change,
            Some(&old.manifest.name),
            by,
        )
    }

    fn index_and_publish(
        &mut self,
        manifest: WorkspaceManifest,
        environments: BTreeMap<String, EnvironmentSpec>,
        root: PathBuf,
        change: WorkspaceChange,
        old_name: Option<&str>,
        by: &str,
    ) -> Reply<Arc<WorkspaceEntry>> {
        let origin = self.index.origin(manifest.id)?;
        let from_peer = self.index.foreign(manifest.id)?;
        let record = IndexRecord {
            stamps: workspace_dir::stamps(&root, &environments),
            manifest,
            environments,
        };
        // History is append-only: a sync that left `workspace.yaml` as it was adds no revision.
        let revision = match self
            .index
            .revision(record.manifest.id, record.manifest.revision)?
        {
            Some(_) => None,
            None => Some(revision_record(&record, change.as_str(), by)),
        };
        self.index.put(&record, old_name, revision.as_ref())?;
        let entry = Arc::new(
            WorkspaceEntry::new(record.manifest, record.environments, root)
                .with_origin(origin.map(Arc::new))
                .with_from_peer(from_peer),
        );
        self.view.insert(entry.clone());
        self.publish(WorkspaceChanged {
            change,
            id: entry.manifest.id,
            name: entry.manifest.name.clone(),
            workspace: Some(entry.clone()),
            by: by.to_string(),
        });
        tracing::info!(
            workspace = %entry.manifest.name,
            id = %entry.manifest.id,
            revision = entry.manifest.revision,
            change = change.as_str(),
            by,
            "workspace changed"
        );
        Ok(entry)
    }

    fn publish(&mut self, event: WorkspaceChanged) {
        let view = &mut self.view;
        let sender = &self.view_sender;
        self.bus.publish(NodeEvent::WorkspaceChanged(event), |seq| {
            view.seq = seq;
            sender.send_replace(Arc::new(view.clone()));
        });
    }
}

fn revision_record(record: &IndexRecord, change: &str, by: &str) -> RevisionRecord {
    RevisionRecord {
        revision: record.manifest.revision,
        at: record.manifest.updated,
        by: by.to_string(),
        change: change.to_string(),
        workspace_yaml: yaml::to_string(&record.manifest),
        environments: record
            .environments
            .iter()
            .map(|(name, spec)| (name.clone(), yaml::to_string(spec)))
            .collect(),
    }
}

impl Handler<CommitNew> for WorkspaceStore {
    type Result = Reply<Created>;

    fn handle(&mut self, message: CommitNew, _: &mut Self::Context) -> Self::Result {
        let CommitNew {
            prepared,
            rename_to,
            change,
            import,
            origin,
            unflushed,
            by,
        } = message;
        let staging = prepared.staging.clone();
        let result = (|| {
            let mut manifest = prepared.manifest;
            let mut notes = prepared.notes;
            if let Some(name) = rename_to {
                manifest.name = name;
            }
            manifest.validate().map_err(|errors| StoreError::Invalid {
                file: WORKSPACE_FILE.into(),
                errors,
            })?;
            if self.index.id_by_name(&manifest.name)?.is_some() {
                return Err(StoreError::NameTaken(manifest.name));
            }
            if self.view.find(&manifest.id.to_string()).is_some() {
                let new_id = Uuid::new_v4();
                notes.push(format!(
                    "id {} is already used on this node; the copy got id {new_id}",
                    manifest.id
                ));
                manifest.id = new_id;
            }
            for (name, spec) in &prepared.environments {
                let path = workspace_dir::environment_file(&staging, name);
                if !path.exists() {
                    std::fs::create_dir_all(path.parent().expect("has a parent"))
                        .map_err(StoreError::io("creating directory", &path))?;
                    fsio::write_atomic(&path, yaml::to_string(spec).as_bytes())?;
                }
            }
            // Written only when it differs, so a clone keeps the source's bytes (and root hash).
            // Durably: a clone committed before its write-back lists only the files that came.
            let manifest_path = staging.join(WORKSPACE_FILE);
            let manifest_text = yaml::to_string(&manifest);
            if std::fs::read_to_string(&manifest_path).ok().as_deref() != Some(&manifest_text) {
                fsio::write_atomic(&manifest_path, manifest_text.as_bytes())?;
            }
            match &unflushed {
                // Durable before the rename: a start after a crash checks these files.
                Some(files) => {
                    std::fs::create_dir_all(&self.layout.unflushed)
                        .map_err(StoreError::io("creating directory", &self.layout.unflushed))?;
                    files.write_file(&self.layout.unflushed_record(manifest.id))?;
                    fsio::fsync_dir(&self.layout.unflushed)?;
                }
                None => fsio::sync_filesystem(&staging)?,
            }
            let root = self.layout.workspace(manifest.id);
            std::fs::rename(&staging, &root).map_err(StoreError::io("moving into place", &root))?;
            fsio::fsync_dir(&self.layout.workspaces)?;
            let workspace = {
                if let Some(peer) = &prepared.from_peer {
                    self.index.put_foreign(manifest.id, peer)?;
                }
                if let Some(origin) = &origin {
                    self.index.put_origin(manifest.id, origin)?;
                }
                self.index_and_publish(manifest, prepared.environments, root, change, None, &by)?
            };
            Ok(Created {
                workspace,
                notes,
                import,
            })
        })();
        if result.is_err() {
            let _ = fsio::remove_tree(&staging);
        }
        result
    }
}

/// Finishes a clone committed before its write-back: flushes its file system, then drops
/// the record that would have it checked at the next start.
pub(super) fn finish_flush(layout: &Layout, id: Uuid, root: &Path) -> Result<(), StoreError> {
    let record = layout.unflushed_record(id);
    if !record.exists() {
        return Ok(());
    }
    fsio::sync_filesystem(root)?;
    std::fs::remove_file(&record).map_err(StoreError::io("removing", &record))?;
    fsio::fsync_dir(&layout.unflushed)?;
    Ok(())
}

impl Handler<Update> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: Update, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        Self::check_revision(&old, message.expected_revision)?;
        let mut manifest = old.manifest.clone();
        let patch = message.patch;
        if let Some(name) = patch.name {
            manifest.name = name;
        }
        if let Some(title) = patch.title {
            manifest.title = title;
        }
        if let Some(description) = patch.description {
            manifest.description = description;
        }
        if let Some(tags) = patch.tags {
            manifest.tags = tags;
        }
        if let Some(kind) = patch.kind {
            manifest.kind = kind;
        }
        if let Some(languages) = patch.languages {
            manifest.languages = languages;
        }
        if let Some(tools) = patch.tools {
            manifest.tools = tools;
        }
        match patch.template {
            Some(true) if manifest.template.is_none() => {
                manifest.template = Some(crate::model::TemplateSpec::default());
            }
            Some(false) => manifest.template = None,
            _ => {}
        }
        let environments = old.environments.clone();
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::Updated,
            &message.by,
        )
    }
}

impl Handler<ReplaceManifest> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: ReplaceManifest, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        let manifest: WorkspaceManifest = yaml::from_str(&message.text, Path::new(WORKSPACE_FILE))?;
        let mut errors = crate::model::ValidationErrors::default();
        if manifest.id != old.manifest.id {
            errors.add("id", "cannot be changed");
        }
        if manifest.created != old.manifest.created {
            errors.add("created", "cannot be changed");
        }
        let listed: Vec<&String> = manifest.environments.iter().collect();
        let existing: Vec<&String> = old.environments.keys().collect();
        if listed.len() != existing.len()
            || listed.iter().any(|n| !old.environments.contains_key(*n))
        {
            errors.add(
                "environments",
                "is kept by aienv from environments/*/environment.yaml; add or remove \
                 environments through the environment routes",
            );
        }
        errors.into_result().map_err(|errors| StoreError::Invalid {
            file: WORKSPACE_FILE.into(),
            errors,
        })?;
        Self::check_revision(&old, Some(manifest.revision))?;
        let environments = old.environments.clone();
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::Updated,
            &message.by,
        )
    }
}

impl Handler<PutEnvironment> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: PutEnvironment, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        Self::check_revision(&old, message.expected_revision)?;
        let mut errors = crate::model::ValidationErrors::default();
        errors.check_slug("environment", &message.name);
        errors.into_result().map_err(|errors| StoreError::Invalid {
            file: "request".into(),
            errors,
        })?;
        let file = format!("environments/{}/{ENVIRONMENT_FILE}", message.name);
        let spec: EnvironmentSpec = yaml::from_str(&message.text, Path::new(&file))?;
        spec.validate()
            .map_err(|errors| StoreError::Invalid { file, errors })?;
        let mut environments = old.environments.clone();
        environments.insert(message.name, spec);
        let manifest = old.manifest.clone();
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::Updated,
            &message.by,
        )
    }
}

impl Handler<RemoveEnvironment> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: RemoveEnvironment, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        Self::check_revision(&old, message.expected_revision)?;
        let mut environments = old.environments.clone();
        if environments.remove(&message.name).is_none() {
            return Err(StoreError::EnvironmentNotFound {
                workspace: old.manifest.name.clone(),
                environment: message.name,
            });
        }
        let manifest = old.manifest.clone();
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::Updated,
            &message.by,
        )
    }
}

impl Handler<SetSharing> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: SetSharing, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        if old.manifest.sharing == message.sharing {
            return Ok(old);
        }
        let mut manifest = old.manifest.clone();
        manifest.sharing = message.sharing;
        let environments = old.environments.clone();
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::SharingChanged,
            &message.by,
        )
    }
}

impl Handler<Delete> for WorkspaceStore {
    type Result = Reply<()>;

    fn handle(&mut self, message: Delete, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        let id = old.manifest.id;
        let trash = self.layout.trash.join(id.to_string());
        fsio::remove_tree(&trash)?;
        std::fs::rename(&old.path, &trash).map_err(StoreError::io("moving to trash", &old.path))?;
        fsio::fsync_dir(&self.layout.workspaces)?;
        self.index.remove(id, &old.manifest.name)?;
        self.view.remove(id);
        self.publish(WorkspaceChanged {
            change: WorkspaceChange::Deleted,
            id,
            name: old.manifest.name.clone(),
            workspace: None,
            by: message.by.clone(),
        });
        tracing::info!(workspace = %old.manifest.name, %id, by = %message.by, "workspace deleted");
        // Off the store's thread: removing a large tree takes long, and every other write
        // waits behind this actor. The workspace is gone from the index already; if the node
        // stops first, the next start finishes the removal.
        let removal = std::thread::Builder::new()
            .name("aienv-trash".into())
            .spawn({
                let trash = trash.clone();
                move || {
                    if let Err(error) = fsio::remove_tree(&trash) {
                        tracing::warn!(%error, "removing a deleted workspace's files failed");
                    }
                }
            });
        if let Err(error) = removal {
            tracing::warn!(%error, "no thread to remove a deleted workspace's files; the next start will");
        }
        Ok(())
    }
}

impl Handler<Revisions> for WorkspaceStore {
    type Result = Reply<Vec<RevisionInfo>>;

    fn handle(&mut self, message: Revisions, _: &mut Self::Context) -> Self::Result {
        let entry = self.find(&message.target)?;
        Ok(self
            .index
            .revisions(entry.manifest.id)?
            .into_iter()
            .map(|r| RevisionInfo {
                revision: r.revision,
                at: r.at,
                by: r.by,
                change: r.change,
            })
            .collect())
    }
}

impl Handler<GetRevision> for WorkspaceStore {
    type Result = Reply<RevisionRecord>;

    fn handle(&mut self, message: GetRevision, _: &mut Self::Context) -> Self::Result {
        let entry = self.find(&message.target)?;
        self.index
            .revision(entry.manifest.id, message.revision)?
            .ok_or_else(|| StoreError::RevisionNotFound {
                name: entry.manifest.name.clone(),
                revision: message.revision,
            })
    }
}

impl Handler<Restore> for WorkspaceStore {
    type Result = Reply<Arc<WorkspaceEntry>>;

    fn handle(&mut self, message: Restore, _: &mut Self::Context) -> Self::Result {
        let old = self.find(&message.target)?;
        let record = self
            .index
            .revision(old.manifest.id, message.revision)?
            .ok_or_else(|| StoreError::RevisionNotFound {
                name: old.manifest.name.clone(),
                revision: message.revision,
            })?;
        let manifest: WorkspaceManifest =
            yaml::from_str(&record.workspace_yaml, Path::new(WORKSPACE_FILE))?;
        let mut environments = BTreeMap::new();
        for (name, text) in &record.environments {
            let file = format!("environments/{name}/{ENVIRONMENT_FILE}");
            environments.insert(name.clone(), yaml::from_str(text, Path::new(&file))?);
        }
        self.commit_change(
            &old,
            manifest,
            environments,
            WorkspaceChange::Restored,
            &message.by,
        )
    }
}
