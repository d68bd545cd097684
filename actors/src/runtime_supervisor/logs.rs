//! Log files of environments: one per tool (and one for set-up, one per container or VM)
//! under `<state dir>/logs/`, appended to, rotated once at 16 MiB when a tool (re)starts.

use std::io::Write;
use std::path::Path;

/// Size at which a log is moved to `<name>.1` when its tool starts again.
const ROTATE_AT: u64 = 16 << 20;

/// Opens `path` for appending, creating it (and its directory).
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Appends `text`; logging must never fail the work it logs.
pub fn append(path: &Path, text: &str) {
    if let Ok(mut file) = open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Moves a log that grew past the limit to `<name>.1` (replacing the older one).
pub fn rotate(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_AT) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
    }
}
