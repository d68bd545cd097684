//! A snapshot as the difference from one the receiver already holds
//! (`schemas/transfer.md`, "Snapshot deltas"). A sync after a small change needs a few
//! entries, not the whole manifest (32 bytes of hash per file: 0.5 MB for 17,000 files, 7 MB
//! for 200,000). The receiver names the root it holds; a source that still has that snapshot
//! answers with the entries that changed and the paths removed, and the receiver rebuilds the
//! whole snapshot, which must hash to the announced root and pass every check a full one does.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{
    Hash, RootHasher, Snapshot, SnapshotEntry, SnapshotError, SnapshotLimits, SNAPSHOT_FORMAT,
};
use crate::snapshot_reader::SnapshotReader;
use crate::snapshot_receive::{Keeping, KeptSnapshot, ReceiveError};
use crate::snapshot_writer::SnapshotHead;

/// A snapshot as changes to `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDelta {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Root of the snapshot the changes apply to.
    pub base: Hash,
    /// The new snapshot's fields, as in a full one.
    #[serde(deserialize_with = "crate::uuid_wire::deserialize")]
    pub workspace_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its `source_root`.
    pub source_root: String,
    /// Its root hash.
    pub root: Hash,
    /// Paths of `base` the new snapshot lacks, sorted by byte order.
    pub removed: Vec<String>,
    /// Entries of the new snapshot that `base` lacks or has with any field different, whole,
    /// sorted by byte order.
    pub entries: Vec<SnapshotEntry>,
}

impl SnapshotDelta {
    /// The changes from `base` to `new`. `base.root` must be its entries' root hash, as it is
    /// for every snapshot built ([`Snapshot::new`]) or decoded (validated); panics otherwise.
    pub fn between(base: &Snapshot, new: &Snapshot) -> SnapshotDelta {
        SnapshotDelta::merge(
            base.root,
            base.entries.iter().cloned().map(Ok),
            (new.head(), new.root),
            new.entries.iter().cloned().map(Ok),
            usize::MAX,
        )
        .expect("entries in memory")
        .expect("no limit, and a snapshot's entries hash to its root")
    }

    /// [`between`](Self::between) for snapshots read entry by entry, holding only the
    /// changes: `None` when there are more than `max_changes` (the whole snapshot is then sent
    /// instead, and memory stays bounded), or when the base's entries do not hash to its root
    /// (a damaged file: the receiver would refuse the result).
    pub fn between_readers(
        base: &mut SnapshotReader<impl Read>,
        new: &mut SnapshotReader<impl Read>,
        max_changes: usize,
    ) -> std::io::Result<Option<SnapshotDelta>> {
        let head = (new.head.clone(), new.root);
        let base_root = base.root;
        SnapshotDelta::merge(
            base_root,
            std::iter::from_fn(|| base.next_entry().transpose()),
            head,
            std::iter::from_fn(|| new.next_entry().transpose()),
            max_changes,
        )
    }

    /// The one merge of two sorted lists of entries behind both.
    fn merge(
        base_root: Hash,
        base: impl Iterator<Item = std::io::Result<SnapshotEntry>>,
        (head, root): (SnapshotHead, Hash),
        new: impl Iterator<Item = std::io::Result<SnapshotEntry>>,
        max_changes: usize,
    ) -> std::io::Result<Option<SnapshotDelta>> {
        let (mut base, mut new) = (base, new);
        let (mut removed, mut entries) = (Vec::new(), Vec::new());
        let mut hashed = RootHasher::new();
        let (mut old, mut now) = (base.next().transpose()?, new.next().transpose()?);
        loop {
            match (old.take(), now.take()) {
                (None, None) => break,
                (Some(o), Some(n)) if o.path == n.path => {
                    hashed.push(&o);
                    if o != n {
                        entries.push(n);
                    }
                    old = base.next().transpose()?;
                    now = new.next().transpose()?;
                }
                (Some(o), n)
                    if n.as_ref()
                        .is_none_or(|n| o.path.as_bytes() < n.path.as_bytes()) =>
                {
                    hashed.push(&o);
                    removed.push(o.path);
                    old = base.next().transpose()?;
                    now = n;
                }
                (o, n) => {
                    entries.push(n.expect("a base entry before it or none is removed"));
                    old = o;
                    now = new.next().transpose()?;
                }
            }
            if removed.len() + entries.len() > max_changes {
                return Ok(None);
            }
        }
        if hashed.finish() != base_root {
            return Ok(None);
        }
        Ok(Some(SnapshotDelta {
            format: SNAPSHOT_FORMAT,
            base: base_root,
            workspace_id: head.workspace_id,
            name: head.name,
            revision: head.revision,
            source_root: head.source_root,
            root,
            removed,
            entries,
        }))
    }

    /// MessagePack (named fields), zstd-compressed.
    pub fn encode(&self) -> Vec<u8> {
        crate::packed::to_vec(self)
    }

    /// Decodes a delta within `limits` and applies it to `base`: the whole new snapshot,
    /// validated like a received full one (its root hash included). In memory, for a client
    /// that holds its base whole; a node uses [`decode_onto_kept`](Self::decode_onto_kept).
    pub fn decode_onto(
        bytes: &[u8],
        base: &Snapshot,
        limits: &SnapshotLimits,
    ) -> Result<Snapshot, SnapshotError> {
        let delta: SnapshotDelta = crate::packed::from_slice(bytes, limits, "a snapshot delta")?;
        delta.apply(base, limits)
    }

    /// Decodes a delta within `limits` and applies it to `base`, a snapshot on disk: the new
    /// snapshot is checked entry by entry as it is built (as a received full one is, its
    /// root hash included) and kept in an unnamed file in `dir`, never held.
    pub fn decode_onto_kept(
        bytes: &[u8],
        base: &KeptSnapshot,
        limits: &SnapshotLimits,
        dir: &Path,
    ) -> Result<KeptSnapshot, ReceiveError> {
        let delta: SnapshotDelta = crate::packed::from_slice(bytes, limits, "a snapshot delta")?;
        let head = SnapshotHead {
            workspace_id: delta.workspace_id,
            name: delta.name.clone(),
            revision: delta.revision,
            source_root: delta.source_root.clone(),
        };
        let root = delta.root;
        let mut keeping = Keeping::new(limits, dir);
        let mut reader = base.entries().map_err(ReceiveError::Keeping)?;
        delta.merge_into(
            (base.root, base.written.entries),
            limits,
            || reader.next_entry().map(|e| e.map(Cow::Owned)),
            |entry| keeping.push(&entry),
        )?;
        keeping.keep(head, Some(root))
    }

    /// Applies the changes to `base` in memory; the result is validated.
    pub fn apply(
        self,
        base: &Snapshot,
        limits: &SnapshotLimits,
    ) -> Result<Snapshot, SnapshotError> {
        let mut entries = Vec::with_capacity(base.entries.len() + self.entries.len());
        let mut base_entries = base.entries.iter();
        let head = (
            self.workspace_id,
            self.name.clone(),
            self.revision,
            self.source_root.clone(),
            self.root,
        );
        let merged = self.merge_into(
            (base.root, base.entries.len() as u64),
            limits,
            || Ok(base_entries.next().map(Cow::Borrowed)),
            |entry| {
                entries.push(entry.into_owned());
                Ok(())
            },
        );
        match merged {
            Ok(()) => {}
            Err(ReceiveError::Refused(refused)) => return Err(refused),
            Err(ReceiveError::Keeping(error)) => unreachable!("entries in memory: {error}"),
        }
        let (workspace_id, name, revision, source_root, root) = head;
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            workspace_id,
            name,
            revision,
            source_root,
            root,
            entries,
        };
        snapshot.validate(limits)?;
        Ok(snapshot)
    }

    /// The one merge behind both: `base`'s entries (`next` gives them in order; there are
    /// `count`, hashing to `base_root`) minus the removed ones, with the delta's replacing
    /// or adding theirs, handed to `out` in order. The result is not validated here.
    fn merge_into<'b>(
        self,
        (base_root, count): (Hash, u64),
        limits: &SnapshotLimits,
        mut next: impl FnMut() -> std::io::Result<Option<Cow<'b, SnapshotEntry>>>,
        mut out: impl FnMut(Cow<'b, SnapshotEntry>) -> Result<(), ReceiveError>,
    ) -> Result<(), ReceiveError> {
        if self.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Malformed(format!(
                "delta format {} is not supported (this node reads {SNAPSHOT_FORMAT})",
                self.format
            ))
            .into());
        }
        if self.base != base_root {
            return Err(SnapshotError::Malformed(format!(
                "the delta applies to {}, not to the snapshot held ({base_root})",
                self.base
            ))
            .into());
        }
        if self.entries.len() > limits.max_entries || self.removed.len() as u64 > count {
            return Err(SnapshotError::TooLarge(format!(
                "the delta lists {} entries and {} removals",
                self.entries.len(),
                self.removed.len()
            ))
            .into());
        }
        for list in [
            self.removed.iter().map(String::as_str).collect::<Vec<_>>(),
            self.entries.iter().map(|e| e.path.as_str()).collect(),
        ] {
            if let Some(pair) = list.windows(2).find(|w| w[0].as_bytes() >= w[1].as_bytes()) {
                return Err(SnapshotError::BadEntry {
                    path: pair[1].to_string(),
                    reason: "the delta's paths are not sorted and unique".into(),
                }
                .into());
            }
        }
        let not_in_base = |path: &String| {
            ReceiveError::from(SnapshotError::BadEntry {
                path: path.clone(),
                reason: "removed by the delta but not in the snapshot it applies to".into(),
            })
        };
        let mut removed = self.removed.iter().peekable();
        let mut changed = self.entries.into_iter().peekable();
        while let Some(entry) = next().map_err(ReceiveError::Keeping)? {
            if let Some(path) = removed
                .peek()
                .filter(|r| r.as_bytes() < entry.path.as_bytes())
            {
                return Err(not_in_base(path));
            }
            while changed
                .peek()
                .is_some_and(|c| c.path.as_bytes() < entry.path.as_bytes())
            {
                out(Cow::Owned(changed.next().expect("peeked")))?;
            }
            let gone = removed.peek().is_some_and(|r| **r == entry.path);
            let replaced = changed.peek().is_some_and(|c| c.path == entry.path);
            if gone && replaced {
                return Err(SnapshotError::BadEntry {
                    path: entry.path.clone(),
                    reason: "both removed and changed by the delta".into(),
                }
                .into());
            }
            if gone {
                removed.next();
            } else if replaced {
                out(Cow::Owned(changed.next().expect("peeked")))?;
            } else {
                out(entry)?;
            }
        }
        if let Some(path) = removed.next() {
            return Err(not_in_base(path));
        }
        for entry in changed {
            out(Cow::Owned(entry))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::{dir, file};

    fn snapshot(entries: Vec<SnapshotEntry>) -> Snapshot {
        Snapshot::new(
            Uuid::from_u128(7),
            "demo".into(),
            3,
            "/srv/demo".into(),
            entries,
        )
    }

    /// `delta` applied to `base` in memory and, through its encoding, to `base` kept on disk:
    /// the same snapshot, or the same kind of refusal (a limit is worded by what was counted
    /// when it was reached).
    fn apply_both(
        delta: &SnapshotDelta,
        base: &Snapshot,
        limits: &SnapshotLimits,
    ) -> Result<Snapshot, SnapshotError> {
        let in_memory = delta.clone().apply(base, limits);
        let dir = tempfile::tempdir().unwrap();
        let bytes = base.encode();
        let kept_base = KeptSnapshot::receive(
            &bytes[..],
            bytes.len() as u64,
            &SnapshotLimits::default(),
            dir.path(),
        )
        .unwrap();
        let on_disk =
            SnapshotDelta::decode_onto_kept(&delta.encode(), &kept_base, limits, dir.path());
        match (&in_memory, on_disk) {
            (Ok(snapshot), Ok(kept)) => {
                assert_eq!(&kept.load().unwrap(), snapshot);
                assert_eq!(kept.root, snapshot.root);
                assert_eq!(kept.written.entries, snapshot.entries.len() as u64);
                assert_eq!(kept.written.total_bytes, snapshot.total_bytes());
            }
            (Err(refused), Err(ReceiveError::Refused(kept))) => {
                assert_eq!(
                    std::mem::discriminant(&kept),
                    std::mem::discriminant(refused),
                    "{kept} / {refused}"
                );
                if let (
                    SnapshotError::BadEntry { path: a, .. },
                    SnapshotError::BadEntry { path: b, .. },
                ) = (&kept, refused)
                {
                    assert_eq!(a, b);
                }
            }
            (in_memory, on_disk) => panic!("in memory {in_memory:?}, on disk {on_disk:?}"),
        }
        in_memory
    }

    #[test]
    fn a_delta_rebuilds_the_new_snapshot_exactly() {
        let base = snapshot(vec![
            dir("a"),
            file("a/keep", b"same"),
            file("a/edit", b"old"),
            file("b", b"gone"),
            dir("c"),
            file("c/x", b"x"),
        ]);
        let new = snapshot(vec![
            dir("a"),
            file("a/edit", b"new"),
            file("a/keep", b"same"),
            file("a/new", b"added"),
            dir("c"),
            dir("c/d"),
            file("z", b"last"),
        ]);
        let delta = SnapshotDelta::between(&base, &new);
        assert_eq!(delta.removed, ["b", "c/x"]);
        let paths: Vec<&str> = delta.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a/edit", "a/new", "c/d", "z"]);
        let limits = SnapshotLimits::default();
        let rebuilt = SnapshotDelta::decode_onto(&delta.encode(), &base, &limits).unwrap();
        assert_eq!(rebuilt, new);
        assert_eq!(apply_both(&delta, &base, &limits).unwrap(), new);
        // Nothing changed: an empty delta.
        let same = SnapshotDelta::between(&new, &new);
        assert!(same.removed.is_empty() && same.entries.is_empty());
        assert_eq!(apply_both(&same, &new, &limits).unwrap(), new);
    }

    #[test]
    fn a_lying_or_mismatched_delta_is_refused() {
        let limits = SnapshotLimits::default();
        let base = snapshot(vec![dir("a"), file("a/f", b"1")]);
        let new = snapshot(vec![dir("a"), file("a/f", b"2")]);
        let good = SnapshotDelta::between(&base, &new);

        // Applied to another snapshot than its base.
        let other = snapshot(vec![dir("a")]);
        let error = apply_both(&good, &other, &limits).unwrap_err();
        assert!(error.to_string().contains("applies to"), "{error}");
        // An entry whose content differs from what the root says.
        let mut lying = good.clone();
        lying.entries[0] = file("a/f", b"3");
        assert!(matches!(
            apply_both(&lying, &base, &limits),
            Err(SnapshotError::RootMismatch { .. })
        ));
        // Removing what the base lacks, unsorted lists, removed and changed at once.
        let mut bad = good.clone();
        bad.removed = vec!["nope".into()];
        assert!(apply_both(&bad, &base, &limits)
            .unwrap_err()
            .to_string()
            .contains("`nope`"));
        let mut bad = good.clone();
        bad.entries = vec![file("b", b"1"), file("a/g", b"1")];
        assert!(apply_both(&bad, &base, &limits)
            .unwrap_err()
            .to_string()
            .contains("sorted"));
        let mut bad = good.clone();
        bad.removed = vec!["a/f".into()];
        assert!(apply_both(&bad, &base, &limits)
            .unwrap_err()
            .to_string()
            .contains("both removed and changed"));
        // An unsafe path is refused as in a full snapshot.
        let mut bad = good;
        bad.entries = vec![file("../escape", b"1")];
        assert!(apply_both(&bad, &base, &limits).is_err());
        // More entries than the limits allow.
        let few = SnapshotLimits {
            max_entries: 2,
            ..SnapshotLimits::default()
        };
        let mut bad = SnapshotDelta::between(&base, &new);
        bad.entries.push(file("b", b"1"));
        assert!(apply_both(&bad, &base, &few).is_err());
        // Garbage.
        assert!(SnapshotDelta::decode_onto(b"not zstd", &base, &limits).is_err());
    }

    /// Read entry by entry from the encoded snapshots, the delta is the one computed in
    /// memory; past `max_changes`, or from a base whose entries do not hash to its root, there
    /// is none (the whole snapshot is sent).
    #[test]
    fn a_delta_between_readers_is_the_same_and_bounded() {
        let base = snapshot(
            (0..50)
                .map(|i| file(&format!("f{i:02}"), &[i as u8]))
                .collect(),
        );
        let new = snapshot(
            (0..50)
                .filter(|i| i % 10 != 3)
                .map(|i| file(&format!("f{i:02}"), &[i + u8::from(i % 7 == 0) * 100]))
                .chain([file("g", b"new")])
                .collect(),
        );
        let (base_bytes, new_bytes) = (base.encode(), new.encode());
        let read = |bytes: &[u8], max| {
            SnapshotDelta::between_readers(
                &mut SnapshotReader::new(&base_bytes[..]).unwrap(),
                &mut SnapshotReader::new(bytes).unwrap(),
                max,
            )
            .unwrap()
        };
        let in_memory = SnapshotDelta::between(&base, &new);
        let changes = in_memory.removed.len() + in_memory.entries.len();
        assert_eq!(changes, 5 + 8 + 1);
        assert_eq!(read(&new_bytes, changes), Some(in_memory));
        assert_eq!(read(&new_bytes, changes - 1), None);
        // A base file whose entries are not those its root names.
        let damaged = Snapshot {
            root: new.root,
            ..base.clone()
        }
        .encode();
        assert_eq!(
            SnapshotDelta::between_readers(
                &mut SnapshotReader::new(&damaged[..]).unwrap(),
                &mut SnapshotReader::new(&new_bytes[..]).unwrap(),
                usize::MAX,
            )
            .unwrap(),
            None
        );
    }
}
