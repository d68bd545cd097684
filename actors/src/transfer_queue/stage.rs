//! The blocking half of a job: laying out the staging area, writing verified chunks where
//! they belong, checking the result against the snapshot, relocating embedded paths.
//!
//! A clone is built as a full tree in `<job>/tree`, renamed into place by the store; its
//! entries are read from the received snapshot on disk, a window of chunk places at a time
//! (ARCHITECTURE, "A clone is received, staged and checked a window at a time"). A sync
//! stages only the new file versions in `<job>/stage` (named `f<entry index>`) plus a
//! [`SyncPlan`] of removals, directories and links that the store applies. Every chunk
//! written is appended to `<job>/done.log`, so a resumed job fetches only what is missing;
//! the final verification re-reads every written file, which also catches a torn write
//! after a crash.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::snapshot::{ChunkRef, EntryKind, Hash, RootHasher, SnapshotEntry};
use crate::snapshot_receive::{join, EntryReader, KeptSnapshot, SnapshotEntries};
use crate::workspace_store::{ChunkStore, SyncPlan};

use super::error::TransferError;
use super::job::TransferKind;

/// Chunks written in earlier windows that are remembered, so a later file with the same
/// content copies it from the staged tree instead of fetching it again (about 2 MB).
const RECENT_CHUNKS: usize = 16_384;

/// Chunks still to fetch and what is already in place.
#[derive(Debug, Default)]
pub struct Work {
    /// Chunks to fetch first (a sync's all; a clone's first window), in snapshot order,
    /// with their sizes.
    pub needed: Vec<(Hash, u32)>,
    /// Content bytes already in place (unchanged, or written before a restart).
    pub bytes_present: u64,
    /// Content bytes that must be written (fetched or copied locally).
    pub bytes_to_write: u64,
}

/// A chunk an earlier attempt wrote: re-read and checked by [`Stage::verify`], since a
/// crash may have torn it.
struct Resumed {
    index: usize,
    path: PathBuf,
    offset: u64,
    chunk: ChunkRef,
}

/// The entries a staging area works from.
enum Entries {
    /// A sync's or push's target, read in order where every entry is needed (relocation);
    /// only the files it writes are held, in index order.
    Staged {
        snapshot: SnapshotEntries,
        files: Vec<StagedFile>,
    },
    /// A clone's received snapshot, on disk: the staging reads it a window at a time.
    Received {
        snapshot: Arc<KeptSnapshot>,
        /// Where the next window starts: the reader and the index of its next entry.
        cursor: Box<Mutex<(EntryReader, usize)>>,
        /// The entries whose chunks are being placed, by index (sorted).
        window: RwLock<Vec<(usize, SnapshotEntry)>>,
        /// Chunk places per window ([`super::TransferConfig::plan_window`]): what the
        /// staging holds does not grow with the workspace.
        places: usize,
    },
}

/// A file a sync or push writes: its entry in the target, and what the workspace had at its
/// path (a file's older version, from which changed chunks may be rebuilt).
struct StagedFile {
    index: usize,
    entry: SnapshotEntry,
    previous: Option<SnapshotEntry>,
}

impl Entries {
    /// The snapshot itself, to read in order.
    fn snapshot(&self) -> SnapshotEntries {
        match self {
            Entries::Staged { snapshot, .. } => snapshot.clone(),
            Entries::Received { snapshot, .. } => SnapshotEntries::Kept(snapshot.clone()),
        }
    }
}

/// Chunks written in earlier windows, where (the first place), oldest forgotten first.
#[derive(Default)]
struct Recent {
    places: HashMap<Hash, (PathBuf, u64)>,
    order: VecDeque<Hash>,
}

/// A job's staging area.
pub struct Stage {
    kind: TransferKind,
    entries: Entries,
    dir: PathBuf,
    dests: Mutex<HashMap<Hash, Vec<(usize, u64)>>>,
    done_log: Mutex<fs::File>,
    source_root: Vec<u8>,
    /// Searches chunks for `source_root`: built once, not for every chunk written.
    source_root_finder: memchr::memmem::Finder<'static>,
    embeds_source_root: Mutex<HashSet<usize>>,
    /// For a sync, the plan the store applies.
    plan: Mutex<SyncPlan>,
    /// Chunk writes still missing per entry of the current window; an entry leaves when
    /// complete.
    incomplete: Mutex<HashMap<usize, u32>>,
    /// Files with chunks still to write, in every window.
    pending_files: AtomicU64,
    /// Done-log entries not yet appended.
    log_buffer: Mutex<Vec<u8>>,
    /// Mode bits the process umask lets through at creation.
    umask_allows: u32,
    /// Chunks that an earlier attempt wrote.
    resumed: Vec<Resumed>,
    /// Their places (entry, offset): a clone's windows leave them out.
    resumed_places: HashSet<(usize, u64)>,
    /// A clone's chunks written in earlier windows.
    recent: Mutex<Recent>,
}

impl Stage {
    /// Lays out a clone's tree in `job_dir/tree` (directories, links, empty and
    /// preallocated files), reading the received snapshot once, and plans its first window
    /// of chunks; chunks `done.log` says arrived before are kept.
    pub fn prepare_clone(
        snapshot: Arc<KeptSnapshot>,
        job_dir: &Path,
        places: usize,
    ) -> Result<(Stage, Work), TransferError> {
        let tree = job_dir.join("tree");
        fs::create_dir_all(&tree).map_err(TransferError::io("creating", &tree))?;
        let done = read_done_log(job_dir);
        let mut work = Work::default();
        let mut resumed = Vec::new();
        let mut pending = 0;
        let reading = |e| TransferError::io("reading the received snapshot in", job_dir)(e);
        let mut reader = snapshot.entries().map_err(reading)?;
        let mut index = 0;
        while let Some(entry) = reader.next_entry().map_err(reading)? {
            let full = tree.join(&entry.path);
            match entry.kind {
                EntryKind::Dir => create_dir(&full)?,
                EntryKind::Symlink => create_link(&entry, &full)?,
                EntryKind::File => {
                    let needed = add_file(index, &entry, &full, &done, &mut work, &mut resumed)?;
                    pending += u64::from(!needed.is_empty());
                }
            }
            index += 1;
        }
        let cursor = snapshot.entries().map_err(reading)?;
        let stage = Stage::new(
            TransferKind::Clone,
            Entries::Received {
                snapshot,
                cursor: Box::new(Mutex::new((cursor, 0))),
                window: RwLock::new(Vec::new()),
                places,
            },
            tree,
            HashMap::new(),
            job_dir,
            SyncPlan::default(),
            resumed,
        )?;
        stage.pending_files.store(pending, Ordering::Relaxed);
        work.needed = stage.next_window()?.unwrap_or_default();
        Ok((stage, work))
    }

    /// Compares a workspace (`local`, its current snapshot) with its target (a clone's with
    /// the source's newer snapshot) and stages what differs in `job_dir/stage`, reading both
    /// side by side: what it holds grows with the difference, not with the workspace. Files
    /// the clone relocated are unchanged as long as the source's version is the one they
    /// were made from.
    pub fn prepare_sync(
        snapshot: SnapshotEntries,
        local: &SnapshotEntries,
        relocated: &BTreeMap<String, Hash>,
        job_dir: &Path,
    ) -> Result<(Stage, Work), TransferError> {
        let stage_dir = job_dir.join("stage");
        fs::create_dir_all(&stage_dir).map_err(TransferError::io("creating", &stage_dir))?;
        let done = read_done_log(job_dir);
        let mut work = Work::default();
        let mut resumed = Vec::new();
        let mut dests: HashMap<Hash, Vec<(usize, u64)>> = HashMap::new();
        let mut files = Vec::new();
        let mut plan = SyncPlan {
            staging: stage_dir.clone(),
            ..SyncPlan::default()
        };
        // The topmost path of each subtree the target no longer has: in byte order a
        // directory comes before everything inside it.
        let mut removed_roots: HashSet<String> = HashSet::new();
        let mut next_index = 0;
        let reading = |e| TransferError::io("reading the snapshots to compare in", job_dir)(e);
        let cursors = (
            snapshot.cursor().map_err(reading)?,
            local.cursor().map_err(reading)?,
        );
        join(cursors.0, cursors.1, reading, |entry, local| {
            let Some(entry) = entry else {
                let path = &local.expect("a path has an entry on one side").path;
                if !crate::tree::ancestors(path).any(|a| removed_roots.contains(a)) {
                    plan.remove.push(path.clone());
                    removed_roots.insert(path.clone());
                }
                return Ok(());
            };
            let index = next_index;
            next_index += 1;
            let same_kind = local.is_some_and(|l| l.kind == entry.kind);
            if local.is_some() && !same_kind {
                plan.remove.push(entry.path.clone());
            }
            match entry.kind {
                EntryKind::Dir => {
                    if !same_kind {
                        plan.dirs.push(entry.path.clone());
                    }
                    if local.is_none_or(|l| l.mode != entry.mode) || !same_kind {
                        plan.modes.push((entry.path.clone(), entry.mode));
                    }
                }
                EntryKind::Symlink => {
                    let relocated_same = relocated.get(&entry.path)
                        == entry
                            .target
                            .as_deref()
                            .map(|t| Hash::of(t.as_bytes()))
                            .as_ref();
                    if !(same_kind
                        && (local.and_then(|l| l.target.as_ref()) == entry.target.as_ref()
                            || relocated_same))
                    {
                        plan.links
                            .push((entry.path.clone(), entry.target.clone().unwrap_or_default()));
                    }
                }
                EntryKind::File => {
                    let unchanged = same_kind
                        && (local.and_then(|l| l.hash) == entry.hash
                            || relocated.get(&entry.path) == entry.hash.as_ref());
                    if unchanged {
                        work.bytes_present += entry.size;
                        if local.is_some_and(|l| l.mode != entry.mode) {
                            plan.modes.push((entry.path.clone(), entry.mode));
                        }
                        return Ok(());
                    }
                    let name = format!("f{index}");
                    plan.files.push((name.clone(), entry.path.clone()));
                    let full = stage_dir.join(&name);
                    for (offset, chunk) in
                        add_file(index, entry, &full, &done, &mut work, &mut resumed)?
                    {
                        dests.entry(chunk.hash).or_default().push((index, offset));
                    }
                    files.push(StagedFile {
                        index,
                        entry: entry.clone(),
                        previous: local.filter(|l| same_kind && l.hash.is_some()).cloned(),
                    });
                }
            }
            Ok(())
        })?;
        plan.remove.sort_by(|a, b| b.cmp(a));
        let stage = Stage::new(
            TransferKind::Sync,
            Entries::Staged { snapshot, files },
            stage_dir,
            dests,
            job_dir,
            plan,
            resumed,
        )?;
        let pending = stage.incomplete.lock().expect("not poisoned").len() as u64;
        stage.pending_files.store(pending, Ordering::Relaxed);
        work.needed = stage.needed_in_order();
        Ok((stage, work))
    }

    /// The files a sync or push writes, in index order (a clone writes every file, in
    /// windows, and stages none this way).
    fn staged(&self) -> &[StagedFile] {
        match &self.entries {
            Entries::Staged { files, .. } => files,
            Entries::Received { .. } => &[],
        }
    }

    /// The entries of the files a sync or push writes.
    pub fn written_files(&self) -> Vec<SnapshotEntry> {
        self.staged().iter().map(|f| f.entry.clone()).collect()
    }

    /// The files a sync or push writes that the workspace holds an older version of, each
    /// with that version: where changed chunks may be rebuilt from their parts.
    pub fn changed_files(&self) -> Vec<(SnapshotEntry, SnapshotEntry)> {
        self.staged()
            .iter()
            .filter_map(|f| Some((f.entry.clone(), f.previous.clone()?)))
            .collect()
    }

    fn new(
        kind: TransferKind,
        entries: Entries,
        dir: PathBuf,
        dests: HashMap<Hash, Vec<(usize, u64)>>,
        job_dir: &Path,
        plan: SyncPlan,
        resumed: Vec<Resumed>,
    ) -> Result<Stage, TransferError> {
        let incomplete = count_places(&dests);
        let log_path = job_dir.join("done.log");
        let done_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(TransferError::io("opening", &log_path))?;
        let source_root = entries.snapshot().head().source_root.into_bytes();
        Ok(Stage {
            kind,
            source_root_finder: memchr::memmem::Finder::new(&source_root).into_owned(),
            source_root,
            entries,
            dir,
            dests: Mutex::new(dests),
            done_log: Mutex::new(done_log),
            embeds_source_root: Mutex::new(HashSet::new()),
            incomplete: Mutex::new(incomplete),
            pending_files: AtomicU64::new(0),
            log_buffer: Mutex::new(Vec::new()),
            umask_allows: !process_umask() & 0o777,
            resumed_places: resumed.iter().map(|r| (r.index, r.offset)).collect(),
            resumed,
            plan: Mutex::new(plan),
            recent: Mutex::new(Recent::default()),
        })
    }

    /// Runs `f` on entry `index`: one of the current window for a clone.
    fn with_entry<T>(&self, index: usize, f: impl FnOnce(&SnapshotEntry) -> T) -> T {
        match &self.entries {
            Entries::Staged { files, .. } => {
                let at = files
                    .binary_search_by_key(&index, |file| file.index)
                    .expect("chunks are placed only in the files staged");
                f(&files[at].entry)
            }
            Entries::Received { window, .. } => {
                let window = window.read().expect("not poisoned");
                let at = window
                    .binary_search_by_key(&index, |(i, _)| *i)
                    .expect("chunks are placed only in the current window");
                f(&window[at].1)
            }
        }
    }

    /// Runs `f` on every entry, in order (a clone's read from its received snapshot).
    fn for_each_entry(
        &self,
        mut f: impl FnMut(usize, &SnapshotEntry) -> Result<(), TransferError>,
    ) -> Result<(), TransferError> {
        let mut index = 0;
        self.entries.snapshot().for_each(
            TransferError::io("reading the received snapshot in", &self.dir),
            |entry| {
                index += 1;
                f(index - 1, entry)
            },
        )
    }

    /// Plans a clone's next window of entries: the chunks to place there, in order, those
    /// already written in this attempt included (found in the staged tree by
    /// [`Stage::copy_local`] while remembered). `None` once every entry was planned, and
    /// always for a sync (planned whole by [`Stage::prepare_sync`]).
    pub fn next_window(&self) -> Result<Option<Vec<(Hash, u32)>>, TransferError> {
        let Entries::Received {
            cursor,
            window,
            places: window_places,
            ..
        } = &self.entries
        else {
            return Ok(None);
        };
        let mut cursor = cursor.lock().expect("not poisoned");
        let (reader, next) = &mut *cursor;
        let reading = |e| TransferError::io("reading the received snapshot in", &self.dir)(e);
        let mut entries = Vec::new();
        let mut places = 0;
        while places < *window_places {
            let Some(entry) = reader.next_entry().map_err(reading)? else {
                break;
            };
            let index = *next;
            *next += 1;
            if entry.kind != EntryKind::File || entry.size == 0 {
                continue;
            }
            places += entry.chunks.len().max(1);
            entries.push((index, entry));
        }
        if entries.is_empty() {
            *window.write().expect("not poisoned") = Vec::new();
            return Ok(None);
        }
        let mut dests: HashMap<Hash, Vec<(usize, u64)>> = HashMap::new();
        let mut needed = Vec::new();
        for (index, entry) in &entries {
            for (offset, chunk) in entry.file_chunks() {
                if self.resumed_places.contains(&(*index, offset)) {
                    continue;
                }
                let places = dests.entry(chunk.hash).or_default();
                if places.is_empty() {
                    needed.push((chunk.hash, chunk.size));
                }
                places.push((*index, offset));
            }
        }
        // The entries first: a place is never looked up outside the window.
        let done = std::mem::replace(&mut *window.write().expect("not poisoned"), entries);
        self.remember(&done);
        *self.incomplete.lock().expect("not poisoned") = count_places(&dests);
        let mut current = self.dests.lock().expect("not poisoned");
        debug_assert!(
            current.is_empty(),
            "a window starts once the last one is placed"
        );
        *current = dests;
        Ok(Some(needed))
    }

    /// Remembers where a finished window's chunks are in the staged tree (once per window,
    /// not on the write path), forgetting the oldest past [`RECENT_CHUNKS`].
    fn remember(&self, window: &[(usize, SnapshotEntry)]) {
        let mut recent = self.recent.lock().expect("not poisoned");
        for (_, entry) in window {
            for (offset, chunk) in entry.file_chunks() {
                if recent.places.contains_key(&chunk.hash) {
                    continue;
                }
                if recent.order.len() == RECENT_CHUNKS {
                    let oldest = recent.order.pop_front().expect("full");
                    recent.places.remove(&oldest);
                }
                recent
                    .places
                    .insert(chunk.hash, (self.dir.join(&entry.path), offset));
                recent.order.push_back(chunk.hash);
            }
        }
    }

    fn needed_in_order(&self) -> Vec<(Hash, u32)> {
        let dests = self.dests.lock().expect("not poisoned");
        let mut seen = HashSet::new();
        let mut needed = Vec::new();
        for file in self.staged() {
            for (_, chunk) in file.entry.file_chunks() {
                if dests.contains_key(&chunk.hash) && seen.insert(chunk.hash) {
                    needed.push((chunk.hash, chunk.size));
                }
            }
        }
        needed
    }

    /// Files of the snapshot not yet complete.
    pub fn files_incomplete(&self) -> u64 {
        self.pending_files.load(Ordering::Relaxed)
    }

    /// Copies every needed chunk this node already has (in any workspace) into place;
    /// returns the chunks still to fetch and the bytes copied. Chunks of large files are
    /// copied unhashed from files unchanged since they were indexed; small files are read and
    /// verified (they may need relocation, which looks at their bytes).
    pub fn copy_local(
        &self,
        needed: Vec<(Hash, u32)>,
        chunks: &ChunkStore,
    ) -> Result<(Vec<(Hash, u32)>, u64), TransferError> {
        // Copying is bound by memory and disk bandwidth, not by one core: two workers, each
        // taking a whole file at a time. Two writers in one file contend for its inode lock
        // (measured: a fifth of the copy's time spinning on it, with the 400 MB of two
        // shards taking 1.0 to 1.7 s on tmpfs).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        {
            let dests = self.dests.lock().expect("not poisoned");
            let mut by_file: HashMap<usize, usize> = HashMap::new();
            for (at, (hash, _)) in needed.iter().enumerate() {
                let file = dests
                    .get(hash)
                    .and_then(|places| places.first())
                    .map_or(usize::MAX, |(index, _)| *index);
                let group = *by_file.entry(file).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[group].push(at);
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let found: Vec<Mutex<Option<Result<u64, TransferError>>>> =
            needed.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| 'groups: loop {
                    let group = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(members) = groups.get(group) else {
                        break 'groups;
                    };
                    for &at in members {
                    let (hash, size) = &needed[at];
                    let result = match self.copy_trusted(hash, *size, chunks) {
                        Ok(Some(bytes)) => Ok(bytes),
                        Ok(None) => match self.read_staged(hash, *size).or_else(|| chunks.find_local(hash)) {
                            Some(data) => {
                                tracing::debug!(chunk = %hash, "local chunk read and verified (its file is not known unchanged)");
                                self.write_chunk(hash, &data)
                            }
                            None => continue,
                        },
                        Err(error) => Err(error),
                    };
                    *found[at].lock().expect("not poisoned") = Some(result);
                    }
                });
            }
        });
        let mut remaining = Vec::new();
        let mut copied = 0;
        for (item, slot) in needed.into_iter().zip(found) {
            match slot.into_inner().expect("not poisoned") {
                Some(result) => copied += result?,
                None => remaining.push(item),
            }
        }
        self.flush_log()?;
        Ok((remaining, copied))
    }

    fn copy_trusted(
        &self,
        hash: &Hash,
        size: u32,
        chunks: &ChunkStore,
    ) -> Result<Option<u64>, TransferError> {
        let places = match self.dests.lock().expect("not poisoned").get(hash) {
            Some(places)
                if places
                    .iter()
                    .all(|(index, _)| self.with_entry(*index, |e| !e.chunks.is_empty())) =>
            {
                places.clone()
            }
            _ => return Ok(None),
        };
        let mut copied = 0;
        for (index, offset) in &places {
            let path = self.file_path(*index);
            let file = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(TransferError::io("opening", &path))?;
            if !chunks.copy_local(hash, &file, *offset) {
                // Places done so far are rewritten by the fallback; nothing is lost.
                return Ok(None);
            }
            start_writeback(&file, *offset, u64::from(size));
            copied += u64::from(size);
        }
        take_place(&mut self.dests.lock().expect("not poisoned"), hash);
        self.finished(hash, &places);
        Ok(Some(copied))
    }

    /// Writes a chunk, already verified against `hash`, to every place that needs it, and
    /// logs it as done. Returns the content bytes written.
    pub fn write_chunk(&self, hash: &Hash, data: &[u8]) -> Result<u64, TransferError> {
        let Some(places) = take_place(&mut self.dests.lock().expect("not poisoned"), hash) else {
            return Ok(0);
        };
        let mut written = 0;
        for &(index, offset) in &places {
            let (size, mode) = self.with_entry(index, |e| (e.size, e.mode));
            let path = self.file_path(index);
            if offset == 0 && size == data.len() as u64 {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode)
                    .open(&path)
                    .map_err(TransferError::io("creating", &path))?;
                file.write_all(data)
                    .map_err(TransferError::io("writing", &path))?;
                start_writeback(&file, 0, data.len() as u64);
                if mode & !self.umask_allows != 0 {
                    file.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(TransferError::io("setting mode of", &path))?;
                }
            } else {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(TransferError::io("opening", &path))?;
                file.write_all_at(data, offset)
                    .map_err(TransferError::io("writing", &path))?;
                start_writeback(&file, offset, data.len() as u64);
            }
            if !self.source_root.is_empty() && self.source_root_finder.find(data).is_some() {
                self.embeds_source_root
                    .lock()
                    .expect("not poisoned")
                    .insert(index);
            }
            written += data.len() as u64;
        }
        self.finished(hash, &places);
        Ok(written)
    }

    /// Records that `hash` is in place everywhere in `places`: the file counters and the
    /// done log (buffered; [`Stage::flush_log`] writes it).
    fn finished(&self, hash: &Hash, places: &[(usize, u64)]) {
        let mut incomplete = self.incomplete.lock().expect("not poisoned");
        for (index, _) in places {
            if let Some(left) = incomplete.get_mut(index) {
                *left -= 1;
                if *left == 0 {
                    incomplete.remove(index);
                    self.pending_files.fetch_sub(1, Ordering::Relaxed);
                    if incomplete.is_empty() {
                        incomplete.shrink_to_fit();
                    }
                }
            }
        }
        drop(incomplete);
        self.log_buffer
            .lock()
            .expect("not poisoned")
            .extend_from_slice(&hash.0);
    }

    /// Appends the buffered done entries to `done.log`.
    pub fn flush_log(&self) -> Result<(), TransferError> {
        let pending = std::mem::take(&mut *self.log_buffer.lock().expect("not poisoned"));
        if pending.is_empty() {
            return Ok(());
        }
        self.done_log
            .lock()
            .expect("not poisoned")
            .write_all(&pending)
            .map_err(TransferError::io("writing", &self.dir))
    }

    fn file_path(&self, index: usize) -> PathBuf {
        match self.kind {
            TransferKind::Clone => self.with_entry(index, |e| self.dir.join(&e.path)),
            TransferKind::Sync | TransferKind::Push => self.dir.join(format!("f{index}")),
        }
    }

    /// A chunk this attempt already wrote in an earlier window, read back from the staged
    /// tree and checked.
    fn read_staged(&self, hash: &Hash, size: u32) -> Option<Vec<u8>> {
        let (path, offset) = self
            .recent
            .lock()
            .expect("not poisoned")
            .places
            .get(hash)?
            .clone();
        let mut data = vec![0; size as usize];
        let file = fs::File::open(&path).ok()?;
        file.read_exact_at(&mut data, offset).ok()?;
        (Hash::of(&data) == *hash).then_some(data)
    }

    /// Applies the final modes of a clone's files and directories (each directory after
    /// everything inside it, so a read-only directory can still be filled).
    pub fn apply_modes(&self) -> Result<(), TransferError> {
        // A clone sets every directory, and the files created before their content (empty
        // and large ones, created writable); a small file was created with its mode when its
        // one chunk was written whole ([`Stage::write_chunk`]). A sync sets only its staged
        // files (the store sets the modes of what it keeps, from the plan). Verification then
        // checks every mode against the snapshot.
        let set = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(TransferError::io("setting mode of", path))
        };
        if self.kind != TransferKind::Clone {
            for file in self.staged() {
                set(&self.file_path(file.index), file.entry.mode)?;
            }
            return Ok(());
        }
        // Directories wait on a stack until no later path can be inside them: in byte
        // order that is the first path not starting with `dir/` nor `dir` and a byte
        // below `/` (`dir-1`, `dir.txt`), which is where [`crate::tree::EntryChecker`]
        // closes them too.
        let mut open: Vec<(String, u32)> = Vec::new();
        self.for_each_entry(|_, entry| {
            while let Some((dir, mode)) = open.last() {
                if crate::tree::still_inside(dir, &entry.path) {
                    break;
                }
                set(&self.dir.join(dir), *mode)?;
                open.pop();
            }
            match entry.kind {
                EntryKind::Dir => open.push((entry.path.clone(), entry.mode)),
                EntryKind::File if !entry.chunks.is_empty() || entry.size == 0 => {
                    set(&self.dir.join(&entry.path), entry.mode)?;
                }
                EntryKind::File | EntryKind::Symlink => {}
            }
            Ok(())
        })?;
        while let Some((dir, mode)) = open.pop() {
            set(&self.dir.join(dir), mode)?;
        }
        Ok(())
    }

    /// Checks the result against the snapshot. Chunks written in this attempt were verified
    /// against their hash in memory just before the write (re-reading them would only read
    /// the page cache back); chunks an earlier attempt wrote are re-read and re-hashed, as a
    /// crash may have torn them. Every written file must have its size; for a clone the
    /// entries are rebuilt from disk (kind, mode, size, link target, and each file's content
    /// hash, which its verified chunks establish through the snapshot's chunk list) and must
    /// hash to the snapshot's root. Returns the entries whose content is wrong (their chunks
    /// are queued again).
    pub fn verify(&self, threads: usize) -> Result<Vec<usize>, TransferError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let bad = Mutex::new(HashSet::new());
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| loop {
                    let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(resumed) = self.resumed.get(at) else {
                        break;
                    };
                    let mut data = vec![0u8; resumed.chunk.size as usize];
                    let intact = fs::File::open(&resumed.path)
                        .and_then(|file| file.read_exact_at(&mut data, resumed.offset))
                        .is_ok()
                        && Hash::of(&data) == resumed.chunk.hash;
                    if !intact {
                        bad.lock().expect("not poisoned").insert(resumed.index);
                    }
                });
            }
        });
        let mut bad = bad.into_inner().expect("not poisoned");
        let size_on_disk = |path: &Path| fs::symlink_metadata(path).map(|m| m.len()).ok();
        if self.kind != TransferKind::Clone {
            // Staged files only (`f{index}`): the store puts them in place.
            for file in self.staged() {
                if size_on_disk(&self.file_path(file.index)) != Some(file.entry.size) {
                    bad.insert(file.index);
                }
            }
            let mut bad: Vec<usize> = bad.into_iter().collect();
            bad.sort_unstable();
            return Ok(bad);
        }
        // A clone: one pass over the staged tree checks the size of every written file and
        // hashes the tree as it is on disk, which must hash to the snapshot's root.
        let mut root = RootHasher::new();
        let mut differing = Vec::new();
        // Files to fetch again come first: an entry that cannot be inspected fails the clone
        // only when nothing can be fetched again.
        let mut unreadable = None;
        self.for_each_entry(|index, entry| {
            let is_written = entry.kind == EntryKind::File;
            let full = self.dir.join(&entry.path);
            let metadata = match fs::symlink_metadata(&full) {
                Ok(metadata) => metadata,
                Err(_) if is_written => {
                    bad.insert(index);
                    return Ok(());
                }
                Err(e) => {
                    unreadable.get_or_insert_with(|| TransferError::io("inspecting", &full)(e));
                    return Ok(());
                }
            };
            if is_written && metadata.len() != entry.size {
                bad.insert(index);
            }
            let (mut kind, mut mode, mut target) = (entry.kind, entry.mode, entry.target.clone());
            if let Some((found_kind, found_mode, found_target)) =
                crate::tree::describe(&metadata, || fs::read_link(&full))
                    .map_err(TransferError::io("reading link", &full))?
            {
                (kind, mode) = (found_kind, found_mode);
                if kind == EntryKind::Symlink {
                    target = found_target;
                }
            }
            let size = if kind == EntryKind::File {
                metadata.len()
            } else {
                entry.size
            };
            if (kind, mode, size, &target) != (entry.kind, entry.mode, entry.size, &entry.target)
                && differing.len() < 5
            {
                differing.push(entry.path.clone());
            }
            root.push_found(entry, kind, mode, size, target.as_deref());
            Ok(())
        })?;
        let mut bad: Vec<usize> = bad.into_iter().collect();
        bad.sort_unstable();
        if !bad.is_empty() {
            return Ok(bad);
        }
        if let Some(error) = unreadable {
            return Err(error);
        }
        let (root, expected) = (root.finish(), self.root());
        if root != expected {
            return Err(TransferError::Verification(format!(
                "the staged tree hashes to {root}, not {expected}; differing: {}",
                differing.join(", ")
            )));
        }
        Ok(bad)
    }

    /// The root hash the staged result must have.
    fn root(&self) -> Hash {
        self.entries.snapshot().root()
    }

    /// Queues the chunks of the given files (sorted) again, recreating a large file that
    /// went missing at its full size, for positioned writes. A clone's window becomes these
    /// files.
    pub fn requeue(&self, indices: &[usize]) -> Result<Vec<(Hash, u32)>, TransferError> {
        if let Entries::Received { window, .. } = &self.entries {
            let mut again = Vec::with_capacity(indices.len());
            self.for_each_entry(|index, entry| {
                if indices.binary_search(&index).is_ok() {
                    again.push((index, entry.clone()));
                }
                Ok(())
            })?;
            *window.write().expect("not poisoned") = again;
        }
        let mut dests = self.dests.lock().expect("not poisoned");
        let mut incomplete = self.incomplete.lock().expect("not poisoned");
        let mut needed = Vec::new();
        for &index in indices {
            let (chunks, size, mode) =
                self.with_entry(index, |e| (e.file_chunks(), e.size, e.mode));
            let path = self.file_path(index);
            if size > crate::snapshot::SMALL_FILE_MAX {
                if let Ok(file) = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode | 0o200)
                    .open(&path)
                {
                    let _ = file.set_len(size);
                }
            }
            if !chunks.is_empty() && !incomplete.contains_key(&index) {
                self.pending_files.fetch_add(1, Ordering::Relaxed);
            }
            for (offset, chunk) in chunks {
                *incomplete.entry(index).or_default() += 1;
                let places = dests.entry(chunk.hash).or_default();
                if places.is_empty() {
                    needed.push((chunk.hash, chunk.size));
                }
                places.push((index, offset));
            }
        }
        Ok(needed)
    }

    /// Rewrites the source's workspace path to `new_root` in text files and link targets that
    /// embed it (venv scripts, `pyvenv.cfg`, conda prefixes), and finds links to things this
    /// host lacks. Returns what was rewritten (path → the source's hash) and notes.
    pub fn relocate(&self, new_root: &Path) -> Result<Relocation, TransferError> {
        let mut relocation = Relocation::default();
        let old_root = String::from_utf8_lossy(&self.source_root).into_owned();
        let new_root_text = new_root.to_string_lossy().into_owned();
        if old_root.is_empty() || old_root == new_root_text {
            return Ok(relocation);
        }
        let embedding = self
            .embeds_source_root
            .lock()
            .expect("not poisoned")
            .clone();
        let mut plan = self.plan.lock().expect("not poisoned");
        // One pass in the snapshot's order: the files that embed the path, and every link.
        self.for_each_entry(|index, entry| {
            if entry.kind == EntryKind::File && embedding.contains(&index) {
                let path = match self.kind {
                    TransferKind::Clone => self.dir.join(&entry.path),
                    TransferKind::Sync | TransferKind::Push => self.dir.join(format!("f{index}")),
                };
                let mut content = Vec::new();
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut content))
                    .map_err(TransferError::io("reading", &path))?;
                if content.contains(&0) {
                    relocation.notes.push(format!(
                        "`{}` embeds the source's path {old_root} but is binary: left as it is",
                        entry.path
                    ));
                    return Ok(());
                }
                let text = String::from_utf8_lossy(&content).replace(&old_root, &new_root_text);
                let temp = path.with_file_name(format!(".aienv-relocate-{index}"));
                fs::write(&temp, text.as_bytes()).map_err(TransferError::io("writing", &temp))?;
                fs::set_permissions(&temp, fs::Permissions::from_mode(entry.mode))
                    .map_err(TransferError::io("setting mode of", &temp))?;
                fs::rename(&temp, &path).map_err(TransferError::io("replacing", &path))?;
                relocation
                    .relocated
                    .insert(entry.path.clone(), entry.hash.expect("files have a hash"));
                return Ok(());
            }
            if entry.kind != EntryKind::Symlink {
                return Ok(());
            }
            let target = entry.target.as_deref().unwrap_or_default();
            let mut final_target = target.to_string();
            if let Some(rest) = target.strip_prefix(&old_root) {
                if rest.is_empty() || rest.starts_with('/') {
                    final_target = format!("{new_root_text}{rest}");
                    match self.kind {
                        TransferKind::Clone => {
                            let full = self.dir.join(&entry.path);
                            fs::remove_file(&full)
                                .map_err(TransferError::io("replacing link", &full))?;
                            std::os::unix::fs::symlink(&final_target, &full)
                                .map_err(TransferError::io("creating link", &full))?;
                        }
                        TransferKind::Sync | TransferKind::Push => {
                            for link in plan.links.iter_mut().filter(|(p, _)| *p == entry.path) {
                                link.1 = final_target.clone();
                            }
                        }
                    }
                    relocation
                        .relocated
                        .insert(entry.path.clone(), Hash::of(target.as_bytes()));
                }
            }
            if final_target.starts_with('/')
                && !final_target.starts_with(&new_root_text)
                && fs::metadata(&final_target).is_err()
            {
                let owner = environment_of(&entry.path);
                relocation.needs_rebuild.push(format!(
                    "{owner}: `{}` links to {final_target}, which this host lacks",
                    entry.path
                ));
            }
            Ok(())
        })?;
        Ok(relocation)
    }

    /// The sync plan, after relocation.
    pub fn take_plan(&self) -> SyncPlan {
        std::mem::take(&mut *self.plan.lock().expect("not poisoned"))
    }

    /// The tree a clone was built in.
    pub fn tree(&self) -> &Path {
        &self.dir
    }
}

/// What [`Stage::relocate`] did.
#[derive(Debug, Default)]
pub struct Relocation {
    /// Rewritten paths → the source's hash (of the content, or of the link target).
    pub relocated: BTreeMap<String, Hash>,
    /// What must be rebuilt here, with why.
    pub needs_rebuild: Vec<String>,
    /// Other remarks.
    pub notes: Vec<String>,
}

/// The environment (or venv directory) a path belongs to, for messages.
fn environment_of(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("environments/") {
        if let Some(name) = rest.split('/').next() {
            return format!("environment `{name}`");
        }
    }
    match path.find("/bin/") {
        Some(at) => format!("the environment in `{}`", &path[..at]),
        None => format!("`{path}`"),
    }
}

/// Takes the places waiting for `hash`. Once none is left, the table's memory is let go
/// (a map keeps its capacity when emptied: at 200,000 files 15 MB, held through the commit).
fn take_place(
    dests: &mut HashMap<Hash, Vec<(usize, u64)>>,
    hash: &Hash,
) -> Option<Vec<(usize, u64)>> {
    let places = dests.remove(hash);
    if dests.is_empty() {
        dests.shrink_to_fit();
    }
    places
}

/// Creates a clone's directory (kept when a resumed job made it before).
fn create_dir(full: &Path) -> Result<(), TransferError> {
    match fs::create_dir(full) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && full.is_dir() => Ok(()),
        Err(e) => Err(TransferError::io("creating directory", full)(e)),
    }
}

/// Creates a clone's link (replacing one a resumed job made before).
fn create_link(entry: &SnapshotEntry, full: &Path) -> Result<(), TransferError> {
    let _ = fs::remove_file(full);
    std::os::unix::fs::symlink(entry.target.as_deref().unwrap_or_default(), full)
        .map_err(TransferError::io("creating link", full))
}

/// Creates a file's place (empty files now, large ones preallocated for positioned writes)
/// and counts its chunks: those an earlier attempt wrote go to `resumed`, the others are
/// returned, to be written.
fn add_file(
    index: usize,
    entry: &SnapshotEntry,
    full: &Path,
    done: &HashSet<Hash>,
    work: &mut Work,
    resumed: &mut Vec<Resumed>,
) -> Result<Vec<(u64, ChunkRef)>, TransferError> {
    // Only a resumed job (with chunks logged as done) keeps what an earlier attempt wrote.
    let exists = !done.is_empty() && full.exists();
    let mut chunks = entry.file_chunks();
    if !entry.chunks.is_empty() || entry.size == 0 {
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(entry.mode | 0o200)
            .open(full)
            .map_err(TransferError::io("creating", full))?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) != entry.size {
            file.set_len(entry.size)
                .map_err(TransferError::io("allocating", full))?;
        }
    }
    chunks.retain(|&(offset, chunk)| {
        if done.contains(&chunk.hash) && exists {
            work.bytes_present += u64::from(chunk.size);
            resumed.push(Resumed {
                index,
                path: full.to_path_buf(),
                offset,
                chunk,
            });
            false
        } else {
            work.bytes_to_write += u64::from(chunk.size);
            true
        }
    });
    Ok(chunks)
}

/// Chunk places per entry.
fn count_places(dests: &HashMap<Hash, Vec<(usize, u64)>>) -> HashMap<usize, u32> {
    let mut incomplete: HashMap<usize, u32> = HashMap::new();
    for places in dests.values() {
        for (index, _) in places {
            *incomplete.entry(*index).or_default() += 1;
        }
    }
    incomplete
}

fn read_done_log(job_dir: &Path) -> HashSet<Hash> {
    let Ok(bytes) = fs::read(job_dir.join("done.log")) else {
        return HashSet::new();
    };
    bytes
        .chunks_exact(32)
        .map(|c| Hash(c.try_into().expect("32 bytes")))
        .collect()
}

/// The process umask, read without changing it (`/proc/self/status`); 0o022 when unknown.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Starts writing a just-written range back to disk without waiting for it, so the flush
/// before the clone becomes visible (one `syncfs`) finds little left to do: the disk works
/// while the network does. A no-op on tmpfs.
fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call; the flag only initiates writeback.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::{dir, file, link};
    use crate::snapshot::Snapshot;

    fn snapshot(entries: Vec<SnapshotEntry>) -> Snapshot {
        Snapshot::new(uuid::Uuid::nil(), "w".into(), 1, "/w".into(), entries)
    }

    /// A sync's plan comes from its target and the clone's snapshot read side by side, in
    /// memory or from disk alike: a removed subtree once, at its top (though `gone.txt`
    /// sorts between `gone` and `gone/…`), kinds replaced, modes and links set, and only the
    /// files written held, each with the version it replaces.
    #[test]
    fn a_sync_is_planned_from_both_snapshots_read_side_by_side() {
        let local = snapshot(vec![
            dir("a"),
            file("a/x", b"1"),
            file("a.txt", b"1"),
            dir("a/sub"),
            file("a/sub/y", b"1"),
            dir("gone"),
            file("gone/f", b"1"),
            dir("gone/deeper"),
            file("gone/deeper/g", b"1"),
            file("gone.txt", b"1"),
            file("kind", b"1"),
            link("l", "/old"),
            file("mode", b"1"),
            file("relocated", b"rewritten here"),
            file("same", b"1"),
        ]);
        let target = snapshot(vec![
            dir("a"),
            file("a.txt", b"2"),
            dir("kind"),
            file("kind/inner", b"1"),
            link("l", "/new"),
            SnapshotEntry {
                mode: 0o600,
                ..file("mode", b"1")
            },
            file("new", b"n"),
            file("relocated", b"origin's"),
            file("same", b"1"),
        ]);
        let relocated = BTreeMap::from([(
            "relocated".to_string(),
            file("relocated", b"origin's").hash.unwrap(),
        )]);
        let scratch = tempfile::tempdir().unwrap();
        let pairs = [
            (
                SnapshotEntries::Whole(Arc::new(target.clone())),
                SnapshotEntries::Whole(Arc::new(local.clone())),
            ),
            (
                crate::snapshot_receive::kept(&target, scratch.path()),
                crate::snapshot_receive::kept(&local, scratch.path()),
            ),
        ];
        for (target, local) in pairs {
            let job = tempfile::tempdir().unwrap();
            let (stage, work) =
                Stage::prepare_sync(target, &local, &relocated, job.path()).unwrap();
            let plan = stage.take_plan();
            assert_eq!(plan.remove, ["kind", "gone.txt", "gone", "a/x", "a/sub"]);
            assert_eq!(plan.dirs, ["kind"]);
            assert_eq!(
                plan.modes,
                [("kind".to_string(), 0o755), ("mode".to_string(), 0o600)]
            );
            assert_eq!(plan.links, [("l".to_string(), "/new".to_string())]);
            let files: Vec<(&str, &str)> = plan
                .files
                .iter()
                .map(|(name, path)| (name.as_str(), path.as_str()))
                .collect();
            assert_eq!(
                files,
                [("f1", "a.txt"), ("f3", "kind/inner"), ("f6", "new")]
            );
            let written: Vec<usize> = stage.staged().iter().map(|f| f.index).collect();
            assert_eq!(written, [1, 3, 6]);
            let changed = stage.changed_files();
            assert_eq!(changed.len(), 1);
            assert_eq!(
                (&changed[0].0, &changed[0].1),
                (&file("a.txt", b"2"), &file("a.txt", b"1"))
            );
            // Unchanged and relocated files are in place; the written ones are needed.
            assert_eq!(work.bytes_present, 1 + 1 + 8);
            assert_eq!(work.needed.len(), 3);
            assert_eq!(stage.with_entry(3, |e| e.path.clone()), "kind/inner");
        }
    }
}
