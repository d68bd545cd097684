//! A snapshot entry decoded from its MessagePack bytes by hand, for the form snapshots are
//! written in (`schemas/transfer.md`: a map of named fields, strings as `str`, hashes as
//! 32-byte `bin`, integers unsigned). A node reads its own snapshots many times a sync (its
//! memo, a clone's base, a sync's source and target), and serde's generic path costs about
//! twice this. Anything else (other forms serde also accepts, unknown or repeated fields,
//! bad input) gives `None`, and the caller decodes those bytes with serde as before: this
//! decoder only ever agrees with serde or declines.

use crate::snapshot::{ChunkRef, EntryKind, Hash, SnapshotEntry};

/// The entry at the start of `bytes` and its length, or `None` to leave it to serde.
pub fn decode(bytes: &[u8]) -> Option<(SnapshotEntry, usize)> {
    let mut input = Bytes { bytes, at: 0 };
    let fields = input.map_len()?;
    let mut path = None;
    let mut kind = None;
    let mut mode = None;
    let mut size = None;
    let mut hash = None;
    let mut target = None;
    let mut chunks = None;
    for _ in 0..fields {
        match input.key()? {
            PATH => once(&mut path, input.str()?.to_owned())?,
            KIND => once(
                &mut kind,
                match input.str()? {
                    "file" => EntryKind::File,
                    "dir" => EntryKind::Dir,
                    "symlink" => EntryKind::Symlink,
                    _ => return None,
                },
            )?,
            MODE => once(&mut mode, u32::try_from(input.uint()?).ok()?)?,
            SIZE => once(&mut size, input.uint()?)?,
            HASH => {
                let value = match input.nil() {
                    true => None,
                    false => Some(input.hash()?),
                };
                once(&mut hash, value)?
            }
            TARGET => {
                let value = match input.nil() {
                    true => None,
                    false => Some(input.str()?.to_owned()),
                };
                once(&mut target, value)?
            }
            CHUNKS => {
                let count = input.array_len()?;
                // Each chunk takes more than 36 bytes: a header no longer than the value.
                let mut list = Vec::with_capacity(count.min(bytes.len() / 36));
                for _ in 0..count {
                    list.push(input.chunk()?);
                }
                once(&mut chunks, list)?
            }
            _ => return None,
        }
    }
    let entry = SnapshotEntry {
        path: path?,
        kind: kind?,
        mode: mode?,
        size: size.unwrap_or(0),
        hash: hash.flatten(),
        target: target.flatten(),
        chunks: chunks.unwrap_or_default(),
    };
    Some((entry, input.at))
}

/// A field name as [`Bytes::key`] reads it: its bytes, big-endian, in a `u64`.
const fn key(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut key = 0u64;
    let mut at = 0;
    while at < bytes.len() {
        key = (key << 8) | bytes[at] as u64;
        at += 1;
    }
    key
}

const PATH: u64 = key("path");
const KIND: u64 = key("kind");
const MODE: u64 = key("mode");
const SIZE: u64 = key("size");
const HASH: u64 = key("hash");
const TARGET: u64 = key("target");
const CHUNKS: u64 = key("chunks");

/// Sets a field seen for the first time; a repeated one is serde's to refuse.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn be(&mut self, width: usize) -> Option<u64> {
        Some(
            self.take(width)?
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b)),
        )
    }

    /// Steps over a `nil`, if that is what comes next.
    fn nil(&mut self) -> bool {
        let nil = self.bytes.get(self.at) == Some(&0xc0);
        self.at += usize::from(nil);
        nil
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            small @ 0x00..=0x7f => Some(u64::from(small)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// A field name of up to 7 bytes, as [`key`] makes it (no field's name is longer, and
    /// a name with a zero byte in it is none of theirs).
    fn key(&mut self) -> Option<u64> {
        let len = match self.byte()? {
            short @ 0xa1..=0xa7 => usize::from(short & 0x1f),
            _ => return None,
        };
        let name = self.take(len)?;
        if name.contains(&0) {
            return None;
        }
        Some(name.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            short @ 0xa0..=0xbf => u64::from(short & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        std::str::from_utf8(self.take(usize::try_from(len).ok()?)?).ok()
    }

    fn map_len(&mut self) -> Option<usize> {
        let len = match self.byte()? {
            short @ 0x80..=0x8f => u64::from(short & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok()
    }

    fn array_len(&mut self) -> Option<usize> {
        let len = match self.byte()? {
            short @ 0x90..=0x9f => u64::from(short & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok()
    }

    fn hash(&mut self) -> Option<Hash> {
        match (self.byte()?, self.byte()?) {
            (0xc4, 32) => Some(Hash(self.take(32)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// A chunk as a map of its two fields, in either order.
    fn chunk(&mut self) -> Option<ChunkRef> {
        if self.map_len()? != 2 {
            return None;
        }
        let (mut hash, mut size) = (None, None);
        for _ in 0..2 {
            match self.key()? {
                HASH => once(&mut hash, self.hash()?)?,
                SIZE => once(&mut size, u32::try_from(self.uint()?).ok()?)?,
                _ => return None,
            }
        }
        Some(ChunkRef {
            hash: hash?,
            size: size?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn serde_decode(bytes: &[u8]) -> Option<SnapshotEntry> {
        rmp_serde::from_slice(bytes).ok()
    }

    /// Entries as this node writes them decode by hand, to what serde decodes.
    #[test]
    fn written_entries_decode_by_hand_as_serde_decodes_them() {
        let mut random = crate::test_random(0xe17);
        for i in 0..3_000 {
            let kind = [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][i % 3];
            let entry = SnapshotEntry {
                path: format!("d{i}/{}", "ü".repeat((random() % 200) as usize)),
                kind,
                mode: (random() % 0o1000) as u32,
                size: random() >> (random() % 64),
                hash: (kind == EntryKind::File).then_some(Hash([i as u8; 32])),
                target: (kind == EntryKind::Symlink)
                    .then(|| "t".repeat((random() % 70_000) as usize)),
                chunks: (0..random() % 20)
                    .map(|c| ChunkRef {
                        hash: Hash([c as u8; 32]),
                        size: random() as u32,
                    })
                    .collect(),
            };
            let bytes = rmp_serde::to_vec_named(&entry).unwrap();
            assert_eq!(decode(&bytes), Some((entry.clone(), bytes.len())), "{i}");
            assert_eq!(serde_decode(&bytes), Some(entry));
        }
    }

    /// Other forms serde takes, and forms it refuses: by hand each decodes to serde's value
    /// or is left to serde, never to something else.
    #[test]
    fn other_forms_are_decoded_as_serde_does_or_left_to_it() {
        #[derive(Serialize)]
        struct Reordered<'a> {
            chunks: Vec<Chunk>,
            mode: u64,
            target: Option<&'a str>,
            hash: Option<serde_bytes_like::Bin>,
            kind: &'a str,
            path: &'a str,
        }
        #[derive(Serialize)]
        struct Chunk {
            size: u64,
            hash: serde_bytes_like::Bin,
        }
        #[derive(Serialize)]
        struct Extra<'a> {
            path: &'a str,
            kind: &'a str,
            mode: u32,
            later: u8,
        }
        #[derive(Serialize)]
        struct Signed<'a> {
            path: &'a str,
            kind: &'a str,
            mode: i64,
        }
        #[derive(Serialize)]
        struct Twice<'a> {
            path: &'a str,
            kind: &'a str,
            mode: u32,
            #[serde(rename = "path")]
            again: &'a str,
        }
        #[derive(Serialize)]
        struct Missing<'a> {
            path: &'a str,
            mode: u32,
        }
        let bin = |n: usize| serde_bytes_like::Bin(vec![7; n]);
        let named = |value: &dyn erased::Named| value.bytes();
        let mut cases: Vec<Vec<u8>> = vec![
            named(&Reordered {
                chunks: vec![Chunk {
                    size: 5,
                    hash: bin(32),
                }],
                mode: 0o644,
                target: None,
                hash: Some(bin(32)),
                kind: "file",
                path: "a",
            }),
            named(&Reordered {
                chunks: vec![],
                mode: 0o777,
                target: Some("x"),
                hash: None,
                kind: "symlink",
                path: "l",
            }),
            named(&Reordered {
                chunks: vec![],
                mode: u64::from(u32::MAX) + 1,
                target: Some("x"),
                hash: None,
                kind: "symlink",
                path: "mode too large",
            }),
            named(&Reordered {
                chunks: vec![],
                mode: 1,
                target: None,
                hash: Some(bin(31)),
                kind: "file",
                path: "short hash",
            }),
            named(&Reordered {
                chunks: vec![],
                mode: 1,
                target: None,
                hash: None,
                kind: "socket",
                path: "bad kind",
            }),
            named(&Extra {
                path: "x",
                kind: "dir",
                mode: 0o755,
                later: 1,
            }),
            // A mode as a signed integer (int16), which serde reads.
            {
                let mut bytes = named(&Signed {
                    path: "s",
                    kind: "dir",
                    mode: 1,
                });
                let last = bytes.len() - 1;
                bytes.splice(last.., [0xd1, 0x00, 0x01]);
                bytes
            },
            named(&Twice {
                path: "p",
                kind: "dir",
                mode: 1,
                again: "q",
            }),
            named(&Missing { path: "m", mode: 1 }),
            // The array form of a struct, which serde also reads.
            rmp_serde::to_vec(&("p", "dir", 0o755u32)).unwrap(),
            // A path as `bin`, which serde reads as a string.
            {
                let mut bytes = vec![0x83, 0xa4];
                bytes.extend_from_slice(b"path");
                bytes.extend_from_slice(&[0xc4, 1, b'b', 0xa4]);
                bytes.extend_from_slice(b"kind");
                bytes.extend_from_slice(&[0xa3, b'd', b'i', b'r', 0xa4]);
                bytes.extend_from_slice(b"mode");
                bytes.push(0x01);
                bytes
            },
        ];
        // A valid entry, then cut short, with a byte too many, and with invalid UTF-8.
        let valid = rmp_serde::to_vec_named(&crate::snapshot::test_entries::dir("é")).unwrap();
        cases.push(valid[..valid.len() - 1].to_vec());
        cases.push([&valid[..], &[0xc0]].concat());
        let at = valid.iter().position(|&b| b == 0xc3).unwrap();
        let mut broken = valid.clone();
        broken[at] = 0xff;
        cases.push(broken);
        let mut agreed = 0;
        for (i, case) in cases.iter().enumerate() {
            let serde = serde_decode(case);
            if let Some((hand, len)) = decode(case) {
                assert_eq!(Some(hand), serde, "case {i}");
                assert_eq!(Some(len), crate::msgpack_read::value_len(case), "case {i}");
                agreed += 1;
            }
        }
        // The decoder knows the first two forms (fields in another order, `nil`) and reads
        // the first of two values; serde takes the signed mode, the array form and the
        // `bin` path, which it leaves.
        assert_eq!(agreed, 3);
        for taken in [6, 9, 10] {
            assert!(serde_decode(&cases[taken]).is_some(), "case {taken}");
        }
    }

    /// Bytes written as MessagePack `bin`.
    mod serde_bytes_like {
        pub struct Bin(pub Vec<u8>);
        impl serde::Serialize for Bin {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    /// Any of the test's structs, written with field names.
    mod erased {
        pub trait Named {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Named for T {
            fn bytes(&self) -> Vec<u8> {
                rmp_serde::to_vec_named(self).unwrap()
            }
        }
    }
}
