//! Workspace archives: one `.tar.zst` whose first entry is a manifest listing every path with
//! its kind, mode, size and BLAKE3 hash, followed by the workspace's files under `workspace/`.
//!
//! Export walks the workspace twice (hash, then write) and fails if a file changes between the
//! two passes. Import trusts nothing: every name, type, mode, link and hash is checked while
//! unpacking into a staging directory that the caller renames into place only on success.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Name of the manifest entry, always first in the archive.
pub const MANIFEST_ENTRY: &str = "aienv-archive.msgpack";
/// Prefix of every workspace entry in the archive.
pub const CONTENT_PREFIX: &str = "workspace/";
/// Archive format identifier.
pub const FORMAT: &str = "aienv-archive";
/// Archive format version written and read by this build.
pub const FORMAT_VERSION: u32 = 1;

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
    /// An entry has the setuid or setgid bit.
    #[error("entry `{path}` has mode {mode:o} with a setuid/setgid bit")]
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
    /// A hard link points at something that is not a file earlier in this archive.
    #[error("hard link `{path}` points outside the workspace or at no earlier file: `{target}`")]
    HardlinkOutside {
        /// Entry path.
        path: String,
        /// Its target.
        target: String,
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
    /// File content does not match its manifest hash.
    #[error("content of `{0}` does not match its BLAKE3 hash in the manifest")]
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

/// The manifest at the head of every archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Id of the exported workspace.
    pub workspace_id: Uuid,
    /// Name of the exported workspace.
    pub workspace_name: String,
    /// Its revision at export.
    pub revision: u64,
    /// When the archive was written.
    pub created: DateTime<Utc>,
    /// Every path of the workspace, parents before children.
    pub entries: Vec<ArchiveEntry>,
}

/// One path of an exported workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    /// Workspace-relative path with `/` separators.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (files only).
    pub size: u64,
    /// BLAKE3 hash, hex (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Kinds of archive entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link, stored as a link and never followed.
    Symlink,
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
    /// The archive's manifest header (entries omitted).
    pub source_id: Uuid,
    /// Name the workspace had when exported.
    pub source_name: String,
    /// Revision it had when exported.
    pub source_revision: u64,
    /// Regular files written (hard links included).
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

/// Writes the workspace at `root` as an archive to `out`.
pub fn export(
    root: &Path,
    workspace_id: Uuid,
    workspace_name: &str,
    revision: u64,
    out: impl Write,
) -> Result<ExportSummary, ArchiveError> {
    let mut summary = ExportSummary::default();
    let entries = scan(root, &mut summary.skipped)?;
    let manifest = ArchiveManifest {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        workspace_id,
        workspace_name: workspace_name.to_string(),
        revision,
        created: Utc::now(),
        entries,
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
    for entry in &manifest.entries {
        let source = root.join(&entry.path);
        let name = format!("{CONTENT_PREFIX}{}", entry.path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        let mtime = fs::symlink_metadata(&source)
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
                let file = fs::File::open(&source).map_err(io_error("reading", &source))?;
                let mut reader = HashingReader {
                    inner: file.take(entry.size),
                    hasher: blake3::Hasher::new(),
                    count: 0,
                };
                builder
                    .append_data(&mut header, &name, &mut reader)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => {
                            ArchiveError::ChangedDuringExport(entry.path.clone())
                        }
                        _ => out_error(e),
                    })?;
                let hash = reader.hasher.finalize().to_hex().to_string();
                if reader.count != entry.size || Some(&hash) != entry.blake3.as_ref() {
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

/// Lists and hashes every path under `root`, parents first, in a stable order.
fn scan(root: &Path, skipped: &mut Vec<String>) -> Result<Vec<ArchiveEntry>, ArchiveError> {
    let mut entries = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(relative) = stack.pop() {
        let dir = if relative.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&relative)
        };
        let mut children: Vec<_> = fs::read_dir(&dir)
            .map_err(io_error("reading directory", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io_error("reading directory", &dir))?;
        children.sort_by_key(|c| c.file_name());
        let mut subdirs = Vec::new();
        for child in children {
            let name = child.file_name();
            let Some(name) = name.to_str() else {
                return Err(ArchiveError::UnsafePath {
                    path: child.path().to_string_lossy().into_owned(),
                    reason: "file names must be UTF-8",
                });
            };
            let path = if relative.is_empty() {
                name.to_string()
            } else {
                format!("{relative}/{name}")
            };
            let full = root.join(&path);
            let metadata = fs::symlink_metadata(&full).map_err(io_error("inspecting", &full))?;
            let mode = metadata.permissions().mode() & 0o777;
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                entries.push(ArchiveEntry {
                    path: path.clone(),
                    kind: EntryKind::Dir,
                    mode,
                    size: 0,
                    blake3: None,
                    target: None,
                });
                subdirs.push(path);
            } else if file_type.is_symlink() {
                let target = fs::read_link(&full).map_err(io_error("reading link", &full))?;
                entries.push(ArchiveEntry {
                    path,
                    kind: EntryKind::Symlink,
                    mode,
                    size: 0,
                    blake3: None,
                    target: Some(target.to_string_lossy().into_owned()),
                });
            } else if file_type.is_file() {
                let (size, hash) = hash_file(&full)?;
                entries.push(ArchiveEntry {
                    path,
                    kind: EntryKind::File,
                    mode,
                    size,
                    blake3: Some(hash),
                    target: None,
                });
            } else {
                skipped.push(path);
            }
        }
        // Reverse so the stack pops subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(entries)
}

/// Size and BLAKE3 hex hash of a file's content.
pub fn hash_file(path: &Path) -> Result<(u64, String), ArchiveError> {
    let mut file = fs::File::open(path).map_err(io_error("reading", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpacks and verifies the archive `archive` into the empty directory `staging`.
/// On error the caller removes `staging`; nothing outside it is ever written.
pub fn import(
    archive: impl Read,
    staging: &Path,
    limits: &ImportLimits,
) -> Result<ImportSummary, ArchiveError> {
    let decoder =
        zstd::Decoder::new(archive).map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let mut tar = tar::Archive::new(decoder);
    let mut entries = tar
        .entries()
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;

    let manifest = read_manifest(&mut entries, limits)?;
    let expected: HashMap<&str, &ArchiveEntry> = manifest
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();

    let mut summary = ImportSummary {
        source_id: manifest.workspace_id,
        source_name: manifest.workspace_name.clone(),
        source_revision: manifest.revision,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        external_links: Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut symlinks: HashSet<String> = HashSet::new();
    let mut regular_files: HashSet<String> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();

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
            tar::EntryType::Regular | tar::EntryType::Link => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            other => {
                return Err(ArchiveError::ForbiddenType {
                    path,
                    kind: match other {
                        tar::EntryType::Char => "character device",
                        tar::EntryType::Block => "block device",
                        tar::EntryType::Fifo => "FIFO",
                        _ => "special entry",
                    },
                })
            }
        };
        if mode & 0o6000 != 0 {
            return Err(ArchiveError::SetuidBit { path, mode });
        }
        if !seen.insert(path.clone()) {
            return Err(ArchiveError::Duplicate(path));
        }
        let through = crate::snapshot::ancestors(&path)
            .find(|a| symlinks.contains(*a))
            .map(str::to_string);
        if let Some(link) = through {
            return Err(ArchiveError::ThroughSymlink { link, path });
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
        let destination = staging.join(&path);
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent).map_err(io_error("creating directory", parent))?;
        }
        match entry_type {
            tar::EntryType::Directory => {
                match fs::create_dir(&destination) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && destination.is_dir() => {}
                    Err(e) => return Err(io_error("creating directory", &destination)(e)),
                }
                dir_modes.push((destination, mode & 0o1777));
                summary.dirs += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = String::from_utf8(target).map_err(|_| ArchiveError::UnsafePath {
                    path: path.clone(),
                    reason: "link target is not UTF-8",
                })?;
                if target.is_empty() || target.contains('\0') {
                    return Err(ArchiveError::UnsafePath {
                        path,
                        reason: "empty link target",
                    });
                }
                if listed.target.as_deref() != Some(target.as_str()) {
                    return Err(ArchiveError::NotInManifest {
                        path,
                        reason: "link target differs".into(),
                    });
                }
                std::os::unix::fs::symlink(&target, &destination)
                    .map_err(io_error("creating link", &destination))?;
                if escapes(&path, &target) {
                    summary.external_links.push((path.clone(), target));
                }
                symlinks.insert(path);
                summary.symlinks += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_path = content_path(&target)
                    .ok()
                    .filter(|t| regular_files.contains(t));
                let Some(target_path) = target_path else {
                    return Err(ArchiveError::HardlinkOutside {
                        path,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                };
                if expected
                    .get(target_path.as_str())
                    .and_then(|t| t.blake3.as_ref())
                    != listed.blake3.as_ref()
                {
                    return Err(ArchiveError::HashMismatch(path));
                }
                fs::hard_link(staging.join(&target_path), &destination)
                    .map_err(io_error("creating hard link", &destination))?;
                regular_files.insert(path);
                summary.files += 1;
            }
            _ => {
                let size = entry.size();
                if size != listed.size {
                    return Err(ArchiveError::NotInManifest {
                        reason: format!("size {size}, manifest says {}", listed.size),
                        path,
                    });
                }
                summary.bytes += size;
                if summary.bytes > limits.max_content_bytes {
                    return Err(ArchiveError::TooLarge(format!(
                        "more than {} bytes of content",
                        limits.max_content_bytes
                    )));
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&destination)
                    .map_err(io_error("creating", &destination))?;
                let mut hasher = blake3::Hasher::new();
                let mut buffer = vec![0u8; 256 * 1024];
                let mut written = 0u64;
                loop {
                    let n = entry
                        .read(&mut buffer)
                        .map_err(|e| ArchiveError::Malformed(format!("{path}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                    file.write_all(&buffer[..n])
                        .map_err(io_error("writing", &destination))?;
                    written += n as u64;
                }
                if written != size {
                    return Err(ArchiveError::Malformed(format!("{path}: truncated entry")));
                }
                if Some(hasher.finalize().to_hex().as_str()) != listed.blake3.as_deref() {
                    return Err(ArchiveError::HashMismatch(path));
                }
                file.set_permissions(fs::Permissions::from_mode(mode & 0o1777))
                    .map_err(io_error("setting mode of", &destination))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = file.set_modified(time);
                }
                regular_files.insert(path);
                summary.files += 1;
            }
        }
    }
    for listed in &manifest.entries {
        if !seen.contains(&listed.path) {
            return Err(ArchiveError::MissingEntry(listed.path.clone()));
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_error("setting mode of", &dir))?;
    }
    Ok(summary)
}

fn read_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &ImportLimits,
) -> Result<ArchiveManifest, ArchiveError> {
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
    let manifest: ArchiveManifest =
        rmp_serde::from_slice(&bytes).map_err(|e| ArchiveError::ManifestInvalid(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(ArchiveError::ManifestInvalid(format!(
            "format is `{}`, expected `{FORMAT}`",
            manifest.format
        )));
    }
    if manifest.version != FORMAT_VERSION {
        return Err(ArchiveError::ManifestInvalid(format!(
            "format version {} is not supported (this aienv reads {FORMAT_VERSION})",
            manifest.version
        )));
    }
    if manifest.entries.len() > limits.max_entries {
        return Err(ArchiveError::TooLarge(format!(
            "{} entries, at most {} allowed",
            manifest.entries.len(),
            limits.max_entries
        )));
    }
    let mut paths = HashSet::new();
    let mut total = 0u64;
    for entry in &manifest.entries {
        check_relative(&entry.path)?;
        if !paths.insert(entry.path.as_str()) {
            return Err(ArchiveError::Duplicate(entry.path.clone()));
        }
        if entry.kind == EntryKind::File && entry.blake3.as_ref().is_none_or(|h| h.len() != 64) {
            return Err(ArchiveError::ManifestInvalid(format!(
                "`{}` has no valid BLAKE3 hash",
                entry.path
            )));
        }
        total = total.saturating_add(entry.size);
    }
    if total > limits.max_content_bytes {
        return Err(ArchiveError::TooLarge(format!(
            "{total} bytes of content, at most {} allowed",
            limits.max_content_bytes
        )));
    }
    Ok(manifest)
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
    check_relative(relative)?;
    Ok(relative.to_string())
}

fn check_relative(path: &str) -> Result<(), ArchiveError> {
    crate::snapshot::check_relative(path).map_err(|reason| ArchiveError::UnsafePath {
        path: path.to_string(),
        reason,
    })
}

/// Whether a link at `path` with `target` points outside the workspace root.
fn escapes(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = path.matches('/').count() as i64;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
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
    fn link_escapes() {
        assert!(escapes(".venv/bin/python", "/usr/bin/python3"));
        assert!(escapes("a", "../x"));
        assert!(escapes("a/b", "../../x"));
        assert!(!escapes("a/b", "../x"));
        assert!(!escapes("a/b", "c/../d"));
        assert_eq!(
            crate::snapshot::ancestors("a/b/c").collect::<Vec<_>>(),
            ["a", "a/b"]
        );
    }
}
