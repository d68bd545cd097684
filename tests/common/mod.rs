//! Test harness: real nodes (the real binary) on ephemeral loopback ports with temp data dirs.
#![allow(dead_code)]

pub mod git_server;
pub mod lan;
pub mod openapi;
pub mod runtime;
pub mod slurm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aienv::client::{Client, Credentials};
use aienv_actors::identity::{KeyFingerprint, NodeIdentity};

/// Path of the `aienv` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_aienv")
}

/// A node process; killed on drop.
pub struct TestNode {
    pub child: Option<Child>,
    /// The plain-HTTP loopback listener (this machine's CLI and browser).
    pub url: String,
    /// The TLS listener peers use.
    pub tls_url: String,
    /// The node's key id.
    pub key: KeyFingerprint,
    /// The banner's lines after the certificate (dashboard addresses, sign-in link).
    pub banner: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Starts a node on a fresh temp data dir.
    pub fn spawn() -> TestNode {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut node = TestNode::spawn_on(&data_dir, &[]);
        node._temp = Some(temp);
        node
    }

    /// Starts a node on `data_dir` with extra `serve` arguments.
    pub fn spawn_on(data_dir: &Path, extra: &[&str]) -> TestNode {
        TestNode::spawn_with_env(data_dir, extra, &[])
    }

    /// Starts a node on `data_dir` with extra `serve` arguments and environment variables.
    pub fn spawn_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestNode {
        let bind: &[&str] = if extra.contains(&"--bind") {
            &[]
        } else {
            &["--bind", "127.0.0.1"]
        };
        // Discovery only where a test asks for it, and then only on the interfaces it names:
        // tests never send multicast onto a real network.
        let discovery: &[&str] =
            if extra.contains(&"--discovery-iface") || extra.contains(&"--no-discovery") {
                &[]
            } else {
                &["--no-discovery"]
            };
        let name: &[&str] = if extra.contains(&"--name") {
            &[]
        } else {
            &["--name", "test-node"]
        };
        let port: &[&str] = if extra.contains(&"--http-port") {
            &[]
        } else {
            &["--http-port", "0"]
        };
        let local_port: &[&str] = if extra.contains(&"--local-port") {
            &[]
        } else {
            &["--local-port", "0"]
        };
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .args(port)
            .args(local_port)
            .args(name)
            .args(bind)
            .args(discovery)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("AIENV_CONFIG")
            .env("XDG_CONFIG_HOME", data_dir.join("no-config"))
            .env("AIENV_LOG", "warn")
            .envs(env.iter().copied());
        TestNode::start(command, data_dir)
    }

    /// Starts a node from a prepared `aienv serve` command (for example under
    /// `ip netns exec`) and reads its address from the first line it prints.
    pub fn start(mut command: Command, data_dir: &Path) -> TestNode {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aienv serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut read = |prefix: &str| {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .expect("read the node's first lines");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected `{prefix}...` from the node, got {line:?}"))
                .to_string()
        };
        let url = read("aienv: listening on ");
        let tls_url = read("aienv: peers and other machines: ");
        let _id = read("aienv: node id ");
        let key = KeyFingerprint::parse(&read("aienv: key id ")).expect("a key id");
        let _certificate = read("aienv: certificate SHA-256 ");
        // The rest of the banner came in the same write: already buffered.
        let banner = String::from_utf8_lossy(reader.buffer()).to_string();
        // The node prints nothing more on stdout (a write to the closed pipe would fail).
        TestNode {
            child: Some(child),
            url,
            tls_url,
            key,
            banner,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
        }
    }

    /// Starts a node that discovers its peers over loopback multicast on `port`, announcing
    /// every 0.2 s.
    pub fn spawn_discovering(data_dir: &Path, name: &str, port: u16) -> TestNode {
        TestNode::spawn_discovering_with(data_dir, name, port, &[])
    }

    /// [`TestNode::spawn_discovering`] with extra `serve` arguments.
    pub fn spawn_discovering_with(
        data_dir: &Path,
        name: &str,
        port: u16,
        extra: &[&str],
    ) -> TestNode {
        let port = port.to_string();
        let mut args = vec![
            "--name",
            name,
            "--discovery-iface",
            "lo",
            "--discovery-port",
            &port,
            "--announce-interval",
            "0.2",
        ];
        args.extend_from_slice(extra);
        TestNode::spawn_on(data_dir, &args)
    }

    /// The admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    /// A client logged in with the admin token.
    pub fn admin(&self) -> Client {
        Client::new(&self.url, Some(Credentials::Token(self.token())))
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// Stops the node gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().expect("wait").is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("node did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the node with SIGKILL.
    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the CLI against this node with the admin token in the environment.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .arg("--node")
            .arg(&self.url)
            .args(args)
            .env("AIENV_TOKEN", self.token())
            .env_remove("AIENV_USER")
            .stdin(Stdio::null())
            .output()
            .expect("run aienv")
    }

    /// Names of the entries in a data-dir subdirectory.
    pub fn dir_names(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.join(sub))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Adds user `name` with `role` and `password` to the node whose data dir is `data_dir`, as
/// a person would (`aienv user add … --password-stdin`).
pub fn add_user(data_dir: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args([
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aienv user add");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let output = child.wait_with_output().expect("aienv user add ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `name=value` of the first `Set-Cookie` in `headers` whose name starts with `prefix`.
pub fn set_cookie(headers: &awc::http::header::HeaderMap, prefix: &str) -> String {
    headers
        .get_all("set-cookie")
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` cookie set"))
        .split(';')
        .next()
        .expect("a cookie")
        .to_string()
}

/// Chromium, Node.js and playwright-core for the browser tests: the `tests/e2e` directory and
/// the browser's path, or `None` after a loud skip naming what is missing.
pub fn browser() -> Option<(PathBuf, String)> {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        skip("Chromium is not installed (Debian: apt-get install chromium)");
        return None;
    }
    if Command::new("node").arg("--version").output().is_err() {
        skip("Node.js is not installed");
        return None;
    }
    if !e2e.join("node_modules/playwright-core").is_dir() {
        skip("playwright-core is not installed (npm ci --prefix tests/e2e)");
        return None;
    }
    Some((e2e, chromium))
}

/// A node identity (key and certificate) made in `dir`, as a node would make its own.
pub fn node_identity(dir: &Path, name: &str) -> NodeIdentity {
    std::fs::create_dir_all(dir).expect("identity dir");
    aienv_actors::identity::load_or_create(dir, name).expect("a node identity")
}

/// An awc client that calls as `identity` (mutual TLS) the node holding `key`.
pub fn tls_client(identity: &NodeIdentity, key: KeyFingerprint) -> awc::Client {
    let config = aienv::tls::client_config(Some(identity), key).expect("client configuration");
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .finish()
}

/// Starts a transfer (`clone` or `sync`) on `client`'s node and waits until it finishes
/// (2 minutes at most).
pub async fn transfer(
    client: &Client,
    kind: &str,
    peer: Option<&str>,
    workspace: &str,
) -> aienv::api::TransferDto {
    let job = client
        .start_transfer(&aienv::api::TransferRequestDto {
            kind: kind.into(),
            peer: peer.map(str::to_string),
            workspace: workspace.into(),
            ..aienv::api::TransferRequestDto::default()
        })
        .await
        .unwrap();
    finished(client, job.id).await
}

/// Waits until transfer `id` finishes (2 minutes at most) and returns it.
pub async fn finished(client: &Client, id: uuid::Uuid) -> aienv::api::TransferDto {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.transfer(&id.to_string()).await.unwrap();
        if job.is_finished() {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "transfer did not finish: {job:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP port nothing on this host listens on now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a TCP socket")
        .local_addr()
        .expect("local address")
        .port()
}

/// A UDP port nothing on this host uses now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind a UDP socket")
        .local_addr()
        .expect("local address")
        .port()
}

/// Whether `AIENV_REQUIRE_ALL` asks that no test be skipped: any true value (`1`, `true`,
/// `yes`, `on`, in any case).
pub fn require_all() -> bool {
    std::env::var("AIENV_REQUIRE_ALL").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on" | "y"
        )
    })
}

/// Whether the binary under test has the fault-injection flags (`--test-chunk-delay-ms`,
/// `--test-corrupt-chunks`): debug builds do, release builds only with `--features test-hooks`.
pub fn test_hooks() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(binary())
            .args(["serve", "--test-chunk-delay-ms", "0", "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Skips (loudly) a test that needs the fault-injection flags when the build lacks them;
/// `true` when the test should go on.
pub fn needs_test_hooks() -> bool {
    if test_hooks() {
        return true;
    }
    skip("this build of aienv has no fault-injection flags: test a debug build, or add `--features test-hooks`");
    false
}

/// Where skips of one `cargo test` run are recorded, for `tests/zz_skipped.rs` to list at
/// the end: one file per run, named by the process that runs the test binaries (cargo).
pub fn skip_log() -> PathBuf {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("skips")
        .join(format!("{parent}.log"))
}

/// Skips loudly (on the terminal even though the test passes), and records the skip for the
/// run's summary; fails instead when `AIENV_REQUIRE_ALL` is set.
pub fn skip(reason: &str) {
    use std::io::Write;
    if require_all() {
        panic!("AIENV_REQUIRE_ALL is set but this test cannot run: {reason}");
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{binary}::{test}: {reason}\n");
    // Straight to the terminal: the test harness captures only `print!`/`eprint!`.
    let _ = std::io::stderr().write_all(format!("\nSKIPPED {line}").as_bytes());
    let log = skip_log();
    let _ = std::fs::create_dir_all(log.parent().expect("a parent"));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        // One write per line: appends from test binaries running at once do not interleave.
        let _ = file.write_all(line.as_bytes());
    }
}

/// Every test binary ends within this many seconds (`AIENV_TEST_TIME_LIMIT` overrides): a
/// hang fails in minutes, not at CI's limit. Single awaits have their own, shorter limits
/// ([`eventually`], [`finished`]).
pub const TIME_LIMIT_SECONDS: u32 = 600;

/// Arms the time limit before any test runs (a constructor: every test binary includes this
/// module; benchmarks are exempt): a raw thread, started without the standard library, sleeps until the limit, then
/// kills this binary's child processes (nodes, browsers: they hold cargo's output pipe) and
/// exits with a message.
#[ctor::ctor(unsafe)]
fn time_limit() {
    extern "C" fn watchdog(_: *mut libc::c_void) -> *mut libc::c_void {
        // Benchmarks (`cargo bench` passes `--bench`) share this module and run as long as
        // they need.
        let command = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        if command.split(|b| *b == 0).any(|arg| arg == b"--bench") {
            return std::ptr::null_mut();
        }
        let seconds = std::env::var("AIENV_TEST_TIME_LIMIT")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(u64::from(TIME_LIMIT_SECONDS));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            std::thread::sleep(deadline - Instant::now());
        }
        kill_descendants(std::process::id());
        let binary = std::env::current_exe().unwrap_or_default();
        let message = format!(
            "\naienv tests: {} ran past its time limit of {seconds} s (AIENV_TEST_TIME_LIMIT): a test hangs\n",
            binary.display()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
        std::process::exit(124);
    }
    let mut thread: libc::pthread_t = 0;
    // SAFETY: a detached thread running a function that takes no argument; before its sleep
    // it reads only the environment and the clock, which need nothing of `main`.
    unsafe {
        if libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            watchdog,
            std::ptr::null_mut(),
        ) == 0
        {
            libc::pthread_detach(thread);
        }
    }
}

/// SIGKILLs every process descended from `pid`, children first.
fn kill_descendants(pid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let children: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect();
    for child in children {
        kill_descendants(child);
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(child as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Polls `check` until it holds, failing the test after 30 s (no sleeps as synchronization:
/// the condition is what is waited for).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
