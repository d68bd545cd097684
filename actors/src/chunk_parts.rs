//! The finer level inside a changed chunk (`schemas/transfer.md`, "Parts of changed
//! chunks"): a chunk's **parts** are its own content-defined cuts at ~16 KiB, so a receiver
//! that holds the chunk's previous version fetches only the parts it lacks, as byte ranges,
//! instead of the whole ~1 MiB chunk. Both sides cut the same way; the rebuilt chunk is
//! checked against the chunk's hash, so a part list or range can never corrupt a file.
//!
//! This module holds the cut and the two wire formats: a part list
//! (`POST …/chunks/parts`) and a range request (`POST …/chunks/ranges`, answered with chunk
//! frames).

use crate::snapshot::{Hash, CHUNK_MAX};

/// Smallest part (but a chunk's last).
pub const PART_MIN: usize = 4096;
/// Average part.
pub const PART_AVG: usize = 16384;
/// Largest part.
pub const PART_MAX: usize = 65536;
/// Chunk hashes one part-list request may name.
pub const MAX_PARTS_REQUEST: usize = 64;
/// Ranges one range request may name.
pub const MAX_RANGES_REQUEST: usize = 4096;
/// Bytes of a part-list record's header: kind, chunk hash, count.
const LIST_HEADER_LEN: usize = 1 + 32 + 4;
/// Bytes of one part in a list: size, hash.
const PART_LEN: usize = 4 + 32;
/// Bytes of one range in a request: chunk hash, offset, length.
const RANGE_LEN: usize = 32 + 4 + 4;

/// One part of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Where it starts in the chunk.
    pub offset: u32,
    /// Its length.
    pub size: u32,
    /// BLAKE3 of its bytes.
    pub hash: Hash,
}

/// Cuts a chunk into its parts (FastCDC 2020, normalization level 1, with the `PART_*`
/// sizes: the chunk cut of `schemas/transfer.md` with other constants).
pub fn cut(data: &[u8]) -> Vec<Part> {
    if data.is_empty() {
        return Vec::new();
    }
    fastcdc::v2020::FastCDC::new(data, PART_MIN, PART_AVG, PART_MAX)
        .map(|c| Part {
            offset: c.offset as u32,
            size: c.length as u32,
            hash: Hash::of(&data[c.offset..c.offset + c.length]),
        })
        .collect()
}

/// Parts a chunk of `size` bytes can have at most (each but the last is at least
/// [`PART_MIN`]).
pub fn max_parts(size: u32) -> usize {
    size as usize / PART_MIN + 1
}

/// Appends one chunk's record to a part-list answer: its parts, or `None` when the server
/// does not hold the chunk (answered like a `missing` frame).
pub fn encode_list(out: &mut Vec<u8>, hash: Hash, parts: Option<&[Part]>) {
    out.push(if parts.is_some() { 0 } else { 2 });
    out.extend_from_slice(&hash.0);
    let parts = parts.unwrap_or_default();
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        out.extend_from_slice(&part.size.to_le_bytes());
        out.extend_from_slice(&part.hash.0);
    }
}

/// Largest part-list answer for `asked` chunks.
pub fn max_list_len(asked: &[(Hash, u32)]) -> usize {
    asked
        .iter()
        .map(|(_, size)| LIST_HEADER_LEN + max_parts(*size) * PART_LEN)
        .sum()
}

/// Reads a part-list answer for `asked` (chunk hashes with their sizes, in request order):
/// each chunk's parts with their offsets, or `None` for one the server does not hold. A
/// record out of order, a part list that does not add up to the chunk's size, a part over
/// [`PART_MAX`] or trailing bytes refuse the whole answer.
pub fn decode_lists(body: &[u8], asked: &[(Hash, u32)]) -> Result<Vec<Option<Vec<Part>>>, String> {
    let mut at = 0;
    let mut lists = Vec::with_capacity(asked.len());
    for (index, (hash, size)) in asked.iter().enumerate() {
        let header = body
            .get(at..at + LIST_HEADER_LEN)
            .ok_or_else(|| format!("the answer ends before record {index}"))?;
        at += LIST_HEADER_LEN;
        if header[1..33] != hash.0 {
            return Err(format!(
                "record {index} is not for the chunk asked for there"
            ));
        }
        let count = u32::from_le_bytes(header[33..37].try_into().expect("4 bytes")) as usize;
        match header[0] {
            2 if count == 0 => {
                lists.push(None);
                continue;
            }
            0 if (1..=max_parts(*size)).contains(&count) => {}
            kind => {
                return Err(format!(
                    "record {index} has kind {kind} with {count} parts (chunk of {size} bytes)"
                ))
            }
        }
        let records = body
            .get(at..at + count * PART_LEN)
            .ok_or_else(|| format!("the answer ends inside record {index}"))?;
        at += count * PART_LEN;
        let mut offset = 0u64;
        let mut parts = Vec::with_capacity(count);
        for record in records.chunks_exact(PART_LEN) {
            let part_size = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
            if part_size == 0 || part_size as usize > PART_MAX {
                return Err(format!("record {index} has a part of {part_size} bytes"));
            }
            parts.push(Part {
                offset: offset as u32,
                size: part_size,
                hash: Hash(record[4..].try_into().expect("32 bytes")),
            });
            offset += u64::from(part_size);
        }
        if offset != u64::from(*size) {
            return Err(format!(
                "record {index}'s parts add up to {offset} bytes, not the chunk's {size}"
            ));
        }
        lists.push(Some(parts));
    }
    if at != body.len() {
        return Err(format!("{} bytes after the last record", body.len() - at));
    }
    Ok(lists)
}

/// A piece of a chunk asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The chunk.
    pub hash: Hash,
    /// Where the piece starts in it.
    pub offset: u32,
    /// Its length (at least 1).
    pub len: u32,
}

/// The body of a range request.
pub fn encode_ranges(ranges: &[Range]) -> Vec<u8> {
    let mut body = Vec::with_capacity(ranges.len() * RANGE_LEN);
    for range in ranges {
        body.extend_from_slice(&range.hash.0);
        body.extend_from_slice(&range.offset.to_le_bytes());
        body.extend_from_slice(&range.len.to_le_bytes());
    }
    body
}

/// Reads a range request: 1 to [`MAX_RANGES_REQUEST`] ranges, each of 1 byte or more and
/// inside the largest chunk.
pub fn parse_ranges(body: &[u8]) -> Result<Vec<Range>, String> {
    if !body.len().is_multiple_of(RANGE_LEN) {
        return Err(format!(
            "the body is {} bytes, not a multiple of {RANGE_LEN} (hash, offset, length per range)",
            body.len()
        ));
    }
    let count = body.len() / RANGE_LEN;
    if count == 0 || count > MAX_RANGES_REQUEST {
        return Err(format!(
            "ask for 1 to {MAX_RANGES_REQUEST} ranges, not {count}"
        ));
    }
    body.chunks_exact(RANGE_LEN)
        .enumerate()
        .map(|(index, record)| {
            let range = Range {
                hash: Hash(record[..32].try_into().expect("32 bytes")),
                offset: u32::from_le_bytes(record[32..36].try_into().expect("4 bytes")),
                len: u32::from_le_bytes(record[36..40].try_into().expect("4 bytes")),
            };
            if range.len == 0
                || u64::from(range.offset) + u64::from(range.len) > u64::from(CHUNK_MAX)
            {
                return Err(format!(
                    "range {index} (offset {}, length {}) is empty or ends past {CHUNK_MAX} bytes",
                    range.offset, range.len
                ));
            }
            Ok(range)
        })
        .collect()
}

/// Reads a part-list request: 1 to [`MAX_PARTS_REQUEST`] chunk hashes.
pub fn parse_list_request(body: &[u8]) -> Result<Vec<Hash>, String> {
    crate::chunk_frame::parse_hashes(body, MAX_PARTS_REQUEST, "chunks' parts")
}

/// The first `len` bytes of the transfer spec's test vector data: the BLAKE3 XOF of
/// `aienv chunking test vector`.
#[cfg(test)]
pub(crate) fn test_vector_data(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"aienv chunking test vector")
        .finalize_xof()
        .fill(&mut data);
    data
}

#[cfg(test)]
mod tests {
    use super::test_vector_data as data;
    use super::*;

    #[test]
    fn parts_cover_the_chunk_within_their_bounds() {
        let data = data(1_288_258);
        let parts = cut(&data);
        let mut offset = 0;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.offset as usize, offset);
            assert!(part.size as usize <= PART_MAX);
            assert!(i + 1 == parts.len() || part.size as usize >= PART_MIN);
            assert_eq!(
                part.hash,
                Hash::of(&data[offset..offset + part.size as usize])
            );
            offset += part.size as usize;
        }
        assert_eq!(offset, data.len());
        assert!(parts.len() <= max_parts(data.len() as u32));
        // An edit moves only the parts around it.
        let mut edited = data.clone();
        edited[600_000..600_100].fill(0);
        let before: std::collections::HashSet<Hash> = parts.iter().map(|p| p.hash).collect();
        let changed = cut(&edited)
            .iter()
            .filter(|p| !before.contains(&p.hash))
            .map(|p| p.size as usize)
            .sum::<usize>();
        assert!(changed <= 2 * PART_MAX, "{changed} bytes of parts changed");
    }

    #[test]
    fn part_lists_round_trip_and_lies_are_refused() {
        let a = data(300_000);
        let b = data(5_000);
        let (pa, pb) = (cut(&a), cut(&b));
        let asked = [
            (Hash::of(&a), a.len() as u32),
            (Hash::of(b"gone"), 70_000),
            (Hash::of(&b), b.len() as u32),
        ];
        let mut body = Vec::new();
        encode_list(&mut body, asked[0].0, Some(&pa));
        encode_list(&mut body, asked[1].0, None);
        encode_list(&mut body, asked[2].0, Some(&pb));
        assert!(body.len() <= max_list_len(&asked));
        let lists = decode_lists(&body, &asked).unwrap();
        assert_eq!(lists, vec![Some(pa.clone()), None, Some(pb.clone())]);

        // Out of order, a wrong total, trailing bytes, a truncated answer.
        let reordered = [asked[2], asked[1], asked[0]];
        assert!(decode_lists(&body, &reordered)
            .unwrap_err()
            .contains("record 0"));
        let mut short = asked;
        short[0].1 -= 1;
        assert!(decode_lists(&body, &short)
            .unwrap_err()
            .contains("add up to"));
        let mut long = body.clone();
        long.push(0);
        assert!(decode_lists(&long, &asked)
            .unwrap_err()
            .contains("after the last"));
        assert!(decode_lists(&body[..body.len() - 1], &asked).is_err());
        // A part over the maximum.
        let mut huge = Vec::new();
        encode_list(
            &mut huge,
            asked[0].0,
            Some(&[Part {
                offset: 0,
                size: 300_000,
                hash: Hash::of(&a),
            }]),
        );
        assert!(decode_lists(&huge, &asked[..1])
            .unwrap_err()
            .contains("part of"));
    }

    #[test]
    fn range_requests_are_bounded() {
        let ranges = [
            Range {
                hash: Hash::of(b"x"),
                offset: 10,
                len: 20,
            },
            Range {
                hash: Hash::of(b"y"),
                offset: 0,
                len: CHUNK_MAX,
            },
        ];
        assert_eq!(parse_ranges(&encode_ranges(&ranges)).unwrap(), ranges);
        assert!(parse_ranges(&[]).unwrap_err().contains("1 to 4096"));
        assert!(parse_ranges(&[0; 41])
            .unwrap_err()
            .contains("multiple of 40"));
        for (offset, len) in [(0, 0), (CHUNK_MAX, 1), (u32::MAX, 2)] {
            let bad = Range {
                hash: Hash::of(b"z"),
                offset,
                len,
            };
            assert!(parse_ranges(&encode_ranges(&[bad]))
                .unwrap_err()
                .contains("range 0"));
        }
        assert!(parse_list_request(&[0; 65 * 32])
            .unwrap_err()
            .contains("1 to 64"));
        assert_eq!(parse_list_request(&[7; 64]).unwrap().len(), 2);
    }
}
