//! A workspace's file tree as every part of the node sees it: one walk of a directory and one
//! policy for what a tree may hold. Transfer snapshots and archive manifests both list
//! [`SnapshotEntry`]s produced by [`walk`] and checked by [`check_entries`], so a tree that
//! one of them accepts the other accepts too.
//!
//! The policy: paths are relative, UTF-8, without `.`/`..`/empty components; entries are in
//! byte order with every parent listed as a directory and none passing through a link; modes
//! are permission bits only (no setuid, setgid or sticky bit); only regular files,
//! directories and symbolic links exist (sockets, devices and FIFOs are left out by the walk).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::snapshot::{EntryKind, SnapshotEntry};

/// The mode bits a tree entry may carry.
pub const MODE_BITS: u32 = 0o777;
/// Longest path or link target.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a directory could not be walked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A name is not UTF-8, so it cannot be listed in a snapshot or archive.
    #[error("{0}: file names must be UTF-8 to be shared or exported")]
    NotUtf8(PathBuf),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io {
        action,
        path,
        source,
    }
}

/// What tells a file's versions apart without reading it: size, mtime, ctime and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

impl Stamp {
    /// The stamp of a file as `metadata` describes it.
    pub fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            size: metadata.len(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            ino: metadata.ino(),
        }
    }
}

/// What one walk saw of a path: enough to tell whether it changed, not its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Workspace-relative path with `/` separators.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits ([`MODE_BITS`] for a link, whose own mode means nothing).
    pub mode: u32,
    /// Size, times and inode.
    pub stamp: Stamp,
    /// Link target (symlinks only).
    pub target: Option<String>,
}

/// One walk of a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Every directory, file and link, parents before children.
    pub entries: Vec<WalkEntry>,
    /// Sockets, devices and FIFOs, which a tree cannot hold.
    pub skipped: Vec<String>,
}

impl Walk {
    /// A digest of everything listed (paths, kinds, modes, stamps, link targets, skipped
    /// paths): two walks with the same digest saw the same tree, so a snapshot memo can keep
    /// 32 bytes instead of the walk itself.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        let text = |hasher: &mut blake3::Hasher, text: &str| {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        };
        hasher.update(&(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            text(&mut hasher, &entry.path);
            let kind: u8 = match entry.kind {
                EntryKind::File => 0,
                EntryKind::Dir => 1,
                EntryKind::Symlink => 2,
            };
            hasher.update(&[kind]);
            hasher.update(&entry.mode.to_le_bytes());
            hasher.update(&entry.stamp.size.to_le_bytes());
            hasher.update(&entry.stamp.mtime_ns.to_le_bytes());
            hasher.update(&entry.stamp.ctime_ns.to_le_bytes());
            hasher.update(&entry.stamp.ino.to_le_bytes());
            match &entry.target {
                Some(target) => {
                    hasher.update(&[1]);
                    text(&mut hasher, target);
                }
                None => {
                    hasher.update(&[0]);
                }
            }
        }
        hasher.update(&(self.skipped.len() as u64).to_le_bytes());
        for path in &self.skipped {
            text(&mut hasher, path);
        }
        *hasher.finalize().as_bytes()
    }
}

/// Kind, mode and link target of the path `full` whose (not followed) metadata is `metadata`;
/// `None` for a socket, device or FIFO.
pub fn describe(
    full: &Path,
    metadata: &fs::Metadata,
) -> io::Result<Option<(EntryKind, u32, Option<String>)>> {
    let file_type = metadata.file_type();
    let mode = metadata.permissions().mode() & MODE_BITS;
    Ok(Some(if file_type.is_dir() {
        (EntryKind::Dir, mode, None)
    } else if file_type.is_symlink() {
        let target = fs::read_link(full)?;
        (
            EntryKind::Symlink,
            MODE_BITS,
            Some(target.to_string_lossy().into_owned()),
        )
    } else if file_type.is_file() {
        (EntryKind::File, mode, None)
    } else {
        return Ok(None);
    }))
}

/// Lists every directory, file and link under `root`, parents first. Stats go through the
/// directory handle (no path walk per file); links are never followed.
pub fn walk(root: &Path) -> Result<Walk, TreeError> {
    let mut out = Walk::default();
    let mut stack = vec![String::new()];
    while let Some(relative) = stack.pop() {
        let dir = if relative.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&relative)
        };
        let children = fs::read_dir(&dir).map_err(io_error("reading directory", &dir))?;
        for child in children {
            let child = child.map_err(io_error("reading directory", &dir))?;
            let file_name = child.file_name();
            let Some(file_name) = file_name.to_str() else {
                return Err(TreeError::NotUtf8(child.path()));
            };
            let path = if relative.is_empty() {
                file_name.to_string()
            } else {
                format!("{relative}/{file_name}")
            };
            let full = child.path();
            let metadata = child.metadata().map_err(io_error("inspecting", &full))?;
            let Some((kind, mode, target)) =
                describe(&full, &metadata).map_err(io_error("reading link", &full))?
            else {
                out.skipped.push(path);
                continue;
            };
            if kind == EntryKind::Dir {
                stack.push(path.clone());
            }
            out.entries.push(WalkEntry {
                path,
                kind,
                mode,
                stamp: Stamp::of(&metadata),
                target,
            });
        }
    }
    Ok(out)
}

/// An entry that breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry `{path}`: {reason}")]
pub struct PolicyError {
    /// The entry's path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks a workspace-relative path: no `..`, `.`, empty component, absolute start, NUL or
/// backslash.
pub fn check_relative(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("longer than 4096 bytes");
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("contains a NUL byte or backslash");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
            Component::CurDir => return Err("contains `.`"),
        }
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("contains an empty, `.` or `..` component");
    }
    Ok(())
}

/// Proper ancestors of a relative path: `a/b/c` → `a`, `a/b`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(index, _)| &path[..index])
}

/// Checks what every tree must satisfy, whoever wrote it: safe paths in strict byte order,
/// parents listed as directories, no path through a link, permission bits only, and the
/// fields each kind has (a file's hash, a link's target). Sizes, chunks and hashes are the
/// caller's to check.
pub fn check_entries(entries: &[SnapshotEntry]) -> Result<(), PolicyError> {
    let mut kinds: std::collections::HashMap<&str, EntryKind> =
        std::collections::HashMap::with_capacity(entries.len());
    let mut previous: Option<&str> = None;
    for entry in entries {
        let path = entry.path.as_str();
        let bad = |reason: String| PolicyError {
            path: path.to_string(),
            reason,
        };
        check_relative(path).map_err(|reason| bad(reason.to_string()))?;
        if let Some(previous) = previous {
            if previous.as_bytes() >= path.as_bytes() {
                return Err(if previous == path {
                    bad("appears more than once".into())
                } else {
                    bad("entries are not sorted by path".into())
                });
            }
        }
        previous = Some(path);
        for ancestor in ancestors(path) {
            match kinds.get(ancestor) {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink) => {
                    return Err(bad(format!(
                        "passes through the symbolic link `{ancestor}`"
                    )))
                }
                Some(EntryKind::File) => {
                    return Err(bad(format!("its parent `{ancestor}` is a file")))
                }
                None => return Err(bad(format!("its parent `{ancestor}` is not listed"))),
            }
        }
        kinds.insert(path, entry.kind);
        check_mode(entry.mode).map_err(bad)?;
        match entry.kind {
            EntryKind::Dir | EntryKind::Symlink => {
                if entry.size != 0 || entry.hash.is_some() || !entry.chunks.is_empty() {
                    return Err(bad("only files have a size, hash or chunks".into()));
                }
                match (&entry.kind, &entry.target) {
                    (EntryKind::Symlink, None) => {
                        return Err(bad("symbolic link without a target".into()))
                    }
                    (EntryKind::Symlink, Some(target)) => check_link_target(target).map_err(bad)?,
                    (EntryKind::Dir, Some(_)) => {
                        return Err(bad("a directory has no link target".into()))
                    }
                    _ => {}
                }
            }
            EntryKind::File => {
                if entry.target.is_some() {
                    return Err(bad("a file has no link target".into()));
                }
                if entry.hash.is_none() {
                    return Err(bad("file without a hash".into()));
                }
            }
        }
    }
    Ok(())
}

/// Permission bits only: a setuid, setgid or sticky bit (or a file type) is refused.
pub fn check_mode(mode: u32) -> Result<(), String> {
    if mode & !MODE_BITS != 0 {
        return Err(format!(
            "mode {mode:o} has bits beyond 0o777 (setuid, setgid, sticky or a type)"
        ));
    }
    Ok(())
}

/// A link target is any non-empty text without NUL, up to [`MAX_PATH_BYTES`]; where it points
/// is not checked (a link is stored as a link and never followed).
pub fn check_link_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.len() > MAX_PATH_BYTES || target.contains('\0') {
        return Err("link target is empty, longer than 4096 bytes or contains NUL".into());
    }
    Ok(())
}

/// Whether a link at `path` with `target` points outside the tree's root.
pub fn escapes(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = path.matches('/').count() as i64;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Pairs of paths that differ only by letter case (`README`, `readme`): fine on a
/// case-sensitive file system, impossible on one that folds case. At most `limit` pairs.
pub fn case_collisions<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<(String, String)> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut pairs = Vec::new();
    for path in paths {
        if let Some(other) = seen.insert(path.to_lowercase(), path) {
            pairs.push((other.to_string(), path.to_string()));
            if pairs.len() >= limit {
                break;
            }
        }
    }
    pairs
}

/// What in the tree at `root` keeps some nodes from cloning it, in words, for the person who
/// shares it: paths that differ only by letter case (a node whose file system folds case
/// refuses them), and names a snapshot cannot carry.
pub fn portability_warnings(root: &Path) -> Vec<String> {
    const SHOWN: usize = 5;
    let walk = match walk(root) {
        Ok(walk) => walk,
        Err(TreeError::NotUtf8(path)) => {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            return vec![format!(
                "`{}` is not a UTF-8 name: no peer can clone this workspace until it is renamed",
                relative.display()
            )];
        }
        Err(_) => return Vec::new(),
    };
    let pairs = case_collisions(walk.entries.iter().map(|e| e.path.as_str()), SHOWN + 1);
    if pairs.is_empty() {
        return Vec::new();
    }
    let mut listed: Vec<String> = pairs
        .iter()
        .take(SHOWN)
        .map(|(a, b)| format!("`{a}` and `{b}`"))
        .collect();
    if pairs.len() > SHOWN {
        listed.push("more".into());
    }
    vec![format!(
        "paths that differ only by letter case ({}): nodes whose file system ignores case \
         (macOS, Windows) cannot clone this workspace; rename one of each pair to share it everywhere",
        listed.join(", ")
    )]
}

/// Whether the file system holding `dir` tells `A` from `a` (probed with a file of its own).
pub fn case_sensitive(dir: &Path) -> io::Result<bool> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let upper = dir.join(format!(".aienv-CASE-{tag}"));
    let lower = dir.join(format!(".aienv-case-{tag}"));
    fs::write(&upper, b"")?;
    let folds = lower.exists();
    fs::remove_file(&upper)?;
    Ok(!folds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn link_escapes() {
        assert!(escapes(".venv/bin/python", "/usr/bin/python3"));
        assert!(escapes("a", "../x"));
        assert!(escapes("a/b", "../../x"));
        assert!(!escapes("a/b", "../x"));
        assert!(!escapes("a/b", "c/../d"));
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
    }

    #[test]
    fn walk_lists_parents_first_and_skips_special_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("b/f", dir.path().join("a/l")).unwrap();
        let socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let walk = walk(dir.path()).unwrap();
        drop(socket);
        let paths: Vec<&str> = walk.entries.iter().map(|e| e.path.as_str()).collect();
        for (parent, child) in [("a", "a/b"), ("a/b", "a/b/f"), ("a", "a/l")] {
            let at = |p| paths.iter().position(|x| *x == p).unwrap();
            assert!(at(parent) < at(child), "{paths:?}");
        }
        assert_eq!(walk.skipped, ["sock"]);
        let link = walk.entries.iter().find(|e| e.path == "a/l").unwrap();
        assert_eq!(
            (link.kind, link.mode, link.target.as_deref()),
            (EntryKind::Symlink, MODE_BITS, Some("b/f"))
        );
    }

    #[test]
    fn a_walk_digest_changes_with_anything_listed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/f"), b"x").unwrap();
        let first = walk(dir.path()).unwrap();
        assert_eq!(first.digest(), walk(dir.path()).unwrap().digest());
        let changed = |edit: &dyn Fn(&mut Walk)| {
            let mut other = first.clone();
            edit(&mut other);
            assert_ne!(first.digest(), other.digest(), "{other:?}");
        };
        changed(&|w| w.entries[1].stamp.mtime_ns += 1);
        changed(&|w| w.entries[1].stamp.size += 1);
        changed(&|w| w.entries[1].stamp.ino += 1);
        changed(&|w| w.entries[1].mode ^= 0o100);
        changed(&|w| w.entries[1].kind = EntryKind::Symlink);
        changed(&|w| w.entries[1].target = Some(String::new()));
        changed(&|w| w.entries[1].path.push('g'));
        changed(&|w| w.skipped.push("sock".into()));
        changed(&|w| {
            w.entries.pop();
        });
    }

    #[test]
    fn case_collisions_are_paired() {
        assert_eq!(
            case_collisions(["README", "a", "readme", "b", "B"], 10),
            [
                ("README".to_string(), "readme".to_string()),
                ("b".to_string(), "B".to_string())
            ]
        );
        assert_eq!(case_collisions(["x", "X", "y", "Y"], 1).len(), 1);
    }

    #[test]
    fn portability_warnings_name_the_pairs() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("README"), b"a").unwrap();
        assert!(portability_warnings(dir.path()).is_empty());
        if !case_sensitive(dir.path()).unwrap() {
            return;
        }
        fs::write(dir.path().join("readme"), b"b").unwrap();
        let warnings = portability_warnings(dir.path());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("`README` and `readme`")
                || warnings[0].contains("`readme` and `README`"),
            "{warnings:?}"
        );
        fs::write(
            dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xff")),
            b"",
        )
        .unwrap();
        assert!(portability_warnings(dir.path())[0].contains("not a UTF-8 name"));
    }
}
