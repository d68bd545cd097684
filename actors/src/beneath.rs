//! Reads of a workspace's content that cannot leave the workspace.
//!
//! A workspace's own processes (sandboxed tools among them) can swap a directory for a link
//! at any moment. A read by `root.join(path)` follows such a link in the middle of the path,
//! so the node would list, hash, and later serve to its peers a file from outside the
//! workspace under that path: a way out of the sandbox. Every path here is resolved beneath
//! the workspace's root with no link followed anywhere (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`; on a kernel without it, one `openat` per component with
//! `O_NOFOLLOW`). A link where a directory was is then an error naming the path, never
//! another file.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// A workspace's root, open, to resolve paths beneath.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens `root` (itself resolved as given: the node chose it).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    /// `relative`'s full path, for messages.
    pub fn full(&self, relative: &str) -> PathBuf {
        if relative.is_empty() {
            self.path.clone()
        } else {
            self.path.join(relative)
        }
    }

    /// The regular file at `relative`, open for reading. Opened without blocking and checked
    /// to be a regular file: a FIFO swapped in would otherwise hold the reader until some
    /// process writes to it.
    pub fn open_file(&self, relative: &str) -> io::Result<fs::File> {
        self.open_file_with_metadata(relative).map(|(file, _)| file)
    }

    /// [`Beneath::open_file`], with the metadata it was checked by.
    pub fn open_file_with_metadata(&self, relative: &str) -> io::Result<(fs::File, fs::Metadata)> {
        let file = fs::File::from(self.resolve(
            relative,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        )?);
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (it changed while it was read)",
            ));
        }
        Ok((file, metadata))
    }

    /// What is at `relative`, a link not followed (as `symlink_metadata`).
    pub fn metadata(&self, relative: &str) -> io::Result<fs::Metadata> {
        let fd = self.resolve(relative, OFlags::PATH | OFlags::NOFOLLOW)?;
        fs::File::from(fd).metadata()
    }

    /// The target of the link at `relative`.
    pub fn read_link(&self, relative: &str) -> io::Result<PathBuf> {
        let fd = self.resolve(relative, OFlags::PATH | OFlags::NOFOLLOW)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        let bytes: Vec<u8> = target.into_bytes();
        Ok(PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
        ))
    }

    /// Whether `error` says the path does not lead to anything inside the workspace: nothing
    /// there, a file where a directory should be, or a link on the way.
    pub fn is_absent(error: &io::Error) -> bool {
        error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR)
    }

    /// The directory at `relative` (`""`: the root), open for reading its entries with
    /// [`rustix::fs::RawDir`] and for [`open_child_dir`].
    pub fn open_dir(&self, relative: &str) -> io::Result<OwnedFd> {
        self.resolve(relative, DIR_FLAGS)
    }

    fn resolve(&self, relative: &str, flags: OFlags) -> io::Result<OwnedFd> {
        self.resolve_raw(relative, flags).map_err(link_in_the_way)
    }

    fn resolve_raw(&self, relative: &str, flags: OFlags) -> io::Result<OwnedFd> {
        check_relative(relative)?;
        let path = if relative.is_empty() { "." } else { relative };
        let flags = flags | OFlags::CLOEXEC;
        match rustix::fs::openat2(
            self.root.as_fd(),
            path,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::NOSYS) => self.resolve_by_components(path, flags),
            // A rename elsewhere raced the lookup (`RESOLVE_BENEATH` refuses rather than
            // risk it): by components, which cannot be led out either.
            Err(rustix::io::Errno::AGAIN) => self.resolve_by_components(path, flags),
            result => Ok(result?),
        }
    }

    /// One `openat` per component, none following a link (kernels before 5.6).
    fn resolve_by_components(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let mut components = path.split('/').peekable();
        let mut dir: Option<OwnedFd> = None;
        while let Some(component) = components.next() {
            let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            if components.peek().is_none() {
                return Ok(rustix::fs::openat(at, component, flags, Mode::empty())?);
            }
            dir = Some(rustix::fs::openat(
                at,
                component,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        unreachable!("a path has at least one component")
    }
}

/// Calls `each` with every name in the open directory `dir` but `.` and `..`, read straight
/// from it (`getdents`: however the directory's path has changed since it was opened, these
/// are its own entries). `buffer` is reused from call to call.
pub fn for_each_name(
    dir: BorrowedFd<'_>,
    buffer: &mut Vec<MaybeUninit<u8>>,
    mut each: impl FnMut(&CStr) -> io::Result<()>,
) -> io::Result<()> {
    if buffer.len() < LISTING_BUFFER_BYTES {
        buffer.resize(LISTING_BUFFER_BYTES, MaybeUninit::uninit());
    }
    let mut entries = rustix::fs::RawDir::new(dir, buffer.as_mut_slice());
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        each(name)?;
    }
    Ok(())
}

/// What one `getdents` call may fill: as much as a C library's directory stream reads.
const LISTING_BUFFER_BYTES: usize = 32 * 1024;

/// How a directory is opened for listing: never through a link.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The directory `name` (one component, as listed) in the open directory `parent`, open as
/// [`Beneath::open_dir`] opens one. A walk goes down this way: one lookup per directory
/// instead of a resolution of its whole path from the root, and no more able to leave the
/// tree, since `parent` is inside it and `name` is neither a link (`O_NOFOLLOW`), `..`, nor
/// more than one component.
pub fn open_child_dir(parent: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a name in a directory"),
        ));
    }
    rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
        .map_err(io::Error::from)
        .map_err(link_in_the_way)
}

/// A link met where none may be followed, said as what it means here.
fn link_in_the_way(error: io::Error) -> io::Error {
    if matches!(error.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) {
        io::Error::new(
            io::ErrorKind::NotFound,
            "a link is in the way (links are never followed here; the path changed while it was read)",
        )
    } else {
        error
    }
}

/// Opens the regular file at `relative` beneath `root` for reading, with its metadata (see
/// [`Beneath`]).
pub fn open_file(root: &Path, relative: &str) -> io::Result<(fs::File, fs::Metadata)> {
    Beneath::open(root)?.open_file_with_metadata(relative)
}

/// Refuses what no workspace path is: absolute, `.`, `..` or empty components (snapshot
/// paths are checked for this already; this is the last line).
fn check_relative(relative: &str) -> io::Result<()> {
    if relative.is_empty() {
        return Ok(());
    }
    if relative.starts_with('/')
        || relative
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{relative}` is not a path inside a workspace"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// A workspace with `d/f`, `link-dir` (a link to a directory outside holding `secret`),
    /// `link-file` (a link to that secret) and `d/inner` (a relative link up and out).
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "the node's key").unwrap();
        let root = temp.path().join("ws");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), "mine").unwrap();
        symlink(&outside, root.join("link-dir")).unwrap();
        symlink(outside.join("secret"), root.join("link-file")).unwrap();
        symlink("../../outside", root.join("d/inner")).unwrap();
        (temp, root)
    }

    fn read(mut file: fs::File) -> String {
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn paths_inside_open_and_links_anywhere_in_a_path_are_refused() {
        let (_temp, root) = tree();
        let beneath = Beneath::open(&root).unwrap();
        assert_eq!(read(beneath.open_file("d/f").unwrap()), "mine");
        for path in [
            "link-dir/secret",
            "link-file",
            "d/inner/secret",
            "../outside/secret",
            "d/../../outside/secret",
            "/etc/passwd",
            "d//f",
            "./d/f",
        ] {
            assert!(
                beneath.open_file(path).is_err(),
                "{path} must not open beneath the workspace"
            );
        }
        assert!(beneath.open_dir("link-dir").is_err());
        let refused = beneath.open_file("link-dir/secret").unwrap_err();
        assert!(
            refused.to_string().contains("a link is in the way"),
            "{refused}"
        );
        // One name at a time from an open directory: never a link, `..` or a path.
        let root_fd = beneath.open_dir("").unwrap();
        assert!(open_child_dir(root_fd.as_fd(), "d").is_ok());
        for name in ["link-dir", "..", ".", "", "d/inner", "d/../d"] {
            assert!(
                open_child_dir(root_fd.as_fd(), name).is_err(),
                "{name:?} must not open as a child"
            );
        }
        // A FIFO in a file's place is refused at once, not waited on.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("d/fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(beneath.open_file("d/fifo").is_err());
        assert!(beneath.open_file("d").is_err());
        // A link itself is described, not followed.
        assert!(beneath
            .metadata("link-dir")
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(beneath
            .metadata("link-dir/secret")
            .is_err_and(|e| Beneath::is_absent(&e)));
        assert_eq!(
            beneath.read_link("d/inner").unwrap(),
            PathBuf::from("../../outside")
        );
        assert!(beneath.read_link("link-dir/x").is_err());
        // Without openat2 (older kernels), the same answers by components.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        assert!(beneath.resolve_by_components("d/f", flags).is_ok());
        for path in ["link-dir/secret", "link-file", "d/inner/secret"] {
            assert!(
                beneath.resolve_by_components(path, flags).is_err(),
                "{path} by components"
            );
        }
    }

    /// The attack: a workspace's process swaps a directory the node already listed for a
    /// link out of the workspace before the node lists or reads inside it.
    #[test]
    fn a_directory_swapped_for_a_link_after_it_was_opened_is_read_as_it_was() {
        let (temp, root) = tree();
        let beneath = Beneath::open(&root).unwrap();
        let dir = beneath.open_dir("d").unwrap();
        fs::rename(root.join("d"), temp.path().join("moved")).unwrap();
        symlink(temp.path().join("outside"), root.join("d")).unwrap();
        let mut names = Vec::new();
        for_each_name(dir.as_fd(), &mut Vec::new(), |name| {
            names.push(name.to_str().unwrap().to_string());
            Ok(())
        })
        .unwrap();
        names.sort();
        assert_eq!(names, ["f", "inner"], "the directory that was opened");
        assert!(beneath.open_dir("d").is_err());
        let root_fd = beneath.open_dir("").unwrap();
        assert!(open_child_dir(root_fd.as_fd(), "d").is_err());
        assert!(beneath.open_file("d/secret").is_err());
    }
}
