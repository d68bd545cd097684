//! Workspace archives (spec: `schemas/archive.md`): one `.tar.zst` whose first entry is a
//! manifest holding the workspace's transfer snapshot, followed by every path of that
//! snapshot under `workspace/`.
//!
//! The snapshot is the one description of a tree ([`crate::tree`]): export takes it from the
//! store's chunk index, so only files changed since the last snapshot are read twice, and
//! checks each file's bytes against it while writing them (a file changed in between fails the
//! export). Import trusts nothing: the manifest passes the checks a peer's snapshot passes, and
//! every entry's name, type, mode, link and chunk hashes are checked while unpacking into a
//! staging directory that the caller renames into place only on success.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{EntryKind, Hash, Snapshot, SnapshotEntry, SnapshotError, SnapshotLimits};
use crate::tree;

/// Name of the manifest entry, always first in the archive.
pub const MANIFEST_ENTRY: &str = "aienv-archive.msgpack";
/// Prefix of every workspace entry in the archive.
pub const CONTENT_PREFIX: &str = "workspace/";
/// Archive format identifier.
pub const FORMAT: &str = "aienv-archive";
/// Archive format version written by this build. Version 1 (a list of entries with
/// whole-file hashes) is still read.
pub const FORMAT_VERSION: u32 = 2;

/// Why an archive was refused or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The bytes are not a zstd-compressed tar stream.
    #[error("not a valid .tar.zst archive: {0}")]
    Malformed(String),
    /// The first entry is not the manifest.
    #[error("the archive does not start with its manifest `{MANIFEST_ENTRY}`")]
    ManifestMissing,
    /// The manifest cannot be decoded or is inconsistent.
    #[error("archive manifest: {0}")]
    ManifestInvalid(String),
    /// An entry name is absolute, contains `..`, or is otherwise unsafe.
    #[error("unsafe entry name `{path}`: {reason}")]
    UnsafePath {
        /// The name as stored in the archive.
        path: String,
        /// What makes it unsafe.
        reason: &'static str,
    },
    /// An entry is of a forbidden type (device, FIFO, ...).
    #[error("entry `{path}` is a {kind}, which a workspace archive may not contain")]
    ForbiddenType {
        /// Entry path.
        path: String,
        /// Its type.
        kind: &'static str,
    },
    /// An entry's mode has more than permission bits.
    #[error("entry `{path}` has mode {mode:o}: a setuid, setgid or sticky bit is not allowed")]
    SetuidBit {
        /// Entry path.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The same path appears twice.
    #[error("entry `{0}` appears more than once")]
    Duplicate(String),
    /// An entry would be written through a symbolic link.
    #[error("entry `{path}` would be written through the symbolic link `{link}`")]
    ThroughSymlink {
        /// Entry path.
        path: String,
        /// The link in its way.
        link: String,
    },
    /// An entry is not listed in the manifest, or listed with another kind.
    #[error("entry `{path}` does not match the manifest: {reason}")]
    NotInManifest {
        /// Entry path.
        path: String,
        /// How it differs.
        reason: String,
    },
    /// A manifest entry has no archive entry.
    #[error("the manifest lists `{0}` but the archive does not contain it")]
    MissingEntry(String),
    /// File content does not match its manifest hashes.
    #[error("content of `{0}` does not match its BLAKE3 hashes in the manifest")]
    HashMismatch(String),
    /// The archive exceeds a configured limit.
    #[error("archive too large: {0}")]
    TooLarge(String),
    /// A file changed while it was being exported.
    #[error("`{0}` changed while it was being exported; retry the export")]
    ChangedDuringExport(String),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io {
        action,
        path,
        source,
    }
}

/// The manifest at the head of every archive: a header and the workspace's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`].
    pub version: u32,
    /// When the archive was written.
    pub created: DateTime<Utc>,
    /// The workspace as the transfer protocol describes it (`schemas/transfer.md`).
    pub snapshot: Snapshot,
}

/// What every manifest version starts with.
#[derive(Deserialize)]
struct ManifestHeader {
    format: String,
    version: u32,
}

/// Bounds on what an import accepts.
#[derive(Debug, Clone)]
pub struct ImportLimits {
    /// Most entries in one archive.
    pub max_entries: usize,
    /// Largest manifest entry in bytes.
    pub max_manifest_bytes: u64,
    /// Most file content in bytes.
    pub max_content_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> ImportLimits {
        ImportLimits {
            max_entries: 1_000_000,
            max_manifest_bytes: 256 * 1024 * 1024,
            max_content_bytes: 1 << 40,
        }
    }
}

/// What an import unpacked.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// Id of the exported workspace.
    pub source_id: Uuid,
    /// Name the workspace had when exported.
    pub source_name: String,
    /// Revision it had when exported.
    pub source_revision: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Links whose target lies outside the workspace, kept as links: `(path, target)`.
    pub external_links: Vec<(String, String)>,
}

/// What an import produced: the summary, and the verified snapshot of what was written when
/// the archive carried one (format 2), so the store need not hash the files again.
#[derive(Debug, Clone)]
pub struct Imported {
    /// What was unpacked.
    pub summary: ImportSummary,
    /// The manifest's snapshot, every file of which was verified against its chunk hashes.
    pub snapshot: Option<Snapshot>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content written (before compression).
    pub bytes: u64,
    /// Paths left out because they are sockets, devices or FIFOs.
    pub skipped: Vec<String>,
}

/// Writes the workspace at `root`, as `snapshot` describes it, as an archive to `out`.
/// `skipped` lists what the snapshot's walk left out, for the summary.
pub fn export(
    root: &Path,
    snapshot: &Snapshot,
    skipped: Vec<String>,
    out: impl Write,
) -> Result<ExportSummary, ArchiveError> {
    let mut summary = ExportSummary {
        skipped,
        ..ExportSummary::default()
    };
    let manifest = ArchiveManifest {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        created: Utc::now(),
        snapshot: snapshot.clone(),
    };
    let manifest_bytes = rmp_serde::to_vec_named(&manifest).expect("manifests always encode");
    let out_error = |source| ArchiveError::Io {
        action: "writing archive",
        path: PathBuf::from("<output>"),
        source,
    };
    let encoder = zstd::Encoder::new(out, 3).map_err(out_error)?;
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Complete);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(manifest_bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(manifest.created.timestamp().max(0) as u64);
    builder
        .append_data(&mut header, MANIFEST_ENTRY, manifest_bytes.as_slice())
        .map_err(out_error)?;
    // Read beneath the root: never through a link swapped in since the snapshot.
    let beneath = crate::beneath::Beneath::open(root).map_err(io_error("reading", root))?;
    for entry in &snapshot.entries {
        let source = root.join(&entry.path);
        let name = format!("{CONTENT_PREFIX}{}", entry.path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        let mtime = beneath
            .metadata(&entry.path)
            .map(|m| m.mtime().max(0) as u64)
            .unwrap_or(0);
        header.set_mtime(mtime);
        match entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &name, io::empty())
                    .map_err(out_error)?;
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = entry.target.as_deref().unwrap_or_default();
                builder
                    .append_link(&mut header, &name, target)
                    .map_err(out_error)?;
            }
            EntryKind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size);
                let file = beneath
                    .open_file(&entry.path)
                    .map_err(io_error("reading", &source))?;
                let mut reader = Verifier::new(file.take(entry.size), segments(entry, true));
                builder
                    .append_data(&mut header, &name, &mut reader)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => {
                            ArchiveError::ChangedDuringExport(entry.path.clone())
                        }
                        _ => out_error(e),
                    })?;
                if !reader.verified() {
                    return Err(ArchiveError::ChangedDuringExport(entry.path.clone()));
                }
                summary.bytes += entry.size;
            }
        }
        summary.entries += 1;
    }
    let encoder = builder.into_inner().map_err(out_error)?;
    let mut out = encoder.finish().map_err(out_error)?;
    out.flush().map_err(out_error)?;
    Ok(summary)
}

/// The `(length, hash)` pieces a file's content must hash to: its chunks in a snapshot
/// (`chunked`), its whole content in a format 1 manifest.
fn segments(entry: &SnapshotEntry, chunked: bool) -> Vec<(u64, Hash)> {
    match (chunked, entry.hash) {
        (true, _) => entry
            .file_chunks()
            .into_iter()
            .map(|(_, chunk)| (u64::from(chunk.size), chunk.hash))
            .collect(),
        // An empty file has no piece to hash: it is intact only if its hash says empty.
        (false, Some(hash)) if entry.size == 0 && hash == Hash::of(b"") => Vec::new(),
        (false, Some(hash)) => vec![(entry.size, hash)],
        (false, None) => Vec::new(),
    }
}

/// Passes bytes through while checking them piece by piece against expected hashes.
struct Verifier<R> {
    inner: R,
    segments: Vec<(u64, Hash)>,
    at: usize,
    filled: u64,
    hasher: blake3::Hasher,
    intact: bool,
}

impl<R> Verifier<R> {
    fn new(inner: R, segments: Vec<(u64, Hash)>) -> Verifier<R> {
        Verifier {
            inner,
            segments,
            at: 0,
            filled: 0,
            hasher: blake3::Hasher::new(),
            intact: true,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.intact {
            let Some(&(len, hash)) = self.segments.get(self.at) else {
                self.intact = false;
                return;
            };
            let take = (len - self.filled).min(bytes.len() as u64) as usize;
            self.hasher.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == len {
                self.intact = Hash(*self.hasher.finalize().as_bytes()) == hash;
                self.hasher.reset();
                self.filled = 0;
                self.at += 1;
            }
        }
    }

    /// Whether everything read so far matched and every piece was complete.
    fn verified(&self) -> bool {
        self.intact && self.at == self.segments.len() && self.filled == 0
    }
}

impl<R: Read> Read for Verifier<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }
}

/// A manifest as read, whichever version.
struct Manifest {
    summary: ImportSummary,
    entries: Vec<SnapshotEntry>,
    /// Format 2 and later: file hashes are the snapshot's (chunk lists for large files).
    snapshot: Option<Snapshot>,
}

/// Unpacks and verifies the archive `archive` into the empty directory `staging`.
/// On error the caller removes `staging`; nothing outside it is ever written.
pub fn import(
    archive: impl Read,
    staging: &Path,
    limits: &ImportLimits,
) -> Result<Imported, ArchiveError> {
    let decoder =
        zstd::Decoder::new(archive).map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let mut tar = tar::Archive::new(decoder);
    let mut entries = tar
        .entries()
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;

    let Manifest {
        mut summary,
        entries: listed,
        snapshot,
    } = read_manifest(&mut entries, limits)?;
    let chunked = snapshot.is_some();
    let expected: HashMap<&str, &SnapshotEntry> =
        listed.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];

    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let header = entry.header();
        let entry_type = header.entry_type();
        if entry_type == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw_name = entry.path_bytes().into_owned();
        let path = content_path(&raw_name)?;
        let mode = header
            .mode()
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let kind = match entry_type {
            tar::EntryType::Regular => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            other => {
                return Err(ArchiveError::ForbiddenType {
                    path,
                    kind: match other {
                        tar::EntryType::Link => "hard link",
                        tar::EntryType::Char => "character device",
                        tar::EntryType::Block => "block device",
                        tar::EntryType::Fifo => "FIFO",
                        _ => "special entry",
                    },
                })
            }
        };
        if tree::check_mode(mode & 0o7777).is_err() {
            return Err(ArchiveError::SetuidBit { path, mode });
        }
        if !seen.insert(path.clone()) {
            return Err(ArchiveError::Duplicate(path));
        }
        let Some(listed) = expected.get(path.as_str()) else {
            return Err(ArchiveError::NotInManifest {
                path,
                reason: "not listed".into(),
            });
        };
        if listed.kind != kind {
            return Err(ArchiveError::NotInManifest {
                reason: format!("archive has a {kind:?}, manifest a {:?}", listed.kind),
                path,
            });
        }
        // The manifest's mode is the one written (and hashed into its root); a link's own
        // mode means nothing.
        if kind != EntryKind::Symlink && mode & 0o777 != listed.mode {
            return Err(ArchiveError::NotInManifest {
                reason: format!("mode {:o}, manifest says {:o}", mode & 0o777, listed.mode),
                path,
            });
        }
        // The manifest passed the tree policy, so every parent is a directory it lists and no
        // path passes through a link: creating missing parents cannot leave `staging`.
        let destination = staging.join(&path);
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent).map_err(io_error("creating directory", parent))?;
        }
        match kind {
            EntryKind::Dir => {
                match fs::create_dir(&destination) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && destination.is_dir() => {}
                    Err(e) => return Err(io_error("creating directory", &destination)(e)),
                }
                dir_modes.push((destination, listed.mode));
                summary.dirs += 1;
            }
            EntryKind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = String::from_utf8(target).map_err(|_| ArchiveError::UnsafePath {
                    path: path.clone(),
                    reason: "link target is not UTF-8",
                })?;
                if listed.target.as_deref() != Some(target.as_str()) {
                    return Err(ArchiveError::NotInManifest {
                        path,
                        reason: "link target differs".into(),
                    });
                }
                std::os::unix::fs::symlink(&target, &destination)
                    .map_err(io_error("creating link", &destination))?;
                if tree::escapes(&path, &target) {
                    summary.external_links.push((path.clone(), target));
                }
                summary.symlinks += 1;
            }
            EntryKind::File => {
                let size = entry.size();
                if size != listed.size {
                    return Err(ArchiveError::NotInManifest {
                        reason: format!("size {size}, manifest says {}", listed.size),
                        path,
                    });
                }
                summary.bytes += size;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&destination)
                    .map_err(io_error("creating", &destination))?;
                let mtime = entry.header().mtime().ok();
                let mut reader = Verifier::new(&mut entry, segments(listed, chunked));
                let mut written = 0u64;
                loop {
                    let n = reader
                        .read(&mut buffer)
                        .map_err(|e| ArchiveError::Malformed(format!("{path}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buffer[..n])
                        .map_err(io_error("writing", &destination))?;
                    written += n as u64;
                }
                if written != size {
                    return Err(ArchiveError::Malformed(format!("{path}: truncated entry")));
                }
                if !reader.verified() {
                    return Err(ArchiveError::HashMismatch(path));
                }
                file.set_permissions(fs::Permissions::from_mode(listed.mode))
                    .map_err(io_error("setting mode of", &destination))?;
                if let Some(mtime) = mtime {
                    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = file.set_modified(time);
                }
                summary.files += 1;
            }
        }
    }
    for listed in &listed {
        if !seen.contains(&listed.path) {
            return Err(ArchiveError::MissingEntry(listed.path.clone()));
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_error("setting mode of", &dir))?;
    }
    Ok(Imported { summary, snapshot })
}

fn read_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &ImportLimits,
) -> Result<Manifest, ArchiveError> {
    let first = entries
        .next()
        .ok_or(ArchiveError::ManifestMissing)?
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    if first.path_bytes().as_ref() != MANIFEST_ENTRY.as_bytes()
        || first.header().entry_type() != tar::EntryType::Regular
    {
        return Err(ArchiveError::ManifestMissing);
    }
    if first.size() > limits.max_manifest_bytes {
        return Err(ArchiveError::TooLarge(format!(
            "manifest of {} bytes exceeds {}",
            first.size(),
            limits.max_manifest_bytes
        )));
    }
    let mut bytes = Vec::with_capacity(first.size() as usize);
    first
        .take(limits.max_manifest_bytes)
        .read_to_end(&mut bytes)
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let invalid = |e: rmp_serde::decode::Error| ArchiveError::ManifestInvalid(e.to_string());
    let header: ManifestHeader = rmp_serde::from_slice(&bytes).map_err(invalid)?;
    if header.format != FORMAT {
        return Err(ArchiveError::ManifestInvalid(format!(
            "format is `{}`, expected `{FORMAT}`",
            header.format
        )));
    }
    let manifest = match header.version {
        1 => legacy::read(&bytes, limits)?,
        FORMAT_VERSION => {
            let manifest: ArchiveManifest = rmp_serde::from_slice(&bytes).map_err(invalid)?;
            let snapshot = manifest.snapshot;
            snapshot
                .validate(&SnapshotLimits {
                    max_entries: limits.max_entries,
                    max_encoded_bytes: limits.max_manifest_bytes,
                    max_decoded_bytes: limits.max_manifest_bytes,
                    max_file_bytes: limits.max_content_bytes,
                    max_total_bytes: limits.max_content_bytes,
                })
                .map_err(|e| match e {
                    SnapshotError::TooLarge(what) => ArchiveError::TooLarge(what),
                    other => ArchiveError::ManifestInvalid(other.to_string()),
                })?;
            Manifest {
                summary: summary_of(snapshot.workspace_id, &snapshot.name, snapshot.revision),
                entries: snapshot.entries.clone(),
                snapshot: Some(snapshot),
            }
        }
        other => {
            return Err(ArchiveError::ManifestInvalid(format!(
                "format version {other} is not supported (this aienv reads 1 and {FORMAT_VERSION})"
            )))
        }
    };
    Ok(manifest)
}

fn summary_of(id: Uuid, name: &str, revision: u64) -> ImportSummary {
    ImportSummary {
        source_id: id,
        source_name: name.to_string(),
        source_revision: revision,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        external_links: Vec::new(),
    }
}

/// Format 1 manifests: the same tree with whole-file BLAKE3 hashes in hex and no chunk lists.
mod legacy {
    use super::*;

    #[derive(Deserialize)]
    struct ManifestV1 {
        #[serde(deserialize_with = "crate::uuid_wire::deserialize")]
        workspace_id: Uuid,
        workspace_name: String,
        revision: u64,
        entries: Vec<EntryV1>,
    }

    #[derive(Deserialize)]
    struct EntryV1 {
        path: String,
        kind: EntryKind,
        mode: u32,
        size: u64,
        #[serde(default)]
        blake3: Option<String>,
        #[serde(default)]
        target: Option<String>,
    }

    /// Reads a format 1 manifest into tree entries (sorted, as the policy wants; the hash of
    /// a file is its whole content's) and checks them with the tree policy.
    pub(super) fn read(bytes: &[u8], limits: &ImportLimits) -> Result<Manifest, ArchiveError> {
        let manifest: ManifestV1 = rmp_serde::from_slice(bytes)
            .map_err(|e| ArchiveError::ManifestInvalid(e.to_string()))?;
        if manifest.entries.len() > limits.max_entries {
            return Err(ArchiveError::TooLarge(format!(
                "{} entries, at most {} allowed",
                manifest.entries.len(),
                limits.max_entries
            )));
        }
        let mut total = 0u64;
        let mut entries = Vec::with_capacity(manifest.entries.len());
        for entry in manifest.entries {
            let hash = match (&entry.kind, entry.blake3.as_deref()) {
                (EntryKind::File, Some(hex)) => Some(Hash::from_hex(hex).ok_or_else(|| {
                    ArchiveError::ManifestInvalid(format!(
                        "`{}` has no valid BLAKE3 hash",
                        entry.path
                    ))
                })?),
                (EntryKind::File, None) => None,
                _ => None,
            };
            total = total.saturating_add(entry.size);
            entries.push(SnapshotEntry {
                path: entry.path,
                kind: entry.kind,
                mode: entry.mode,
                size: if entry.kind == EntryKind::File {
                    entry.size
                } else {
                    0
                },
                hash,
                target: entry.target.filter(|_| entry.kind == EntryKind::Symlink),
                chunks: Vec::new(),
            });
        }
        if total > limits.max_content_bytes {
            return Err(ArchiveError::TooLarge(format!(
                "{total} bytes of content, at most {} allowed",
                limits.max_content_bytes
            )));
        }
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        tree::check_entries(&entries).map_err(|e| ArchiveError::ManifestInvalid(e.to_string()))?;
        Ok(Manifest {
            summary: summary_of(
                manifest.workspace_id,
                &manifest.workspace_name,
                manifest.revision,
            ),
            entries,
            snapshot: None,
        })
    }
}

/// The workspace-relative path of an archive entry name, refusing anything unsafe.
fn content_path(raw: &[u8]) -> Result<String, ArchiveError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let name = std::str::from_utf8(raw).map_err(|_| ArchiveError::UnsafePath {
        path: lossy(),
        reason: "name is not UTF-8",
    })?;
    if name.starts_with('/') {
        return Err(ArchiveError::UnsafePath {
            path: lossy(),
            reason: "absolute path",
        });
    }
    let Some(relative) = name.strip_prefix(CONTENT_PREFIX) else {
        return Err(ArchiveError::UnsafePath {
            path: lossy(),
            reason: "outside the archive's workspace/ folder",
        });
    };
    let relative = relative.trim_end_matches('/');
    tree::check_relative(relative).map_err(|reason| ArchiveError::UnsafePath {
        path: relative.to_string(),
        reason,
    })?;
    Ok(relative.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(content_path(b"workspace/a/b").unwrap(), "a/b");
        assert_eq!(content_path(b"workspace/dir/").unwrap(), "dir");
        for bad in [
            &b"/etc/passwd"[..],
            b"workspace/../x",
            b"workspace/a/../../x",
            b"other/x",
            b"workspace/",
            b"workspace/a//b",
            b"workspace/\xff",
        ] {
            assert!(
                content_path(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn verifier_checks_every_piece() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let pieces = vec![(300, Hash::of(&data[..300])), (700, Hash::of(&data[300..]))];
        for step in [1, 7, 300, 1000] {
            let mut verifier = Verifier::new(io::empty(), pieces.clone());
            for piece in data.chunks(step) {
                verifier.feed(piece);
            }
            assert!(verifier.verified(), "step {step}");
        }
        let mut short = Verifier::new(io::empty(), pieces.clone());
        short.feed(&data[..999]);
        assert!(!short.verified());
        let mut long = Verifier::new(io::empty(), pieces.clone());
        long.feed(&data);
        long.feed(b"x");
        assert!(!long.verified());
        let mut tampered = data.clone();
        tampered[500] ^= 1;
        let mut bad = Verifier::new(io::empty(), pieces);
        bad.feed(&tampered);
        assert!(!bad.verified());
        assert!(Verifier::new(io::empty(), Vec::new()).verified());
    }
}
