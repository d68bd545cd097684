//! The node's identity: an ECDSA P-256 key pair made at first start (`<data-dir>/node.key`,
//! 0600) and a self-signed certificate for it (`node.crt`), which the node presents on every
//! TLS connection, as server and as client.
//!
//! A key is named by its [`KeyFingerprint`], the SHA-256 of its SubjectPublicKeyInfo; people
//! compare it in its readable form (eight groups of seven base32 characters, with a check
//! character per quarter, like Syncthing's device ids). The node id, the UUID that names the
//! node in URLs, datagrams and records, is derived from that fingerprint (a version 8 UUID of
//! its first 16 bytes), so an id cannot be claimed without the key. A data dir from before
//! keys existed keeps its random UUID (`node-id`); peers bind such a legacy id to the first
//! key they see for it and refuse any other.

use std::fmt;
use std::path::Path;

use uuid::Uuid;

/// The private key file.
pub const KEY_FILE: &str = "node.key";
/// The certificate file.
pub const CERT_FILE: &str = "node.crt";
/// The legacy id file (data dirs made before node keys).
pub const LEGACY_ID_FILE: &str = "node-id";

/// Errors reading or creating the node's identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The legacy id file does not hold a UUID.
    #[error("{path}: `{content}` is not a node id (a UUID)")]
    Invalid {
        /// The id file.
        path: String,
        /// What it holds.
        content: String,
    },
    /// The key file holds no usable key.
    #[error("{path}: not a PEM private key this node can use ({message}); move it away to make a new identity")]
    BadKey {
        /// The key file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// Key or certificate generation failed.
    #[error("making the node's key or certificate: {0}")]
    Generate(String),
}

/// SHA-256 of a public key's DER SubjectPublicKeyInfo: what pins and trust name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyFingerprint(pub [u8; 32]);

impl KeyFingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> KeyFingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        KeyFingerprint(bytes)
    }

    /// The fingerprint of the key in a DER X.509 certificate.
    pub fn of_certificate(der: &[u8]) -> Result<KeyFingerprint, CertificateError> {
        Ok(KeyFingerprint::of_spki(spki_of_certificate(der)?))
    }

    /// The node id derived from this key: a version 8 UUID made of the first 16 bytes (122
    /// bits of the hash survive the version and variant bits).
    pub fn node_id(&self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.0[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Uuid::from_bytes(bytes)
    }

    /// Lower-case hex (64 characters), as announcements carry it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<KeyFingerprint> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(KeyFingerprint(bytes))
    }

    /// The readable form: base32 (RFC 4648 alphabet) of the 32 bytes, 52 characters, cut in
    /// four quarters of 13, each followed by its Luhn mod 32 check character, shown as eight
    /// groups of seven joined by `-`.
    pub fn to_readable(&self) -> String {
        let plain = base32(&self.0);
        let mut checked = String::with_capacity(56);
        for quarter in plain.as_bytes().chunks(13) {
            let quarter = std::str::from_utf8(quarter).expect("base32 is ascii");
            checked.push_str(quarter);
            checked.push(luhn32(quarter));
        }
        checked
            .as_bytes()
            .chunks(7)
            .map(|group| std::str::from_utf8(group).expect("ascii"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Parses the readable form (any case, with or without `-` and spaces), checking every
    /// check character, or 64 hex characters.
    pub fn parse(text: &str) -> Result<KeyFingerprint, KeyIdError> {
        let trimmed = text.trim();
        if let Some(fingerprint) = KeyFingerprint::from_hex(trimmed) {
            return Ok(fingerprint);
        }
        let compact: String = trimmed
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if compact.len() != 56 || !compact.bytes().all(|b| base32_value(b).is_some()) {
            return Err(KeyIdError::Shape(text.chars().take(80).collect()));
        }
        let mut plain = String::with_capacity(52);
        for (index, quarter) in compact.as_bytes().chunks(14).enumerate() {
            let quarter = std::str::from_utf8(quarter).expect("ascii");
            let (body, check) = quarter.split_at(13);
            if luhn32(body).to_string() != check {
                return Err(KeyIdError::Check {
                    group: index * 2 + 2,
                    id: text.chars().take(80).collect(),
                });
            }
            plain.push_str(body);
        }
        let bytes = unbase32(&plain).ok_or_else(|| KeyIdError::Shape(text.to_string()))?;
        Ok(KeyFingerprint(bytes))
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_readable())
    }
}

impl serde::Serialize for KeyFingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for KeyFingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyFingerprint::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected a key fingerprint (64 hex digits)"))
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({})", self.to_hex())
    }
}

/// Why a typed key id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyIdError {
    /// Not 56 base32 characters (or 64 hex).
    #[error("`{0}` is not a key id: expected eight groups of seven letters A-Z and digits 2-7 (as `aienv node` shows), or 64 hex characters")]
    Shape(String),
    /// A check character does not match: a typo.
    #[error("`{id}` has a typo: the check character ending group {group} does not match")]
    Check {
        /// The group (1-8) whose last character is the failed check.
        group: usize,
        /// What was typed.
        id: String,
    },
}

/// Whether `id` is of the derived kind (version 8), so it can be checked without a pin.
pub fn is_key_id(id: Uuid) -> bool {
    id.get_version_num() == 8
}

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct CertificateError(&'static str);

/// The DER SubjectPublicKeyInfo inside a DER X.509 certificate (RFC 5280 §4.1), with every
/// length checked against what is there.
pub fn spki_of_certificate(der: &[u8]) -> Result<&[u8], CertificateError> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(der_content(certificate)?, 0x30)?;
    let mut rest = der_content(tbs)?;
    // version [0] EXPLICIT is optional.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest, 0xa0)?.1;
    }
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        // serialNumber, signature, issuer, validity, subject
        rest = der_element(rest, tag)?.1;
    }
    Ok(der_element(rest, 0x30)?.0)
}

/// One DER element of `tag` at the start of `bytes`: (the whole element, what follows).
fn der_element(bytes: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertificateError> {
    if bytes.first() != Some(&tag) {
        return Err(CertificateError("unexpected element"));
    }
    let (header, length) = der_length(&bytes[1..])?;
    let end = 1usize
        .checked_add(header)
        .and_then(|n| n.checked_add(length))
        .ok_or(CertificateError("length overflows"))?;
    if end > bytes.len() {
        return Err(CertificateError("element runs past the end"));
    }
    Ok((&bytes[..end], &bytes[end..]))
}

/// The content of a DER element returned by [`der_element`].
fn der_content(element: &[u8]) -> Result<&[u8], CertificateError> {
    let (header, length) = der_length(&element[1..])?;
    Ok(&element[1 + header..1 + header + length])
}

/// (bytes of the length field, the length).
fn der_length(bytes: &[u8]) -> Result<(usize, usize), CertificateError> {
    let first = *bytes.first().ok_or(CertificateError("no length"))?;
    if first < 0x80 {
        return Ok((1, first as usize));
    }
    let count = (first & 0x7f) as usize;
    if count == 0 || count > 4 || bytes.len() < 1 + count {
        return Err(CertificateError("bad length"));
    }
    let length = bytes[1..=count]
        .iter()
        .fold(0usize, |n, b| (n << 8) | *b as usize);
    Ok((1 + count, length))
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_value(byte: u8) -> Option<u32> {
    BASE32.iter().position(|b| *b == byte).map(|p| p as u32)
}

fn base32(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(52);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | *byte as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<[u8; 32]> {
    let mut out = Vec::with_capacity(33);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        buffer = (buffer << 5) | base32_value(byte)?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // 52 characters carry 260 bits: the last 4 must be zero.
    if buffer != 0 {
        return None;
    }
    out.try_into().ok()
}

/// Luhn mod 32 over base32 characters: from the left, factors 1, 2, 1, 2, …; each product
/// folded as `p / 32 + p % 32`; the check value makes the sum divisible by 32.
fn luhn32(text: &str) -> char {
    let mut factor = 1;
    let mut sum = 0;
    for byte in text.bytes() {
        let product = factor * base32_value(byte).expect("base32 input");
        factor = if factor == 2 { 1 } else { 2 };
        sum += product / 32 + product % 32;
    }
    BASE32[((32 - sum % 32) % 32) as usize] as char
}

/// The node's key, certificate and id.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The node id (derived from the key, or a legacy UUID).
    pub id: Uuid,
    /// The key's fingerprint: what peers pin and people compare.
    pub key: KeyFingerprint,
    /// Whether `id` is a legacy UUID kept from before keys.
    pub legacy_id: bool,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The self-signed certificate, DER.
    pub cert_der: Vec<u8>,
    /// SHA-256 of the certificate (what browsers show for it), colon-separated hex.
    pub cert_sha256: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("legacy_id", &self.legacy_id)
            .finish_non_exhaustive()
    }
}

/// Reads the node's identity from `data_dir`, making the key and certificate at first start.
/// `name` goes into a new certificate's subject.
pub fn load_or_create(data_dir: &Path, name: &str) -> Result<NodeIdentity, IdentityError> {
    let key_path = data_dir.join(KEY_FILE);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| IdentityError::Io {
            path: path.clone(),
            source,
        }
    };
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|error| IdentityError::BadKey {
            path: key_path.display().to_string(),
            message: error.to_string(),
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate()
                .map_err(|error| IdentityError::Generate(error.to_string()))?;
            crate::fsio::write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(io(&key_path))?;
            key
        }
        Err(error) => return Err(io(&key_path)(error)),
    };
    let fingerprint = KeyFingerprint::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key));

    let cert_path = data_dir.join(CERT_FILE);
    let existing = std::fs::read_to_string(&cert_path)
        .ok()
        .and_then(|text| pem::parse(text).ok())
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| block.into_contents())
        .filter(|der| KeyFingerprint::of_certificate(der).ok() == Some(fingerprint));
    let cert_der = match existing {
        Some(der) => der,
        None => {
            let der = self_signed(&key, name)?;
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
            crate::fsio::write_private(&cert_path, pem.as_bytes()).map_err(io(&cert_path))?;
            der
        }
    };

    let legacy_path = data_dir.join(LEGACY_ID_FILE);
    let (id, legacy_id) = match std::fs::read_to_string(&legacy_path) {
        Ok(text) => {
            let id = Uuid::parse_str(text.trim()).map_err(|_| IdentityError::Invalid {
                path: legacy_path.display().to_string(),
                content: text.trim().chars().take(64).collect(),
            })?;
            (id, true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            (fingerprint.node_id(), false)
        }
        Err(error) => return Err(io(&legacy_path)(error)),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &cert_der);
    Ok(NodeIdentity {
        id,
        key: fingerprint,
        legacy_id,
        key_der: key.serialize_der(),
        cert_der,
        cert_sha256: digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    })
}

fn self_signed(key: &rcgen::KeyPair, name: &str) -> Result<Vec<u8>, IdentityError> {
    let generate = |error: rcgen::Error| IdentityError::Generate(error.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("aienv node {name}"));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    // The key, not the certificate, is the identity: a long validity spares renewals that
    // would change what browsers remember.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let certificate = params.self_signed(key).map_err(generate)?;
    Ok(certificate.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_form_round_trips_and_catches_typos() {
        let key = KeyFingerprint([7u8; 32]);
        let readable = key.to_readable();
        assert_eq!(readable.len(), 63, "{readable}");
        assert_eq!(readable.split('-').count(), 8);
        assert_eq!(KeyFingerprint::parse(&readable).unwrap(), key);
        assert_eq!(
            KeyFingerprint::parse(&readable.to_lowercase().replace('-', " ")).unwrap(),
            key
        );
        assert_eq!(KeyFingerprint::parse(&key.to_hex()).unwrap(), key);
        // One changed character anywhere is caught by its quarter's check character.
        for at in (0..readable.len()).filter(|i| readable.as_bytes()[*i] != b'-') {
            let mut typo = readable.clone().into_bytes();
            typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(typo).unwrap();
            assert!(KeyFingerprint::parse(&typo).is_err(), "{typo}");
        }
        assert!(matches!(
            KeyFingerprint::parse("not-an-id"),
            Err(KeyIdError::Shape(_))
        ));
    }

    /// The vector in `schemas/identity.md`.
    #[test]
    fn spec_vector() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let key = KeyFingerprint(bytes);
        assert_eq!(
            key.to_readable(),
            "AAAQEAY-EAUDAOB-CAJBIFQ-YDIOB4B-IBCEQTC-QKRMFYX-YDENBWH-A5DYPQG"
        );
        assert_eq!(
            key.node_id().to_string(),
            "00010203-0405-8607-8809-0a0b0c0d0e0f"
        );
    }

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "alpha").unwrap();
        assert!(!first.legacy_id);
        assert_eq!(first.id, first.key.node_id());
        assert!(is_key_id(first.id));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(
            KeyFingerprint::of_certificate(&first.cert_der).unwrap(),
            first.key
        );
        let again = load_or_create(dir.path(), "alpha").unwrap();
        assert_eq!((again.id, again.key), (first.id, first.key));
        assert_eq!(again.cert_der, first.cert_der);
    }

    #[test]
    fn a_legacy_data_dir_keeps_its_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = Uuid::new_v4();
        std::fs::write(dir.path().join(LEGACY_ID_FILE), format!("{legacy}\n")).unwrap();
        let identity = load_or_create(dir.path(), "old").unwrap();
        assert_eq!(identity.id, legacy);
        assert!(identity.legacy_id);
        assert!(!is_key_id(identity.id));
    }

    #[test]
    fn certificate_parsing_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let identity = load_or_create(dir.path(), "x").unwrap();
        let der = &identity.cert_der;
        for cut in 0..der.len() {
            let _ = spki_of_certificate(&der[..cut]);
        }
        assert!(spki_of_certificate(&der[..der.len() / 2]).is_err());
        assert!(spki_of_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
