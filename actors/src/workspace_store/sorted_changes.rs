//! Changes to a [`GroupedTree`] gathered over a whole pass, applied in key order.
//!
//! A pass over a workspace puts one chunk key per chunk, and a chunk key begins with its
//! hash: in the order the pass meets them, the keys fall all over the chunks tree. Applied a
//! bounded batch at a time, every batch rewrote most of the tree's groups; at 200,000 files,
//! batches of 4,096 files rewrote each key about 15 times (1.25 s of a clone's 2.2 s of
//! recording on a 2-core machine). Here the changes are sorted a bounded run at a time, the
//! runs are set aside in an unnamed file, and they are merged as they are applied: each group
//! is rewritten about once per pass, and memory holds one run and 4 MiB of read-ahead shared
//! by the runs set aside.
//!
//! A run on disk is its changes in key order, each as `key length (u32 LE)`, `value length
//! (u32 LE, u32::MAX: remove the key)`, the key, the value. The file is this node's own,
//! never kept: it vanishes with the pass, or with the process.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::grouped_tree::{ChangeBuffer, GroupedTree};

/// Bytes of changes held in memory: a run once full, and each write to the tree while the
/// runs are merged.
const RUN_BYTES: usize = if cfg!(test) { 4 * 1024 } else { 1024 * 1024 };

/// Bytes all runs set aside are read ahead by while they are merged, shared between them:
/// each reads ahead between [`READ_AHEAD_MIN`] and [`READ_AHEAD_MAX`]. Past 1,024 runs (1 GiB
/// of changes, about ten million files) memory grows by the minimum per run.
const READ_AHEAD: usize = if cfg!(test) { 256 } else { 4 * 1024 * 1024 };
const READ_AHEAD_MIN: usize = if cfg!(test) { 16 } else { 4 * 1024 };
const READ_AHEAD_MAX: usize = if cfg!(test) { 64 } else { 64 * 1024 };

/// A run's length field for a removal.
const REMOVE: u32 = u32::MAX;

/// Changes for one tree, gathered over a pass.
pub struct SortedChanges {
    dir: PathBuf,
    buffer: ChangeBuffer,
    /// The unnamed file holding the runs set aside, and where each lies in it.
    file: Option<fs::File>,
    runs: Vec<Range<u64>>,
}

impl SortedChanges {
    /// No changes yet; runs are set aside in an unnamed file in `dir` (created when needed).
    pub fn new(dir: &Path) -> SortedChanges {
        SortedChanges {
            dir: dir.to_path_buf(),
            buffer: ChangeBuffer::default(),
            file: None,
            runs: Vec::new(),
        }
    }

    /// Sets the key made of `key_parts` to `value`, or removes it (`None`). Of changes to one
    /// key, the last one put wins.
    pub fn put(&mut self, key_parts: &[&[u8]], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.buffer.put(key_parts, value);
        if self.buffer.size() >= RUN_BYTES {
            self.set_aside()
                .map_err(StoreError::io("setting aside index changes in", &self.dir))?;
        }
        Ok(())
    }

    /// Whether nothing was put.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.runs.is_empty()
    }

    /// Sorts what memory holds and appends it to the file as a run.
    fn set_aside(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.buffer.sort();
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile_in(&self.dir)?),
        };
        // Appended where the file's offset is, after the last run (a failed write ends the
        // pass, so no run follows a torn one).
        let start = self.runs.last().map_or(0, |run| run.end);
        let mut out = io::BufWriter::with_capacity(256 * 1024, &*file);
        let mut written = 0u64;
        for index in 0..self.buffer.len() {
            let (key, value) = self.buffer.get(index);
            let value_len = value.map_or(REMOVE, |value| value.len() as u32);
            out.write_all(&(key.len() as u32).to_le_bytes())?;
            out.write_all(&value_len.to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(value.unwrap_or_default())?;
            written += 8 + key.len() as u64 + value.map_or(0, |value| value.len() as u64);
        }
        out.flush()?;
        drop(out);
        self.runs.push(start..start + written);
        self.buffer.clear();
        Ok(())
    }

    /// Applies every change to `tree` in key order (emptied): what memory holds at once when
    /// nothing was set aside, else the runs merged, a bounded slice of the key range at a
    /// time.
    pub fn apply(&mut self, tree: &GroupedTree) -> Result<(), StoreError> {
        if self.runs.is_empty() {
            return tree.apply(&mut self.buffer);
        }
        self.set_aside()
            .map_err(StoreError::io("setting aside index changes in", &self.dir))?;
        let dir = self.dir.clone();
        let reading = |error| StoreError::io("reading back index changes in", &dir)(error);
        let file = self.file.take().expect("runs were set aside");
        let read_ahead = (READ_AHEAD / self.runs.len()).clamp(READ_AHEAD_MIN, READ_AHEAD_MAX);
        let mut runs = std::mem::take(&mut self.runs)
            .into_iter()
            .map(|range| Run::new(&file, range, read_ahead))
            .collect::<Vec<_>>();
        let mut heads = BinaryHeap::new();
        for (index, run) in runs.iter_mut().enumerate() {
            if let Some(key) = run.next_key().map_err(reading)? {
                heads.push(Head { key, run: index });
            }
        }
        let mut last: Option<Vec<u8>> = None;
        while let Some(Head { key, run }) = heads.pop() {
            // Of equal keys the latest run's comes first; the others are older changes.
            if last.as_deref() != Some(key.as_slice()) {
                self.buffer.put(&[&key], runs[run].value());
                if self.buffer.size() >= RUN_BYTES {
                    tree.apply(&mut self.buffer)?;
                }
                last = Some(key);
            }
            if let Some(key) = runs[run].next_key().map_err(reading)? {
                heads.push(Head { key, run });
            }
        }
        tree.apply(&mut self.buffer)
    }
}

/// A run's next key, for the merge: the least key first, and of equal keys the latest run's.
#[derive(PartialEq, Eq)]
struct Head {
    key: Vec<u8>,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> Ordering {
        // Reversed for the max-heap: the least key is the greatest head.
        other.key.cmp(&self.key).then(self.run.cmp(&other.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run set aside, read back in order through a small buffer.
struct Run<'f> {
    file: &'f fs::File,
    /// What is left to read of it in the file.
    left: Range<u64>,
    buffer: Vec<u8>,
    read_ahead: usize,
    /// The current change's place in `buffer`, and where the next one starts.
    value: Option<Range<usize>>,
    at: usize,
}

impl<'f> Run<'f> {
    fn new(file: &'f fs::File, range: Range<u64>, read_ahead: usize) -> Run<'f> {
        Run {
            file,
            left: range,
            buffer: Vec::new(),
            read_ahead,
            value: None,
            at: 0,
        }
    }

    /// Steps to the next change; its key, or `None` at the run's end.
    fn next_key(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.fill(8)? {
            return Ok(None);
        }
        let field = |at: usize| u32::from_le_bytes(self.buffer[at..at + 4].try_into().unwrap());
        let (key_len, value_len) = (field(self.at) as usize, field(self.at + 4));
        let stored = if value_len == REMOVE {
            0
        } else {
            value_len as usize
        };
        if !self.fill(8 + key_len + stored)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a run of index changes ends inside a change",
            ));
        }
        let key_start = self.at + 8;
        let value_start = key_start + key_len;
        let key = self.buffer[key_start..value_start].to_vec();
        self.value = (value_len != REMOVE).then(|| value_start..value_start + stored);
        self.at = value_start + stored;
        Ok(Some(key))
    }

    /// The current change's value (`None`: a removal).
    fn value(&self) -> Option<&[u8]> {
        self.value.clone().map(|range| &self.buffer[range])
    }

    /// Makes `len` bytes from the current place readable in `buffer`, reading on from the
    /// file; `false` when the run ends first.
    fn fill(&mut self, len: usize) -> io::Result<bool> {
        let held = self.buffer.len() - self.at;
        if held >= len {
            return Ok(true);
        }
        let wanted = (len - held).max(self.read_ahead) as u64;
        let more = wanted.min(self.left.end - self.left.start) as usize;
        if held + more < len {
            return Ok(false);
        }
        self.buffer.drain(..self.at);
        self.at = 0;
        let start = self.buffer.len();
        self.buffer.resize(start + more, 0);
        self.file
            .read_exact_at(&mut self.buffer[start..], self.left.start)?;
        self.left.start += more as u64;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace_store::SledWatchdog;
    use std::collections::BTreeMap;

    fn tree() -> GroupedTree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        GroupedTree::new(db.open_tree("t").unwrap(), 8, SledWatchdog::start())
    }

    fn contents(tree: &GroupedTree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.range_from(b"")
            .map(|e| e.map(|e| (e.key().to_vec(), e.value().to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Random changes over many runs (keys put again in later runs, removals of keys an
    /// earlier pass wrote, values far past the read-ahead) read back as a plain ordered map
    /// applied in the order they were put.
    #[test]
    fn a_pass_over_many_runs_is_applied_as_put() {
        let mut next = crate::test_random(0x51_7cc1_b727_220a);
        for pass_size in [0, 1, 50, 3_000] {
            let dir = tempfile::tempdir().unwrap();
            let tree = tree();
            let mut model = BTreeMap::new();
            for round in 0..3u8 {
                let mut changes = SortedChanges::new(dir.path());
                for _ in 0..pass_size {
                    let key = format!("{:05}", next() % 2_000).into_bytes();
                    let value = (!next().is_multiple_of(4)).then(|| {
                        let len = if next().is_multiple_of(100) {
                            300
                        } else {
                            next() % 20
                        };
                        vec![round; len as usize]
                    });
                    let (head, tail) = key.split_at(2);
                    changes.put(&[head, tail], value.as_deref()).unwrap();
                    match value {
                        Some(value) => model.insert(key, value),
                        None => model.remove(&key),
                    };
                }
                assert_eq!(changes.is_empty(), pass_size == 0);
                if pass_size >= 3_000 {
                    assert!(changes.runs.len() > 5, "{} runs", changes.runs.len());
                }
                changes.apply(&tree).unwrap();
                assert!(changes.is_empty());
                assert_eq!(contents(&tree), model, "pass of {pass_size}, round {round}");
            }
        }
    }

    /// A run cut short is an error naming the directory, not a panic or a silent loss.
    #[test]
    fn a_damaged_run_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut changes = SortedChanges::new(dir.path());
        for i in 0..2_000u32 {
            changes.put(&[&i.to_be_bytes()], Some(b"value")).unwrap();
        }
        changes.set_aside().unwrap();
        assert!(changes.runs.len() > 1);
        changes.file.as_ref().unwrap().set_len(100).unwrap();
        let error = changes.apply(&tree()).unwrap_err().to_string();
        assert!(error.contains("reading back index changes in"), "{error}");
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
    }
}
