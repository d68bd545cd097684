//! Workspace snapshots: the manifest of the transfer protocol (spec: `schemas/transfer.md`).
//!
//! A snapshot lists every path of a workspace with its kind, mode, size, BLAKE3 hash and chunk
//! list, and a root hash over all of that. The WorkspaceStore produces snapshots of its
//! workspaces; the TransferQueue decodes a peer's snapshot with [`Snapshot::decode`], which
//! trusts nothing: every path, size, count and hash is checked before anything is written.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Snapshot format version written and read by this build.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// Files up to this size are one chunk whose hash is the file's hash.
pub const SMALL_FILE_MAX: u64 = 1024 * 1024;
/// Content-defined chunking bounds for larger files.
pub const CHUNK_MIN: u32 = 256 * 1024;
/// Average chunk size the chunker aims for.
pub const CHUNK_AVG: u32 = 1024 * 1024;
/// Largest chunk.
pub const CHUNK_MAX: u32 = 4 * 1024 * 1024;

/// A BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Hash> {
        blake3::Hash::from_hex(text)
            .ok()
            .map(|h| Hash(*h.as_bytes()))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Hash, E> {
                <[u8; 32]>::try_from(v)
                    .map(Hash)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Kinds of snapshot entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link, transferred as a link and never followed.
    Symlink,
}

/// One chunk of a file: its hash and length. Offsets follow from the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub hash: Hash,
    /// Length in bytes.
    pub size: u32,
}

/// One path of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Workspace-relative path with `/` separators.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    /// Size in bytes (files only).
    #[serde(default)]
    pub size: u64,
    /// Files only: BLAKE3 of the content for a small file, [`chunk_list_hash`] of the chunks
    /// for a large one (so it follows from chunks verified one by one, and hashing a changed
    /// file costs one pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Chunks of a file larger than [`SMALL_FILE_MAX`]; empty for a small file, which is one
    /// chunk with the file's hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

impl SnapshotEntry {
    /// The chunks of a file with their offsets (a small file is one chunk).
    pub fn file_chunks(&self) -> Vec<(u64, ChunkRef)> {
        if self.kind != EntryKind::File || self.size == 0 {
            return Vec::new();
        }
        if self.chunks.is_empty() {
            let hash = self.hash.expect("validated files have a hash");
            return vec![(
                0,
                ChunkRef {
                    hash,
                    size: self.size as u32,
                },
            )];
        }
        let mut offset = 0;
        self.chunks
            .iter()
            .map(|chunk| {
                let at = offset;
                offset += u64::from(chunk.size);
                (at, *chunk)
            })
            .collect()
    }
}

/// A workspace snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Workspace id.
    #[serde(deserialize_with = "crate::uuid_wire::deserialize")]
    pub workspace_id: Uuid,
    /// Workspace name.
    pub name: String,
    /// Revision of `workspace.yaml` when taken.
    pub revision: u64,
    /// Absolute path of the workspace on the serving node, so the receiver can relocate
    /// files and links that embed it (venv scripts, `pyvenv.cfg`).
    pub source_root: String,
    /// [`root_hash`] of `entries`.
    pub root: Hash,
    /// Every path, sorted by byte order (so parents come before children).
    pub entries: Vec<SnapshotEntry>,
}

impl Snapshot {
    /// Builds a snapshot, sorting the entries and computing the root hash.
    pub fn new(
        workspace_id: Uuid,
        name: String,
        revision: u64,
        source_root: String,
        mut entries: Vec<SnapshotEntry>,
    ) -> Snapshot {
        // A walk's entries usually arrive sorted already, and a stable sort's scratch buffer
        // would be half the entries again at the node's peak.
        if !entries.is_sorted_by(|a, b| a.path.as_bytes() <= b.path.as_bytes()) {
            entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        }
        Snapshot {
            format: SNAPSHOT_FORMAT,
            workspace_id,
            name,
            revision,
            source_root,
            root: root_hash(&entries),
            entries,
        }
    }

    /// The entry at `path` (the entries are sorted, so a binary search).
    pub fn entry(&self, path: &str) -> Option<&SnapshotEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|at| &self.entries[at])
    }

    /// Total bytes of file content.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64
    }

    /// MessagePack, zstd-compressed: the body of `GET .../manifest`.
    pub fn encode(&self) -> Vec<u8> {
        crate::packed::to_vec(self)
    }

    /// Decodes and validates a snapshot received from a peer.
    pub fn decode(bytes: &[u8], limits: &SnapshotLimits) -> Result<Snapshot, SnapshotError> {
        let snapshot: Snapshot = crate::packed::from_slice(bytes, limits, "a snapshot")?;
        snapshot.validate(limits)?;
        Ok(snapshot)
    }

    /// Reads and validates a snapshot this node kept in the file at `path` (as [`encode`]d),
    /// without holding the file's bytes.
    ///
    /// [`encode`]: Snapshot::encode
    pub fn read_file(
        path: &std::path::Path,
        limits: &SnapshotLimits,
    ) -> Result<Snapshot, crate::packed::ReadFileError> {
        let snapshot: Snapshot = crate::packed::read_file(path, limits, "a snapshot")?;
        snapshot
            .validate(limits)
            .map_err(crate::packed::ReadFileError::Document)?;
        Ok(snapshot)
    }

    /// Writes the snapshot as [`encode`] would, to `path` atomically, without holding the
    /// encoded bytes.
    ///
    /// [`encode`]: Snapshot::encode
    pub fn write_file(&self, path: &std::path::Path) -> Result<(), crate::fsio::FsError> {
        crate::fsio::write_atomic_with(path, |out| crate::packed::write(self, out))
    }

    /// Pairs of paths that differ only by letter case ([`crate::tree::case_collisions`]).
    pub fn case_collisions(&self, limit: usize) -> Vec<(String, String)> {
        crate::tree::case_collisions(self.entries.iter().map(|e| e.path.as_str()), limit)
    }

    /// Checks everything a receiver relies on before writing a single byte.
    pub fn validate(&self, limits: &SnapshotLimits) -> Result<(), SnapshotError> {
        check_format(self.format)?;
        check_entry_count(self.entries.len(), limits)?;
        let mut checker = SnapshotChecker::new(limits);
        for entry in &self.entries {
            checker.push(entry)?;
        }
        checker.finish(self.root).map(drop)
    }
}

/// Refuses a format this node does not read.
pub(crate) fn check_format(format: u32) -> Result<(), SnapshotError> {
    if format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Malformed(format!(
            "format {format} is not supported (this node reads {SNAPSHOT_FORMAT})"
        )));
    }
    Ok(())
}

/// Refuses more entries than `limits` allow (a count known before the entries are read).
pub(crate) fn check_entry_count(
    count: usize,
    limits: &SnapshotLimits,
) -> Result<(), SnapshotError> {
    if count > limits.max_entries {
        return Err(SnapshotError::TooLarge(format!(
            "{count} entries, more than the limit of {}",
            limits.max_entries
        )));
    }
    Ok(())
}

/// [`Snapshot::validate`] one entry at a time: what a received snapshot's entries must
/// satisfy, checked as they stream in, with the root hash and totals kept running. Holds
/// only the current path and its ancestors ([`crate::tree::EntryChecker`]).
pub struct SnapshotChecker<'a> {
    limits: &'a SnapshotLimits,
    tree: crate::tree::EntryChecker,
    root: RootHasher,
    entries: usize,
    total: u64,
}

impl<'a> SnapshotChecker<'a> {
    /// A checker for a snapshot within `limits`.
    pub fn new(limits: &'a SnapshotLimits) -> SnapshotChecker<'a> {
        SnapshotChecker {
            limits,
            tree: crate::tree::EntryChecker::default(),
            root: RootHasher::new(),
            entries: 0,
            total: 0,
        }
    }

    /// Checks the next entry (in the snapshot's order).
    pub fn push(&mut self, entry: &SnapshotEntry) -> Result<(), SnapshotError> {
        let limits = self.limits;
        self.entries += 1;
        if self.entries > limits.max_entries {
            return Err(SnapshotError::TooLarge(format!(
                "more than the limit of {} entries",
                limits.max_entries
            )));
        }
        self.tree.push(entry).map_err(|e| SnapshotError::BadEntry {
            path: e.path,
            reason: e.reason,
        })?;
        self.root.push(entry);
        if entry.kind != EntryKind::File {
            return Ok(());
        }
        let bad = |reason: String| SnapshotError::BadEntry {
            path: entry.path.clone(),
            reason,
        };
        if entry.size > limits.max_file_bytes {
            return Err(bad(format!(
                "size {} is more than the limit of {} bytes",
                entry.size, limits.max_file_bytes
            )));
        }
        self.total = self.total.saturating_add(entry.size);
        if self.total > limits.max_total_bytes {
            return Err(SnapshotError::TooLarge(format!(
                "at least {} bytes of content, more than the limit of {}",
                self.total, limits.max_total_bytes
            )));
        }
        if entry.size <= SMALL_FILE_MAX {
            if !entry.chunks.is_empty() {
                return Err(bad(format!(
                    "files up to {SMALL_FILE_MAX} bytes are one chunk"
                )));
            }
            return Ok(());
        }
        let mut sum: u64 = 0;
        for chunk in &entry.chunks {
            if chunk.size == 0 || chunk.size > CHUNK_MAX {
                return Err(bad(format!(
                    "chunk {} has size {} (allowed 1..={CHUNK_MAX})",
                    chunk.hash, chunk.size
                )));
            }
            sum += u64::from(chunk.size);
        }
        if sum != entry.size {
            return Err(bad(format!(
                "chunks add up to {sum} bytes, not the file's {}",
                entry.size
            )));
        }
        if entry.hash != Some(chunk_list_hash(&entry.chunks)) {
            return Err(bad("its hash is not the hash of its chunk list".into()));
        }
        Ok(())
    }

    /// Checks the root the snapshot announced against its entries; returns it.
    pub fn finish(self, announced: Hash) -> Result<Hash, SnapshotError> {
        let computed = self.root.finish();
        if computed != announced {
            return Err(SnapshotError::RootMismatch {
                announced,
                computed,
            });
        }
        Ok(computed)
    }
}

/// Bounds on what a received snapshot may describe.
#[derive(Debug, Clone)]
pub struct SnapshotLimits {
    /// Most entries.
    pub max_entries: usize,
    /// Largest compressed manifest.
    pub max_encoded_bytes: u64,
    /// Largest manifest after decompression.
    pub max_decoded_bytes: u64,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Most content in all.
    pub max_total_bytes: u64,
}

impl Default for SnapshotLimits {
    fn default() -> SnapshotLimits {
        SnapshotLimits {
            max_entries: 500_000,
            max_encoded_bytes: 64 * 1024 * 1024,
            max_decoded_bytes: 256 * 1024 * 1024,
            max_file_bytes: 1 << 40,
            max_total_bytes: 16 << 40,
        }
    }
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not a snapshot at all.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// Over a limit.
    #[error("manifest too large: {0}")]
    TooLarge(String),
    /// One entry is unsafe or inconsistent.
    #[error("manifest entry `{path}`: {reason}")]
    BadEntry {
        /// The entry's path as sent.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The root hash does not match the entries.
    #[error("manifest root hash {announced} does not match its entries ({computed})")]
    RootMismatch {
        /// What the manifest says.
        announced: Hash,
        /// What its entries hash to.
        computed: Hash,
    },
}

/// The root hash: BLAKE3 over a canonical byte encoding of every entry (independent of the
/// MessagePack encoding, so any correct encoder produces the same root).
pub fn root_hash(entries: &[SnapshotEntry]) -> Hash {
    let mut root = RootHasher::new();
    for entry in entries {
        root.push(entry);
    }
    root.finish()
}

/// The root hash computed entry by entry, for a caller that checks a tree as it walks it
/// instead of building a second list of entries.
///
/// An entry's canonical bytes are a few dozen small pieces. Handed to BLAKE3 one by one,
/// each 64-byte block is compressed alone; gathered first, whole chunks are hashed side by
/// side (SIMD), several times faster. The hash is the same either way.
pub struct RootHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

/// Bytes gathered before they go to the hasher.
const ROOT_PENDING: usize = 64 * 1024;

impl RootHasher {
    /// Starts with the domain prefix.
    pub fn new() -> RootHasher {
        let mut pending = Vec::with_capacity(ROOT_PENDING + 1024);
        pending.extend_from_slice(b"aienv-snapshot-v1\0");
        RootHasher {
            hasher: blake3::Hasher::new(),
            pending,
        }
    }

    /// Adds the next entry, in snapshot order.
    pub fn push(&mut self, entry: &SnapshotEntry) {
        self.push_found(
            entry,
            entry.kind,
            entry.mode,
            entry.size,
            entry.target.as_deref(),
        );
    }

    /// Adds `entry` as found on disk: its kind, mode, size and link target as given, its
    /// path, hash and chunks as listed.
    pub fn push_found(
        &mut self,
        entry: &SnapshotEntry,
        kind: EntryKind,
        mode: u32,
        size: u64,
        target: Option<&str>,
    ) {
        let bytes = &mut self.pending;
        bytes.extend_from_slice(entry.path.as_bytes());
        bytes.push(0);
        bytes.push(match kind {
            EntryKind::File => b'f',
            EntryKind::Dir => b'd',
            EntryKind::Symlink => b'l',
        });
        bytes.extend_from_slice(&mode.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        if let Some(hash) = &entry.hash {
            bytes.extend_from_slice(&hash.0);
        }
        if let Some(target) = target {
            bytes.extend_from_slice(target.as_bytes());
            bytes.push(0);
        }
        bytes.extend_from_slice(&(entry.chunks.len() as u32).to_le_bytes());
        for chunk in &entry.chunks {
            bytes.extend_from_slice(&chunk.hash.0);
            bytes.extend_from_slice(&chunk.size.to_le_bytes());
        }
        if bytes.len() >= ROOT_PENDING {
            self.hasher.update(bytes);
            bytes.clear();
        }
    }

    /// The root hash.
    pub fn finish(mut self) -> Hash {
        self.hasher.update(&self.pending);
        Hash(*self.hasher.finalize().as_bytes())
    }
}

impl Default for RootHasher {
    fn default() -> RootHasher {
        RootHasher::new()
    }
}

/// The hash of a large file: BLAKE3 over `aienv-chunks-v1\0` and each chunk's hash and
/// size (u32 LE), in order.
pub fn chunk_list_hash(chunks: &[ChunkRef]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"aienv-chunks-v1\0");
    for chunk in chunks {
        hasher.update(&chunk.hash.0);
        hasher.update(&chunk.size.to_le_bytes());
    }
    Hash(*hasher.finalize().as_bytes())
}

/// Entries for tests across the crate.
#[cfg(test)]
pub(crate) mod test_entries {
    use super::*;

    pub(crate) fn dir(path: &str) -> SnapshotEntry {
        SnapshotEntry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            hash: None,
            target: None,
            chunks: Vec::new(),
        }
    }

    pub(crate) fn file(path: &str, content: &[u8]) -> SnapshotEntry {
        SnapshotEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: content.len() as u64,
            hash: Some(Hash::of(content)),
            target: None,
            chunks: Vec::new(),
        }
    }

    pub(crate) fn link(path: &str, target: &str) -> SnapshotEntry {
        SnapshotEntry {
            path: path.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            hash: None,
            target: Some(target.into()),
            chunks: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_entries::{dir, file, link};
    use super::*;

    fn decode(entries: Vec<SnapshotEntry>) -> Result<Snapshot, SnapshotError> {
        let snapshot = Snapshot::new(Uuid::nil(), "w".into(), 1, "/src".into(), entries);
        Snapshot::decode(&snapshot.encode(), &SnapshotLimits::default())
    }

    /// The canonical bytes exactly as `schemas/transfer.md` words them, built apart from
    /// [`RootHasher`].
    fn canonical(entries: &[SnapshotEntry]) -> Vec<u8> {
        let mut bytes = b"aienv-snapshot-v1\0".to_vec();
        for entry in entries {
            bytes.extend_from_slice(entry.path.as_bytes());
            bytes.push(0);
            bytes.push(match entry.kind {
                EntryKind::File => b'f',
                EntryKind::Dir => b'd',
                EntryKind::Symlink => b'l',
            });
            bytes.extend_from_slice(&entry.mode.to_le_bytes());
            bytes.extend_from_slice(&entry.size.to_le_bytes());
            if let Some(hash) = entry.hash {
                bytes.extend_from_slice(&hash.0);
            }
            if let Some(target) = &entry.target {
                bytes.extend_from_slice(target.as_bytes());
                bytes.push(0);
            }
            bytes.extend_from_slice(&(entry.chunks.len() as u32).to_le_bytes());
            for chunk in &entry.chunks {
                bytes.extend_from_slice(&chunk.hash.0);
                bytes.extend_from_slice(&chunk.size.to_le_bytes());
            }
        }
        bytes
    }

    /// The root is BLAKE3 of the canonical bytes, however the hasher gathers them (it hands
    /// them on in 64 KiB pieces: thousands of entries cross that many times), and the
    /// specification's test vector holds.
    #[test]
    fn the_root_hash_is_blake3_of_the_canonical_bytes() {
        let vector = vec![
            dir("a"),
            file("a/b.txt", b"hello"),
            {
                let chunks = vec![
                    ChunkRef {
                        hash: Hash::of(b"first"),
                        size: 1024 * 1024,
                    },
                    ChunkRef {
                        hash: Hash::of(b"second"),
                        size: 1024 * 1024,
                    },
                ];
                SnapshotEntry {
                    size: 2 * 1024 * 1024,
                    hash: Some(chunk_list_hash(&chunks)),
                    chunks,
                    ..file("big", b"")
                }
            },
            link("l", "a/b.txt"),
        ];
        assert_eq!(
            root_hash(&vector).to_hex(),
            blake3::hash(&canonical(&vector)).to_hex().to_string()
        );
        assert_eq!(
            root_hash(&vector).to_hex(),
            "218bce4ef714e7b440c5bbf38633413b9a5f177c74b093b84a20b7e5ed378638"
        );
        let many: Vec<SnapshotEntry> = (0..5_000)
            .map(|i| match i % 3 {
                0 => dir(&format!("d{i:05}")),
                1 => file(&format!("f{i:05}"), &[i as u8; 7]),
                _ => link(&format!("l{i:05}"), &"t".repeat(i % 300)),
            })
            .collect();
        assert_eq!(root_hash(&many), Hash::of(&canonical(&many)));
    }

    #[test]
    fn round_trip() {
        let entries = vec![
            dir("a"),
            file("a/x", b"hello"),
            link("a/y", "/usr/bin/python3"),
            file("b", b""),
        ];
        let snapshot = decode(entries).unwrap();
        assert_eq!(snapshot.entries.len(), 4);
        assert_eq!(snapshot.file_count(), 2);
        assert_eq!(snapshot.total_bytes(), 5);
    }

    #[test]
    fn entries_are_found_by_path_in_byte_order() {
        // `b.txt` sorts between `b` and `b/c` (`.` < `/`).
        let snapshot = Snapshot::new(
            Uuid::nil(),
            "w".into(),
            1,
            "/src".into(),
            vec![
                dir("b/c"),
                file("b.txt", b"t"),
                dir("b"),
                file("b/c/d", b"d"),
            ],
        );
        for path in ["b", "b.txt", "b/c", "b/c/d"] {
            assert_eq!(snapshot.entry(path).map(|e| e.path.as_str()), Some(path));
        }
        assert_eq!(snapshot.entry("b/c/d").unwrap().kind, EntryKind::File);
        for missing in ["", "a", "b/", "b/c/e", "c"] {
            assert!(snapshot.entry(missing).is_none(), "{missing}");
        }
    }

    /// Each malicious manifest is refused with an error naming the entry and the reason.
    #[test]
    fn refuses_malicious_manifests() {
        let mut absurd = file("big", b"x");
        absurd.size = 1 << 50;
        let mut setuid = file("s", b"x");
        setuid.mode = 0o4755;
        let mut lying_chunks = file("c", b"x");
        lying_chunks.size = 2 * SMALL_FILE_MAX;
        lying_chunks.chunks = vec![ChunkRef {
            hash: Hash::of(b"x"),
            size: 1,
        }];
        let mut forged_hash = file("f", b"x");
        forged_hash.size = 2 * SMALL_FILE_MAX;
        forged_hash.chunks = vec![
            ChunkRef {
                hash: Hash::of(b"a"),
                size: SMALL_FILE_MAX as u32,
            };
            2
        ];
        let cases: Vec<(Vec<SnapshotEntry>, &str)> = vec![
            (vec![file("../etc/passwd", b"x")], "contains `..`"),
            (vec![file("/etc/passwd", b"x")], "absolute path"),
            (vec![dir("a"), file("a/../../x", b"x")], "`..`"),
            (
                vec![link("l", "/etc"), file("l/passwd", b"x")],
                "passes through the symbolic link `l`",
            ),
            (vec![file("a/b", b"x")], "parent `a` is not listed"),
            (vec![absurd], "more than the limit"),
            (vec![setuid], "setuid"),
            (vec![lying_chunks], "chunks add up"),
            (vec![forged_hash], "hash of its chunk list"),
            (vec![file("a\\b", b"x")], "backslash"),
        ];
        for (entries, expected) in cases {
            let error = decode(entries.clone()).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{entries:?}: `{error}` lacks `{expected}`"
            );
        }
        let mut snapshot = Snapshot::new(
            Uuid::nil(),
            "w".into(),
            1,
            "/".into(),
            vec![file("a", b"x")],
        );
        snapshot.entries.push(file("a", b"x"));
        snapshot.root = root_hash(&snapshot.entries);
        let error = Snapshot::decode(&snapshot.encode(), &SnapshotLimits::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("more than once"), "{error}");
        snapshot.entries.pop();
        snapshot.root = Hash::of(b"forged");
        let error = Snapshot::decode(&snapshot.encode(), &SnapshotLimits::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("root hash"), "{error}");
        assert!(Snapshot::decode(b"garbage", &SnapshotLimits::default()).is_err());
    }

    #[test]
    fn refuses_a_million_entries() {
        let entries: Vec<SnapshotEntry> = (0..1_000_000)
            .map(|i| file(&format!("f{i:07}"), b""))
            .collect();
        let error = decode(entries).unwrap_err().to_string();
        assert!(error.contains("1000000 entries"), "{error}");
    }
}
