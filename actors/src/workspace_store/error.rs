//! Errors of the WorkspaceStore.

use std::path::PathBuf;

use crate::model::ValidationErrors;
use crate::yaml::YamlError;

use super::archive::ArchiveError;

/// Everything a WorkspaceStore operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No workspace has this id or name.
    #[error("no workspace named or with id `{0}`")]
    NotFound(String),
    /// The name is used by another workspace.
    #[error("a workspace named `{0}` already exists")]
    NameTaken(String),
    /// The revision does not exist.
    #[error("workspace `{name}` has no revision {revision}")]
    RevisionNotFound {
        /// Workspace name.
        name: String,
        /// Asked-for revision.
        revision: u64,
    },
    /// The caller edited an outdated revision.
    #[error("workspace `{name}` is at revision {actual}, not {expected}: reload and retry")]
    RevisionConflict {
        /// Workspace name.
        name: String,
        /// Revision the caller based its change on.
        expected: u64,
        /// Current revision.
        actual: u64,
    },
    /// The environment does not exist.
    #[error("workspace `{workspace}` has no environment `{environment}`")]
    EnvironmentNotFound {
        /// Workspace name.
        workspace: String,
        /// Environment name.
        environment: String,
    },
    /// Fields failed validation.
    #[error("{file}: {errors}")]
    Invalid {
        /// File (or request part) the fields belong to.
        file: String,
        /// The failures.
        errors: ValidationErrors,
    },
    /// A request asked for something impossible (bad template, bad source directory, ...).
    #[error("{0}")]
    BadRequest(String),
    /// A YAML document could not be parsed.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// An archive was refused.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A git project could not be cloned.
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`writing`, `renaming`, ...).
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The index database failed.
    #[error("index database: {0}")]
    Database(#[from] sled::Error),
    /// An index record could not be decoded (database written by an incompatible version).
    #[error("index record for {key}: {message}")]
    CorruptRecord {
        /// Key of the record.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// The store actor is not running (node shutting down).
    #[error("workspace store is not running")]
    Unavailable,
}

impl StoreError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}

impl From<crate::fsio::FsError> for StoreError {
    fn from(error: crate::fsio::FsError) -> StoreError {
        StoreError::Io {
            action: error.action,
            path: error.path,
            source: error.source,
        }
    }
}

impl From<crate::tree::TreeError> for StoreError {
    fn from(error: crate::tree::TreeError) -> StoreError {
        match error {
            crate::tree::TreeError::Io {
                action,
                path,
                source,
            } => StoreError::Io {
                action,
                path,
                source,
            },
            other => StoreError::BadRequest(other.to_string()),
        }
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(error: sled::transaction::TransactionError<StoreError>) -> StoreError {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => StoreError::Database(error),
        }
    }
}
