//! Runtime plugins: a new environment type without touching aienv. A plugin is an executable
//! `aienv-runtime-<name>` in `<data-dir>/plugins/` or on `PATH`; `runtime: <name>` in an
//! `environment.yaml` uses it. Every call runs the executable once: one JSON request line on
//! stdin, optional progress lines and one JSON answer line on stdout ([`protocol`]). Each call
//! has a deadline, its output is bounded, and a plugin that crashes, hangs or prints garbage
//! fails that call with its stderr — the node goes on.

pub mod protocol;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::model::{PluginName, RuntimeKind};

use super::backend::{Backend, Exit, Instance, LaunchPlan, Launched, Progress, Unavailable};
use super::terminal::TerminalTarget;
use super::{logs, RuntimeError};
use protocol::{Request, PROTOCOL};

/// Prefix of plugin executables.
pub const PREFIX: &str = "aienv-runtime-";
/// Longest answer line read.
const MAX_LINE: usize = 2 << 20;
/// Most stderr kept (its end).
const MAX_STDERR: usize = 16 * 1024;
/// Most progress lines read from one call.
const MAX_PROGRESS: usize = 10_000;

/// Deadline of `check`.
const CHECK: Duration = Duration::from_secs(10);
/// Deadline of `status`, `logs`, `terminal` (and, beyond the grace, `stop`).
const QUICK: Duration = Duration::from_secs(20);

/// A plugin found on this host.
#[derive(Debug, Clone)]
pub struct PluginBackend {
    name: PluginName,
    program: PathBuf,
    /// Deadline of `prepare` and `launch`.
    long: Duration,
}

/// A plugin and how its `check` went.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its executable.
    pub path: PathBuf,
    /// Whether `check` answered `ok: true` in the protocol this build speaks.
    pub healthy: bool,
    /// Its version, when it said.
    pub version: Option<String>,
    /// What it drives, or why it is not usable.
    pub detail: String,
}

impl PluginBackend {
    /// Finds `aienv-runtime-<name>`: the data dir's `plugins/` first, then `PATH`.
    pub fn find(
        name: PluginName,
        data_dir: &Path,
        long: Duration,
    ) -> Result<PluginBackend, RuntimeError> {
        let file = format!("{PREFIX}{}", name.as_str());
        let mut dirs = vec![data_dir.join("plugins")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        dirs.iter()
            .map(|dir| dir.join(&file))
            .find(|path| is_executable(path))
            .map(|program| PluginBackend {
                name,
                program,
                long,
            })
            .ok_or_else(|| {
                RuntimeError::UnknownPlugin(format!(
                    "no runtime plugin `{}` on this node: runtime `{}` needs an executable {file} in {} or on PATH (schemas/runtime-plugin.md)",
                    name.as_str(),
                    name.as_str(),
                    data_dir.join("plugins").display()
                ))
            })
    }

    /// Every plugin on this host (the data dir's shadowing `PATH`'s), by name.
    pub fn discover(data_dir: &Path) -> Vec<PluginBackend> {
        let mut found: BTreeMap<String, PluginBackend> = BTreeMap::new();
        let mut dirs = vec![data_dir.join("plugins")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten().take(10_000) {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = file.strip_prefix(PREFIX).and_then(PluginName::new) else {
                    continue;
                };
                if found.contains_key(name.as_str()) || !is_executable(&entry.path()) {
                    continue;
                }
                found.insert(
                    name.as_str().to_string(),
                    PluginBackend {
                        name,
                        program: entry.path(),
                        long: CHECK,
                    },
                );
            }
        }
        found.into_values().collect()
    }

    /// Asks the plugin `check` and says how it went.
    pub async fn info(&self) -> PluginInfo {
        let answer: Result<protocol::CheckAnswer, RuntimeError> = self
            .call(
                &Request::Check {
                    protocol: PROTOCOL.into(),
                },
                CHECK,
                None,
            )
            .await;
        let (healthy, version, detail) = match answer {
            Ok(check) if check.protocol != PROTOCOL => (
                false,
                Some(check.version),
                format!("speaks {}, this aienv speaks {PROTOCOL}", check.protocol),
            ),
            Ok(check) => (check.ok, Some(check.version), check.detail),
            Err(error) => (false, None, error.to_string()),
        };
        PluginInfo {
            name: self.name.as_str().to_string(),
            path: self.program.clone(),
            healthy,
            version,
            detail,
        }
    }

    fn fail(&self, op: &str, message: String, stderr: &str) -> RuntimeError {
        RuntimeError::Plugin {
            plugin: self.name.as_str().to_string(),
            op: op.to_string(),
            message,
            stderr: stderr.trim().to_string(),
        }
    }

    /// One call: the request on stdin, progress lines to `progress`, the answer parsed as
    /// `A` (or the plugin's `error`), within `timeout`.
    async fn call<A: DeserializeOwned>(
        &self,
        request: &Request,
        timeout: Duration,
        progress: Option<&dyn Fn(String)>,
    ) -> Result<A, RuntimeError> {
        let op = op_name(request);
        let mut child = tokio::process::Command::new(&self.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                self.fail(
                    op,
                    format!("cannot start {}: {e}", self.program.display()),
                    "",
                )
            })?;
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let stderr_task = tokio::task::spawn_local(async move {
            let mut kept: Vec<u8> = Vec::new();
            let mut buffer = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > MAX_STDERR * 2 {
                    kept.drain(..kept.len() - MAX_STDERR);
                }
            }
            let from = kept.len().saturating_sub(MAX_STDERR);
            String::from_utf8_lossy(&kept[from..]).into_owned()
        });
        let mut line = serde_json::to_vec(request).expect("requests encode");
        line.push(b'\n');
        let exchange = async {
            // A plugin that does not read its request is its own failure, seen below.
            let _ = stdin.write_all(&line).await;
            drop(stdin);
            let mut reader = tokio::io::BufReader::new(stdout).take(MAX_LINE as u64 * 4);
            let mut progress_lines = 0;
            loop {
                let mut text = Vec::new();
                let read = (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut text)
                    .await
                    .unwrap_or(0);
                if read == 0 {
                    return Err("it ended without an answer".to_string());
                }
                let trimmed = String::from_utf8_lossy(&text).trim().to_string();
                if trimmed.is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(&trimmed).map_err(|_| {
                    format!(
                        "it printed something that is not the protocol (one JSON object per line): {}",
                        preview(&trimmed)
                    )
                })?;
                if let Some(note) = value.get("progress").and_then(|p| p.as_str()) {
                    progress_lines += 1;
                    if progress_lines > MAX_PROGRESS {
                        return Err("it printed too many progress lines".into());
                    }
                    if let Some(progress) = progress {
                        progress(note.chars().take(1000).collect());
                    }
                    continue;
                }
                return Ok(value);
            }
        };
        let answered = tokio::time::timeout(timeout, exchange).await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(_) => {
                kill_group(pid);
                let stderr = stderr_task.await.unwrap_or_default();
                return Err(self.fail(
                    op,
                    format!(
                        "it did not answer within {} s and was stopped",
                        timeout.as_secs()
                    ),
                    &stderr,
                ));
            }
        };
        // The answer is in; the process should end now.
        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                kill_group(pid);
                None
            }
        };
        let stderr = stderr_task.await.unwrap_or_default();
        let value = match answer {
            Ok(value) => value,
            Err(message) => {
                let message = match status {
                    Some(status) if !status.success() => {
                        format!("{message} ({})", super::process::describe_status(status))
                    }
                    _ => message,
                };
                return Err(self.fail(op, message, &stderr));
            }
        };
        if value.get("ok") == Some(&serde_json::Value::Bool(false)) {
            let error = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("it answered ok: false without an error");
            return Err(self.fail(op, error.chars().take(4000).collect(), &stderr));
        }
        serde_json::from_value(value.clone()).map_err(|e| {
            self.fail(
                op,
                format!(
                    "its answer does not match the protocol ({e}): {}",
                    preview(&value.to_string())
                ),
                &stderr,
            )
        })
    }
}

fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Check { .. } => "check",
        Request::Prepare { .. } => "prepare",
        Request::Launch { .. } => "launch",
        Request::Status { .. } => "status",
        Request::Logs { .. } => "logs",
        Request::Stop { .. } => "stop",
        Request::Terminal { .. } => "terminal",
    }
}

fn preview(text: &str) -> String {
    let shown: String = text.chars().take(200).collect();
    if shown.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: signalling the process group the plugin leads.
        unsafe {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The plan as the protocol carries it.
fn environment(plan: &LaunchPlan) -> protocol::Environment {
    protocol::Environment {
        node_id: plan.node_id.to_string(),
        workspace: protocol::Workspace {
            id: plan.workspace_id.to_string(),
            name: plan.workspace_name.clone(),
            path: plan.root.display().to_string(),
        },
        name: plan.environment.clone(),
        spec: serde_json::to_value(&plan.spec).expect("specs encode"),
        allocation: protocol::Allocation {
            variant: plan.allocation.variant.clone(),
            cpus: plan.allocation.cpus,
            memory_bytes: plan.allocation.memory,
            gpus: plan.allocation.gpus.clone(),
        },
        env: plan.env.clone(),
        image: plan.image.clone(),
        tools: plan
            .tools
            .iter()
            .map(|t| protocol::Tool {
                name: t.name.clone(),
                kind: t.kind.as_str().to_string(),
                argv: t.argv.clone(),
                shell: t.shell,
                port: t.port,
                base_path: t.base_path.clone(),
            })
            .collect(),
        state_dir: plan.state_dir.display().to_string(),
        log_dir: plan.log_dir().display().to_string(),
    }
}

impl Backend for PluginBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Plugin(self.name)
    }

    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        async move {
            std::fs::create_dir_all(plan.log_dir()).map_err(|e| {
                RuntimeError::io(format!("creating {}", plan.log_dir().display()), e)
            })?;
            let log = plan.setup_log();
            logs::append(
                &log,
                &format!("== set-up by plugin {}\n", self.name.as_str()),
            );
            let note = |line: String| logs::append(&log, &format!("{line}\n"));
            let answer: protocol::PrepareAnswer = self
                .call(
                    &Request::Prepare {
                        protocol: PROTOCOL.into(),
                        environment: environment(plan),
                    },
                    self.long,
                    Some(&note),
                )
                .await?;
            Ok(answer.notes)
        }
        .boxed_local()
    }

    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        progress: &'a dyn Fn(Progress),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>> {
        async move {
            let note = |line: String| {
                progress(Progress {
                    queued: false,
                    note: line,
                })
            };
            let answer: protocol::LaunchAnswer = self
                .call(
                    &Request::Launch {
                        protocol: PROTOCOL.into(),
                        environment: environment(plan),
                    },
                    self.long,
                    Some(&note),
                )
                .await?;
            if answer.handle.is_empty() || answer.handle.len() > 1024 {
                return Err(self.fail(
                    "launch",
                    "its handle is empty or longer than 1024 bytes".into(),
                    "",
                ));
            }
            let terminal = self
                .call::<protocol::TerminalAnswer>(
                    &Request::Terminal {
                        protocol: PROTOCOL.into(),
                        handle: answer.handle.clone(),
                    },
                    QUICK,
                    None,
                )
                .await
                .ok()
                .filter(|t| !t.argv.is_empty())
                .map(|t| t.argv);
            let host = answer
                .tools
                .iter()
                .find_map(|t| t.host.as_deref().and_then(|h| h.parse().ok()));
            Ok(Launched {
                instance: Box::new(PluginInstance {
                    backend: self.clone(),
                    handle: answer.handle,
                    describe: answer.describe.chars().take(200).collect(),
                    terminal,
                    root: plan.root.clone(),
                    log: plan.log_dir().join(format!("{}.log", self.name.as_str())),
                    cursor: None,
                    host,
                }),
                unavailable: answer
                    .unavailable
                    .into_iter()
                    .map(|u| Unavailable {
                        tool: u.tool,
                        hint: u.hint,
                    })
                    .collect(),
                pids: BTreeMap::new(),
            })
        }
        .boxed_local()
    }
}

/// An environment a plugin launched: followed by `status` every second, its output copied
/// from `logs` into `<log dir>/<plugin>.log`.
struct PluginInstance {
    backend: PluginBackend,
    handle: String,
    describe: String,
    terminal: Option<Vec<String>>,
    root: PathBuf,
    log: PathBuf,
    cursor: Option<String>,
    host: Option<std::net::IpAddr>,
}

impl PluginInstance {
    async fn copy_logs(&mut self) {
        let answer = self
            .backend
            .call::<protocol::LogsAnswer>(
                &Request::Logs {
                    protocol: PROTOCOL.into(),
                    handle: self.handle.clone(),
                    cursor: self.cursor.clone(),
                },
                QUICK,
                None,
            )
            .await;
        if let Ok(answer) = answer {
            if !answer.text.is_empty() {
                logs::append(&self.log, &answer.text);
            }
            if answer.cursor.is_some() {
                self.cursor = answer.cursor;
            }
        }
    }
}

impl Instance for PluginInstance {
    fn describe(&self) -> String {
        format!("{} (plugin {})", self.describe, self.backend.name.as_str())
    }

    fn terminal(&self) -> TerminalTarget {
        let argv = self.terminal.clone().unwrap_or_else(|| {
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo 'the {} runtime plugin offers no terminal'",
                    self.backend.name.as_str()
                ),
            ]
        });
        TerminalTarget::Shell {
            argv,
            env: std::env::vars()
                .filter(|(k, _)| !k.starts_with("AIENV_"))
                .chain([("TERM".to_string(), "xterm-256color".to_string())])
                .collect(),
            cwd: self.root.clone(),
            limits: Default::default(),
        }
    }

    fn host(&self) -> Option<std::net::IpAddr> {
        self.host
    }

    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit> {
        async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.copy_logs().await;
                let status = self
                    .backend
                    .call::<protocol::StatusAnswer>(
                        &Request::Status {
                            protocol: PROTOCOL.into(),
                            handle: self.handle.clone(),
                        },
                        QUICK,
                        None,
                    )
                    .await;
                match status {
                    Ok(status) if status.state == protocol::RunState::Running => failures = 0,
                    Ok(status) => {
                        return Exit {
                            tool: None,
                            code: status.exit_code,
                            detail: match status.exit_code {
                                Some(code) => format!("ended with status {code} {}", status.detail),
                                None => format!("ended {}", status.detail),
                            }
                            .trim()
                            .to_string(),
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(%error, failures, "runtime plugin status failed");
                        if failures >= 3 {
                            return Exit {
                                tool: None,
                                code: None,
                                detail: error.to_string(),
                            };
                        }
                    }
                }
            }
        }
        .boxed_local()
    }

    fn restart<'a>(
        &'a mut self,
        _: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>> {
        async move {
            Err(RuntimeError::Unsupported(format!(
                "the {} runtime plugin restarts whole environments only: stop and run it again",
                self.backend.name.as_str()
            )))
        }
        .boxed_local()
    }

    fn stop(self: Box<Self>, grace: Duration) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        async move {
            let mut this = self;
            this.copy_logs().await;
            this.backend
                .call::<protocol::StopAnswer>(
                    &Request::Stop {
                        protocol: PROTOCOL.into(),
                        handle: this.handle.clone(),
                        grace_seconds: grace.as_secs().max(1),
                    },
                    grace + QUICK,
                    None,
                )
                .await?;
            Ok(())
        }
        .boxed_local()
    }
}
