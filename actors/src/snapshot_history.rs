//! Snapshots this node served recently, kept so a later request that names one of them
//! (`GET …/snapshot?since=<root>`) is answered with a delta (`snapshot_delta`). On disk, as
//! served (`<data-dir>/served/<workspace id>/<root hex>`, encoded), the newest
//! [`KEEP`] per workspace: memory stays flat whatever the file count.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::snapshot::Hash;
use crate::snapshot_reader::SnapshotReader;

/// Snapshots kept per workspace.
pub const KEEP: usize = 8;

/// The served snapshots of this node's workspaces.
#[derive(Debug, Clone)]
pub struct SnapshotHistory {
    dir: PathBuf,
}

impl SnapshotHistory {
    /// The history under `data_dir`.
    pub fn new(data_dir: &Path) -> SnapshotHistory {
        SnapshotHistory {
            dir: data_dir.join("served"),
        }
    }

    fn path(&self, workspace: Uuid, root: &Hash) -> PathBuf {
        self.dir.join(workspace.to_string()).join(root.to_hex())
    }

    /// Keeps `encoded` (the snapshot whose root is `root`, read to its end), unless it is kept
    /// already, and drops the oldest past [`KEEP`]. Written to a temporary name and renamed:
    /// a crash never leaves a torn one (and a torn one would fail its root hash on load
    /// anyway).
    pub fn record(
        &self,
        workspace: Uuid,
        root: &Hash,
        mut encoded: impl std::io::Read,
    ) -> std::io::Result<()> {
        let path = self.path(workspace, root);
        if path.exists() {
            // Newest first when pruning: touch it.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(());
        }
        let dir = path.parent().expect("a workspace directory");
        std::fs::create_dir_all(dir)?;
        // Its own temporary: two requests serving the same new root at once each write whole.
        let temporary = dir.join(format!(
            ".{}.{}.partial",
            root.to_hex(),
            Uuid::new_v4().simple()
        ));
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| std::io::copy(&mut encoded, &mut file))
            .and_then(|_| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        kept.sort_by_key(|k| std::cmp::Reverse(k.0));
        for (_, old) in kept.into_iter().skip(KEEP) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// The kept snapshot of `workspace` with `root`, to read entry by entry; `None` when it
    /// is not kept or its head names another. Its entries are checked against the root as
    /// they are read ([`crate::snapshot_delta::SnapshotDelta::between_readers`]), never held
    /// together.
    pub fn open(&self, workspace: Uuid, root: &Hash) -> Option<SnapshotReader<std::fs::File>> {
        let file = std::fs::File::open(self.path(workspace, root)).ok()?;
        let reader = SnapshotReader::new(file).ok()?;
        (reader.root == *root && reader.head.workspace_id == workspace).then_some(reader)
    }

    /// Removes the history of workspaces `exists` no longer knows.
    pub fn prune(&self, exists: impl Fn(Uuid) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            match Uuid::parse_str(&name.to_string_lossy()) {
                Ok(id) if exists(id) => {}
                _ => {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::file;
    use crate::snapshot::Snapshot;

    fn snapshot(id: Uuid, n: usize) -> Snapshot {
        let entries = vec![file(&format!("f{n}"), &[n as u8])];
        Snapshot::new(id, "w".into(), 1, "/w".into(), entries)
    }

    #[test]
    fn keeps_the_newest_and_checks_what_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let history = SnapshotHistory::new(dir.path());
        let id = Uuid::from_u128(1);
        let all: Vec<Snapshot> = (0..KEEP + 2).map(|n| snapshot(id, n)).collect();
        for (n, s) in all.iter().enumerate() {
            history.record(id, &s.root, &s.encode()[..]).unwrap();
            // Distinct modification times, oldest first.
            let path = history.path(id, &s.root);
            let when =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(n as u64 + 1);
            std::fs::File::options()
                .append(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        history
            .record(id, &all[KEEP + 1].root, &all[KEEP + 1].encode()[..])
            .unwrap();
        assert!(history.open(id, &all[0].root).is_none(), "the oldest went");
        let mut kept = history.open(id, &all[KEEP + 1].root).unwrap();
        let mut entries = Vec::new();
        while let Some(entry) = kept.next_entry().unwrap() {
            entries.push(entry);
        }
        assert_eq!(entries, all[KEEP + 1].entries);
        // A file whose content is another snapshot is not taken for the one named.
        std::fs::copy(
            history.path(id, &all[KEEP].root),
            history.path(id, &all[KEEP + 1].root),
        )
        .unwrap();
        assert!(history.open(id, &all[KEEP + 1].root).is_none());
        history.prune(|_| false);
        assert!(history.open(id, &all[KEEP].root).is_none());
    }

    /// Requests serving the same new snapshot at once each write a temporary of their own:
    /// what is kept is one whole copy, never one truncated under another's writes.
    #[test]
    fn concurrent_records_of_one_snapshot_keep_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let history = SnapshotHistory::new(dir.path());
        let id = Uuid::from_u128(2);
        let entries = (0..20_000u32)
            .map(|n| file(&format!("f{n:05}"), &n.to_le_bytes()))
            .collect();
        let snapshot = Snapshot::new(id, "w".into(), 1, "/w".into(), entries);
        let bytes = snapshot.encode();
        for _ in 0..5 {
            let _ = std::fs::remove_file(history.path(id, &snapshot.root));
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| history.record(id, &snapshot.root, &bytes[..]).unwrap());
                }
            });
            assert_eq!(
                std::fs::read(history.path(id, &snapshot.root)).unwrap(),
                bytes
            );
        }
        let names: Vec<String> =
            std::fs::read_dir(history.path(id, &snapshot.root).parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        assert_eq!(names, [snapshot.root.to_hex()], "no temporary left");
    }
}
