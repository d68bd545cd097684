//! The executing node's side: what it lends (`/cluster/offer`), how it would run a peer's
//! environment (`/cluster/fit`), and the runs it does for peers (`/cluster/runs`): fetching
//! the workspace, starting it within the lending limits, its state, stop, logs, terminal and
//! tools. Only trusted peers are answered, and each sees only its own runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use uuid::Uuid;

use aienv_actors::cluster::rank;
use aienv_actors::cluster::{LentRun, NodeOffer};
use aienv_actors::model::{is_slug, EnvironmentSpec};
use aienv_actors::peer_registry::TrustedPeer;
use aienv_actors::runtime_supervisor::{Amounts, Borrower, EnvStatus, ProxyTarget};
use aienv_actors::transfer_queue::{JobState, TransferKind, TransferRequest};
use aienv_actors::workspace_store::WorkspaceEntry;

use crate::api::{
    AllocationSummaryDto, AmountsDto, FitChunk, FitDto, FitRequest, OfferDto, PeerRunRequest,
    RemoteRunDto, RemoteToolDto, TransferBytesDto, MAX_FIT_CHUNKS,
};

use super::super::peers::trusted_caller;
use super::super::tool_proxy;
use super::super::{ApiError, AppState};

/// Runs accepted for peers whose environment has not started yet (the workspace is still
/// arriving) or failed before it could: keyed by peer, the peer's workspace id, environment.
#[derive(Default)]
pub struct Loans {
    phases: Mutex<HashMap<LoanKey, LoanPhase>>,
}

type LoanKey = (Uuid, Uuid, String);

#[derive(Debug, Clone)]
enum LoanPhase {
    Transferring(Uuid),
    Failed(String),
    Started,
}

/// Most runs remembered before they started (failures included); past it the oldest
/// failures go first.
const MAX_LOANS: usize = 4096;

impl Loans {
    fn set(&self, key: LoanKey, phase: LoanPhase) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        // A started run is the supervisor's to report.
        if matches!(phase, LoanPhase::Started) {
            phases.remove(&key);
            return;
        }
        if phases.len() >= MAX_LOANS && !phases.contains_key(&key) {
            let failed: Vec<LoanKey> = phases
                .iter()
                .filter(|(_, p)| matches!(p, LoanPhase::Failed(_)))
                .map(|(k, _)| k.clone())
                .take(phases.len() + 1 - MAX_LOANS)
                .collect();
            for old in failed {
                phases.remove(&old);
            }
        }
        phases.insert(key, phase);
    }

    fn get(&self, key: &LoanKey) -> Option<LoanPhase> {
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases.get(key).cloned()
    }
}

/// The trusted peer calling. Peers still see and stop their runs after `cluster.accept` was
/// turned off.
pub(super) fn known_peer(state: &AppState, request: &HttpRequest) -> Result<TrustedPeer, ApiError> {
    trusted_caller(state, request).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "peer-not-trusted",
            format!(
                "{} runs work only for peers it trusts, over mutual TLS; the caller is not trusted here",
                state.node.name
            ),
        )
    })
}

/// The trusted peer calling, when this node accepts work from trusted peers.
pub(super) fn lender_peer(
    state: &AppState,
    request: &HttpRequest,
) -> Result<TrustedPeer, ApiError> {
    let peer = known_peer(state, request)?;
    if !state.cluster.accept {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cluster-off",
            format!(
                "{} accepts no work from peers (cluster.accept: off)",
                state.node.name
            ),
        ));
    }
    Ok(peer)
}

/// What this node lends. A trusted peer sees the runs it asked for; a signed-in person here
/// sees every run lent.
pub(super) async fn offer(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: super::super::Caller,
) -> Result<HttpResponse, ApiError> {
    let asker = trusted_caller(&state, &request);
    if asker.is_none() && !caller.is_logged_in() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the offer is for trusted peers (mutual TLS) and this node's users",
        ));
    }
    Ok(HttpResponse::Ok().json(own_offer(&state, Some(&request)).await?))
}

/// This node's offer, as the caller of `request` may see it (`None`: this node's users).
pub(super) async fn own_offer(
    state: &AppState,
    request: Option<&HttpRequest>,
) -> Result<OfferDto, ApiError> {
    let asker = request.and_then(|r| trusted_caller(state, r));
    let viewers = request.map(|r| super::super::peers::peer_viewers(state, r));
    let store = state.store.view();
    let lending = state.runtimes.lending().await?;
    let runs = state
        .runtimes
        .view()
        .envs
        .iter()
        .filter(|s| s.state.is_active())
        .map(|s| {
            let for_asker = s
                .borrower
                .as_ref()
                .is_some_and(|b| asker.as_ref().is_some_and(|peer| peer.id == b.peer));
            let shared = store
                .find(&s.workspace_id.to_string())
                .is_some_and(|entry| {
                    viewers
                        .as_ref()
                        .is_none_or(|list| list.iter().any(|v| v.may_see(&entry.manifest)))
                });
            let visible = viewers.is_none() || for_asker || shared;
            LentRun {
                workspace: if visible {
                    s.workspace_name.clone()
                } else {
                    String::new()
                },
                environment: if visible {
                    s.environment.clone()
                } else {
                    String::new()
                },
                state: s.state.as_str().to_string(),
                lent_to: s.borrower.clone(),
                allocation: s.allocation.as_ref().map(Amounts::from),
            }
        })
        .collect();
    let offer = NodeOffer {
        accept: state.cluster.accept,
        host: Amounts {
            cpus: lending.host.cpu_cores as f64,
            memory: lending.host.memory_total,
            gpus: lending.host.gpus.len() as u32,
        },
        limits: lending.limits,
        lent: lending.lent,
        left: lending.left,
        load: lending.load,
        runs,
    };
    Ok(OfferDto::from_offer(
        &offer,
        state.node.id,
        &state.node.name,
    ))
}

/// A peer's environment as JSON, checked like a local `environment.yaml`.
fn peer_spec(value: &serde_json::Value, environment: &str) -> Result<EnvironmentSpec, ApiError> {
    let invalid =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", message);
    if !is_slug(environment) {
        return Err(invalid(format!(
            "environment: `{environment}` is not a valid environment name"
        )));
    }
    let spec: EnvironmentSpec = serde_json::from_value(value.clone())
        .map_err(|e| invalid(format!("spec: not an environment ({e})")))?;
    spec.validate().map_err(|e| invalid(format!("spec: {e}")))?;
    Ok(spec)
}

/// Disk a peer's workspace may not take: what is kept free for everything else.
const DISK_RESERVE: u64 = 1 << 30;

/// How this node would run the asking peer's environment now.
pub(super) async fn fit(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<FitRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer = lender_peer(&state, &request);
    let body = body.into_inner();
    let lending = state.runtimes.lending().await?;
    let refused = |refusal: String| FitDto {
        fits: false,
        refusal: Some(refusal),
        variant: None,
        allocation: AmountsDto::default(),
        preferred_met: false,
        load: lending.load,
        bytes_held: 0,
        notes: Vec::new(),
    };
    let peer = match peer {
        Ok(peer) => peer,
        // A refusal is an answer the ranking shows, not a failed call.
        Err(error) if error.code == "cluster-off" => {
            return Ok(HttpResponse::Ok().json(refused(error.message)))
        }
        Err(error) => return Err(error),
    };
    let spec = peer_spec(&body.spec, &body.environment)?;
    if body.chunks.len() > MAX_FIT_CHUNKS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-chunks",
            format!(
                "{} chunks listed; at most {MAX_FIT_CHUNKS}",
                body.chunks.len()
            ),
        ));
    }
    let listed_bytes: u64 = body.chunks.iter().map(|c| u64::from(c.size)).sum();
    if let Some(bytes) = body.workspace_bytes.filter(|bytes| *bytes < listed_bytes) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            format!(
                "workspace_bytes: {bytes} is less than the {listed_bytes} bytes of the listed chunks"
            ),
        ));
    }
    let mut hashes = Vec::with_capacity(body.chunks.len());
    for FitChunk { hash, size } in &body.chunks {
        let parsed = aienv_actors::snapshot::Hash::from_hex(hash).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                format!("chunks: `{hash}` is not a BLAKE3 hash in hex"),
            )
        })?;
        hashes.push((parsed, *size as u64));
    }
    let chunk_store = state.store.chunk_store();
    let bytes_held = web::block(move || {
        hashes
            .iter()
            .filter(|(hash, _)| chunk_store.holds(hash))
            .map(|(_, size)| size)
            .sum::<u64>()
    })
    .await
    .unwrap_or(0);
    // Disk: a clone writes the whole workspace (chunks held locally are copied, not
    // fetched); a sync of the clone already here writes what changed.
    let total = body.workspace_bytes.unwrap_or(listed_bytes);
    let held_clone = body
        .workspace_id
        .and_then(|id| local_clone(&state, peer.id, id))
        .is_some();
    let needed = if held_clone {
        total.saturating_sub(bytes_held)
    } else {
        total
    };
    let free = aienv_actors::resources::disk_free(&state.node.data_dir);
    let usable = free.saturating_sub(DISK_RESERVE);
    if needed > usable {
        return Ok(HttpResponse::Ok().json(FitDto {
            bytes_held,
            ..refused(format!(
                "needs {} of disk for the workspace; {} free here ({} kept free)",
                aienv_actors::runtime_supervisor::allocation::gib(needed),
                aienv_actors::runtime_supervisor::allocation::gib(free),
                aienv_actors::runtime_supervisor::allocation::gib(DISK_RESERVE)
            ))
        }));
    }
    let answer = match state
        .runtimes
        .fit_for_peer(&body.environment, spec.clone())
        .await?
    {
        Ok(allocation) => FitDto {
            fits: true,
            refusal: None,
            variant: allocation.variant.clone(),
            allocation: (&Amounts::from(&allocation)).into(),
            preferred_met: rank::meets_preferred(&spec, &allocation),
            load: lending.load,
            bytes_held,
            notes: allocation.notes.clone(),
        },
        Err(reason) => FitDto {
            bytes_held,
            ..refused(reason)
        },
    };
    Ok(HttpResponse::Ok().json(answer))
}

/// The clone of the peer's workspace `workspace` on this node, if there is one.
pub(super) fn local_clone(
    state: &AppState,
    peer: Uuid,
    workspace: Uuid,
) -> Option<Arc<WorkspaceEntry>> {
    state.store.view().iter().find_map(|entry| {
        entry
            .origin
            .as_ref()
            .filter(|o| o.peer_id == peer && o.workspace_id == workspace)
            .map(|_| entry.clone())
    })
}

/// The environment running here for `peer`, if any.
fn lent_env(
    state: &AppState,
    peer: Uuid,
    local: Uuid,
    environment: &str,
) -> Option<Arc<EnvStatus>> {
    state
        .runtimes
        .view()
        .find(local, environment)
        .filter(|s| s.borrower.as_ref().is_some_and(|b| b.peer == peer))
}

fn remote_run(status: &EnvStatus) -> RemoteRunDto {
    RemoteRunDto {
        state: status.state.as_str().to_string(),
        error: status.error.clone(),
        notes: status.notes.clone(),
        allocation: status.allocation.as_ref().map(|a| AllocationSummaryDto {
            variant: a.variant.clone(),
            amounts: (&Amounts::from(a)).into(),
        }),
        tools: status
            .tools
            .iter()
            .map(|t| RemoteToolDto {
                name: t.name.clone(),
                kind: t.kind.as_str().to_string(),
                state: t.state.as_str().to_string(),
                url: t.url.clone(),
            })
            .collect(),
        transfer: None,
        workspace: status.workspace_name.clone(),
    }
}

/// Fetches the asking peer's workspace (a clone, or a sync of the clone already here), then
/// runs the environment for it within the lending limits.
pub(super) async fn start_lent(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<PeerRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer = lender_peer(&state, &request)?;
    let body = body.into_inner();
    let spec = peer_spec(&body.spec, &body.environment)?;
    if !is_slug(&body.workspace_name) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            format!(
                "workspace_name: `{}` is not a valid workspace name",
                body.workspace_name
            ),
        ));
    }
    let local = local_clone(&state, peer.id, body.workspace_id);
    if let Some(local) = &local {
        if let Some(status) = lent_env(&state, peer.id, local.manifest.id, &body.environment)
            .filter(|s| s.state.is_active())
        {
            return Ok(HttpResponse::Ok().json(remote_run(&status)));
        }
    }
    if let Err(reason) = state.runtimes.fit_for_peer(&body.environment, spec).await? {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "does-not-fit",
            message: format!(
                "{} cannot run `{}` for {}: {reason}",
                state.node.name, body.environment, peer.name
            ),
            details: Some(serde_json::json!({"reason": reason})),
        });
    }
    let job = fetch_workspace(
        &state,
        &peer,
        local.as_deref(),
        body.workspace_id,
        &body.workspace_name,
        &body.user,
    )
    .await?;
    let key = (peer.id, body.workspace_id, body.environment.clone());
    state
        .loans
        .set(key.clone(), LoanPhase::Transferring(job.id));
    tracing::info!(peer = %peer.name, user = %body.user, workspace = %body.workspace_name, environment = %body.environment, transfer = %job.id, "accepted a run for a peer");
    let borrower = Borrower {
        peer: peer.id,
        peer_name: peer.name.clone(),
        user: body.user.clone(),
    };
    actix_web::rt::spawn(launch_after_transfer(state.clone(), key, job.id, borrower));
    Ok(HttpResponse::Accepted().json(RemoteRunDto {
        state: "transferring".into(),
        transfer: Some(TransferBytesDto {
            done: job.progress.bytes_done,
            total: job.progress.bytes_total,
        }),
        workspace: body.workspace_name,
        ..RemoteRunDto::default()
    }))
}

/// Queues the transfer that brings the asking peer's workspace here: a sync of the clone
/// already here (the peer's version wins over anything changed here), else a private clone
/// under its name, fetched as placed work.
pub(super) async fn fetch_workspace(
    state: &AppState,
    peer: &TrustedPeer,
    local: Option<&WorkspaceEntry>,
    workspace_id: Uuid,
    workspace_name: &str,
    user: &str,
) -> Result<Arc<aienv_actors::transfer_queue::JobInfo>, ApiError> {
    let (kind, transfer) = match local {
        Some(local) => (
            TransferKind::Sync,
            TransferRequest {
                peer: peer.id.to_string(),
                workspace: local.manifest.id.to_string(),
                by: format!("{user}@{}", peer.name),
                force: true,
                ..TransferRequest::default()
            },
        ),
        None => (
            TransferKind::Clone,
            TransferRequest {
                peer: peer.id.to_string(),
                workspace: workspace_id.to_string(),
                rename_to: Some(workspace_name.to_string()),
                private: true,
                by: format!("{user}@{}", peer.name),
                placed: true,
                force: false,
            },
        ),
    };
    Ok(state.transfers.enqueue(kind, transfer).await?)
}

/// Waits for the transfer `job`, then starts the environment for the peer.
async fn launch_after_transfer(
    state: web::Data<AppState>,
    key: LoanKey,
    job: Uuid,
    borrower: Borrower,
) {
    let mut view = state.transfers.subscribe();
    let finished = loop {
        let current = view.borrow().find(&job.to_string());
        match current {
            Some(info) if info.state.is_finished() => break Some(info),
            Some(_) => {}
            None => break None,
        }
        if view.changed().await.is_err() {
            return;
        }
    };
    let phase = match finished {
        Some(info) if info.state == JobState::Done => {
            let local = info
                .local_id
                .map(|id| id.to_string())
                .unwrap_or(info.target_name.clone());
            match state.runtimes.run_for_peer(&local, &key.2, borrower).await {
                Ok(_) => LoanPhase::Started,
                Err(error) => LoanPhase::Failed(error.to_string()),
            }
        }
        Some(info) => LoanPhase::Failed(format!(
            "the workspace did not arrive: {}",
            info.error.as_deref().unwrap_or(info.state.as_str())
        )),
        None => LoanPhase::Failed("the transfer was removed".into()),
    };
    if let LoanPhase::Failed(error) = &phase {
        tracing::warn!(peer = %key.0, environment = %key.2, %error, "a run for a peer failed before it started");
    }
    state.loans.set(key, phase);
}

/// The path of a peer's run: its workspace id and environment.
fn run_path(path: &(String, String)) -> Result<(Uuid, String), ApiError> {
    let workspace = path.0.parse::<Uuid>().map_err(|_| {
        ApiError::bad_request(
            "invalid-path",
            format!("`{}` is not a workspace id", path.0),
        )
    })?;
    Ok((workspace, path.1.clone()))
}

/// The clone of `peer`'s workspace here and its environment `environment` that runs (or
/// ran) for that peer; `run-not-found` for anything else.
fn lent_run(
    state: &AppState,
    peer: &TrustedPeer,
    workspace: Uuid,
    environment: &str,
) -> Result<(Arc<WorkspaceEntry>, Arc<EnvStatus>), ApiError> {
    let local =
        local_clone(state, peer.id, workspace).ok_or_else(|| run_not_found(state, environment))?;
    let status = lent_env(state, peer.id, local.manifest.id, environment)
        .ok_or_else(|| run_not_found(state, environment))?;
    Ok((local, status))
}

fn run_not_found(state: &AppState, environment: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "run-not-found",
        format!(
            "{} runs no environment `{environment}` of that workspace for you",
            state.node.name
        ),
    )
}

pub(super) async fn lent_status(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let key = (peer.id, workspace, environment.clone());
    match state.loans.get(&key) {
        Some(LoanPhase::Transferring(job)) => {
            let info = state.transfers.view().find(&job.to_string());
            let (done, total) = info
                .as_ref()
                .map_or((0, 0), |j| (j.progress.bytes_done, j.progress.bytes_total));
            return Ok(HttpResponse::Ok().json(RemoteRunDto {
                state: "transferring".into(),
                transfer: Some(TransferBytesDto { done, total }),
                workspace: info.map(|j| j.target_name.clone()).unwrap_or_default(),
                ..RemoteRunDto::default()
            }));
        }
        Some(LoanPhase::Failed(error)) => {
            return Ok(HttpResponse::Ok().json(RemoteRunDto {
                state: "failed".into(),
                error: Some(error),
                ..RemoteRunDto::default()
            }))
        }
        _ => {}
    }
    let (_, status) = lent_run(&state, &peer, workspace, &environment)?;
    Ok(HttpResponse::Ok().json(remote_run(&status)))
}

pub(super) async fn stop_lent(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let (local, _) = lent_run(&state, &peer, workspace, &environment)?;
    tracing::info!(peer = %peer.name, workspace = %local.manifest.name, %environment, "stop asked by the peer that placed it");
    state
        .runtimes
        .stop(
            Some(&local.manifest.id.to_string()),
            Some(&environment),
            Duration::from_secs(60),
        )
        .await?;
    let (_, status) = lent_run(&state, &peer, workspace, &environment)?;
    Ok(HttpResponse::Ok().json(remote_run(&status)))
}

pub(super) async fn lent_logs(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<super::super::runtimes::LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let (_, status) = lent_run(&state, &peer, workspace, &environment)?;
    let mut query = query.into_inner();
    query.environment = Some(environment);
    super::super::runtimes::serve_logs(&state, vec![status], &query)
}

/// A shell in an environment running here for the asking peer (WebSocket, as
/// `GET /workspaces/{ws}/terminal`).
pub(super) async fn lent_terminal(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<super::super::runtimes::TerminalQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let (local, status) = lent_run(&state, &peer, workspace, &environment)?;
    if !status.state.is_active() {
        return Err(run_not_found(&state, &environment));
    }
    let target = state
        .runtimes
        .terminal(&local.manifest.id.to_string(), Some(&environment))
        .await?;
    let ended = state.runtimes.run_ended(status.workspace_id, &environment);
    tracing::info!(peer = %peer.name, workspace = %local.manifest.name, %environment, "terminal opened for the peer that placed it");
    super::super::runtimes::serve_terminal(&state, target, Some(ended), &query, &request, body)
        .await
}

/// The tool of an environment running here for `peer` (`None`: not one of its runs).
pub(in crate::http) fn lent_tool(
    state: &AppState,
    peer: &TrustedPeer,
    workspace: &str,
    tool: &str,
) -> Option<Result<ProxyTarget, ApiError>> {
    let view = state.runtimes.view();
    view.envs.iter().find(|s| {
        s.workspace_name == workspace
            && s.state.is_active()
            && s.borrower.as_ref().is_some_and(|b| b.peer == peer.id)
            && s.tools.iter().any(|t| t.name == tool)
    })?;
    Some(
        tool_proxy::route(state, workspace, tool).and_then(|route| match route {
            tool_proxy::Route::Local(target) => Ok(target),
            tool_proxy::Route::Peer(_) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "tool-not-found",
                "that tool does not run here",
            )),
        }),
    )
}
