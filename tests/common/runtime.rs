//! Helpers for the runtime tests: workspaces with environments, waiting runs, requests
//! through the proxy, reading a terminal.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use aienv::api::{CreateWorkspace, EnvironmentStatusDto, RunRequest};
use aienv::client::Client;
use awc::ws::Frame;
use futures_util::StreamExt;

use super::TestNode;

/// A small HTTP tool (standard library only): answers GET with its path and `BASE_PATH`,
/// echoes POST bodies, and serves `/big?n=BYTES`.
pub const HELLO: &str = r#"import http.server, os, sys
base = os.environ.get("BASE_PATH", "/")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.endswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"chunked ", b"answer ", b"x" * 70000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.endswith("/headers"):
            # What reached the tool, and cookies it tries to set (the node's among them).
            body = f"cookie={self.headers.get('Cookie', '')}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", "aienv_session=forged; Path=/")
            self.send_header("Set-Cookie", "AIENV_tool_1=forged; Path=/")
            self.send_header("Set-Cookie", "tool_own=1; Path=/")
            self.end_headers()
            self.wfile.write(body)
            return
        body = f"hello {self.path} base={base} threads={os.environ.get('OMP_NUM_THREADS')} venv={os.environ.get('VIRTUAL_ENV','')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Tool", "hello")
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("request " + (fmt % args) + "\n")
print("hello tool listening", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Creates workspace `name`, writes `files` into it (as a person editing it would) and gives
/// it environment `env` with `spec`. Returns its directory.
pub async fn workspace(
    node: &TestNode,
    name: &str,
    files: &[(&str, &str)],
    env: &str,
    spec: &str,
) -> String {
    let admin = node.admin();
    admin
        .create(&CreateWorkspace {
            name: name.into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    let root = admin.get(name).await.unwrap().workspace.path.unwrap();
    for (path, text) in files {
        let path = Path::new(&root).join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    admin
        .put_environment(name, env, spec.to_string())
        .await
        .unwrap();
    root
}

pub async fn run(client: &Client, workspace: &str) -> Vec<EnvironmentStatusDto> {
    client
        .run(
            workspace,
            &RunRequest {
                wait: true,
                timeout_seconds: Some(600),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap()
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub async fn get(url: &str, authorization: Option<&str>) -> (u16, String) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .disable_redirects()
        .finish();
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.insert_header(("Authorization", value));
    }
    let mut response = request.send().await.unwrap();
    let body = response.body().limit(64 << 20).await.unwrap();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&body).to_string(),
    )
}

/// Reads terminal output until `needle` appears (30 s at most).
pub async fn read_until(
    stream: &mut (impl futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin),
    needle: &str,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(needle) {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no `{needle}` in the terminal output within 30 s: {seen:?}")
            });
        match frame {
            Some(Ok(Frame::Binary(bytes))) | Some(Ok(Frame::Text(bytes))) => {
                seen.push_str(&String::from_utf8_lossy(&bytes))
            }
            Some(Ok(Frame::Close(reason))) => {
                panic!("terminal closed ({reason:?}) before `{needle}`: {seen:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("terminal ended before `{needle}`: {other:?} {seen:?}"),
        }
    }
    seen
}

/// The host's pid of the process a sandboxed environment knows as `inner` (its own PID
/// namespace numbers from 1), found by the innermost `NSpid` and the working directory.
pub fn host_pid(inner: i32, cwd: &Path) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let Some(nspid) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
            continue;
        };
        let innermost = nspid.split_whitespace().last().and_then(|n| n.parse().ok());
        if innermost != Some(inner) {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|dir| dir == cwd) {
            return Some(pid);
        }
    }
    None
}

/// The wheelhouse `.ci/run` fills with `pip download jupyterlab` (no index is reached by
/// the test itself).
pub fn wheelhouse() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("AIENV_TEST_WHEELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-wheels"));
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("jupyterlab-"))
        .then_some(dir)
}

/// Copies the wheels into workspace `root` and makes its `requirements.txt` install
/// JupyterLab from them. They travel inside the workspace: set-up runs sandboxed, and a
/// wheelhouse under the host's /tmp (a clone of the repository there) is not visible from a
/// private /tmp.
pub fn wheels_into(wheels: &Path, root: &Path) {
    let local = root.join("wheels");
    std::fs::create_dir_all(&local).unwrap();
    for entry in std::fs::read_dir(wheels).unwrap().flatten() {
        std::fs::copy(entry.path(), local.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        root.join("requirements.txt"),
        format!("--no-index\n--find-links {}\njupyterlab\n", local.display()),
    )
    .unwrap();
}

/// A root file system holding only this machine's static busybox and links to the applets
/// the tests use, as a tar archive (for `docker import` / `podman import`: no registry).
pub fn busybox_rootfs() -> Result<Vec<u8>, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("no busybox here (Debian: busybox-static)")?;
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let binary = std::fs::read(busybox).map_err(|e| e.to_string())?;
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    archive
        .append_data(&mut header, "bin/busybox", binary.as_slice())
        .map_err(|e| e.to_string())?;
    for applet in [
        "sh", "echo", "httpd", "sleep", "cat", "stty", "ls", "env", "kill",
    ] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        archive
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .map_err(|e| e.to_string())?;
    }
    archive.into_inner().map_err(|e| e.to_string())
}
