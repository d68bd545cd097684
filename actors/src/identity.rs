//! The node's identity: a UUID made at first start and kept in `<data-dir>/node-id`.
//! (The key pair that proves it over TLS comes with the discovery work.)

use std::path::Path;

use uuid::Uuid;

/// Errors reading or creating the node id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The id file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a UUID.
    #[error("{path}: `{content}` is not a node id (a UUID)")]
    Invalid {
        /// The id file.
        path: String,
        /// What it holds.
        content: String,
    },
}

/// Reads the node id from `data_dir`, creating it on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Uuid, IdentityError> {
    let path = data_dir.join("node-id");
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).map_err(|_| IdentityError::Invalid {
            path: path.display().to_string(),
            content: text.trim().chars().take(64).collect(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            let temp = data_dir.join(format!(".node-id.{}", id.simple()));
            std::fs::write(&temp, format!("{id}\n")).map_err(io)?;
            std::fs::File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&temp, &path).map_err(io)?;
            Ok(id)
        }
        Err(error) => Err(io(error)),
    }
}
