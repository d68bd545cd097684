//! File-system primitives that make every change durable and atomic: write to a temporary
//! sibling, fsync, rename, fsync the directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file operation that failed: what was being done, to which path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    /// What was being done (`writing`, `renaming into place`, ...).
    pub action: &'static str,
    /// The file at fault.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// Wraps an I/O error with what was being done to which path.
fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.into();
    move |source| FsError {
        action,
        path,
        source,
    }
}

/// Size and modification time of a file, used to notice edits made behind the store's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it does not exist.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let metadata = fs::symlink_metadata(path).ok()?;
        Some(FileStamp {
            len: metadata.len(),
            mtime_ns: metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128,
        })
    }
}

/// Writes a new file readable by the owner only, durably, replacing nothing half-written.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// [`write_atomic`] with the content written by `write` (buffered), so that it need not be
/// held in memory first.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut fs::File>) -> std::io::Result<()>,
) -> Result<(), FsError> {
    let dir = path
        .parent()
        .expect("write_atomic needs a file inside a directory");
    let name = path.file_name().expect("write_atomic needs a file name");
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temp).map_err(io("creating", &temp))?;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, &mut file);
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(io("writing", &temp))?;
        drop(out);
        file.sync_all().map_err(io("syncing", &temp))?;
        fs::rename(&temp, path).map_err(io("renaming into place", path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Makes every regular file under `root` durable, with the directories holding them, except
/// those whose `/`-separated relative path `skip` accepts; links are not followed. For a tree whose
/// other files are checked by content after a crash instead (their directory entries are
/// metadata, which ext4 and XFS journal in order: the next durable write covers them).
pub fn fsync_tree_except(root: &Path, skip: impl Fn(&str) -> bool) -> Result<(), FsError> {
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        let mut synced = false;
        for entry in fs::read_dir(&dir).map_err(io("reading directory", &dir))? {
            let entry = entry.map_err(io("reading directory", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let inner = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let kind = entry.file_type().map_err(io("inspecting", &path))?;
            if kind.is_dir() {
                pending.push((path, inner));
            } else if kind.is_file() && !skip(&inner) {
                fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io("syncing", &path))?;
                synced = true;
            }
        }
        if synced {
            fsync_dir(&dir)?;
        }
    }
    Ok(())
}

/// Flushes every dirty page of the file system holding `path` (one call instead of an
/// fsync per copied file).
pub fn sync_filesystem(path: &Path) -> Result<(), FsError> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path).map_err(io("opening", path))?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io("syncing file system of", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Reads a file from an offset with positioned reads: several readers of one open file (or
/// of its clones, which share one offset) never move each other.
pub struct ReadAt<'a> {
    file: &'a fs::File,
    at: u64,
}

impl<'a> ReadAt<'a> {
    /// Reads `file` from its start.
    pub fn new(file: &'a fs::File) -> ReadAt<'a> {
        ReadAt { file, at: 0 }
    }
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buffer, self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// A shared open file read from an offset of its own (positioned reads, no shared cursor):
/// [`ReadAt`] that owns its handle, so it can outlive the borrow it was made from.
pub struct SharedFile {
    file: std::sync::Arc<fs::File>,
    at: u64,
}

impl SharedFile {
    /// Reads `file` from its start.
    pub fn new(file: std::sync::Arc<fs::File>) -> SharedFile {
        SharedFile { file, at: 0 }
    }
}

impl std::io::Read for SharedFile {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buffer, self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// Appends `len` bytes of `file` from `offset` to `out`, read straight into its spare
/// capacity: a chunk server's buffers are not zeroed first only to be overwritten. On error
/// (a short file included) `out` is as it was.
pub fn append_exact_at(
    file: &fs::File,
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let start = out.len();
    out.reserve(len);
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let Ok(at) = libc::off_t::try_from(at) else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        // SAFETY: the destination is inside the capacity reserved above and past `len()`, so
        // nothing initialized is overwritten, and pread writes at most `len - done` bytes to
        // it; `file` keeps the descriptor open for the call.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                out.as_mut_ptr().add(start + done).cast(),
                len - done,
                at,
            )
        };
        match read {
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            n if n > 0 => done += n as usize,
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    // SAFETY: the `len` bytes after `start` were written by pread above.
    unsafe { out.set_len(start + len) };
    Ok(())
}

/// What [`copy_tree`] did.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Regular files copied.
    pub files: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Symbolic links recreated (never followed).
    pub symlinks: u64,
    /// Entries left out (sockets, devices, FIFOs), as relative paths.
    pub skipped: Vec<String>,
}

/// Copies the tree under `source` into `target` (which must exist), recreating symlinks as
/// links and leaving out special files.
pub fn copy_tree(source: &Path, target: &Path) -> Result<CopyReport, FsError> {
    let mut report = CopyReport::default();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    // Directory modes are applied last so a read-only directory can still be filled.
    let mut modes = Vec::new();
    while let Some(relative) = stack.pop() {
        let dir = source.join(&relative);
        let entries = fs::read_dir(&dir).map_err(io("reading directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io("reading directory", &dir))?;
            let relative = relative.join(entry.file_name());
            let from = source.join(&relative);
            let to = target.join(&relative);
            let file_type = entry.file_type().map_err(io("inspecting", &from))?;
            if file_type.is_dir() {
                fs::create_dir(&to).map_err(io("creating directory", &to))?;
                let mode = fs::symlink_metadata(&from)
                    .map_err(io("inspecting", &from))?
                    .permissions();
                modes.push((to, mode));
                stack.push(relative);
            } else if file_type.is_symlink() {
                let link = fs::read_link(&from).map_err(io("reading link", &from))?;
                std::os::unix::fs::symlink(&link, &to).map_err(io("creating link", &to))?;
                report.symlinks += 1;
            } else if file_type.is_file() {
                report.bytes += fs::copy(&from, &to).map_err(io("copying", &from))?;
                report.files += 1;
            } else {
                report.skipped.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    for (dir, mode) in modes.into_iter().rev() {
        fs::set_permissions(&dir, mode).map_err(io("setting mode of", &dir))?;
    }
    Ok(report)
}

/// Removes a directory tree, or a single file or link, if it exists. Links are removed, never
/// followed.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io("removing", path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_exact_at_appends_the_range_or_leaves_the_buffer_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &content).unwrap();
        let file = fs::File::open(&path).unwrap();
        let mut out = b"head".to_vec();
        append_exact_at(&file, 1000, 50_000, &mut out).unwrap();
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &content[1000..51_000]);
        // Past the end: an error, and what was there stays.
        let error = append_exact_at(&file, 90_000, 20_000, &mut out).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(out.len(), 50_004);
        append_exact_at(&file, 0, 0, &mut out).unwrap();
        assert_eq!(out.len(), 50_004);
    }
}
