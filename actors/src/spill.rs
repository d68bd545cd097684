//! A sequence of MessagePack values written once and read back in order: in memory up to a
//! bound, then in an unnamed temporary file. A pass over every path of a tree (a walk, a
//! snapshot's entries) holds at most the bound, whatever the count of paths.

use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::fsio::SharedFile;
use serde::Serialize;

/// What a spill holds in memory before it moves to a file.
pub const IN_MEMORY: usize = 4 * 1024 * 1024;

/// Reads and writes go through buffers this large.
const BUFFER: usize = 256 * 1024;

/// Values written, not yet read.
pub struct Spill {
    dir: PathBuf,
    limit: usize,
    /// Structs as maps with their field names (documents), or as arrays (compact).
    named: bool,
    memory: Vec<u8>,
    file: Option<BufWriter<fs::File>>,
    bytes: u64,
    count: u64,
}

impl Spill {
    /// An empty spill that moves to an unnamed file in `dir` past `limit` bytes, writing
    /// structs with their field names, as [`crate::packed`] writes documents.
    pub fn new(dir: &Path, limit: usize) -> Spill {
        Spill {
            named: true,
            ..Spill::compact(dir, limit)
        }
    }

    /// [`Spill::new`] writing structs as arrays of their fields: about half the bytes and
    /// time, for values only this node reads back.
    pub fn compact(dir: &Path, limit: usize) -> Spill {
        Spill {
            dir: dir.to_path_buf(),
            limit,
            named: false,
            memory: Vec::new(),
            file: None,
            bytes: 0,
            count: 0,
        }
    }

    /// Appends `value` as MessagePack.
    pub fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        let at = self.memory.len();
        if self.named {
            rmp_serde::encode::write_named(&mut self.memory, value)
        } else {
            rmp_serde::encode::write(&mut self.memory, value)
        }
        .map_err(io::Error::other)?;
        self.bytes += (self.memory.len() - at) as u64;
        self.count += 1;
        if self.file.is_some() || self.memory.len() > self.limit {
            self.move_out()?;
        }
        Ok(())
    }

    /// Values pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of MessagePack pushed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the spill moved to a file.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    fn move_out(&mut self) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(BufWriter::with_capacity(
                BUFFER,
                tempfile::tempfile_in(&self.dir)?,
            )),
        };
        file.write_all(&self.memory)?;
        self.memory.clear();
        if self.memory.capacity() > BUFFER {
            self.memory.shrink_to(BUFFER);
        }
        Ok(())
    }

    /// Everything pushed, kept in an unnamed file (moved there if it was still in memory), to
    /// be read from the start as often as needed.
    pub fn keep(mut self) -> io::Result<KeptSpill> {
        if self.file.is_none() {
            self.move_out()?;
        }
        let mut file = self.file.take().expect("moved out just above");
        file.write_all(&self.memory)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        Ok(KeptSpill {
            file: Arc::new(file),
            count: self.count,
        })
    }

    /// Everything pushed, from the start: as bytes ([`Read`]) or value by value
    /// ([`SpillReader::read_next`]).
    pub fn into_reader(self) -> io::Result<SpillReader> {
        let source = match self.file {
            None => Source::Memory(io::Cursor::new(self.memory)),
            Some(file) => {
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                file.write_all(&self.memory)?;
                file.rewind()?;
                Source::File(BufReader::with_capacity(BUFFER, file))
            }
        };
        Ok(SpillReader {
            source,
            left: self.count,
        })
    }
}

/// A spill kept in an unnamed file ([`Spill::keep`]); cheap to clone, each reader reads it
/// from its start with positioned reads.
#[derive(Clone)]
pub struct KeptSpill {
    file: Arc<fs::File>,
    count: u64,
}

impl KeptSpill {
    /// Its values from the first.
    pub fn reader(&self) -> SpillReader {
        SpillReader {
            source: Source::Kept(BufReader::with_capacity(
                BUFFER,
                SharedFile::new(self.file.clone()),
            )),
            left: self.count,
        }
    }

    /// How many values it holds.
    pub fn count(&self) -> u64 {
        self.count
    }
}

enum Source {
    Memory(io::Cursor<Vec<u8>>),
    File(BufReader<fs::File>),
    Kept(BufReader<SharedFile>),
}

/// A spill read back.
pub struct SpillReader {
    source: Source,
    left: u64,
}

impl SpillReader {
    /// The next value, `None` after the last.
    pub fn read_next<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        crate::msgpack_read::read_value(self)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Read for SpillReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Source::Memory(cursor) => cursor.read(buffer),
            Source::File(file) => file.read(buffer),
            Source::Kept(file) => file.read(buffer),
        }
    }
}

impl BufRead for SpillReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &mut self.source {
            Source::Memory(cursor) => cursor.fill_buf(),
            Source::File(file) => file.fill_buf(),
            Source::Kept(file) => file.fill_buf(),
        }
    }

    fn consume(&mut self, amount: usize) {
        match &mut self.source {
            Source::Memory(cursor) => cursor.consume(amount),
            Source::File(file) => file.consume(amount),
            Source::Kept(file) => file.consume(amount),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_in_order_from_memory_and_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for (limit, named) in [(usize::MAX, true), (64, true), (64, false)] {
            let mut spill = if named {
                Spill::new(dir.path(), limit)
            } else {
                Spill::compact(dir.path(), limit)
            };
            let values: Vec<(String, u64)> =
                (0..1000).map(|i| (format!("path/{i}"), i * 7)).collect();
            for value in &values {
                spill.push(value).unwrap();
            }
            assert_eq!(spill.count(), 1000);
            assert_eq!(spill.on_disk(), limit == 64);
            let mut reader = spill.into_reader().unwrap();
            let mut back = Vec::new();
            while let Some(value) = reader.read_next::<(String, u64)>().unwrap() {
                back.push(value);
            }
            assert_eq!(back, values);
            // The temporary file has no name: nothing is left in the directory.
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_kept_spill_is_read_again_from_its_start_by_each_reader() {
        let dir = tempfile::tempdir().unwrap();
        for limit in [usize::MAX, 64] {
            let mut spill = Spill::compact(dir.path(), limit);
            for i in 0..500u32 {
                spill.push(&(format!("path/{i}"), i)).unwrap();
            }
            let kept = spill.keep().unwrap();
            let read = |reader: &mut SpillReader| {
                let mut back = Vec::new();
                while let Some(value) = reader.read_next::<(String, u32)>().unwrap() {
                    back.push(value);
                }
                back
            };
            let (mut first, mut second) = (kept.reader(), kept.clone().reader());
            assert_eq!(first.read_next::<(String, u32)>().unwrap().unwrap().1, 0);
            let all = read(&mut second);
            assert_eq!(all.len(), 500);
            assert_eq!(all[499], ("path/499".to_string(), 499));
            assert_eq!(
                read(&mut first).len(),
                499,
                "readers do not move each other"
            );
            assert_eq!(kept.count(), 500);
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn the_bytes_are_the_values_messagepack() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path(), 8);
        spill.push(&("a", 1u8)).unwrap();
        spill.push(&("b", 2u8)).unwrap();
        let bytes = spill.bytes();
        let mut all = Vec::new();
        spill.into_reader().unwrap().read_to_end(&mut all).unwrap();
        let mut expected = rmp_serde::to_vec_named(&("a", 1u8)).unwrap();
        expected.extend(rmp_serde::to_vec_named(&("b", 2u8)).unwrap());
        assert_eq!((all.len() as u64, all), (bytes, expected));
    }
}
