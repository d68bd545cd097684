//! Discovery datagram format v1 (the protocol; `schemas/discovery.md` is its prose spec).
//!
//! ```text
//! 0      4        5      6
//! +------+--------+------+-------------------------------------------+
//! | AIEV | version| flags| body: MessagePack map (zstd if flags & 1)  |
//! +------+--------+------+-------------------------------------------+
//! ```
//! At most [`MAX_DATAGRAM`] bytes. Flags: bit 0 body is zstd-compressed, bit 1 goodbye; other
//! bits must be zero. Decoding never panics and bounds every length.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::resources::Gpu;

/// Magic bytes at the start of every datagram.
pub const MAGIC: &[u8; 4] = b"AIEV";
/// Format version written and read by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1400;
/// Body is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0b01;
/// The sender is leaving.
pub const FLAG_GOODBYE: u8 = 0b10;
/// The application protocol version this node speaks (REST API major version).
pub const PROTOCOL_VERSION: u32 = 1;

const HEADER: usize = 6;
/// Largest decompressed body accepted.
const MAX_BODY: usize = 8 * 1024;
const MAX_NAME: usize = 64;
const MAX_GPUS: usize = 16;
const MAX_TEXT: usize = 128;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "aienv discovery datagram body v1")]
pub struct Announcement {
    /// The node's id: 16 raw bytes on the wire (MessagePack bin 8); its text form is read too.
    #[serde(deserialize_with = "crate::uuid_wire::deserialize")]
    pub node_id: Uuid,
    /// Random per process start; with `seq` it tells replays from restarts.
    pub instance: u64,
    /// The node's name.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub name: String,
    /// Port of its REST API.
    #[schemars(range(min = 1))]
    pub http_port: u16,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// SHA-256 of its key's DER SubjectPublicKeyInfo, 64 lower-case hex digits: the key its
    /// TLS certificate must carry. Receivers ignore announcements without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub tls_fingerprint: Option<String>,
    /// Application protocol version (REST API major version).
    pub protocol_version: u32,
    /// Digest of its shared catalog; peers fetch `GET /api/v1/catalog` when it changes.
    /// Opaque: receivers only compare it.
    #[schemars(length(max = 128), regex(pattern = r"^[0-9a-fA-F]*$"))]
    pub catalog_digest: String,
    /// Number of shared workspaces.
    pub shared_workspaces: u32,
    /// What the host offers.
    pub resources: ResourceSummary,
    /// Environments running now.
    pub running_environments: u32,
    /// Strictly increasing per `instance`.
    pub seq: u64,
    /// Seconds since the node started.
    pub uptime_seconds: u64,
}

/// URL scheme of a node's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The resource summary carried in announcements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSummary {
    /// Logical CPU cores.
    pub cpu_cores: u32,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Available memory, bytes.
    pub memory_available: u64,
    /// Free disk in the data dir, bytes.
    pub disk_free: u64,
    /// GPUs (at most 16).
    #[schemars(length(max = 16))]
    pub gpus: Vec<Gpu>,
    /// Operating system (at most 128 bytes).
    #[schemars(length(max = 128))]
    pub os: String,
    /// CPU architecture (at most 128 bytes).
    #[schemars(length(max = 128))]
    pub arch: String,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender is leaving.
    pub goodbye: bool,
    /// What it says.
    pub announcement: Announcement,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds {MAX_DATAGRAM}")]
    Oversized(usize),
    /// Shorter than the header or without the magic bytes.
    #[error("not an aienv datagram")]
    NotOurs,
    /// A format version this build does not read.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// Reserved flag bits set.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The body could not be decompressed or decoded, or a field is out of bounds.
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Encodes a datagram; compresses the body when that is needed to fit. Fails only if even
/// the compressed body is too large (the caller then trims the GPU list).
pub fn encode(datagram: &Datagram) -> Result<Vec<u8>, DecodeError> {
    let body = rmp_serde::to_vec_named(&datagram.announcement).expect("announcements encode");
    let mut flags = if datagram.goodbye { FLAG_GOODBYE } else { 0 };
    let body = if HEADER + body.len() <= MAX_DATAGRAM {
        body
    } else {
        flags |= FLAG_ZSTD;
        zstd::bulk::compress(&body, 19).map_err(|e| DecodeError::Malformed(e.to_string()))?
    };
    if HEADER + body.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized(HEADER + body.len()));
    }
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.push(flags);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Decodes and validates a datagram. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Datagram, DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized(bytes.len()));
    }
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[4]));
    }
    let flags = bytes[5];
    if flags & !(FLAG_ZSTD | FLAG_GOODBYE) != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let body = &bytes[HEADER..];
    let decompressed;
    let body = if flags & FLAG_ZSTD != 0 {
        decompressed = zstd::bulk::decompress(body, MAX_BODY)
            .map_err(|e| DecodeError::Malformed(format!("zstd: {e}")))?;
        &decompressed[..]
    } else {
        body
    };
    let announcement: Announcement =
        rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    validate(&announcement)?;
    Ok(Datagram {
        goodbye: flags & FLAG_GOODBYE != 0,
        announcement,
    })
}

fn validate(announcement: &Announcement) -> Result<(), DecodeError> {
    let bad = |what: &str| Err(DecodeError::Malformed(what.to_string()));
    let name = &announcement.name;
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return bad("node name is empty, too long or has control characters");
    }
    if announcement.http_port == 0 {
        return bad("http_port is 0");
    }
    if announcement.catalog_digest.len() > MAX_TEXT
        || !announcement
            .catalog_digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
    {
        return bad("catalog_digest is not hex");
    }
    if announcement.tls_fingerprint.as_ref().is_some_and(|f| {
        f.len() != 64
            || !f
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }) {
        return bad("tls_fingerprint is not 64 lower-case hex digits");
    }
    let resources = &announcement.resources;
    if resources.gpus.len() > MAX_GPUS {
        return bad("more than 16 GPUs");
    }
    let texts = [resources.os.as_str(), resources.arch.as_str()]
        .into_iter()
        .chain(
            resources
                .gpus
                .iter()
                .flat_map(|g| [g.vendor.as_str(), g.model.as_str()]),
        );
    for text in texts {
        if text.len() > MAX_TEXT || text.chars().any(char::is_control) {
            return bad("a resource text is too long or has control characters");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(gpus: usize) -> Datagram {
        Datagram {
            goodbye: false,
            announcement: Announcement {
                node_id: Uuid::from_u128(0x1234),
                instance: 7,
                name: "gpu-box-1".into(),
                http_port: 37778,
                scheme: Scheme::Http,
                tls_fingerprint: None,
                protocol_version: PROTOCOL_VERSION,
                catalog_digest: "0123456789abcdef0123456789abcdef".into(),
                shared_workspaces: 1000,
                resources: ResourceSummary {
                    cpu_cores: 96,
                    memory_total: 1 << 40,
                    memory_available: 1 << 39,
                    disk_free: 1 << 42,
                    gpus: (0..gpus)
                        .map(|i| Gpu {
                            vendor: "nvidia".into(),
                            model: format!("NVIDIA H200 #{i}"),
                            memory: 141 << 30,
                        })
                        .collect(),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                },
                running_environments: 3,
                seq: 42,
                uptime_seconds: 3600,
            },
        }
    }

    #[test]
    fn round_trip_and_size() {
        for gpus in [0, 1, 8, 16] {
            let datagram = sample(gpus);
            let bytes = encode(&datagram).unwrap();
            assert!(
                bytes.len() <= MAX_DATAGRAM,
                "{gpus} GPUs: {} bytes",
                bytes.len()
            );
            assert_eq!(decode(&bytes).unwrap(), datagram);
        }
        let mut goodbye = sample(0);
        goodbye.goodbye = true;
        assert!(decode(&encode(&goodbye).unwrap()).unwrap().goodbye);
    }

    #[test]
    fn table_of_bad_datagrams() {
        let good = encode(&sample(1)).unwrap();
        let mut wrong_version = good.clone();
        wrong_version[4] = 2;
        let mut wrong_flags = good.clone();
        wrong_flags[5] = 0x80;
        let mut lying_zstd = good.clone();
        lying_zstd[5] |= FLAG_ZSTD;
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("empty", vec![], DecodeError::NotOurs),
            (
                "other protocol",
                b"M-SEARCH * HTTP/1.1\r\n".to_vec(),
                DecodeError::NotOurs,
            ),
            (
                "oversized",
                vec![0; MAX_DATAGRAM + 1],
                DecodeError::Oversized(MAX_DATAGRAM + 1),
            ),
            ("version", wrong_version, DecodeError::UnknownVersion(2)),
            ("flags", wrong_flags, DecodeError::UnknownFlags(0x80)),
        ];
        for (label, bytes, expected) in cases {
            assert_eq!(decode(&bytes).unwrap_err(), expected, "{label}");
        }
        assert!(matches!(
            decode(&lying_zstd),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&good[..good.len() - 3]),
            Err(DecodeError::Malformed(_))
        ));
        let mut bad_name = sample(0);
        bad_name.announcement.name = "x\u{7}".into();
        assert!(matches!(
            decode(&encode(&bad_name).unwrap()),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// `node_id` goes out as 16 raw bytes (MessagePack bin 8); a UUID string is read too.
    #[test]
    fn node_ids_as_bytes_or_strings() {
        let datagram = sample(1);
        let bytes = encode(&datagram).unwrap();
        let id = datagram.announcement.node_id;
        let mut marker = vec![0xc4, 16];
        marker.extend_from_slice(id.as_bytes());
        assert!(
            bytes.windows(18).any(|w| w == marker.as_slice()),
            "node_id is not a bin 8 of 16 bytes"
        );
        let as_text = serde_json::to_value(&datagram.announcement).unwrap();
        assert_eq!(as_text["node_id"], id.to_string());
        let mut text_datagram = MAGIC.to_vec();
        text_datagram.extend_from_slice(&[1, 0]);
        text_datagram.extend_from_slice(&rmp_serde::to_vec_named(&as_text).unwrap());
        assert_eq!(decode(&text_datagram).unwrap().announcement.node_id, id);
    }

    /// Property: no byte string makes the decoder panic; mutations of valid datagrams either
    /// decode to something valid or are refused. Seeded, so failures reproduce.
    #[test]
    fn decoder_never_panics() {
        let mut next = crate::test_random(0x9e37_79b9_7f4a_7c15);
        let valid = [encode(&sample(0)).unwrap(), encode(&sample(16)).unwrap()];
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                valid[round % 4 / 2].clone()
            } else {
                let len = (next() % 1500) as usize;
                let mut random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len >= 6 && next().is_multiple_of(2) {
                    random[..4].copy_from_slice(MAGIC);
                    random[4] = FORMAT_VERSION;
                    random[5] = (next() % 4) as u8;
                }
                random
            };
            for _ in 0..(next() % 8) {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
            }
            if let Ok(datagram) = decode(&bytes) {
                assert!(validate(&datagram.announcement).is_ok());
            }
        }
    }
}
