//! The sled index: one named tree per index, opened in one constructor.
//!
//! - `workspaces`: workspace id (16 bytes) → [`IndexRecord`]
//! - `names`: workspace name → workspace id
//! - `revisions`: workspace id ++ revision (big-endian u64) → [`RevisionRecord`]
//! - `origins`: workspace id → [`Origin`] of a clone (where it came from)
//! - `foreign`: workspace id → the peer whose template it was made from (its content is that
//!   peer's, so it runs confined like a clone, though it has no source to sync from)
//! - `files`, `chunks`: the chunk index ([`ChunkIndex`])
//!
//! Values are MessagePack (rmp-serde, named fields). Every write is one transaction across the
//! trees followed by a flush, so an acknowledged change survives a crash.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;

use crate::model::{EnvironmentSpec, WorkspaceManifest};

use super::chunk_index::ChunkIndex;
use super::clone::Origin;
use super::error::StoreError;
use crate::fsio::FileStamp;

/// What the index knows about one workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexRecord {
    /// The parsed `workspace.yaml`.
    pub manifest: WorkspaceManifest,
    /// The parsed environment specs, by name.
    pub environments: BTreeMap<String, EnvironmentSpec>,
    /// Stamps of `workspace.yaml` and each `environment.yaml` when last indexed.
    pub stamps: BTreeMap<String, FileStamp>,
}

/// One revision in a workspace's history: the full text of its files at that revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The revision number.
    pub revision: u64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Who made it.
    pub by: String,
    /// What kind of change it was.
    pub change: String,
    /// `workspace.yaml` text.
    pub workspace_yaml: String,
    /// `environment.yaml` texts by environment name.
    pub environments: BTreeMap<String, String>,
}

/// The opened index.
pub struct Index {
    db: sled::Db,
    workspaces: sled::Tree,
    names: sled::Tree,
    revisions: sled::Tree,
    origins: sled::Tree,
    foreign: sled::Tree,
    chunks: ChunkIndex,
}

/// Opens (or creates) the sled database at `path` with the node's settings: a page cache of
/// `cache_bytes`, and the low-space mode. sled locks the directory, so a second node on the
/// same data dir fails here.
pub fn open_database(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(|error| match error {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::BadRequest(format!(
                    "the index {} is in use by another aienv node (one node per data dir)",
                    path.display()
                ))
            }
            other => StoreError::Database(other),
        })
}

impl Index {
    /// Opens (or creates) the index at `path` ([`open_database`]). The chunk index keeps its
    /// memo in `memo_dir`.
    pub fn open(path: &Path, cache_bytes: u64, memo_dir: &Path) -> Result<Index, StoreError> {
        let db = open_database(path, cache_bytes)?;
        Ok(Index {
            workspaces: db.open_tree("workspaces")?,
            names: db.open_tree("names")?,
            revisions: db.open_tree("revisions")?,
            origins: db.open_tree("origins")?,
            foreign: db.open_tree("foreign")?,
            chunks: ChunkIndex::open(&db, memo_dir)?,
            db,
        })
    }

    /// Every indexed workspace.
    pub fn all(&self) -> Result<Vec<IndexRecord>, StoreError> {
        self.workspaces
            .iter()
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Id of the workspace named `name`.
    pub fn id_by_name(&self, name: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self
            .names
            .get(name.as_bytes())?
            .and_then(|value| Uuid::from_slice(&value).ok()))
    }

    /// Writes `record` (new or changed) and, when given, a revision entry; `old_name` is the
    /// name to release when the workspace was renamed.
    pub fn put(
        &self,
        record: &IndexRecord,
        old_name: Option<&str>,
        revision: Option<&RevisionRecord>,
    ) -> Result<(), StoreError> {
        let _watched = self.chunks.watch_write();
        let id = record.manifest.id;
        let value = encode(record);
        let revision_entry = revision.map(|r| (revision_key(id, r.revision), encode(r)));
        (&self.workspaces, &self.names, &self.revisions).transaction(
            |(workspaces, names, revisions)| {
                workspaces.insert(id.as_bytes().as_slice(), value.as_slice())?;
                if let Some(old) = old_name {
                    if old != record.manifest.name {
                        names.remove(old.as_bytes())?;
                    }
                }
                names.insert(record.manifest.name.as_bytes(), id.as_bytes().as_slice())?;
                if let Some((key, value)) = &revision_entry {
                    revisions.insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            },
        )?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a workspace and its history.
    pub fn remove(&self, id: Uuid, name: &str) -> Result<(), StoreError> {
        let _watched = self.chunks.watch_write();
        self.origins.remove(id.as_bytes())?;
        self.foreign.remove(id.as_bytes())?;
        self.chunks.forget(id)?;
        let history: Vec<sled::IVec> = self
            .revisions
            .scan_prefix(id.as_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        (&self.workspaces, &self.names, &self.revisions).transaction(
            |(workspaces, names, revisions): &(
                TransactionalTree,
                TransactionalTree,
                TransactionalTree,
            )| {
                workspaces.remove(id.as_bytes().as_slice())?;
                if names.get(name.as_bytes())?.as_deref() == Some(id.as_bytes().as_slice()) {
                    names.remove(name.as_bytes())?;
                }
                for key in &history {
                    revisions.remove(key)?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            },
        )?;
        self.db.flush()?;
        Ok(())
    }

    /// The history of a workspace, oldest first.
    pub fn revisions(&self, id: Uuid) -> Result<Vec<RevisionRecord>, StoreError> {
        self.revisions
            .scan_prefix(id.as_bytes())
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// One revision of a workspace.
    pub fn revision(&self, id: Uuid, revision: u64) -> Result<Option<RevisionRecord>, StoreError> {
        let key = revision_key(id, revision);
        self.revisions
            .get(key)?
            .map(|value| decode(&key, &value))
            .transpose()
    }

    /// Removes name entries that point at no workspace (left by an interrupted rename).
    pub fn drop_dangling_names(&self) -> Result<Vec<String>, StoreError> {
        let _watched = self.chunks.watch_write();
        let mut dropped = Vec::new();
        for item in self.names.iter() {
            let (name, id) = item?;
            if !self.workspaces.contains_key(&id)? {
                self.names.remove(&name)?;
                dropped.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        if !dropped.is_empty() {
            self.db.flush()?;
        }
        Ok(dropped)
    }

    /// Records where a clone came from; made durable by the [`Index::put`] that follows.
    pub fn put_origin(&self, id: Uuid, origin: &Origin) -> Result<(), StoreError> {
        let _watched = self.chunks.watch_write();
        self.origins
            .insert(id.as_bytes().as_slice(), encode(origin))?;
        Ok(())
    }

    /// Where a clone came from.
    pub fn origin(&self, id: Uuid) -> Result<Option<Origin>, StoreError> {
        self.origins
            .get(id.as_bytes())?
            .map(|value| decode(id.as_bytes(), &value))
            .transpose()
    }

    /// Records that a workspace that is not a clone holds a peer's content (made from the
    /// peer's template); made durable by the [`Index::put`] that follows.
    pub fn put_foreign(&self, id: Uuid, peer: &str) -> Result<(), StoreError> {
        let _watched = self.chunks.watch_write();
        self.foreign
            .insert(id.as_bytes().as_slice(), peer.as_bytes())?;
        Ok(())
    }

    /// The peer whose content a workspace that is not a clone holds.
    pub fn foreign(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        Ok(self
            .foreign
            .get(id.as_bytes())?
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    /// The chunk index (trees `files` and `chunks`).
    pub fn chunks(&self) -> &ChunkIndex {
        &self.chunks
    }

    /// The database, for another actor's own named trees.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _watched = self.chunks.watch_write();
        self.db.flush()?;
        Ok(())
    }
}

fn revision_key(id: Uuid, revision: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&revision.to_be_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("index records always encode")
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(value).map_err(|error| StoreError::CorruptRecord {
        key: match Uuid::from_slice(&key[..key.len().min(16)]) {
            Ok(id) => id.to_string(),
            Err(_) => String::from_utf8_lossy(key).into_owned(),
        },
        message: error.to_string(),
    })
}
