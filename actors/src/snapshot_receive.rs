//! A peer's snapshot received entry by entry: each entry is checked
//! ([`SnapshotChecker`]) and written on ([`SnapshotWriter`]) as it is decoded, so a receiver
//! never holds a peer's entries together, only its own copy of the document on disk, in this
//! node's field order (`entries` last), from which [`SnapshotReader`] reads them back.
//!
//! A peer may send the map's fields in any order (`schemas/transfer.md`): the root it
//! announces is checked once both it and every entry have been read, wherever it came.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::fsio::SharedFile;
use crate::snapshot::{
    check_entry_count, check_format, EntryKind, Hash, RootHasher, Snapshot, SnapshotChecker,
    SnapshotEntry, SnapshotError, SnapshotLimits,
};
use crate::snapshot_reader::SnapshotReader;
use crate::snapshot_writer::{SnapshotHead, SnapshotWriter, Written};

/// Why a received snapshot was not kept.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The peer's document was refused.
    #[error(transparent)]
    Refused(#[from] SnapshotError),
    /// This node could not keep it (its own disk).
    #[error("{0}")]
    Keeping(io::Error),
}

/// A snapshot kept in an unnamed file: a peer's, checked as it was received, or one this
/// node built entry by entry (a sync's source rebuilt from a delta, its target) or wrote
/// earlier (a clone's base, the memo of its own snapshot).
#[derive(Debug)]
pub struct KeptSnapshot {
    /// What it says about itself.
    pub head: SnapshotHead,
    /// Its root hash (checked against its entries).
    pub root: Hash,
    /// Its totals.
    pub written: Written,
    file: Arc<fs::File>,
}

/// Entries read back from a [`KeptSnapshot`], one at a time; owns its file handle, so it
/// can outlive the borrow it was made from.
pub type EntryReader = SnapshotReader<SharedFile>;

impl KeptSnapshot {
    /// Reads the snapshot document in `input` (`encoded_len` compressed bytes) within
    /// `limits`, keeping its entries in an unnamed file in `dir`.
    pub fn receive(
        input: impl Read,
        encoded_len: u64,
        limits: &SnapshotLimits,
        dir: &Path,
    ) -> Result<KeptSnapshot, ReceiveError> {
        let mut receiving = Receiving {
            limits,
            keeping: Keeping::new(limits, dir),
            failure: None,
        };
        let fields = crate::packed::read_with(input, encoded_len, limits, "a snapshot", |input| {
            let mut decoder = rmp_serde::Deserializer::new(input);
            (&mut receiving).deserialize(&mut decoder)
        });
        let Receiving {
            keeping, failure, ..
        } = receiving;
        // A refusal of the checker or the spill, carried out of serde as a plain message.
        if let Some(failure) = failure {
            return Err(failure);
        }
        let fields = fields?;
        let missing = |field: &str| {
            SnapshotError::Malformed(format!("not a snapshot: missing field `{field}`"))
        };
        check_format(fields.format.ok_or_else(|| missing("format"))?)?;
        if !fields.entries {
            return Err(missing("entries").into());
        }
        let announced = fields.root.ok_or_else(|| missing("root"))?;
        let head = SnapshotHead {
            workspace_id: fields.workspace_id.ok_or_else(|| missing("workspace_id"))?,
            name: fields.name.ok_or_else(|| missing("name"))?,
            revision: fields.revision.ok_or_else(|| missing("revision"))?,
            source_root: fields.source_root.ok_or_else(|| missing("source_root"))?,
        };
        keeping.keep(head, Some(announced))
    }

    /// A snapshot document this node wrote and has already checked (a memo's file, whose
    /// bytes were hashed), with its totals: only its head is read.
    pub fn open(file: fs::File, totals: (u64, u64)) -> io::Result<KeptSnapshot> {
        let file = Arc::new(file);
        let reader = SnapshotReader::new(SharedFile::new(file.clone()))?;
        Ok(KeptSnapshot::from_head(file, reader, totals))
    }

    /// A snapshot document this node wrote earlier (a clone's base), read through once:
    /// `None` when its entries do not hash to the root it states (the file was damaged).
    pub fn open_checked(file: fs::File) -> io::Result<Option<KeptSnapshot>> {
        let file = Arc::new(file);
        let mut reader = SnapshotReader::new(SharedFile::new(file.clone()))?;
        let (mut root, mut total_bytes, mut file_count) = (RootHasher::new(), 0u64, 0u64);
        while let Some(entry) = reader.next_entry()? {
            root.push(&entry);
            total_bytes += entry.size;
            file_count += u64::from(entry.kind == EntryKind::File);
        }
        Ok((root.finish() == reader.root)
            .then(|| KeptSnapshot::from_head(file, reader, (total_bytes, file_count))))
    }

    /// The kept document in `file`, whose head `reader` read, with its totals.
    fn from_head(
        file: Arc<fs::File>,
        reader: EntryReader,
        (total_bytes, file_count): (u64, u64),
    ) -> KeptSnapshot {
        KeptSnapshot {
            written: Written {
                root: reader.root,
                total_bytes,
                file_count,
                entries: reader.entries,
            },
            head: reader.head,
            root: reader.root,
            file,
        }
    }

    /// Reads the entries back from the start, one at a time.
    pub fn entries(&self) -> io::Result<EntryReader> {
        SnapshotReader::new(SharedFile::new(self.file.clone()))
    }

    /// Copies the document (this node's encoding of the snapshot, as
    /// [`Snapshot::encode`] makes it) to `out`.
    pub fn copy_to(&self, out: &mut impl io::Write) -> io::Result<u64> {
        io::copy(&mut SharedFile::new(self.file.clone()), out)
    }

    /// The whole snapshot in memory.
    pub fn load(&self) -> io::Result<Snapshot> {
        let mut reader = self.entries()?;
        let mut entries = Vec::with_capacity(usize::try_from(reader.entries).unwrap_or(0));
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok(Snapshot {
            format: crate::snapshot::SNAPSHOT_FORMAT,
            workspace_id: self.head.workspace_id,
            name: self.head.name.clone(),
            revision: self.head.revision,
            source_root: self.head.source_root.clone(),
            root: self.root,
            entries,
        })
    }
}

/// A snapshot whose entries are read in order: on disk (every snapshot a transfer works
/// with), or whole in memory (tests build them so).
#[derive(Debug, Clone)]
pub enum SnapshotEntries {
    /// In memory.
    Whole(Arc<Snapshot>),
    /// On disk.
    Kept(Arc<KeptSnapshot>),
}

impl SnapshotEntries {
    /// The root hash.
    pub fn root(&self) -> Hash {
        match self {
            SnapshotEntries::Whole(snapshot) => snapshot.root,
            SnapshotEntries::Kept(received) => received.root,
        }
    }

    /// Bytes of file content and count of files.
    pub fn totals(&self) -> (u64, u64) {
        match self {
            SnapshotEntries::Whole(snapshot) => (snapshot.total_bytes(), snapshot.file_count()),
            SnapshotEntries::Kept(received) => {
                (received.written.total_bytes, received.written.file_count)
            }
        }
    }

    /// What it says about itself.
    pub fn head(&self) -> SnapshotHead {
        match self {
            SnapshotEntries::Whole(snapshot) => snapshot.head(),
            SnapshotEntries::Kept(received) => received.head.clone(),
        }
    }

    /// Reads the entries in order, one at a time.
    pub fn cursor(&self) -> io::Result<EntryCursor<'_>> {
        Ok(match self {
            SnapshotEntries::Whole(snapshot) => EntryCursor::Whole(snapshot.entries.iter()),
            SnapshotEntries::Kept(received) => EntryCursor::OnDisk(Box::new(received.entries()?)),
        })
    }

    /// Runs `f` on every entry in order; a failure to read one back is `unreadable`'s.
    pub fn for_each<E>(
        &self,
        unreadable: impl FnOnce(io::Error) -> E,
        mut f: impl FnMut(&SnapshotEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            SnapshotEntries::Whole(snapshot) => snapshot.entries.iter().try_for_each(f),
            SnapshotEntries::Kept(received) => {
                let mut read = || -> io::Result<Result<(), E>> {
                    let mut reader = received.entries()?;
                    while let Some(entry) = reader.next_entry()? {
                        if let Err(error) = f(&entry) {
                            return Ok(Err(error));
                        }
                    }
                    Ok(Ok(()))
                };
                read().unwrap_or_else(|error| Err(unreadable(error)))
            }
        }
    }
}

/// A snapshot's entries checked ([`SnapshotChecker`]) and written on ([`SnapshotWriter`]) as
/// they come, then kept in an unnamed file: how a peer's snapshot is received, a delta
/// applied onto a base on disk, and a sync's merged target made.
pub struct Keeping<'a> {
    checker: SnapshotChecker<'a>,
    writer: SnapshotWriter,
    dir: std::path::PathBuf,
}

impl<'a> Keeping<'a> {
    /// Entries within `limits`, spilled and kept in `dir`.
    pub fn new(limits: &'a SnapshotLimits, dir: &Path) -> Keeping<'a> {
        Keeping {
            checker: SnapshotChecker::new(limits),
            writer: SnapshotWriter::new(dir),
            dir: dir.to_path_buf(),
        }
    }

    /// Checks and writes the next entry (in the snapshot's order).
    pub fn push(&mut self, entry: &SnapshotEntry) -> Result<(), ReceiveError> {
        self.checker.push(entry)?;
        self.writer.push(entry).map_err(ReceiveError::Keeping)
    }

    /// The snapshot, kept; its entries must hash to `announced` when it is given.
    pub fn keep(
        self,
        head: SnapshotHead,
        announced: Option<Hash>,
    ) -> Result<KeptSnapshot, ReceiveError> {
        if let Some(announced) = announced {
            self.checker.finish(announced)?;
        }
        let mut file = tempfile::tempfile_in(&self.dir).map_err(ReceiveError::Keeping)?;
        let written = self
            .writer
            .finish(&head, &mut file)
            .map_err(ReceiveError::Keeping)?;
        Ok(KeptSnapshot {
            head,
            root: written.root,
            written,
            file: Arc::new(file),
        })
    }
}

/// The entries of a [`SnapshotEntries`] in order: borrowed from memory or read from disk.
pub enum EntryCursor<'a> {
    /// In memory.
    Whole(std::slice::Iter<'a, SnapshotEntry>),
    /// On disk.
    OnDisk(Box<EntryReader>),
}

impl<'a> EntryCursor<'a> {
    /// The next entry, `None` after the last.
    pub fn next_entry(&mut self) -> io::Result<Option<Cow<'a, SnapshotEntry>>> {
        match self {
            EntryCursor::Whole(entries) => Ok(entries.next().map(Cow::Borrowed)),
            EntryCursor::OnDisk(reader) => Ok(reader.next_entry()?.map(Cow::Owned)),
        }
    }
}

/// Walks two snapshots side by side in path order, calling `f` once per path with what
/// each has there; a failure to read either is `unreadable`'s. Holds one entry of each.
pub fn join<E>(
    mut a: EntryCursor<'_>,
    mut b: EntryCursor<'_>,
    unreadable: impl Fn(io::Error) -> E,
    mut f: impl FnMut(Option<&SnapshotEntry>, Option<&SnapshotEntry>) -> Result<(), E>,
) -> Result<(), E> {
    let (mut l, mut r) = (
        a.next_entry().map_err(&unreadable)?,
        b.next_entry().map_err(&unreadable)?,
    );
    loop {
        let order = match (&l, &r) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.path.as_bytes().cmp(y.path.as_bytes()),
        };
        match order {
            std::cmp::Ordering::Less => {
                f(l.as_deref(), None)?;
                l = a.next_entry().map_err(&unreadable)?;
            }
            std::cmp::Ordering::Greater => {
                f(None, r.as_deref())?;
                r = b.next_entry().map_err(&unreadable)?;
            }
            std::cmp::Ordering::Equal => {
                f(l.as_deref(), r.as_deref())?;
                l = a.next_entry().map_err(&unreadable)?;
                r = b.next_entry().map_err(&unreadable)?;
            }
        }
    }
}

/// `snapshot` kept on disk as a received one is, for tests across the crate.
#[cfg(test)]
pub(crate) fn kept(snapshot: &Snapshot, dir: &Path) -> SnapshotEntries {
    let bytes = snapshot.encode();
    let limits = SnapshotLimits::default();
    let received = KeptSnapshot::receive(&bytes[..], bytes.len() as u64, &limits, dir)
        .expect("a snapshot this node made");
    SnapshotEntries::Kept(Arc::new(received))
}

/// The fields besides the entries, as they were found.
#[derive(Default)]
struct Fields {
    format: Option<u32>,
    workspace_id: Option<uuid::Uuid>,
    name: Option<String>,
    revision: Option<u64>,
    source_root: Option<String>,
    root: Option<Hash>,
    entries: bool,
}

/// The decoding of one document: where its entries go.
struct Receiving<'a> {
    limits: &'a SnapshotLimits,
    keeping: Keeping<'a>,
    failure: Option<ReceiveError>,
}

impl Receiving<'_> {
    fn fail<E: de::Error>(&mut self, failure: ReceiveError) -> E {
        let message = failure.to_string();
        self.failure = Some(failure);
        E::custom(message)
    }
}

/// A UUID as [`crate::uuid_wire`] reads it.
struct WireUuid(uuid::Uuid);

impl<'de> Deserialize<'de> for WireUuid {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<WireUuid, D::Error> {
        crate::uuid_wire::deserialize(deserializer).map(WireUuid)
    }
}

impl<'de> DeserializeSeed<'de> for &mut Receiving<'_> {
    type Value = Fields;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Receiving<'_> {
    type Value = Fields;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a snapshot (a map of named fields)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let duplicate = |field: &str| de::Error::custom(format!("duplicate field `{field}`"));
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" if fields.format.is_some() => return Err(duplicate("format")),
                "format" => fields.format = Some(map.next_value()?),
                "workspace_id" if fields.workspace_id.is_some() => {
                    return Err(duplicate("workspace_id"))
                }
                "workspace_id" => fields.workspace_id = Some(map.next_value::<WireUuid>()?.0),
                "name" if fields.name.is_some() => return Err(duplicate("name")),
                "name" => fields.name = Some(map.next_value()?),
                "revision" if fields.revision.is_some() => return Err(duplicate("revision")),
                "revision" => fields.revision = Some(map.next_value()?),
                "source_root" if fields.source_root.is_some() => {
                    return Err(duplicate("source_root"))
                }
                "source_root" => fields.source_root = Some(map.next_value()?),
                "root" if fields.root.is_some() => return Err(duplicate("root")),
                "root" => fields.root = Some(map.next_value()?),
                "entries" if fields.entries => return Err(duplicate("entries")),
                "entries" => {
                    map.next_value_seed(Entries(&mut *self))?;
                    fields.entries = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// The `entries` array, each element checked and written as it is decoded.
struct Entries<'r, 'a>(&'r mut Receiving<'a>);

impl<'de> DeserializeSeed<'de> for Entries<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array of snapshot entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let receiving = self.0;
        // MessagePack states the array's length first: too many is refused unread.
        if let Some(count) = seq.size_hint() {
            if let Err(refused) = check_entry_count(count, receiving.limits) {
                return Err(receiving.fail(refused.into()));
            }
        }
        while let Some(entry) = seq.next_element::<SnapshotEntry>()? {
            if let Err(failure) = receiving.keeping.push(&entry) {
                return Err(receiving.fail(failure));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_entries::{dir, file, link};
    use serde::Serialize;

    fn receive(bytes: &[u8]) -> Result<KeptSnapshot, ReceiveError> {
        let dir = std::env::temp_dir();
        KeptSnapshot::receive(bytes, bytes.len() as u64, &SnapshotLimits::default(), &dir)
    }

    fn sample(count: usize) -> Snapshot {
        let mut entries = vec![dir("d"), link("d/l", "/usr/bin/python3")];
        entries.extend((0..count).map(|i| file(&format!("d/f{i:05}"), &[i as u8; 3])));
        Snapshot::new(
            uuid::Uuid::new_v4(),
            "w".into(),
            7,
            "/src/w".into(),
            entries,
        )
    }

    /// What a peer may send in any order: the document this node reads back is its own,
    /// byte for byte what [`Snapshot::encode`] makes of the same snapshot.
    #[test]
    fn fields_in_any_order_become_this_nodes_document() {
        #[derive(Serialize)]
        struct EntriesFirst<'a> {
            entries: &'a [SnapshotEntry],
            unknown: &'a str,
            root: Hash,
            name: &'a str,
            source_root: &'a str,
            revision: u64,
            workspace_id: uuid::Uuid,
            format: u32,
        }
        for count in [0, 3, 20_000] {
            let snapshot = sample(count);
            let reordered = crate::packed::to_vec(&EntriesFirst {
                entries: &snapshot.entries,
                unknown: "ignored",
                root: snapshot.root,
                name: &snapshot.name,
                source_root: &snapshot.source_root,
                revision: snapshot.revision,
                workspace_id: snapshot.workspace_id,
                format: snapshot.format,
            });
            for bytes in [snapshot.encode(), reordered] {
                let received = receive(&bytes).unwrap();
                assert_eq!(received.root, snapshot.root);
                assert_eq!(received.written.entries, snapshot.entries.len() as u64);
                assert_eq!(received.written.total_bytes, snapshot.total_bytes());
                assert_eq!(received.load().unwrap(), snapshot);
                let mut kept = Vec::new();
                received.copy_to(&mut kept).unwrap();
                assert_eq!(kept, snapshot.encode());
            }
        }
    }

    /// A document this node wrote is opened by its head alone, or read through and
    /// checked: one whose entries do not hash to its root is not opened.
    #[test]
    fn a_kept_document_opens_checked_or_not() {
        let snapshot = sample(100);
        let dir = tempfile::tempdir().unwrap();
        let write = |snapshot: &Snapshot| {
            let path = dir.path().join("kept");
            std::fs::write(&path, snapshot.encode()).unwrap();
            fs::File::open(&path).unwrap()
        };
        let totals = (snapshot.total_bytes(), snapshot.file_count());
        let checked = KeptSnapshot::open_checked(write(&snapshot))
            .unwrap()
            .unwrap();
        let opened = KeptSnapshot::open(write(&snapshot), totals).unwrap();
        for kept in [checked, opened] {
            assert_eq!(kept.root, snapshot.root);
            assert_eq!(kept.written.entries, 102);
            assert_eq!((kept.written.total_bytes, kept.written.file_count), totals);
            assert_eq!(kept.load().unwrap(), snapshot);
        }
        let damaged = Snapshot {
            root: Hash::of(b"another"),
            ..snapshot
        };
        assert!(KeptSnapshot::open_checked(write(&damaged))
            .unwrap()
            .is_none());
        assert!(KeptSnapshot::open_checked(write(&sample(0)))
            .unwrap()
            .is_some());
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not zstd").unwrap();
        assert!(KeptSnapshot::open_checked(fs::File::open(&garbage).unwrap()).is_err());
    }

    /// Whatever [`Snapshot::decode`] refuses is refused here with the same error.
    #[test]
    fn refuses_what_decode_refuses_with_its_words() {
        let limits = SnapshotLimits {
            max_entries: 10,
            ..SnapshotLimits::default()
        };
        let mut forged = sample(2);
        forged.root = Hash::of(b"forged");
        let mut unsorted = sample(2);
        unsorted.entries.swap(2, 3);
        unsorted.root = crate::snapshot::root_hash(&unsorted.entries);
        let mut orphan = sample(1);
        orphan.entries.remove(0);
        orphan.root = crate::snapshot::root_hash(&orphan.entries);
        let mut format = sample(1);
        format.format = 99;
        let cases = [
            (forged.encode(), "root hash"),
            (unsorted.encode(), "not sorted"),
            (orphan.encode(), "parent `d` is not listed"),
            (format.encode(), "format 99"),
            (sample(20).encode(), "22 entries, more than the limit of 10"),
            (b"garbage".to_vec(), "not a snapshot"),
            (crate::packed::to_vec(&[1u8, 2]), "map of named fields"),
        ];
        let dir = std::env::temp_dir();
        for (bytes, expected) in cases {
            let received = KeptSnapshot::receive(&bytes[..], bytes.len() as u64, &limits, &dir);
            let decoded = Snapshot::decode(&bytes, &limits);
            let error = received.unwrap_err().to_string();
            assert!(error.contains(expected), "`{error}` lacks `{expected}`");
            let decoded = decoded.unwrap_err().to_string();
            if !expected.contains("map of named fields") {
                assert_eq!(error, decoded);
            }
        }
        #[derive(Serialize)]
        struct Twice<'a> {
            root: Hash,
            entries: &'a [SnapshotEntry],
            #[serde(rename = "root")]
            again: Hash,
        }
        let twice = crate::packed::to_vec(&Twice {
            root: Hash::of(b"a"),
            entries: &[],
            again: Hash::of(b"b"),
        });
        let error = receive(&twice).unwrap_err().to_string();
        assert!(error.contains("duplicate field `root`"), "{error}");
        #[derive(Serialize)]
        struct NoEntries {
            format: u32,
        }
        let error = receive(&crate::packed::to_vec(&NoEntries { format: 1 }))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `entries`"), "{error}");
    }
}
