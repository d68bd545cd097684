//! Chunk frames: the body of the batched chunk endpoint (spec: `schemas/transfer.md`).
//!
//! A request names chunks by hash (32 bytes each, concatenated). The answer is one frame per
//! requested hash, in request order:
//!
//! ```text
//! kind u8 | hash [32] | raw_len u32 LE | payload_len u32 LE | payload
//! ```
//!
//! `kind` is 0 (raw bytes), 1 (zstd-compressed) or 2 (missing: the server no longer has
//! the chunk as hashed, payload empty). [`FrameDecoder`] parses frames from arbitrary slices
//! of a byte stream and bounds every length before allocating.
//!
//! Each byte of a chunk is copied once on either side outside the kernel and TLS: the server
//! reads a chunk straight into its place behind the frame header ([`Frame::encode_with`]),
//! and the decoder hands out frames as slices of the one buffer received bytes are gathered in.

use bytes::{Bytes, BytesMut};

use crate::snapshot::{Hash, CHUNK_MAX};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 1 + 32 + 4 + 4;
/// Most hashes in one request.
pub const MAX_BATCH: usize = 4096;

/// How a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The bytes as they are (incompressible, or compression not asked for).
    Raw,
    /// zstd-compressed.
    Zstd,
    /// The server cannot serve this chunk (its file changed); ask another source.
    Missing,
}

/// One decoded frame, still unverified.
#[derive(Debug, Clone)]
pub struct Frame {
    /// How the payload is encoded.
    pub kind: FrameKind,
    /// The hash the server says this is.
    pub hash: Hash,
    /// Length after decoding.
    pub raw_len: u32,
    /// The payload as received.
    pub payload: Bytes,
}

/// Why a frame stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Unknown frame kind.
    #[error("chunk frame with unknown kind {0}")]
    UnknownKind(u8),
    /// A length over the bounds.
    #[error("chunk frame for {hash:?} has lengths {raw_len}/{payload_len} over the bounds")]
    TooLong {
        /// Hash in the header.
        hash: Hash,
        /// Declared decoded length.
        raw_len: u32,
        /// Declared payload length.
        payload_len: u32,
    },
    /// The payload does not decode to the declared length.
    #[error("chunk {0:?} does not decompress to its declared length")]
    BadPayload(Hash),
    /// The stream ended inside a frame.
    #[error("chunk stream ended inside a frame")]
    Truncated,
}

impl Frame {
    /// Appends a frame for `data` to `out`, compressed with zstd `level` when that saves at
    /// least 1/16 (incompressible chunks go raw, sparing the receiver a decompression).
    pub fn encode(out: &mut Vec<u8>, hash: Hash, data: &[u8], level: Option<i32>) {
        out.reserve(HEADER_LEN + data.len());
        Frame::encode_with(out, hash, level, |out| {
            out.extend_from_slice(data);
            true
        });
    }

    /// Appends a frame for the chunk that `fill` appends to `out`, right behind the room left
    /// for the header (a server reads the chunk straight into place); a `missing` frame when
    /// `fill` says it has no such chunk, whatever it appended.
    pub fn encode_with(
        out: &mut Vec<u8>,
        hash: Hash,
        level: Option<i32>,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        if fill(out) {
            Frame::finish(out, start, hash, level);
        } else {
            out.truncate(start);
            Frame::encode_missing(out, hash);
        }
    }

    /// Makes a frame of the chunk at `out[start + HEADER_LEN..]`: writes the header at `start`
    /// and compresses the chunk in place when `level` is set and that saves at least 1/16.
    fn finish(out: &mut Vec<u8>, start: usize, hash: Hash, level: Option<i32>) {
        let data_at = start + HEADER_LEN;
        let raw_len = out.len() - data_at;
        let compressed = level
            .and_then(|level| zstd::bulk::compress(&out[data_at..], level).ok())
            .filter(|c| c.len() < raw_len - raw_len / 16);
        let kind = match compressed {
            Some(compressed) => {
                out.truncate(data_at);
                out.extend_from_slice(&compressed);
                1u8
            }
            None => 0u8,
        };
        let payload_len = out.len() - data_at;
        let header = &mut out[start..data_at];
        header[0] = kind;
        header[1..33].copy_from_slice(&hash.0);
        header[33..37].copy_from_slice(&(raw_len as u32).to_le_bytes());
        header[37..41].copy_from_slice(&(payload_len as u32).to_le_bytes());
    }

    /// Appends a `missing` frame.
    pub fn encode_missing(out: &mut Vec<u8>, hash: Hash) {
        out.push(2);
        out.extend_from_slice(&hash.0);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }

    /// The chunk's bytes (decompressed); not yet checked against the hash.
    pub fn into_data(self) -> Result<Bytes, FrameError> {
        match self.kind {
            FrameKind::Raw => Ok(self.payload),
            FrameKind::Zstd => {
                let data = zstd::bulk::decompress(&self.payload, self.raw_len as usize)
                    .map_err(|_| FrameError::BadPayload(self.hash))?;
                if data.len() != self.raw_len as usize {
                    return Err(FrameError::BadPayload(self.hash));
                }
                Ok(Bytes::from(data))
            }
            FrameKind::Missing => Ok(Bytes::new()),
        }
    }
}

/// Incremental frame parser over a byte stream.
#[derive(Default)]
pub struct FrameDecoder {
    /// Received bytes not yet handed out; a frame is split off its front without copying.
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = match self.buffer[0] {
            0 => FrameKind::Raw,
            1 => FrameKind::Zstd,
            2 => FrameKind::Missing,
            other => return Err(FrameError::UnknownKind(other)),
        };
        let hash = Hash(self.buffer[1..33].try_into().expect("32 bytes"));
        let raw_len = u32::from_le_bytes(self.buffer[33..37].try_into().expect("4 bytes"));
        let payload_len = u32::from_le_bytes(self.buffer[37..41].try_into().expect("4 bytes"));
        let bounded = match kind {
            FrameKind::Raw => raw_len <= CHUNK_MAX && payload_len == raw_len,
            FrameKind::Zstd => {
                raw_len <= CHUNK_MAX
                    && payload_len as usize <= zstd::zstd_safe::compress_bound(raw_len as usize)
            }
            FrameKind::Missing => raw_len == 0 && payload_len == 0,
        };
        if !bounded {
            return Err(FrameError::TooLong {
                hash,
                raw_len,
                payload_len,
            });
        }
        let end = HEADER_LEN + payload_len as usize;
        if self.buffer.len() < end {
            // Room for the whole frame (bounded above), so it is gathered without regrowing.
            self.buffer.reserve(end - self.buffer.len());
            return Ok(None);
        }
        let payload = self.buffer.split_to(end).freeze().slice(HEADER_LEN..);
        Ok(Some(Frame {
            kind,
            hash,
            raw_len,
            payload,
        }))
    }

    /// Fails if the stream ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// The most bytes a well-formed answer for `chunks` hashes can take (every chunk at the
/// largest size, compressed at zstd's worst): receivers stop reading beyond it.
pub fn max_response_len(chunks: usize) -> usize {
    chunks * (HEADER_LEN + zstd::zstd_safe::compress_bound(CHUNK_MAX as usize))
}

/// Parses a request body of concatenated hashes.
pub fn parse_request(body: &[u8]) -> Result<Vec<Hash>, String> {
    parse_hashes(body, MAX_BATCH, "chunks")
}

/// Parses a body of 1 to `max` concatenated chunk hashes; `what` names them in the error.
pub fn parse_hashes(body: &[u8], max: usize, what: &str) -> Result<Vec<Hash>, String> {
    if !body.len().is_multiple_of(32) {
        return Err(format!(
            "the body is {} bytes, not a multiple of 32 (one BLAKE3 hash per chunk)",
            body.len()
        ));
    }
    let count = body.len() / 32;
    if count == 0 || count > max {
        return Err(format!("ask for 1 to {max} {what}, not {count}"));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| Hash(c.try_into().expect("32 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_any_slicing() {
        let compressible = vec![7u8; 100_000];
        let mut next = crate::test_random(0x9e37_79b9_7f4a_7c15);
        let random: Vec<u8> = (0..50_000).map(|_| (next() >> 32) as u8).collect();
        let mut stream = Vec::new();
        Frame::encode(&mut stream, Hash::of(&compressible), &compressible, Some(1));
        Frame::encode(&mut stream, Hash::of(&random), &random, Some(1));
        Frame::encode_missing(&mut stream, Hash::of(b"gone"));
        for step in [1, 7, 4096, stream.len()] {
            let mut decoder = FrameDecoder::default();
            let mut frames = Vec::new();
            for piece in stream.chunks(step) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[0].kind, FrameKind::Zstd);
            assert_eq!(frames[1].kind, FrameKind::Raw, "incompressible goes raw");
            assert_eq!(frames[2].kind, FrameKind::Missing);
            assert_eq!(frames[0].clone().into_data().unwrap(), compressible);
            assert_eq!(frames[1].clone().into_data().unwrap(), random);
        }
    }

    #[test]
    fn hostile_frames_are_refused_before_allocating() {
        let mut header = vec![0u8];
        header.extend_from_slice(&[0; 32]);
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut decoder = FrameDecoder::default();
        decoder.push(&header);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLong { .. })
        ));
        let mut decoder = FrameDecoder::default();
        decoder.push(&[9; HEADER_LEN]);
        assert_eq!(
            decoder.next_frame().unwrap_err(),
            FrameError::UnknownKind(9)
        );
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0; 10]);
        assert!(decoder.next_frame().unwrap().is_none());
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));
        assert!(parse_request(&[0; 33]).is_err());
        assert!(parse_request(&[]).is_err());
        assert_eq!(parse_request(&[1; 64]).unwrap().len(), 2);
    }
}
