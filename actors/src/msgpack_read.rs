//! One MessagePack value at a time from a buffered stream, decoded from the buffer in place.
//!
//! `rmp_serde::from_read` copies every string and byte string through a fresh buffer
//! (`read_to_end` on a `Take`), and a snapshot entry is mostly strings: its field names, its
//! path, its hashes. When the whole value is already in the reader's buffer (nearly always:
//! the buffers are 64 KiB or more, an entry a few hundred bytes), its length is found by a
//! scan of its markers and it is decoded from that slice; otherwise, or for bytes that are
//! not MessagePack, `from_read` reads it as before. Either way the same decoder runs on the
//! same bytes, so what is accepted and what is refused does not change.

use std::io::BufRead;

use serde::de::DeserializeOwned;

/// Reads the next value of `input` as `T`.
pub fn read_value<T: DeserializeOwned>(
    input: &mut impl BufRead,
) -> Result<T, rmp_serde::decode::Error> {
    read_value_with(input, |_| None)
}

/// [`read_value`], trying `in_place` first on the buffered bytes: a decoder of `T`'s own
/// for the forms it knows, which gives the value at their start and its length in bytes
/// (what serde would give for them), or `None` (it does not know the form, or the value
/// goes past the buffer), and serde decodes it.
pub fn read_value_with<T: DeserializeOwned>(
    input: &mut impl BufRead,
    in_place: impl FnOnce(&[u8]) -> Option<(T, usize)>,
) -> Result<T, rmp_serde::decode::Error> {
    let buffered = input
        .fill_buf()
        .map_err(rmp_serde::decode::Error::InvalidMarkerRead)?;
    if let Some((value, len)) = in_place(buffered) {
        input.consume(len);
        return Ok(value);
    }
    if let Some(len) = value_len(buffered) {
        let value = rmp_serde::from_slice(&buffered[..len]);
        input.consume(len);
        return value;
    }
    rmp_serde::from_read(input)
}

/// The length of the MessagePack value at the start of `bytes`, if all of it is there and
/// its markers are valid. Counts the values still to come instead of recursing, so a deep
/// or huge header costs nothing: it runs out of bytes.
pub(crate) fn value_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let mut pending = 1u64;
    let be = |from: usize, width: usize| -> Option<u64> {
        let field = bytes.get(from..from.checked_add(width)?)?;
        Some(field.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = *bytes.get(at)?;
        at += 1;
        // Bytes of payload after the marker (and its length field, already stepped over).
        let skip: u64 = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => {
                pending = pending.saturating_add(2 * u64::from(marker & 0x0f));
                0
            }
            0x90..=0x9f => {
                pending = pending.saturating_add(u64::from(marker & 0x0f));
                0
            }
            0xa0..=0xbf => u64::from(marker & 0x1f),
            0xc1 => return None,
            0xc4 | 0xd9 => {
                let len = be(at, 1)?;
                at += 1;
                len
            }
            0xc5 | 0xda => {
                let len = be(at, 2)?;
                at += 2;
                len
            }
            0xc6 | 0xdb => {
                let len = be(at, 4)?;
                at += 4;
                len
            }
            // ext 8/16/32: a length, then a type byte.
            0xc7 => {
                let len = be(at, 1)?;
                at += 1;
                len + 1
            }
            0xc8 => {
                let len = be(at, 2)?;
                at += 2;
                len + 1
            }
            0xc9 => {
                let len = be(at, 4)?;
                at += 4;
                len + 1
            }
            0xca | 0xce | 0xd2 => 4,
            0xcb | 0xcf | 0xd3 => 8,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            // fixext 1/2/4/8/16: a type byte and the data.
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xdc => {
                pending = pending.saturating_add(be(at, 2)?);
                at += 2;
                0
            }
            0xdd => {
                pending = pending.saturating_add(be(at, 4)?);
                at += 4;
                0
            }
            0xde => {
                pending = pending.saturating_add(2 * be(at, 2)?);
                at += 2;
                0
            }
            0xdf => {
                pending = pending.saturating_add(2 * be(at, 4)?);
                at += 4;
                0
            }
        };
        at = at.checked_add(usize::try_from(skip).ok()?)?;
        if at > bytes.len() {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ChunkRef, EntryKind, Hash, SnapshotEntry};
    use std::io::{BufReader, Cursor};

    fn entry(random: &mut impl FnMut() -> u64, i: usize) -> SnapshotEntry {
        let kind = match random() % 3 {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            _ => EntryKind::Symlink,
        };
        let name_len = (random() % 300) as usize;
        SnapshotEntry {
            path: format!("d{i}/{}", "é".repeat(name_len)),
            kind,
            mode: (random() % 0o1000) as u32,
            size: random() >> (random() % 64),
            hash: (kind == EntryKind::File).then(|| Hash([random() as u8; 32])),
            target: (kind == EntryKind::Symlink).then(|| "t".repeat((random() % 70_000) as usize)),
            chunks: (0..random() % 40)
                .map(|_| ChunkRef {
                    hash: Hash([random() as u8; 32]),
                    size: random() as u32,
                })
                .collect(),
        }
    }

    /// What the walk's compact spill holds, in the same spirit: a struct written as an array.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Item {
        path: String,
        size: u64,
        hash: Option<Hash>,
        negative: i64,
    }

    /// Writes each value, named or compact, checking that its measured length is its own.
    fn encode<T: serde::Serialize>(values: &[T], named: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in values {
            let at = bytes.len();
            if named {
                rmp_serde::encode::write_named(&mut bytes, value).unwrap();
            } else {
                rmp_serde::encode::write(&mut bytes, value).unwrap();
            }
            assert_eq!(value_len(&bytes[at..]), Some(bytes.len() - at));
            assert_eq!(value_len(&bytes[at..bytes.len() - 1]), None);
        }
        bytes
    }

    /// Reads `values` back from `bytes` through buffers of several sizes: with a small one
    /// many values straddle its end and take the slow path.
    fn read_back<T: DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8], values: &[T]) {
        for capacity in [64, 4096, 1 << 20] {
            let mut input = BufReader::with_capacity(capacity, Cursor::new(bytes));
            for expected in values {
                let back: T = read_value(&mut input).unwrap();
                assert_eq!(&back, expected);
            }
            assert!(read_value::<T>(&mut input).is_err());
        }
    }

    /// Snapshot entries (named, as documents are written) and compact structs come back as
    /// written, whichever path each took.
    #[test]
    fn values_read_in_place_or_through_the_reader_come_back_as_written() {
        let mut random = crate::test_random(0x6d70);
        let entries: Vec<SnapshotEntry> = (0..2_000).map(|i| entry(&mut random, i)).collect();
        read_back(&encode(&entries, true), &entries);
        let items: Vec<Item> = (0..2_000)
            .map(|i| Item {
                path: "p".repeat(i * 37 % 400),
                size: random() >> (random() % 64),
                hash: random().is_multiple_of(2).then_some(Hash([i as u8; 32])),
                negative: -((random() >> (random() % 64)) as i64 / 2),
            })
            .collect();
        read_back(&encode(&items, false), &items);
    }

    /// Every kind of marker is measured, including the forms this node never writes (ext,
    /// floats, wide integers), and a declared length past the end is incomplete.
    #[test]
    fn every_marker_is_measured_and_bad_input_goes_to_the_decoder() {
        let cases: &[&[u8]] = &[
            &[0x05],
            &[0xe0],
            &[0xc0],
            &[0xc3],
            &[0xcc, 1],
            &[0xcd, 1, 2],
            &[0xd2, 1, 2, 3, 4],
            &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xa2, b'h', b'i'],
            &[0xd9, 2, b'h', b'i'],
            &[0xda, 0, 1, b'x'],
            &[0xc4, 1, 9],
            &[0xc6, 0, 0, 0, 1, 9],
            &[0xd4, 1, 2],
            &[0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xc7, 1, 5, 9],
            &[0x92, 0x01, 0x81, 0xa1, b'k', 0xc0],
            &[0xdc, 0, 2, 0x01, 0x02],
            &[0xdf, 0, 0, 0, 1, 0x01, 0x02],
        ];
        for case in cases {
            let mut padded = case.to_vec();
            padded.extend_from_slice(&[0xff; 8]);
            assert_eq!(value_len(&padded), Some(case.len()), "{case:x?}");
            let _: rmpv_like::Any = rmp_serde::from_slice(case).unwrap();
        }
        // Never a valid marker; lengths that run past the end; a huge array header.
        assert_eq!(value_len(&[0xc1]), None);
        assert_eq!(value_len(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x']), None);
        assert_eq!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
        assert_eq!(value_len(&[]), None);
        // Through the reader, bad bytes are the decoder's error, as before.
        let mut input = Cursor::new(vec![0xc1u8, 0, 0]);
        assert!(read_value::<SnapshotEntry>(&mut input).is_err());
        let mut input = Cursor::new(vec![0x93u8, 1]);
        assert!(read_value::<Vec<u8>>(&mut input).is_err());
    }

    /// Any value, for checking that a case is MessagePack the decoder accepts.
    mod rmpv_like {
        pub struct Any;
        impl<'de> serde::Deserialize<'de> for Any {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Any, D::Error> {
                serde::de::IgnoredAny::deserialize(d).map(|_| Any)
            }
        }
    }
}
