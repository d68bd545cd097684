//! Test harness: real nodes (the real binary) on ephemeral loopback ports with temp data dirs.
#![allow(dead_code)]

pub mod runtime;

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
        // The node prints nothing more on stdout (a write to the closed pipe would fail).
        TestNode {
            child: Some(child),
            url,
            tls_url,
            key,
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

/// Whether `AIENV_REQUIRE_ALL=1` asks that no test be skipped.
pub fn require_all() -> bool {
    std::env::var("AIENV_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips loudly, or fails under `AIENV_REQUIRE_ALL=1`.
pub fn skip(reason: &str) {
    if require_all() {
        panic!("AIENV_REQUIRE_ALL=1 but this test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
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
