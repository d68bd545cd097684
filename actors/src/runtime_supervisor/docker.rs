//! The `docker` backend: one container per environment through bollard, against the local
//! engine with the API version negotiated (Debian's `docker.io` speaks an older API than
//! bollard's default). Limits become container limits, the workspace is bind-mounted, each
//! tool's port is published on loopback only, logs are streamed into the environment's log.
//! Containers carry labels naming the node, so a node that restarts removes its leftovers.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OnceCell};
use uuid::Uuid;

use crate::model::{RuntimeKind, SandboxMode};

use super::backend::{Backend, Exit, Instance, LaunchPlan, Launched};
use super::detect::shell_quote;
use super::logs;
use super::terminal::{TerminalInput, TerminalTarget};
use super::RuntimeError;

/// Label carrying the node id on every container aienv makes.
pub const NODE_LABEL: &str = "dev.aienv.node";
const SETUP_RECORD: &str = "setup.done";

/// The docker backend.
#[derive(Default)]
pub struct DockerBackend {
    client: OnceCell<Docker>,
}

fn unavailable(reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "docker",
        reason: format!(
            "no Docker engine answers at /var/run/docker.sock ({reason}); install one (Debian: `apt install docker.io`) and start it (`systemctl start docker`, or `dockerd &` without a service manager)"
        ),
    }
}

fn docker_error(error: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Docker(error.to_string())
}

/// Connects to the local engine and agrees on an API version.
pub async fn connect() -> Result<Docker, RuntimeError> {
    let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
    let docker = docker.negotiate_version().await.map_err(unavailable)?;
    docker.ping().await.map_err(unavailable)?;
    Ok(docker)
}

impl DockerBackend {
    async fn docker(&self) -> Result<Docker, RuntimeError> {
        self.client.get_or_try_init(connect).await.cloned()
    }

    /// Removes containers a previous run of this node left behind.
    pub async fn remove_leftovers(&self, node_id: Uuid) -> Result<usize, RuntimeError> {
        let docker = self.docker().await?;
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{NODE_LABEL}={node_id}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let leftovers = docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error)?;
        for container in &leftovers {
            if let Some(id) = &container.id {
                let _ = docker
                    .remove_container(
                        id,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            }
        }
        Ok(leftovers.len())
    }
}

fn container_name(plan: &LaunchPlan) -> String {
    format!(
        "aienv-{}-{}",
        &plan.workspace_id.simple().to_string()[..12],
        plan.environment
    )
}

fn image_of(plan: &LaunchPlan) -> Result<String, RuntimeError> {
    if let Some(image) = &plan.image {
        return Ok(image.clone());
    }
    match plan.spec.docker.as_ref().and_then(|d| d.build.as_ref()) {
        Some(_) => Ok(format!(
            "aienv/{}-{}:{}",
            &plan.workspace_id.simple().to_string()[..12],
            plan.environment,
            &plan.setup_hash[..12]
        )),
        None => Err(RuntimeError::Unsupported(format!(
            "environment `{}` names no docker image: set `docker.image` or `docker.build` in its environment.yaml",
            plan.environment
        ))),
    }
}

fn labels(plan: &LaunchPlan) -> HashMap<String, String> {
    HashMap::from([
        (NODE_LABEL.to_string(), plan.node_id.to_string()),
        (
            "dev.aienv.workspace".to_string(),
            plan.workspace_id.to_string(),
        ),
        (
            "dev.aienv.environment".to_string(),
            plan.environment.clone(),
        ),
    ])
}

fn workdir(plan: &LaunchPlan) -> String {
    plan.spec
        .docker
        .as_ref()
        .map_or("/workspace".into(), |d| d.workdir.clone())
}

fn binds(plan: &LaunchPlan) -> Vec<String> {
    let mut binds = vec![format!("{}:{}", plan.root.display(), workdir(plan))];
    for volume in &plan.spec.volumes {
        binds.push(format!(
            "{}:{}{}",
            plan.root.join(&volume.source).display(),
            volume.target,
            if volume.read_only { ":ro" } else { "" }
        ));
    }
    binds
}

fn env_list(plan: &LaunchPlan) -> Vec<String> {
    let mut env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("AIENV_WORKSPACE={}", plan.workspace_name));
    env.push(format!("AIENV_ENVIRONMENT={}", plan.environment));
    env.push(format!("AIENV_WORKSPACE_DIR={}", workdir(plan)));
    env
}

/// The container's command: the one tool directly, or a small `sh` script starting each
/// tool with its own `PORT` and `BASE_PATH`.
fn command(plan: &LaunchPlan) -> (Option<Vec<String>>, Vec<String>) {
    let tools: Vec<_> = plan.tools.iter().filter(|t| t.runs()).collect();
    let tool_env = |tool: &super::backend::ToolPlan| -> Vec<String> {
        tool.own_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    match tools.as_slice() {
        [] => {
            let command = plan
                .spec
                .docker
                .as_ref()
                .map(|d| d.command.clone())
                .filter(|c| !c.is_empty());
            (command, Vec::new())
        }
        [tool] if !tool.shell => (Some(tool.argv.clone()), tool_env(tool)),
        _ => {
            let mut script = String::new();
            for tool in &tools {
                script.push_str(&format!("{} &\n", tool.shell_line()));
            }
            script.push_str("wait -n 2>/dev/null || wait\n");
            (
                Some(vec!["/bin/sh".into(), "-c".into(), script]),
                Vec::new(),
            )
        }
    }
}

impl Backend for DockerBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        async move {
            let docker = self.docker().await?;
            let image = image_of(plan)?;
            let log_path = plan.setup_log();
            std::fs::create_dir_all(plan.log_dir())
                .map_err(|e| RuntimeError::io(format!("creating {}", plan.log_dir().display()), e))?;
            if docker.inspect_image(&image).await.is_err() {
                let Some(dockerfile) = plan.spec.docker.as_ref().and_then(|d| d.build.clone()) else {
                    return Err(RuntimeError::Docker(format!(
                        "image `{image}` is not on this host's engine and no registry may be reachable: load it (`docker load`, `docker import`) or give a `docker.build` Dockerfile"
                    )));
                };
                build_image(&docker, plan, &image, &dockerfile).await?;
            }
            let record = plan.state_dir.join(SETUP_RECORD);
            let steps: Vec<String> = plan
                .spec
                .scripts
                .unix
                .iter()
                .map(|script| format!("sh {}", shell_quote(script)))
                .chain(plan.spec.setup.iter().map(|s| s.run.clone()))
                .collect();
            if steps.is_empty()
                || std::fs::read_to_string(&record).is_ok_and(|d| d.trim() == plan.setup_hash)
            {
                return Ok(Vec::new());
            }
            // Set-up runs once in a throw-away container with the workspace mounted.
            logs::append(&log_path, &format!("== set-up in {image}\n"));
            let code = throwaway(
                &docker,
                plan,
                &image,
                &steps.join(" && "),
                &[],
                None,
                &log_path,
            )
            .await?;
            if code != Some(0) {
                return Err(RuntimeError::SetupFailed {
                    environment: plan.environment.clone(),
                    step: "set-up in the container".into(),
                    reason: format!(
                        "exit status {}",
                        code.map_or("unknown".into(), |c| c.to_string())
                    ),
                    log: log_path.display().to_string(),
                });
            }
            crate::fsio::write_atomic(&record, plan.setup_hash.as_bytes())?;
            Ok(Vec::new())
        }
        .boxed_local()
    }

    fn run_command<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        label: &'a str,
        command: &'a str,
        vars: &'a [(String, String)],
        log: &'a std::path::Path,
        timeout: std::time::Duration,
    ) -> LocalBoxFuture<'a, Result<super::hooks::Finished, RuntimeError>> {
        async move {
            // In a container of the environment's image, like its set-up.
            let docker = self.docker().await?;
            let image = image_of(plan)?;
            logs::append(log, &format!("== {label} in {image}: {command}\n"));
            let code = throwaway(&docker, plan, &image, command, vars, Some(timeout), log).await?;
            let finished = match code {
                Some(code) => super::hooks::Finished {
                    code: i32::try_from(code).ok(),
                    reason: format!("exit status {code}"),
                },
                None => super::hooks::Finished::timed_out(timeout),
            };
            logs::append(log, &format!("== {label}: {}\n", finished.reason));
            Ok(finished)
        }
        .boxed_local()
    }

    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        _progress: &'a dyn Fn(super::backend::Progress),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>> {
        async move {
            let docker = self.docker().await?;
            let image = image_of(plan)?;
            let name = container_name(plan);
            let _ = docker
                .remove_container(
                    &name,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
            let (cmd, tool_env) = command(plan);
            let mut env = env_list(plan);
            env.extend(tool_env);
            let mut ports: Vec<(u16, u16)> = plan
                .tools
                .iter()
                .filter(|t| t.runs())
                .map(|t| (t.port, t.port))
                .collect();
            for port in &plan.spec.ports {
                let host = match port.host {
                    Some(host) => host,
                    None => super::free_port()
                        .map_err(|e| RuntimeError::io("finding a free port", e))?,
                };
                ports.push((port.port, host));
            }
            let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = ports
                .iter()
                .map(|(inside, host)| {
                    (
                        format!("{inside}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(host.to_string()),
                        }]),
                    )
                })
                .collect();
            let allocation = &plan.allocation;
            let device_requests = (!allocation.gpus.is_empty()).then(|| {
                vec![DeviceRequest {
                    driver: Some("nvidia".into()),
                    device_ids: Some(allocation.gpus.iter().map(u32::to_string).collect()),
                    capabilities: Some(vec![vec!["gpu".into()]]),
                    ..DeviceRequest::default()
                }]
            });
            let body = ContainerCreateBody {
                image: Some(image),
                cmd,
                env: Some(env),
                working_dir: Some(workdir(plan)),
                labels: Some(labels(plan)),
                exposed_ports: Some(
                    ports
                        .iter()
                        .map(|(inside, _)| format!("{inside}/tcp"))
                        .collect(),
                ),
                tty: Some(false),
                user: container_user(plan),
                host_config: Some(HostConfig {
                    binds: Some(binds(plan)),
                    port_bindings: Some(port_bindings),
                    nano_cpus: allocation.cpus.map(|c| (c * 1e9) as i64),
                    cpuset_cpus: (!allocation.cpuset.is_empty()).then(|| {
                        allocation
                            .cpuset
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                    memory: allocation.memory.map(|m| m as i64),
                    device_requests,
                    // The supervisor restarts per the environment's policy.
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::NO),
                        maximum_retry_count: None,
                    }),
                    ..hardened(plan)
                }),
                ..ContainerCreateBody::default()
            };
            let created = docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                    body,
                )
                .await
                .map_err(|e| RuntimeError::StartFailed {
                    environment: plan.environment.clone(),
                    reason: format!("creating container {name}: {e}"),
                })?;
            docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| RuntimeError::StartFailed {
                    environment: plan.environment.clone(),
                    reason: format!("starting container {name}: {e}"),
                })?;
            let log_path = plan.log_dir().join("container.log");
            logs::rotate(&log_path);
            let (stop_logs, logs_stopped) = tokio::sync::oneshot::channel::<()>();
            {
                let docker = docker.clone();
                let id = created.id.clone();
                actix::spawn(async move {
                    tokio::select! {
                        _ = copy_logs(&docker, &id, &log_path, true) => {}
                        _ = logs_stopped => {}
                    }
                });
            }
            tracing::info!(container = %created.id, name = %name, "container started");
            Ok(Launched {
                instance: Box::new(DockerInstance {
                    docker,
                    id: created.id,
                    name,
                    workdir: workdir(plan),
                    _stop_logs: stop_logs,
                }),
                unavailable: Vec::new(),
                pids: Default::default(),
            })
        }
        .boxed_local()
    }
}

async fn build_image(
    docker: &Docker,
    plan: &LaunchPlan,
    image: &str,
    dockerfile: &str,
) -> Result<(), RuntimeError> {
    let path = plan.root.join(dockerfile);
    let context = path.parent().unwrap_or(&plan.root).to_path_buf();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "Dockerfile".into());
    let tarball = tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &context)?;
        builder.into_inner()
    })
    .await
    .map_err(|e| RuntimeError::Docker(e.to_string()))?
    .map_err(|e| RuntimeError::io(format!("packing the build context of {dockerfile}"), e))?;
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile(&file_name)
        .t(image)
        .rm(true)
        .build();
    let log_path = plan.setup_log();
    logs::append(
        &log_path,
        &format!("== building {image} from {dockerfile}\n"),
    );
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(tarball.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream {
                    logs::append(&log_path, &text);
                }
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::Docker(format!("building {image}: {error}")));
                }
            }
            Err(error) => return Err(RuntimeError::Docker(format!("building {image}: {error}"))),
        }
    }
    Ok(())
}

/// Waits for a container to end; its exit code.
async fn wait(docker: &Docker, id: &str) -> Option<i64> {
    let mut stream = docker.wait_container(id, None::<WaitContainerOptions>);
    match stream.next().await {
        Some(Ok(response)) => Some(response.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        _ => None,
    }
}

async fn copy_logs(docker: &Docker, id: &str, path: &std::path::Path, follow: bool) {
    let options = LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(id, Some(options));
    let Ok(file) = logs::open(path) else { return };
    let mut file = tokio::fs::File::from_std(file);
    while let Some(Ok(output)) = stream.next().await {
        let _ = file.write_all(&output.into_bytes()).await;
    }
}

struct DockerInstance {
    docker: Docker,
    id: String,
    name: String,
    workdir: String,
    _stop_logs: tokio::sync::oneshot::Sender<()>,
}

impl Instance for DockerInstance {
    fn describe(&self) -> String {
        format!(
            "container {} ({})",
            self.name,
            &self.id[..12.min(self.id.len())]
        )
    }

    fn terminal(&self) -> TerminalTarget {
        TerminalTarget::Container {
            id: self.id.clone(),
            workdir: self.workdir.clone(),
        }
    }

    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit> {
        async move {
            let code = wait(&self.docker, &self.id).await;
            Exit {
                tool: None,
                code,
                detail: match code {
                    Some(code) => format!("container exited with status {code}"),
                    None => "container is gone".into(),
                },
            }
        }
        .boxed_local()
    }

    fn restart<'a>(
        &'a mut self,
        _: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>> {
        async move {
            self.docker
                .restart_container(&self.id, None)
                .await
                .map_err(docker_error)?;
            Ok(None)
        }
        .boxed_local()
    }

    fn stop(self: Box<Self>, grace: Duration) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        async move {
            let options = StopContainerOptionsBuilder::default()
                .t(grace.as_secs().max(1) as i32)
                .build();
            let _ = self.docker.stop_container(&self.id, Some(options)).await;
            self.docker
                .remove_container(
                    &self.id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await
                .map_err(docker_error)?;
            tracing::info!(container = %self.id, "container removed");
            Ok(())
        }
        .boxed_local()
    }
}

/// Bridges a TTY `exec` of a shell in container `id` to the terminal channels.
pub async fn exec_terminal(
    id: &str,
    workdir: &str,
    cols: u16,
    rows: u16,
    mut input: mpsc::Receiver<TerminalInput>,
    output: mpsc::Sender<Vec<u8>>,
) -> Result<(), RuntimeError> {
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    let docker = connect().await?;
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(true),
                env: Some(vec!["TERM=xterm-256color"]),
                working_dir: Some(workdir),
                cmd: Some(vec![
                    "/bin/sh",
                    "-c",
                    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
                ]),
                ..CreateExecOptions::default()
            },
        )
        .await
        .map_err(docker_error)?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: true,
                output_capacity: None,
            }),
        )
        .await
        .map_err(docker_error)?;
    let StartExecResults::Attached {
        output: mut exec_output,
        input: mut exec_input,
    } = started
    else {
        return Err(RuntimeError::Docker("exec did not attach".into()));
    };
    let resize = |cols: u16, rows: u16| bollard::query_parameters::ResizeExecOptions {
        h: rows.clamp(1, 1000) as i32,
        w: cols.clamp(1, 1000) as i32,
    };
    let _ = docker.resize_exec(&exec.id, resize(cols, rows)).await;
    let exec_id = exec.id.clone();
    actix::spawn(async move {
        loop {
            tokio::select! {
                item = exec_output.next() => match item {
                    Some(Ok(chunk)) => {
                        if output.send(chunk.into_bytes().to_vec()).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
                message = input.recv() => match message {
                    Some(TerminalInput::Data(bytes)) => {
                        if exec_input.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(TerminalInput::Resize { cols, rows }) => {
                        let _ = docker.resize_exec(&exec_id, resize(cols, rows)).await;
                    }
                    None => break,
                },
            }
        }
        // Closing the socket ends the shell: signal the exec's process (a host pid).
        if let Ok(inspect) = docker.inspect_exec(&exec_id).await {
            if let (Some(true), Some(pid)) = (inspect.running, inspect.pid) {
                // SAFETY: signals to the exec's process on this host.
                unsafe {
                    libc::kill(pid as i32, libc::SIGHUP);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if docker
                    .inspect_exec(&exec_id)
                    .await
                    .is_ok_and(|i| i.running == Some(true))
                {
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
        }
    });
    Ok(())
}

/// Never privileged; unless the environment says `sandbox: off`, every capability dropped
/// but the few a root-started image needs to set itself up and serve (owning and reading
/// its files, changing user, binding low ports), and `no-new-privileges`. `strict` keeps
/// none of them and runs as the node's unprivileged run-as user.
fn hardened(plan: &LaunchPlan) -> HostConfig {
    let mode = plan.sandbox.mode;
    if mode == SandboxMode::Off {
        return HostConfig {
            privileged: Some(false),
            ..HostConfig::default()
        };
    }
    let kept: &[&str] = match mode {
        SandboxMode::Strict => &[],
        _ => &[
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "SETGID",
            "SETUID",
            "KILL",
            "NET_BIND_SERVICE",
        ],
    };
    HostConfig {
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(kept.iter().map(|c| c.to_string()).collect()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        ..HostConfig::default()
    }
}

/// `strict` containers run as the run-as user (or nobody when the node is not root).
fn container_user(plan: &LaunchPlan) -> Option<String> {
    (plan.sandbox.mode == SandboxMode::Strict).then(|| match &plan.sandbox.run_as {
        Some(user) => format!("{}:{}", user.uid, user.gid),
        None => "65534:65534".into(),
    })
}

/// Runs `script` with `/bin/sh -c` in a throw-away container of `image` with the workspace
/// mounted, its output appended to the set-up log; returns its exit code (`None`: it ran
/// past `timeout` and was removed).
async fn throwaway(
    docker: &Docker,
    plan: &LaunchPlan,
    image: &str,
    script: &str,
    extra_env: &[(String, String)],
    timeout: Option<std::time::Duration>,
    log: &std::path::Path,
) -> Result<Option<i64>, RuntimeError> {
    let mut env = env_list(plan);
    env.extend(extra_env.iter().map(|(k, v)| format!("{k}={v}")));
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), script.to_string()]),
        env: Some(env),
        working_dir: Some(workdir(plan)),
        labels: Some(labels(plan)),
        user: container_user(plan),
        host_config: Some(HostConfig {
            binds: Some(binds(plan)),
            ..hardened(plan)
        }),
        ..ContainerCreateBody::default()
    };
    let created = docker
        .create_container(None, body)
        .await
        .map_err(docker_error)?;
    let result = async {
        docker
            .start_container(&created.id, None)
            .await
            .map_err(docker_error)?;
        let code = match timeout {
            Some(limit) => tokio::time::timeout(limit, wait(docker, &created.id))
                .await
                .ok()
                .flatten(),
            None => wait(docker, &created.id).await,
        };
        copy_logs(docker, &created.id, log, false).await;
        Ok(code)
    }
    .await;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    result
}
