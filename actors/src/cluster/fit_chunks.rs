//! What a fit request tells a peer of the workspace (`schemas/cluster.md`, "Fit and
//! ranking"): the bytes a clone writes, and the workspace's largest distinct chunks, so the
//! peer can count the bytes it holds already. The list is bounded whatever the workspace
//! holds: listing every chunk made a 200,000-file workspace's request about 18 MB per peer,
//! and one past 262,144 chunks could not be placed at all. The largest chunks carry most of
//! the bytes that could be spared from moving; what is left out counts as to be moved.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use crate::snapshot::{EntryKind, Hash, SnapshotEntry};

/// At most this many chunks are listed (under 6 MB of JSON: at most 91 bytes each).
pub const FIT_CHUNKS_LISTED: usize = 65_536;

/// A chunk's place in the listing order: larger first, then lower hash (byte order) first.
/// Greater keys come first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u32, Reverse<Hash>);

/// Collects the listing from a snapshot's entries, in any order, holding at most `limit`
/// chunks.
pub struct FitChunks {
    limit: usize,
    /// The best `limit` keys seen, the least on top.
    kept: BinaryHeap<Reverse<Key>>,
    members: HashSet<Hash>,
    workspace_bytes: u64,
}

impl FitChunks {
    /// An empty listing of at most `limit` chunks.
    pub fn new(limit: usize) -> FitChunks {
        FitChunks {
            limit,
            kept: BinaryHeap::new(),
            members: HashSet::new(),
            workspace_bytes: 0,
        }
    }

    /// Counts one entry of the snapshot (only files hold bytes).
    pub fn entry(&mut self, entry: &SnapshotEntry) {
        if entry.kind == EntryKind::File {
            self.workspace_bytes += entry.size;
        }
        for (_, chunk) in entry.file_chunks() {
            self.chunk(chunk.hash, chunk.size);
        }
    }

    /// A chunk already kept is not kept twice. One dropped (or never kept) cannot come back
    /// through a second copy: the least kept key only grows once `limit` are kept, and a
    /// copy has the same key.
    fn chunk(&mut self, hash: Hash, size: u32) {
        if self.limit == 0 || self.members.contains(&hash) {
            return;
        }
        let key = Key(size, Reverse(hash));
        if self.kept.len() < self.limit {
            self.kept.push(Reverse(key));
            self.members.insert(hash);
            return;
        }
        let Some(&Reverse(least)) = self.kept.peek() else {
            return;
        };
        if key > least {
            self.kept.pop();
            self.members.remove(&(least.1).0);
            self.kept.push(Reverse(key));
            self.members.insert(hash);
        }
    }

    /// The listed chunks in order (largest first, then by hash), and the bytes of every file
    /// of the workspace (a content held by several files counted for each: what a clone
    /// writes).
    pub fn finish(self) -> (Vec<(Hash, u32)>, u64) {
        let mut keys: Vec<Key> = self.kept.into_iter().map(|Reverse(key)| key).collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let listed = keys
            .into_iter()
            .map(|Key(size, Reverse(hash))| (hash, size))
            .collect();
        (listed, self.workspace_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ChunkRef;

    fn file(path: &str, chunks: &[(u8, u32)]) -> SnapshotEntry {
        let chunks: Vec<ChunkRef> = chunks
            .iter()
            .map(|&(id, size)| ChunkRef {
                hash: Hash([id; 32]),
                size,
            })
            .collect();
        let size = chunks.iter().map(|c| u64::from(c.size)).sum();
        let (hash, chunks) = if chunks.len() == 1 {
            (Some(chunks[0].hash), Vec::new())
        } else {
            (Some(Hash([0xee; 32])), chunks)
        };
        SnapshotEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            hash,
            target: None,
            chunks,
        }
    }

    /// The listing as the spec states it, from every distinct chunk at once.
    fn reference(entries: &[SnapshotEntry], limit: usize) -> Vec<(Hash, u32)> {
        let mut all: Vec<(Hash, u32)> = entries
            .iter()
            .flat_map(|e| e.file_chunks())
            .map(|(_, c)| (c.hash, c.size))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.dedup();
        all.truncate(limit);
        all
    }

    #[test]
    fn the_largest_distinct_chunks_are_listed_in_order_whatever_the_entries_order() {
        // Copies of one content, equal sizes under different hashes, a copy arriving after
        // its content was dropped from the listing, and after the listing was full.
        let entries = vec![
            file("a", &[(1, 10), (2, 500), (3, 10)]),
            file("b", &[(4, 10)]),
            file("c", &[(2, 500), (5, 70), (1, 10)]),
            file("d", &[(6, 10), (7, 1)]),
            file("e", &[(7, 1)]),
            file("f", &[(3, 10), (8, 900)]),
            file("g", &[(9, 70)]),
        ];
        let bytes: u64 = entries.iter().map(|e| e.size).sum();
        for limit in 0..=10 {
            for rotation in 0..entries.len() {
                let mut order = entries.clone();
                order.rotate_left(rotation);
                if rotation % 2 == 1 {
                    order.reverse();
                }
                let mut listing = FitChunks::new(limit);
                order.iter().for_each(|e| listing.entry(e));
                let (listed, workspace_bytes) = listing.finish();
                assert_eq!(
                    listed,
                    reference(&entries, limit),
                    "limit {limit}, order {rotation}"
                );
                assert_eq!(
                    workspace_bytes, bytes,
                    "every file's bytes, copies included"
                );
            }
        }
        let mut listing = FitChunks::new(3);
        entries.iter().for_each(|e| listing.entry(e));
        let sizes: Vec<u32> = listing.finish().0.iter().map(|(_, size)| *size).collect();
        assert_eq!(sizes, [900, 500, 70]);
    }

    /// `schemas/cluster.md`'s vectors for the listing, read from its text.
    #[test]
    fn the_specs_vectors_hold() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/cluster.md");
        let spec = std::fs::read_to_string(&path).unwrap();
        let table = &spec[spec.find("Test vectors for the listing").unwrap()..];
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|line| !line.starts_with("|---"))
            .skip(1)
            .take_while(|line| line.starts_with('|'))
            .collect();
        assert_eq!(rows.len(), 3);
        let byte = |text: &str| u8::from_str_radix(text.trim(), 16).unwrap();
        let mut files = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            if i == 0 {
                files = cells[0]
                    .split('`')
                    .filter(|part| part.starts_with('['))
                    .enumerate()
                    .map(|(n, part)| {
                        let chunks: Vec<(u8, u32)> = part
                            .trim_matches(['[', ']'])
                            .split(',')
                            .map(|chunk| {
                                let (hash, size) = chunk.split_once(':').unwrap();
                                (byte(hash), size.trim().parse().unwrap())
                            })
                            .collect();
                        file(&format!("f{n}"), &chunks)
                    })
                    .collect();
            } else {
                assert_eq!(cells[0], "the same");
            }
            let limit: usize = cells[1].parse().unwrap();
            let expected: Vec<u8> = cells[2]
                .trim_matches('`')
                .split_whitespace()
                .filter(|word| *word != "(none)")
                .map(byte)
                .collect();
            let mut listing = FitChunks::new(limit);
            files.iter().for_each(|f| listing.entry(f));
            let (listed, bytes) = listing.finish();
            let listed: Vec<u8> = listed.iter().map(|(hash, _)| hash.0[0]).collect();
            assert_eq!(listed, expected, "{row}");
            assert_eq!(bytes, cells[3].parse::<u64>().unwrap(), "{row}");
        }
        assert_eq!(files.len(), 7);
    }

    #[test]
    fn a_listing_holds_no_more_than_its_limit() {
        let mut listing = FitChunks::new(100);
        let mut all = Vec::new();
        for i in 0..20_000u32 {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            all.push((Hash(hash), i % 977));
            listing.chunk(Hash(hash), i % 977);
            assert!(listing.kept.len() <= 100 && listing.members.len() <= 100);
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(100);
        assert_eq!(listing.finish().0, all);
    }
}
