//! One `git` process with a deadline: its own process group (so helpers it starts, such as
//! `git-remote-https` or `ssh`, die with it), bounded output, no terminal.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::GitError;

/// Most bytes kept of each output stream.
const MAX_OUTPUT: usize = 4 << 20;

/// What a finished git process printed.
#[derive(Debug)]
pub(super) struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `command` to completion or until `timeout`, then kills its process group.
pub(super) fn run(
    mut command: Command,
    label: &str,
    timeout: Duration,
) -> Result<Output, GitError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            GitError::NotInstalled
        } else {
            GitError::Spawn {
                command: label.to_string(),
                source,
            }
        }
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || read_bounded(stdout));
    let err = std::thread::spawn(move || read_bounded(stderr));
    // One thread waits for the exit; this one waits for that thread, at most `timeout`.
    let pid = child.id();
    let (exited, exit) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(timeout) {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(GitError::Spawn {
                command: label.to_string(),
                source,
            })
        }
        Err(_) => {
            // SAFETY: killpg with the group this child leads; no memory is touched.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = waiter.join();
            return Err(GitError::Timeout {
                command: label.to_string(),
                seconds: timeout.as_secs(),
            });
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
    })
}

fn read_bounded(mut reader: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}
