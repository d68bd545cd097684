//! What this node remembers of its peers' keys: the key pinned for each node id (the first
//! one seen wins, and no later one replaces it) and the peers a person trusts. Two sled trees
//! in the node's database (`peer_keys`: id → key, `trusted_peers`: id → [`TrustedPeer`] as
//! MessagePack), handed to the registry at start; the registry is their only reader and
//! writer, and every change is flushed before it is acknowledged.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::{self, KeyFingerprint};

/// Most pins kept: a flood of made-up nodes must not grow the database without bound.
pub const MAX_PINS: usize = 16_384;

/// A peer a person decided to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPeer {
    /// Its node id.
    pub id: Uuid,
    /// Its key: trust follows the key, so another key under the same id is not trusted.
    pub key: KeyFingerprint,
    /// Its name when it was trusted: what `sharing.peers` may list, fixed here because a
    /// peer's announced name is only its own word.
    pub name: String,
    /// When.
    pub since: DateTime<Utc>,
    /// Who decided (user name, or `pairing`).
    pub by: String,
}

/// Errors of the key book.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyBookError {
    /// The database failed.
    #[error("peer key database: {0}")]
    Database(#[from] sled::Error),
    /// A stored record could not be read.
    #[error("peer key database: unreadable record for {0}")]
    Corrupt(String),
}

/// What a presented key means for a node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key pinned for the id.
    Pinned,
    /// No key was pinned for the id and this one may be (derived from it, or a legacy id
    /// seen for the first time).
    New,
    /// Another key: refused. `expected` is the pinned key, if any (none for a derived id
    /// whose key does not derive it).
    Conflict {
        /// The key the id belongs to, when known.
        expected: Option<KeyFingerprint>,
    },
}

/// Pins and trust, in memory and on disk.
pub struct KeyBook {
    keys_tree: sled::Tree,
    trust_tree: sled::Tree,
    pins: HashMap<Uuid, KeyFingerprint>,
    trusted: HashMap<Uuid, TrustedPeer>,
}

impl KeyBook {
    /// Loads both trees.
    pub fn open(keys_tree: sled::Tree, trust_tree: sled::Tree) -> Result<KeyBook, KeyBookError> {
        let mut pins = HashMap::new();
        for item in keys_tree.iter() {
            let (id, key) = item?;
            let id = Uuid::from_slice(&id).map_err(|_| KeyBookError::Corrupt("a pin".into()))?;
            let key: [u8; 32] = key
                .as_ref()
                .try_into()
                .map_err(|_| KeyBookError::Corrupt(id.to_string()))?;
            pins.insert(id, KeyFingerprint(key));
        }
        let mut trusted = HashMap::new();
        for item in trust_tree.iter() {
            let (id, value) = item?;
            let peer: TrustedPeer = rmp_serde::from_slice(&value)
                .map_err(|_| KeyBookError::Corrupt(format!("{:?}", Uuid::from_slice(&id))))?;
            trusted.insert(peer.id, peer);
        }
        Ok(KeyBook {
            keys_tree,
            trust_tree,
            pins,
            trusted,
        })
    }

    /// What `key` means for `id`.
    pub fn check(&self, id: Uuid, key: &KeyFingerprint) -> KeyCheck {
        match self.pins.get(&id) {
            Some(pinned) if pinned == key => KeyCheck::Pinned,
            Some(pinned) => KeyCheck::Conflict {
                expected: Some(*pinned),
            },
            None if identity::is_key_id(id) && key.node_id() != id => {
                KeyCheck::Conflict { expected: None }
            }
            None => KeyCheck::New,
        }
    }

    /// Pins `key` for `id` (after [`KeyBook::check`] said [`KeyCheck::New`]). Returns false
    /// when the book is full.
    pub fn pin(&mut self, id: Uuid, key: KeyFingerprint) -> Result<bool, KeyBookError> {
        if self.pins.len() >= MAX_PINS {
            return Ok(false);
        }
        self.keys_tree.insert(id.as_bytes(), &key.0[..])?;
        self.keys_tree.flush()?;
        self.pins.insert(id, key);
        Ok(true)
    }

    /// The key pinned for `id`.
    pub fn pinned(&self, id: Uuid) -> Option<KeyFingerprint> {
        self.pins.get(&id).copied()
    }

    /// The node id a key is pinned under, or the id it derives.
    pub fn id_of(&self, key: &KeyFingerprint) -> Uuid {
        self.pins
            .iter()
            .find(|(_, pinned)| *pinned == key)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| key.node_id())
    }

    /// Records trust (replacing an earlier record for the same id).
    pub fn trust(&mut self, peer: TrustedPeer) -> Result<(), KeyBookError> {
        let value = rmp_serde::to_vec_named(&peer).expect("trust records encode");
        self.trust_tree.insert(peer.id.as_bytes(), value)?;
        self.trust_tree.flush()?;
        self.trusted.insert(peer.id, peer);
        Ok(())
    }

    /// Revokes trust; returns the record that was removed.
    pub fn untrust(&mut self, id: Uuid) -> Result<Option<TrustedPeer>, KeyBookError> {
        if !self.trusted.contains_key(&id) {
            return Ok(None);
        }
        self.trust_tree.remove(id.as_bytes())?;
        self.trust_tree.flush()?;
        Ok(self.trusted.remove(&id))
    }

    /// The trust record of `id`, if its key is still the trusted one.
    pub fn trusted(&self, id: Uuid) -> Option<&TrustedPeer> {
        self.trusted.get(&id)
    }

    /// Every trust record, by name.
    pub fn all_trusted(&self) -> Vec<TrustedPeer> {
        let mut all: Vec<TrustedPeer> = self.trusted.values().cloned().collect();
        all.sort_by(|a, b| (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(dir: &std::path::Path) -> KeyBook {
        // sled's flusher thread holds the file lock for a moment after the last handle is
        // dropped, so a reopen right after may find it still taken.
        let mut tries = 0;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(error)
                    if tries < 100 && error.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(error) => panic!("opening {}: {error}", dir.display()),
            }
        };
        KeyBook::open(
            db.open_tree("peer_keys").unwrap(),
            db.open_tree("trusted_peers").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn first_key_wins_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let real = KeyFingerprint([1; 32]);
        let impostor = KeyFingerprint([2; 32]);
        let derived = real.node_id();
        let legacy = Uuid::new_v4();
        {
            let mut book = book(dir.path());
            // A derived id accepts only the key it derives from, even before any pin.
            assert_eq!(book.check(derived, &real), KeyCheck::New);
            assert_eq!(
                book.check(derived, &impostor),
                KeyCheck::Conflict { expected: None }
            );
            // A legacy id takes the first key seen.
            assert_eq!(book.check(legacy, &real), KeyCheck::New);
            assert!(book.pin(legacy, real).unwrap());
            book.trust(TrustedPeer {
                id: legacy,
                key: real,
                name: "old-box".into(),
                since: Utc::now(),
                by: "admin".into(),
            })
            .unwrap();
        }
        let mut book = book(dir.path());
        assert_eq!(book.check(legacy, &real), KeyCheck::Pinned);
        assert_eq!(
            book.check(legacy, &impostor),
            KeyCheck::Conflict {
                expected: Some(real)
            }
        );
        assert_eq!(book.id_of(&real), legacy);
        assert_eq!(book.id_of(&impostor), impostor.node_id());
        assert_eq!(book.trusted(legacy).unwrap().name, "old-box");
        assert!(book.untrust(legacy).unwrap().is_some());
        assert!(book.trusted(legacy).is_none());
        assert!(book.untrust(legacy).unwrap().is_none());
    }
}
