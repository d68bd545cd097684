//! The backend trait: what the supervisor asks of process, docker and libvirt runtimes.
//! A backend sets an environment up and launches it; the [`Instance`] it returns runs the
//! tools, reports their exits, restarts them and stops the whole environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use uuid::Uuid;

use crate::model::{EnvironmentSpec, RuntimeKind, ToolKind};

use super::allocation::Allocation;
use super::terminal::TerminalTarget;
use super::RuntimeError;

/// Everything a backend needs to set up and start one environment.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The node (labels containers so a restarted node finds its leftovers).
    pub node_id: Uuid,
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// The workspace's name (part of tool URLs).
    pub workspace_name: String,
    /// The environment's name.
    pub environment: String,
    /// The workspace directory (the tools' working directory).
    pub root: PathBuf,
    /// `<data-dir>/runtime/<workspace id>/<environment>`: venv, logs, set-up record.
    pub state_dir: PathBuf,
    /// The spec as written.
    pub spec: EnvironmentSpec,
    /// What this host gives it.
    pub allocation: Allocation,
    /// Variables for set-up and tools: the spec's, the variant's, the allocation's.
    pub env: BTreeMap<String, String>,
    /// Requirement files to install (the spec's and the variant's).
    pub requirements: Vec<String>,
    /// The docker image (the variant's when it names one).
    pub image: Option<String>,
    /// The tools to start.
    pub tools: Vec<ToolPlan>,
    /// Hash of everything set-up depends on; set-up runs again when it changes.
    pub setup_hash: String,
    /// Time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// How local processes are confined.
    pub sandbox: super::sandbox::Sandbox,
    /// The workspace's own hooks (`workspace.yaml`), run before the environment's.
    pub workspace_hooks: crate::model::Hooks,
    /// `peer/workspace` the workspace was cloned from, if it was.
    pub origin: Option<String>,
}

impl LaunchPlan {
    /// The directory of log files.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// The set-up log.
    pub fn setup_log(&self) -> PathBuf {
        self.log_dir().join("setup.log")
    }

    /// The venv the process backend builds.
    pub fn venv(&self) -> PathBuf {
        self.state_dir.join("venv")
    }
}

/// One tool as it will be started.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    /// Tool name.
    pub name: String,
    /// Its kind.
    pub kind: ToolKind,
    /// Program and arguments, `$PORT` and `$BASE_PATH` expanded; empty for the terminal.
    pub argv: Vec<String>,
    /// Run through `sh -c`.
    pub shell: bool,
    /// Port the tool listens on (on loopback for processes; published to the same port on
    /// loopback for containers).
    pub port: u16,
    /// `/w/<workspace>/<tool>/`.
    pub base_path: String,
    /// Secret the proxy presents to the tool (JupyterLab's token).
    pub token: Option<String>,
    /// Path probed for health, below the base path unless the prefix is stripped.
    pub health_path: String,
    /// Whether the proxy strips the base path.
    pub strip_prefix: bool,
}

impl ToolPlan {
    /// Whether the tool is a process to run (the terminal is the node's own).
    pub fn runs(&self) -> bool {
        self.kind != ToolKind::Terminal
    }

    /// The variables a tool gets for itself: its port, base path and (JupyterLab) token.
    pub fn own_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PORT".to_string(), self.port.to_string()),
            ("BASE_PATH".to_string(), self.base_path.clone()),
        ];
        if let Some(token) = &self.token {
            env.push(("JUPYTER_TOKEN".to_string(), token.clone()));
        }
        env
    }

    /// The tool as one line of `sh` for scripts that start several (a container's, a Slurm
    /// job's): `env PORT=… BASE_PATH=… program 'arg' …`, everything quoted.
    pub fn shell_line(&self) -> String {
        use super::detect::shell_quote;
        let command = if self.shell {
            format!("sh -c {}", shell_quote(&self.argv.join(" ")))
        } else {
            self.argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let env: Vec<String> = self
            .own_env()
            .iter()
            .map(|(k, v)| shell_quote(&format!("{k}={v}")))
            .collect();
        format!("env {} {command}", env.join(" "))
    }

    /// The URL path a health probe asks for.
    pub fn probe_path(&self) -> String {
        let path = self.health_path.trim_start_matches('/');
        if self.strip_prefix {
            format!("/{path}")
        } else {
            format!("{}{path}", self.base_path)
        }
    }
}

/// A tool that cannot start on this host, and what to install.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// The tool.
    pub tool: String,
    /// What is missing and how to get it.
    pub hint: String,
}

/// What launching produced.
pub struct Launched {
    /// The running environment.
    pub instance: Box<dyn Instance>,
    /// Tools that could not start.
    pub unavailable: Vec<Unavailable>,
    /// Process ids of started tools, by name.
    pub pids: BTreeMap<String, u32>,
}

/// Something in a running environment ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// The tool, or `None` when the whole environment (container, VM) ended.
    pub tool: Option<String>,
    /// Exit code, when there is one.
    pub code: Option<i64>,
    /// Human description (`exit status 1`, `killed by signal 9`).
    pub detail: String,
}

impl Exit {
    /// Whether it ended with success.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A runtime backend.
pub trait Backend {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Sets the environment up (idempotent: skipped when `plan.setup_hash` is recorded).
    /// Returns notes for the person.
    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>>;

    /// Starts the environment and its tools. `progress` takes what the person should see
    /// while it waits (a job queued by a scheduler, and why).
    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        progress: &'a dyn Fn(Progress),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>>;

    /// Runs a shell command line where the environment's set-up runs (a hook, a CI
    /// command), its output appended to `log`; by default in the environment's local
    /// sandbox, as the process runtime confines it.
    fn run_command<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        label: &'a str,
        command: &'a str,
        vars: &'a [(String, String)],
        log: &'a Path,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<super::hooks::Finished, RuntimeError>> {
        Box::pin(super::hooks::run_local(
            plan, label, command, vars, log, timeout,
        ))
    }
}

/// What a launch that takes a while says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// It waits in a scheduler's queue (`false`: it is on its way again).
    pub queued: bool,
    /// What happens, in words (`Slurm job 7 PENDING (Resources)`).
    pub note: String,
}

/// A running environment.
pub trait Instance {
    /// What runs (`process group 1234`, `container 3f2a…`, `domain aienv-x`).
    fn describe(&self) -> String;

    /// Where the node's terminal attaches.
    fn terminal(&self) -> TerminalTarget;

    /// The host the tools listen on, when it is not this one (a Slurm compute node).
    fn host(&self) -> Option<std::net::IpAddr> {
        None
    }

    /// Waits until a tool (or the whole environment) ends.
    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit>;

    /// Starts a tool again after it ended or stopped answering (`None`: the whole
    /// environment). Returns the new process id, when there is one.
    fn restart<'a>(
        &'a mut self,
        tool: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>>;

    /// Stops everything: SIGTERM (or the engine's stop), then SIGKILL after `grace`.
    fn stop(self: Box<Self>, grace: Duration) -> LocalBoxFuture<'static, Result<(), RuntimeError>>;
}

/// Expands `$PORT`, `${PORT}`, `$BASE_PATH` and `${BASE_PATH}` in `text`.
pub fn expand(text: &str, port: u16, base_path: &str) -> String {
    text.replace("${PORT}", &port.to_string())
        .replace("$PORT", &port.to_string())
        .replace("${BASE_PATH}", base_path)
        .replace("$BASE_PATH", base_path)
}

/// The program a tool runs and the hint when it is missing.
pub fn missing_hint(kind: ToolKind, program: &str) -> String {
    match kind {
        ToolKind::Jupyterlab => format!(
            "`{program}` not found: add `jupyterlab` to the environment's requirements (or `pip install jupyterlab` on the host)"
        ),
        ToolKind::Vscode => format!(
            "`{program}` not found: install code-server (https://coder.com/docs/code-server/install) on this host"
        ),
        _ => format!("`{program}` not found on PATH or in the environment"),
    }
}

/// Finds `program` in `dirs` (then `PATH`), as a shell would.
pub fn resolve_program(program: &str, dirs: &[PathBuf], path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = Path::new(program);
        return is_executable(path).then(|| path.to_path_buf());
    }
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(path_var))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(argv: &[&str], shell: bool) -> ToolPlan {
        ToolPlan {
            name: "t".into(),
            kind: ToolKind::Http,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            shell,
            port: 8000,
            base_path: "/w/a b/t/".into(),
            token: None,
            health_path: String::new(),
            strip_prefix: false,
        }
    }

    fn sh(line: &str) -> String {
        let output = std::process::Command::new("sh")
            .args(["-c", line])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn shell_lines_pass_arguments_and_variables_untouched() {
        let line = tool(&["printf", "%s|%s|", "it's $HOME", "a;b"], false).shell_line();
        assert_eq!(sh(&line), "it's $HOME|a;b|");
        let line = tool(&["echo \"$PORT $BASE_PATH\""], true).shell_line();
        assert_eq!(sh(&line), "8000 /w/a b/t/\n");
    }
}
