//! `aienv daemon start|stop|status`: the node as a background process on machines without a
//! service manager. `start` runs `aienv serve` with the same options, detached, its output in
//! `<data-dir>/aienv.log` and its pid in `<data-dir>/aienv.pid`; `stop` and `status` find it
//! by that data dir. Exit codes follow LSB init scripts: `status` answers 0 running,
//! 1 dead with a pid file left, 3 stopped.

use std::io::{BufRead, Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::output::exit;
use super::CliError;

/// The pid file, in the data dir.
pub const PID_FILE: &str = "aienv.pid";
/// The log file, in the data dir.
pub const LOG_FILE: &str = "aienv.log";
/// How long `start` waits for the node to listen, and `stop` for it to end before SIGKILL
/// (its shutdown stops environments for up to 30 s).
const START_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(45);

/// The node recorded in `data_dir`, when its process is alive and is an aienv node.
fn running(data_dir: &Path) -> Result<Option<i32>, CliError> {
    let path = data_dir.join(PID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CliError::new(format!("{}: {error}", path.display())));
        }
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(None);
    };
    // A recycled pid is someone else's process: only an `aienv … serve` counts.
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<&[u8]> = command.split(|b| *b == 0).collect();
    let is_node = words
        .first()
        .is_some_and(|w| w.windows(5).any(|x| x == b"aienv"))
        && words.iter().any(|w| *w == b"serve");
    Ok(is_node.then_some(pid))
}

/// `aienv daemon start [serve options]`.
pub fn start(data_dir: &Path) -> Result<(), CliError> {
    if let Some(pid) = running(data_dir)? {
        println!(
            "aienv is already running (pid {pid}); its log: {}",
            data_dir.join(LOG_FILE).display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| CliError::new(format!("data dir {}: {e}", data_dir.display())))?;
    let log_path = data_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CliError::new(format!("{}: {e}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or_default();
    // The same command line, `daemon start` becoming `serve`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let at = args
        .windows(2)
        .position(|w| w[0] == "daemon" && w[1] == "start")
        .ok_or_else(|| CliError::new("cannot find `daemon start` in the command line"))?;
    args.splice(at..at + 2, [std::ffi::OsString::from("serve")]);
    let exe = std::env::current_exe().map_err(|e| CliError::new(e.to_string()))?;
    let mut command = Command::new(exe);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| CliError::new(e.to_string()))?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves this terminal's session, so
    // closing the terminal does not end the node.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| CliError::new(format!("starting aienv serve: {e}")))?;
    let pid_path = data_dir.join(PID_FILE);
    aienv_actors::fsio::write_atomic(&pid_path, format!("{}\n", child.id()).as_bytes())
        .map_err(|e| CliError::new(e.to_string()))?;
    let deadline = Instant::now() + START_WAIT;
    loop {
        let banner = banner_since(&log_path, log_start);
        if banner
            .iter()
            .any(|l| l.starts_with("aienv: dashboard on this machine"))
            || banner.len() >= 6
        {
            for line in banner {
                println!("{line}");
            }
            println!(
                "aienv: running in the background (pid {}); log: {}",
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(&pid_path);
            return Err(CliError::new(format!(
                "aienv serve exited ({status}) before listening; the end of {}:\n{}",
                log_path.display(),
                tail(&log_path, log_start, 20)
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "aienv serve (pid {}) did not report listening within {} s; see {}",
                child.id(),
                START_WAIT.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `aienv daemon stop`.
pub fn stop(data_dir: &Path) -> Result<(), CliError> {
    let pid_path = data_dir.join(PID_FILE);
    let Some(pid) = running(data_dir)? else {
        let _ = std::fs::remove_file(&pid_path);
        println!("aienv is not running (data dir {})", data_dir.display());
        return Ok(());
    };
    // SAFETY: signalling a process we identified as this data dir's node.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT;
    while running(data_dir)?.is_some() {
        if Instant::now() > deadline {
            eprintln!(
                "aienv (pid {pid}) did not stop within {} s: killing it",
                STOP_WAIT.as_secs()
            );
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&pid_path);
    println!("aienv stopped (pid {pid})");
    Ok(())
}

/// `aienv daemon status`: prints the state; the exit code says it to scripts.
pub fn status(data_dir: &Path, json: bool) -> Result<u8, CliError> {
    let pid_path = data_dir.join(PID_FILE);
    let log_path = data_dir.join(LOG_FILE);
    let (state, pid, code) = match running(data_dir)? {
        Some(pid) => ("running", Some(pid), exit::OK),
        None if pid_path.exists() => ("dead", None, 1),
        None => ("stopped", None, 3),
    };
    let url = banner_since(&log_path, last_start(&log_path))
        .iter()
        .find_map(|l| l.strip_prefix("aienv: listening on ").map(str::to_string));
    if json {
        super::output::print_json(&serde_json::json!({
            "state": state,
            "pid": pid,
            "url": if pid.is_some() { url } else { None },
            "data_dir": data_dir,
            "log": log_path,
        }));
    } else {
        match (state, pid) {
            ("running", Some(pid)) => println!(
                "aienv is running (pid {pid}){}; log: {}",
                url.map(|u| format!(" at {u}")).unwrap_or_default(),
                log_path.display()
            ),
            ("dead", _) => println!(
                "aienv is not running, but {} is left (it ended without `aienv daemon stop`); see {}",
                pid_path.display(),
                log_path.display()
            ),
            _ => println!("aienv is stopped (data dir {})", data_dir.display()),
        }
    }
    Ok(code)
}

/// The `aienv:` lines the node printed since byte `from` of its log.
fn banner_since(log: &Path, from: u64) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    std::io::BufReader::new(file.take(1 << 20))
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("aienv: "))
        .take(16)
        .collect()
}

/// Where the last start's banner begins in the log (searched in its last MiB: a log grows
/// without bound, a banner is a few hundred bytes near the start of a run).
fn last_start(log: &Path) -> u64 {
    let Ok(mut file) = std::fs::File::open(log) else {
        return 0;
    };
    let from = file
        .metadata()
        .map_or(0, |m| m.len().saturating_sub(1 << 20));
    let mut text = Vec::new();
    if file.seek(std::io::SeekFrom::Start(from)).is_err()
        || file.take(1 << 20).read_to_end(&mut text).is_err()
    {
        return 0;
    }
    let needle = b"aienv: listening on ";
    text.windows(needle.len())
        .rposition(|w| w == needle)
        .map_or(0, |at| from + at as u64)
}

fn tail(log: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.seek(std::io::SeekFrom::Start(from));
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
