//! The chunk index: which file (and where in it) holds each chunk of every workspace, and the
//! per-file hashes that let a snapshot skip files that did not change.
//!
//! - `files`: workspace id (16) ++ path → [`FileRecord`] (stamp, hash, chunks)
//! - `chunks`: chunk hash (32) ++ workspace id (16) ++ path → offset (u64 LE) ++ length (u32 LE)
//!
//! Chunks are never copied into a second store: a chunk is read from the file it lives in, and
//! re-hashed on every read, so a file changed behind the index is noticed (its record is
//! dropped and the next snapshot re-reads it) instead of being served under its old hash.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{
    ChunkRef, EntryKind, Hash, Snapshot, SnapshotEntry, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN,
    SMALL_FILE_MAX,
};

use super::error::StoreError;

/// Files changed this recently are hashed again next time: their mtime may not move on a
/// second write within the file system's timestamp granularity.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What the index remembers of one file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileRecord {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    hash: Hash,
    chunks: Vec<ChunkRef>,
    /// Stamped inside the racy window: trust the hashes, not the stamp.
    racy: bool,
}

impl FileRecord {
    fn stamp_matches(&self, metadata: &fs::Metadata) -> bool {
        !self.racy
            && self.size == metadata.len()
            && self.mtime_ns == mtime_ns(metadata)
            && self.ctime_ns == metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec()
            && self.ino == metadata.ino()
    }
}

fn mtime_ns(metadata: &fs::Metadata) -> i64 {
    metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec()
}

/// Where a chunk lives on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Workspace holding it.
    pub workspace: Uuid,
    /// File, relative to the workspace root.
    pub path: String,
    /// Offset in the file.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// What a snapshot pass did, for logs and the benchmark's profile.
#[derive(Debug, Clone, Default)]
pub struct ScanStats {
    /// Files whose stamp matched the index (not read).
    pub files_cached: u64,
    /// Files read and hashed.
    pub files_hashed: u64,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
}

/// The two sled trees. Cloning is cheap (sled trees are reference-counted).
#[derive(Clone)]
pub struct ChunkIndex {
    files: sled::Tree,
    chunks: sled::Tree,
}

impl ChunkIndex {
    /// Opens the trees in `db`.
    pub fn open(db: &sled::Db) -> Result<ChunkIndex, StoreError> {
        Ok(ChunkIndex {
            files: db.open_tree("files")?,
            chunks: db.open_tree("chunks")?,
        })
    }

    /// Takes a snapshot of the workspace at `root`, re-reading only files whose stamp changed
    /// since the last one. Sockets, devices and FIFOs are left out.
    pub fn snapshot(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
    ) -> Result<(Snapshot, ScanStats), StoreError> {
        let scan_started = SystemTime::now();
        let racy_after = scan_started
            .checked_sub(RACY_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut stats = ScanStats::default();
        let mut entries = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack = vec![String::new()];
        while let Some(relative) = stack.pop() {
            let dir = if relative.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&relative)
            };
            let children = fs::read_dir(&dir).map_err(StoreError::io("reading directory", &dir))?;
            for child in children {
                let child = child.map_err(StoreError::io("reading directory", &dir))?;
                let file_name = child.file_name();
                let Some(file_name) = file_name.to_str() else {
                    return Err(StoreError::BadRequest(format!(
                        "{}: file names must be UTF-8 to be shared",
                        child.path().display()
                    )));
                };
                let path = if relative.is_empty() {
                    file_name.to_string()
                } else {
                    format!("{relative}/{file_name}")
                };
                let full = child.path();
                let metadata =
                    fs::symlink_metadata(&full).map_err(StoreError::io("inspecting", &full))?;
                let mode = metadata.permissions().mode() & 0o777;
                let file_type = metadata.file_type();
                if file_type.is_dir() {
                    entries.push(SnapshotEntry {
                        path: path.clone(),
                        kind: EntryKind::Dir,
                        mode,
                        size: 0,
                        hash: None,
                        target: None,
                        chunks: Vec::new(),
                    });
                    stack.push(path);
                } else if file_type.is_symlink() {
                    let target =
                        fs::read_link(&full).map_err(StoreError::io("reading link", &full))?;
                    entries.push(SnapshotEntry {
                        path,
                        kind: EntryKind::Symlink,
                        mode: 0o777,
                        size: 0,
                        hash: None,
                        target: Some(target.to_string_lossy().into_owned()),
                        chunks: Vec::new(),
                    });
                } else if file_type.is_file() {
                    let key = file_key(workspace, &path);
                    let cached = self
                        .files
                        .get(&key)?
                        .and_then(|v| rmp_serde::from_slice::<FileRecord>(&v).ok())
                        .filter(|record| record.stamp_matches(&metadata));
                    let record = match cached {
                        Some(record) => {
                            stats.files_cached += 1;
                            record
                        }
                        None => {
                            let old = self.files.get(&key)?;
                            let mut record = hash_file(&full, &metadata)?;
                            record.racy = record.mtime_ns >= racy_after;
                            stats.files_hashed += 1;
                            stats.bytes_hashed += record.size;
                            self.replace(workspace, &path, old.as_deref(), Some(&record))?;
                            record
                        }
                    };
                    entries.push(SnapshotEntry {
                        path: path.clone(),
                        kind: EntryKind::File,
                        mode,
                        size: record.size,
                        hash: Some(record.hash),
                        target: None,
                        chunks: if record.size > SMALL_FILE_MAX {
                            record.chunks
                        } else {
                            Vec::new()
                        },
                    });
                    seen.insert(path);
                }
            }
        }
        // Forget files that are gone.
        for item in self.files.scan_prefix(workspace.as_bytes()) {
            let (key, value) = item?;
            let path = String::from_utf8_lossy(&key[16..]).into_owned();
            if !seen.contains(&path) {
                self.replace(workspace, &path, Some(&value), None)?;
            }
        }
        let snapshot = Snapshot::new(
            workspace,
            name.to_string(),
            revision,
            root.to_string_lossy().into_owned(),
            entries,
        );
        Ok((snapshot, stats))
    }

    /// Records the files of a snapshot just written at `root` (a finished clone), so the next
    /// snapshot there only stats them. Files whose content differs from the snapshot (a
    /// relocated script) are skipped and hashed on the next pass.
    pub fn record(
        &self,
        workspace: Uuid,
        root: &Path,
        snapshot: &Snapshot,
        skip: &HashSet<String>,
    ) -> Result<(), StoreError> {
        for entry in snapshot
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && !skip.contains(&e.path))
        {
            let full = root.join(&entry.path);
            let Ok(metadata) = fs::symlink_metadata(&full) else {
                continue;
            };
            let chunks = entry
                .file_chunks()
                .into_iter()
                .map(|(_, chunk)| chunk)
                .collect();
            let record = FileRecord {
                size: entry.size,
                mtime_ns: mtime_ns(&metadata),
                ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
                ino: metadata.ino(),
                hash: entry.hash.expect("validated files have a hash"),
                chunks,
                racy: true,
            };
            let key = file_key(workspace, &entry.path);
            let old = self.files.get(&key)?;
            self.replace(workspace, &entry.path, old.as_deref(), Some(&record))?;
        }
        Ok(())
    }

    /// Drops everything indexed for a workspace (it was deleted).
    pub fn forget(&self, workspace: Uuid) -> Result<(), StoreError> {
        for item in self.files.scan_prefix(workspace.as_bytes()) {
            let (key, value) = item?;
            let path = String::from_utf8_lossy(&key[16..]).into_owned();
            self.replace(workspace, &path, Some(&value), None)?;
        }
        Ok(())
    }

    /// Every place on this node that held `hash` when last indexed, in `workspace` only when
    /// given.
    pub fn locate(&self, hash: &Hash, workspace: Option<Uuid>) -> Vec<ChunkLocation> {
        let mut prefix = hash.0.to_vec();
        if let Some(workspace) = workspace {
            prefix.extend_from_slice(workspace.as_bytes());
        }
        self.chunks
            .scan_prefix(&prefix)
            .filter_map(Result::ok)
            .filter_map(|(key, value)| {
                if key.len() < 48 || value.len() != 12 {
                    return None;
                }
                Some(ChunkLocation {
                    workspace: Uuid::from_slice(&key[32..48]).ok()?,
                    path: String::from_utf8(key[48..].to_vec()).ok()?,
                    offset: u64::from_le_bytes(value[..8].try_into().ok()?),
                    len: u32::from_le_bytes(value[8..].try_into().ok()?),
                })
            })
            .take(8)
            .collect()
    }

    /// Reads the chunk `hash` from `location` under `root` and checks it. A mismatch drops
    /// the file's record (the file changed) and returns `None`.
    pub fn read_verified(
        &self,
        root: &Path,
        location: &ChunkLocation,
        hash: &Hash,
    ) -> Option<Vec<u8>> {
        let full = root.join(&location.path);
        let mut data = vec![0u8; location.len as usize];
        let read = fs::File::open(&full)
            .and_then(|file| file.read_exact_at(&mut data, location.offset))
            .is_ok();
        if read && Hash::of(&data) == *hash {
            return Some(data);
        }
        tracing::info!(
            path = %full.display(),
            chunk = %hash,
            "file changed since it was indexed; it is re-read on the next snapshot"
        );
        let key = file_key(location.workspace, &location.path);
        if let Ok(Some(old)) = self.files.get(&key) {
            let _ = self.replace(location.workspace, &location.path, Some(&old), None);
        }
        None
    }

    /// Replaces a file's record and its chunk keys; `None` removes both.
    fn replace(
        &self,
        workspace: Uuid,
        path: &str,
        old: Option<&[u8]>,
        new: Option<&FileRecord>,
    ) -> Result<(), StoreError> {
        let key = file_key(workspace, path);
        if let Some(old) = old.and_then(|v| rmp_serde::from_slice::<FileRecord>(v).ok()) {
            for chunk in chunk_list(&old) {
                self.chunks
                    .remove(chunk_key(&chunk.hash, workspace, path))?;
            }
        }
        let Some(new) = new else {
            self.files.remove(&key)?;
            return Ok(());
        };
        let mut offset = 0u64;
        for chunk in chunk_list(new) {
            let mut value = [0u8; 12];
            value[..8].copy_from_slice(&offset.to_le_bytes());
            value[8..].copy_from_slice(&chunk.size.to_le_bytes());
            self.chunks
                .insert(chunk_key(&chunk.hash, workspace, path), &value[..])?;
            offset += u64::from(chunk.size);
        }
        self.files.insert(
            key,
            rmp_serde::to_vec(new).expect("file records always encode"),
        )?;
        Ok(())
    }
}

/// A file's chunks as indexed (a small, non-empty file is one chunk).
fn chunk_list(record: &FileRecord) -> Vec<ChunkRef> {
    if record.size == 0 {
        Vec::new()
    } else if record.chunks.is_empty() {
        vec![ChunkRef {
            hash: record.hash,
            size: record.size as u32,
        }]
    } else {
        record.chunks.clone()
    }
}

fn file_key(workspace: Uuid, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + path.len());
    key.extend_from_slice(workspace.as_bytes());
    key.extend_from_slice(path.as_bytes());
    key
}

fn chunk_key(hash: &Hash, workspace: Uuid, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(48 + path.len());
    key.extend_from_slice(&hash.0);
    key.extend_from_slice(workspace.as_bytes());
    key.extend_from_slice(path.as_bytes());
    key
}

/// Hashes a file: whole-file BLAKE3, and content-defined chunks when it is large.
fn hash_file(path: &PathBuf, metadata: &fs::Metadata) -> Result<FileRecord, StoreError> {
    let mut file = fs::File::open(path).map_err(StoreError::io("reading", path))?;
    let mut record = FileRecord {
        size: 0,
        mtime_ns: mtime_ns(metadata),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
        ino: metadata.ino(),
        hash: Hash::default(),
        chunks: Vec::new(),
        racy: false,
    };
    if metadata.len() <= SMALL_FILE_MAX {
        let mut data = Vec::with_capacity(metadata.len() as usize);
        file.read_to_end(&mut data)
            .map_err(StoreError::io("reading", path))?;
        if data.len() as u64 > SMALL_FILE_MAX {
            return hash_file(
                path,
                &fs::metadata(path).map_err(StoreError::io("inspecting", path))?,
            );
        }
        record.size = data.len() as u64;
        record.hash = Hash::of(&data);
        return Ok(record);
    }
    let mut whole = blake3::Hasher::new();
    let chunker = fastcdc::v2020::StreamCDC::new(
        file,
        CHUNK_MIN as usize,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize,
    );
    for chunk in chunker {
        let chunk = chunk.map_err(|error| {
            StoreError::io("reading", path)(std::io::Error::other(error.to_string()))
        })?;
        whole.update(&chunk.data);
        record.chunks.push(ChunkRef {
            hash: Hash::of(&chunk.data),
            size: chunk.length as u32,
        });
        record.size += chunk.length as u64;
    }
    record.hash = Hash(*whole.finalize().as_bytes());
    if record.size <= SMALL_FILE_MAX {
        // It shrank while being read: describe it as a small file.
        record.chunks.clear();
    }
    Ok(record)
}
