//! A snapshot document read entry by entry, for the ones this node wrote itself (its memo and
//! served-snapshot files, written by [`crate::snapshot_writer::SnapshotWriter`] or
//! [`Snapshot::encode`](crate::snapshot::Snapshot::encode)): their fields come in
//! [`Snapshot`](crate::snapshot::Snapshot)'s order, `entries` last, so the head is read first
//! and the entries one at a time, never held together. Not for a peer's snapshot, whose
//! fields may come in any order: that one is decoded whole and validated.

use std::io::{self, BufRead, BufReader, Read};

use crate::snapshot::{Hash, SnapshotEntry, SNAPSHOT_FORMAT};
use crate::snapshot_writer::SnapshotHead;

/// Reads go through a buffer this large.
const BUFFER: usize = 64 * 1024;

/// A snapshot whose head has been read and whose entries are read on demand.
pub struct SnapshotReader<R: Read> {
    input: BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>,
    /// What the snapshot says about itself.
    pub head: SnapshotHead,
    /// Its root hash, as it states it.
    pub root: Hash,
    /// Its count of entries.
    pub entries: u64,
    left: u64,
}

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a snapshot: {why}"))
}

fn value<T: serde::de::DeserializeOwned>(input: &mut impl BufRead) -> io::Result<T> {
    crate::msgpack_read::read_value(input).map_err(invalid)
}

/// The length in a MessagePack map (`array: false`) or array header.
fn header_len(input: &mut impl Read, array: bool) -> io::Result<u64> {
    let mut byte = [0u8; 1];
    input.read_exact(&mut byte)?;
    let (fix, sixteen, thirty_two) = if array {
        (0x90, 0xdc, 0xdd)
    } else {
        (0x80, 0xde, 0xdf)
    };
    Ok(match byte[0] {
        b if b & 0xf0 == fix => u64::from(b & 0x0f),
        b if b == sixteen => {
            let mut len = [0u8; 2];
            input.read_exact(&mut len)?;
            u64::from(u16::from_be_bytes(len))
        }
        b if b == thirty_two => {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            u64::from(u32::from_be_bytes(len))
        }
        other => {
            return Err(invalid(format!(
                "expected a {} header, found byte {other:#04x}",
                if array { "array" } else { "map" }
            )))
        }
    })
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the head of the snapshot in `input` (one zstd frame).
    pub fn new(input: R) -> io::Result<SnapshotReader<R>> {
        let mut input = BufReader::with_capacity(BUFFER, zstd::stream::read::Decoder::new(input)?);
        let fields = header_len(&mut input, false)?;
        let (mut format, mut workspace_id, mut name, mut revision, mut source_root, mut root) =
            (None, None, None, None, None, None);
        for field in 0..fields {
            let key: String = value(&mut input)?;
            match key.as_str() {
                "format" => format = Some(value::<u32>(&mut input)?),
                "workspace_id" => {
                    let mut decoder = rmp_serde::Deserializer::new(&mut input);
                    workspace_id =
                        Some(crate::uuid_wire::deserialize(&mut decoder).map_err(invalid)?);
                }
                "name" => name = Some(value::<String>(&mut input)?),
                "revision" => revision = Some(value::<u64>(&mut input)?),
                "source_root" => source_root = Some(value::<String>(&mut input)?),
                "root" => root = Some(value::<Hash>(&mut input)?),
                "entries" => {
                    if field + 1 != fields {
                        return Err(invalid("its entries are not its last field"));
                    }
                    if format != Some(SNAPSHOT_FORMAT) {
                        return Err(invalid(format!("format {format:?}")));
                    }
                    let entries = header_len(&mut input, true)?;
                    let missing = |field: &str| invalid(format!("no `{field}` before the entries"));
                    return Ok(SnapshotReader {
                        input,
                        head: SnapshotHead {
                            workspace_id: workspace_id.ok_or_else(|| missing("workspace_id"))?,
                            name: name.ok_or_else(|| missing("name"))?,
                            revision: revision.ok_or_else(|| missing("revision"))?,
                            source_root: source_root.ok_or_else(|| missing("source_root"))?,
                        },
                        root: root.ok_or_else(|| missing("root"))?,
                        entries,
                        left: entries,
                    });
                }
                _ => {
                    value::<serde::de::IgnoredAny>(&mut input)?;
                }
            }
        }
        Err(invalid("it has no entries"))
    }

    /// The next entry, `None` after the last.
    pub fn next_entry(&mut self) -> io::Result<Option<SnapshotEntry>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        crate::msgpack_read::read_value_with(&mut self.input, crate::entry_decode::decode)
            .map(Some)
            .map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::file;
    use crate::snapshot::Snapshot;

    #[test]
    fn a_kept_snapshot_reads_back_entry_by_entry() {
        let entries = (0..1000)
            .map(|i| file(&format!("f{i:04}"), &[i as u8]))
            .collect();
        let snapshot = Snapshot::new(uuid::Uuid::new_v4(), "w".into(), 3, "/w".into(), entries);
        let bytes = snapshot.encode();
        let mut reader = SnapshotReader::new(&bytes[..]).unwrap();
        assert_eq!(
            (
                reader.head.workspace_id,
                reader.head.name.as_str(),
                reader.head.revision,
                reader.head.source_root.as_str(),
                reader.root,
                reader.entries
            ),
            (snapshot.workspace_id, "w", 3, "/w", snapshot.root, 1000)
        );
        let mut back = Vec::new();
        while let Some(entry) = reader.next_entry().unwrap() {
            back.push(entry);
        }
        assert_eq!(back, snapshot.entries);
    }

    #[test]
    fn documents_it_cannot_stream_are_refused() {
        #[derive(serde::Serialize)]
        struct EntriesFirst {
            entries: Vec<SnapshotEntry>,
            format: u32,
        }
        let error = |bytes: &[u8]| match SnapshotReader::new(bytes) {
            Ok(_) => panic!("read"),
            Err(error) => error.to_string(),
        };
        let entries_first = crate::packed::to_vec(&EntriesFirst {
            entries: Vec::new(),
            format: 1,
        });
        assert!(error(&entries_first).contains("not its last field"));
        assert!(error(b"garbage").contains("Unknown frame descriptor"));
        let not_a_map = crate::packed::to_vec(&[1u8, 2]);
        assert!(error(&not_a_map).contains("expected a map header"));
    }
}
