//! Confinement of an environment's local processes (set-up steps, tools, the terminal).
//!
//! With bubblewrap: the whole file system read-only, a private `/tmp`, the node's data dir
//! (tokens, keys, the index, other workspaces) and the node user's home replaced by empty
//! directories, only the workspace and its runtime dir writable, and a PID and IPC namespace
//! of its own (another environment's processes, and the tokens in their environment, stay
//! out of sight); `strict` also hides other homes and mounts and gives it its own host name. The
//! network stays: tools must answer the node's proxy. A node running as root
//! never runs environments as root: bubblewrap sets up the mounts as root and `setpriv`
//! drops to the `runtime.run_as` user, with no capabilities and `no_new_privs`, before the
//! environment's program starts. A node running as a user runs bubblewrap unprivileged, in a
//! user namespace, as itself.

use std::path::{Path, PathBuf};

use crate::model::SandboxMode;

/// The unprivileged user environments run as when the node runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// How one environment's processes are started.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The mode in force.
    pub mode: SandboxMode,
    /// bubblewrap, when the processes are confined.
    pub bwrap: Option<PathBuf>,
    /// The user to drop to (the node runs as root).
    pub run_as: Option<RunAs>,
    /// Directories replaced by empty ones.
    pub hidden: Vec<PathBuf>,
    /// Directories left writable (the workspace, its runtime dir).
    pub writable: Vec<PathBuf>,
    /// `HOME` inside (in the runtime dir: caches and tool settings stay with the environment).
    pub home: PathBuf,
}

impl Sandbox {
    /// Whether bubblewrap confines the processes' view of the file system.
    pub fn confined(&self) -> bool {
        self.bwrap.is_some() && self.mode != SandboxMode::Off
    }

    /// One line for status: what confines the environment.
    pub fn describe(&self) -> String {
        let user = match &self.run_as {
            Some(user) => format!("as {} (uid {})", user.name, user.uid),
            None => "as the node's user".to_string(),
        };
        match (self.confined(), self.mode) {
            (true, SandboxMode::Strict) => format!(
                "strict: writes only to the workspace, its runtime dir and /tmp; node data, homes and mounts hidden; own PID, IPC and UTS namespaces; {user}"
            ),
            (true, _) => format!(
                "standard: writes only to the workspace, its runtime dir and /tmp; node data and home hidden; own PID and IPC namespaces; {user}"
            ),
            (false, _) => format!("off: not confined; {user}"),
        }
    }

    /// The command line that runs `argv` in `cwd` inside the sandbox.
    pub fn wrap(&self, argv: &[String], cwd: &Path) -> Vec<String> {
        let Some(bwrap) = &self.bwrap else {
            return argv.to_vec();
        };
        let path = |p: &Path| p.display().to_string();
        let mut out: Vec<String> = vec![path(bwrap), "--die-with-parent".into()];
        if self.run_as.is_some() {
            // Just enough for setpriv to drop to the user; it clears them all.
            for cap in ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"] {
                out.extend(["--cap-add".into(), cap.into()]);
            }
        }
        if self.mode == SandboxMode::Off {
            // Only there to drop privileges: the system stays writable (to what the user may
            // write) and /tmp shared; the node's data dir is still replaced, so the paths to
            // the workspace and runtime dir can be walked by the user.
            out.extend(
                [
                    "--bind",
                    "/",
                    "/",
                    "--dev-bind",
                    "/dev",
                    "/dev",
                    "--proc",
                    "/proc",
                ]
                .map(String::from),
            );
        } else {
            out.extend(
                ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"].map(String::from),
            );
            out.extend(["--perms", "1777", "--tmpfs", "/tmp"].map(String::from));
        }
        // Outer directories first, so an inner one is not covered again.
        let mut hidden: Vec<&PathBuf> = self.hidden.iter().collect();
        hidden.sort_by_key(|p| p.as_os_str().len());
        for dir in &hidden {
            out.extend(["--perms".into(), "0711".into(), "--tmpfs".into(), path(dir)]);
        }
        for writable in &self.writable {
            // Its parents inside the innermost hidden directory are made again, traversable
            // but not listable.
            if let Some(top) = hidden.iter().rev().find(|h| writable.starts_with(h)) {
                let mut parents: Vec<&Path> = writable
                    .ancestors()
                    .skip(1)
                    .take_while(|p| p.starts_with(top) && *p != top.as_path())
                    .collect();
                parents.reverse();
                for parent in parents {
                    out.extend([
                        "--perms".into(),
                        "0711".into(),
                        "--dir".into(),
                        path(parent),
                    ]);
                }
            }
            out.extend(["--bind".into(), path(writable), path(writable)]);
        }
        if self.mode != SandboxMode::Off {
            // Other environments' processes (same run-as user) stay out of sight: their
            // environment holds tokens.
            out.extend(["--unshare-pid", "--unshare-ipc"].map(String::from));
        }
        if self.mode == SandboxMode::Strict {
            out.push("--unshare-uts".into());
        }
        out.extend(["--chdir".into(), path(cwd), "--".into()]);
        if let Some(user) = &self.run_as {
            out.extend([
                "setpriv".into(),
                format!("--reuid={}", user.uid),
                format!("--regid={}", user.gid),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--bounding-set=-all".into(),
                "--".into(),
            ]);
        }
        out.extend(argv.iter().cloned());
        out
    }

    /// Variables that change inside: `HOME` in the runtime dir, and none of the node's XDG
    /// directories (hidden or not writable there).
    pub fn adjust_env(&self, env: &mut Vec<(String, String)>) {
        if self.bwrap.is_none() {
            return;
        }
        env.retain(|(name, _)| !name.starts_with("XDG_") && name != "HOME" && name != "TMPDIR");
        // PATH entries the sandbox hides (a pyenv in the node user's home) would only fail.
        for (name, value) in env.iter_mut() {
            if name == "PATH" {
                *value = std::env::split_paths(value.as_str())
                    .filter(|dir| self.visible(dir))
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":");
            }
        }
        env.push(("HOME".into(), self.home.display().to_string()));
        env.push(("TMPDIR".into(), "/tmp".into()));
    }

    /// Whether `path` can be seen inside (not under a hidden directory, or inside a
    /// writable one there).
    pub fn visible(&self, path: &Path) -> bool {
        if self.bwrap.is_none() {
            return true;
        }
        self.writable.iter().any(|w| path.starts_with(w))
            || !self.hidden.iter().any(|h| path.starts_with(h))
    }

    /// Gives the run-as user the workspace and runtime dir (only entries it does not own
    /// yet), and makes the home directory. Blocking: a walk of the trees.
    pub fn prepare_dirs(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.home)?;
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        for dir in &self.writable {
            chown_tree(dir, user.uid, user.gid)?;
        }
        Ok(())
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        if metadata.uid() != uid || metadata.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The user `name`, made (a system user without a home or login shell) when it does not
/// exist yet. Only called when the node runs as root.
pub fn ensure_user(name: &str) -> Result<RunAs, String> {
    if let Some(user) = lookup_user(name) {
        return Ok(user);
    }
    let output = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .map_err(|e| format!("cannot run useradd to make the user `{name}`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "useradd {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    lookup_user(name).ok_or_else(|| format!("useradd made no user `{name}`"))
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null, points to a valid passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    (uid != 0).then(|| RunAs {
        name: name.to_string(),
        uid,
        gid,
    })
}

/// Where bubblewrap is, if installed.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    path.split(':')
        .map(|dir| Path::new(dir).join("bwrap"))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_hides_the_data_dir_and_binds_the_workspace() {
        let sandbox = Sandbox {
            mode: SandboxMode::Standard,
            bwrap: Some("/usr/bin/bwrap".into()),
            run_as: Some(RunAs {
                name: "aienv-env".into(),
                uid: 990,
                gid: 990,
            }),
            hidden: vec!["/srv/aienv".into()],
            writable: vec!["/srv/aienv/workspaces/w1".into()],
            home: "/srv/aienv/runtime/w1/env/home".into(),
        };
        let argv = sandbox.wrap(
            &["python3".into(), "-V".into()],
            Path::new("/srv/aienv/workspaces/w1"),
        );
        let line = argv.join(" ");
        assert!(line.contains("--perms 0711 --tmpfs /srv/aienv"), "{line}");
        assert!(line.contains("--perms 0711 --dir /srv/aienv/workspaces --bind /srv/aienv/workspaces/w1 /srv/aienv/workspaces/w1"), "{line}");
        assert!(
            line.contains("-- setpriv --reuid=990 --regid=990"),
            "{line}"
        );
        assert!(line.ends_with("-- python3 -V"), "{line}");
        assert!(line.contains("--unshare-pid") && !line.contains("--unshare-uts"));
        let strict = Sandbox {
            mode: SandboxMode::Strict,
            run_as: None,
            ..sandbox.clone()
        };
        let line = strict.wrap(&["sh".into()], Path::new("/")).join(" ");
        assert!(
            line.contains("--unshare-pid") && !line.contains("setpriv"),
            "{line}"
        );
        let unconfined = Sandbox {
            bwrap: None,
            ..sandbox.clone()
        };
        assert_eq!(unconfined.wrap(&["sh".into()], Path::new("/")), ["sh"]);
        // Off, as root: bubblewrap only drops privileges.
        let off = Sandbox {
            mode: SandboxMode::Off,
            ..sandbox
        };
        let line = off.wrap(&["sh".into()], Path::new("/")).join(" ");
        assert!(
            line.contains("--bind / /") && line.contains("setpriv"),
            "{line}"
        );
        assert!(
            !line.contains("--tmpfs /tmp") && line.contains("--tmpfs /srv/aienv"),
            "{line}"
        );
        assert!(!off.confined());
    }
}
