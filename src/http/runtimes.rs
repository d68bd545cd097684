//! Running environments: `POST /workspaces/{ws}/run`, `/stop`, `GET /status`, `/logs`,
//! `GET /runtimes`, the environment proposal (`POST /workspaces/{ws}/detect`) and the
//! terminal WebSocket (`GET /workspaces/{ws}/terminal`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use aienv_actors::model::RuntimeKind;
use aienv_actors::runtime_supervisor::{self, terminal, TerminalInput};

use crate::api::{
    DetectionDto, EnvironmentStatusDto, RunRequest, SlurmPartitionDto, SlurmPartitionsDto,
    StopRequest,
};

use crate::access::Action;

use super::permissions::authorize;
use super::{ApiError, AppState, Login};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/workspaces/{ws}/run", web::post().to(run))
        .route("/workspaces/{ws}/stop", web::post().to(stop))
        .route("/workspaces/{ws}/status", web::get().to(status))
        .route("/workspaces/{ws}/logs", web::get().to(logs))
        .route("/workspaces/{ws}/detect", web::post().to(detect))
        .route("/workspaces/{ws}/terminal", web::get().to(terminal))
        .route(
            "/workspaces/{ws}/tools/{tool}/ticket",
            web::post().to(tool_ticket),
        )
        .route("/runtimes", web::get().to(all))
        .route("/slurm/partitions", web::get().to(slurm_partitions));
}

/// The lab's Slurm partitions with what is free in them. slurmrestd's failures are reported
/// in the body: the node itself is fine.
async fn slurm_partitions(state: web::Data<AppState>, _: Login) -> Result<HttpResponse, ApiError> {
    let body = match state.runtimes.slurm_partitions().await {
        Ok(None) => SlurmPartitionsDto {
            configured: false,
            partitions: Vec::new(),
            error: None,
        },
        Ok(Some(partitions)) => SlurmPartitionsDto {
            configured: true,
            partitions: partitions.iter().map(SlurmPartitionDto::from).collect(),
            error: None,
        },
        Err(error) => SlurmPartitionsDto {
            configured: true,
            partitions: Vec::new(),
            error: Some(error.to_string()),
        },
    };
    Ok(HttpResponse::Ok().json(body))
}

/// The environments as JSON; one placed on a peer carries its placement, and the peer's
/// state and tools stand in for the local (stopped) ones.
fn environments(
    state: &AppState,
    list: &[std::sync::Arc<runtime_supervisor::EnvStatus>],
) -> serde_json::Value {
    let placements = state.placements.view();
    json!({
        "environments": list.iter().map(|s| {
            let mut dto = EnvironmentStatusDto::from(&**s);
            if let Some(placement) = placements.find(s.workspace_id, Some(&s.environment)) {
                if !s.state.is_active() {
                    dto.state = placement.state().to_string();
                    if let Some(remote) = &placement.remote {
                        dto.tools = remote.tools.iter().map(|t| crate::api::ToolDto {
                            name: t.name.clone(),
                            kind: t.kind.clone(),
                            state: t.state.clone(),
                            url: t.url.clone(),
                            pid: None,
                            restarts: 0,
                            detail: None,
                            ready_at: None,
                        }).collect();
                        dto.error = remote.error.clone().or(placement.error.clone());
                    }
                }
                dto.placement = Some(crate::api::PlacementDto::from(&**placement));
            }
            dto
        }).collect::<Vec<_>>()
    })
}

async fn run(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: Option<web::Json<RunRequest>>,
) -> Result<HttpResponse, ApiError> {
    let request = body.map(web::Json::into_inner).unwrap_or_default();
    let backend = match request.backend.as_deref() {
        None => None,
        Some(name) => Some(RuntimeKind::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                format!("backend: `{name}` is not one of process, docker, libvirt, slurm, auto, nor a runtime plugin's name (lower-case letters, digits, hyphens)"),
            )
        })?),
    };
    authorize(&state, &login.0, &path, Action::Use).await?;
    if let Some(on) = request.on.as_deref() {
        if backend.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                "`backend` and `on` exclude each other: the peer picks its backend from the environment",
            ));
        }
        return super::cluster::place(&state, &login, &path, request.environment.as_deref(), on)
            .await;
    }
    let entry = state.store.get(&path)?;
    if let Some(placed) = state
        .placements
        .view()
        .find(entry.manifest.id, request.environment.as_deref())
        .filter(|p| p.active())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "placed-on-peer",
            format!(
                "`{}/{}` runs on {} ({}); stop it there first (`aienv stop {}`)",
                placed.record.workspace_name,
                placed.record.environment,
                placed.record.peer_name,
                placed.state(),
                placed.record.workspace_name
            ),
        ));
    }
    tracing::info!(user = login.name(), workspace = %path, environment = ?request.environment, "run");
    let started = state
        .runtimes
        .run(&path, request.environment.as_deref(), backend)
        .await?;
    let started = if request.wait {
        let keys: Vec<_> = started
            .iter()
            .map(|s| (s.workspace_id, s.environment.clone()))
            .collect();
        let timeout = Duration::from_secs(request.timeout_seconds.unwrap_or(600).min(3600));
        state.runtimes.wait_settled(&keys, timeout).await
    } else {
        started
    };
    Ok(HttpResponse::Ok().json(environments(&state, &started)))
}

async fn stop(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: Option<web::Json<StopRequest>>,
) -> Result<HttpResponse, ApiError> {
    let request = body.map(web::Json::into_inner).unwrap_or_default();
    authorize(&state, &login.0, &path, Action::Use).await?;
    tracing::info!(user = login.name(), workspace = %path, environment = ?request.environment, "stop");
    let entry = state.store.get(&path)?;
    for note in
        super::cluster::stop_placed(&state, entry.manifest.id, request.environment.as_deref()).await
    {
        tracing::info!(workspace = %path, "{note}");
    }
    state
        .runtimes
        .stop(
            Some(&path),
            request.environment.as_deref(),
            Duration::from_secs(120),
        )
        .await?;
    let statuses = state.runtimes.status(&path)?;
    Ok(HttpResponse::Ok().json(environments(&state, &statuses)))
}

async fn status(
    state: web::Data<AppState>,
    _: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(environments(&state, &state.runtimes.status(&path)?)))
}

/// Every environment, and the runtime plugins on this host with their health (each asked
/// `check` now).
async fn all(state: web::Data<AppState>, _: Login) -> Result<HttpResponse, ApiError> {
    let mut body = environments(&state, &state.runtimes.view().envs);
    let plugins: Vec<crate::api::PluginDto> = state
        .runtimes
        .plugins()
        .await
        .iter()
        .map(crate::api::PluginDto::from)
        .collect();
    body["plugins"] = serde_json::to_value(plugins).expect("DTOs encode");
    Ok(HttpResponse::Ok().json(body))
}

async fn detect(
    state: web::Data<AppState>,
    _: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let detection = state.runtimes.detect(&path).await?;
    let yaml = serde_saphyr::to_string(&detection.spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            e.to_string(),
        )
    })?;
    Ok(HttpResponse::Ok().json(DetectionDto {
        yaml,
        findings: detection.findings,
    }))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    pub environment: Option<String>,
    pub tool: Option<String>,
    #[serde(default)]
    pub follow: bool,
    pub tail: Option<usize>,
}

/// `GET /workspaces/{ws}/logs`: the last lines of each log (set-up, tools, container),
/// each line prefixed `[environment/log]`, then, with `follow=true`, new lines as they come.
async fn logs(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    query: web::Query<LogsQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // Logs carry what tools print (URLs with their tokens among them).
    authorize(&state, &login.0, &path, Action::Use).await?;
    let entry = state.store.get(&path)?;
    let placed = state
        .placements
        .view()
        .find(entry.manifest.id, query.environment.as_deref())
        .cloned();
    if let Some(placement) = placed {
        return super::cluster::placed_logs(&state, &placement, request.query_string()).await;
    }
    let statuses = state.runtimes.status(&path)?;
    serve_logs(&state, statuses, &query)
}

/// The logs of `statuses` (set-up, tools, container), as `GET /workspaces/{ws}/logs` serves
/// them; also what a peer that placed an environment here reads.
pub(super) fn serve_logs(
    state: &AppState,
    statuses: Vec<std::sync::Arc<runtime_supervisor::EnvStatus>>,
    query: &LogsQuery,
) -> Result<HttpResponse, ApiError> {
    let path = statuses
        .first()
        .map(|s| s.workspace_name.clone())
        .unwrap_or_default();
    if let Some(name) = &query.environment {
        if !statuses.iter().any(|s| &s.environment == name) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "environment-not-found",
                format!("workspace `{path}` has no environment `{name}`"),
            ));
        }
    }
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for status in statuses.iter().filter(|s| {
        query
            .environment
            .as_ref()
            .is_none_or(|e| *e == s.environment)
    }) {
        for (label, file) in runtime_supervisor::log_files(status) {
            if query.tool.as_ref().is_none_or(|t| *t == label) {
                files.insert(format!("{}/{label}", status.environment), file);
            }
        }
    }
    let tail = query.tail.unwrap_or(200).min(100_000);
    let mut first = String::new();
    let mut offsets = Vec::new();
    for (label, file) in &files {
        let (text, end) = tail_lines(file, tail);
        for line in text.lines() {
            first.push_str(&format!("[{label}] {line}\n"));
        }
        offsets.push((label.clone(), file.clone(), end));
    }
    let response = HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .take();
    if !query.follow {
        let mut response = response;
        return Ok(response.body(first));
    }
    let shutdown = state.shutdown.clone();
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::Error>(Bytes::from(first)) })
            .chain(futures_util::stream::unfold(
                (offsets, BTreeMap::<String, String>::new()),
                move |(mut offsets, mut partial)| {
                    let shutdown = shutdown.clone();
                    async move {
                        loop {
                            let mut out = String::new();
                            for (label, file, offset) in &mut offsets {
                                let (text, end) = read_from(file, *offset);
                                *offset = end;
                                if text.is_empty() {
                                    continue;
                                }
                                let pending = partial.entry(label.clone()).or_default();
                                pending.push_str(&text);
                                while let Some(newline) = pending.find('\n') {
                                    let line: String = pending.drain(..=newline).collect();
                                    out.push_str(&format!("[{label}] {line}"));
                                }
                            }
                            if !out.is_empty() {
                                return Some((Ok(Bytes::from(out)), (offsets, partial)));
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                                _ = shutdown.wait() => return None,
                            }
                        }
                    }
                },
            ));
    let mut response = response;
    Ok(response.streaming(stream))
}

/// The last `lines` lines of `file` (reading at most 4 MiB) and the file's length.
fn tail_lines(file: &PathBuf, lines: usize) -> (String, u64) {
    let Ok(mut handle) = std::fs::File::open(file) else {
        return (String::new(), 0);
    };
    let length = handle.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(4 << 20);
    let mut bytes = Vec::new();
    if handle.seek(SeekFrom::Start(start)).is_err() || handle.read_to_end(&mut bytes).is_err() {
        return (String::new(), length);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    (out, start + bytes.len() as u64)
}

/// What was appended to `file` since `offset` (a rotated log starts over).
fn read_from(file: &PathBuf, offset: u64) -> (String, u64) {
    let Ok(mut handle) = std::fs::File::open(file) else {
        return (String::new(), offset);
    };
    let length = handle.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = if length < offset { 0 } else { offset };
    let mut bytes = Vec::new();
    if handle.seek(SeekFrom::Start(offset)).is_err()
        || handle
            .by_ref()
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .is_err()
    {
        return (String::new(), offset);
    }
    (
        String::from_utf8_lossy(&bytes).to_string(),
        offset + bytes.len() as u64,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TerminalQuery {
    pub environment: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// Messages a terminal client sends as text; binary frames are keystrokes.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

/// `POST /workspaces/{ws}/tools/{tool}/ticket`: a link that signs the caller into the tool's
/// own origin, once, within a minute.
async fn tool_ticket(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<(String, String)>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (workspace, tool) = path.into_inner();
    authorize(&state, &login.0, &workspace, Action::Use).await?;
    let target = super::tool_proxy::route(&state, &workspace, &tool)?;
    let key = super::tool_tickets::ToolKey { workspace, tool };
    let ports = state.tool_origins.ensure(&state, &key)?;
    tracing::info!(user = login.name(), workspace = %key.workspace, tool = %key.tool, "tool ticket");
    let ticket = state
        .tool_tickets
        .issue(login.0, key, target.base_path().to_string());
    Ok(HttpResponse::Ok().json(crate::api::SignInLinkDto {
        url: super::tool_origin::ToolOrigins::sign_in_url(&request, ports, &ticket),
        expires_in_seconds: super::tool_tickets::TICKET_TTL.as_secs(),
    }))
}

/// `GET /workspaces/{ws}/terminal`: a WebSocket bridged to the environment's terminal.
/// Output goes out as binary frames; the socket closes when the shell exits, and the shell
/// ends when the socket closes.
async fn terminal(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    query: web::Query<TerminalQuery>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    super::extract::check_origin(&state, &request, "open this node's terminal")?;
    authorize(&state, &login.0, &path, Action::Use).await?;
    let entry = state.store.get(&path)?;
    let placed = state
        .placements
        .view()
        .find(entry.manifest.id, query.environment.as_deref())
        .cloned();
    if let Some(placement) = placed {
        tracing::info!(user = login.name(), workspace = %path, peer = %placement.record.peer_name, "terminal relayed to the peer");
        return super::cluster::placed_terminal(&state, &placement, &request, body).await;
    }
    let target = state
        .runtimes
        .terminal(&path, query.environment.as_deref())
        .await?;
    // The shell lives as long as the environment's run: Stop ends it.
    let ended = state
        .runtimes
        .status(&path)?
        .iter()
        .find(|s| {
            s.state.is_active()
                && query
                    .environment
                    .as_ref()
                    .is_none_or(|name| *name == s.environment)
        })
        .map(|s| state.runtimes.run_ended(s.workspace_id, &s.environment));
    tracing::info!(user = login.name(), workspace = %path, "terminal opened");
    serve_terminal(&state, target, ended, &query, &request, body).await
}

/// Opens a shell at `target` and serves it over the WebSocket `request` asks for, until
/// the client leaves, the shell exits, or `ended` (the environment's run) resolves.
pub(super) async fn serve_terminal(
    state: &AppState,
    target: runtime_supervisor::TerminalTarget,
    ended: Option<impl std::future::Future<Output = ()> + 'static>,
    query: &TerminalQuery,
    request: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let opened = terminal::open(target, query.cols.unwrap_or(80), query.rows.unwrap_or(24)).await?;
    let (response, mut session, incoming) = actix_ws::handle(request, body)
        .map_err(|e| ApiError::bad_request("not-a-websocket", e.to_string()))?;
    let mut incoming = incoming.max_frame_size(1 << 20).aggregate_continuations();
    let shutdown = state.shutdown.clone();
    actix_web::rt::spawn(async move {
        let terminal::Terminal { input, mut output } = opened;
        let ended = async move {
            match ended {
                Some(ended) => ended.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        let reason = loop {
            tokio::select! {
                _ = &mut ended => break Some("the environment stopped"),
                chunk = output.recv() => match chunk {
                    Some(bytes) => {
                        if session.binary(bytes).await.is_err() {
                            break None;
                        }
                    }
                    None => break Some("the shell exited"),
                },
                message = incoming.next() => match message {
                    Some(Ok(actix_ws::AggregatedMessage::Binary(bytes))) => {
                        if input.send(TerminalInput::Data(bytes.to_vec())).await.is_err() {
                            break Some("the shell exited");
                        }
                    }
                    Some(Ok(actix_ws::AggregatedMessage::Text(text))) => {
                        let message = match serde_json::from_str::<ClientMessage>(&text) {
                            Ok(ClientMessage::Input { data }) => TerminalInput::Data(data.into_bytes()),
                            Ok(ClientMessage::Resize { cols, rows }) => TerminalInput::Resize { cols, rows },
                            // Plain text is keystrokes too (handy for simple clients).
                            Err(_) => TerminalInput::Data(text.as_bytes().to_vec()),
                        };
                        if input.send(message).await.is_err() {
                            break Some("the shell exited");
                        }
                    }
                    Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(actix_ws::AggregatedMessage::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => {}
                },
                _ = shutdown.wait() => break Some("node shutting down"),
            }
        };
        // Dropping the input ends the shell and everything it started.
        drop(input);
        let _ = session
            .close(Some(actix_ws::CloseReason {
                code: actix_ws::CloseCode::Normal,
                description: reason.map(str::to_string),
            }))
            .await;
        tracing::info!("terminal closed");
    });
    Ok(response)
}
