//! The chunk index: which file (and where in it) holds each chunk of every workspace, and the
//! per-file hashes that let a snapshot skip files that did not change.
//!
//! - files: workspace id (16) ++ path → [`FileRecord`] (stamp, hash, chunks)
//! - chunks: chunk hash (32) ++ workspace id (16) ++ path → offset (u64 LE) ++ length (u32 LE)
//!
//! Both are [`GroupedTree`]s (sled trees `file_groups` and `chunk_groups`): sled keeps memory
//! per key beyond its cache, so a key per file made the node grow with the files it indexed.
//! The per-key trees of earlier versions (`files`, `chunks`) are dropped on open; the index is
//! rebuilt by the next snapshots (it only spares re-reading files).
//!
//! Chunks are never copied into a second store: a chunk is read from the file it lives in, and
//! re-hashed on every read, so a file changed behind the index is noticed (its record is
//! dropped and the next snapshot re-reads it) instead of being served under its old hash.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{
    chunk_list_hash, ChunkRef, EntryKind, Hash, Snapshot, SnapshotEntry, SnapshotLimits,
    SMALL_FILE_MAX,
};

use super::error::StoreError;
use super::file_chunks;
use super::grouped_tree::{Entry, GroupedTree, Near};
use super::sled_watchdog::SledWatchdog;
use super::sorted_changes::SortedChanges;
use crate::beneath::Beneath;
use crate::snapshot_receive::{KeptSnapshot, SnapshotEntries};
use crate::snapshot_writer::{SnapshotHead, SnapshotWriter, Written};
use crate::spill::{self, KeptSpill, Spill};
use crate::tree::{self, Stamp, WalkEntry};

mod amend;

pub use amend::Touched;

/// Files changed this recently before a scan are hashed again next time: a second write
/// within the file system's timestamp granularity would not move their mtime. Linux file
/// systems stamp with the kernel's coarse clock, which ticks every 1–10 ms (`CONFIG_HZ`);
/// a whole-second mtime suggests a file system with second (or two-second) granularity.
const RACY_WINDOW: Duration = Duration::from_millis(20);
const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// The memo keeps the walks of this many workspaces' snapshots, the latest: each is an open
/// file (a descriptor, and disk). A snapshot whose walk was let go is walked again after a
/// commit instead of amended.
const MAX_KEPT_WALKS: usize = 64;

/// Changed files a snapshot pass reads per window; records dropped per scan when a
/// workspace is forgotten.
const WINDOW_FILES: usize = 4096;

/// Records per group of the files tree. Records are written in path order, a batch at a
/// time, so a group is rewritten about once per batch it receives.
pub const FILE_GROUP: usize = 64;

/// Chunk keys per group of the chunks tree. Chunk hashes arrive in random order, so each new
/// key rewrites the group it falls in. Measured with the snapshot benchmark's "sled alone"
/// (200,000 to 800,000 files): groups of 4, 8 or 16 were slower than 32 (more splits, each a
/// batch) and held more memory; 64 held more at 800,000 files, for faster inserts there.
pub const CHUNK_GROUP: usize = 32;

fn is_racy(mtime_ns: i64, scan_started: SystemTime) -> bool {
    let window = if mtime_ns % 1_000_000_000 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW
    };
    mtime_ns >= nanos_since_epoch(scan_started, window)
}

/// Whether a file stamped `mtime_ns` may have been written at or after `moment`, a reading
/// of [`file_clock_now`]: the kernel stamps files with that clock (or a finer one), so a
/// write after `moment` is never stamped earlier. A file the node wrote in the same tick
/// counts too. On a file system with whole-second stamps, within two seconds.
fn stamped_since(mtime_ns: i64, moment: SystemTime) -> bool {
    let lag = if mtime_ns % 1_000_000_000 == 0 {
        RACY_WINDOW_COARSE
    } else {
        Duration::ZERO
    };
    mtime_ns >= nanos_since_epoch(moment, lag)
}

/// `moment - before` in nanoseconds since the epoch (0 before it).
fn nanos_since_epoch(moment: SystemTime, before: Duration) -> i64 {
    moment
        .checked_sub(before)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Now, by the clock the kernel stamps files with (`CLOCK_REALTIME_COARSE`). It lags the
/// precise clock by a tick, and by more on a loaded virtual machine, so stamps are compared
/// with it rather than with `SystemTime::now()`: a file written after this reading is never
/// stamped before it.
pub fn file_clock_now() -> SystemTime {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    if read != 0 || now.tv_sec < 0 || !(0..1_000_000_000).contains(&now.tv_nsec) {
        // Earlier than any stamp the precise clock could give: the safe side.
        return SystemTime::now() - RACY_WINDOW_COARSE;
    }
    SystemTime::UNIX_EPOCH + Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Which files of a snapshot just written arrived as it says, so that their records can take
/// its hashes without reading them.
#[derive(Debug, Clone)]
pub enum Arrived {
    /// These paths only (a sync's replaced files: few).
    Only(HashSet<String>),
    /// Every file but these (a clone's or an import's: all but the few rewritten on arrival),
    /// which spares a set of every path at many files.
    AllBut(HashSet<String>),
}

impl Arrived {
    /// Whether the snapshot's file `path` arrived as the snapshot says.
    pub fn contains(&self, path: &str) -> bool {
        match self {
            Arrived::Only(paths) => paths.contains(path),
            Arrived::AllBut(paths) => !paths.contains(path),
        }
    }
}

/// A file a snapshot reads: its entry (at `index` in its [`Window`]), the walk's stamp, and
/// what it replaces (boxed: none of a first snapshot's files replaces anything).
struct ToHash {
    index: usize,
    stamp: Stamp,
    replaces: Option<Box<Replaced>>,
}

/// Entries of a snapshot being taken that wait for files among them to be read: from the
/// first file to read on, so the entries still go out in order.
#[derive(Default)]
struct Window {
    entries: Vec<SnapshotEntry>,
    to_hash: Vec<ToHash>,
}

impl Window {
    /// Entries held at most, read or not (a few changed files among many unchanged ones).
    const MAX_ENTRIES: usize = 4 * WINDOW_FILES;

    /// An entry whose content is known: written out at once unless others wait before it.
    fn settled(&mut self, entry: SnapshotEntry, out: &mut SnapshotWriter) -> std::io::Result<()> {
        if self.entries.is_empty() {
            out.push(&entry)
        } else {
            self.entries.push(entry);
            Ok(())
        }
    }

    /// A file to read.
    fn reads(&mut self, entry: SnapshotEntry, mut file: ToHash) {
        file.index = self.entries.len();
        self.entries.push(entry);
        self.to_hash.push(file);
    }

    /// A file stamped `stamp`, with the record `old` its path had: settled from the record
    /// when it still describes it, else to read. Whether the record used was racy.
    fn file(
        &mut self,
        mut entry: SnapshotEntry,
        stamp: Stamp,
        old: Option<Entry>,
        out: &mut SnapshotWriter,
    ) -> std::io::Result<bool> {
        let record = old
            .as_ref()
            .and_then(|old| rmp_serde::from_slice::<FileRecord>(old.value()).ok());
        match record {
            Some(record) if record.describes(&stamp) => {
                fill(&mut entry, &record);
                self.settled(entry, out)?;
                Ok(record.racy)
            }
            record => {
                // A changed large file's old chunk list spares most of its boundary search
                // (only lists in the current format: cut by the same algorithm).
                let previous = record
                    .filter(|r| !r.chunks.is_empty() && r.hash == chunk_list_hash(&r.chunks))
                    .map(|r| r.chunks)
                    .unwrap_or_default();
                self.reads(
                    entry,
                    ToHash {
                        index: 0,
                        stamp,
                        replaces: old.map(|old| Box::new(Replaced { old, previous })),
                    },
                );
                Ok(false)
            }
        }
    }

    /// Whether to read what it holds now.
    fn full(&self) -> bool {
        self.to_hash.len() >= WINDOW_FILES || self.entries.len() >= Self::MAX_ENTRIES
    }
}

/// The record a changed file had, and its chunk list (the version it replaces, for a
/// large file).
struct Replaced {
    old: Entry,
    previous: Vec<ChunkRef>,
}

/// Fills a file's entry from its record.
fn fill(entry: &mut SnapshotEntry, record: &FileRecord) {
    entry.size = record.stamp.size;
    entry.hash = Some(record.hash);
    if record.stamp.size > SMALL_FILE_MAX {
        entry.chunks.clone_from(&record.chunks);
    }
}

/// Hashes what goes through it (a memo file as it is written).
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Index changes a pass gathers, written by [`ChunkIndex::write`] at its end, each tree's in
/// key order ([`SortedChanges`]): the chunk keys first, then the records, so a record never
/// exists without its keys.
struct IndexBatch {
    chunks: SortedChanges,
    files: SortedChanges,
}

impl IndexBatch {
    /// No changes yet; those past memory's share are set aside in `dir`.
    fn new(dir: &Path) -> IndexBatch {
        IndexBatch {
            chunks: SortedChanges::new(dir),
            files: SortedChanges::new(dir),
        }
    }

    /// Replaces the record of `path` in `workspace`, `old` as stored, by `new` (`None`:
    /// forgets it), with the chunk keys of each.
    fn replace(
        &mut self,
        workspace: Uuid,
        path: &str,
        old: Option<&Entry>,
        new: Option<&FileRecord>,
    ) -> Result<(), StoreError> {
        let old = old.and_then(|old| rmp_serde::from_slice::<FileRecord>(old.value()).ok());
        let (workspace, path) = (workspace.as_bytes(), path.as_bytes());
        for chunk in old.as_ref().map(chunk_list).unwrap_or_default() {
            self.chunks.put(&[&chunk.hash.0, workspace, path], None)?;
        }
        let mut offset = 0u64;
        for chunk in new.map(chunk_list).unwrap_or_default() {
            // A file's old and new versions may share a chunk at one path: the later put,
            // the new place, wins.
            let mut place = [0; 12];
            place[..8].copy_from_slice(&offset.to_le_bytes());
            place[8..].copy_from_slice(&chunk.size.to_le_bytes());
            self.chunks
                .put(&[&chunk.hash.0, workspace, path], Some(&place))?;
            offset += u64::from(chunk.size);
        }
        let record = new.map(|new| rmp_serde::to_vec(new).expect("file records always encode"));
        self.files.put(&[workspace, path], record.as_deref())
    }
}

/// What the index remembers of one file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileRecord {
    stamp: Stamp,
    hash: Hash,
    chunks: Vec<ChunkRef>,
    /// Stamped inside the racy window: trust the hashes, not the stamp.
    racy: bool,
}

impl FileRecord {
    /// Whether the record still describes the file now stamped `stamp`.
    fn describes(&self, stamp: &Stamp) -> bool {
        // Records of large files written before their hash became the chunk list's hash
        // are stale whatever their stamp.
        let current_format = self.chunks.is_empty() || self.hash == chunk_list_hash(&self.chunks);
        current_format && !self.racy && self.stamp == *stamp
    }
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
    /// Sockets, devices and FIFOs left out.
    pub skipped: Vec<String>,
}

/// The two sled trees, and a memo of each workspace's last walk and snapshot. Cloning is
/// cheap (sled trees are reference-counted; the memo is shared).
///
/// The memo is a cache, not state: it is only ever used when a fresh walk of the directory
/// matches it stamp for stamp, so it can never answer for content it has not seen. Its
/// snapshots are kept on disk, encoded, not in memory: held in memory, each workspace's
/// last snapshot stayed resident for the node's life (about 45 MB at 200,000 files).
#[derive(Clone)]
pub struct ChunkIndex {
    files: GroupedTree,
    chunks: GroupedTree,
    watchdog: Arc<SledWatchdog>,
    memo: Arc<Mutex<HashMap<Uuid, Memo>>>,
    memo_dir: PathBuf,
}

struct Memo {
    key: (Uuid, String, u64),
    /// When it was kept, in the order of the index's memos (the oldest let their walks go).
    kept: u64,
    /// The walk the snapshot was taken from, or amended to.
    walk: KeptWalk,
    racy: bool,
    /// The snapshot's root; the snapshot itself is in [`ChunkIndex::memo_file`].
    root: Hash,
    /// Its bytes of content and its count of files.
    totals: (u64, u64),
    /// BLAKE3 of the file's bytes as written: what is read back is checked against it.
    file_hash: Hash,
}

/// The walk a snapshot was taken from: its [`tree::WalkDigest`], which the memo answers, and
/// its entries (one per entry of the snapshot, in its order) in an unnamed file, from which
/// [`ChunkIndex::amend`] derives the walk of the tree after a commit. Held in memory, a walk
/// would cost as much as the snapshot, for every workspace.
#[derive(Clone)]
struct KeptWalk {
    digest: [u8; 32],
    /// `None` once the memo let it go ([`MAX_KEPT_WALKS`]).
    items: Option<KeptSpill>,
    /// The paths it skipped (sockets, devices, FIFOs), in order.
    skipped: Vec<String>,
}

/// A snapshot as taken: root and totals at once, entries on demand. Its entries are in a
/// file (the memo's), never held by the pass that took it.
pub struct Taken {
    /// The root hash.
    pub root: Hash,
    /// Bytes of file content ([`Snapshot::total_bytes`]).
    pub total_bytes: u64,
    /// Regular files ([`Snapshot::file_count`]).
    pub file_count: u64,
    /// What the pass did.
    pub stats: ScanStats,
    /// The memo's file, open (a later snapshot may replace or remove it by name, never
    /// what this one holds), whose bytes hash to `file_hash`.
    file: fs::File,
    file_hash: Hash,
    /// The walk it was taken from.
    walk: KeptWalk,
    /// Whether a file it holds was stamped inside the racy window.
    racy: bool,
    retake: Retake,
}

/// A snapshot's encoded bytes in a file this node wrote and checked: read it with
/// [`crate::fsio::ReadAt`] (or positioned reads), from offset 0 to `len`.
pub struct EncodedSnapshot {
    /// The file, open.
    pub file: fs::File,
    /// Its length.
    pub len: u64,
    /// The root of the snapshot it holds.
    pub root: Hash,
}

/// What taking the snapshot again needs, should the memo's file fail its check.
struct Retake {
    index: ChunkIndex,
    workspace: Uuid,
    name: String,
    revision: u64,
    root: PathBuf,
}

impl Taken {
    /// The snapshot, read from its file (blocking) and checked. A file that fails its check
    /// (changed behind the node) is dropped from the memo and the snapshot taken again, once.
    pub fn load(&self) -> Result<Arc<Snapshot>, StoreError> {
        if let Some(snapshot) = self.read() {
            return Ok(Arc::new(snapshot));
        }
        let again = self.retake()?;
        again.read().map(Arc::new).ok_or_else(|| again.unreadable())
    }

    /// The snapshot encoded as [`Snapshot::encode`] makes it: the memo's file, checked (read
    /// once, in blocks) and handed over open, never held in memory. Its root is
    /// [`Taken::root`] unless the file failed its check and the workspace changed before it
    /// was taken again.
    pub fn encoded(&self) -> Result<EncodedSnapshot, StoreError> {
        if let Some(encoded) = self.checked_file()? {
            return Ok(encoded);
        }
        let again = self.retake()?;
        again.checked_file()?.ok_or_else(|| again.unreadable())
    }

    /// The snapshot read in order from the memo's file, checked first as
    /// [`Taken::encoded`] checks it, never loaded. Its root is [`Taken::root`] unless the
    /// file failed its check and the workspace changed before it was taken again.
    pub fn entries(&self) -> Result<SnapshotEntries, StoreError> {
        if let Some(entries) = self.kept_entries()? {
            return Ok(entries);
        }
        let again = self.retake()?;
        again.kept_entries()?.ok_or_else(|| again.unreadable())
    }

    /// [`Taken::entries`] from this memo's file, `None` if it fails its check.
    fn kept_entries(&self) -> Result<Option<SnapshotEntries>, StoreError> {
        let Some(encoded) = self.checked_file()? else {
            return Ok(None);
        };
        let totals = (self.total_bytes, self.file_count);
        let kept = KeptSnapshot::open(encoded.file, totals).map_err(StoreError::io(
            "reading the kept snapshot of",
            &self.retake.root,
        ))?;
        Ok(Some(SnapshotEntries::Kept(Arc::new(kept))))
    }

    fn checked_file(&self) -> Result<Option<EncodedSnapshot>, StoreError> {
        let reading = StoreError::io("reading the kept snapshot of", &self.retake.root);
        let mut hasher = blake3::Hasher::new();
        let mut blocks =
            std::io::BufReader::with_capacity(256 * 1024, crate::fsio::ReadAt::new(&self.file));
        let len = std::io::copy(&mut blocks, &mut hasher).map_err(reading)?;
        if Hash(*hasher.finalize().as_bytes()) != self.file_hash {
            return Ok(None);
        }
        let file = self.file.try_clone().map_err(StoreError::io(
            "reading the kept snapshot of",
            &self.retake.root,
        ))?;
        Ok(Some(EncodedSnapshot {
            file,
            len,
            root: self.root,
        }))
    }

    fn read(&self) -> Option<Snapshot> {
        read_memo(
            &self.file,
            &self.file_hash,
            self.retake.workspace,
            &self.root,
        )
    }

    fn retake(&self) -> Result<Taken, StoreError> {
        let Retake {
            index,
            workspace,
            name,
            revision,
            root,
        } = &self.retake;
        tracing::warn!(%workspace, "the kept snapshot is not as it was written; taking it again");
        index.drop_memo(*workspace);
        index.take(*workspace, name, *revision, root)
    }

    fn unreadable(&self) -> StoreError {
        StoreError::Io {
            action: "reading back the snapshot just written of",
            path: self.retake.root.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its file is not as written",
            ),
        }
    }
}

/// A memo file's bytes, if they are still those written (BLAKE3 `hash`).
fn read_checked(file: &fs::File, hash: &Hash) -> Option<Vec<u8>> {
    let len = file.metadata().ok()?.len();
    let mut bytes = Vec::new();
    crate::fsio::append_exact_at(file, 0, usize::try_from(len).ok()?, &mut bytes).ok()?;
    (Hash::of(&bytes) == *hash).then_some(bytes)
}

/// The snapshot in a memo file, if its bytes are those written and it is the one with
/// `root`. This node wrote it, so it is not validated again like a received one (that
/// doubles the read: 0.1 s at 200,000 files), nor held to a receiver's limits.
fn read_memo(file: &fs::File, hash: &Hash, workspace: Uuid, root: &Hash) -> Option<Snapshot> {
    let bytes = read_checked(file, hash)?;
    let unlimited = SnapshotLimits {
        max_entries: usize::MAX,
        max_encoded_bytes: u64::MAX,
        max_decoded_bytes: u64::MAX,
        max_file_bytes: u64::MAX,
        max_total_bytes: u64::MAX,
    };
    let snapshot: Snapshot = crate::packed::from_slice(&bytes, &unlimited, "a snapshot").ok()?;
    (snapshot.workspace_id == workspace && snapshot.root == *root).then_some(snapshot)
}

impl ChunkIndex {
    /// Opens the trees in `db`; the last snapshot of each workspace is kept in `memo_dir`
    /// (emptied here: the memo is rebuilt by the first snapshot after a start).
    pub fn open(db: &sled::Db, memo_dir: &Path) -> Result<ChunkIndex, StoreError> {
        if memo_dir.exists() {
            fs::remove_dir_all(memo_dir).map_err(StoreError::io("emptying", memo_dir))?;
        }
        fs::create_dir_all(memo_dir).map_err(StoreError::io("creating directory", memo_dir))?;
        for earlier in ["files", "chunks"] {
            db.drop_tree(earlier)?;
        }
        let watchdog = SledWatchdog::start();
        Ok(ChunkIndex {
            files: GroupedTree::new(db.open_tree("file_groups")?, FILE_GROUP, watchdog.clone()),
            chunks: GroupedTree::new(db.open_tree("chunk_groups")?, CHUNK_GROUP, watchdog.clone()),
            watchdog,
            memo: Arc::default(),
            memo_dir: memo_dir.to_path_buf(),
        })
    }

    /// Marks a write to the index's database as in progress, for the watch against sled's
    /// deadlock ([`SledWatchdog`]), until the returned value is dropped.
    pub(crate) fn watch_write(&self) -> super::sled_watchdog::Writing<'_> {
        self.watchdog.writing()
    }

    /// Where the memo keeps the snapshot of `workspace` with `root`. Named by root, a file's
    /// content never changes: a reader gets the snapshot it asked for, or no file.
    fn memo_file(&self, workspace: Uuid, root: &Hash) -> PathBuf {
        self.memo_dir.join(format!("{workspace}.{}", root.to_hex()))
    }

    /// Forgets the memo of `workspace` (its file too).
    fn drop_memo(&self, workspace: Uuid) {
        self.memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&workspace);
        self.drop_memos(workspace, None);
    }

    /// Writes the snapshot `entries` holds as the memo of its workspace, and drops the one it
    /// replaces. Written to a temporary name and renamed under its root's; never flushed (the
    /// memo is emptied at start). Returns what was written, the file (open, so a snapshot
    /// taken beside this one that removes it by name takes nothing from this one) and the
    /// BLAKE3 of its bytes.
    fn keep_memo(
        &self,
        entries: SnapshotWriter,
        head: &SnapshotHead,
    ) -> std::io::Result<(Written, fs::File, Hash)> {
        let workspace = head.workspace_id;
        let temporary = self
            .memo_dir
            .join(format!(".{workspace}.{}", Uuid::new_v4().simple()));
        let kept = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary)
            .and_then(|file| {
                let mut out = HashingWriter {
                    inner: std::io::BufWriter::with_capacity(256 * 1024, &file),
                    hasher: blake3::Hasher::new(),
                };
                let written = entries.finish(head, &mut out)?;
                std::io::Write::flush(&mut out.inner)?;
                let hash = Hash(*out.hasher.finalize().as_bytes());
                drop(out);
                let path = self.memo_file(workspace, &written.root);
                fs::rename(&temporary, &path)?;
                Ok((written, file, hash, path))
            });
        match kept {
            Ok((written, file, hash, path)) => {
                self.drop_memos(workspace, Some(&path));
                Ok((written, file, hash))
            }
            Err(error) => {
                let _ = fs::remove_file(&temporary);
                Err(error)
            }
        }
    }

    /// Removes the memo files of `workspace` but `keep`.
    fn drop_memos(&self, workspace: Uuid, keep: Option<&Path>) {
        let prefix = format!("{workspace}.");
        for entry in fs::read_dir(&self.memo_dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(&prefix)
                && Some(path.as_path()) != keep
            {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Takes a snapshot of the workspace at `root`, re-reading only files whose stamp changed
    /// since the last one; when nothing changed at all (every path and stamp as in the last
    /// walk) the last snapshot is returned as it is. Sockets, devices and FIFOs are left out.
    pub fn snapshot(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
    ) -> Result<(Arc<Snapshot>, ScanStats), StoreError> {
        let taken = self.take(workspace, name, revision, root)?;
        Ok((taken.load()?, taken.stats))
    }

    /// The snapshot of `workspace` as the last pass left it, without a walk: `None` when
    /// there is none for this name and revision, it holds a file stamped inside the racy
    /// window, or its walk is no longer kept (an amend needs it). What changed since is not
    /// in it: for a caller that checks again what it relies on.
    pub fn last_taken(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
    ) -> Option<Taken> {
        let key = (workspace, name.to_string(), revision);
        self.memo_taken(
            workspace,
            name,
            revision,
            root,
            |m| m.key == key && !m.racy && m.walk.items.is_some(),
            ScanStats::default(),
        )
    }

    /// The memo of `workspace` as a [`Taken`], when `answers` says it may stand for the
    /// tree and its file is still there; `stats` says what the pass did.
    fn memo_taken(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
        answers: impl FnOnce(&Memo) -> bool,
        stats: ScanStats,
    ) -> Option<Taken> {
        let (snapshot_root, (total_bytes, file_count), file_hash, walk) = {
            let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            let cached = memo.get(&workspace).filter(|m| answers(m))?;
            (
                cached.root,
                cached.totals,
                cached.file_hash,
                cached.walk.clone(),
            )
        };
        // Opened now: a concurrent snapshot may replace the file, never what it holds.
        let file = fs::File::open(self.memo_file(workspace, &snapshot_root)).ok()?;
        Some(Taken {
            root: snapshot_root,
            total_bytes,
            file_count,
            stats,
            file,
            file_hash,
            walk,
            racy: false,
            retake: Retake {
                index: self.clone(),
                workspace,
                name: name.to_string(),
                revision,
                root: root.to_path_buf(),
            },
        })
    }

    /// [`snapshot`](Self::snapshot), with the entries left on disk until [`Taken::load`]:
    /// its root and totals are known at once, which is all a source answering "not
    /// modified", or a clone finding itself up to date, needs.
    ///
    /// The pass holds no list of the files (the index's own memory aside): the walk goes in
    /// snapshot order to a spill (in memory up to a bound, then an unnamed file) while its
    /// digest tells whether the memo answers; unless it does, the spill is kept in its file
    /// with the memo (for [`ChunkIndex::amend`]) and the merge reads it back beside the
    /// index's records; changed files are read in windows, their records gathered and written
    /// in key order at the pass's end; entries go to the memo's file as they are settled.
    pub fn take(
        &self,
        workspace: Uuid,
        name: &str,
        revision: u64,
        root: &Path,
    ) -> Result<Taken, StoreError> {
        let scan_started = file_clock_now();
        let spill_failed = StoreError::io("setting aside the walk of", root);
        let mut walk = tree::walk(root);
        let mut walked = Spill::compact(&self.memo_dir, spill::IN_MEMORY);
        let mut files_walked: u64 = 0;
        for item in walk.by_ref() {
            let item = item?;
            files_walked += u64::from(item.kind == EntryKind::File);
            if let Err(error) = walked.push(&item) {
                return Err(spill_failed(error));
            }
        }
        let (skipped, walk_digest) = walk.finish();
        let key = (workspace, name.to_string(), revision);
        let retake = Retake {
            index: self.clone(),
            workspace,
            name: name.to_string(),
            revision,
            root: root.to_path_buf(),
        };
        let answers =
            |cached: &Memo| cached.key == key && cached.walk.digest == walk_digest && !cached.racy;
        let answered = self.memo_taken(
            workspace,
            name,
            revision,
            root,
            answers,
            ScanStats {
                files_cached: files_walked,
                skipped: skipped.clone(),
                ..ScanStats::default()
            },
        );
        if let Some(taken) = answered {
            tracing::debug!(%workspace, files = files_walked, "snapshot: the memo answers the walk");
            return Ok(taken);
        }
        {
            let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            if memo.get(&workspace).is_some_and(|cached| !answers(cached)) {
                memo.remove(&workspace);
            }
        }
        let mut stats = ScanStats {
            skipped,
            ..ScanStats::default()
        };
        // In path order (paths are unique), the walk meets the index's records, which the
        // grouped tree keeps in the same order, in one merge: a sequential scan instead of a
        // lookup per file, and the records of files that are gone come out of the same pass.
        // The pass writes its own records at its end, after the scan; another writer's records
        // that land during it lie behind the scan or are met in order (it skips what it passed).
        let items = walked.keep().map_err(spill_failed)?;
        let mut walk = items.reader();
        let items = Some(items);
        let mut records = self.files.scan_prefix(workspace.as_bytes());
        let mut next_record = records.next().transpose()?;
        let mut gone = Spill::compact(&self.memo_dir, spill::IN_MEMORY);
        let mut out = SnapshotWriter::new(&self.memo_dir);
        let mut window = Window::default();
        let mut batch = IndexBatch::new(&self.memo_dir);
        let mut racy = false;
        let write_failed = |error| StoreError::io("writing the snapshot of", root)(error);
        while let Some(item) = walk
            .read_next::<WalkEntry>()
            .map_err(StoreError::io("reading back the walk of", root))?
        {
            let mut old = None;
            while let Some(record) = &next_record {
                let order = record.key()[16..].cmp(item.path.as_bytes());
                if order == std::cmp::Ordering::Greater {
                    break;
                }
                let record = next_record.take().expect("just matched");
                next_record = records.next().transpose()?;
                if order == std::cmp::Ordering::Equal {
                    old = Some(record);
                    break;
                }
                gone.push(&String::from_utf8_lossy(&record.key()[16..]))
                    .map_err(write_failed)?;
            }
            let entry = SnapshotEntry {
                path: item.path,
                kind: item.kind,
                mode: item.mode,
                size: 0,
                hash: None,
                target: item.target,
                chunks: Vec::new(),
            };
            if item.kind == EntryKind::File {
                racy |= window
                    .file(entry, item.stamp, old, &mut out)
                    .map_err(write_failed)?;
            } else {
                // Was a file, is now a directory or a link.
                if old.is_some() {
                    gone.push(&entry.path).map_err(write_failed)?;
                }
                window.settled(entry, &mut out).map_err(write_failed)?;
            }
            // Full of files to read, or of settled entries waiting behind them.
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
        while let Some(record) = next_record {
            gone.push(&String::from_utf8_lossy(&record.key()[16..]))
                .map_err(write_failed)?;
            next_record = records.next().transpose()?;
        }
        drop(records);
        stats.files_cached = files_walked - stats.files_hashed;
        self.forget_gone(workspace, root, gone, &mut batch)?;
        tracing::debug!(%workspace, ?stats, "snapshot: walked and merged");
        let walk = KeptWalk {
            digest: walk_digest,
            items,
            skipped: stats.skipped.clone(),
        };
        self.keep(out, retake, walk, racy, stats)
    }

    /// Forgets the records of the files `gone` lists (paths) and writes the rest of the
    /// pass's `batch`: the end of a pass.
    fn forget_gone(
        &self,
        workspace: Uuid,
        root: &Path,
        gone: Spill,
        batch: &mut IndexBatch,
    ) -> Result<(), StoreError> {
        let write_failed = |error| StoreError::io("writing the snapshot of", root)(error);
        let mut gone = gone.into_reader().map_err(write_failed)?;
        while let Some(path) = gone.read_next::<String>().map_err(write_failed)? {
            if let Some(old) = self.files.get(&file_key(workspace, &path))? {
                batch.replace(workspace, &path, Some(&old), None)?;
            }
        }
        self.write(batch)
    }

    /// Keeps the snapshot `out` holds as the memo of `retake`'s workspace, taken from (or
    /// amended to) `walk`, and hands it over.
    fn keep(
        &self,
        out: SnapshotWriter,
        retake: Retake,
        walk: KeptWalk,
        racy: bool,
        stats: ScanStats,
    ) -> Result<Taken, StoreError> {
        let head = SnapshotHead {
            workspace_id: retake.workspace,
            name: retake.name.clone(),
            revision: retake.revision,
            source_root: retake.root.to_string_lossy().into_owned(),
        };
        let (written, file, file_hash) = self
            .keep_memo(out, &head)
            .map_err(|error| StoreError::io("keeping the snapshot of", &self.memo_dir)(error))?;
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        let kept = memo.values().map(|m| m.kept + 1).max().unwrap_or(0);
        memo.insert(
            retake.workspace,
            Memo {
                key: (retake.workspace, retake.name.clone(), retake.revision),
                kept,
                walk: walk.clone(),
                racy,
                root: written.root,
                totals: (written.total_bytes, written.file_count),
                file_hash,
            },
        );
        let walks = memo.values().filter(|m| m.walk.items.is_some()).count();
        if walks > MAX_KEPT_WALKS {
            let oldest = memo
                .values_mut()
                .filter(|m| m.walk.items.is_some())
                .min_by_key(|m| m.kept);
            if let Some(oldest) = oldest {
                oldest.walk.items = None;
            }
        }
        drop(memo);
        Ok(Taken {
            root: written.root,
            total_bytes: written.total_bytes,
            file_count: written.file_count,
            stats,
            file,
            file_hash,
            walk,
            racy,
            retake,
        })
    }

    /// Reads the window's changed files, records them in `batch`, and writes its entries out
    /// in order; whether any was stamped inside the racy window.
    #[allow(clippy::too_many_arguments)]
    fn read_window(
        &self,
        workspace: Uuid,
        root: &Path,
        scan_started: SystemTime,
        window: &mut Window,
        batch: &mut IndexBatch,
        stats: &mut ScanStats,
        out: &mut SnapshotWriter,
    ) -> Result<bool, StoreError> {
        let mut racy = false;
        let mut hashed = hash_files(root, &window.entries, &window.to_hash)?;
        for (item, record) in window.to_hash.iter().zip(&mut hashed) {
            record.racy = is_racy(record.stamp.mtime_ns, scan_started);
            racy |= record.racy;
            stats.files_hashed += 1;
            stats.bytes_hashed += record.stamp.size;
            fill(&mut window.entries[item.index], record);
        }
        for (item, record) in window.to_hash.drain(..).zip(hashed) {
            let old = item.replaces.map(|r| r.old);
            let path = &window.entries[item.index].path;
            batch.replace(workspace, path, old.as_ref(), Some(&record))?;
        }
        for entry in window.entries.drain(..) {
            out.push(&entry)
                .map_err(StoreError::io("writing the snapshot of", root))?;
        }
        Ok(racy)
    }

    /// Records the files of a snapshot just written at `root` that `arrived` names (by a
    /// clone, sync or import), so the next snapshot there only stats them. Callers leave out
    /// files whose content differs from the snapshot (a relocated script); those are hashed on
    /// the next pass. `committed_at` ([`file_clock_now`]) is when the files were put in place: one
    /// stamped since then was touched after the commit, so its record trusts the hash, not
    /// the stamp, as does one stamped inside the racy window before now.
    pub fn record(
        &self,
        workspace: Uuid,
        root: &Path,
        snapshot: &Snapshot,
        arrived: &Arrived,
        committed_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.record_from(workspace, root, arrived, committed_at, |each| {
            snapshot.entries.iter().try_for_each(each)
        })
    }

    /// [`record`](Self::record) of the entries `entries` hands, one at a time, to the
    /// function it is given (a snapshot read from disk, never held whole).
    pub fn record_from(
        &self,
        workspace: Uuid,
        root: &Path,
        arrived: &Arrived,
        committed_at: SystemTime,
        entries: impl FnOnce(
            &mut dyn FnMut(&SnapshotEntry) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // A new workspace (a clone, an import) has no records to replace: one lookup per
        // file saved, a fifth of the time at many small files.
        let fresh = self
            .files
            .scan_prefix(workspace.as_bytes())
            .next()
            .transpose()?
            .is_none();
        let now = file_clock_now();
        let mut batch = IndexBatch::new(&self.memo_dir);
        entries(&mut |entry: &SnapshotEntry| {
            if entry.kind != EntryKind::File || !arrived.contains(&entry.path) {
                return Ok(());
            }
            let full = root.join(&entry.path);
            let Ok(metadata) = fs::symlink_metadata(&full) else {
                return Ok(());
            };
            let stamp = Stamp::of(&metadata);
            if stamp.size != entry.size {
                // Not what was written; the next snapshot hashes it.
                return Ok(());
            }
            let record = FileRecord {
                stamp,
                hash: entry.hash.expect("validated files have a hash"),
                chunks: entry.chunks.clone(),
                racy: is_racy(stamp.mtime_ns, now) || stamped_since(stamp.mtime_ns, committed_at),
            };
            let old = if fresh {
                None
            } else {
                self.files.get(&file_key(workspace, &entry.path))?
            };
            let known = old
                .as_ref()
                .and_then(|old| rmp_serde::from_slice::<FileRecord>(old.value()).ok())
                .is_some_and(|old| old.hash == record.hash && old.describes(&stamp));
            if !known {
                batch.replace(workspace, &entry.path, old.as_ref(), Some(&record))?;
            }
            Ok(())
        })?;
        self.write(&mut batch)
    }

    /// Writes `batch` (emptied): every chunk key first, then every record, so that a record
    /// never exists without its keys.
    fn write(&self, batch: &mut IndexBatch) -> Result<(), StoreError> {
        batch.chunks.apply(&self.chunks)?;
        batch.files.apply(&self.files)
    }

    /// Drops everything indexed for a workspace (it was deleted).
    pub fn forget(&self, workspace: Uuid) -> Result<(), StoreError> {
        self.drop_memo(workspace);
        loop {
            // A batch at a time, scanning again after each: what was forgotten is gone.
            let mut batch = IndexBatch::new(&self.memo_dir);
            for record in self
                .files
                .scan_prefix(workspace.as_bytes())
                .take(WINDOW_FILES)
            {
                let record = record?;
                let path = String::from_utf8_lossy(&record.key()[16..]).into_owned();
                batch.replace(workspace, &path, Some(&record), None)?;
            }
            if batch.files.is_empty() {
                return Ok(());
            }
            self.write(&mut batch)?;
        }
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
            .filter_map(|entry| {
                let (key, value) = (entry.key(), entry.value());
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

    /// Opens the file holding a chunk and says whether it is unchanged since it was indexed
    /// (same size, mtime, ctime and inode, and not stamped inside the racy window): then its
    /// chunks are what the index says without reading them twice.
    ///
    /// Opened beneath `root`: never a file outside the workspace through a link swapped in
    /// since the index was written.
    fn open_indexed(&self, root: &Path, location: &ChunkLocation) -> Option<(fs::File, bool)> {
        let beneath = Beneath::open(root).ok()?;
        self.open_indexed_in(&beneath, location, &mut Near::default())
    }

    /// [`ChunkIndex::open_indexed`] with the root already open, the record read through
    /// `near`.
    fn open_indexed_in(
        &self,
        beneath: &Beneath,
        location: &ChunkLocation,
        near: &mut Near,
    ) -> Option<(fs::File, bool)> {
        let (file, metadata) = beneath.open_file_with_metadata(&location.path).ok()?;
        let record = self
            .files
            .get_near(&file_key(location.workspace, &location.path), near)
            .ok()
            .flatten()
            .and_then(|record| rmp_serde::from_slice::<FileRecord>(record.value()).ok());
        let unchanged = record.is_some_and(|record| record.describes(&Stamp::of(&metadata)));
        Some((file, unchanged))
    }

    /// Reads the chunk `hash` from `location` under `root`. The bytes are hashed unless the
    /// file is provably unchanged since it was indexed (its stamp); a mismatch drops the
    /// file's record (the next snapshot re-reads it) and returns `None`.
    pub fn read_verified(
        &self,
        root: &Path,
        location: &ChunkLocation,
        hash: &Hash,
    ) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        self.read_verified_into(root, location, hash, &mut data)
            .then_some(data)
    }

    /// [`ChunkIndex::read_verified`], appending the chunk to `out` (a server reads it straight
    /// into the frame it sends); `false`, with `out` as it was, when it could not.
    pub fn read_verified_into(
        &self,
        root: &Path,
        location: &ChunkLocation,
        hash: &Hash,
        out: &mut Vec<u8>,
    ) -> bool {
        match Beneath::open(root) {
            Ok(beneath) => {
                self.read_verified_in(&beneath, &mut Near::default(), location, hash, out)
            }
            Err(_) => {
                self.changed(root, location, hash);
                false
            }
        }
    }

    /// A reader of `workspace`'s chunks under `root`, for one request.
    pub fn reader(&self, workspace: Uuid, root: PathBuf) -> ChunkReader {
        let beneath = Beneath::open(&root)
            .inspect_err(|error| {
                tracing::info!(root = %root.display(), %error, "the workspace's root could not be opened; its chunks are not served");
            })
            .ok();
        ChunkReader {
            index: self.clone(),
            workspace,
            beneath,
            near: Near::default(),
        }
    }

    /// [`ChunkIndex::read_verified_into`] with the root already open.
    fn read_verified_in(
        &self,
        beneath: &Beneath,
        near: &mut Near,
        location: &ChunkLocation,
        hash: &Hash,
        out: &mut Vec<u8>,
    ) -> bool {
        let start = out.len();
        if let Some((file, unchanged)) = self.open_indexed_in(beneath, location, near) {
            if crate::fsio::append_exact_at(&file, location.offset, location.len as usize, out)
                .is_ok()
                && (unchanged || Hash::of(&out[start..]) == *hash)
            {
                return true;
            }
            out.truncate(start);
        }
        self.changed(&beneath.full(""), location, hash);
        false
    }

    /// Copies the chunk at `location` into `target` at `offset` without hashing it, when the
    /// source file is unchanged since it was indexed. `false` when it could not.
    pub fn copy_unchanged(
        &self,
        root: &Path,
        location: &ChunkLocation,
        target: &fs::File,
        offset: u64,
    ) -> bool {
        let Some((file, true)) = self.open_indexed(root, location) else {
            return false;
        };
        copy_range(
            &file,
            location.offset,
            target,
            offset,
            u64::from(location.len),
        )
        .is_ok()
    }

    fn changed(&self, root: &Path, location: &ChunkLocation, hash: &Hash) {
        tracing::info!(
            path = %root.join(&location.path).display(),
            chunk = %hash,
            "file changed since it was indexed; it is re-read on the next snapshot"
        );
        let key = file_key(location.workspace, &location.path);
        if let Ok(Some(old)) = self.files.get(&key) {
            let mut forget = IndexBatch::new(&self.memo_dir);
            let forgotten = forget.replace(location.workspace, &location.path, Some(&old), None);
            let _ = forgotten.and_then(|()| self.write(&mut forget));
        }
    }
}

/// Reads one workspace's chunks for one request (a peer's batch, in the snapshot's order):
/// the root is opened once, not per chunk, and each file record is read from the record group
/// the last one came from while the files keep to it, not looked up in sled each time.
pub struct ChunkReader {
    index: ChunkIndex,
    workspace: Uuid,
    /// `None`: the root could not be opened; nothing is read.
    beneath: Option<Beneath>,
    near: Near,
}

impl ChunkReader {
    /// [`ChunkIndex::read_verified_into`] of the chunk `hash` from any place of the
    /// workspace that held it; `false`, with `out` as it was, when none does any more.
    pub fn read_into(&mut self, hash: &Hash, out: &mut Vec<u8>) -> bool {
        let Some(beneath) = &self.beneath else {
            return false;
        };
        self.index
            .locate(hash, Some(self.workspace))
            .iter()
            .any(|location| {
                self.index
                    .read_verified_in(beneath, &mut self.near, location, hash, out)
            })
    }
}

/// The chunk keys of `path` to remove (those of `old`) and to write (those of `new`), in
/// that order: a key both removes and writes is kept.
/// A file's chunks as indexed (a small, non-empty file is one chunk).
fn chunk_list(record: &FileRecord) -> Vec<ChunkRef> {
    if record.stamp.size == 0 {
        Vec::new()
    } else if record.chunks.is_empty() {
        vec![ChunkRef {
            hash: record.hash,
            size: record.stamp.size as u32,
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

/// Hashes the files `indices` of `walk` on a few threads (hashing and chunking are CPU-bound;
/// a changed multi-gigabyte shard should not wait behind one core).
fn hash_files(
    root: &Path,
    entries: &[SnapshotEntry],
    files: &[ToHash],
) -> Result<Vec<FileRecord>, StoreError> {
    // Opened beneath the root: a directory swapped for a link since the walk is an error,
    // never a file from outside the workspace hashed (and later served) under this path.
    let beneath = crate::beneath::Beneath::open(root).map_err(StoreError::io("reading", root))?;
    let hash = |file: &ToHash| {
        let relative = &entries[file.index].path;
        let path = beneath.full(relative);
        let opened = beneath
            .open_file(relative)
            .map_err(StoreError::io("reading", &path))?;
        hash_file(
            &path,
            opened,
            file.stamp,
            file.replaces.as_ref().map_or(&[][..], |r| &r.previous),
        )
    };
    if files.len() < 2 {
        return files.iter().map(hash).collect();
    }
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8)
        .min(files.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<FileRecord, StoreError>>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(at) else { break };
                *results[at].lock().unwrap_or_else(|e| e.into_inner()) = Some(hash(file));
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every file was hashed")
        })
        .collect()
}

/// Whether the regular file at `entry.path` beneath the workspace holds exactly what
/// `entry` describes (size and hash), read and hashed now whatever its stamp: the check of a
/// clone whose write-back a crash may have cut short.
pub(super) fn file_matches(
    beneath: &crate::beneath::Beneath,
    entry: &crate::snapshot::SnapshotEntry,
) -> bool {
    let Ok((file, metadata)) = beneath.open_file_with_metadata(&entry.path) else {
        return false;
    };
    if metadata.len() != entry.size {
        return false;
    }
    hash_file(&beneath.full(&entry.path), file, Stamp::of(&metadata), &[])
        .is_ok_and(|record| Some(record.hash) == entry.hash && record.stamp.size == entry.size)
}

/// Hashes `file` (at `path`, for messages): BLAKE3 of a small file's content; a large
/// file's content-defined chunks and the hash of its chunk list ([`chunk_list_hash`]).
fn hash_file(
    path: &Path,
    mut file: fs::File,
    seen: Stamp,
    previous: &[ChunkRef],
) -> Result<FileRecord, StoreError> {
    // The stamp is the walk's, with the size of what was actually read: a file that changed
    // in between gets a stamp no later walk matches, and is read again.
    let record = FileRecord {
        stamp: Stamp { size: 0, ..seen },
        hash: Hash::default(),
        chunks: Vec::new(),
        racy: false,
    };
    if seen.size > SMALL_FILE_MAX {
        return chunk_large(path, file, record, previous);
    }
    let mut data = Vec::with_capacity(seen.size as usize);
    (&mut file)
        .take(SMALL_FILE_MAX + 1)
        .read_to_end(&mut data)
        .map_err(StoreError::io("reading", path))?;
    if data.len() as u64 > SMALL_FILE_MAX {
        // It grew since the walk: cut it as a large file.
        std::io::Seek::rewind(&mut file).map_err(StoreError::io("reading", path))?;
        return chunk_large(path, file, record, previous);
    }
    Ok(FileRecord {
        stamp: Stamp {
            size: data.len() as u64,
            ..record.stamp
        },
        hash: Hash::of(&data),
        ..record
    })
}

/// Hashes and cuts a large file; `previous` is the chunk list of the version it replaces.
fn chunk_large(
    path: &Path,
    file: fs::File,
    mut record: FileRecord,
    previous: &[ChunkRef],
) -> Result<FileRecord, StoreError> {
    let cut = file_chunks::cut_file(&file, previous).map_err(StoreError::io("reading", path))?;
    tracing::debug!(path = %path.display(), chunks = cut.chunks.len(), reused = cut.reused, "large file cut");
    record.stamp.size = cut.size;
    match cut.small_hash {
        Some(hash) => record.hash = hash,
        None => {
            record.hash = chunk_list_hash(&cut.chunks);
            record.chunks = cut.chunks;
        }
    }
    Ok(record)
}

/// Copies `len` bytes between files with positioned reads and writes in 1 MiB pieces.
/// (`copy_file_range` measured slower: on tmpfs it goes through a pipe page by page, and
/// ext4 has no reflinks to offer; CDC offsets are not block-aligned for FICLONERANGE anyway.)
fn copy_range(
    source: &fs::File,
    mut from: u64,
    target: &fs::File,
    mut to: u64,
    mut len: u64,
) -> std::io::Result<()> {
    // One buffer per thread: a fresh 1 MiB allocation per chunk is a fresh mapping, faulted
    // in page by page.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < 1 << 20 {
            buffer.resize(1 << 20, 0);
        }
        while len > 0 {
            let piece = len.min(buffer.len() as u64) as usize;
            source.read_exact_at(&mut buffer[..piece], from)?;
            target.write_all_at(&buffer[..piece], to)?;
            from += piece as u64;
            to += piece as u64;
            len -= piece as u64;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/transfer.md`, the normative text.
    fn transfer_spec() -> (std::path::PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/transfer.md");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    /// The chunk boundaries as `schemas/transfer.md` states them, implemented from its text
    /// (constants and the GEAR table are read from the document).
    fn spec_chunks(data: &[u8], spec: &str) -> Vec<usize> {
        spec_cut(data, spec, "")
    }

    /// The cut of the spec with the constants named `{prefix}MIN`, `{prefix}AVG`, …
    fn spec_cut(data: &[u8], spec: &str, prefix: &str) -> Vec<usize> {
        let constant = |name: &str| -> u64 {
            let at = spec.find(&format!("`{name}` =")).unwrap() + name.len() + 4;
            let rest = spec[at..].trim_start();
            let text = match rest.strip_prefix('`') {
                Some(quoted) => &quoted[..quoted.find('`').unwrap()],
                None => {
                    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
                    &rest[..end]
                }
            };
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
                None => text.parse().unwrap(),
            }
        };
        let named = |name: &str| constant(&format!("{prefix}{name}"));
        let (min, avg, max) = (
            named("MIN") as usize,
            named("AVG") as usize,
            named("MAX") as usize,
        );
        let (mask_s, mask_l) = (named("MASK_S"), named("MASK_L"));
        let appendix = &spec[spec.find("## Appendix: `GEAR`").unwrap()..];
        let block = appendix.split("```").nth(1).unwrap();
        let gear: Vec<u64> = block
            .split_whitespace()
            .map(|v| u64::from_str_radix(v, 16).unwrap())
            .collect();
        assert_eq!(gear.len(), 256);
        let mut sizes = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let left = data.len() - start;
            let r = left.min(max);
            let c = avg.min(r);
            let b = &data[start..start + r];
            let mut size = r;
            if r > min {
                let mut h: u64 = 0;
                let mut i = min;
                while i < 2 * (r / 2) {
                    h = (h << 1).wrapping_add(gear[b[i] as usize]);
                    let mask = if i < c { mask_s } else { mask_l };
                    if h & mask == 0 {
                        size = i;
                        break;
                    }
                    i += 1;
                }
            }
            sizes.push(size);
            start += size;
        }
        sizes
    }

    /// The chunker the node uses.
    fn node_chunks(data: &[u8]) -> Vec<usize> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, data).unwrap();
        let cut = super::file_chunks::cut_file(&file, &[]).unwrap();
        if cut.chunks.is_empty() {
            // Small enough to be one piece in a snapshot: the same boundary search, in memory.
            return super::file_chunks::cut_sizes(data);
        }
        cut.chunks.iter().map(|c| c.size as usize).collect()
    }

    /// `len` pseudo-random bytes (xorshift) from `state`.
    fn random_bytes(len: usize, state: &mut u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 24) as u8
            })
            .collect()
    }

    /// Checks the code block after `marker` in `schemas/transfer.md` against `vector`, or
    /// writes it there with `AIENV_UPDATE_SCHEMAS`.
    fn check_vector(path: &Path, spec: &str, marker: &str, vector: &str, what: &str) {
        let at = spec.find(marker).unwrap() + marker.len();
        let end = at + spec[at..].find("\n```").unwrap();
        if std::env::var_os("AIENV_UPDATE_SCHEMAS").is_some() {
            let updated = format!("{}{vector}{}", &spec[..at], &spec[end..]);
            std::fs::write(path, updated).unwrap();
        } else {
            assert_eq!(
                &spec[at..end],
                vector,
                "schemas/transfer.md's {what} test vector is stale: run with AIENV_UPDATE_SCHEMAS=1"
            );
        }
    }

    #[test]
    fn chunking_is_exactly_as_specified_with_its_test_vector() {
        let (path, spec) = transfer_spec();
        let data = crate::chunk_parts::test_vector_data(10 * 1024 * 1024);
        let sizes = spec_chunks(&data, &spec);
        assert_eq!(
            sizes,
            node_chunks(&data),
            "the spec and the node cut differently"
        );
        let mut offset = 0;
        let mut chunks = Vec::new();
        let mut lines = Vec::new();
        for size in &sizes {
            let hash = Hash::of(&data[offset..offset + size]);
            lines.push(format!("{size:>8}  {}", hash.to_hex()));
            chunks.push(ChunkRef {
                hash,
                size: *size as u32,
            });
            offset += size;
        }
        lines.push(format!("file hash {}", chunk_list_hash(&chunks).to_hex()));
        let marker = "list hash is the file's `hash`:\n\n```\n";
        check_vector(&path, &spec, marker, &lines.join("\n"), "chunk");
        // Other inputs: random ones of odd and even lengths, and data without cut points.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for length in [
            1usize << 20,
            (1 << 20) + 1,
            3 * 1024 * 1024 + 7,
            9 * 1024 * 1024,
        ] {
            let random = random_bytes(length, &mut state);
            assert_eq!(
                spec_chunks(&random, &spec),
                node_chunks(&random),
                "{length}"
            );
        }
        let zeros = vec![0u8; 9 * 1024 * 1024 + 3];
        assert_eq!(spec_chunks(&zeros, &spec), node_chunks(&zeros));
    }

    /// A chunk's parts (`schemas/transfer.md`, "Part boundaries"): the spec's steps with the
    /// `PART_*` constants, against the node's cut, with the test vector.
    #[test]
    fn parts_are_cut_exactly_as_specified_with_their_test_vector() {
        let (path, spec) = transfer_spec();
        let data = crate::chunk_parts::test_vector_data(200_000);
        let node = |data: &[u8]| -> Vec<usize> {
            crate::chunk_parts::cut(data)
                .iter()
                .map(|p| p.size as usize)
                .collect()
        };
        let sizes = spec_cut(&data, &spec, "PART_");
        assert_eq!(
            sizes,
            node(&data),
            "the spec and the node cut parts differently"
        );
        let mut offset = 0;
        let mut lines = Vec::new();
        for size in &sizes {
            let hash = Hash::of(&data[offset..offset + size]);
            lines.push(format!("{size:>6}  {}", hash.to_hex()));
            offset += size;
        }
        let marker = "are cut into these parts (sizes in bytes, BLAKE3 of each):\n\n```\n";
        check_vector(&path, &spec, marker, &lines.join("\n"), "part");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for length in [4096usize, 4097, 65_537, 1 << 20, (4 << 20) - 1] {
            let random = random_bytes(length, &mut state);
            assert_eq!(spec_cut(&random, &spec, "PART_"), node(&random), "{length}");
        }
        let zeros = vec![0u8; 300_001];
        assert_eq!(spec_cut(&zeros, &spec, "PART_"), node(&zeros));
    }

    /// A file walked as large but read small (it shrank in between) is described as a small
    /// file: one chunk whose hash is its content's.
    #[test]
    fn a_file_that_shrank_is_hashed_as_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"now small").unwrap();
        let seen = Stamp {
            size: 4 * SMALL_FILE_MAX,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
        };
        let record = hash_file(&path, fs::File::open(&path).unwrap(), seen, &[]).unwrap();
        assert_eq!(record.hash, Hash::of(b"now small"));
        assert!(record.chunks.is_empty());
        assert_eq!(record.stamp.size, 9);
        assert!(!record.describes(&seen), "the next walk reads it again");
    }

    /// A directory swapped for a link out of the workspace between the walk and the read:
    /// the file under it is not hashed (and so never served) as the workspace's.
    #[test]
    fn files_are_hashed_beneath_the_root_only() {
        let temp = tempfile::tempdir().unwrap();
        let (root, outside) = (temp.path().join("ws"), temp.path().join("outside"));
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"mine").unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), b"secret").unwrap();
        let entry = SnapshotEntry {
            path: "d/f".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 4,
            hash: None,
            target: None,
            chunks: Vec::new(),
        };
        let stamp = Stamp::of(&fs::metadata(root.join("d/f")).unwrap());
        let to_hash = || {
            vec![ToHash {
                index: 0,
                stamp,
                replaces: None,
            }]
        };
        let hashed = hash_files(&root, std::slice::from_ref(&entry), &to_hash()).unwrap();
        assert_eq!(hashed[0].hash, Hash::of(b"mine"));
        fs::rename(root.join("d"), temp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        assert!(
            hash_files(&root, std::slice::from_ref(&entry), &to_hash()).is_err(),
            "a file outside the workspace was hashed as `d/f`"
        );
    }

    /// Waits until the clock the kernel stamps files with is `margin` past the stamp of
    /// `path` (that clock can stall for a while on a loaded machine, so a fixed sleep is not
    /// enough).
    pub(super) fn until_file_clock_passes(path: &Path, margin: Duration) {
        let stamped = std::fs::metadata(path).unwrap().modified().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_clock_now() <= stamped + margin {
            assert!(
                std::time::Instant::now() < deadline,
                "the file clock stands still"
            );
            std::thread::sleep(RACY_WINDOW);
        }
    }

    /// A file edited after a clone put it in place, but before the clone recorded it, is not
    /// trusted by its stamp: the next snapshot reads it and lists what it holds now. The
    /// record of an untouched file is trusted (the next snapshot only stats it), and
    /// recording again over existing records replaces them.
    #[test]
    fn a_file_edited_after_the_commit_is_read_again_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("edited"), b"as cloned").unwrap();
        std::fs::write(root.join("kept"), b"kept as is").unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let workspace = Uuid::new_v4();
        // What the clone wrote, as its snapshot lists it.
        let entry = crate::snapshot::test_entries::file;
        let cloned = Snapshot::new(
            workspace,
            "ws".into(),
            1,
            "/elsewhere".into(),
            vec![entry("edited", b"as cloned"), entry("kept", b"kept as is")],
        );
        // Stamped before the commit by the file clock (which can stall on a loaded machine),
        // so only the later edit counts as touched since.
        until_file_clock_passes(&root.join("kept"), RACY_WINDOW);
        let committed_at = file_clock_now();
        std::fs::write(root.join("edited"), b"now other").unwrap();
        // The record comes later than the racy window after the edit.
        until_file_clock_passes(&root.join("edited"), 2 * RACY_WINDOW);
        let paths = Arrived::Only(["edited".to_string(), "kept".to_string()].into());
        for _ in 0..2 {
            index
                .record(workspace, &root, &cloned, &paths, committed_at)
                .unwrap();
        }
        let (snapshot, stats) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        let hash_of = |path: &str| {
            snapshot
                .entries
                .iter()
                .find(|e| e.path == path)
                .unwrap()
                .hash
        };
        assert_eq!(hash_of("edited"), Some(Hash::of(b"now other")));
        assert_eq!(hash_of("kept"), Some(Hash::of(b"kept as is")));
        assert_eq!(
            (stats.files_cached, stats.files_hashed),
            (1, 1),
            "{stats:?}"
        );
        // The edited file's chunk is findable under its new content only.
        assert!(index.locate(&Hash::of(b"as cloned"), None).is_empty());
        assert_eq!(index.locate(&Hash::of(b"now other"), None).len(), 1);
    }

    /// An unchanged walk is answered from the memo kept on disk (not held in memory): the
    /// same snapshot, nothing read, its root and totals known before its entries are, and its
    /// encoded bytes served as they are. A damaged file is not trusted; a change or a
    /// forgotten workspace drops the memo's file; a start empties the memo.
    #[test]
    fn the_memo_answers_an_unchanged_walk_from_disk_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), "first").unwrap();
        until_file_clock_passes(&root.join("a"), 2 * RACY_WINDOW);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let memo = dir.path().join("memo");
        let index = ChunkIndex::open(&db, &memo).unwrap();
        let workspace = Uuid::new_v4();
        // What the snapshot route sends: the file's bytes, read as it reads them.
        let sent = |taken: &Taken| {
            let encoded = taken.encoded().unwrap();
            let mut bytes = Vec::new();
            crate::fsio::ReadAt::new(&encoded.file)
                .read_to_end(&mut bytes)
                .unwrap();
            assert_eq!(bytes.len() as u64, encoded.len);
            (bytes, encoded.root)
        };
        let files = |memo: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(memo)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let (first, _) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_eq!(
            files(&memo),
            [format!("{workspace}.{}", first.root.to_hex())]
        );
        // Unchanged: taken from the memo, root and totals at once, the bytes served as
        // kept, and the entries still readable after a concurrent snapshot removed the file.
        let memo_file = memo.join(format!("{workspace}.{}", first.root.to_hex()));
        let taken = index.take(workspace, "ws", 1, &root).unwrap();
        assert_eq!(
            (taken.root, taken.total_bytes, taken.file_count),
            (first.root, 5, 1)
        );
        assert_eq!((taken.stats.files_cached, taken.stats.files_hashed), (1, 0));
        assert_eq!(sent(&taken), (first.encode(), first.root));
        let kept = std::fs::read(&memo_file).unwrap();
        std::fs::remove_file(&memo_file).unwrap();
        assert_eq!(*taken.load().unwrap(), *first);
        // A memo file changed behind the node (here a valid snapshot with another name,
        // which the root does not cover) is not served: the snapshot is taken again.
        std::fs::write(
            &memo_file,
            Snapshot {
                name: "changed behind the node".into(),
                ..(*first).clone()
            }
            .encode(),
        )
        .unwrap();
        let taken = index.take(workspace, "ws", 1, &root).unwrap();
        assert_eq!(taken.stats.files_hashed, 0, "answered by the memo");
        assert_eq!(sent(&taken), (first.encode(), first.root));
        assert_eq!(*taken.load().unwrap(), *first);
        assert_eq!(
            std::fs::read(&memo_file).unwrap(),
            kept,
            "kept again as built"
        );
        // Changed: a new snapshot, whose file replaces the old one.
        std::fs::write(root.join("b"), "second").unwrap();
        let (second, stats) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_ne!(second.root, first.root);
        assert_eq!(stats.files_hashed, 1);
        assert_eq!(
            files(&memo),
            [format!("{workspace}.{}", second.root.to_hex())]
        );
        // A damaged memo file is not trusted: the walk is merged again.
        std::fs::write(
            memo.join(format!("{workspace}.{}", second.root.to_hex())),
            b"torn",
        )
        .unwrap();
        let (third, _) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_eq!(*third, *second);
        index.forget(workspace).unwrap();
        assert!(files(&memo).is_empty());
        index.snapshot(workspace, "ws", 1, &root).unwrap();
        drop(index);
        ChunkIndex::open(&db, &memo).unwrap();
        assert!(files(&memo).is_empty(), "a start empties the memo");
    }

    /// An index written by an earlier version (a sled key per record and per chunk) is
    /// dropped on open, not read as groups: the next snapshot reads every file again.
    #[test]
    fn the_per_key_trees_of_earlier_versions_are_dropped() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        for earlier in ["files", "chunks"] {
            db.open_tree(earlier)
                .unwrap()
                .insert(b"0123456789abcdefsome/path", &b"old record"[..])
                .unwrap();
        }
        let memo = tempfile::tempdir().unwrap();
        let index = ChunkIndex::open(&db, memo.path()).unwrap();
        let names: Vec<_> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
        assert!(!names.contains(&b"files".to_vec()), "{names:?}");
        assert!(!names.contains(&b"chunks".to_vec()), "{names:?}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "content").unwrap();
        let (_, stats) = index.snapshot(Uuid::new_v4(), "ws", 1, dir.path()).unwrap();
        assert_eq!(stats.files_hashed, 1);
    }

    /// The snapshot meets the index's records in one sorted merge: records of files that are
    /// gone, or that became a directory, are dropped with their chunks; files between them in
    /// byte order (`b.txt` sorts between `b` and `b/c`) keep theirs and are only statted.
    #[test]
    fn records_of_files_that_are_gone_are_dropped_in_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("b")).unwrap();
        for (path, content) in [("a", "gone soon"), ("b/c", "stays"), ("d", "becomes a dir")] {
            std::fs::write(root.join(path), content).unwrap();
        }
        // Stamped before the racy window by the file clock, so the second pass trusts the
        // stamp of what stayed.
        until_file_clock_passes(&root.join("d"), 2 * RACY_WINDOW);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let memo = tempfile::tempdir().unwrap();
        let index = ChunkIndex::open(&db, memo.path()).unwrap();
        let workspace = Uuid::new_v4();
        let (_, stats) = index.snapshot(workspace, "ws", 1, root).unwrap();
        assert_eq!(stats.files_hashed, 3);
        std::fs::remove_file(root.join("a")).unwrap();
        std::fs::remove_file(root.join("d")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/e"), "new").unwrap();
        std::fs::write(root.join("b.txt"), "new too").unwrap();
        let (snapshot, stats) = index.snapshot(workspace, "ws", 1, root).unwrap();
        let paths: Vec<&str> = snapshot.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b", "b.txt", "b/c", "d", "d/e"]);
        assert_eq!(
            (stats.files_cached, stats.files_hashed),
            (1, 2),
            "{stats:?}"
        );
        for gone in ["gone soon", "becomes a dir"] {
            assert!(
                index.locate(&Hash::of(gone.as_bytes()), None).is_empty(),
                "{gone}"
            );
        }
        for (path, content) in [("b/c", "stays"), ("b.txt", "new too"), ("d/e", "new")] {
            let found = index.locate(&Hash::of(content.as_bytes()), Some(workspace));
            assert_eq!(found.len(), 1, "{path}");
            assert_eq!(found[0].path, path);
        }
        let records: Vec<String> = index
            .files
            .scan_prefix(workspace.as_bytes())
            .map(|item| String::from_utf8(item.unwrap().key()[16..].to_vec()).unwrap())
            .collect();
        assert_eq!(records, ["b.txt", "b/c", "d/e"]);
    }

    /// Changed files are read in windows while the entries before, between and after them
    /// go out in order: more files to read than a window holds, and long runs of unchanged
    /// ones between them, give the snapshot a fresh index takes of the same tree.
    #[test]
    fn windows_of_changed_files_keep_the_snapshot_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let count = WINDOW_FILES * 2 + Window::MAX_ENTRIES + 100;
        for i in 0..count {
            let sub = root.join(format!("d{}", i % 7));
            if i < 7 {
                std::fs::create_dir_all(&sub).unwrap();
            }
            std::fs::write(sub.join(format!("f{i}")), format!("v1 {i}")).unwrap();
        }
        let last = count - 1;
        until_file_clock_passes(
            &root.join(format!("d{}/f{last}", last % 7)),
            2 * RACY_WINDOW,
        );
        let db = sled::Config::new().temporary(true).open().unwrap();
        let memo = dir.path().join("memo");
        let index = ChunkIndex::open(&db, &memo).unwrap();
        let workspace = Uuid::new_v4();
        let (_, stats) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_eq!(stats.files_hashed, count as u64);
        // The first two windows' worth changed, then a run longer than a window unchanged,
        // then a few more changed.
        let changed = |i: usize| i < 2 * WINDOW_FILES + 10 || i % 1000 == 999;
        for i in (0..count).filter(|i| changed(*i)) {
            std::fs::write(
                root.join(format!("d{}/f{i}", i % 7)),
                format!("v2 {i} longer"),
            )
            .unwrap();
        }
        let (again, stats) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        let expected = (0..count).filter(|i| changed(*i)).count() as u64;
        assert_eq!(
            (stats.files_hashed, stats.files_cached),
            (expected, count as u64 - expected)
        );
        let fresh_db = sled::Config::new().temporary(true).open().unwrap();
        let fresh = ChunkIndex::open(&fresh_db, &dir.path().join("memo2")).unwrap();
        let (whole, _) = fresh.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_eq!(again.entries.len(), count + 7);
        assert_eq!(*again, *whole);
        again.validate(&SnapshotLimits::default()).unwrap();
        // The index follows: every file's new content is found where it is.
        for i in [
            0,
            WINDOW_FILES,
            2 * WINDOW_FILES + 9,
            2 * WINDOW_FILES + 11,
            1999,
        ] {
            let content = if changed(i) {
                format!("v2 {i} longer")
            } else {
                format!("v1 {i}")
            };
            let found = index.locate(&Hash::of(content.as_bytes()), Some(workspace));
            assert_eq!(found.len(), 1, "file {i}");
            assert_eq!(found[0].path, format!("d{}/f{i}", i % 7));
            // The old content's key went with it, in whichever batch.
            if changed(i) {
                let old = format!("v1 {i}");
                assert!(index.locate(&Hash::of(old.as_bytes()), None).is_empty());
            }
        }
    }

    /// A large file that gained bytes at its start keeps most chunks, each now further on:
    /// its old key and its new one are the same key in one batch, and the new place wins.
    #[test]
    fn a_chunk_that_moved_within_its_file_is_found_where_it_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        let data = random_bytes(
            6 * crate::snapshot::CHUNK_AVG as usize,
            &mut 0x9e37_79b9_7f4a_7c15,
        );
        std::fs::write(root.join("weights.bin"), &data).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkIndex::open(&db, &dir.path().join("memo")).unwrap();
        let workspace = Uuid::new_v4();
        let (before, _) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        let mut grown = vec![7u8; 4096];
        grown.extend_from_slice(&data);
        std::fs::write(root.join("weights.bin"), &grown).unwrap();
        let (after, stats) = index.snapshot(workspace, "ws", 1, &root).unwrap();
        assert_eq!(stats.files_hashed, 1);
        let (before, after) = (&before.entries[0].chunks, &after.entries[0].chunks);
        let last = after.last().unwrap();
        assert!(before.contains(last), "the last chunk stays as it was");
        let offset: u64 = after[..after.len() - 1]
            .iter()
            .map(|c| u64::from(c.size))
            .sum();
        let found = index.locate(&last.hash, None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].offset, found[0].len), (offset, last.size));
        // A chunk only the old version had is forgotten.
        let first = &before[0];
        assert!(!after.contains(first));
        assert!(index.locate(&first.hash, None).is_empty());
    }
}
