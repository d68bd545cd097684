//! The snapshot after a commit, amended from the one taken before it: only the paths the
//! commit changed (and the directories holding them, whose stamps moved) are looked at on
//! disk. At many files a walk of every path is most of a snapshot's time (0.5 of 0.7 s at
//! 200,000 files on tmpfs), and after a sync that wrote a few hundred files it would find
//! the rest as the snapshot before it had them.
//!
//! The walk is amended with it, stamps and all, so the memo still answers the next walk when
//! nothing changed since. What it trusts: that only the commit changed the tree since the
//! snapshot before it. A path changed beside the commit in that time is missed here with its
//! stamp; the next walk sees the new stamp, so the memo does not answer it, and the next
//! snapshot reads the path again.

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use super::{
    file_clock_now, file_key, ChunkIndex, IndexBatch, KeptWalk, Retake, ScanStats, Taken, Window,
};
use crate::beneath::Beneath;
use crate::snapshot::{EntryKind, SnapshotEntry};
use crate::snapshot_receive::EntryCursor;
use crate::snapshot_writer::SnapshotWriter;
use crate::spill::{self, Spill, SpillReader};
use crate::tree::{self, Stamp, WalkDigest, WalkEntry};
use crate::workspace_store::StoreError;

/// The paths a commit changed in a workspace's tree, in byte order: written, created, given
/// a mode, or removed with everything under them; and the directories holding them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Path → whether its subtree was removed (what is there now, the commit wrote).
    paths: BTreeMap<String, bool>,
}

impl Touched {
    /// `path` was written, created or given a mode.
    pub fn changed(&mut self, path: &str) {
        self.parent(path);
        if !self.paths.contains_key(path) {
            self.paths.insert(path.to_string(), false);
        }
    }

    /// `path` was removed, with everything under it.
    pub fn removed(&mut self, path: &str) {
        self.parent(path);
        self.paths.insert(path.to_string(), true);
    }

    /// The directory holding `path`: adding, removing or renaming an entry moves its stamp.
    fn parent(&mut self, path: &str) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if !self.paths.contains_key(dir) {
                self.paths.insert(dir.to_string(), false);
            }
        }
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Whether `path` lies under the directory `dir`.
fn inside(dir: &str, path: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Where the next path of the amended snapshot comes from.
#[derive(Clone, Copy)]
enum Next {
    /// The snapshot before (an entry and its walk's).
    Earlier,
    /// The paths the walk before skipped.
    Skipped,
    /// The touched paths, replacing what came before at the same path.
    Touched(Option<Replaces>),
}

/// What a touched path replaces.
#[derive(Clone, Copy)]
enum Replaces {
    Earlier,
    Skipped,
}

/// The next entry of the snapshot before and the walk's entry it was taken from.
fn next_pair(
    entries: &mut EntryCursor<'_>,
    walked: &mut SpillReader,
    root: &Path,
) -> Result<Option<(SnapshotEntry, WalkEntry)>, StoreError> {
    let reading = |error| StoreError::io("reading the last snapshot of", root)(error);
    let entry = entries.next_entry().map_err(reading)?;
    let item = walked.read_next::<WalkEntry>().map_err(reading)?;
    match (entry, item) {
        (None, None) => Ok(None),
        (Some(entry), Some(item)) if entry.path == item.path => {
            Ok(Some((entry.into_owned(), item)))
        }
        _ => Err(reading(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "its kept walk does not list its entries",
        ))),
    }
}

impl ChunkIndex {
    /// The snapshot of the workspace at `root` after a commit that changed only `touched`,
    /// amended from `before`, its snapshot from before the commit: each touched path as it is
    /// on disk now (a file's hash from its record while its stamp matches, else read),
    /// everything else as `before` has it, but what was under a path that is now gone, or no
    /// longer a directory, or whose subtree was removed. The walk `before` was taken from is
    /// amended alike; kept as the memo, the snapshot answers the next walk that matches it.
    pub fn amend(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
        before: &Taken,
        touched: &Touched,
    ) -> Result<Taken, StoreError> {
        let scan_started = file_clock_now();
        let write_failed = |error| StoreError::io("writing the snapshot of", root)(error);
        let beneath = Beneath::open(root).map_err(StoreError::io("reading", root))?;
        let earlier_entries = before.kept_entries()?.ok_or_else(|| {
            StoreError::io("reading the last snapshot of", root)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its kept file is not as written",
            ))
        })?;
        let mut entries = earlier_entries
            .cursor()
            .map_err(StoreError::io("reading the last snapshot of", root))?;
        let mut walked = match &before.walk.items {
            Some(items) => items.reader(),
            None => {
                return Err(StoreError::io("reading the last snapshot of", root)(
                    std::io::Error::other("its walk was not kept"),
                ))
            }
        };
        let mut earlier = next_pair(&mut entries, &mut walked, root)?;
        let mut skipped_before = before.walk.skipped.iter().peekable();
        let mut changed = touched.paths.iter().peekable();
        // Touched paths whose earlier subtree is gone, those that later paths may still lie
        // under (see `tree::still_inside`): each inside the one below it.
        let mut cleared: Vec<&str> = Vec::new();
        let close = |cleared: &mut Vec<&str>, path: &str| {
            while cleared
                .last()
                .is_some_and(|dir| !tree::still_inside(dir, path))
            {
                cleared.pop();
            }
            cleared.iter().any(|dir| inside(dir, path))
        };
        let mut gone = Spill::compact(&self.memo_dir, spill::IN_MEMORY);
        let mut out = SnapshotWriter::new(&self.memo_dir);
        let mut window = Window::default();
        let mut batch = IndexBatch::new(&self.memo_dir);
        let mut walk = Spill::compact(&self.memo_dir, spill::IN_MEMORY);
        let mut digest = WalkDigest::new();
        let mut skipped = Vec::new();
        let mut stats = ScanStats::default();
        let (mut racy, mut files) = (before.racy, 0u64);
        loop {
            let next = {
                let earlier_path = earlier.as_ref().map(|(entry, _)| entry.path.as_bytes());
                let skipped_path = skipped_before.peek().map(|path| path.as_bytes());
                let changed_path = changed.peek().map(|(path, _)| path.as_bytes());
                // An entry and a skipped path of the walk before are never the same path.
                let untouched = match (earlier_path, skipped_path) {
                    (Some(entry), Some(path)) if path < entry => Some((path, Replaces::Skipped)),
                    (Some(entry), _) => Some((entry, Replaces::Earlier)),
                    (None, Some(path)) => Some((path, Replaces::Skipped)),
                    (None, None) => None,
                };
                match (untouched, changed_path) {
                    (None, None) => break,
                    (Some((path, from)), Some(changed)) if path == changed => {
                        Next::Touched(Some(from))
                    }
                    (Some((path, Replaces::Earlier)), changed)
                        if changed.is_none_or(|changed| path < changed) =>
                    {
                        Next::Earlier
                    }
                    (Some((path, Replaces::Skipped)), changed)
                        if changed.is_none_or(|changed| path < changed) =>
                    {
                        Next::Skipped
                    }
                    _ => Next::Touched(None),
                }
            };
            match next {
                Next::Earlier => {
                    let (entry, item) = earlier.take().expect("compared just above");
                    earlier = next_pair(&mut entries, &mut walked, root)?;
                    if close(&mut cleared, &entry.path) {
                        if entry.kind == EntryKind::File {
                            gone.push(&entry.path).map_err(write_failed)?;
                        }
                    } else {
                        files += u64::from(entry.kind == EntryKind::File);
                        digest.entry(&item);
                        walk.push(&item).map_err(write_failed)?;
                        window.settled(entry, &mut out).map_err(write_failed)?;
                    }
                }
                Next::Skipped => {
                    let path = skipped_before.next().expect("compared just above");
                    if !close(&mut cleared, path) {
                        digest.skipped(path);
                        skipped.push(path.clone());
                    }
                }
                Next::Touched(replaces) => {
                    match replaces {
                        Some(Replaces::Earlier) => {
                            earlier = next_pair(&mut entries, &mut walked, root)?;
                        }
                        Some(Replaces::Skipped) => {
                            skipped_before.next();
                        }
                        None => {}
                    }
                    let (path, &removed) = changed.next().expect("compared just above");
                    close(&mut cleared, path);
                    let full = root.join(path);
                    // Described beneath the root: under a directory swapped for a link,
                    // the path is not in the workspace any more.
                    let metadata = match beneath.metadata(path) {
                        Ok(metadata) => Some(metadata),
                        Err(error) if Beneath::is_absent(&error) => None,
                        Err(error) => return Err(StoreError::io("inspecting", &full)(error)),
                    };
                    let old = self.files.get(&file_key(workspace, path))?;
                    let mut is_dir = false;
                    let mut is_file = false;
                    if let Some(metadata) = &metadata {
                        match tree::describe(metadata, || beneath.read_link(path))
                            .map_err(StoreError::io("reading link", &full))?
                        {
                            Some((kind, mode, target)) => {
                                let item = WalkEntry {
                                    path: path.clone(),
                                    kind,
                                    mode,
                                    stamp: Stamp::of(metadata),
                                    target,
                                };
                                digest.entry(&item);
                                walk.push(&item).map_err(write_failed)?;
                                let entry = SnapshotEntry {
                                    path: path.clone(),
                                    kind,
                                    mode,
                                    size: 0,
                                    hash: None,
                                    target: item.target,
                                    chunks: Vec::new(),
                                };
                                (is_dir, is_file) =
                                    (kind == EntryKind::Dir, kind == EntryKind::File);
                                if is_file {
                                    files += 1;
                                    racy |= window
                                        .file(entry, item.stamp, old.clone(), &mut out)
                                        .map_err(write_failed)?;
                                } else {
                                    window.settled(entry, &mut out).map_err(write_failed)?;
                                }
                            }
                            None => {
                                digest.skipped(path);
                                skipped.push(path.clone());
                            }
                        }
                    }
                    if old.is_some() && !is_file {
                        gone.push(path).map_err(write_failed)?;
                    }
                    if removed || !is_dir {
                        cleared.push(path);
                    }
                }
            }
            if window.full() {
                racy |= self.read_window(
                    workspace,
                    root,
                    scan_started,
                    &mut window,
                    &mut batch,
                    &mut stats,
                    &mut out,
                )?;
            }
        }
        racy |= self.read_window(
            workspace,
            root,
            scan_started,
            &mut window,
            &mut batch,
            &mut stats,
            &mut out,
        )?;
        stats.files_cached = files - stats.files_hashed;
        stats.skipped.clone_from(&skipped);
        self.forget_gone(workspace, root, gone, &mut batch)?;
        let walk = KeptWalk {
            digest: digest.finish(),
            items: Some(walk.keep().map_err(write_failed)?),
            skipped,
        };
        let retake = Retake {
            index: self.clone(),
            workspace,
            name: name.to_string(),
            revision,
            root: root.to_path_buf(),
        };
        self.keep(out, retake, walk, racy, stats)
    }
}

impl Taken {
    /// Whether every path `touched` names is on disk, under `root`, as the walk this
    /// snapshot was taken from saw it: the same kind, mode, link target and stamp, or absent
    /// where it was absent. Then what the snapshot says of those paths still holds. `false`
    /// where that cannot be told: the walk was let go, or a file it holds was stamped inside
    /// the racy window (its stamp may not show a later write), or a path is one it skipped.
    pub fn unchanged(&self, root: &Path, touched: &Touched) -> Result<bool, StoreError> {
        let Some(items) = self.walk.items.as_ref().filter(|_| !self.racy) else {
            return Ok(false);
        };
        if touched
            .paths
            .keys()
            .any(|path| self.walk.skipped.binary_search(path).is_ok())
        {
            return Ok(false);
        }
        let reading = |error| StoreError::io("reading the last snapshot of", root)(error);
        let beneath = Beneath::open(root).map_err(StoreError::io("reading", root))?;
        let mut walked = items.reader();
        let mut item = walked.read_next::<WalkEntry>().map_err(reading)?;
        for path in touched.paths.keys() {
            while item
                .as_ref()
                .is_some_and(|item| item.path.as_bytes() < path.as_bytes())
            {
                item = walked.read_next::<WalkEntry>().map_err(reading)?;
            }
            let was = item.as_ref().filter(|item| item.path == *path);
            let full = root.join(path);
            let now = match beneath.metadata(path) {
                Ok(metadata) => Some(metadata),
                Err(error) if Beneath::is_absent(&error) => None,
                Err(error) => return Err(StoreError::io("inspecting", &full)(error)),
            };
            let same = match (was, now) {
                (None, None) => true,
                (Some(was), Some(now)) if Stamp::of(&now) == was.stamp => {
                    tree::describe(&now, || beneath.read_link(path))
                        .map_err(StoreError::io("reading link", &full))?
                        .is_some_and(|(kind, mode, target)| {
                            (kind, mode, target.as_deref())
                                == (was.kind, was.mode, was.target.as_deref())
                        })
                }
                _ => false,
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    use super::super::tests::until_file_clock_passes;
    use super::super::RACY_WINDOW;
    use super::*;
    use std::fs;

    /// Names that interleave in byte order with a directory's children (`a`, `a-b`,
    /// `a.txt`, `a/…`, `a0`).
    const NAMES: [&str; 5] = ["a", "a.txt", "a-b", "b", "a0"];

    fn random_path(next: &mut impl FnMut() -> u64) -> String {
        let depth = 1 + next() % 3;
        let names: Vec<&str> = (0..depth)
            .map(|_| NAMES[(next() % NAMES.len() as u64) as usize])
            .collect();
        names.join("/")
    }

    fn file_type(full: &Path) -> Option<fs::FileType> {
        fs::symlink_metadata(full).ok().map(|m| m.file_type())
    }

    fn clear(full: &Path) {
        match file_type(full) {
            Some(kind) if kind.is_dir() => fs::remove_dir_all(full).unwrap(),
            Some(_) => fs::remove_file(full).unwrap(),
            None => {}
        }
    }

    /// Makes the parents of `path` directories, as a plan's `dirs` (after its removals) do.
    fn parents(root: &Path, path: &str, touched: &mut Touched) {
        for dir in tree::ancestors(path) {
            let full = root.join(dir);
            match file_type(&full) {
                Some(kind) if kind.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&full).unwrap();
                    touched.removed(dir);
                    fs::create_dir(&full).unwrap();
                }
                None => {
                    fs::create_dir(&full).unwrap();
                    touched.changed(dir);
                }
            }
        }
    }

    /// One random change to the tree at `root`, recorded in `touched` as a sync's plan
    /// records what it applies: a file, link or directory put in place (whatever was in its
    /// way goes, without a removal of its own), a removal, a mode, a subtree removed and
    /// made again, a FIFO. A plan puts one thing at each path, so a path touched already is
    /// left alone.
    fn change(root: &Path, next: &mut impl FnMut() -> u64, touched: &mut Touched) {
        let path = random_path(next);
        if touched.paths.contains_key(&path) {
            return;
        }
        let full = root.join(&path);
        match next() % 8 {
            0 | 1 => {
                parents(root, &path, touched);
                if file_type(&full).is_some_and(|kind| !kind.is_file()) {
                    clear(&full);
                }
                let content = format!("{path} {}\n", next() % 5).repeat(1 + next() as usize % 4);
                fs::write(&full, content).unwrap();
                touched.changed(&path);
            }
            2 => {
                if file_type(&full).is_some() {
                    clear(&full);
                    touched.removed(&path);
                }
            }
            3 => {
                parents(root, &path, touched);
                if !file_type(&full).is_some_and(|kind| kind.is_dir()) {
                    clear(&full);
                    fs::create_dir(&full).unwrap();
                }
                touched.changed(&path);
            }
            4 => {
                parents(root, &path, touched);
                clear(&full);
                let target = if next().is_multiple_of(2) {
                    "../x"
                } else {
                    "/nowhere"
                };
                std::os::unix::fs::symlink(target, &full).unwrap();
                touched.changed(&path);
            }
            5 => {
                if let Some(kind) = file_type(&full).filter(|kind| !kind.is_symlink()) {
                    let mode = match (kind.is_dir(), next() % 2) {
                        (true, 0) => 0o700,
                        (true, _) => 0o755,
                        (false, 0) => 0o600,
                        (false, _) => 0o644,
                    };
                    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
                    touched.changed(&path);
                }
            }
            6 => {
                parents(root, &path, touched);
                clear(&full);
                touched.removed(&path);
                fs::create_dir(&full).unwrap();
                fs::write(full.join("f"), "made again").unwrap();
                touched.changed(&format!("{path}/f"));
            }
            _ => {
                parents(root, &path, touched);
                clear(&full);
                let name = CString::new(full.as_os_str().as_bytes()).unwrap();
                // SAFETY: `name` is a valid NUL-terminated path for the call's duration.
                assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
                touched.changed(&path);
            }
        }
    }

    /// Random trees, each changed in three rounds: the snapshot amended from the one before
    /// and the touched paths is, entry for entry, the one a walk takes, and its walk (stamps
    /// included) the one a walk lists. The later rounds amend an amended snapshot, and find
    /// files recorded by the round before.
    #[test]
    fn an_amended_snapshot_is_the_one_a_walk_takes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let mut next = crate::test_random(0x00a3_e7d5);
        let (mut cleared, mut recorded) = (0, 0);
        for tree_number in 0..150 {
            let root = dir.path().join(format!("ws{tree_number}"));
            fs::create_dir(&root).unwrap();
            let workspace = Uuid::new_v4();
            for _ in 0..20 {
                change(&root, &mut next, &mut Touched::default());
            }
            let mut before = index.take(workspace, "ws", 1, &root).unwrap();
            for round in 0..3 {
                let mut touched = Touched::default();
                for _ in 0..1 + next() % 6 {
                    change(&root, &mut next, &mut touched);
                }
                let amended = index
                    .amend(workspace, "ws", 1, &root, &before, &touched)
                    .unwrap();
                // Its walk is the one a walk of the tree lists now.
                let mut walk = tree::walk(&root);
                walk.by_ref().for_each(|item| drop(item.unwrap()));
                let (skipped, digest) = walk.finish();
                assert_eq!(amended.walk.skipped, skipped);
                assert!(
                    amended.walk.digest == digest,
                    "tree {tree_number}, round {round}: the amended walk differs, touched {touched:?}"
                );
                let walked = index.take(workspace, "ws", 1, &root).unwrap();
                let (amended_entries, walked_entries) =
                    (amended.load().unwrap(), walked.load().unwrap());
                assert_eq!(
                    amended_entries.entries, walked_entries.entries,
                    "tree {tree_number}, round {round}, touched {touched:?}"
                );
                assert_eq!(amended.root, walked.root);
                assert_eq!(
                    (amended.total_bytes, amended.file_count),
                    (walked.total_bytes, walked.file_count)
                );
                cleared += touched.paths.values().filter(|&&removed| removed).count();
                recorded += amended.stats.files_cached;
                before = amended;
            }
        }
        assert!(cleared > 100, "removals: {cleared}");
        assert!(recorded > 100, "touched files found recorded: {recorded}");
    }

    /// With nothing changed beside the commit, the memo answers the next walk from the
    /// amended snapshot: a file whose record is gone is not read. What changed beside the
    /// commit, outside the touched paths, is not in the amended snapshot, nor its stamp in the
    /// amended walk: the memo does not answer the next walk, which finds it.
    /// A push's last check trusts its snapshot for the pushed paths only while each is as
    /// the walk saw it: any write, mode, link, removal or new path there says "changed",
    /// and a change beside them does not.
    #[test]
    fn paths_are_unchanged_only_while_each_is_as_the_walk_saw_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("d/e")).unwrap();
        for file in ["d/f", "d/e/g", "beside"] {
            fs::write(root.join(file), file).unwrap();
        }
        std::os::unix::fs::symlink("f", root.join("d/l")).unwrap();
        until_file_clock_passes(&root.join("d/e/g"), 2 * RACY_WINDOW);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let workspace = Uuid::new_v4();
        let taken = index.take(workspace, "ws", 1, &root).unwrap();
        let mut touched = Touched::default();
        for path in ["d/e/g", "d/l", "d/new"] {
            touched.changed(path);
        }
        let unchanged = |taken: &Taken| taken.unchanged(&root, &touched).unwrap();
        assert!(unchanged(&taken), "nothing changed");
        fs::write(root.join("beside"), "changed beside").unwrap();
        assert!(unchanged(&taken), "a change beside the paths");

        // Each change to a path or a directory holding one, on a new snapshot each.
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("a write", |root| {
                fs::write(root.join("d/e/g"), "pushed over").unwrap()
            }),
            ("a mode", |root| {
                fs::set_permissions(root.join("d/e/g"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
            ("a link made again", |root| {
                fs::remove_file(root.join("d/l")).unwrap();
                std::os::unix::fs::symlink("e/g", root.join("d/l")).unwrap();
            }),
            ("a new path", |root| {
                fs::write(root.join("d/new"), "new").unwrap()
            }),
            ("a removal", |root| {
                fs::remove_file(root.join("d/e/g")).unwrap()
            }),
            ("a file beside, in a holding directory", |root| {
                fs::write(root.join("d/e/other"), "other").unwrap()
            }),
        ];
        for (what, apply) in changes {
            // Past the racy window of the change before.
            fs::write(root.join("beside"), what).unwrap();
            until_file_clock_passes(&root.join("beside"), 2 * RACY_WINDOW);
            let taken = index.take(workspace, "ws", 1, &root).unwrap();
            assert!(unchanged(&taken), "{what}: before it");
            apply(&root);
            assert!(!unchanged(&taken), "{what}: after it");
        }
    }

    #[test]
    fn the_amended_memo_answers_the_next_walk_unless_something_changed_beside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("beside"), "as it was").unwrap();
        until_file_clock_passes(&root.join("beside"), 2 * RACY_WINDOW);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let workspace = Uuid::new_v4();
        let before = index.take(workspace, "ws", 1, &root).unwrap();
        fs::create_dir(root.join("new")).unwrap();
        fs::write(root.join("new/synced"), "written by the commit").unwrap();
        until_file_clock_passes(&root.join("new/synced"), 2 * RACY_WINDOW);
        let mut touched = Touched::default();
        touched.changed("new");
        touched.changed("new/synced");
        let amended = index
            .amend(workspace, "ws", 1, &root, &before, &touched)
            .unwrap();
        assert!(!amended.racy);
        let mut gone = Spill::compact(&index.memo_dir, spill::IN_MEMORY);
        gone.push(&"new/synced".to_string()).unwrap();
        index
            .forget_gone(
                workspace,
                &root,
                gone,
                &mut IndexBatch::new(&index.memo_dir),
            )
            .unwrap();
        let answered = index.take(workspace, "ws", 1, &root).unwrap();
        assert_eq!(answered.root, amended.root);
        assert_eq!(answered.stats.files_hashed, 0, "the memo answered");

        let hash = |taken: &Taken, path: &str| {
            let snapshot = taken.load().unwrap();
            let entry = snapshot.entries.iter().find(|e| e.path == path);
            entry.unwrap().hash
        };
        fs::write(root.join("new/synced"), "written by the next commit").unwrap();
        fs::write(root.join("beside"), "changed meanwhile").unwrap();
        let mut touched = Touched::default();
        touched.changed("new/synced");
        let amended = index
            .amend(workspace, "ws", 1, &root, &answered, &touched)
            .unwrap();
        let of = crate::snapshot::Hash::of;
        assert_eq!(hash(&amended, "beside"), Some(of(b"as it was")));
        assert_eq!(
            hash(&amended, "new/synced"),
            Some(of(b"written by the next commit"))
        );
        let walked = index.take(workspace, "ws", 1, &root).unwrap();
        assert_eq!(hash(&walked, "beside"), Some(of(b"changed meanwhile")));
        assert_ne!(walked.root, amended.root);
    }

    /// The memo keeps the walks of the latest workspaces' snapshots only (each is an open
    /// file): the oldest lets its walk go, and a snapshot of it the memo answers can no
    /// longer be amended (the commit's snapshot is then walked), while the latest can.
    #[test]
    fn only_the_latest_walks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let workspaces: Vec<(Uuid, std::path::PathBuf)> = (0..=super::super::MAX_KEPT_WALKS)
            .map(|i| {
                let root = dir.path().join(format!("ws{i}"));
                fs::create_dir_all(root.join("d")).unwrap();
                (Uuid::new_v4(), root)
            })
            .collect();
        for (workspace, root) in &workspaces {
            index.take(*workspace, "ws", 1, root).unwrap();
        }
        let touched = Touched::default();
        let (oldest, root) = &workspaces[0];
        let answered = index.take(*oldest, "ws", 1, root).unwrap();
        assert!(answered.walk.items.is_none(), "the oldest walk was let go");
        assert!(index
            .amend(*oldest, "ws", 1, root, &answered, &touched)
            .is_err());
        let (latest, root) = workspaces.last().unwrap();
        let answered = index.take(*latest, "ws", 1, root).unwrap();
        let amended = index
            .amend(*latest, "ws", 1, root, &answered, &touched)
            .unwrap();
        assert_eq!(amended.root, answered.root);
    }
}
