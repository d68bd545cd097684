//! The node's terminal: a PTY with a login shell in a process environment, an `exec` with a
//! TTY in a container, or a VM's serial console — all behind one channel pair so the
//! WebSocket gateway and the CLI need not know which. Dropping the input sender ends the
//! session and every process it started.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::limits::Limits;
use super::RuntimeError;

/// Where a terminal attaches.
#[derive(Debug, Clone)]
pub enum TerminalTarget {
    /// A login shell on this host with the environment's variables.
    Shell {
        /// Shell and arguments.
        argv: Vec<String>,
        /// Its environment.
        env: Vec<(String, String)>,
        /// Working directory.
        cwd: PathBuf,
        /// The environment's limits.
        limits: Limits,
    },
    /// A shell `exec`ed in a container.
    Container {
        /// Container id.
        id: String,
        /// Working directory inside it.
        workdir: String,
    },
    /// A VM's serial console.
    Console {
        /// libvirt connection URI.
        uri: String,
        /// Domain name.
        domain: String,
    },
}

/// What the person sends.
#[derive(Debug, Clone)]
pub enum TerminalInput {
    /// Keystrokes (UTF-8 or raw bytes).
    Data(Vec<u8>),
    /// The window's new size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// An open terminal session.
pub struct Terminal {
    /// Keystrokes and resizes; dropping it ends the session.
    pub input: mpsc::Sender<TerminalInput>,
    /// Output; closed when the shell exits.
    pub output: mpsc::Receiver<Vec<u8>>,
}

/// Opens a terminal on `target`, sized `cols` × `rows`. Must run inside a Tokio
/// `LocalSet` (an actix arbiter): the session's driver is spawned onto it.
pub async fn open(target: TerminalTarget, cols: u16, rows: u16) -> Result<Terminal, RuntimeError> {
    let (input, input_receiver) = mpsc::channel(64);
    let (output_sender, output) = mpsc::channel(64);
    match target {
        TerminalTarget::Shell {
            argv,
            env,
            cwd,
            limits,
        } => {
            let session = PtySession::spawn(&argv, &env, &cwd, &limits, cols, rows)?;
            actix::spawn(session.drive(input_receiver, output_sender));
        }
        TerminalTarget::Container { id, workdir } => {
            super::docker::exec_terminal(&id, &workdir, cols, rows, input_receiver, output_sender)
                .await?;
        }
        TerminalTarget::Console { uri, domain } => {
            console(&uri, &domain, input_receiver, output_sender)?;
        }
    }
    Ok(Terminal { input, output })
}

#[cfg(feature = "libvirt")]
fn console(
    uri: &str,
    domain: &str,
    input: mpsc::Receiver<TerminalInput>,
    output: mpsc::Sender<Vec<u8>>,
) -> Result<(), RuntimeError> {
    super::libvirt::console(uri, domain, input, output)
}

#[cfg(not(feature = "libvirt"))]
fn console(
    _: &str,
    _: &str,
    _: mpsc::Receiver<TerminalInput>,
    _: mpsc::Sender<Vec<u8>>,
) -> Result<(), RuntimeError> {
    Err(RuntimeError::BackendUnavailable {
        backend: "libvirt",
        reason: "this aienv was built without the `libvirt` feature".into(),
    })
}

struct PtySession {
    master: AsyncFd<OwnedFd>,
    child: tokio::process::Child,
    pid: i32,
}

impl PtySession {
    fn spawn(
        argv: &[String],
        env: &[(String, String)],
        cwd: &std::path::Path,
        limits: &Limits,
        cols: u16,
        rows: u16,
    ) -> Result<PtySession, RuntimeError> {
        let (master, slave) =
            open_pty(cols, rows).map_err(|e| RuntimeError::io("opening a PTY", e))?;
        let stdio = |fd: &OwnedFd| -> Result<std::process::Stdio, RuntimeError> {
            Ok(fd
                .try_clone()
                .map_err(|e| RuntimeError::io("duplicating the PTY", e))?
                .into())
        };
        let mut command = std::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("TERM", "xterm-256color")
            .env("COLORTERM", "truecolor")
            .stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?);
        limits.apply(&mut command, true);
        // SAFETY: ioctl on the child's own stdin, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError::io(format!("starting `{}`", argv[0]), e))?;
        drop(slave);
        let pid = child.id().unwrap_or(0) as i32;
        set_nonblocking(&master).map_err(|e| RuntimeError::io("configuring the PTY", e))?;
        // SAFETY: an OwnedFd keeps its one descriptor open until the AsyncFd drops it.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| RuntimeError::io("registering the PTY", e.into()))?;
        tracing::debug!(pid, "terminal started");
        Ok(PtySession { master, child, pid })
    }

    async fn drive(
        mut self,
        mut input: mpsc::Receiver<TerminalInput>,
        output: mpsc::Sender<Vec<u8>>,
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut exited = false;
        loop {
            tokio::select! {
                readable = self.master.readable() => {
                    let Ok(mut guard) = readable else { break };
                    match guard.try_io(|fd| read_fd(fd.get_ref(), &mut buffer)) {
                        Ok(Ok(0)) | Ok(Err(_)) => break, // EIO: every writer closed
                        Ok(Ok(n)) => {
                            if output.send(buffer[..n].to_vec()).await.is_err() {
                                break;
                            }
                        }
                        Err(_would_block) => continue,
                    }
                }
                message = input.recv() => match message {
                    Some(TerminalInput::Data(bytes)) => {
                        if self.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(TerminalInput::Resize { cols, rows }) => {
                        let _ = resize(self.master.get_ref(), cols, rows);
                    }
                    None => break,
                },
                _ = self.child.wait(), if !exited => {
                    // Drain what the shell wrote last; the read then fails with EIO.
                    exited = true;
                }
            }
        }
        // The session, and everything started in it, ends with the socket.
        // SAFETY: signals to the session's own process group.
        unsafe {
            libc::kill(-self.pid, libc::SIGHUP);
        }
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            let _ = self.child.wait().await;
        }
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        tracing::debug!(pid = self.pid, "terminal ended");
    }

    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: writing from a valid buffer to our PTY master.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn read_fd(fd: &OwnedFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid buffer from our PTY master.
    let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn open_pty(cols: u16, rows: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master = 0;
    let mut slave = 0;
    let size = winsize(cols, rows);
    // SAFETY: openpty fills two descriptors we then own.
    let result = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from openpty.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: setting close-on-exec on our own descriptors.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok((master, slave))
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows.clamp(1, 1000),
        ws_col: cols.clamp(1, 1000),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn resize(fd: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let size = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ with a valid winsize on our PTY master.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl flags on our own descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
