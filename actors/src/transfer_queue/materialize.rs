//! Turning a verified staging area into a workspace: relocate embedded paths, record the
//! origin, and hand the clone (or the sync plan) to the WorkspaceStore, which renames it into
//! place; then index the new files so the next snapshot only stats them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use uuid::Uuid;

use crate::snapshot::EntryKind;
use crate::snapshot_receive::{KeptSnapshot, SnapshotEntries};
use crate::workspace_store::{Arrived, CloneRequest, Origin, Taken, Touched, Unflushed};

use super::error::TransferError;
use super::job::Progress;
use super::runner::{blocking, Closing, JobContext, Outcome};
use super::stage::Stage;

impl JobContext {
    pub(super) async fn materialize_clone(
        &self,
        stage: &Arc<Stage>,
        received: &Arc<KeptSnapshot>,
    ) -> Result<Outcome, TransferError> {
        let head = &received.head;
        // A second copy on this node gets a new id (and so another directory).
        let id = if self.store.get(&head.workspace_id.to_string()).is_ok() {
            Uuid::new_v4()
        } else {
            head.workspace_id
        };
        let new_root = self.store.workspace_root(id);
        let relocation = {
            let stage = stage.clone();
            blocking(move || stage.relocate(&new_root)).await?
        };
        let mut notes = relocation.notes.clone();
        if !relocation.relocated.is_empty() {
            notes.push(format!(
                "relocated {} files and links that embedded the source's path: {}",
                relocation.relocated.len(),
                relocation
                    .relocated
                    .keys()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for rebuild in &relocation.needs_rebuild {
            notes.push(format!("needs rebuild: {rebuild}"));
        }
        let arrivals = {
            let (git, tree) = (self.store.git().clone(), stage.tree().to_path_buf());
            blocking(move || Ok(arrive_git_projects(&git, &tree))).await?
        };
        notes.extend(arrivals.iter().map(|a| a.note.clone()));
        if id != head.workspace_id {
            set_id(stage.tree(), id)?;
            notes.push(format!(
                "this node already has workspace id {}; the clone got id {id}",
                head.workspace_id
            ));
        }
        let origin = Origin {
            peer_id: self.job.peer_id,
            peer_key: self.job.peer_key,
            peer_name: self.job.peer_name.clone(),
            workspace_id: head.workspace_id,
            workspace_name: head.name.clone(),
            revision: head.revision,
            root: received.root,
            cloned_at: Utc::now(),
            synced_at: None,
            relocated: relocation.relocated.clone(),
            needs_rebuild: relocation.needs_rebuild.clone(),
        };
        // The files that arrived as the snapshot says (all but those relocated, rebuilt by
        // git, or `workspace.yaml`): recorded in the chunk index, and, rather than waiting
        // for their write-back before the clone is usable, checked by content at the next
        // start if a crash comes first. Named by what they are not, so no set of every path.
        let mut rewritten: HashSet<String> = relocation.relocated.keys().cloned().collect();
        rewritten.insert(crate::model::WORKSPACE_FILE.to_string());
        // A project git rebuilt: its `.git` holds other files than the source's (hashed when
        // next read), and its directory files the snapshot never listed, flushed below.
        let rebuilt: Vec<String> = arrivals
            .iter()
            .filter(|a| a.rewrote_git_dir)
            .map(|a| format!("{}/", a.path))
            .collect();
        let snapshot = SnapshotEntries::Kept(received.clone());
        if !rebuilt.is_empty() {
            let git_dirs: Vec<String> = rebuilt.iter().map(|p| format!("{p}.git/")).collect();
            let (snapshot, job_dir) = (snapshot.clone(), self.job_dir.clone());
            rewritten = blocking(move || {
                snapshot.for_each(
                    TransferError::io("reading the received snapshot in", &job_dir),
                    |entry| {
                        if git_dirs
                            .iter()
                            .any(|dir| entry.path.starts_with(dir.as_str()))
                        {
                            rewritten.insert(entry.path.clone());
                        }
                        Ok(())
                    },
                )?;
                Ok(rewritten)
            })
            .await?;
        }
        let arrived = Arrived::AllBut(rewritten);
        let commit_started = Instant::now();
        {
            let (tree, arrived) = (stage.tree().to_path_buf(), arrived.clone());
            blocking(move || {
                // Every file in the tree is one of the snapshot's (verified) but in a
                // rebuilt project; those that did not arrive as received (relocated, a
                // rebuilt project's) are made durable now, with the directories holding them.
                let as_received = |path: &str| {
                    arrived.contains(path) && !rebuilt.iter().any(|p| path.starts_with(p.as_str()))
                };
                crate::fsio::fsync_tree_except(&tree, as_received)
                    .map_err(|e| TransferError::io("flushing", &tree)(std::io::Error::other(e)))
            })
            .await?;
        }
        let unflushed = Unflushed {
            snapshot: snapshot.clone(),
            arrived: arrived.clone(),
        };
        let committed_at = crate::workspace_store::file_clock_now();
        let created = self
            .store
            .commit_clone(
                CloneRequest {
                    staging: stage.tree().to_path_buf(),
                    origin,
                    rename_to: self.job.request.rename_to.clone(),
                    private: self.job.request.private,
                    notes: Vec::new(),
                    unflushed: Some(unflushed),
                },
                &self.job.request.by,
            )
            .await?;
        // Usable from here on; the job is done once the clone is on disk.
        let usable = commit_started.elapsed();
        notes.extend(created.notes);
        let local_id = created.workspace.manifest.id;
        // Indexing the new files (CPU) overlaps waiting for their write-back (I/O).
        let record = async {
            let recorded = self
                .store
                .record_snapshot(local_id, snapshot.clone(), arrived, committed_at)
                .await;
            self.save_base(local_id, &snapshot).await;
            recorded
        };
        let flush = async {
            let started = Instant::now();
            (self.store.flush(local_id).await, started.elapsed())
        };
        let (recorded, (flushed, flush_took)) = tokio::join!(record, flush);
        match flushed {
            Ok(()) => notes.push(format!(
                "usable {:.2} s after verification, its write-back done {:.2} s later",
                usable.as_secs_f64(),
                flush_took.as_secs_f64()
            )),
            // The clone is in place; its record stays, so the next start checks its files.
            Err(error) => {
                tracing::warn!(job = %self.job.id, %error, "a clone's write-back could not be confirmed");
                notes.push(format!(
                    "its write-back could not be confirmed ({error}); the node checks its files at its next start"
                ));
            }
        }
        recorded?;
        // The clone is in place and verified; its post_clone hook runs now, confined. A
        // failing hook leaves the clone (like `git clone` with a failing hook) and says so.
        let mut hook_error = None;
        let wants_hook = created
            .workspace
            .manifest
            .hooks
            .unix(crate::model::HookMoment::PostClone)
            .is_some();
        if let (true, Some(hooks)) = (wants_hook, &self.post_clone) {
            let message = crate::runtime_supervisor::hooks::PostClone {
                workspace: local_id,
            };
            match hooks.send(message).await {
                Ok(Ok(())) => notes.push("the post_clone hook ran".into()),
                Ok(Err(error)) => hook_error = Some(error.to_string()),
                Err(_) => hook_error = Some("the node's runtimes are not running".into()),
            }
        }
        Ok(Outcome {
            local_id,
            local_name: created.workspace.manifest.name.clone(),
            notes,
            progress: Progress::default(),
            local_root: None,
            hook_error,
        })
    }

    /// Commits a sync. `source` is what the origin has (recorded as the clone's new base),
    /// `target` what the clone gets: the same, or (`kept`) the source with the clone's own
    /// changes.
    pub(super) async fn materialize_sync(
        &self,
        id: Uuid,
        stage: &Arc<Stage>,
        source: &SnapshotEntries,
        target: &SnapshotEntries,
        kept: bool,
        before: Arc<Taken>,
    ) -> Result<(Outcome, Closing), TransferError> {
        let local = self.store.get(&id.to_string())?;
        let new_root = local.path.clone();
        let relocation = {
            let stage = stage.clone();
            blocking(move || stage.relocate(&new_root)).await?
        };
        let is_clone = local.origin.is_some();
        let mut origin = super::runner::sync_origin(&self.job, &local);
        for (path, hash) in &relocation.relocated {
            origin.relocated.insert(path.clone(), *hash);
        }
        if !origin.relocated.is_empty() {
            // What the target no longer has is no longer relocated.
            let (mut relocated, target, job_dir) =
                (origin.relocated, target.clone(), self.job_dir.clone());
            origin.relocated = blocking(move || {
                let mut present = std::collections::BTreeMap::new();
                target.for_each(
                    TransferError::io("reading the target snapshot in", &job_dir),
                    |entry| {
                        if let Some((path, hash)) = relocated.remove_entry(&entry.path) {
                            present.insert(path, hash);
                        }
                        Ok(())
                    },
                )?;
                Ok(present)
            })
            .await?;
        }
        origin.needs_rebuild = relocation.needs_rebuild.clone();
        origin.revision = source.head().revision;
        origin.root = source.root();
        origin.synced_at = Some(Utc::now());
        let (entry, mut notes, touched) = self
            .commit_plan(
                id,
                stage,
                &origin.relocated,
                is_clone.then_some(origin.clone()),
                crate::events::WorkspaceChange::Synced,
            )
            .await?;
        if is_clone && !self.job.request.placed {
            self.save_base(id, source).await;
        }
        if kept {
            notes.push(format!(
                "kept what this clone changed since its last sync, and its git projects' own `.git`; `aienv sync {} --push` sends the changes back",
                entry.manifest.name
            ));
        }
        let mut all = relocation.notes;
        all.append(&mut notes);
        let outcome = Outcome {
            local_id: id,
            local_name: entry.manifest.name.clone(),
            notes: all,
            progress: Progress::default(),
            local_root: None,
            hook_error: None,
        };
        Ok((outcome, Closing::after(before, touched)))
    }

    /// Commits a push from a peer's clone: the changed files, a new revision, and the
    /// clone's git branches under `aienv/<peer>/`.
    pub(super) async fn materialize_push(
        &self,
        id: Uuid,
        stage: &Arc<Stage>,
        before: Arc<Taken>,
    ) -> Result<(Outcome, Closing), TransferError> {
        let local = self.store.get(&id.to_string())?;
        // The workspace may have changed here while the chunks came: the same rule again,
        // against what it holds now. The rule reads the pushed paths and what holds them.
        // When those are on disk as the job's snapshot (`before`) saw them, the rule's
        // answer is the one the job started from, and is not asked again. Else they are
        // described from disk again and the rest kept from `before`, without a walk, and the
        // rule runs again (`push_recheck`). A push that removes or replaces a directory
        // reads what is under it too: then the whole tree is walked again.
        let pushed = self.pushed_paths(&local.manifest.projects).await?;
        let unchanged = match &pushed {
            Some(pushed) => self
                .store
                .unchanged_since(&id.to_string(), before.clone(), pushed.clone())
                .await
                .inspect_err(|error| {
                    tracing::info!(job = %self.job.id, %error, "the pushed paths could not be checked; describing them again");
                })
                .unwrap_or(false),
            None => false,
        };
        let (taken, request) = if unchanged {
            tracing::debug!(job = %self.job.id, "the pushed paths are as the push found them");
            let (taken, projects) = (before.clone(), local.manifest.projects.clone());
            let request = self.push_request();
            let request = blocking(move || request(&taken.entries()?, &projects)).await?;
            (before, request)
        } else {
            let again = match pushed {
                Some(pushed) => self
                    .store
                    .amend_snapshot(&id.to_string(), before.clone(), pushed)
                    .await
                    .inspect_err(|error| {
                        tracing::info!(job = %self.job.id, %error, "the snapshot could not be amended; walking the workspace");
                    })
                    .ok(),
                None => None,
            };
            let taken = Arc::new(match again {
                Some(taken) => {
                    tracing::debug!(job = %self.job.id, "the push checked again on its own paths");
                    taken
                }
                None => self.store.take_snapshot(&id.to_string()).await?,
            });
            let (current, before) = {
                let taken = taken.clone();
                blocking(move || Ok((taken.entries()?, before.entries()?))).await?
            };
            let request = self
                .push_recheck(&current, &before, &local.manifest.projects)
                .await?;
            (taken, request)
        };
        let new_root = local.path.clone();
        let relocation = {
            let stage = stage.clone();
            blocking(move || stage.relocate(&new_root)).await?
        };
        let (entry, mut notes, touched) = self
            .commit_plan(
                id,
                stage,
                &Default::default(),
                None,
                crate::events::WorkspaceChange::Pushed,
            )
            .await?;
        notes.insert(
            0,
            format!(
                "{} changed paths from `{}` on {} became revision {}",
                request.changes.len(),
                request.source_name,
                self.job.peer_name,
                entry.manifest.revision
            ),
        );
        notes.extend(relocation.notes);
        let git = self.store.git().clone();
        let root = entry.path.clone();
        let projects = entry.manifest.projects.clone();
        let peer = self.job.peer_name.clone();
        let branches = request.branches.clone();
        let git_notes = blocking(move || {
            Ok(branches
                .iter()
                .map(|branch| super::push::receive_branch(&git, &root, &projects, &peer, branch))
                .collect::<Vec<_>>())
        })
        .await?;
        notes.extend(git_notes);
        let outcome = Outcome {
            local_id: id,
            local_name: entry.manifest.name.clone(),
            notes,
            progress: Progress::default(),
            local_root: None,
            hook_error: None,
        };
        // The branches received above went into `.git`, which the plan does not name.
        let touched = touched.filter(|_| request.branches.is_empty());
        Ok((outcome, Closing::after(taken, touched)))
    }

    /// The paths a push's merge rule reads on this side: every pushed path, the place of
    /// each project's `.git` (one made while the push ran turns its project's files into a
    /// git work tree the push may not write), and the directories holding them. `None` when
    /// a change removes or replaces a directory (the rule then reads its whole subtree) or
    /// there are too many to list.
    async fn pushed_paths(
        &self,
        projects: &[crate::model::Project],
    ) -> Result<Option<Touched>, TransferError> {
        let path = self.job_dir.join(super::push::REQUEST_FILE);
        let limits = self.config.limits.clone();
        let git_dirs = super::push::git_dirs(projects);
        blocking(move || {
            let bytes = std::fs::read(&path).map_err(TransferError::io("reading", &path))?;
            let request = super::push::PushRequest::decode(&bytes, &limits)?;
            if request.changes.len() >= crate::workspace_store::SyncPlan::MAX_TOUCHED {
                return Ok(None);
            }
            let is_dir = |entry: &Option<crate::snapshot::SnapshotEntry>| {
                entry.as_ref().is_some_and(|e| e.kind == EntryKind::Dir)
            };
            if request
                .changes
                .iter()
                .any(|change| is_dir(&change.base) && !is_dir(&change.new))
            {
                return Ok(None);
            }
            let mut touched = Touched::default();
            let paths = request.changes.iter().map(|change| change.path.as_str());
            for mut path in paths.chain(git_dirs.iter().map(String::as_str)) {
                touched.changed(path);
                while let Some((dir, _)) = path.rsplit_once('/') {
                    touched.changed(dir);
                    path = dir;
                }
            }
            Ok(Some(touched))
        })
        .await
    }

    /// Hands the staged plan to the store and indexes what it wrote; what it touched, for the
    /// snapshot after it (`None`: too much to list).
    async fn commit_plan(
        &self,
        id: Uuid,
        stage: &Arc<Stage>,
        relocated: &std::collections::BTreeMap<String, crate::snapshot::Hash>,
        origin: Option<Origin>,
        change: crate::events::WorkspaceChange,
    ) -> Result<
        (
            Arc<crate::workspace_store::WorkspaceEntry>,
            Vec<String>,
            Option<Touched>,
        ),
        TransferError,
    > {
        let plan = stage.take_plan();
        let touched = plan.touched();
        let summary = format!(
            "{} files replaced, {} links set, {} directories created, {} paths removed",
            plan.files.len(),
            plan.links.len(),
            plan.dirs.len(),
            plan.remove.len()
        );
        let written = Arrived::Only(
            plan.files
                .iter()
                .map(|(_, path)| path.clone())
                .filter(|path| {
                    !relocated.contains_key(path) && path != crate::model::WORKSPACE_FILE
                })
                .collect(),
        );
        let started = Instant::now();
        let committed_at = crate::workspace_store::file_clock_now();
        let entry = self
            .store
            .commit_sync(id, plan, origin, &self.job.request.by, change)
            .await?;
        let committed = started.elapsed();
        self.store
            .record_files(id, stage.written_files(), written, committed_at)
            .await?;
        tracing::debug!(job = %self.job.id, ?committed, recorded = ?started.elapsed() - committed, "sync committed");
        Ok((entry, vec![summary], touched))
    }

    /// Records what a clone had from its origin (what a later push or sync compares with).
    /// A failure costs only that: the next sync records it again.
    async fn save_base(&self, id: Uuid, snapshot: &SnapshotEntries) {
        let (dir, snapshot) = (self.config.dir.clone(), snapshot.clone());
        let saved = blocking(move || {
            super::push::save_base(&dir, id, &snapshot)
                .map_err(|e| TransferError::io("recording the base of", &dir)(e))
        })
        .await;
        if let Err(error) = saved {
            tracing::warn!(workspace = %id, %error, "recording the clone's base failed; push needs a sync first");
        }
    }
}

/// Makes each git project of a staged clone a checkout from its remote where that answers
/// (see [`crate::git::Git::arrive`]).
fn arrive_git_projects(git: &crate::git::Git, tree: &std::path::Path) -> Vec<crate::git::Arrival> {
    let path = tree.join(crate::model::WORKSPACE_FILE);
    let Ok(manifest) = crate::yaml::read_file::<crate::model::WorkspaceManifest>(&path) else {
        return Vec::new();
    };
    if manifest.validate().is_err() {
        return Vec::new();
    }
    manifest
        .projects
        .iter()
        .filter_map(|project| git.arrive(tree, project))
        .collect()
}

/// Rewrites the `id` in a staged `workspace.yaml` (a second copy on this node).
fn set_id(tree: &std::path::Path, id: Uuid) -> Result<(), TransferError> {
    let path = tree.join(crate::model::WORKSPACE_FILE);
    let mut manifest: crate::model::WorkspaceManifest =
        crate::yaml::read_file(&path).map_err(|e| TransferError::Store(e.into()))?;
    manifest.id = id;
    std::fs::write(&path, crate::yaml::to_string(&manifest))
        .map_err(TransferError::io("writing", &path))
}
