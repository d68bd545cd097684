//! UUIDs in MessagePack bodies (discovery datagrams, snapshots): sent as 16 raw bytes
//! (`bin 8`, RFC 9562 byte order), read from those bytes or from the 36-character text form,
//! so an implementation that follows the JSON Schema's `format: uuid` interoperates.

use serde::de::{self, Deserializer, Visitor};
use uuid::Uuid;

/// Reads a UUID from 16 bytes or its text form.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
    struct Id;
    impl Visitor<'_> for Id {
        type Value = Uuid;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a UUID: 16 bytes, or its text form")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Uuid, E> {
            Uuid::from_slice(bytes).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Uuid, E> {
            Uuid::parse_str(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Id)
}
