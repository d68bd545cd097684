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

use super::backend::{Backend, Exit, Instance, LaunchPlan, Launched, Progress};
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

/// How often a running job's state is asked for.
const POLL: Duration = Duration::from_millis(500);
/// How often a job just submitted is asked for: most start within a second or two, and the
/// person waits for each poll; after [`QUICK_FOR`], [`POLL`] (a queue wait is long anyway).
const QUICK_POLL: Duration = Duration::from_millis(50);
const QUICK_FOR: Duration = Duration::from_secs(10);

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

    /// Every partition with its nodes' resources and what is free now (from slurmrestd's
    /// `/partitions` and `/nodes`): what the cluster view shows beside the peers.
    pub async fn partitions(&self) -> Result<Vec<Partition>, RuntimeError> {
        let rest = self.rest()?;
        let partitions = rest.get("/partitions").await?;
        let nodes = rest.get("/nodes").await?;
        Ok(summarize(&partitions, &nodes))
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
        script.push_str(&format!(
            "{} > {} 2>&1 &\n",
            tool.shell_line(),
            log(&tool.name)
        ));
    }
    script.push_str("wait\n");
    script
}

/// A partition and its resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    /// Name.
    pub name: String,
    /// `UP`, `DOWN`, `DRAIN`, `INACTIVE`.
    pub state: String,
    /// Nodes in it.
    pub nodes: u32,
    /// Nodes with nothing allocated.
    pub nodes_idle: u32,
    /// CPUs of its nodes.
    pub cpus: u32,
    /// CPUs not allocated on nodes that take jobs.
    pub cpus_free: u32,
    /// Memory of its nodes, bytes.
    pub memory: u64,
    /// Memory not allocated on nodes that take jobs, bytes.
    pub memory_free: u64,
    /// GPUs (`gres` `gpu`) of its nodes.
    pub gpus: u32,
    /// GPUs not in use on nodes that take jobs.
    pub gpus_free: u32,
}

/// Adds up `/nodes` per partition listed by `/partitions`.
pub fn summarize(partitions: &Value, nodes: &Value) -> Vec<Partition> {
    let list = |value: &Value, key: &str| -> Vec<Value> {
        value
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let number = |value: &Value, key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut out: Vec<Partition> = list(partitions, "partitions")
        .iter()
        .map(|p| Partition {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            state: p
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_string(),
            ..Partition::default()
        })
        .filter(|p| !p.name.is_empty())
        .collect();
    for node in list(nodes, "nodes") {
        let state = node.get("state").and_then(Value::as_str).unwrap_or("");
        let takes_jobs = matches!(state, "idle" | "mixed" | "allocated");
        let cpus = number(&node, "cpus") as u32;
        let alloc_cpus = number(&node, "alloc_cpus") as u32;
        let memory = number(&node, "real_memory") << 20;
        let alloc_memory = number(&node, "alloc_memory") << 20;
        let text = |key: &str| node.get(key).and_then(Value::as_str).unwrap_or("");
        let gpus = gpu_count(text("gres"));
        let gpus_used = gpu_count(text("gres_used"));
        let member_of: Vec<&str> = node
            .get("partitions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for partition in out
            .iter_mut()
            .filter(|p| member_of.contains(&p.name.as_str()))
        {
            partition.nodes += 1;
            partition.cpus += cpus;
            partition.memory += memory;
            partition.gpus += gpus;
            if takes_jobs {
                partition.nodes_idle += u32::from(state == "idle");
                partition.cpus_free += cpus.saturating_sub(alloc_cpus);
                partition.memory_free += memory.saturating_sub(alloc_memory);
                partition.gpus_free += gpus.saturating_sub(gpus_used);
            }
        }
    }
    out
}

/// GPUs in a `gres` string: `gpu:4`, `gpu:a100:2(S:0-1)`, `gpu:a100:1(IDX:0),shard:8`.
fn gpu_count(gres: &str) -> u32 {
    gres.split(',')
        .filter(|entry| entry.starts_with("gpu"))
        .filter_map(|entry| {
            let entry = entry.split('(').next().unwrap_or("");
            entry.rsplit(':').next()?.parse::<u32>().ok()
        })
        .sum()
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
        progress: &'a dyn Fn(Progress),
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
            progress(Progress {
                queued: false,
                note: format!("submitted as Slurm job {id}"),
            });
            let mut last = None;
            let submitted = tokio::time::Instant::now();
            let state = loop {
                let state = job_state(&rest, id).await?;
                if last.as_ref() != Some(&state) {
                    if state.state == "PENDING" {
                        progress(Progress {
                            queued: true,
                            note: state.describe(id),
                        });
                    }
                    last = Some(state.clone());
                }
                if state.state == "RUNNING" || state.ended() {
                    break state;
                }
                let quick = submitted.elapsed() < QUICK_FOR;
                tokio::time::sleep(if quick { QUICK_POLL } else { POLL }).await;
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
            progress(Progress {
                queued: false,
                note: format!("Slurm job {id} runs on {node} ({host})"),
            });
            guard.id = None;
            Ok(Launched {
                instance: Box::new(SlurmInstance {
                    rest,
                    id,
                    node,
                    host,
                    next_check: tokio::time::Instant::now(),
                    failures: 0,
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
    /// When the job's state is asked for next.
    next_check: tokio::time::Instant,
    /// Failed asks in a row.
    failures: u32,
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
        // The runner drops this future whenever a probe is due and asks again: the time of
        // the next check and the failure count live in the instance, so no call starts over.
        async move {
            loop {
                tokio::time::sleep_until(self.next_check).await;
                self.next_check = tokio::time::Instant::now() + POLL * 2;
                match job_state(&self.rest, self.id).await {
                    Ok(state) if state.ended() => {
                        // Asked again after the end (it is not restarted): wait for nothing.
                        self.next_check = tokio::time::Instant::now() + Duration::from_secs(86_400);
                        return Exit {
                            tool: None,
                            code: state.exit_code.map(|c| {
                                if state.state == "COMPLETED" {
                                    c
                                } else {
                                    c.max(1)
                                }
                            }),
                            detail: state.describe(self.id),
                        };
                    }
                    Ok(_) => self.failures = 0,
                    Err(error) => {
                        self.failures += 1;
                        tracing::warn!(job = self.id, %error, "asking Slurm for a job's state failed");
                        if self.failures >= 30 {
                            self.failures = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_add_up_their_nodes() {
        let partitions =
            json!({"partitions": [{"name": "gpu", "state": "UP"}, {"name": "cpu", "state": "UP"}]});
        let nodes = json!({"nodes": [
            {"name": "g1", "state": "mixed", "cpus": 32, "alloc_cpus": 8, "real_memory": 1000, "alloc_memory": 400,
             "gres": "gpu:a100:4(S:0-1)", "gres_used": "gpu:a100:1(IDX:0)", "partitions": ["gpu", "cpu"]},
            {"name": "c1", "state": "idle", "cpus": 16, "alloc_cpus": 0, "real_memory": 500, "alloc_memory": 0,
             "gres": "", "gres_used": "", "partitions": ["cpu"]},
            {"name": "c2", "state": "down", "cpus": 16, "alloc_cpus": 0, "real_memory": 500, "alloc_memory": 0,
             "gres": "", "gres_used": "", "partitions": ["cpu"]},
        ]});
        let summary = summarize(&partitions, &nodes);
        assert_eq!(
            summary[0],
            Partition {
                name: "gpu".into(),
                state: "UP".into(),
                nodes: 1,
                nodes_idle: 0,
                cpus: 32,
                cpus_free: 24,
                memory: 1000 << 20,
                memory_free: 600 << 20,
                gpus: 4,
                gpus_free: 3,
            }
        );
        let cpu = &summary[1];
        assert_eq!(
            (cpu.nodes, cpu.nodes_idle, cpu.cpus, cpu.cpus_free),
            (3, 1, 64, 40)
        );
        assert_eq!(gpu_count("gpu:2,shard:8"), 2);
        assert_eq!(gpu_count("(null)"), 0);
    }
}
