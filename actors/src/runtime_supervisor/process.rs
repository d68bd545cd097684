//! The `process` backend: the environment's tools as local child processes, each in its own
//! process group, inside the allocation's limits, logging to files.
//!
//! Set-up builds a venv (or a conda prefix) under the environment's state directory, not in
//! the workspace: it is specific to this host (interpreter, CUDA or CPU wheels), and a
//! workspace shared or exported stays free of it. Set-up is recorded by the hash of
//! everything it depends on and runs again when that changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::model::{PythonManager, RuntimeKind};

use super::backend::{
    missing_hint, resolve_program, Backend, Exit, Instance, LaunchPlan, Launched, ToolPlan,
    Unavailable,
};
use super::limits::Limits;
use super::logs;
use super::terminal::TerminalTarget;
use super::RuntimeError;

/// Name of the set-up record in the state directory.
const SETUP_RECORD: &str = "setup.done";

/// The process backend (always available).
#[derive(Debug, Default)]
pub struct ProcessBackend;

impl Backend for ProcessBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        prepare(plan).boxed_local()
    }

    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        _progress: &'a dyn Fn(super::backend::Progress),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>> {
        async move {
            let mut instance = ProcessInstance::new(plan);
            let mut unavailable = Vec::new();
            let mut pids = BTreeMap::new();
            for tool in plan.tools.iter().filter(|t| t.runs()) {
                if let Some(hint) = instance.missing(tool) {
                    unavailable.push(Unavailable {
                        tool: tool.name.clone(),
                        hint,
                    });
                    continue;
                }
                match instance.spawn(&tool.name) {
                    Ok(pid) => {
                        pids.insert(tool.name.clone(), pid);
                    }
                    Err(error) => {
                        let _ = Box::new(instance).stop(plan.stop_timeout).await;
                        return Err(error);
                    }
                }
            }
            Ok(Launched {
                instance: Box::new(instance),
                unavailable,
                pids,
            })
        }
        .boxed_local()
    }
}

/// The variables, `PATH` and working directory every process of `plan` gets: the node's
/// environment without aienv's own settings, the venv activated, the plan's variables.
pub fn process_env(plan: &LaunchPlan) -> (Vec<(String, String)>, Vec<PathBuf>) {
    let bin_dirs = bin_dirs(plan);
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(name, _)| !name.starts_with("AIENV_"))
        .collect();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.push(path);
    env.insert("PATH".into(), dirs.join(":"));
    if plan.spec.python.is_some() {
        match plan.spec.python.as_ref().map(|p| p.manager) {
            Some(PythonManager::Conda) => {
                env.insert(
                    "CONDA_PREFIX".into(),
                    conda_prefix(plan).display().to_string(),
                );
            }
            _ => {
                env.insert("VIRTUAL_ENV".into(), plan.venv().display().to_string());
            }
        }
        env.remove("PYTHONHOME");
    }
    env.extend(plan.env.clone());
    env.insert("AIENV_WORKSPACE".into(), plan.workspace_name.clone());
    env.insert("AIENV_ENVIRONMENT".into(), plan.environment.clone());
    env.insert(
        "AIENV_WORKSPACE_DIR".into(),
        plan.root.display().to_string(),
    );
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    plan.sandbox.adjust_env(&mut env);
    (env, bin_dirs)
}

fn bin_dirs(plan: &LaunchPlan) -> Vec<PathBuf> {
    match plan.spec.python.as_ref().map(|p| p.manager) {
        Some(PythonManager::Venv) => vec![plan.venv().join("bin")],
        Some(PythonManager::Conda) => vec![conda_prefix(plan).join("bin")],
        None => Vec::new(),
    }
}

fn conda_prefix(plan: &LaunchPlan) -> PathBuf {
    plan.state_dir.join("conda")
}

async fn prepare(plan: &LaunchPlan) -> Result<Vec<String>, RuntimeError> {
    let log_path = plan.setup_log();
    std::fs::create_dir_all(plan.log_dir())
        .map_err(|e| RuntimeError::io(format!("creating {}", plan.log_dir().display()), e))?;
    // The run-as user owns the workspace and runtime dir (files a sync added are the node's).
    let sandbox = plan.sandbox.clone();
    tokio::task::spawn_blocking(move || sandbox.prepare_dirs())
        .await
        .map_err(|e| RuntimeError::io("preparing the sandbox", std::io::Error::other(e)))?
        .map_err(|e| RuntimeError::io("giving the workspace to the environment's user", e))?;
    let record = plan.state_dir.join(SETUP_RECORD);
    if std::fs::read_to_string(&record).is_ok_and(|done| done.trim() == plan.setup_hash) {
        return Ok(Vec::new());
    }
    let _ = std::fs::remove_file(&record);
    let mut notes = Vec::new();
    logs::append(
        &log_path,
        &format!(
            "== set-up of {}/{} at {}\n",
            plan.workspace_name,
            plan.environment,
            chrono::Utc::now().to_rfc3339()
        ),
    );
    let (env, _) = process_env(plan);
    // Programs are looked for as the environment sees them (the sandbox hides some).
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let run = |step: String, argv: Vec<String>| {
        let env = env.clone();
        let log_path = log_path.clone();
        async move { run_step(plan, &step, &argv, &env, &log_path).await }
    };

    if let Some(python) = &plan.spec.python {
        match python.manager {
            PythonManager::Venv => {
                let venv = plan.venv();
                if venv.exists() {
                    std::fs::remove_dir_all(&venv).map_err(|e| {
                        RuntimeError::io(format!("removing the old venv {}", venv.display()), e)
                    })?;
                }
                let (interpreter, note) = find_python(python.version.as_deref(), &path);
                notes.extend(note);
                run(
                    "python venv".into(),
                    vec![
                        interpreter,
                        "-m".into(),
                        "venv".into(),
                        venv.display().to_string(),
                    ],
                )
                .await?;
                let pip = |args: Vec<String>| {
                    let mut argv = vec![
                        venv.join("bin/python").display().to_string(),
                        "-m".into(),
                        "pip".into(),
                        "install".into(),
                        "--disable-pip-version-check".into(),
                        "--no-input".into(),
                    ];
                    argv.extend(args);
                    argv
                };
                for file in &plan.requirements {
                    run(
                        format!("pip install -r {file}"),
                        pip(vec!["-r".into(), file.clone()]),
                    )
                    .await?;
                }
                for dir in &python.projects {
                    run(
                        format!("pip install -e {dir}"),
                        pip(vec!["-e".into(), dir.clone()]),
                    )
                    .await?;
                }
            }
            PythonManager::Conda => {
                let file = python.conda_file.clone().ok_or_else(|| {
                    RuntimeError::BadRequest(format!(
                        "environment `{}`: python.manager is conda but python.conda_file is not set",
                        plan.environment
                    ))
                })?;
                let conda = ["micromamba", "mamba", "conda"]
                    .into_iter()
                    .find_map(|name| resolve_program(name, &[], &path))
                    .ok_or_else(|| RuntimeError::SetupFailed {
                        environment: plan.environment.clone(),
                        step: "conda environment".into(),
                        reason: "no conda, mamba or micromamba on PATH: install Miniforge (https://conda-forge.org/download/)".into(),
                        log: log_path.display().to_string(),
                    })?;
                let prefix = conda_prefix(plan);
                let _ = std::fs::remove_dir_all(&prefix);
                run(
                    "conda environment".into(),
                    vec![
                        conda.display().to_string(),
                        "env".into(),
                        "create".into(),
                        "--yes".into(),
                        "-p".into(),
                        prefix.display().to_string(),
                        "-f".into(),
                        file,
                    ],
                )
                .await?;
            }
        }
    }
    if let Some(script) = &plan.spec.scripts.unix {
        if plan.root.join(script).is_file() {
            run(script.clone(), vec!["/bin/sh".into(), script.clone()]).await?;
        } else {
            notes.push(format!("set-up script {script} does not exist; skipped"));
        }
    }
    for step in &plan.spec.setup {
        run(
            step.name.clone(),
            vec!["/bin/sh".into(), "-c".into(), step.run.clone()],
        )
        .await?;
    }
    crate::fsio::write_atomic(&record, plan.setup_hash.as_bytes())?;
    logs::append(&log_path, "== set-up done\n");
    Ok(notes)
}

/// The interpreter for `version` (`python3.11`), or `python3` with a note.
fn find_python(version: Option<&str>, search: &str) -> (String, Option<String>) {
    if let Some(version) = version {
        let wanted = format!("python{version}");
        if let Some(path) = resolve_program(&wanted, &[], search) {
            return (path.display().to_string(), None);
        }
        return (
            "python3".into(),
            Some(format!(
                "{wanted} is not installed here; the venv uses python3 instead"
            )),
        );
    }
    ("python3".into(), None)
}

async fn run_step(
    plan: &LaunchPlan,
    step: &str,
    argv: &[String],
    env: &[(String, String)],
    log_path: &Path,
) -> Result<(), RuntimeError> {
    logs::append(log_path, &format!("-- {step}: {}\n", argv.join(" ")));
    let failed = |reason: String| RuntimeError::SetupFailed {
        environment: plan.environment.clone(),
        step: step.to_string(),
        reason,
        log: log_path.display().to_string(),
    };
    let log = logs::open(log_path).map_err(|e| failed(e.to_string()))?;
    let argv = plan.sandbox.wrap(argv, &plan.root);
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&plan.root)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| failed(e.to_string()))?)
        .stderr(log)
        .kill_on_drop(true)
        .process_group(0);
    let status = command
        .status()
        .await
        .map_err(|e| failed(format!("cannot run `{}`: {e}", argv[0])))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(describe_status(status)))
    }
}

/// `exit status 3` or `killed by signal 9`.
pub fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".into(),
    }
}

struct Running {
    pid: u32,
    generation: u64,
}

/// The running processes of one environment.
pub struct ProcessInstance {
    plan: LaunchPlan,
    limits: Limits,
    env: Vec<(String, String)>,
    bin_dirs: Vec<PathBuf>,
    running: BTreeMap<String, Running>,
    generation: u64,
    exits_sender: mpsc::UnboundedSender<(String, u64, std::process::ExitStatus)>,
    exits: mpsc::UnboundedReceiver<(String, u64, std::process::ExitStatus)>,
}

impl ProcessInstance {
    fn new(plan: &LaunchPlan) -> ProcessInstance {
        let (env, bin_dirs) = process_env(plan);
        let (exits_sender, exits) = mpsc::unbounded_channel();
        ProcessInstance {
            limits: Limits::new(
                &format!("{}-{}", plan.workspace_id, plan.environment),
                &plan.allocation,
            ),
            plan: plan.clone(),
            env,
            bin_dirs,
            running: BTreeMap::new(),
            generation: 0,
            exits_sender,
            exits,
        }
    }

    fn tool(&self, name: &str) -> Option<&ToolPlan> {
        self.plan.tools.iter().find(|t| t.name == name)
    }

    fn missing(&self, tool: &ToolPlan) -> Option<String> {
        if tool.shell {
            return None;
        }
        let program = tool.argv.first()?;
        self.resolve(program)
            .is_none()
            .then(|| missing_hint(tool.kind, program))
    }

    /// Where `program` is as the environment sees it: the venv first, then its own `PATH`
    /// (which leaves out what the sandbox hides).
    fn resolve(&self, program: &str) -> Option<PathBuf> {
        let path = self
            .env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        resolve_program(program, &self.bin_dirs, &path)
    }

    fn spawn(&mut self, name: &str) -> Result<u32, RuntimeError> {
        let tool = self
            .tool(name)
            .cloned()
            .ok_or_else(|| RuntimeError::ToolNotFound {
                workspace: self.plan.workspace_name.clone(),
                name: name.to_string(),
                known: self.plan.tools.iter().map(|t| t.name.clone()).collect(),
            })?;
        let log_path = self.plan.log_dir().join(format!("{name}.log"));
        logs::rotate(&log_path);
        let log = logs::open(&log_path)
            .map_err(|e| RuntimeError::io(format!("opening {}", log_path.display()), e))?;
        let argv = if tool.shell {
            vec!["/bin/sh".into(), "-c".into(), tool.argv.join(" ")]
        } else {
            let program = self
                .resolve(&tool.argv[0])
                .unwrap_or_else(|| PathBuf::from(&tool.argv[0]));
            let mut argv = vec![program.display().to_string()];
            argv.extend(tool.argv[1..].iter().cloned());
            argv
        };
        let argv = self.plan.sandbox.wrap(&argv, &self.plan.root);
        let mut command = std::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
            .current_dir(&self.plan.root)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(tool.own_env())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| RuntimeError::io("log file", e))?,
            )
            .stderr(log);
        self.limits.apply(&mut command, false);
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|e| RuntimeError::StartFailed {
                environment: self.plan.environment.clone(),
                reason: format!("tool `{name}`: cannot run `{}`: {e}", tool.argv[0]),
            })?;
        let pid = child.id().unwrap_or(0);
        self.generation += 1;
        let generation = self.generation;
        self.running
            .insert(name.to_string(), Running { pid, generation });
        self.record_groups();
        let sender = self.exits_sender.clone();
        let name = name.to_string();
        actix::spawn(async move {
            if let Ok(status) = child.wait().await {
                // The rest of the tool's process group goes with its leader.
                signal_group(pid, libc::SIGTERM);
                let _ = sender.send((name, generation, status));
            }
        });
        tracing::info!(tool = %tool.name, pid, port = tool.port, "tool started");
        Ok(pid)
    }
}

impl ProcessInstance {
    /// Writes the running process groups down, so a node killed without a chance to stop
    /// them (SIGKILL, a crash) removes what is left of them when it starts again.
    fn record_groups(&self) {
        let lines: String = self
            .running
            .values()
            .filter_map(|r| Some(format!("{} {}\n", r.pid, start_time(r.pid)?)))
            .collect();
        let _ = crate::fsio::write_atomic(&self.plan.state_dir.join(GROUPS_FILE), lines.as_bytes());
    }
}

/// Process groups a run left, as `pgid start-time` lines.
const GROUPS_FILE: &str = "groups";

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19)?.parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Kills what runs of process groups recorded under `runtime_dir` by an earlier run of the
/// node (only processes started since the group's leader, so a reused id is left alone).
/// Returns how many processes were killed.
pub fn kill_leftovers(runtime_dir: &Path) -> usize {
    let mut killed = 0;
    let files: Vec<PathBuf> = std::fs::read_dir(runtime_dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ws| std::fs::read_dir(ws.path()).into_iter().flatten().flatten())
        .map(|env| env.path().join(GROUPS_FILE))
        .filter(|f| f.is_file())
        .collect();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(Ok(pgid)), Some(Ok(started))) = (
                parts.next().map(str::parse::<u32>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Some(fields) = stat_fields(pid) else {
                    continue;
                };
                let group: Option<u32> = fields.get(2).and_then(|g| g.parse().ok());
                let start: Option<u64> = fields.get(19).and_then(|s| s.parse().ok());
                if group == Some(pgid) && start.is_some_and(|s| s >= started) {
                    // SAFETY: a process of a group this node started, checked by start time.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                    killed += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&file);
    }
    killed
}

fn signal_group(pid: u32, signal: i32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill(2) on a process group we created; errors (ESRCH) are expected.
    unsafe { libc::kill(-(pid as i32), signal) == 0 }
}

impl Instance for ProcessInstance {
    fn describe(&self) -> String {
        let pids: Vec<String> = self
            .running
            .iter()
            .map(|(name, r)| format!("{name}={}", r.pid))
            .collect();
        format!(
            "processes ({}; limits: {})",
            pids.join(", "),
            self.limits.mechanism()
        )
    }

    fn terminal(&self) -> TerminalTarget {
        let shell = ["/bin/bash", "/bin/sh"]
            .into_iter()
            .find(|s| Path::new(s).exists())
            .unwrap_or("/bin/sh");
        TerminalTarget::Shell {
            argv: self
                .plan
                .sandbox
                .wrap(&[shell.to_string(), "-l".to_string()], &self.plan.root),
            env: self.env.clone(),
            cwd: self.plan.root.clone(),
            limits: self.limits.clone(),
        }
    }

    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit> {
        async move {
            loop {
                let Some((name, generation, status)) = self.exits.recv().await else {
                    return std::future::pending().await;
                };
                // Exits of processes replaced or stopped meanwhile are old news.
                if self
                    .running
                    .get(&name)
                    .is_some_and(|r| r.generation == generation)
                {
                    self.running.remove(&name);
                    return Exit {
                        tool: Some(name),
                        code: status.code().map(i64::from),
                        detail: describe_status(status),
                    };
                }
            }
        }
        .boxed_local()
    }

    fn restart<'a>(
        &'a mut self,
        tool: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>> {
        async move {
            let names: Vec<String> = match tool {
                Some(name) => vec![name.to_string()],
                None => self
                    .plan
                    .tools
                    .iter()
                    .filter(|t| t.runs())
                    .map(|t| t.name.clone())
                    .collect(),
            };
            let mut last = None;
            for name in names {
                if let Some(old) = self.running.remove(&name) {
                    signal_group(old.pid, libc::SIGKILL);
                }
                last = Some(self.spawn(&name)?);
            }
            Ok(last)
        }
        .boxed_local()
    }

    fn stop(
        mut self: Box<Self>,
        grace: Duration,
    ) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        async move {
            let groups: Vec<u32> = self.running.values().map(|r| r.pid).collect();
            for pid in &groups {
                signal_group(*pid, libc::SIGTERM);
            }
            let deadline = tokio::time::Instant::now() + grace;
            while !self.running.is_empty() {
                match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                    Ok(Some((name, generation, _))) => {
                        if self
                            .running
                            .get(&name)
                            .is_some_and(|r| r.generation == generation)
                        {
                            self.running.remove(&name);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            for (name, running) in &self.running {
                tracing::warn!(tool = %name, pid = running.pid, "tool ignored SIGTERM; killing its process group");
            }
            // Leaders that ignored SIGTERM, and anything left in any group.
            for pid in groups {
                signal_group(pid, libc::SIGKILL);
            }
            for _ in 0..50 {
                if self.running.is_empty() {
                    break;
                }
                if let Ok(Some((name, _, _))) =
                    tokio::time::timeout(Duration::from_millis(100), self.exits.recv()).await
                {
                    self.running.remove(&name);
                }
            }
            self.limits.release();
            let _ = std::fs::remove_file(self.plan.state_dir.join(GROUPS_FILE));
            Ok(())
        }
        .boxed_local()
    }
}
