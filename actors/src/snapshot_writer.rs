//! A snapshot written entry by entry: the bytes [`Snapshot::encode`] makes, without the
//! entries ever being held together. Entries go to a [`Spill`] as they come, with the root
//! hash and totals kept running; the document is written once the root is known (it comes
//! before the entries in the map, as [`Snapshot`] lays its fields out).

use std::io::{self, Write};
use std::path::Path;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::snapshot::{EntryKind, Hash, RootHasher, Snapshot, SnapshotEntry, SNAPSHOT_FORMAT};
use crate::spill::Spill;

/// What a snapshot says about itself, besides its entries.
#[derive(Debug, Clone)]
pub struct SnapshotHead {
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Workspace name.
    pub name: String,
    /// Revision of `workspace.yaml` when taken.
    pub revision: u64,
    /// Absolute path of the workspace on this node.
    pub source_root: String,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The root hash.
    pub root: Hash,
    /// Bytes of file content ([`Snapshot::total_bytes`]).
    pub total_bytes: u64,
    /// Regular files ([`Snapshot::file_count`]).
    pub file_count: u64,
    /// Entries.
    pub entries: u64,
}

/// Entries pushed in snapshot order, not yet written.
pub struct SnapshotWriter {
    entries: Spill,
    root: RootHasher,
    total_bytes: u64,
    file_count: u64,
    /// The last path pushed (`None` before the first).
    last: Option<String>,
}

impl SnapshotWriter {
    /// A writer whose entries spill to an unnamed file in `dir` past
    /// [`crate::spill::IN_MEMORY`] bytes.
    pub fn new(dir: &Path) -> SnapshotWriter {
        SnapshotWriter {
            entries: Spill::new(dir, crate::spill::IN_MEMORY),
            root: RootHasher::new(),
            total_bytes: 0,
            file_count: 0,
            last: None,
        }
    }

    /// Adds the next entry. Entries come in strict byte order of their paths (a walk in
    /// snapshot order); one out of order is a bug of the caller, refused here rather than
    /// written into a snapshot no peer would accept.
    pub fn push(&mut self, entry: &SnapshotEntry) -> io::Result<()> {
        match &mut self.last {
            Some(last) if last.as_bytes() >= entry.path.as_bytes() => {
                return Err(io::Error::other(format!(
                    "snapshot entry `{}` comes after `{last}`",
                    entry.path
                )));
            }
            Some(last) => {
                last.clear();
                last.push_str(&entry.path);
            }
            None => self.last = Some(entry.path.clone()),
        }
        self.root.push(entry);
        self.total_bytes += entry.size;
        if entry.kind == EntryKind::File {
            self.file_count += 1;
        }
        self.entries.push(entry)
    }

    /// Writes the snapshot to `out` as [`crate::packed::write`] writes a [`Snapshot`].
    pub fn finish(self, head: &SnapshotHead, out: impl Write) -> io::Result<Written> {
        let written = Written {
            root: self.root.finish(),
            total_bytes: self.total_bytes,
            file_count: self.file_count,
            entries: self.entries.count(),
        };
        let count = usize::try_from(written.entries).map_err(io::Error::other)?;
        let head = rmp_serde::to_vec_named(&Head {
            format: SNAPSHOT_FORMAT,
            workspace_id: head.workspace_id,
            name: &head.name,
            revision: head.revision,
            source_root: &head.source_root,
            root: written.root,
            entries: ArrayHead(count),
        })
        .map_err(io::Error::other)?;
        let size = head.len() as u64 + self.entries.bytes();
        let mut reader = self.entries.into_reader()?;
        crate::packed::write_raw(size, out, |compressor| {
            compressor.write_all(&head)?;
            io::copy(&mut reader, compressor)?;
            Ok(())
        })?;
        Ok(written)
    }
}

/// [`Snapshot`]'s fields in its order, the entries' array reduced to its header.
#[derive(Serialize)]
struct Head<'a> {
    format: u32,
    workspace_id: Uuid,
    name: &'a str,
    revision: u64,
    source_root: &'a str,
    root: Hash,
    entries: ArrayHead,
}

/// The header of a MessagePack array of this many elements, which follow it.
struct ArrayHead(usize);

impl Serialize for ArrayHead {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_seq(Some(self.0))?.end()
    }
}

impl Snapshot {
    /// What [`SnapshotWriter`] needs besides the entries.
    pub fn head(&self) -> SnapshotHead {
        SnapshotHead {
            workspace_id: self.workspace_id,
            name: self.name.clone(),
            revision: self.revision,
            source_root: self.source_root.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ChunkRef;

    fn entries(count: usize) -> Vec<SnapshotEntry> {
        let mut entries = vec![SnapshotEntry {
            path: "d".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            hash: None,
            target: None,
            chunks: Vec::new(),
        }];
        for i in 0..count {
            let chunks = if i % 50 == 0 {
                vec![
                    ChunkRef {
                        hash: Hash::of(&[i as u8]),
                        size: 1 << 20,
                    };
                    2
                ]
            } else {
                Vec::new()
            };
            entries.push(SnapshotEntry {
                path: format!("d/{i:06}"),
                kind: EntryKind::File,
                mode: 0o644,
                size: if chunks.is_empty() { i as u64 } else { 2 << 20 },
                hash: Some(Hash::of(format!("{i}").as_bytes())),
                target: None,
                chunks,
            });
        }
        entries.push(SnapshotEntry {
            path: "l".into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            hash: None,
            target: Some("d/000001".into()),
            chunks: Vec::new(),
        });
        entries
    }

    #[test]
    fn the_streamed_snapshot_is_byte_for_byte_the_encoded_one() {
        let dir = tempfile::tempdir().unwrap();
        // Small enough to stay in memory, and large enough to spill to a file.
        for count in [0, 3, 40_000] {
            let snapshot = Snapshot::new(
                Uuid::new_v4(),
                "ws".into(),
                7,
                "/home/me/ws".into(),
                entries(count),
            );
            let mut writer = SnapshotWriter::new(dir.path());
            for entry in &snapshot.entries {
                writer.push(entry).unwrap();
            }
            let mut bytes = Vec::new();
            let written = writer.finish(&snapshot.head(), &mut bytes).unwrap();
            assert_eq!(
                written,
                Written {
                    root: snapshot.root,
                    total_bytes: snapshot.total_bytes(),
                    file_count: snapshot.file_count(),
                    entries: snapshot.entries.len() as u64,
                }
            );
            assert!(bytes == snapshot.encode(), "{count} entries");
        }
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SnapshotWriter::new(dir.path());
        let all = entries(2);
        writer.push(&all[1]).unwrap();
        let error = writer.push(&all[0]).unwrap_err().to_string();
        assert!(error.contains("`d` comes after `d/000000`"), "{error}");
        assert!(writer.push(&all[1]).is_err(), "a path twice");
    }
}
