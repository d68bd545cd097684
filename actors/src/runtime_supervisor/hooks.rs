//! Hooks: the commands a workspace (`workspace.yaml`) and an environment (`environment.yaml`)
//! run at their moments — `post_clone` after a clone arrives, `pre_run` before every start
//! (after set-up), `post_stop` after every stop. They run like set-up does, confined the way
//! the environment's processes are, with their output in the set-up log; a failing hook fails
//! its step, and the error carries the end of what it printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::model::{HookMoment, Hooks};

use super::backend::LaunchPlan;
use super::sandbox::Sandbox;
use super::{logs, RuntimeError};

/// Lines of a failed hook's output kept in its error.
const TAIL_LINES: usize = 20;

/// The hooks that run at `moment` for `plan`: the workspace's, then the environment's.
pub fn for_moment(plan: &LaunchPlan, moment: HookMoment) -> Vec<(String, String, Duration)> {
    let mut hooks = Vec::new();
    let owners: [(String, &Hooks); 2] = [
        (
            format!("workspace `{}`", plan.workspace_name),
            &plan.workspace_hooks,
        ),
        (
            format!(
                "environment `{}` of `{}`",
                plan.environment, plan.workspace_name
            ),
            &plan.spec.hooks,
        ),
    ];
    for (owner, set) in owners {
        if let Some((command, timeout)) = set.unix(moment) {
            hooks.push((owner, command.to_string(), timeout));
        }
    }
    hooks
}

/// The variables a hook gets beside the environment's own (documented in
/// `schemas/hooks.md`).
pub fn variables(plan: &LaunchPlan, moment: HookMoment) -> Vec<(String, String)> {
    let allocation = &plan.allocation;
    let mut vars = base_variables(
        moment,
        &plan.workspace_name,
        &plan.workspace_id.to_string(),
        &plan.root,
        plan.origin.as_deref(),
    );
    vars.extend([
        ("AIENV_ENVIRONMENT".into(), plan.environment.clone()),
        (
            "AIENV_VARIANT".into(),
            allocation.variant.clone().unwrap_or_default(),
        ),
        (
            "AIENV_CPUS".into(),
            allocation.cpus.map(|c| c.to_string()).unwrap_or_default(),
        ),
        (
            "AIENV_MEMORY_MIB".into(),
            allocation
                .memory
                .map(|m| (m >> 20).to_string())
                .unwrap_or_default(),
        ),
        (
            "AIENV_GPUS".into(),
            allocation
                .gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    vars
}

/// The variables every hook gets, `post_clone`'s included.
pub fn base_variables(
    moment: HookMoment,
    workspace: &str,
    workspace_id: &str,
    root: &Path,
    origin: Option<&str>,
) -> Vec<(String, String)> {
    vec![
        ("AIENV_HOOK".into(), moment.as_str().into()),
        ("AIENV_WORKSPACE".into(), workspace.into()),
        ("AIENV_WORKSPACE_ID".into(), workspace_id.into()),
        ("AIENV_WORKSPACE_DIR".into(), root.display().to_string()),
        ("AIENV_ORIGIN".into(), origin.unwrap_or_default().into()),
    ]
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its exit code (`None`: killed by a signal, or stopped at its time-out).
    pub code: Option<i32>,
    /// `exit status 3`, `killed by signal 9`, `it ran past its 600 s and was stopped`.
    pub reason: String,
}

impl Finished {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A command stopped at its time-out.
    pub fn timed_out(timeout: Duration) -> Finished {
        Finished {
            code: None,
            reason: format!("it ran past its {} s and was stopped", timeout.as_secs()),
        }
    }
}

/// Runs a shell command line with `/bin/sh -c` in `root`, confined by `sandbox`, with exactly
/// `env`, its output appended to `log` after a `== <label>` line. Errors only when it cannot
/// run at all; how it ended is the [`Finished`].
pub async fn run_confined(
    label: &str,
    command: &str,
    timeout: Duration,
    sandbox: &Sandbox,
    root: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<Finished, RuntimeError> {
    logs::append(log, &format!("== {label}: {command}\n"));
    let cannot = |reason: String| {
        RuntimeError::io(format!("running {label}"), std::io::Error::other(reason))
    };
    let file = logs::open(log).map_err(|e| cannot(e.to_string()))?;
    let argv = sandbox.wrap(&["/bin/sh".into(), "-c".into(), command.to_string()], root);
    let mut process = tokio::process::Command::new(&argv[0]);
    process
        .args(&argv[1..])
        .current_dir(root)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| cannot(e.to_string()))?)
        .stderr(file)
        .kill_on_drop(true)
        .process_group(0);
    let mut child = process
        .spawn()
        .map_err(|e| cannot(format!("cannot run `{}`: {e}", argv[0])))?;
    let finished = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|e| cannot(e.to_string()))?;
            Finished {
                code: status.code(),
                reason: super::process::describe_status(status),
            }
        }
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: signalling the process group this child leads.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            Finished::timed_out(timeout)
        }
    };
    logs::append(log, &format!("== {label}: {}\n", finished.reason));
    Ok(finished)
}

/// Runs a command in the environment's own local sandbox (process confinement), with the
/// environment's variables and `vars`: what every backend does unless it has a better place.
pub async fn run_local(
    plan: &LaunchPlan,
    label: &str,
    command: &str,
    vars: &[(String, String)],
    log: &Path,
    timeout: Duration,
) -> Result<Finished, RuntimeError> {
    let (mut env, _) = super::process::process_env(plan);
    env.extend(vars.iter().cloned());
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
    }
    let sandbox = plan.sandbox.clone();
    tokio::task::spawn_blocking(move || sandbox.prepare_dirs())
        .await
        .map_err(|_| RuntimeError::Gone)?
        .map_err(|e| RuntimeError::io("preparing the sandbox's directories", e))?;
    run_confined(
        label,
        command,
        timeout,
        &plan.sandbox,
        &plan.root,
        &env,
        log,
    )
    .await
}

/// Runs one hook through `backend`, turning a failure into [`RuntimeError::HookFailed`] with
/// the end of its output.
pub async fn run_hook(
    backend: &dyn super::Backend,
    plan: &LaunchPlan,
    moment: HookMoment,
    owner: &str,
    command: &str,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let log = plan.setup_log();
    let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let label = format!("{} hook of {owner}", moment.as_str());
    let finished = backend
        .run_command(
            plan,
            &label,
            command,
            &variables(plan, moment),
            &log,
            timeout,
        )
        .await?;
    verdict(moment, owner, finished, &log, start)
}

/// Ok for a hook that exited 0; otherwise its failure, with what it wrote to `log` after
/// `start`.
fn verdict(
    moment: HookMoment,
    owner: &str,
    finished: Finished,
    log: &Path,
    start: u64,
) -> Result<(), RuntimeError> {
    if finished.success() {
        return Ok(());
    }
    Err(RuntimeError::HookFailed {
        hook: moment.as_str().into(),
        owner: owner.into(),
        reason: finished.reason,
        output: tail(log, start),
        log: log.display().to_string(),
    })
}

/// The last lines written to `log` after `start`.
fn tail(log: &Path, start: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let from = (start as usize).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("== ")).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs a workspace's `post_clone` hook, confined as its process environments are (the
/// TransferQueue asks, once a clone is in place).
#[derive(actix::Message)]
#[rtype(result = "Result<(), RuntimeError>")]
pub struct PostClone {
    /// The clone.
    pub workspace: uuid::Uuid,
}

impl actix::Handler<PostClone> for super::RuntimeSupervisor {
    type Result = actix::ResponseFuture<Result<(), RuntimeError>>;

    fn handle(&mut self, message: PostClone, _: &mut Self::Context) -> Self::Result {
        type Prepared = (
            std::sync::Arc<crate::workspace_store::WorkspaceEntry>,
            String,
            Duration,
            Sandbox,
            Vec<(String, String)>,
            std::path::PathBuf,
        );
        let prepared = (|| -> Result<Option<Prepared>, RuntimeError> {
            let entry = self.store.get(&message.workspace.to_string())?;
            let Some((command, timeout)) = entry
                .manifest
                .hooks
                .unix(HookMoment::PostClone)
                .map(|(c, t)| (c.to_string(), t))
            else {
                return Ok(None);
            };
            let state_dir = self
                .config
                .dir
                .join(entry.manifest.id.to_string())
                .join("_hooks");
            let sandbox = super::plan::sandbox_for(
                &self.config,
                &self.confinement,
                &entry,
                "post_clone",
                &crate::model::EnvironmentSpec::new("post_clone"),
                crate::model::RuntimeKind::Process,
                &state_dir,
            )?;
            let mut env: Vec<(String, String)> = std::env::vars()
                .filter(|(name, _)| !name.starts_with("AIENV_"))
                .collect();
            env.extend(base_variables(
                HookMoment::PostClone,
                &entry.manifest.name,
                &entry.manifest.id.to_string(),
                &entry.path,
                entry
                    .origin
                    .as_ref()
                    .map(|o| format!("{}/{}", o.peer_name, o.workspace_name))
                    .as_deref(),
            ));
            sandbox.adjust_env(&mut env);
            Ok(Some((entry, command, timeout, sandbox, env, state_dir)))
        })();
        Box::pin(async move {
            let Some((entry, command, timeout, sandbox, env, state_dir)) = prepared? else {
                return Ok(());
            };
            let log = state_dir.join("logs").join("post_clone.log");
            std::fs::create_dir_all(state_dir.join("logs"))
                .map_err(|e| RuntimeError::io(format!("creating {}", state_dir.display()), e))?;
            let dirs = sandbox.clone();
            tokio::task::spawn_blocking(move || dirs.prepare_dirs())
                .await
                .map_err(|_| RuntimeError::Gone)?
                .map_err(|e| RuntimeError::io("preparing the sandbox's directories", e))?;
            let owner = format!("workspace `{}`", entry.manifest.name);
            let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let finished = run_confined(
                &format!("post_clone hook of {owner}"),
                &command,
                timeout,
                &sandbox,
                &entry.path,
                &env,
                &log,
            )
            .await?;
            verdict(HookMoment::PostClone, &owner, finished, &log, start)
        })
    }
}
