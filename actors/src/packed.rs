//! MessagePack documents in a zstd frame: how snapshots, snapshot deltas and pushes travel
//! (`schemas/transfer.md`) and how a node keeps them on disk.
//!
//! Both directions stream: a document is never held whole as MessagePack beside its value.
//! At 200,000 files a snapshot is about 33 MB of MessagePack and 7 MB compressed; building
//! the MessagePack first and compressing it after held both at the node's peak.

use std::io::{self, BufReader, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::snapshot::{SnapshotError, SnapshotLimits};

/// zstd level of every document. Documents are mostly hashes, which do not compress: what
/// does is their field names and paths, and zstd's first fast level (-1) finds nearly as
/// much as level 1 at 1.35 × its speed (the transfer benchmark's 200,000-file snapshot:
/// 7.4 MB against 7.3 MB; a synthetic one 7.55 against 7.59 MB).
const LEVEL: i32 = -1;

/// What `rmp_serde` reads or writes at a time is often one byte: it goes through a buffer.
const BUFFER: usize = 64 * 1024;

/// Writes `value` as one zstd frame of named-field MessagePack to `out`.
///
/// The frame states its decompressed size (a first, counting pass): decoders that size
/// their output from the frame header (Python's `zstandard`, `zstd -d` to memory) read it
/// as they read a frame compressed in one call.
pub fn write<T: Serialize>(value: &T, out: impl Write) -> io::Result<()> {
    let mut counter = Counter(0);
    rmp_serde::encode::write_named(&mut counter, value).map_err(io::Error::other)?;
    write_raw(counter.0, out, |compressor| {
        rmp_serde::encode::write_named(compressor, value).map_err(io::Error::other)
    })
}

/// Writes one zstd frame, framed as [`write`] frames a document, of the `size` bytes that
/// `fill` writes (a document whose size is known without a counting pass).
pub fn write_raw(
    size: u64,
    out: impl Write,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    encoder.set_pledged_src_size(Some(size))?;
    encoder.include_contentsize(true)?;
    encoder.include_checksum(false)?;
    // The compressor takes its input in pieces of its own block size anyway.
    let mut buffered = io::BufWriter::with_capacity(BUFFER, &mut encoder);
    fill(&mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    encoder.finish()?.flush()
}

/// [`write`] into memory.
pub fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out).expect("documents always encode into memory");
    out
}

/// Reads one document of `encoded_len` compressed bytes from `input`, within `limits`
/// (compressed and decompressed size). `what` names it in errors ("a snapshot").
pub fn read<T: DeserializeOwned>(
    input: impl Read,
    encoded_len: u64,
    limits: &SnapshotLimits,
    what: &str,
) -> Result<T, SnapshotError> {
    read_with(input, encoded_len, limits, what, |decompressed| {
        rmp_serde::from_read(decompressed)
    })
}

/// [`read`] through `decode`, which reads the decompressed MessagePack from the reader it is
/// given (a document decoded as it streams, rather than into one value).
pub fn read_with<T>(
    input: impl Read,
    encoded_len: u64,
    limits: &SnapshotLimits,
    what: &str,
    decode: impl FnOnce(&mut dyn Read) -> Result<T, rmp_serde::decode::Error>,
) -> Result<T, SnapshotError> {
    if encoded_len > limits.max_encoded_bytes {
        return Err(SnapshotError::TooLarge(format!(
            "body is {encoded_len} bytes, more than the limit of {}",
            limits.max_encoded_bytes
        )));
    }
    let decoder = zstd::stream::read::Decoder::new(input)
        .map_err(|e| SnapshotError::Malformed(format!("not zstd: {e}")))?;
    let mut bounded = Bounded {
        inner: decoder,
        left: limits.max_decoded_bytes,
        exceeded: false,
    };
    let result = decode(&mut BufReader::with_capacity(BUFFER, &mut bounded));
    if bounded.exceeded {
        return Err(SnapshotError::TooLarge(format!(
            "body decodes to more than {} bytes",
            limits.max_decoded_bytes
        )));
    }
    result.map_err(|e| SnapshotError::Malformed(format!("not {what}: {e}")))
}

/// [`read`] from memory.
pub fn from_slice<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &SnapshotLimits,
    what: &str,
) -> Result<T, SnapshotError> {
    read(bytes, bytes.len() as u64, limits, what)
}

/// [`read`] from the file at `path`.
pub fn read_file<T: DeserializeOwned>(
    path: &std::path::Path,
    limits: &SnapshotLimits,
    what: &str,
) -> Result<T, ReadFileError> {
    let file = std::fs::File::open(path).map_err(ReadFileError::Io)?;
    let len = file.metadata().map_err(ReadFileError::Io)?.len();
    read(file, len, limits, what).map_err(ReadFileError::Document)
}

/// Why a kept document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// Missing or unreadable.
    #[error(transparent)]
    Io(io::Error),
    /// Read, but not a valid document.
    #[error(transparent)]
    Document(SnapshotError),
}

/// Counts what is written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that fails, and says so, past `left` bytes.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed tells "exactly at the limit" from "past it".
        let want = buffer
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buffer[..want])?;
        if read as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::other("over the decoded size limit"));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Doc {
        name: String,
        items: Vec<u64>,
    }

    fn doc(items: u64) -> Doc {
        Doc {
            name: "weights".into(),
            items: (0..items).collect(),
        }
    }

    #[test]
    fn documents_round_trip_and_state_their_size_like_a_one_call_frame() {
        let value = doc(100_000);
        let bytes = to_vec(&value);
        let packed = rmp_serde::to_vec_named(&value).unwrap();
        // The frame header states the decompressed size, so one-call decoders read it.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&bytes).ok(),
            Some(Some(packed.len() as u64))
        );
        assert_eq!(
            zstd::bulk::decompress(&bytes, packed.len()).unwrap(),
            packed
        );
        let limits = SnapshotLimits::default();
        assert_eq!(from_slice::<Doc>(&bytes, &limits, "a doc").unwrap(), value);
        // And a frame compressed in one call (another implementation's) reads the same.
        let other = zstd::bulk::compress(&packed, 3).unwrap();
        assert_eq!(from_slice::<Doc>(&other, &limits, "a doc").unwrap(), value);
    }

    #[test]
    fn limits_are_named_before_and_while_decoding() {
        let value = doc(10_000);
        let bytes = to_vec(&value);
        let decoded = rmp_serde::to_vec_named(&value).unwrap().len() as u64;
        let mut limits = SnapshotLimits {
            max_encoded_bytes: bytes.len() as u64 - 1,
            ..SnapshotLimits::default()
        };
        let error = from_slice::<Doc>(&bytes, &limits, "a doc").unwrap_err();
        assert!(matches!(error, SnapshotError::TooLarge(ref m) if m.contains("body is")));
        limits.max_encoded_bytes = bytes.len() as u64;
        limits.max_decoded_bytes = decoded - 1;
        let error = from_slice::<Doc>(&bytes, &limits, "a doc").unwrap_err();
        assert!(matches!(error, SnapshotError::TooLarge(ref m) if m.contains("decodes to")));
        // Exactly at the limit is within it.
        limits.max_decoded_bytes = decoded;
        assert_eq!(from_slice::<Doc>(&bytes, &limits, "a doc").unwrap(), value);
    }

    #[test]
    fn garbage_and_cut_frames_are_malformed_and_named() {
        let limits = SnapshotLimits::default();
        let error = from_slice::<Doc>(b"garbage", &limits, "a doc").unwrap_err();
        assert!(
            matches!(error, SnapshotError::Malformed(ref m) if m.contains("zstd") || m.contains("a doc")),
            "{error}"
        );
        let bytes = to_vec(&doc(10_000));
        let error = from_slice::<Doc>(&bytes[..bytes.len() / 2], &limits, "a doc").unwrap_err();
        assert!(matches!(error, SnapshotError::Malformed(_)), "{error}");
        // A valid frame of something else.
        let other = to_vec(&vec![1u8, 2, 3]);
        let error = from_slice::<Doc>(&other, &limits, "a doc").unwrap_err();
        assert!(
            matches!(error, SnapshotError::Malformed(ref m) if m.contains("not a doc")),
            "{error}"
        );
    }
}
