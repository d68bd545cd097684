//! The WorkspaceStore's async API: reads from the published view without a round trip,
//! changes as messages to the actor, and the long work (copying, unpacking, exporting,
//! removing) in `spawn_blocking` on staging directories, committed by one message at the end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::WorkspaceChange;
use crate::fsio;
use crate::model::{Sharing, WORKSPACE_FILE};

use super::index::Index;
use super::view::{ListFilter, Page, StoreView, WorkspaceEntry};
use super::{
    archive, reconcile, workspace_dir, ChunkIndex, CommitNew, CreateRequest, Created, Delete,
    ExportSummary, GetRevision, ImportLimits, Layout, PutEnvironment, ReconcileReport,
    RemoveEnvironment, ReplaceManifest, Restore, RevisionInfo, RevisionRecord, Revisions,
    SetSharing, StoreConfig, StoreError, Update, WorkspacePatch, WorkspaceStore,
};

/// Cloneable async API of the WorkspaceStore for the HTTP layer, the CLI and tests.
#[derive(Clone)]
pub struct WorkspaceStoreHandle {
    pub(super) addr: Addr<WorkspaceStore>,
    pub(super) view: watch::Receiver<Arc<StoreView>>,
    pub(super) layout: Arc<Layout>,
    pub(super) import_limits: ImportLimits,
    pub(super) git: crate::git::Git,
    pub(super) chunks: ChunkIndex,
    pub(super) database: sled::Db,
}

impl WorkspaceStoreHandle {
    /// Opens the index, reconciles it with the directories, and starts the actor on its own
    /// thread. Must be called inside a running actix system.
    pub fn start(
        config: &StoreConfig,
        bus: EventBus,
    ) -> Result<(WorkspaceStoreHandle, ReconcileReport), StoreError> {
        let layout = Layout::new(&config.data_dir);
        for dir in [&layout.workspaces, &layout.staging, &layout.trash] {
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating directory", dir))?;
        }
        let index = Index::open(&layout.index, config.cache_bytes, &layout.snapshots)?;
        let chunks = index.chunks().clone();
        let database = index.database().clone();
        let (entries, report) = reconcile::reconcile(&layout, &index)?;
        let view = StoreView::new(entries, bus.last_seq());
        let (view_sender, view_receiver) = watch::channel(Arc::new(view.clone()));
        let store = WorkspaceStore {
            layout: layout.clone(),
            index,
            view,
            view_sender,
            bus,
        };
        // SyncArbiter builds its actor from a factory; ours hands over the one opened store.
        let slot = Mutex::new(Some(store));
        let addr = SyncArbiter::start(1, move || {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("the workspace store thread is started once")
        });
        Ok((
            WorkspaceStoreHandle {
                addr,
                view: view_receiver,
                layout: Arc::new(layout),
                import_limits: config.import_limits.clone(),
                git: config.git.clone(),
                chunks,
                database,
            },
            report,
        ))
    }

    /// A named tree of the node's database for another actor that keeps its own records
    /// (the PeerRegistry's pins and trust): sled is opened once, here.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.database.open_tree(name)?)
    }

    /// The current read view.
    pub fn view(&self) -> Arc<StoreView> {
        self.view.borrow().clone()
    }

    /// One page of workspaces matching `filter`.
    pub fn list(&self, filter: &ListFilter) -> Page {
        self.view().list(filter)
    }

    /// The workspace with this id or name.
    pub fn get(&self, target: &str) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.view()
            .find(target)
            .ok_or_else(|| StoreError::NotFound(target.to_string()))
    }

    pub(super) async fn send<M>(&self, message: M) -> Result<M::Result, StoreError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        WorkspaceStore: Handler<M>,
    {
        self.addr
            .send(message)
            .await
            .map_err(|_| StoreError::Unavailable)
    }

    /// How this node runs git in workspaces' projects.
    pub fn git(&self) -> &crate::git::Git {
        &self.git
    }

    /// Creates a workspace (empty, from a template, or adopting a directory).
    pub async fn create(&self, request: CreateRequest, by: &str) -> Result<Created, StoreError> {
        if !request.name.is_empty() {
            if let Some(existing) = self.view().find(&request.name) {
                return Err(StoreError::NameTaken(existing.manifest.name.clone()));
            }
        }
        // A template that is not a built-in one is a workspace here marked as a template.
        let template_source = match &request.template {
            Some(name) if !super::TEMPLATE_NAMES.contains(&name.as_str()) => {
                let found = self
                    .view()
                    .find(name)
                    .filter(|e| e.manifest.template.is_some());
                let Some(found) = found else {
                    let here: Vec<String> = self
                        .view()
                        .iter()
                        .filter(|e| e.manifest.template.is_some())
                        .map(|e| e.manifest.name.clone())
                        .collect();
                    return Err(StoreError::BadRequest(format!(
                        "unknown template `{name}`; built-in templates are: {}{}",
                        super::TEMPLATE_NAMES.join(", "),
                        if here.is_empty() {
                            "; this node has no workspace templates".to_string()
                        } else {
                            format!("; workspace templates here: {}", here.join(", "))
                        }
                    )));
                };
                Some(found.path.clone())
            }
            _ => None,
        };
        let staging = self.new_staging_dir("create")?;
        let prepared = {
            let (staging, git) = (staging.clone(), self.git.clone());
            tokio::task::spawn_blocking(move || {
                if let Some(source) = &template_source {
                    return workspace_dir::from_template(source, &request, &staging, &git);
                }
                let prepared = workspace_dir::prepare_new(&request, &staging)?;
                match &request.git {
                    Some(source) => {
                        workspace_dir::add_git_project(prepared, source, request.git_local, &git)
                    }
                    None => Ok(prepared),
                }
            })
            .await
            .map_err(|_| StoreError::Unavailable)
        }?;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = fsio::remove_tree(&staging);
                return Err(error);
            }
        };
        self.send(CommitNew {
            prepared,
            rename_to: None,
            change: WorkspaceChange::Created,
            import: None,
            origin: None,
            unflushed: None,
            by: by.to_string(),
        })
        .await?
    }

    /// Changes metadata fields. `expected_revision` guards against lost updates.
    pub async fn update(
        &self,
        target: &str,
        patch: WorkspacePatch,
        expected_revision: Option<u64>,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(Update {
            target: target.to_string(),
            patch,
            expected_revision,
            by: by.to_string(),
        })
        .await?
    }

    /// Replaces `workspace.yaml` with `text`, whose `revision` must be the current one.
    pub async fn replace_manifest(
        &self,
        target: &str,
        text: String,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(ReplaceManifest {
            target: target.to_string(),
            text,
            by: by.to_string(),
        })
        .await?
    }

    /// Creates or replaces an environment from its YAML text.
    pub async fn put_environment(
        &self,
        target: &str,
        name: &str,
        text: String,
        expected_revision: Option<u64>,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(PutEnvironment {
            target: target.to_string(),
            name: name.to_string(),
            text,
            expected_revision,
            by: by.to_string(),
        })
        .await?
    }

    /// Removes an environment's spec.
    pub async fn remove_environment(
        &self,
        target: &str,
        name: &str,
        expected_revision: Option<u64>,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(RemoveEnvironment {
            target: target.to_string(),
            name: name.to_string(),
            expected_revision,
            by: by.to_string(),
        })
        .await?
    }

    /// Sets sharing.
    pub async fn set_sharing(
        &self,
        target: &str,
        sharing: Sharing,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(SetSharing {
            target: target.to_string(),
            sharing,
            by: by.to_string(),
        })
        .await?
    }

    /// Deletes a workspace and its history.
    pub async fn delete(&self, target: &str, by: &str) -> Result<(), StoreError> {
        self.send(Delete {
            target: target.to_string(),
            by: by.to_string(),
        })
        .await?
    }

    /// A workspace's history, oldest first.
    pub async fn revisions(&self, target: &str) -> Result<Vec<RevisionInfo>, StoreError> {
        self.send(Revisions {
            target: target.to_string(),
        })
        .await?
    }

    /// One revision's files.
    pub async fn revision(
        &self,
        target: &str,
        revision: u64,
    ) -> Result<RevisionRecord, StoreError> {
        self.send(GetRevision {
            target: target.to_string(),
            revision,
        })
        .await?
    }

    /// Makes revision `revision`'s content the new current revision.
    pub async fn restore(
        &self,
        target: &str,
        revision: u64,
        by: &str,
    ) -> Result<Arc<WorkspaceEntry>, StoreError> {
        self.send(Restore {
            target: target.to_string(),
            revision,
            by: by.to_string(),
        })
        .await?
    }

    /// Writes the workspace as a `.tar.zst` archive to `out` (off the actor).
    pub async fn export<W: std::io::Write + Send + 'static>(
        &self,
        target: &str,
        out: W,
    ) -> Result<ExportSummary, StoreError> {
        let entry = self.get(target)?;
        let (snapshot, stats) = self.snapshot(&entry.manifest.id.to_string()).await?;
        tokio::task::spawn_blocking(move || {
            archive::export(&entry.path, &snapshot, stats.skipped, out)
        })
        .await
        .map_err(|_| StoreError::Unavailable)?
        .map_err(StoreError::from)
    }

    /// Verifies and unpacks the archive at `archive_path` into staging, then commits it as a
    /// new workspace, named `rename_to` when given.
    pub async fn import(
        &self,
        archive_path: PathBuf,
        rename_to: Option<String>,
        by: &str,
    ) -> Result<Created, StoreError> {
        let staging = self.new_staging_dir("import")?;
        let limits = self.import_limits.clone();
        let unpacked = {
            let staging = staging.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let file = std::fs::File::open(&archive_path)
                    .map_err(StoreError::io("opening", &archive_path))?;
                let imported = archive::import(std::io::BufReader::new(file), &staging, &limits)?;
                let loaded = workspace_dir::load(&staging, false)?;
                Ok((imported, loaded))
            })
            .await
            .map_err(|_| StoreError::Unavailable)?
        };
        let (archive::Imported { summary, snapshot }, loaded) = match unpacked {
            Ok(unpacked) => unpacked,
            Err(error) => {
                let _ = fsio::remove_tree(&staging);
                return Err(error);
            }
        };
        let notes = summary
            .external_links
            .iter()
            .map(|(path, target)| {
                format!("kept link {path} -> {target} (points outside the workspace)")
            })
            .collect();
        let committed_at = super::file_clock_now();
        let created = self
            .send(CommitNew {
                prepared: workspace_dir::Prepared {
                    staging,
                    manifest: loaded.manifest,
                    environments: loaded.environments,
                    notes,
                    from_peer: None,
                },
                rename_to,
                change: WorkspaceChange::Imported,
                import: Some(summary),
                origin: None,
                unflushed: None,
                by: by.to_string(),
            })
            .await??;
        if let Some(snapshot) = snapshot {
            // Every file was verified against these hashes while it was written, so the first
            // share need not read them again. `workspace.yaml` is rewritten by the commit.
            let chunks = self.chunks.clone();
            let (id, root) = (
                created.workspace.manifest.id,
                created.workspace.path.clone(),
            );
            let recorded = tokio::task::spawn_blocking(move || {
                let arrived = super::Arrived::AllBut([WORKSPACE_FILE.to_string()].into());
                chunks.record(id, &root, &snapshot, &arrived, committed_at)
            })
            .await;
            if let Ok(Err(error)) = recorded {
                tracing::warn!(%error, "recording an imported workspace's hashes failed; its first share reads it again");
            }
        }
        Ok(created)
    }

    fn new_staging_dir(&self, purpose: &str) -> Result<PathBuf, StoreError> {
        let path = self
            .layout
            .staging
            .join(format!("{purpose}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&path).map_err(StoreError::io("creating directory", &path))?;
        Ok(path)
    }
}
