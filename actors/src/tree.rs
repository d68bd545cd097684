//! A workspace's file tree as every part of the node sees it: one walk of a directory and one
//! policy for what a tree may hold. Transfer snapshots and archive manifests both list
//! [`SnapshotEntry`]s produced by [`walk`] and checked by [`check_entries`], so a tree that
//! one of them accepts the other accepts too.
//!
//! The policy: paths are relative, UTF-8, without `.`/`..`/empty components; entries are in
//! byte order with every parent listed as a directory and none passing through a link; modes
//! are permission bits only (no setuid, setgid or sticky bit); only regular files,
//! directories and symbolic links exist (sockets, devices and FIFOs are left out by the walk).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType};

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

    /// The stamp of a file as a `stat` call describes it.
    // `stat`'s field types differ from one architecture to the next.
    #[allow(clippy::unnecessary_cast)]
    pub fn of_stat(stat: &rustix::fs::Stat) -> Stamp {
        Stamp {
            size: stat.st_size as u64,
            mtime_ns: stat.st_mtime as i64 * 1_000_000_000 + stat.st_mtime_nsec as i64,
            ctime_ns: stat.st_ctime as i64 * 1_000_000_000 + stat.st_ctime_nsec as i64,
            ino: stat.st_ino as u64,
        }
    }
}

/// What one walk saw of a path: enough to tell whether it changed, not its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A digest of everything a walk lists (paths, kinds, modes, stamps, link targets, skipped
/// paths), in the walk's order: two walks with the same digest saw the same tree, so a
/// snapshot memo can keep 32 bytes instead of the walk itself.
pub struct WalkDigest {
    hasher: blake3::Hasher,
    count: u64,
}

impl WalkDigest {
    /// An empty digest.
    pub fn new() -> WalkDigest {
        WalkDigest {
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    fn text(&mut self, text: &str) {
        self.hasher.update(&(text.len() as u64).to_le_bytes());
        self.hasher.update(text.as_bytes());
    }

    /// Adds the next entry listed.
    pub fn entry(&mut self, entry: &WalkEntry) {
        self.count += 1;
        let kind: u8 = match entry.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
        };
        self.hasher.update(&[kind]);
        self.text(&entry.path);
        self.hasher.update(&entry.mode.to_le_bytes());
        self.hasher.update(&entry.stamp.size.to_le_bytes());
        self.hasher.update(&entry.stamp.mtime_ns.to_le_bytes());
        self.hasher.update(&entry.stamp.ctime_ns.to_le_bytes());
        self.hasher.update(&entry.stamp.ino.to_le_bytes());
        match &entry.target {
            Some(target) => {
                self.hasher.update(&[1]);
                self.text(target);
            }
            None => {
                self.hasher.update(&[0]);
            }
        }
    }

    /// Adds the next path skipped (a socket, device or FIFO).
    pub fn skipped(&mut self, path: &str) {
        self.count += 1;
        self.hasher.update(&[3]);
        self.text(path);
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 32] {
        let count = self.count;
        self.hasher.update(&count.to_le_bytes());
        *self.hasher.finalize().as_bytes()
    }
}

impl Default for WalkDigest {
    fn default() -> WalkDigest {
        WalkDigest::new()
    }
}

/// A walk of a directory in snapshot order: every directory, file and link under the root,
/// its path in byte order (so parents come before children). It holds one directory's
/// listing per level it is in, so its memory follows the tree's depth and its widest
/// directory, not its count of paths. Names are read from each open directory and stated
/// through it (no path walk per file); links are never followed, in the middle of a path
/// neither: each directory is opened from its open parent by one name, without following a
/// link ([`crate::beneath`]), so one swapped for a link while the walk runs is an error,
/// never another tree.
pub struct SortedWalk {
    root: PathBuf,
    /// The root, opened at the first listing.
    beneath: Option<crate::beneath::Beneath>,
    /// Directories still to go through, deepest last.
    frames: Vec<Frame>,
    /// `getdents`'s buffer, shared by every listing.
    buffer: Vec<MaybeUninit<u8>>,
    skipped: Vec<String>,
    digest: WalkDigest,
}

/// A directory the walk is in.
struct Frame {
    /// Its names still to go through, in reverse order.
    listed: Vec<Listed>,
    /// The directory, open, to open its subdirectories from. Levels deeper than
    /// [`HELD_LEVELS`] hold none (their subdirectories are opened from the root), so that a
    /// deep tree cannot use up the node's descriptors.
    dir: Option<OwnedFd>,
}

/// How many levels of the walk keep their directory open.
const HELD_LEVELS: usize = 32;

/// One name of a directory's listing.
enum Listed {
    Entry(WalkEntry),
    /// A directory's children, keyed by its path with `/` appended: they sort exactly
    /// there among its siblings (`a/x` after `a.txt`, since `/` is after `.`).
    Children(String),
    /// A socket, device or FIFO, which a tree cannot hold.
    Skipped(String),
}

impl Listed {
    fn key(&self) -> &[u8] {
        match self {
            Listed::Entry(entry) => entry.path.as_bytes(),
            Listed::Children(path) | Listed::Skipped(path) => path.as_bytes(),
        }
    }
}

/// Walks the directory `root` in snapshot order.
pub fn walk(root: &Path) -> SortedWalk {
    SortedWalk {
        root: root.to_path_buf(),
        beneath: None,
        frames: vec![Frame {
            listed: vec![Listed::Children(String::new())],
            dir: None,
        }],
        buffer: Vec::new(),
        skipped: Vec::new(),
        digest: WalkDigest::new(),
    }
}

impl SortedWalk {
    /// The paths skipped so far (sockets, devices and FIFOs), in byte order.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The digest of everything walked so far ([`WalkDigest`]).
    pub fn finish(self) -> (Vec<String>, [u8; 32]) {
        (self.skipped, self.digest.finish())
    }

    fn full(&self, relative: &str) -> PathBuf {
        if relative.is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }

    /// Opens the directory `relative` (`""` for the root): from its parent, the walk's
    /// deepest open directory, where that is held; else beneath the root.
    fn open(&mut self, relative: &str) -> Result<OwnedFd, TreeError> {
        let opened = match self.frames.last().and_then(|frame| frame.dir.as_ref()) {
            Some(parent) => {
                let name = relative.rsplit('/').next().unwrap_or(relative);
                crate::beneath::open_child_dir(parent.as_fd(), name)
            }
            None => match &self.beneath {
                Some(beneath) => beneath.open_dir(relative),
                None => crate::beneath::Beneath::open(&self.root)
                    .and_then(|beneath| self.beneath.insert(beneath).open_dir(relative)),
            },
        };
        opened.map_err(io_error("reading directory", &self.full(relative)))
    }

    /// The listing of the open directory `relative`, sorted in reverse.
    fn list(&mut self, relative: &str, dir: BorrowedFd<'_>) -> Result<Vec<Listed>, TreeError> {
        let mut listed = Vec::new();
        let mut failed = None;
        let read = crate::beneath::for_each_name(dir, &mut self.buffer, |name| {
            let Ok(file_name) = name.to_str() else {
                failed = Some(TreeError::NotUtf8(
                    self.root
                        .join(relative)
                        .join(OsStr::from_bytes(name.to_bytes())),
                ));
                return Err(io::Error::other("not UTF-8"));
            };
            let path = if relative.is_empty() {
                file_name.to_string()
            } else {
                format!("{relative}/{file_name}")
            };
            let described = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| ("inspecting", io::Error::from(e)))
                .and_then(|stat| {
                    // A link is read through the open directory, not by its path.
                    describe_mode(stat.st_mode, || {
                        rustix::fs::readlinkat(dir, name, Vec::new())
                            .map(|target| PathBuf::from(OsString::from_vec(target.into_bytes())))
                            .map_err(io::Error::from)
                    })
                    .map(|described| (stat, described))
                    .map_err(|e| ("reading link", e))
                });
            let (stat, described) = match described {
                Ok(described) => described,
                Err((action, source)) => {
                    failed = Some(TreeError::Io {
                        action,
                        path: self.root.join(&path),
                        source,
                    });
                    return Err(io::Error::other(action));
                }
            };
            let Some((kind, mode, target)) = described else {
                listed.push(Listed::Skipped(path));
                return Ok(());
            };
            if kind == EntryKind::Dir {
                listed.push(Listed::Children(format!("{path}/")));
            }
            listed.push(Listed::Entry(WalkEntry {
                path,
                kind,
                mode,
                stamp: Stamp::of_stat(&stat),
                target,
            }));
            Ok(())
        });
        if let Some(error) = failed {
            return Err(error);
        }
        read.map_err(io_error("reading directory", &self.full(relative)))?;
        listed.sort_unstable_by(|a, b| b.key().cmp(a.key()));
        Ok(listed)
    }
}

impl Iterator for SortedWalk {
    type Item = Result<WalkEntry, TreeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let frame = self.frames.last_mut()?;
            let Some(listed) = frame.listed.pop() else {
                self.frames.pop();
                continue;
            };
            match listed {
                Listed::Entry(entry) => {
                    self.digest.entry(&entry);
                    return Some(Ok(entry));
                }
                Listed::Skipped(path) => {
                    self.digest.skipped(&path);
                    self.skipped.push(path);
                }
                Listed::Children(path) => {
                    let relative = path.strip_suffix('/').unwrap_or(&path);
                    let listed = self.open(relative).and_then(|dir| {
                        let listed = self.list(relative, dir.as_fd())?;
                        Ok((listed, dir))
                    });
                    match listed {
                        Ok((listed, dir)) => {
                            let held = self.frames.len() < HELD_LEVELS;
                            self.frames.push(Frame {
                                listed,
                                dir: held.then_some(dir),
                            });
                        }
                        Err(error) => {
                            self.frames.clear();
                            return Some(Err(error));
                        }
                    }
                }
            }
        }
    }
}

/// Kind, mode and link target of a path whose (not followed) metadata is `metadata`, the
/// target read by `read_link` (called for links only); `None` for a socket, device or FIFO.
pub fn describe(
    metadata: &fs::Metadata,
    read_link: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<Option<(EntryKind, u32, Option<String>)>> {
    describe_mode(metadata.mode(), read_link)
}

/// [`describe`], from the `st_mode` of a (not followed) stat.
fn describe_mode(
    st_mode: u32,
    read_link: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<Option<(EntryKind, u32, Option<String>)>> {
    let mode = st_mode & MODE_BITS;
    Ok(Some(match FileType::from_raw_mode(st_mode) {
        FileType::Directory => (EntryKind::Dir, mode, None),
        FileType::Symlink => {
            let target = read_link()?;
            (
                EntryKind::Symlink,
                MODE_BITS,
                Some(target.to_string_lossy().into_owned()),
            )
        }
        FileType::RegularFile => (EntryKind::File, mode, None),
        _ => return Ok(None),
    }))
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

/// Whether `path`, or a path after it in byte order, may still lie inside `dir`: it starts
/// with `dir` and a byte up to `/` (`dir/x`, but also `dir-1` and `dir.txt`, which sort
/// between `dir` and `dir/…`). A walk in byte order keeps a directory open while this holds.
pub fn still_inside(dir: &str, path: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.as_bytes().first().is_some_and(|&byte| byte <= b'/'))
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
    let mut checker = EntryChecker::default();
    entries.iter().try_for_each(|entry| checker.push(entry))
}

/// [`check_entries`] one entry at a time, holding only the current path and its listed
/// ancestors, so a received snapshot is checked as it streams in.
///
/// In byte order an entry `x` may still have descendants for as long as paths start with
/// `x` followed by a byte up to `/` (`x-1`, `x.txt` and `x/a` sort between `x` and `x0`).
/// The entries that can still be ancestors are therefore prefixes of the current path,
/// each inside the next: a stack of prefix lengths, at most one per byte of a path.
#[derive(Debug, Default)]
pub struct EntryChecker {
    /// The last path pushed.
    previous: String,
    /// Entries that are prefixes of `previous` (followed there by a byte up to `/`), by
    /// length, shortest first.
    open: Vec<(usize, EntryKind)>,
}

impl EntryChecker {
    /// Checks the next entry.
    pub fn push(&mut self, entry: &SnapshotEntry) -> Result<(), PolicyError> {
        let path = entry.path.as_str();
        let bad = |reason: String| PolicyError {
            path: path.to_string(),
            reason,
        };
        check_relative(path).map_err(|reason| bad(reason.to_string()))?;
        // Paths are never empty: an empty `previous` means this is the first entry.
        if !self.previous.is_empty() && self.previous.as_bytes() >= path.as_bytes() {
            return Err(if self.previous == path {
                bad("appears more than once".into())
            } else {
                bad("entries are not sorted by path".into())
            });
        }
        // What stays open is a prefix of both the previous path and this one, followed
        // here by a byte up to `/`.
        let shared = self
            .previous
            .bytes()
            .zip(path.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while let Some(&(len, _)) = self.open.last() {
            if len <= shared && path.as_bytes().get(len).is_some_and(|&b| b <= b'/') {
                break;
            }
            self.open.pop();
        }
        for (at, _) in path.match_indices('/') {
            match self
                .open
                .iter()
                .find(|(len, _)| *len == at)
                .map(|(_, kind)| kind)
            {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink) => {
                    return Err(bad(format!(
                        "passes through the symbolic link `{}`",
                        &path[..at]
                    )))
                }
                Some(EntryKind::File) => {
                    return Err(bad(format!("its parent `{}` is a file", &path[..at])))
                }
                None => return Err(bad(format!("its parent `{}` is not listed", &path[..at]))),
            }
        }
        self.previous.clear();
        self.previous.push_str(path);
        self.open.push((path.len(), entry.kind));
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
        Ok(())
    }
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
    let paths: Result<Vec<String>, TreeError> = walk(root).map(|e| e.map(|e| e.path)).collect();
    let paths = match paths {
        Ok(paths) => paths,
        Err(TreeError::NotUtf8(path)) => {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            return vec![format!(
                "`{}` is not a UTF-8 name: no peer can clone this workspace until it is renamed",
                relative.display()
            )];
        }
        Err(_) => return Vec::new(),
    };
    let pairs = case_collisions(paths.iter().map(String::as_str), SHOWN + 1);
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

    /// The streaming checker agrees with a map of every path's kind, on random trees whose
    /// names interleave with their directories' children in byte order (`a`, `a-b`,
    /// `a-b/c`, `a.txt`, `a/x`) and whose parents are sometimes missing, files or links.
    #[test]
    fn the_streaming_check_agrees_with_a_map_of_every_path() {
        fn reference(entries: &[SnapshotEntry]) -> Result<(), String> {
            let mut kinds = std::collections::HashMap::new();
            for entry in entries {
                for ancestor in ancestors(&entry.path) {
                    match kinds.get(ancestor) {
                        Some(EntryKind::Dir) => {}
                        Some(EntryKind::Symlink) => return Err(format!("{} link", entry.path)),
                        Some(EntryKind::File) => return Err(format!("{} file", entry.path)),
                        None => return Err(format!("{} unlisted", entry.path)),
                    }
                }
                kinds.insert(entry.path.as_str(), entry.kind);
            }
            Ok(())
        }
        fn outcome(result: Result<(), PolicyError>) -> Result<(), String> {
            result.map_err(|e| {
                let kind = if e.reason.contains("symbolic link") {
                    "link"
                } else if e.reason.contains("is a file") {
                    "file"
                } else {
                    "unlisted"
                };
                format!("{} {kind}", e.path)
            })
        }
        let names = ["a", "a-b", "a.txt", "a0", "b", "a!"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let mut failures_seen = 0;
        for _ in 0..3000 {
            let mut paths = std::collections::BTreeMap::new();
            for _ in 0..random(12) + 1 {
                let depth = random(3) + 1;
                let parts: Vec<&str> = (0..depth).map(|_| names[random(names.len())]).collect();
                for end in 1..=depth {
                    if end < depth && random(8) == 0 {
                        continue; // a parent left out
                    }
                    let kind = match (end == depth, random(6)) {
                        (false, 0) => EntryKind::File,
                        (false, 1) => EntryKind::Symlink,
                        (false, _) => EntryKind::Dir,
                        (true, 0) => EntryKind::Dir,
                        (true, 1) => EntryKind::Symlink,
                        (true, _) => EntryKind::File,
                    };
                    paths.entry(parts[..end].join("/")).or_insert(kind);
                }
            }
            let mut entries: Vec<SnapshotEntry> = paths
                .into_iter()
                .map(|(path, kind)| SnapshotEntry {
                    path,
                    kind,
                    mode: 0o644,
                    size: 0,
                    hash: (kind == EntryKind::File).then(|| crate::snapshot::Hash::of(b"")),
                    target: (kind == EntryKind::Symlink).then(|| "t".to_string()),
                    chunks: Vec::new(),
                })
                .collect();
            entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
            let expected = reference(&entries);
            failures_seen += usize::from(expected.is_err());
            assert_eq!(outcome(check_entries(&entries)), expected, "{entries:#?}");
        }
        assert!(
            failures_seen > 300,
            "the trees exercise refusals: {failures_seen}"
        );
    }

    #[test]
    fn the_walk_lists_in_byte_order_and_skips_special_files() {
        let dir = tempfile::tempdir().unwrap();
        // `/` sorts after `-` and `.`, before `0`: a directory's children come after
        // `a-b` and `a.txt`, before `a0`.
        for d in ["a/b", "a/b/c", "a-b", "a0"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in ["a/b/f", "a.txt", "a/b.txt", "a/b/c/z", "a-b/x", "a0/y", "A"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("b/f", dir.path().join("a/l")).unwrap();
        let socket = std::os::unix::net::UnixListener::bind(dir.path().join("a/sock")).unwrap();
        let mut walked = walk(dir.path());
        let entries: Vec<WalkEntry> = walked.by_ref().map(Result::unwrap).collect();
        drop(socket);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(paths, sorted);
        assert_eq!(
            paths,
            [
                "A", "a", "a-b", "a-b/x", "a.txt", "a/b", "a/b.txt", "a/b/c", "a/b/c/z", "a/b/f",
                "a/l", "a0", "a0/y"
            ]
        );
        assert_eq!(walked.skipped(), ["a/sock"]);
        let link = entries.iter().find(|e| e.path == "a/l").unwrap();
        assert_eq!(
            (link.kind, link.mode, link.target.as_deref()),
            (EntryKind::Symlink, MODE_BITS, Some("b/f"))
        );
    }

    /// The attack: a workspace's process swaps a directory the walk has listed, but not yet
    /// entered, for a link out of the workspace. The walk must not go there.
    #[test]
    fn a_walk_does_not_enter_a_directory_swapped_for_a_link() {
        let temp = tempfile::tempdir().unwrap();
        let (root, outside) = (temp.path().join("ws"), temp.path().join("outside"));
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"mine").unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"the node's key").unwrap();
        let mut walked = walk(&root);
        let first = walked.next().unwrap().unwrap();
        assert_eq!((first.path.as_str(), first.kind), ("d", EntryKind::Dir));
        fs::rename(root.join("d"), temp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        let rest: Vec<Result<WalkEntry, TreeError>> = walked.collect();
        assert!(
            rest.iter()
                .all(|e| e.as_ref().map_or(true, |e| !e.path.contains("secret"))),
            "the walk listed the outside directory"
        );
        assert!(
            matches!(rest.as_slice(), [Err(TreeError::Io { path, .. })] if path.ends_with("ws/d")),
            "the walk fails, naming the directory: {:?}",
            rest.iter()
                .map(|r| r.as_ref().map(|e| e.path.clone()))
                .collect::<Vec<_>>()
        );
    }

    /// Below [`HELD_LEVELS`] directories are opened from the root instead of their parent:
    /// the walk lists the same, and still refuses a link swapped in down there.
    #[test]
    fn a_walk_deeper_than_the_levels_it_holds_open_lists_everything() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("ws");
        let depth = HELD_LEVELS + 8;
        let mut expected = Vec::new();
        let mut path = String::new();
        for level in 0..depth {
            path = if path.is_empty() {
                "d".to_string()
            } else {
                format!("{path}/d")
            };
            fs::create_dir_all(root.join(&path)).unwrap();
            fs::write(root.join(&path).join("f"), level.to_string()).unwrap();
            expected.push(path.clone());
            expected.push(format!("{path}/f"));
        }
        expected.sort_unstable();
        let walked: Vec<String> = walk(&root).map(|e| e.unwrap().path).collect();
        assert_eq!(walked, expected);

        // The deepest directory, whose parent holds no descriptor.
        let deep = path;
        let outside = temp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"the node's key").unwrap();
        let mut walked = walk(&root);
        for entry in walked.by_ref() {
            if entry.unwrap().path == deep {
                break;
            }
        }
        fs::rename(root.join(&deep), temp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join(&deep)).unwrap();
        let rest: Vec<Result<WalkEntry, TreeError>> = walked.collect();
        assert!(
            matches!(rest.as_slice(), [Err(TreeError::Io { path, .. })] if path.ends_with(&deep)),
            "the walk fails at {deep}: {:?}",
            rest.iter()
                .map(|r| r.as_ref().map(|e| e.path.clone()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_walk_digest_changes_with_anything_listed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/f"), b"x").unwrap();
        let digest = |root: &Path| {
            let mut walked = walk(root);
            walked.by_ref().for_each(|e| drop(e.unwrap()));
            walked.finish().1
        };
        assert_eq!(digest(dir.path()), digest(dir.path()));
        let first: Vec<WalkEntry> = walk(dir.path()).map(Result::unwrap).collect();
        let of = |entries: &[WalkEntry], skipped: &[&str]| {
            let mut digest = WalkDigest::new();
            entries.iter().for_each(|e| digest.entry(e));
            skipped.iter().for_each(|p| digest.skipped(p));
            digest.finish()
        };
        assert_eq!(of(&first, &[]), digest(dir.path()));
        let changed = |edit: &dyn Fn(&mut Vec<WalkEntry>)| {
            let mut other = first.clone();
            edit(&mut other);
            assert_ne!(of(&first, &[]), of(&other, &[]), "{other:?}");
        };
        changed(&|w| w[1].stamp.mtime_ns += 1);
        changed(&|w| w[1].stamp.size += 1);
        changed(&|w| w[1].stamp.ino += 1);
        changed(&|w| w[1].mode ^= 0o100);
        changed(&|w| w[1].kind = EntryKind::Symlink);
        changed(&|w| w[1].target = Some(String::new()));
        changed(&|w| w[1].path.push('g'));
        changed(&|w| {
            w.pop();
        });
        assert_ne!(of(&first, &[]), of(&first, &["sock"]));
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
        fs::write(dir.path().join(OsStr::from_bytes(b"bad\xff")), b"").unwrap();
        assert!(portability_warnings(dir.path())[0].contains("not a UTF-8 name"));
    }
}
