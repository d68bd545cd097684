//! Start-up repair: after a crash the index and the workspace directories are made to agree
//! again, and every repair is reported.
//!
//! The directories are the truth for content (a change is on disk before it is indexed); the
//! index is the truth for history. Rules:
//! - leftovers in `staging/` (interrupted creates and imports) are removed;
//! - a clone made usable before its write-back finished (a record in `unflushed/`) has every
//!   file the record lists read and hashed again; one that differs (a crash cut the
//!   write-back short) moves the clone to `quarantine/`, and its index entry is dropped;
//! - leftovers in `trash/` (interrupted deletes) are removed, and their index entries too;
//! - a directory without an index entry is indexed (a create that crashed before indexing)
//!   or, when unreadable or clashing, moved to `quarantine/`;
//! - an index entry whose files changed on disk (a change that crashed before indexing, or a
//!   hand edit while the node was down) is re-read and recorded as a new revision;
//! - an index entry without a directory is dropped.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::model::WORKSPACE_FILE;
use crate::yaml;

use super::error::StoreError;
use super::index::{Index, IndexRecord};
use super::view::WorkspaceEntry;
use super::{revision_record, workspace_dir, Layout};
use crate::fsio;

/// What the start-up check found and repaired.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// One line per repair.
    pub repairs: Vec<String>,
    /// Workspaces indexed after the check.
    pub workspaces: usize,
}

pub(super) fn reconcile(
    layout: &Layout,
    index: &Index,
) -> Result<(Vec<Arc<WorkspaceEntry>>, ReconcileReport), StoreError> {
    let mut report = ReconcileReport::default();

    for leftover in read_dir_names(&layout.staging)? {
        fsio::remove_tree(&layout.staging.join(&leftover))?;
        report
            .repairs
            .push(format!("removed unfinished staging directory {leftover}"));
    }

    check_unflushed(layout, &mut report)?;

    let mut records: BTreeMap<Uuid, IndexRecord> = index
        .all()?
        .into_iter()
        .map(|r| (r.manifest.id, r))
        .collect();

    for leftover in read_dir_names(&layout.trash)? {
        if let Ok(id) = Uuid::parse_str(&leftover) {
            if let Some(record) = records.remove(&id) {
                index.remove(id, &record.manifest.name)?;
                report.repairs.push(format!(
                    "finished deleting workspace `{}` ({id})",
                    record.manifest.name
                ));
            }
        }
        fsio::remove_tree(&layout.trash.join(&leftover))?;
    }

    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for dir_name in read_dir_names(&layout.workspaces)? {
        let root = layout.workspaces.join(&dir_name);
        let Ok(id) = Uuid::parse_str(&dir_name) else {
            quarantine(
                layout,
                &dir_name,
                "its name is not a workspace id",
                &mut report,
            )?;
            continue;
        };
        seen.insert(id);
        match records.get(&id) {
            Some(record) => {
                let current = workspace_dir::stamps(&root, &record.environments);
                let disk_changed = current != record.stamps
                    || env_dirs_changed(&root, record)
                    || !root.join(WORKSPACE_FILE).is_file();
                if !disk_changed {
                    entries.push(Arc::new(WorkspaceEntry::new(
                        record.manifest.clone(),
                        record.environments.clone(),
                        root,
                    )));
                    continue;
                }
                match workspace_dir::load(&root, false) {
                    Ok(loaded)
                        if loaded.manifest.id == id
                            && loaded.manifest == record.manifest
                            && loaded.environments == record.environments =>
                    {
                        // Only timestamps moved; refresh them silently.
                        let refreshed = IndexRecord {
                            stamps: workspace_dir::stamps(&root, &loaded.environments),
                            ..record.clone()
                        };
                        index.put(&refreshed, Some(&record.manifest.name), None)?;
                        entries.push(Arc::new(WorkspaceEntry::new(
                            refreshed.manifest,
                            refreshed.environments,
                            root,
                        )));
                    }
                    Ok(mut loaded) if loaded.manifest.id == id => {
                        if index
                            .id_by_name(&loaded.manifest.name)?
                            .is_some_and(|owner| owner != id)
                        {
                            loaded.manifest.name = record.manifest.name.clone();
                        }
                        loaded.manifest.revision =
                            loaded.manifest.revision.max(record.manifest.revision) + 1;
                        loaded.manifest.updated = Utc::now();
                        fsio::write_atomic(
                            &root.join(WORKSPACE_FILE),
                            yaml::to_string(&loaded.manifest).as_bytes(),
                        )?;
                        let updated = IndexRecord {
                            stamps: workspace_dir::stamps(&root, &loaded.environments),
                            manifest: loaded.manifest,
                            environments: loaded.environments,
                        };
                        let revision = revision_record(&updated, "repaired", "node");
                        index.put(&updated, Some(&record.manifest.name), Some(&revision))?;
                        report.repairs.push(format!(
                            "workspace `{}`: files changed on disk were indexed as revision {}",
                            updated.manifest.name, updated.manifest.revision
                        ));
                        entries.push(Arc::new(WorkspaceEntry::new(
                            updated.manifest,
                            updated.environments,
                            root,
                        )));
                    }
                    unusable => {
                        let problem = match unusable {
                            Err(error) => error.to_string(),
                            Ok(_) => format!("{WORKSPACE_FILE} has another id"),
                        };
                        report.repairs.push(format!(
                            "workspace `{}`: {problem}; serving the indexed revision {}",
                            record.manifest.name, record.manifest.revision
                        ));
                        entries.push(Arc::new(WorkspaceEntry::new(
                            record.manifest.clone(),
                            record.environments.clone(),
                            root,
                        )));
                    }
                }
            }
            None => match workspace_dir::load(&root, false) {
                Ok(loaded) if loaded.manifest.id == id => {
                    if index.id_by_name(&loaded.manifest.name)?.is_some() {
                        quarantine(
                            layout,
                            &dir_name,
                            "its name is used by another workspace",
                            &mut report,
                        )?;
                        continue;
                    }
                    let record = IndexRecord {
                        stamps: workspace_dir::stamps(&root, &loaded.environments),
                        manifest: loaded.manifest,
                        environments: loaded.environments,
                    };
                    let revision = revision_record(&record, "recovered", "node");
                    index.put(&record, None, Some(&revision))?;
                    report.repairs.push(format!(
                        "indexed workspace `{}` ({id}) found without an index entry",
                        record.manifest.name
                    ));
                    entries.push(Arc::new(WorkspaceEntry::new(
                        record.manifest,
                        record.environments,
                        root,
                    )));
                }
                Ok(_) => quarantine(
                    layout,
                    &dir_name,
                    "its workspace.yaml has another id",
                    &mut report,
                )?,
                Err(error) => quarantine(layout, &dir_name, &error.to_string(), &mut report)?,
            },
        }
    }

    for (id, record) in &records {
        if !seen.contains(id) {
            index.remove(*id, &record.manifest.name)?;
            report.repairs.push(format!(
                "dropped index entry of workspace `{}` ({id}): its directory is missing",
                record.manifest.name
            ));
        }
    }
    for name in index.drop_dangling_names()? {
        report
            .repairs
            .push(format!("dropped dangling name `{name}`"));
    }
    index.flush()?;
    report.workspaces = entries.len();
    for entry in &mut entries {
        if let Some(origin) = index.origin(entry.manifest.id)? {
            *entry = Arc::new(entry.as_ref().clone().with_origin(Some(Arc::new(origin))));
        }
        if let Some(peer) = index.foreign(entry.manifest.id)? {
            *entry = Arc::new(entry.as_ref().clone().with_from_peer(Some(peer)));
        }
    }
    Ok((entries, report))
}

/// Whether environments were added or removed on disk since indexing.
fn env_dirs_changed(root: &std::path::Path, record: &IndexRecord) -> bool {
    let on_disk: HashSet<String> = read_dir_names(&root.join("environments"))
        .unwrap_or_default()
        .into_iter()
        .filter(|name| workspace_dir::environment_file(root, name).is_file())
        .collect();
    on_disk.len() != record.environments.len()
        || record
            .environments
            .keys()
            .any(|name| !on_disk.contains(name))
}

/// Checks every clone whose write-back was not known to be finished (see the module's rules).
fn check_unflushed(layout: &Layout, report: &mut ReconcileReport) -> Result<(), StoreError> {
    for name in read_dir_names(&layout.unflushed)? {
        let record = layout.unflushed.join(&name);
        let Some(id) = name
            .strip_suffix(".snapshot")
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            fs::remove_file(&record).map_err(StoreError::io("removing", &record))?;
            continue;
        };
        let root = layout.workspace(id);
        if root.exists() {
            let files = crate::snapshot::Snapshot::read_file(
                &record,
                &crate::snapshot::SnapshotLimits::default(),
            )
            .ok();
            let beneath = crate::beneath::Beneath::open(&root).ok();
            let bad: Vec<&str> = match &files {
                Some(files) => files
                    .entries
                    .iter()
                    .filter(|e| e.kind == crate::snapshot::EntryKind::File)
                    .filter(|e| {
                        !beneath
                            .as_ref()
                            .is_some_and(|b| super::chunk_index::file_matches(b, e))
                    })
                    .map(|e| e.path.as_str())
                    .collect(),
                None => vec!["(its record is unreadable)"],
            };
            if bad.is_empty() {
                fsio::sync_filesystem(&root)?;
                report.repairs.push(format!(
                    "clone {id}: its files were checked after an interrupted write-back, and are intact"
                ));
            } else {
                quarantine(
                    layout,
                    &id.to_string(),
                    &format!(
                        "a crash cut its write-back short ({} files differ from what arrived, e.g. {}); clone it again",
                        bad.len(),
                        bad.iter().take(3).copied().collect::<Vec<_>>().join(", ")
                    ),
                    report,
                )?;
            }
        }
        fs::remove_file(&record).map_err(StoreError::io("removing", &record))?;
        fsio::fsync_dir(&layout.unflushed)?;
    }
    Ok(())
}

fn quarantine(
    layout: &Layout,
    dir_name: &str,
    reason: &str,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    fs::create_dir_all(&layout.quarantine)
        .map_err(StoreError::io("creating directory", &layout.quarantine))?;
    let target = layout
        .quarantine
        .join(format!("{dir_name}-{}", Utc::now().format("%Y%m%dT%H%M%S")));
    let source = layout.workspaces.join(dir_name);
    fs::rename(&source, &target).map_err(StoreError::io("moving to quarantine", &source))?;
    report.repairs.push(format!(
        "moved {} to {}: {reason}",
        source.display(),
        target.display()
    ));
    Ok(())
}

fn read_dir_names(dir: &std::path::Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::io("reading directory", dir)(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StoreError::io("reading directory", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
