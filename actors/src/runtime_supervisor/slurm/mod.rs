//! The `slurm` backend: an environment becomes one Slurm batch job, submitted through
//! slurmrestd and sized from its allocation (`cpus_per_task`, memory, GPUs as `gres`). The job
//! script runs the environment's set-up script and then its tools on the compute node Slurm
//! picks; the node's proxy reaches them at that node's address. Logs are the job's output
//! and one file per tool in the environment's log directory (a file system the compute nodes
//! share with this node, as in any Slurm cluster). Stop cancels the job; the environment's
//! state follows the job's, with Slurm's reason when it waits or fails. Queueing is Slurm's:
//! aienv submits and follows, it does not schedule.

pub mod rest;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use crate::model::RuntimeKind;

use super::backend::{Backend, Exit, Instance, LaunchPlan, Launched};
use super::detect::shell_quote;
use super::terminal::TerminalTarget;
use super::RuntimeError;
use rest::{Endpoint, SlurmRest};

/// The node's Slurm settings (`runtime.slurm` in the config file).
#[derive(Debug, Clone, Default)]
pub struct SlurmConfig {
    /// slurmrestd: `unix:/path/to.sock` or `http://host:port`; empty when the lab has none.
    pub url: String,
    /// User name sent with the JWT (TCP endpoints).
    pub user: String,
    /// File holding the JWT (`scontrol token`), read at each submission.
    pub token_file: Option<PathBuf>,
    /// Default partition.
    pub partition: Option<String>,
    /// Default account.
    pub account: Option<String>,
    /// Default wall-clock limit in minutes.
    pub time_limit_minutes: Option<u32>,
}

/// How often a job's state is asked for.
const POLL: Duration = Duration::from_millis(500);

/// Job states after which a job no longer runs (squeue(1), "JOB STATE CODES").
const ENDED: &[&str] = &[
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
    "REVOKED",
];

/// The slurm backend.
pub struct SlurmBackend {
    config: SlurmConfig,
}

impl SlurmBackend {
    /// A backend with the node's settings.
    pub fn new(config: SlurmConfig) -> SlurmBackend {
        SlurmBackend { config }
    }

    fn rest(&self) -> Result<SlurmRest, RuntimeError> {
        if self.config.url.is_empty() {
            return Err(RuntimeError::BackendUnavailable {
                backend: "slurm",
                reason: "no slurmrestd is configured: set runtime.slurm.url to `unix:/path/to/slurmrestd.sock` or `http://host:port`".into(),
            });
        }
        let endpoint =
            Endpoint::parse(&self.config.url).map_err(|e| RuntimeError::BackendUnavailable {
                backend: "slurm",
                reason: format!("runtime.slurm.url: {e}"),
            })?;
        let jwt = match &self.config.token_file {
            Some(file) => {
                let token = std::fs::read_to_string(file).map_err(|e| {
                    RuntimeError::BackendUnavailable {
                        backend: "slurm",
                        reason: format!(
                            "runtime.slurm.token_file {}: {e} (write one with `scontrol token`)",
                            file.display()
                        ),
                    }
                })?;
                let token = token.trim().trim_start_matches("SLURM_JWT=").to_string();
                Some((self.config.user.clone(), token))
            }
            None => None,
        };
        Ok(SlurmRest::new(endpoint, jwt))
    }

    /// The job slurmrestd is asked to run for `plan`.
    fn job(&self, plan: &LaunchPlan) -> Value {
        let spec = plan.spec.slurm.clone().unwrap_or_default();
        let logs = plan.log_dir();
        let mut environment: BTreeMap<String, String> = BTreeMap::new();
        environment.insert(
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        environment.insert("LANG".into(), "C.UTF-8".into());
        environment.insert("HOME".into(), plan.sandbox.home.display().to_string());
        environment.extend(plan.env.clone());
        environment.insert("AIENV_WORKSPACE".into(), plan.workspace_name.clone());
        environment.insert("AIENV_ENVIRONMENT".into(), plan.environment.clone());
        let mut job = json!({
            "name": format!("aienv-{}-{}", plan.workspace_name, plan.environment),
            "current_working_directory": plan.root.display().to_string(),
            "environment": environment,
            "standard_output": logs.join("job.log").display().to_string(),
            "standard_error": logs.join("job.log").display().to_string(),
            "comment": format!("aienv {} {}/{}", plan.node_id, plan.workspace_id, plan.environment),
        });
        if let Some(cpus) = plan.allocation.cpus {
            job["cpus_per_task"] = json!(cpus.ceil().max(1.0) as u32);
        }
        if let Some(memory) = plan.allocation.memory {
            job["memory_per_node"] = json!(memory.div_ceil(1 << 20).max(1));
        }
        if !plan.allocation.gpus.is_empty() {
            job["tres_per_node"] = json!(format!("gres:gpu:{}", plan.allocation.gpus.len()));
        }
        let partition = spec.partition.or_else(|| self.config.partition.clone());
        if let Some(partition) = partition {
            job["partition"] = json!(partition);
        }
        if let Some(account) = spec.account.or_else(|| self.config.account.clone()) {
            job["account"] = json!(account);
        }
        let minutes = spec.time_limit_minutes.or(self.config.time_limit_minutes);
        if let Some(minutes) = minutes {
            job["time_limit"] = json!(minutes);
        }
        json!({ "job": job, "script": script(plan) })
    }
}

/// The batch script: set-up, then every tool in the background with its own log, then wait
/// for them. Everything the person wrote is quoted, never interpolated.
pub fn script(plan: &LaunchPlan) -> String {
    let logs = plan.log_dir();
    let log = |name: &str| shell_quote(&logs.join(format!("{name}.log")).display().to_string());
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&format!(
        "cd {} || exit 1\n",
        shell_quote(&plan.root.display().to_string())
    ));
    if let Some(setup) = &plan.spec.scripts.unix {
        script.push_str(&format!(
            "sh {} >> {} 2>&1 || {{ echo \"set-up script {} failed\"; exit 1; }}\n",
            shell_quote(setup),
            log("setup"),
            setup.replace(['"', '\\', '$', '`'], "_")
        ));
    }
    for tool in plan.tools.iter().filter(|t| t.runs()) {
        let command = if tool.shell {
            format!("sh -c {}", shell_quote(&tool.argv.join(" ")))
        } else {
            tool.argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut vars = format!(
            "PORT={} BASE_PATH={}",
            tool.port,
            shell_quote(&tool.base_path)
        );
        if let Some(token) = &tool.token {
            vars.push_str(&format!(" JUPYTER_TOKEN={}", shell_quote(token)));
        }
        script.push_str(&format!(
            "env {vars} {command} > {} 2>&1 &\n",
            log(&tool.name)
        ));
    }
    script.push_str("wait\n");
    script
}

/// What a job looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// `PENDING`, `RUNNING`, `FAILED`, ...
    pub state: String,
    /// Slurm's reason (`Resources`, `NonZeroExitCode`, ...), `None` when it has none.
    pub reason: Option<String>,
    /// The node running the batch script.
    pub node: Option<String>,
    /// Exit code of the script.
    pub exit_code: Option<i64>,
}

impl JobState {
    fn ended(&self) -> bool {
        ENDED.contains(&self.state.as_str())
    }

    fn describe(&self, id: u64) -> String {
        match &self.reason {
            Some(reason) => format!("Slurm job {id} {} ({reason})", self.state),
            None => format!("Slurm job {id} {}", self.state),
        }
    }
}

async fn job_state(rest: &SlurmRest, id: u64) -> Result<JobState, RuntimeError> {
    let answer = rest.get(&format!("/job/{id}")).await?;
    let job = answer
        .get("jobs")
        .and_then(Value::as_array)
        .and_then(|jobs| jobs.first())
        .ok_or_else(|| RuntimeError::Slurm(format!("job {id} is not known to Slurm")))?;
    let text = |key: &str| {
        job.get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && *v != "None")
            .map(str::to_string)
    };
    Ok(JobState {
        state: text("job_state").unwrap_or_else(|| "UNKNOWN".into()),
        reason: text("state_reason"),
        node: text("batch_host").or_else(|| text("nodes")),
        exit_code: job.get("exit_code").and_then(Value::as_i64),
    })
}

/// The address the proxy uses for a compute node: its `address`, resolved.
async fn node_address(rest: &SlurmRest, node: &str) -> Result<IpAddr, RuntimeError> {
    let answer = rest.get(&format!("/node/{node}")).await?;
    let address = answer
        .get("nodes")
        .and_then(Value::as_array)
        .and_then(|nodes| nodes.first())
        .and_then(|n| n.get("address").or_else(|| n.get("hostname")))
        .and_then(Value::as_str)
        .unwrap_or(node)
        .to_string();
    if let Ok(ip) = address.parse() {
        return Ok(ip);
    }
    let mut found = tokio::net::lookup_host((address.as_str(), 0))
        .await
        .map_err(|e| RuntimeError::Slurm(format!("node {node} has address `{address}`: {e}")))?;
    found
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| RuntimeError::Slurm(format!("node {node}: `{address}` resolves to nothing")))
}

/// Cancels a submitted job if the launch that owns it is dropped (the environment was stopped
/// while its job waited in the queue).
struct CancelOnDrop {
    rest: SlurmRest,
    id: Option<u64>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let rest = self.rest.clone();
            tokio::task::spawn_local(async move {
                if let Err(error) = rest.delete(&format!("/job/{id}")).await {
                    tracing::warn!(job = id, %error, "cancelling an abandoned Slurm job failed");
                }
            });
        }
    }
}

impl Backend for SlurmBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Slurm
    }

    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        async move {
            let rest = self.rest()?;
            rest.get("/ping").await?;
            std::fs::create_dir_all(plan.log_dir())
                .map_err(|e| RuntimeError::io("creating the log directory", e))?;
            plan.sandbox
                .prepare_dirs()
                .map_err(|e| RuntimeError::io("preparing the job's directories", e))?;
            Ok(vec![format!(
                "runs as a Slurm job through {}; set-up and tools run on the compute node",
                self.config.url
            )])
        }
        .boxed_local()
    }

    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        progress: &'a dyn Fn(String),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>> {
        async move {
            let rest = self.rest()?;
            let answer = rest.post("/job/submit", &self.job(plan)).await?;
            let id = answer
                .get("job_id")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    RuntimeError::Slurm("job/submit answered without a job_id".into())
                })?;
            let mut guard = CancelOnDrop {
                rest: rest.clone(),
                id: Some(id),
            };
            progress(format!("submitted as Slurm job {id}"));
            let mut last = None;
            let state = loop {
                let state = job_state(&rest, id).await?;
                if last.as_ref() != Some(&state) {
                    if state.state == "PENDING" {
                        progress(state.describe(id));
                    }
                    last = Some(state.clone());
                }
                if state.state == "RUNNING" || state.ended() {
                    break state;
                }
                tokio::time::sleep(POLL).await;
            };
            if state.ended() {
                guard.id = None;
                let log = plan.log_dir().join("job.log");
                return Err(RuntimeError::StartFailed {
                    environment: plan.environment.clone(),
                    reason: format!(
                        "{} before its tools started (log: {})",
                        state.describe(id),
                        log.display()
                    ),
                });
            }
            let node = state.node.clone().unwrap_or_default();
            let host = node_address(&rest, &node).await?;
            progress(format!("Slurm job {id} runs on {node} ({host})"));
            guard.id = None;
            Ok(Launched {
                instance: Box::new(SlurmInstance {
                    rest,
                    id,
                    node,
                    host,
                }),
                unavailable: Vec::new(),
                pids: BTreeMap::new(),
            })
        }
        .boxed_local()
    }
}

/// A running job.
struct SlurmInstance {
    rest: SlurmRest,
    id: u64,
    node: String,
    host: IpAddr,
}

impl Instance for SlurmInstance {
    fn describe(&self) -> String {
        format!("slurm job {} on {}", self.id, self.node)
    }

    fn host(&self) -> Option<IpAddr> {
        Some(self.host)
    }

    fn terminal(&self) -> TerminalTarget {
        // A shell in the job's allocation, next to its tools.
        TerminalTarget::Shell {
            argv: vec![
                "srun".into(),
                format!("--jobid={}", self.id),
                "--overlap".into(),
                "--pty".into(),
                "/bin/sh".into(),
            ],
            env: std::env::vars().collect(),
            cwd: PathBuf::from("/"),
            limits: Default::default(),
        }
    }

    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit> {
        async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(POLL * 2).await;
                match job_state(&self.rest, self.id).await {
                    Ok(state) if state.ended() => {
                        return Exit {
                            tool: None,
                            code: state.exit_code.map(|c| if state.state == "COMPLETED" { c } else { c.max(1) }),
                            detail: state.describe(self.id),
                        }
                    }
                    Ok(_) => failures = 0,
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(job = self.id, %error, "asking Slurm for a job's state failed");
                        if failures >= 30 {
                            return Exit {
                                tool: None,
                                code: None,
                                detail: format!("Slurm job {} cannot be followed: {error}", self.id),
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
        _tool: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>> {
        async move {
            Err(RuntimeError::Unsupported(format!(
                "a Slurm job is not restarted in place (job {}); run the environment again to submit a new one",
                self.id
            )))
        }
        .boxed_local()
    }

    fn stop(self: Box<Self>, grace: Duration) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        async move {
            match self.rest.delete(&format!("/job/{}", self.id)).await {
                Ok(_) => {}
                // Already gone: nothing to cancel.
                Err(RuntimeError::Slurm(message))
                    if message.contains("already completed")
                        || message.contains("Invalid job id") => {}
                Err(error) => return Err(error),
            }
            let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                match job_state(&self.rest, self.id).await {
                    Ok(state) if state.ended() => return Ok(()),
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(_) => return Ok(()),
                }
            }
            Err(RuntimeError::Slurm(format!(
                "job {} still runs {} s after it was cancelled",
                self.id,
                grace.as_secs() + 5
            )))
        }
        .boxed_local()
    }
}
