//! Changes back to the origin, and pulls that keep a clone's own changes.
//!
//! A clone remembers the snapshot its origin had at the last clone or sync (its *base*,
//! `<transfers>/bases/<workspace id>`). What the clone changed since is the difference
//! between the base and its own snapshot ([`read_changes`], both read side by side): each
//! change names the path, what the base had there and what the clone has now. The same
//! three-way rule serves both directions ([`merge`] in memory for a push into this node,
//! [`pull_merge`] read in order for a sync):
//!
//! - **push**: the origin lays the clone's changes over its current snapshot. A path the
//!   origin also changed since the base (it no longer has what the base had) is a conflict;
//!   nothing is applied unless the push is forced (the clone's version wins).
//! - **pull** (`sync`): the clone lays its own changes over the origin's new snapshot, so a
//!   sync no longer overwrites work done in the clone; a path both changed is a conflict
//!   unless the sync is forced (the origin's version wins).
//!
//! Git projects travel as git does it: their working trees and `.git` state are not laid
//! over anything; a push adds the clone's new git objects (`objects/xx/…`, packs: names
//! derived from content, so adding one never changes another) and the origin points a
//! branch named for the clone at the pushed commit ([`BranchPush`]). Spec:
//! `schemas/transfer.md`, "Pushing changes back".

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{EntryKind, Hash, Snapshot, SnapshotEntry, SnapshotError, SnapshotLimits};
use crate::snapshot_receive::{join, KeptSnapshot, SnapshotEntries};

use super::TransferError;

/// Version of the push body.
pub const PUSH_FORMAT: u32 = 1;
/// Most branches one push may update.
pub const MAX_BRANCHES: usize = 64;
/// The pushed request in a push job's directory.
pub const REQUEST_FILE: &str = "push.msgpack.zst";
/// Most conflicting paths listed (the count is always exact).
pub const MAX_LISTED_CONFLICTS: usize = 1000;

/// One path the clone changed since its base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Workspace-relative path.
    pub path: String,
    /// What the base had there (without chunks), or nothing.
    #[serde(default)]
    pub base: Option<SnapshotEntry>,
    /// What the clone has there now, or nothing (removed).
    #[serde(default)]
    pub new: Option<SnapshotEntry>,
}

/// A git project's branch going back to the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPush {
    /// The project's path in the workspace.
    pub project: String,
    /// The clone's branch name (`main`); the origin stores it as
    /// `aienv/<clone node>/<branch>`.
    pub branch: String,
    /// The commit, 40 or 64 hex digits.
    pub commit: String,
}

/// The body of `POST /workspaces/{ws}/pushes`: MessagePack, zstd-compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Always [`PUSH_FORMAT`].
    pub format: u32,
    /// The clone's workspace id on the pushing node: chunks are fetched from it.
    #[serde(deserialize_with = "crate::uuid_wire::deserialize")]
    pub source_workspace_id: Uuid,
    /// The clone's name there.
    pub source_name: String,
    /// The clone's absolute path there (pushed files that embed it are relocated).
    pub source_root: String,
    /// Root of the origin snapshot the clone last synced to (its base).
    pub base_root: Hash,
    /// Apply even where the origin changed the same path (the clone's version wins).
    pub force: bool,
    /// The changes, in path byte order, each path once.
    pub changes: Vec<Change>,
    /// Git branches to set on the origin.
    #[serde(default)]
    pub branches: Vec<BranchPush>,
}

impl PushRequest {
    /// MessagePack, zstd-compressed.
    pub fn encode(&self) -> Vec<u8> {
        crate::packed::to_vec(self)
    }

    /// Decodes and checks a push received from a peer (bounded like a snapshot).
    pub fn decode(bytes: &[u8], limits: &SnapshotLimits) -> Result<PushRequest, SnapshotError> {
        let request: PushRequest = crate::packed::from_slice(bytes, limits, "a push request")?;
        request.validate(limits)?;
        Ok(request)
    }

    fn validate(&self, limits: &SnapshotLimits) -> Result<(), SnapshotError> {
        if self.format != PUSH_FORMAT {
            return Err(SnapshotError::Malformed(format!(
                "push format {} is not supported (this node reads {PUSH_FORMAT})",
                self.format
            )));
        }
        if self.changes.len() > limits.max_entries {
            return Err(SnapshotError::TooLarge(format!(
                "{} changes, more than the limit of {}",
                self.changes.len(),
                limits.max_entries
            )));
        }
        let mut previous: Option<&str> = None;
        for change in &self.changes {
            let bad = |reason: &str| SnapshotError::BadEntry {
                path: change.path.clone(),
                reason: reason.to_string(),
            };
            if previous.is_some_and(|p| p.as_bytes() >= change.path.as_bytes()) {
                return Err(bad("changes must be in strict byte order of path"));
            }
            previous = Some(&change.path);
            crate::tree::check_relative(&change.path).map_err(bad)?;
            if [&change.base, &change.new]
                .iter()
                .any(|e| e.as_ref().is_some_and(|e| e.path != change.path))
            {
                return Err(bad("an entry of this change names another path"));
            }
            if change.base.is_none() && change.new.is_none() {
                return Err(bad("a change needs a base or a new entry"));
            }
        }
        if !self.source_root.starts_with('/')
            || self.source_root.len() < 2
            || self.source_root.len() > crate::tree::MAX_PATH_BYTES
            || self.source_root.contains('\0')
        {
            return Err(SnapshotError::Malformed(format!(
                "source_root `{}` is not an absolute path",
                self.source_root.escape_debug()
            )));
        }
        if self.branches.len() > MAX_BRANCHES {
            return Err(SnapshotError::TooLarge(format!(
                "{} branches, more than the limit of {MAX_BRANCHES}",
                self.branches.len()
            )));
        }
        for branch in &self.branches {
            let bad = |reason: String| SnapshotError::BadEntry {
                path: branch.project.clone(),
                reason,
            };
            crate::tree::check_relative(&branch.project).map_err(|r| bad(r.to_string()))?;
            if !is_commit_id(&branch.commit) {
                return Err(bad(format!(
                    "commit `{}` is not 40 or 64 hex digits",
                    branch.commit
                )));
            }
            if !is_branch_name(&branch.branch) {
                return Err(bad(format!("`{}` is not a branch name", branch.branch)));
            }
        }
        Ok(())
    }
}

/// 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
pub fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A conservative branch name: what `git check-ref-format --branch` takes, limited to
/// letters, digits and `._/-`, no empty or dot-led component, no `..`, no `.lock` end.
pub fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && !name.contains("..")
        && !name.ends_with(".lock")
        && !name.ends_with('/')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// Whether two entries describe the same thing (kind, mode, content or target).
pub fn same(a: Option<&SnapshotEntry>, b: Option<&SnapshotEntry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && a.mode == b.mode
                && match a.kind {
                    EntryKind::File => a.hash == b.hash && a.size == b.size,
                    EntryKind::Symlink => a.target == b.target,
                    EntryKind::Dir => true,
                }
        }
        _ => false,
    }
}

/// Which paths a side's changes leave out.
pub struct Exclusions<'a> {
    /// Files rewritten on arrival because they embedded the origin's path.
    pub relocated: &'a BTreeMap<String, Hash>,
    /// Git projects' paths.
    pub git_projects: &'a [String],
    /// A push: a git project's working tree stays out (it goes back as commits) and of
    /// `.git` only additions of objects go. A pull (`false`): only `.git` stays out, and
    /// the clone's own edits in a working tree are kept like any other.
    pub git_objects: bool,
}

impl Exclusions<'_> {
    /// Why `change` stays out, if it does.
    fn excludes(&self, change: &Change) -> Option<Skipped> {
        let path = change.path.as_str();
        if path == crate::model::WORKSPACE_FILE || self.relocated.contains_key(path) {
            return Some(Skipped::Metadata);
        }
        let inner = self.git_projects.iter().find_map(|p| within(p, path))?;
        let object_added = change.base.is_none()
            && change
                .new
                .as_ref()
                .is_some_and(|new| object_kind(inner) == Some(new.kind));
        if self.git_objects && object_added {
            return None;
        }
        let git_state = inner == ".git" || inner.starts_with(".git/");
        match (git_state, self.git_objects) {
            (true, _) => Some(Skipped::GitState),
            (false, true) => Some(Skipped::GitWorkTree),
            (false, false) => None,
        }
    }
}

/// `path` relative to `project` (`""` is the workspace itself), if it is inside; the
/// project's own directory is inside as `""`.
fn within<'p>(project: &str, path: &'p str) -> Option<&'p str> {
    if project.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(project)? {
        "" => Some(""),
        rest => rest.strip_prefix('/'),
    }
}

/// The paths of the workspace's projects that are git checkouts in `snapshot` (they have
/// `.git`), normalized (`./a/` → `a`; the workspace itself is `""`): one pass in order.
pub fn git_projects(
    projects: &[crate::model::Project],
    snapshot: &SnapshotEntries,
) -> std::io::Result<Vec<String>> {
    let candidates: Vec<(String, String)> = project_paths(projects)
        .into_iter()
        .map(|p| (git_dir(&p), p))
        .collect();
    let mut found = Vec::new();
    if candidates.is_empty() {
        return Ok(found);
    }
    let mut cursor = snapshot.cursor()?;
    while let Some(entry) = cursor.next_entry()? {
        if let Some((_, project)) = candidates.iter().find(|(git, _)| *git == entry.path) {
            found.push(project.clone());
        }
    }
    Ok(found)
}

/// The workspace's projects' paths, normalized.
fn project_paths(projects: &[crate::model::Project]) -> Vec<String> {
    projects
        .iter()
        .map(|project| {
            project
                .path
                .split('/')
                .filter(|part| !part.is_empty() && *part != ".")
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// Where each of the workspace's projects keeps its `.git`: whether one is there decides
/// which pushed paths the rule refuses ([`git_projects`]).
pub fn git_dirs(projects: &[crate::model::Project]) -> Vec<String> {
    project_paths(projects).iter().map(|p| git_dir(p)).collect()
}

/// A project's `.git`.
fn git_dir(project: &str) -> String {
    if project.is_empty() {
        ".git".to_string()
    } else {
        format!("{project}/.git")
    }
}

/// What a path under `.git` that names git objects by their content must be (loose
/// objects' directories, loose objects, packs), or `None` for any other path.
fn object_kind(inner: &str) -> Option<EntryKind> {
    let rest = inner.strip_prefix(".git/objects/")?;
    let hex = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let pack = |name: &str| {
        name.strip_prefix("pack-")
            .and_then(|n| {
                n.strip_suffix(".pack")
                    .or_else(|| n.strip_suffix(".idx"))
                    .or_else(|| n.strip_suffix(".rev"))
            })
            .is_some_and(|h| hex(h, &[40, 64]))
    };
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [dir] if hex(dir, &[2]) => Some(EntryKind::Dir),
        [dir, name] if hex(dir, &[2]) && hex(name, &[38, 62]) => Some(EntryKind::File),
        ["pack", name] if pack(name) => Some(EntryKind::File),
        _ => None,
    }
}

/// Refuses a push that changes what pushes never change (`workspace.yaml`, a git project's
/// working tree or `.git` beyond new objects), judged by the receiving side's own git
/// projects ([`git_projects`]).
pub fn check_pushed(changes: &[Change], git_projects: &[String]) -> Result<(), SnapshotError> {
    let relocated = BTreeMap::new();
    let rule = Exclusions {
        relocated: &relocated,
        git_projects,
        git_objects: true,
    };
    for change in changes {
        let why = match rule.excludes(change) {
            None => continue,
            Some(Skipped::Metadata) => "workspace.yaml is each node's own; pushes never change it",
            Some(Skipped::GitState) => {
                "a git project's .git takes only new objects (commits go back as a branch)"
            }
            Some(Skipped::GitWorkTree) => {
                "a git project's files go back as commits on a branch, not as files"
            }
        };
        return Err(SnapshotError::BadEntry {
            path: change.path.clone(),
            reason: why.to_string(),
        });
    }
    Ok(())
}

/// Why a change was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Skipped {
    /// `workspace.yaml` or a relocated file.
    Metadata,
    /// A git project's `.git` state.
    GitState,
    /// A git project's working tree: it goes back as commits.
    GitWorkTree,
}

/// The difference from `base` to `mine`, in path byte order, minus what `exclusions` leave
/// out: the rule in memory, which [`read_changes`] is tested against.
#[cfg(test)]
pub fn changes(base: &Snapshot, mine: &Snapshot, exclusions: &Exclusions<'_>) -> Vec<Change> {
    let mut set = Vec::new();
    let walked = join(
        crate::snapshot_receive::EntryCursor::Whole(base.entries.iter()),
        crate::snapshot_receive::EntryCursor::Whole(mine.entries.iter()),
        |error| error,
        |b, m| {
            if let Some(change) = change(b, m).filter(|c| exclusions.excludes(c).is_none()) {
                set.push(change);
            }
            Ok(())
        },
    );
    walked.expect("entries in memory");
    set
}

/// A clone's changes since `base` (`mine` its snapshot), read side by side and holding only
/// the changes, in path byte order, and its git projects, which decide what stays out
/// (`git_objects`: a push's rule, else a sync's).
pub fn read_changes(
    base: &SnapshotEntries,
    mine: &SnapshotEntries,
    projects: &[crate::model::Project],
    relocated: &BTreeMap<String, Hash>,
    git_objects: bool,
) -> std::io::Result<(Vec<Change>, Vec<String>)> {
    let candidates: Vec<(String, String)> = project_paths(projects)
        .into_iter()
        .map(|p| (git_dir(&p), p))
        .collect();
    let mut git_projects = Vec::new();
    let mut set = Vec::new();
    join(
        base.cursor()?,
        mine.cursor()?,
        |error| error,
        |b, m| {
            if let Some(m) = m {
                if let Some((_, project)) = candidates.iter().find(|(git, _)| *git == m.path) {
                    git_projects.push(project.clone());
                }
            }
            set.extend(change(b, m));
            Ok(())
        },
    )?;
    // Which changes stay out depends on the git projects, known once `mine` was read.
    let rule = Exclusions {
        relocated,
        git_projects: &git_projects,
        git_objects,
    };
    set.retain(|change| rule.excludes(change).is_none());
    Ok((set, git_projects))
}

/// The change from `base` to `mine` at one path, if they differ.
fn change(base: Option<&SnapshotEntry>, mine: Option<&SnapshotEntry>) -> Option<Change> {
    if same(base, mine) {
        return None;
    }
    let path = base
        .or(mine)
        .expect("a path has an entry on one side")
        .path
        .clone();
    Some(Change {
        path,
        base: base.map(|e| SnapshotEntry {
            chunks: Vec::new(),
            ..e.clone()
        }),
        new: mine.cloned(),
    })
}

/// What a push refused for conflicts tells the pushing person (the push route's and the push
/// job's answer alike).
pub const PUSH_HINT: &str = "nothing was applied; sync the clone first (`aienv sync WS` keeps its own changes and takes the origin's), or push with --force to overwrite the origin's versions";

/// What a push refused for a path its origin changed back while it ran tells the person.
pub const PUSH_AGAIN_HINT: &str = "nothing was applied; the origin already had these paths as pushed when the push began, and changed them while it ran: push again";

/// The pushed paths a push job's plan left alone, since its origin already had them as
/// pushed when the job began (`before`), and which the origin has changed since
/// (`current`), in order. The merge rule may accept such a path again (changed back to the
/// base, it is the clone's change once more), but the plan, made from `before`, would not
/// write it: the push would end without it. `changes` are in path order, as a push's are.
pub fn changed_while_pushed(
    before: &SnapshotEntries,
    current: &SnapshotEntries,
    changes: &[Change],
) -> std::io::Result<Vec<String>> {
    let left_alone: Vec<&Change> = changes
        .iter()
        .zip(entries_at(before, changes.iter().map(|c| c.path.as_str()))?)
        .filter(|(change, was)| same(was.as_ref(), change.new.as_ref()))
        .map(|(change, _)| change)
        .collect();
    Ok(left_alone
        .iter()
        .zip(entries_at(
            current,
            left_alone.iter().map(|c| c.path.as_str()),
        )?)
        .filter(|(change, now)| !same(now.as_ref(), change.new.as_ref()))
        .map(|(change, _)| change.path.clone())
        .collect())
}

/// The entries of `snapshot` at `paths` (in byte order), `None` where it has none: one pass.
fn entries_at<'a>(
    snapshot: &SnapshotEntries,
    paths: impl Iterator<Item = &'a str>,
) -> std::io::Result<Vec<Option<SnapshotEntry>>> {
    let mut cursor = snapshot.cursor()?;
    let mut entry = cursor.next_entry()?;
    let mut found = Vec::new();
    for path in paths {
        while entry
            .as_ref()
            .is_some_and(|e| e.path.as_bytes() < path.as_bytes())
        {
            entry = cursor.next_entry()?;
        }
        if entry.as_ref().is_some_and(|e| e.path == path) {
            found.push(entry.take().map(Cow::into_owned));
            entry = cursor.next_entry()?;
        } else {
            found.push(None);
        }
    }
    Ok(found)
}

/// Paths both sides changed: nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts {
    /// Up to [`MAX_LISTED_CONFLICTS`] paths, in byte order.
    pub paths: Vec<String>,
    /// How many there are in all.
    pub count: usize,
}

impl Conflicts {
    /// The conflicts at `paths`, in byte order.
    pub fn of(paths: Vec<String>) -> Conflicts {
        Conflicts {
            count: paths.len(),
            paths: paths.into_iter().take(MAX_LISTED_CONFLICTS).collect(),
        }
    }
}

/// `onto` with `changes` laid over it (see the module's rule). `force` applies every change
/// even where `onto` no longer has the base's entry. The result keeps `onto`'s identity and
/// takes `source_root` (where changed files may embed a path).
pub fn merge(
    onto: &Snapshot,
    changes: &[Change],
    force: bool,
    source_root: &str,
) -> Result<Snapshot, Conflicts> {
    let mut tree: BTreeMap<String, SnapshotEntry> = onto
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    let mut conflicts = BTreeSet::new();
    let mut replaced = BTreeSet::new();
    for change in changes {
        let current = tree.get(&change.path);
        if same(current, change.new.as_ref()) {
            continue;
        }
        if !force && !same(current, change.base.as_ref()) {
            conflicts.insert(change.path.clone());
            continue;
        }
        replaced.insert(change.path.clone());
        match &change.new {
            Some(entry) => tree.insert(change.path.clone(), entry.clone()),
            None => tree.remove(&change.path),
        };
    }
    // Every path's parent must still be a directory: a subtree one side removed (or made a
    // file) while the other added to it.
    let mut recreated = BTreeSet::new();
    // Paths removed with a subtree: never recreated as a parent, so that changes that remove
    // a directory and add under it (a peer's push need not be one consistent tree) end
    // with the subtree gone rather than recreating and removing it in turn.
    let mut dropped = BTreeSet::new();
    loop {
        let orphans: Vec<(String, String)> = tree
            .keys()
            .filter_map(|path| {
                let parent = crate::tree::ancestors(path).last()?;
                tree.get(parent)
                    .is_none_or(|e| e.kind != EntryKind::Dir)
                    .then(|| (path.clone(), parent.to_string()))
            })
            .collect();
        if orphans.is_empty() {
            break;
        }
        for (orphan, parent) in orphans {
            if !force {
                conflicts.insert(orphan.clone());
                tree.remove(&orphan);
            } else if replaced.contains(&parent) || dropped.contains(&parent) {
                // The changes removed or replaced the parent: its subtree goes.
                tree.remove(&orphan);
                dropped.insert(orphan);
            } else if replaced.contains(&orphan) || recreated.contains(&orphan) {
                // The changes added under a directory the other side removed: it comes back.
                recreated.insert(parent.clone());
                tree.insert(
                    parent.clone(),
                    SnapshotEntry {
                        path: parent,
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        size: 0,
                        hash: None,
                        target: None,
                        chunks: Vec::new(),
                    },
                );
            } else {
                // The other side's entry under a subtree the changes removed.
                tree.remove(&orphan);
                dropped.insert(orphan);
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(Conflicts::of(conflicts.into_iter().collect()));
    }
    Ok(Snapshot::new(
        onto.workspace_id,
        onto.name.clone(),
        onto.revision,
        source_root.to_string(),
        tree.into_values().collect(),
    ))
}

/// What a sync that keeps the clone's own work makes, read in order and never held: the
/// [`merge`] of `changes` onto `onto` (never forced), with `current`'s own `.git` of each
/// git project in place of `onto`'s. Each entry of the result goes to `out` in order; with
/// conflicts, `Ok(Err(..))` after the whole walk (what went to `out` is then to be dropped).
/// Holds the changes, the directories open at the current path, and the conflicts found.
pub fn pull_merge(
    onto: &SnapshotEntries,
    changes: &[Change],
    current: &SnapshotEntries,
    git_projects: &[String],
    mut out: impl FnMut(&SnapshotEntry) -> std::io::Result<()>,
) -> std::io::Result<Result<(), Conflicts>> {
    let in_git = |path: &str| {
        git_projects.iter().any(|p| {
            within(p, path).is_some_and(|inner| inner == ".git" || inner.starts_with(".git/"))
        })
    };
    let mut onto = onto.cursor()?;
    let mut theirs = onto.next_entry()?;
    let mut changes = changes.iter().peekable();
    // The clone's own `.git` entries, merged into the result in order (none to look for
    // without git projects: `current` is not read).
    let mut clone = match git_projects.is_empty() {
        true => None,
        false => Some(current.cursor()?),
    };
    let mut next_git = || -> std::io::Result<Option<SnapshotEntry>> {
        let Some(clone) = clone.as_mut() else {
            return Ok(None);
        };
        while let Some(entry) = clone.next_entry()? {
            if in_git(&entry.path) {
                return Ok(Some(entry.into_owned()));
            }
        }
        Ok(None)
    };
    let mut git = next_git()?;
    let mut conflicts = Conflicts {
        paths: Vec::new(),
        count: 0,
    };
    // A path may conflict twice (changed on both sides, and an orphan): counted once.
    let mut last_conflict = String::new();
    let mut conflict = |path: &str| {
        if last_conflict != path {
            last_conflict = path.to_string();
            conflicts.count += 1;
            if conflicts.paths.len() < MAX_LISTED_CONFLICTS {
                conflicts.paths.push(path.to_string());
            }
        }
    };
    // Directories of the result that later paths may still be inside (a path's parent is
    // one of them, or it is an orphan).
    let mut open: Vec<String> = Vec::new();
    loop {
        let next_change = changes.peek().map(|c| c.path.as_str());
        let order = match (&theirs, next_change) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(t), Some(c)) => t.path.as_bytes().cmp(c.as_bytes()),
        };
        let (there, change) = match order {
            std::cmp::Ordering::Less => (theirs.take(), None),
            std::cmp::Ordering::Greater => (None, changes.next()),
            std::cmp::Ordering::Equal => (theirs.take(), changes.next()),
        };
        let result = match change {
            None => there,
            Some(change) => {
                let here = there.as_deref();
                if same(here, change.new.as_ref()) {
                    there
                } else if !same(here, change.base.as_ref()) {
                    conflict(&change.path);
                    there
                } else {
                    change.new.as_ref().map(Cow::Borrowed)
                }
            }
        };
        if order != std::cmp::Ordering::Greater {
            theirs = onto.next_entry()?;
        }
        let Some(entry) = result else {
            continue;
        };
        while open
            .last()
            .is_some_and(|dir| !crate::tree::still_inside(dir, &entry.path))
        {
            open.pop();
        }
        let parent = crate::tree::ancestors(&entry.path).last();
        if parent.is_some_and(|parent| !open.iter().any(|dir| dir == parent)) {
            // Its parent is gone or no longer a directory: a subtree one side removed (or
            // made a file) while the other added to it.
            conflict(&entry.path);
            continue;
        }
        if entry.kind == EntryKind::Dir {
            open.push(entry.path.clone());
        }
        if in_git(&entry.path) {
            continue;
        }
        while let Some(own) = git.take_if(|g| g.path.as_bytes() < entry.path.as_bytes()) {
            out(&own)?;
            git = next_git()?;
        }
        out(&entry)?;
    }
    while let Some(own) = git.take() {
        out(&own)?;
        git = next_git()?;
    }
    Ok(if conflicts.count == 0 {
        Ok(())
    } else {
        Err(conflicts)
    })
}

/// What a push makes of the receiving workspace `onto`, read in order and never held: the
/// [`merge`] of `changes` (in path order, as a validated request has them) onto it. Each
/// entry of the result goes to `out` in order; with conflicts (never when `force`),
/// `Ok(Err(..))` after the whole walk.
///
/// Unforced, it is [`pull_merge`] without git state. Forced, the changes may remove a
/// directory that later paths are added under, and [`merge`] then decides by walking up
/// from each path: what comes back, what goes. Those decisions concern only the changed
/// paths and their ancestors, so they are made by [`merge`] itself on that part of `onto`
/// (found in a first pass), and the second pass lays the result over the rest: a path of
/// `onto` outside that part stays exactly when its parent does. Holds the changes, their
/// ancestors and the directories open at the current path.
pub fn push_merge(
    onto: &SnapshotEntries,
    changes: &[Change],
    force: bool,
    mut out: impl FnMut(&SnapshotEntry) -> std::io::Result<()>,
) -> std::io::Result<Result<(), Conflicts>> {
    if !force {
        return pull_merge(onto, changes, onto, &[], out);
    }
    let mut decided: BTreeSet<&str> = BTreeSet::new();
    for change in changes {
        decided.insert(change.path.as_str());
        decided.extend(crate::tree::ancestors(&change.path));
    }
    let mut part = Vec::new();
    let mut cursor = onto.cursor()?;
    while let Some(entry) = cursor.next_entry()? {
        if decided.contains(entry.path.as_str()) {
            part.push(entry.into_owned());
        }
    }
    let part = Snapshot::new(Uuid::nil(), String::new(), 0, String::new(), part);
    let merged = merge(&part, changes, true, "").expect("a forced merge has no conflicts");
    let mut merged = merged.entries.into_iter().peekable();
    let mut cursor = onto.cursor()?;
    let mut theirs = cursor.next_entry()?;
    let mut open: Vec<String> = Vec::new();
    loop {
        let order = match (&theirs, merged.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(t), Some(m)) => t.path.as_bytes().cmp(m.path.as_bytes()),
        };
        let entry = match order {
            std::cmp::Ordering::Less => {
                let there = theirs.take().expect("compared above");
                theirs = cursor.next_entry()?;
                if decided.contains(there.path.as_str()) {
                    // Decided above, and not in the result.
                    continue;
                }
                there
            }
            std::cmp::Ordering::Equal => {
                theirs = cursor.next_entry()?;
                Cow::Owned(merged.next().expect("peeked"))
            }
            std::cmp::Ordering::Greater => Cow::Owned(merged.next().expect("peeked")),
        };
        while open
            .last()
            .is_some_and(|dir| !crate::tree::still_inside(dir, &entry.path))
        {
            open.pop();
        }
        let parent = crate::tree::ancestors(&entry.path).last();
        if parent.is_some_and(|parent| !open.iter().any(|dir| dir == parent)) {
            // Under a directory the changes removed or replaced: it goes with it.
            continue;
        }
        if entry.kind == EntryKind::Dir {
            open.push(entry.path.clone());
        }
        out(&entry)?;
    }
    Ok(Ok(()))
}

/// Points `aienv/<peer>/<branch>` of a pushed project at the pushed commit; says what
/// happened (never fails the push: the files are in).
pub fn receive_branch(
    git: &crate::git::Git,
    root: &std::path::Path,
    projects: &[crate::model::Project],
    peer: &str,
    branch: &BranchPush,
) -> String {
    let declared = projects.iter().any(|p| {
        p.path
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect::<Vec<_>>()
            .join("/")
            == branch.project
    });
    let name = format!("aienv/{peer}/{}", branch.branch);
    if !declared {
        return format!(
            "`{}` is not a project of this workspace: branch {name} not set",
            branch.project
        );
    }
    if let Err(reason) = crate::git::no_link_on_the_way(root, &branch.project) {
        return format!("{}: {reason}", branch.project);
    }
    match git.receive_branch(&root.join(&branch.project), &name, &branch.commit) {
        Ok(note) => format!("{}: {note}", branch.project),
        Err(error) => format!("{}: branch {name} not set: {error}", branch.project),
    }
}

/// `target` with every path under a git project's `.git` as `current` has it (the clone's
/// own git state), the rest as it is: the rule in memory, which [`pull_merge`] is tested
/// against.
#[cfg(test)]
pub fn keep_git_state(target: Snapshot, current: &Snapshot, git_projects: &[String]) -> Snapshot {
    if git_projects.is_empty() {
        return target;
    }
    let in_git = |path: &str| {
        git_projects.iter().any(|p| {
            within(p, path).is_some_and(|inner| inner == ".git" || inner.starts_with(".git/"))
        })
    };
    let Snapshot {
        workspace_id,
        name,
        revision,
        source_root,
        entries,
        ..
    } = target;
    let entries = entries
        .into_iter()
        .filter(|e| !in_git(&e.path))
        .chain(current.entries.iter().filter(|e| in_git(&e.path)).cloned())
        .collect();
    Snapshot::new(workspace_id, name, revision, source_root, entries)
}

/// Where the base of workspace `id` is kept.
pub fn base_path(transfers: &Path, id: Uuid) -> PathBuf {
    transfers.join("bases").join(format!("{id}.snapshot"))
}

/// Records `snapshot` as the base of workspace `id`, atomically.
pub fn save_base(
    transfers: &Path,
    id: Uuid,
    snapshot: &crate::snapshot_receive::SnapshotEntries,
) -> std::io::Result<()> {
    use crate::snapshot_receive::SnapshotEntries;
    let path = base_path(transfers, id);
    std::fs::create_dir_all(path.parent().expect("bases have a parent"))?;
    match snapshot {
        SnapshotEntries::Whole(snapshot) => snapshot.write_file(&path),
        // The received document is this node's encoding already: copied as it is.
        SnapshotEntries::Kept(received) => {
            crate::fsio::write_atomic_with(&path, |out| received.copy_to(out).map(drop))
        }
    }
    .map_err(std::io::Error::other)
}

/// Removes the bases of workspaces `exists` no longer knows (deleted since).
pub fn prune_bases(transfers: &Path, exists: impl Fn(Uuid) -> bool) {
    let Ok(entries) = std::fs::read_dir(transfers.join("bases")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snapshot"))
            .and_then(|n| n.parse::<Uuid>().ok());
        if id.is_none_or(|id| !exists(id)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The base of workspace `id`, if one was recorded (clones made before bases have none):
/// its file, open, once its entries were read through and found to hash to its root (it is
/// then read in order, never loaded).
pub fn open_base(transfers: &Path, id: Uuid) -> Result<Option<KeptSnapshot>, TransferError> {
    let path = base_path(transfers, id);
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let damaged = |why: String| TransferError::BaseDamaged {
        path: path.display().to_string(),
        source: SnapshotError::Malformed(why),
    };
    match KeptSnapshot::open_checked(file) {
        Ok(Some(base)) => Ok(Some(base)),
        Ok(None) => Err(damaged("its entries do not hash to its root".into())),
        Err(error) => Err(damaged(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::dir;

    fn file(path: &str, content: &str) -> SnapshotEntry {
        crate::snapshot::test_entries::file(path, content.as_bytes())
    }

    fn whole(snapshot: &Snapshot) -> SnapshotEntries {
        SnapshotEntries::Whole(std::sync::Arc::new(snapshot.clone()))
    }

    fn snapshot(entries: Vec<SnapshotEntry>) -> Snapshot {
        Snapshot::new(Uuid::nil(), "w".into(), 1, "/origin".into(), entries)
    }

    const NONE: Exclusions<'static> = Exclusions {
        relocated: &BTreeMap::new(),
        git_projects: &[],
        git_objects: true,
    };

    /// Only a path the job found already as pushed, and that is no longer so, is one its
    /// plan would leave unwritten: changed elsewhere, or never found as pushed, it is the
    /// merge rule's to judge.
    #[test]
    fn only_paths_found_as_pushed_and_changed_since_are_left_unwritten() {
        let change = |path: &str, base: Option<&str>, new: Option<&str>| Change {
            path: path.into(),
            base: base.map(|c| file(path, c)),
            new: new.map(|c| file(path, c)),
        };
        let changes = [
            change("a", Some("base"), Some("new")),
            change("b", Some("base"), Some("new")),
            change("c", Some("base"), None),
            change("d", None, Some("new")),
            change("e", Some("base"), Some("new")),
        ];
        // When the job began: `a`, `c`, `d` already as pushed; `b` and `e` at the base.
        let before = snapshot(vec![
            file("a", "new"),
            file("b", "base"),
            file("d", "new"),
            file("e", "base"),
        ]);
        // Now: `a` back at the base, `c` made again, `d` as pushed still, `b` changed by
        // the origin (a conflict for the rule, not left unwritten), `e` as pushed.
        let current = snapshot(vec![
            file("a", "base"),
            file("b", "other"),
            file("c", "base"),
            file("d", "new"),
            file("e", "new"),
        ]);
        let changed = changed_while_pushed(&whole(&before), &whole(&current), &changes).unwrap();
        assert_eq!(changed, ["a", "c"]);
        assert!(
            changed_while_pushed(&whole(&before), &whole(&before), &changes)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn changes_on_different_paths_merge() {
        let base = snapshot(vec![file("a", "1"), file("b", "1"), file("c", "1")]);
        let clone = snapshot(vec![file("a", "2"), file("b", "1"), file("d", "new")]);
        let origin = snapshot(vec![file("a", "1"), file("b", "3"), file("c", "1")]);
        let set = changes(&base, &clone, &NONE);
        let paths: Vec<&str> = set.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["a", "c", "d"]);
        let merged = merge(&origin, &set, false, "/clone").unwrap();
        assert_eq!(
            merged.entries,
            vec![file("a", "2"), file("b", "3"), file("d", "new")]
        );
        assert_eq!(merged.source_root, "/clone");
        assert_eq!(merged.root, crate::snapshot::root_hash(&merged.entries));
    }

    #[test]
    fn both_sides_changing_a_path_is_a_conflict_unless_forced() {
        let base = snapshot(vec![file("a", "1"), file("b", "1")]);
        let clone = snapshot(vec![file("a", "2"), file("b", "2")]);
        let origin = snapshot(vec![file("a", "3"), file("b", "2")]);
        let set = changes(&base, &clone, &NONE);
        // `b` changed the same way on both sides: not a conflict.
        assert_eq!(
            merge(&origin, &set, false, "/c"),
            Err(Conflicts {
                paths: vec!["a".into()],
                count: 1
            })
        );
        let forced = merge(&origin, &set, true, "/c").unwrap();
        assert_eq!(forced.entries, vec![file("a", "2"), file("b", "2")]);
    }

    #[test]
    fn a_subtree_removed_on_one_side_and_added_to_on_the_other_conflicts() {
        let base = snapshot(vec![dir("d"), file("d/x", "1")]);
        let clone = snapshot(vec![]);
        let origin = snapshot(vec![dir("d"), file("d/x", "1"), file("d/y", "new")]);
        let set = changes(&base, &clone, &NONE);
        let conflict = merge(&origin, &set, false, "/c").unwrap_err();
        assert_eq!(conflict.paths, vec!["d/y".to_string()]);
        // Forced, the clone's removal wins with the subtree.
        assert!(merge(&origin, &set, true, "/c").unwrap().entries.is_empty());
        // The other way round: the clone added under a directory the origin removed.
        let clone = snapshot(vec![dir("d"), file("d/x", "1"), file("d/z", "mine")]);
        let origin = snapshot(vec![]);
        let set = changes(&base, &clone, &NONE);
        assert!(merge(&origin, &set, false, "/c").is_err());
        let forced = merge(&origin, &set, true, "/c").unwrap();
        assert_eq!(forced.entries, vec![dir("d"), file("d/z", "mine")]);
    }

    #[test]
    fn git_projects_push_only_new_objects() {
        let projects = ["p".to_string()];
        let relocated = BTreeMap::new();
        let push = Exclusions {
            relocated: &relocated,
            git_projects: &projects,
            git_objects: true,
        };
        let pull = Exclusions {
            git_objects: false,
            ..push
        };
        let loose = format!("p/.git/objects/ab/{}", "c".repeat(38));
        let pack = format!("p/.git/objects/pack/pack-{}.pack", "d".repeat(40));
        let base = snapshot(vec![
            dir("p"),
            dir("p/.git"),
            file("p/.git/HEAD", "main"),
            file("p/x", "1"),
        ]);
        let clone = snapshot(vec![
            dir("p"),
            dir("p/.git"),
            file("p/.git/HEAD", "other"),
            file("p/.git/config", "[core]"),
            dir("p/.git/objects"),
            dir("p/.git/objects/ab"),
            file(&loose, "obj"),
            dir("p/.git/objects/pack"),
            file(&pack, "pack"),
            file("p/.git/objects/info", "alternates?"),
            file("p/x", "2"),
            file("workspace.yaml", "changed"),
        ]);
        let set = changes(&base, &clone, &push);
        let paths: Vec<&str> = set.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["p/.git/objects/ab", loose.as_str(), pack.as_str()]
        );
        // A pull keeps the clone's working-tree edit, and its `.git` as a whole.
        let kept: Vec<String> = changes(&base, &clone, &pull)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(kept, ["p/x"]);
        let origin = snapshot(vec![
            dir("p"),
            dir("p/.git"),
            file("p/.git/HEAD", "newer"),
            file("p/x", "1"),
            file("p/y", "new"),
        ]);
        let merged = merge(&origin, &changes(&base, &clone, &pull), false, "/o").unwrap();
        let pulled = keep_git_state(merged, &clone, &projects);
        let has = |path: &str, content: &str| pulled.entries.contains(&file(path, content));
        assert!(has("p/.git/HEAD", "other") && has("p/.git/config", "[core]"));
        assert!(has("p/x", "2") && has("p/y", "new"));
    }

    /// A push is a peer's word: its changes need not come from one consistent tree. One that
    /// removes a directory and adds a file two levels under it, forced, must end (the file
    /// goes with the subtree its own push removed), not recreate and remove the directory
    /// between them forever.
    #[test]
    fn a_forced_push_that_removes_a_directory_and_adds_under_it_ends() {
        let origin = snapshot(vec![dir("g"), file("g/x", "1")]);
        let changes = vec![
            Change {
                path: "g".into(),
                base: Some(dir("g")),
                new: None,
            },
            Change {
                path: "g/p/f".into(),
                base: None,
                new: Some(file("g/p/f", "mine")),
            },
        ];
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(merge(&origin, &changes, true, "/c"));
        });
        let merged = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the merge ends")
            .unwrap();
        assert!(merged.entries.is_empty(), "{:?}", merged.entries);
    }

    /// A sync or push finds the clone's changes and git projects by reading its snapshot
    /// beside its base, both on disk: what the in-memory rule finds.
    #[test]
    fn changes_read_side_by_side_are_those_found_in_memory() {
        let loose = format!("q/.git/objects/ab/{}", "c".repeat(38));
        let base = snapshot(vec![
            dir("p"),
            dir("p/.git"),
            file("p/.git/HEAD", "main"),
            file("p/x", "1"),
            dir("q"),
            file("q/a", "1"),
            file("q/a.txt", "1"),
            dir("q/a0"),
            file("relocated", "origin's"),
            file("removed", "1"),
            file("workspace.yaml", "origin's"),
        ]);
        let clone = snapshot(vec![
            dir("p"),
            dir("p/.git"),
            file("p/.git/HEAD", "other"),
            file("p/x", "2"),
            dir("q"),
            dir("q/.git"),
            dir("q/.git/objects"),
            dir("q/.git/objects/ab"),
            file(&loose, "obj"),
            dir("q/a"),
            file("q/a.txt", "2"),
            file("q/a/b", "new"),
            dir("q/a0"),
            file("relocated", "rewritten here"),
            file("workspace.yaml", "this node's"),
            file("zz", "added"),
        ]);
        let projects: Vec<crate::model::Project> = ["./p/", "q", "none"]
            .iter()
            .map(|path| crate::model::Project {
                name: path.replace(['.', '/'], ""),
                path: path.to_string(),
                git: None,
            })
            .collect();
        let relocated = BTreeMap::from([("relocated".to_string(), Hash::of(b"x"))]);
        let git = git_projects(&projects, &whole(&clone)).unwrap();
        assert_eq!(git, ["p", "q"]);
        let in_memory = changes(
            &base,
            &clone,
            &Exclusions {
                relocated: &relocated,
                git_projects: &git,
                git_objects: false,
            },
        );
        let paths: Vec<&str> = in_memory.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["p/x", "q/a", "q/a.txt", "q/a/b", "removed", "zz"]);
        let dir = tempfile::tempdir().unwrap();
        let kept = |snapshot: &Snapshot| crate::snapshot_receive::kept(snapshot, dir.path());
        let (set, found) =
            read_changes(&kept(&base), &kept(&clone), &projects, &relocated, false).unwrap();
        assert_eq!(set, in_memory);
        assert_eq!(found, git);
        // A push's rule: a git project's new objects go, its working tree stays out.
        let pushed = changes(
            &base,
            &clone,
            &Exclusions {
                relocated: &relocated,
                git_projects: &git,
                git_objects: true,
            },
        );
        let paths: Vec<&str> = pushed.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["q/.git/objects/ab", loose.as_str(), "removed", "zz"]
        );
        let (set, _) =
            read_changes(&kept(&base), &kept(&clone), &projects, &relocated, true).unwrap();
        assert_eq!(set, pushed);
    }

    /// The pull's merge read in order is the in-memory merge and git state, entry for entry
    /// and conflict for conflict, over random trees: removals, kinds changed, subtrees
    /// removed on one side and added to on the other, git projects.
    /// A small random tree over names that interleave in byte order (`a`, `a-1`, `a.txt`,
    /// `a/…`), with a git project `p`.
    fn random_tree(random: &mut dyn FnMut(u64) -> u64) -> Snapshot {
        let names = [
            "a",
            "a.txt",
            "a-1",
            "b",
            "p",
            "p/.git",
            "p/.git/HEAD",
            "p/x",
        ];
        let mut entries: BTreeMap<String, SnapshotEntry> = BTreeMap::new();
        for _ in 0..random(12) {
            let depth = random(3) as usize;
            let mut path = names[random(names.len() as u64) as usize].to_string();
            for _ in 0..depth {
                path = format!("{path}/{}", ["a", "b", "a.b"][random(3) as usize]);
            }
            let parts: Vec<&str> = path.split('/').collect();
            for end in 1..parts.len() {
                let parent = parts[..end].join("/");
                entries.insert(parent.clone(), dir(&parent));
            }
            let entry = match random(3) {
                0 => dir(&path),
                1 => file(&path, ["1", "2"][random(2) as usize]),
                _ => file(&path, "3"),
            };
            if entries.get(&path).is_none_or(|e| e.kind != EntryKind::Dir) {
                entries.insert(path, entry);
            }
        }
        snapshot(entries.into_values().collect())
    }

    #[test]
    fn a_pull_merged_in_order_is_the_merge_in_memory() {
        let mut next = crate::test_random(0x9e37_79b9_7f4a_7c15);
        let mut random = |n: u64| next() % n;
        let tree = |random: &mut dyn FnMut(u64) -> u64| random_tree(random);
        let scratch = tempfile::tempdir().unwrap();
        let kept = |snapshot: &Snapshot| crate::snapshot_receive::kept(snapshot, scratch.path());
        let (mut merged_count, mut conflicted, mut with_git) = (0, 0, 0);
        for _ in 0..2000 {
            let (base, clone, origin) = (tree(&mut random), tree(&mut random), tree(&mut random));
            let projects = git_projects(
                &[crate::model::Project {
                    name: "p".into(),
                    path: "p".into(),
                    git: None,
                }],
                &whole(&clone),
            )
            .unwrap();
            let rule = Exclusions {
                relocated: &BTreeMap::new(),
                git_projects: &projects,
                git_objects: false,
            };
            let set = changes(&base, &clone, &rule);
            let in_memory = merge(&origin, &set, false, &origin.source_root)
                .map(|merged| keep_git_state(merged, &clone, &projects));
            let mut entries = Vec::new();
            let streamed = pull_merge(&kept(&origin), &set, &kept(&clone), &projects, |e| {
                entries.push(e.clone());
                Ok(())
            })
            .unwrap();
            match (in_memory, streamed) {
                (Ok(merged), Ok(())) => {
                    assert_eq!(entries, merged.entries);
                    merged_count += 1;
                    with_git += usize::from(!projects.is_empty());
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    conflicted += 1;
                }
                (a, b) => panic!("in memory {a:?}, in order {b:?}"),
            }
        }
        // Both outcomes were exercised.
        assert!(
            merged_count > 100 && conflicted > 100 && with_git > 20,
            "{merged_count} {conflicted} {with_git}"
        );
    }

    /// A push merged in order, forced or not, is the merge in memory, on random trees and on
    /// change sets no consistent clone makes (a directory removed and paths added under
    /// it, changes whose base is out of date).
    #[test]
    fn a_push_merged_in_order_is_the_merge_in_memory() {
        let mut next = crate::test_random(0x005e_ed0f_9005);
        let mut random = |n: u64| next() % n;
        let scratch = tempfile::tempdir().unwrap();
        let kept = |snapshot: &Snapshot| crate::snapshot_receive::kept(snapshot, scratch.path());
        let (mut merged_count, mut conflicted, mut recreated) = (0, 0, 0);
        for round in 0..3000 {
            let force = round % 2 == 0;
            let (base, clone, origin) = (
                random_tree(&mut random),
                random_tree(&mut random),
                random_tree(&mut random),
            );
            let rule = Exclusions {
                relocated: &BTreeMap::new(),
                git_projects: &[],
                git_objects: true,
            };
            let mut set: BTreeMap<String, Change> = changes(&base, &clone, &rule)
                .into_iter()
                .map(|c| (c.path.clone(), c))
                .collect();
            // Changes of another tree's paths: removals, and additions whose parents may
            // be gone.
            for entry in random_tree(&mut random).entries {
                let change = match random(4) {
                    0 => Change {
                        path: entry.path.clone(),
                        base: Some(entry),
                        new: None,
                    },
                    1 => Change {
                        path: entry.path.clone(),
                        base: None,
                        new: Some(entry),
                    },
                    _ => continue,
                };
                set.insert(change.path.clone(), change);
            }
            let set: Vec<Change> = set.into_values().collect();
            let in_memory = merge(&origin, &set, force, &origin.source_root);
            let mut entries = Vec::new();
            let streamed = push_merge(&kept(&origin), &set, force, |e| {
                entries.push(e.clone());
                Ok(())
            })
            .unwrap();
            match (in_memory, streamed) {
                (Ok(merged), Ok(())) => {
                    assert_eq!(entries, merged.entries, "force {force}, changes {set:#?}");
                    merged_count += 1;
                    recreated += usize::from(
                        force
                            && merged.entries.iter().any(|e| {
                                e.kind == EntryKind::Dir
                                    && origin.entry(&e.path).is_none()
                                    && !set.iter().any(|c| c.path == e.path)
                            }),
                    );
                }
                (Err(a), Err(b)) => {
                    assert!(!force);
                    assert_eq!(a, b);
                    conflicted += 1;
                }
                (a, b) => panic!("in memory {a:?}, in order {b:?}"),
            }
        }
        // Merges, conflicts and forced merges that bring a removed directory back all came.
        assert!(
            merged_count > 500 && conflicted > 100 && recreated > 20,
            "{merged_count} {conflicted} {recreated}"
        );
    }

    #[test]
    fn the_receiver_refuses_what_pushes_never_change() {
        let projects = vec![crate::model::Project {
            name: "p".into(),
            path: "./p/".into(),
            git: None,
        }];
        let current = snapshot(vec![dir("p"), dir("p/.git"), file("p/.git/HEAD", "x")]);
        let projects = git_projects(&projects, &whole(&current)).unwrap();
        let added = |entry: SnapshotEntry| Change {
            path: entry.path.clone(),
            base: None,
            new: Some(entry),
        };
        let object = format!("p/.git/objects/ab/{}", "c".repeat(38));
        assert!(check_pushed(
            &[added(dir("p/.git/objects/ab")), added(file(&object, "o"))],
            &projects
        )
        .is_ok());
        let link_as_object_dir = SnapshotEntry {
            kind: EntryKind::Symlink,
            target: Some("/etc".into()),
            ..dir("p/.git/objects/ab")
        };
        for refused in [
            added(file("workspace.yaml", "sharing")),
            added(file("p/.git/config", "[core]\nfsmonitor = evil")),
            added(file("p/src.py", "a file of the work tree")),
            added(link_as_object_dir),
            Change {
                path: object.clone(),
                base: Some(file(&object, "old")),
                new: Some(file(&object, "rewritten")),
            },
        ] {
            let path = refused.path.clone();
            let error = check_pushed(&[refused], &projects).unwrap_err();
            assert!(error.to_string().contains(&path), "{error}");
        }
        assert!(check_pushed(&[added(file("data.csv", "ok"))], &projects).is_ok());
    }

    #[test]
    fn push_requests_round_trip_and_refuse_bad_input() {
        let request = PushRequest {
            format: PUSH_FORMAT,
            source_workspace_id: Uuid::from_u128(7),
            source_name: "w".into(),
            source_root: "/c".into(),
            base_root: Hash::of(b"base"),
            force: false,
            changes: vec![Change {
                path: "a".into(),
                base: None,
                new: Some(file("a", "1")),
            }],
            branches: vec![BranchPush {
                project: "p".into(),
                branch: "main".into(),
                commit: "a".repeat(40),
            }],
        };
        let limits = SnapshotLimits::default();
        assert_eq!(
            PushRequest::decode(&request.encode(), &limits).unwrap(),
            request
        );
        let mut bad = request.clone();
        bad.changes[0].path = "../a".into();
        bad.changes[0].new = Some(file("../a", "1"));
        assert!(PushRequest::decode(&bad.encode(), &limits).is_err());
        let mut bad = request.clone();
        bad.branches[0].branch = "-x".into();
        assert!(PushRequest::decode(&bad.encode(), &limits).is_err());
        let mut bad = request;
        bad.changes[0].new = Some(file("b", "1"));
        assert!(PushRequest::decode(&bad.encode(), &limits).is_err());
        assert!(PushRequest::decode(b"garbage", &limits).is_err());
    }
}
