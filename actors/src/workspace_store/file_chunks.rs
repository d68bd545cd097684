//! Cuts a large file into its content-defined chunks (`schemas/transfer.md`, "Chunk
//! boundaries") and hashes them — and, given the chunk list of the file's previous version,
//! skips the boundary search wherever the content proves the old cut still holds.
//!
//! A chunk that is not a file's last ends either at a boundary match or, forced, at
//! `CHUNK_MAX`. The search from offset `o` for a match reads the bytes from `o + CHUNK_MIN` up
//! to and including the first byte after the match, with masks that change at `CHUNK_AVG`
//! (earlier only where less than that remains, and then no match lies beyond what remains);
//! a forced cut means no byte before `CHUNK_MAX` matched. So where an old chunk's bytes are
//! unchanged and either it was forced at `CHUNK_MAX` or the chunk after it is unchanged too
//! (so is the byte after the match), the new cut is the old one. This holds for lists cut by
//! this same algorithm: the records this node wrote. A changed weight shard then costs one BLAKE3 pass over its unchanged chunks
//! instead of the boundary search as well (the search costs twice the hash), which is most of
//! what the source spends before a sync's snapshot can go out. The result is the same chunk
//! list a cut from scratch gives; the tests check it against that on edited files.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;

use crate::snapshot::{ChunkRef, Hash, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, SMALL_FILE_MAX};

/// What reading a file found.
#[derive(Debug)]
pub(super) struct Cut {
    /// Bytes read (the file's size while it was read).
    pub size: u64,
    /// The chunks; empty for a file of at most `SMALL_FILE_MAX` bytes.
    pub chunks: Vec<ChunkRef>,
    /// The content's hash, for a file of at most `SMALL_FILE_MAX` bytes.
    pub small_hash: Option<Hash>,
    /// Chunks whose boundaries came from the previous version, without a search.
    pub reused: usize,
}

/// Reads `file` from its start to its end and cuts it; `previous` is the chunk list of the
/// version it replaces (empty when unknown). Every chunk is hashed from what was read now.
pub(super) fn cut_file(file: &fs::File, previous: &[ChunkRef]) -> io::Result<Cut> {
    // Zeroed by the allocator (fresh pages): only what the file fills is ever touched, and
    // nothing stays behind on long-lived threads.
    let mut buffer = vec![0u8; WINDOW_SIZE];
    let mut window = Window::new(file, &mut buffer);
    cut(&mut window, previous)
}

const MAX: usize = CHUNK_MAX as usize;

/// Read size: large reads of page-cached data cost little per byte; the window must hold a
/// chunk and its successor (`2 × CHUNK_MAX`) past any offset.
const WINDOW_SIZE: usize = 4 * MAX;

fn cut(window: &mut Window<'_>, previous: &[ChunkRef]) -> io::Result<Cut> {
    // Which old chunk has a given content.
    let by_hash: HashMap<Hash, usize> = previous
        .iter()
        .enumerate()
        .map(|(index, chunk)| (chunk.hash, index))
        .collect();

    // A small file (it may have shrunk since the walk) is described by its content's hash.
    let head = window.at(0, SMALL_FILE_MAX as usize + 1)?;
    if head.len() as u64 <= SMALL_FILE_MAX {
        return Ok(Cut {
            size: head.len() as u64,
            chunks: Vec::new(),
            small_hash: Some(Hash::of(head)),
            reused: 0,
        });
    }
    let mut chunks = Vec::new();
    let mut pos = 0u64;
    // The old chunk whose content is expected at `pos`, and the last chunk-sized hash taken.
    let mut expected: Option<usize> = if previous.is_empty() { None } else { Some(0) };
    let mut known = None;
    let mut reused = 0;
    loop {
        window.release_before(pos);
        let ahead = window.at(pos, MAX + 1)?.len();
        if ahead == 0 {
            break;
        }
        if let Some(index) = expected {
            if let Some(chunk) = reuse(window, previous, index, pos, &mut known)? {
                chunks.push(chunk);
                pos += u64::from(chunk.size);
                expected = Some(index + 1);
                reused += 1;
                continue;
            }
        }
        // The boundary search, over at most `CHUNK_MAX + 1` bytes: with more than
        // `CHUNK_MAX` left, the cut does not depend on how much more.
        let data = window.at(pos, MAX + 1)?;
        let length = first_cut(data);
        let hash = match known {
            Some(Known { at, size, hash }) if at == pos && size as usize == length => hash,
            _ => Hash::of(&data[..length]),
        };
        chunks.push(ChunkRef {
            hash,
            size: length as u32,
        });
        pos += length as u64;
        // The content after a changed region usually falls back onto old chunks.
        expected = by_hash.get(&hash).map(|&index| index + 1);
    }
    Ok(Cut {
        size: pos,
        chunks,
        small_hash: None,
        reused,
    })
}

/// Old chunk `index` at `pos`, if its content is unchanged and its cut provably still holds:
/// it was forced at `CHUNK_MAX`, or the chunk after it is unchanged too (see the module's
/// doc). The old file's last chunk is never taken: its end was the file's.
fn reuse(
    window: &mut Window<'_>,
    previous: &[ChunkRef],
    index: usize,
    pos: u64,
    known: &mut Option<Known>,
) -> io::Result<Option<ChunkRef>> {
    let Some(old) = previous.get(index).copied() else {
        return Ok(None);
    };
    if index + 1 == previous.len() {
        return Ok(None);
    }
    if hash_at(window, known, pos, old.size)? != Some(old.hash) {
        return Ok(None);
    }
    if old.size as usize == MAX {
        return Ok(Some(old));
    }
    let next = previous[index + 1];
    let next_at = pos + u64::from(old.size);
    let this = *known;
    if hash_at(window, known, next_at, next.size)? != Some(next.hash) {
        // The boundary search cuts here again, most likely at the same place.
        *known = this;
        return Ok(None);
    }
    Ok(Some(old))
}

/// A hash taken of `size` bytes at `at`, kept so no chunk is hashed twice.
#[derive(Debug, Clone, Copy)]
struct Known {
    at: u64,
    size: u32,
    hash: Hash,
}

/// The hash of the `size` bytes at `at`; `None` where the file ends before them.
fn hash_at(
    window: &mut Window<'_>,
    known: &mut Option<Known>,
    at: u64,
    size: u32,
) -> io::Result<Option<Hash>> {
    if let Some(k) = *known {
        if k.at == at && k.size == size {
            return Ok(Some(k.hash));
        }
    }
    let data = window.at(at, size as usize)?;
    if data.len() < size as usize {
        return Ok(None);
    }
    let hash = Hash::of(data);
    *known = Some(Known { at, size, hash });
    Ok(Some(hash))
}

/// The length of the first chunk of `data` (all that remains of the file, or more than
/// `CHUNK_MAX` bytes of it).
fn first_cut(data: &[u8]) -> usize {
    fastcdc::v2020::FastCDC::new(
        data,
        CHUNK_MIN as usize,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize,
    )
    .next()
    .map_or(data.len(), |chunk| chunk.length)
}

/// The chunk sizes of `data`, cut in memory with [`first_cut`] (for tests of data too small
/// for a file to be cut).
#[cfg(test)]
pub(super) fn cut_sizes(mut data: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while !data.is_empty() {
        let length = first_cut(&data[..data.len().min(MAX + 1)]);
        sizes.push(length);
        data = &data[length..];
    }
    sizes
}

/// A forward-moving window over a file, read with large positioned reads.
struct Window<'a> {
    file: &'a fs::File,
    buffer: &'a mut [u8],
    /// File offset of `buffer[0]`.
    start: u64,
    /// Bytes of `buffer` holding file data.
    filled: usize,
    /// No later call asks for data before this offset.
    floor: u64,
    eof: bool,
}

impl<'a> Window<'a> {
    fn new(file: &'a fs::File, buffer: &'a mut [u8]) -> Window<'a> {
        debug_assert!(buffer.len() >= WINDOW_SIZE);
        Window {
            file,
            buffer,
            start: 0,
            filled: 0,
            floor: 0,
            eof: false,
        }
    }

    /// Data before `pos` may be dropped.
    fn release_before(&mut self, pos: u64) {
        self.floor = pos;
    }

    /// Up to `want` bytes from `pos` (fewer only at the end of the file); `pos` is at or
    /// after the floor, and `pos + want` at most `WINDOW_SIZE` past it.
    fn at(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        debug_assert!(pos >= self.floor && pos >= self.start);
        debug_assert!(pos - self.floor + want as u64 <= WINDOW_SIZE as u64);
        let buffered_end = self.start + self.filled as u64;
        if buffered_end < pos + want as u64 && !self.eof {
            // Keep what is at or after the floor, then fill the rest.
            let keep_from = ((self.floor - self.start) as usize).min(self.filled);
            self.buffer.copy_within(keep_from..self.filled, 0);
            self.filled -= keep_from;
            self.start += keep_from as u64;
            while self.filled < WINDOW_SIZE {
                let at = self.start + self.filled as u64;
                match self.file.read_at(&mut self.buffer[self.filled..], at) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(read) => self.filled += read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        let skip = ((pos - self.start) as usize).min(self.filled);
        let end = (skip + want).min(self.filled);
        Ok(&self.buffer[skip..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn cut_bytes(data: &[u8], previous: &[ChunkRef]) -> Cut {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, data).unwrap();
        cut_file(&file, previous).unwrap()
    }

    /// The cut from scratch, by the crate's own whole-buffer chunker.
    fn reference(data: &[u8]) -> Vec<ChunkRef> {
        fastcdc::v2020::FastCDC::new(
            data,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
        )
        .map(|c| ChunkRef {
            hash: Hash::of(&data[c.offset..c.offset + c.length]),
            size: c.length as u32,
        })
        .collect()
    }

    #[test]
    fn a_cut_from_scratch_matches_the_reference() {
        let mut state = 0x1234_5678_9abc_def1u64;
        for length in [
            SMALL_FILE_MAX as usize + 1,
            3 * MAX + 7,
            WINDOW_SIZE + 1,
            9 * MAX,
        ] {
            let data = random_bytes(length, &mut state);
            let cut = cut_bytes(&data, &[]);
            assert_eq!(cut.size, length as u64);
            assert_eq!(cut.chunks, reference(&data), "{length}");
        }
        let zeros = vec![0u8; 3 * MAX + 3];
        assert_eq!(cut_bytes(&zeros, &[]).chunks, reference(&zeros));
        let small = cut_bytes(b"tiny", &[]);
        assert_eq!(small.small_hash, Some(Hash::of(b"tiny")));
        assert!(small.chunks.is_empty());
    }

    /// Edits of every kind, at the start, inside, across chunk boundaries and near the end:
    /// the cut with the old chunk list is the cut from scratch.
    #[test]
    fn a_cut_reusing_the_old_one_is_the_cut_from_scratch() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let original = random_bytes(24 * 1024 * 1024 + 12_345, &mut state);
        let old = reference(&original);
        assert!(old.len() > 10);
        let starts: Vec<usize> = old
            .iter()
            .scan(0usize, |at, c| {
                let start = *at;
                *at += c.size as usize;
                Some(start)
            })
            .collect();
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let boundary = starts[5];
        let end = original.len();
        let edits: Vec<(&str, Edit)> = vec![
            ("unchanged", Box::new(|_| {})),
            (
                "overwrite inside",
                Box::new(|d| d[5_000_000..5_100_000].fill(7)),
            ),
            (
                "the byte after a cut",
                Box::new(move |d| d[boundary] ^= 0xff),
            ),
            (
                "the byte before a cut",
                Box::new(move |d| d[boundary - 1] ^= 0xff),
            ),
            ("first byte", Box::new(|d| d[0] ^= 1)),
            ("last byte", Box::new(move |d| d[end - 1] ^= 1)),
            (
                "append",
                Box::new(|d| d.extend(std::iter::repeat_n(3u8, 1_000_000))),
            ),
            ("truncate", Box::new(move |d| d.truncate(end - 3_000_000))),
            (
                "insert",
                Box::new(|d| {
                    d.splice(7_000_000..7_000_000, [9u8; 4321]);
                }),
            ),
            (
                "delete",
                Box::new(|d| {
                    d.drain(9_000_000..9_500_000);
                }),
            ),
            (
                "overwrite near the end",
                Box::new(move |d| d[end - 5_000_000..end - 4_900_000].fill(1)),
            ),
            (
                "many edits",
                Box::new(|d| {
                    for at in (1_000_000..20_000_000).step_by(3_000_000) {
                        d[at] ^= 0x55;
                    }
                }),
            ),
            ("shrunk to small", Box::new(|d| d.truncate(1000))),
        ];
        // All but the last, whose end was the file's.
        let reusable = old.len() - 1;
        for (name, edit) in edits {
            let mut data = original.clone();
            edit(&mut data);
            let cut = cut_bytes(&data, &old);
            assert_eq!(cut.size, data.len() as u64, "{name}");
            if data.len() as u64 <= SMALL_FILE_MAX {
                assert_eq!(cut.small_hash, Some(Hash::of(&data)), "{name}");
                continue;
            }
            assert_eq!(cut.chunks, reference(&data), "{name}");
            // The point of it: most chunks of a lightly edited file skip the search.
            match name {
                "unchanged" | "append" => assert_eq!(cut.reused, reusable, "{name}"),
                // Edits every three chunks or so leave little to reuse; only the result counts.
                "many edits" => {}
                _ => assert!(
                    cut.reused * 2 >= reusable,
                    "{name}: {} of {reusable}",
                    cut.reused
                ),
            }
        }
        // Data without cut points: every chunk is forced at CHUNK_MAX.
        let mut zeros = vec![0u8; 5 * MAX + 100];
        let old = reference(&zeros);
        zeros[2 * MAX + 10] = 1;
        assert_eq!(cut_bytes(&zeros, &old).chunks, reference(&zeros));
    }

    /// An old chunk list that lies (hashes of other content) costs time, never correctness.
    #[test]
    fn a_wrong_old_list_only_costs_the_boundary_search() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data = random_bytes(10 * 1024 * 1024, &mut state);
        let other = random_bytes(10 * 1024 * 1024, &mut state);
        let mut old = reference(&other);
        old.extend(reference(&data).into_iter().skip(2));
        assert_eq!(cut_bytes(&data, &old).chunks, reference(&data));
    }
}
