//! One run of one environment: set-up, launch, health checks, restarts per policy, stop.
//! A future on the supervisor's arbiter that owns its instance and reports every change to
//! the supervisor by [`RunReport`] messages; the supervisor alone changes published state.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::model::RestartPolicy;
use crate::shutdown::Shutdown;

use super::backend::{Backend, Exit, Instance, LaunchPlan, Progress};
use super::health;
use super::status::{EnvState, ToolState};
use super::{EnvKey, RunReport, RuntimeSupervisor};

/// How often a starting tool is probed: the first answer is noticed within this.
const START_PROBE: Duration = Duration::from_millis(50);
/// A tool that answered this long has its restart count forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(60);

struct ToolRun {
    state: ToolState,
    restarts: u32,
    failed_checks: u32,
    started: Instant,
    ready_since: Option<Instant>,
    next_probe: Instant,
}

/// Everything a run needs.
pub struct Run {
    pub key: EnvKey,
    pub run_id: u64,
    pub plan: LaunchPlan,
    pub backend: Rc<dyn Backend>,
    pub supervisor: Addr<RuntimeSupervisor>,
    pub cancel: Shutdown,
}

impl Run {
    fn report(&self, report: impl FnOnce(EnvKey) -> RunReport) {
        self.supervisor.do_send(Envelope {
            run_id: self.run_id,
            report: report(self.key.clone()),
        });
    }

    fn state(&self, state: EnvState, error: Option<String>) {
        self.report(|key| RunReport::State { key, state, error });
    }

    fn tool(
        &self,
        name: &str,
        state: ToolState,
        detail: Option<String>,
        pid: Option<u32>,
        restarts: u32,
    ) {
        self.report(|key| RunReport::Tool {
            key,
            name: name.to_string(),
            state,
            detail,
            pid,
            restarts,
        });
    }
}

/// A report tagged with its run, so reports of a replaced run are dropped.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Envelope {
    pub run_id: u64,
    pub report: RunReport,
}

/// Runs the environment until cancelled or it fails for good.
pub async fn run(run: Run) {
    let plan = &run.plan;
    run.state(EnvState::SettingUp, None);
    let prepared = tokio::select! {
        result = run.backend.prepare(plan) => result,
        _ = run.cancel.wait() => {
            run.state(EnvState::Stopped, None);
            return;
        }
    };
    match prepared {
        Ok(notes) if !notes.is_empty() => run.report(|key| RunReport::Notes { key, notes }),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(environment = %plan.environment, %error, "set-up failed");
            run.state(EnvState::Failed, Some(error.to_string()));
            return;
        }
    }
    let pre_run = tokio::select! {
        result = run_hooks(&run, crate::model::HookMoment::PreRun) => result,
        _ = run.cancel.wait() => {
            run.state(EnvState::Stopped, None);
            return;
        }
    };
    if let Err(error) = pre_run {
        tracing::warn!(environment = %plan.environment, %error, "pre_run hook failed");
        run.state(EnvState::Failed, Some(error.to_string()));
        return;
    }
    run.state(EnvState::Starting, None);
    let queued = std::cell::Cell::new(false);
    let progress = |progress: Progress| {
        tracing::info!(environment = %plan.environment, "{}", progress.note);
        if progress.queued != queued.get() {
            queued.set(progress.queued);
            let state = if progress.queued {
                EnvState::Queued
            } else {
                EnvState::Starting
            };
            run.state(state, None);
        }
        run.report(|key| RunReport::Notes {
            key,
            notes: vec![progress.note],
        });
    };
    let launched = tokio::select! {
        result = run.backend.launch(plan, &progress) => result,
        _ = run.cancel.wait() => {
            run.state(EnvState::Stopped, None);
            return;
        }
    };
    let launched = match launched {
        Ok(launched) => launched,
        Err(error) => {
            tracing::warn!(environment = %plan.environment, %error, "start failed");
            run.state(EnvState::Failed, Some(error.to_string()));
            return;
        }
    };
    let mut instance = launched.instance;
    run.report(|key| RunReport::Launched {
        key,
        instance: instance.describe(),
        terminal: instance.terminal(),
        host: instance.host(),
    });
    let now = Instant::now();
    let mut tools: BTreeMap<String, ToolRun> = BTreeMap::new();
    for tool in plan.tools.iter().filter(|t| t.runs()) {
        if let Some(missing) = launched.unavailable.iter().find(|u| u.tool == tool.name) {
            run.tool(
                &tool.name,
                ToolState::Unavailable,
                Some(missing.hint.clone()),
                None,
                0,
            );
            continue;
        }
        run.tool(
            &tool.name,
            ToolState::Starting,
            None,
            launched.pids.get(&tool.name).copied(),
            0,
        );
        tools.insert(
            tool.name.clone(),
            ToolRun {
                state: ToolState::Starting,
                restarts: 0,
                failed_checks: 0,
                started: now,
                ready_since: None,
                next_probe: now,
            },
        );
    }
    refresh_env_state(&run, &tools);

    loop {
        let next_probe = tools
            .values()
            .filter(|t| {
                matches!(
                    t.state,
                    ToolState::Starting | ToolState::Ready | ToolState::Unhealthy
                )
            })
            .map(|t| t.next_probe)
            .min();
        let probe_wait = async {
            match next_probe {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = run.cancel.wait() => break,
            exit = instance.next_exit() => {
                if !on_exit(&run, &mut instance, &mut tools, exit).await {
                    break;
                }
            }
            _ = probe_wait => {
                if !probe_due(&run, &mut instance, &mut tools).await {
                    break;
                }
            }
        }
    }
    run.state(EnvState::Stopping, None);
    let stopped = instance.stop(plan.stop_timeout).await;
    for name in tools.keys() {
        run.tool(name, ToolState::Stopped, None, None, 0);
    }
    let stopped = match stopped {
        Ok(()) => run_hooks(&run, crate::model::HookMoment::PostStop)
            .await
            .map_err(|error| error.to_string()),
        Err(error) => Err(format!("stopping: {error}")),
    };
    match stopped {
        Ok(()) if run.cancel.is_triggered() => run.state(EnvState::Stopped, None),
        Ok(()) => run.state(
            EnvState::Failed,
            Some("every tool ended and none is restarted".into()),
        ),
        Err(error) => run.state(EnvState::Failed, Some(error)),
    }
}

/// Runs the workspace's and then the environment's hook for `moment`; the first failure
/// ends it. Cancelling the run does not cut a hook short: `post_stop` runs after a stop.
async fn run_hooks(run: &Run, moment: crate::model::HookMoment) -> Result<(), super::RuntimeError> {
    for (owner, command, timeout) in super::hooks::for_moment(&run.plan, moment) {
        run.report(|key| RunReport::Notes {
            key,
            notes: vec![format!("running the {} hook of {owner}", moment.as_str())],
        });
        super::hooks::run_hook(
            run.backend.as_ref(),
            &run.plan,
            moment,
            &owner,
            &command,
            timeout,
        )
        .await?;
    }
    Ok(())
}

/// Decides what an exit means. Returns false when the environment should stop.
async fn on_exit(
    run: &Run,
    instance: &mut Box<dyn Instance>,
    tools: &mut BTreeMap<String, ToolRun>,
    exit: Exit,
) -> bool {
    let names: Vec<String> = match &exit.tool {
        Some(name) => vec![name.clone()],
        None => tools.keys().cloned().collect(),
    };
    if names.is_empty() {
        // An environment without tools (a VM, a plain container) ended.
        let restart = policy_restarts(run, &exit);
        if restart {
            tracing::info!(environment = %run.plan.environment, detail = %exit.detail, "environment ended; restarting");
            return instance.restart(None).await.is_ok();
        }
        return false;
    }
    let first = &names[0];
    let tool = tools.get_mut(first).expect("a known tool");
    if tool
        .ready_since
        .is_some_and(|since| since.elapsed() >= STABLE_AFTER)
    {
        tool.restarts = 0;
    }
    let restarts = tool.restarts;
    tracing::info!(environment = %run.plan.environment, tool = ?exit.tool, detail = %exit.detail, "tool ended");
    if !policy_restarts(run, &exit) {
        for name in &names {
            let tool = tools.get_mut(name).expect("a known tool");
            tool.state = if exit.success() {
                ToolState::Exited
            } else {
                ToolState::Failed
            };
            run.tool(
                name,
                tool.state,
                Some(exit.detail.clone()),
                None,
                tool.restarts,
            );
        }
        return refresh_if_running(run, tools);
    }
    if restarts >= run.plan.spec.restart.max_restarts {
        for name in &names {
            let tool = tools.get_mut(name).expect("a known tool");
            tool.state = ToolState::Failed;
            run.tool(
                name,
                ToolState::Failed,
                Some(format!(
                    "{}; gave up after {restarts} restarts",
                    exit.detail
                )),
                None,
                restarts,
            );
        }
        return refresh_if_running(run, tools);
    }
    restart(
        run,
        instance,
        tools,
        &names,
        exit.tool.is_none(),
        exit.detail,
    )
    .await
}

fn is_running(state: ToolState) -> bool {
    matches!(
        state,
        ToolState::Starting | ToolState::Ready | ToolState::Unhealthy | ToolState::Restarting
    )
}

fn policy_restarts(run: &Run, exit: &Exit) -> bool {
    match run.plan.spec.restart.policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Always => true,
    }
}

/// Restarts `names` (the whole instance when `whole`) after a back-off.
async fn restart(
    run: &Run,
    instance: &mut Box<dyn Instance>,
    tools: &mut BTreeMap<String, ToolRun>,
    names: &[String],
    whole: bool,
    why: String,
) -> bool {
    let restarts = names
        .iter()
        .filter_map(|n| tools.get(n))
        .map(|t| t.restarts)
        .max()
        .unwrap_or(0);
    let backoff =
        Duration::from_millis(250 * (1u64 << restarts.min(7))).min(Duration::from_secs(30));
    for name in names {
        let tool = tools.get_mut(name).expect("a known tool");
        tool.state = ToolState::Restarting;
        tool.restarts += 1;
        run.tool(
            name,
            ToolState::Restarting,
            Some(format!("{why}; restarting in {} ms", backoff.as_millis())),
            None,
            tool.restarts,
        );
    }
    refresh_env_state(run, tools);
    tokio::select! {
        _ = tokio::time::sleep(backoff) => {}
        _ = run.cancel.wait() => return false,
    }
    let result = if whole {
        instance.restart(None).await
    } else {
        instance.restart(Some(&names[0])).await
    };
    let now = Instant::now();
    for name in names {
        let tool = tools.get_mut(name).expect("a known tool");
        match &result {
            Ok(pid) => {
                tool.state = ToolState::Starting;
                tool.started = now;
                tool.ready_since = None;
                tool.failed_checks = 0;
                tool.next_probe = now;
                run.tool(name, ToolState::Starting, None, *pid, tool.restarts);
            }
            Err(error) => {
                tool.state = ToolState::Failed;
                run.tool(
                    name,
                    ToolState::Failed,
                    Some(error.to_string()),
                    None,
                    tool.restarts,
                );
            }
        }
    }
    refresh_env_state(run, tools);
    tools.values().any(|t| is_running(t.state))
}

/// Probes every tool whose time has come. Returns false when the environment should stop.
async fn probe_due(
    run: &Run,
    instance: &mut Box<dyn Instance>,
    tools: &mut BTreeMap<String, ToolRun>,
) -> bool {
    let health = &run.plan.spec.health;
    let now = Instant::now();
    let due: Vec<String> = tools
        .iter()
        .filter(|(_, t)| {
            matches!(
                t.state,
                ToolState::Starting | ToolState::Ready | ToolState::Unhealthy
            ) && t.next_probe <= now
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in due {
        let plan = run
            .plan
            .tools
            .iter()
            .find(|t| t.name == name)
            .expect("planned");
        let host = instance.host().unwrap_or(Ipv4Addr::LOCALHOST.into());
        let addr = SocketAddr::from((host, plan.port));
        let result = health::probe(
            addr,
            &plan.probe_path(),
            plan.token.as_deref(),
            Duration::from_secs(health.timeout_seconds as u64),
        )
        .await;
        let tool = tools.get_mut(&name).expect("a known tool");
        let interval = Duration::from_secs(health.interval_seconds as u64);
        match result {
            Ok(_) => {
                tool.failed_checks = 0;
                tool.next_probe = Instant::now() + interval;
                if tool.state != ToolState::Ready {
                    tool.state = ToolState::Ready;
                    tool.ready_since = Some(Instant::now());
                    tracing::info!(tool = %name, after_ms = tool.started.elapsed().as_millis() as u64, "tool ready");
                    run.tool(&name, ToolState::Ready, None, None, tool.restarts);
                    refresh_env_state(run, tools);
                }
            }
            Err(error) if tool.state == ToolState::Starting => {
                if tool.started.elapsed() > Duration::from_secs(health.start_period_seconds as u64)
                {
                    let why = format!(
                        "did not answer within {} s: {error}",
                        health.start_period_seconds
                    );
                    if !restart_unhealthy(run, instance, tools, &name, why).await {
                        return false;
                    }
                } else {
                    tool.next_probe = Instant::now()
                        + START_PROBE.max(Duration::from_millis(
                            (tool.started.elapsed().as_millis() as u64 / 10).min(1000),
                        ));
                }
            }
            Err(error) => {
                tool.failed_checks += 1;
                tool.next_probe = Instant::now() + interval;
                if tool.failed_checks >= health.retries {
                    let why = format!("failed {} health checks: {error}", tool.failed_checks);
                    if !restart_unhealthy(run, instance, tools, &name, why).await {
                        return false;
                    }
                } else if tool.state == ToolState::Ready {
                    tool.state = ToolState::Unhealthy;
                    run.tool(
                        &name,
                        ToolState::Unhealthy,
                        Some(error),
                        None,
                        tool.restarts,
                    );
                    refresh_env_state(run, tools);
                }
            }
        }
    }
    true
}

async fn restart_unhealthy(
    run: &Run,
    instance: &mut Box<dyn Instance>,
    tools: &mut BTreeMap<String, ToolRun>,
    name: &str,
    why: String,
) -> bool {
    let whole = run.backend.kind() != crate::model::RuntimeKind::Process;
    let tool = tools.get_mut(name).expect("a known tool");
    if run.plan.spec.restart.policy == RestartPolicy::No
        || tool.restarts >= run.plan.spec.restart.max_restarts
    {
        tool.state = ToolState::Unhealthy;
        tool.next_probe =
            Instant::now() + Duration::from_secs(run.plan.spec.health.interval_seconds as u64);
        run.tool(name, ToolState::Unhealthy, Some(why), None, tool.restarts);
        refresh_env_state(run, tools);
        return true;
    }
    let names = if whole {
        tools.keys().cloned().collect()
    } else {
        vec![name.to_string()]
    };
    restart(run, instance, tools, &names, whole, why).await
}

/// After tools ended: whether any still runs. Only then is the environment's state
/// refreshed; otherwise the environment is about to stop and ends `failed`, and a passing
/// `degraded` would tell waiters it had settled (a `run --wait` then read `stopping`).
fn refresh_if_running(run: &Run, tools: &BTreeMap<String, ToolRun>) -> bool {
    let running = tools.values().any(|t| is_running(t.state));
    if running {
        refresh_env_state(run, tools);
    }
    running
}

fn refresh_env_state(run: &Run, tools: &BTreeMap<String, ToolRun>) {
    let state = if tools.values().all(|t| t.state == ToolState::Ready) {
        EnvState::Running
    } else if tools.values().any(|t| {
        matches!(
            t.state,
            ToolState::Failed | ToolState::Unhealthy | ToolState::Exited
        )
    }) {
        EnvState::Degraded
    } else {
        EnvState::Starting
    };
    run.state(state, None);
}
