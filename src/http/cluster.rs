//! The lab cluster over HTTP, both sides. Spec: `schemas/cluster.md`.
//!
//! Executing node (called by trusted peers over mutual TLS, and only when `cluster.accept`
//! is `trusted`): `GET /cluster/offer` (what it lends), `POST /cluster/fit` (how it would run
//! an environment), `POST /cluster/runs` (fetch the peer's workspace, then run it within the
//! lending limits), `GET /cluster/runs/{ws}/{env}` (its state), `POST …/stop`, `GET …/logs`;
//! tools are relayed through `/w/…` (see `tool_proxy`). A peer sees and stops only the runs
//! it asked for.
//!
//! Requesting node (a signed-in person): `GET /workspaces/{ws}/placement` ranks every
//! trusted online peer; `POST /workspaces/{ws}/run` with `on` places the environment;
//! `GET /placements` lists where this node's environments run. Status, stop, logs and tools
//! of a placed environment go to the peer through this node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use aienv_actors::cluster::rank::{self, Candidate, Offer};
use aienv_actors::cluster::PlacementRecord;
use aienv_actors::model::{is_slug, EnvironmentSpec};
use aienv_actors::peer_registry::{PeerEndpoint, PeerState, TrustedPeer};
use aienv_actors::runtime_supervisor::{Borrower, EnvStatus, ProxyTarget};
use aienv_actors::transfer_queue::{JobState, TransferKind, TransferRequest};
use aienv_actors::workspace_store::WorkspaceEntry;

use crate::api::{
    AllocationSummaryDto, AmountsDto, BorrowerDto, ClusterDto, ClusterNodeDto, FitChunk, FitDto,
    FitRequest, LendLimitsDto, LentRunDto, OfferDto, PeerRunRequest, PlacedDto, PlacementDto,
    RankingDto, RemoteRunDto, RemoteToolDto, TransferBytesDto, MAX_FIT_BYTES, MAX_FIT_CHUNKS,
};
use crate::cluster_client::{self, CallError};

use super::peers::trusted_caller;
use super::tool_proxy::{self, HOP_BY_HOP};
use super::tool_tickets::ToolKey;
use super::{ApiError, AppState, Login};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster/offer", web::get().to(offer))
        .service(
            web::resource("/cluster/fit")
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_FIT_BYTES)
                        .error_handler(|error, _| super::json_error(error).into()),
                )
                .route(web::post().to(fit)),
        )
        .route("/cluster/runs", web::post().to(start_lent))
        .route("/cluster/runs/{ws}/{env}", web::get().to(lent_status))
        .route("/cluster/runs/{ws}/{env}/stop", web::post().to(stop_lent))
        .route("/cluster/runs/{ws}/{env}/logs", web::get().to(lent_logs))
        .route(
            "/cluster/runs/{ws}/{env}/terminal",
            web::get().to(lent_terminal),
        )
        .route("/workspaces/{ws}/placement", web::get().to(placement))
        .route("/placements", web::get().to(placements))
        .route("/cluster", web::get().to(cluster));
}

/// Whether trusted peers may place work here (`cluster.accept`).
#[derive(Debug, Clone, Copy)]
pub struct ClusterPolicy {
    /// `cluster.accept: trusted`.
    pub accept: bool,
}

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

impl Loans {
    fn set(&self, key: LoanKey, phase: LoanPhase) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by what peers asked: a started run is the supervisor's to report.
        if matches!(phase, LoanPhase::Started) {
            phases.remove(&key);
        } else {
            phases.insert(key, phase);
        }
    }

    fn get(&self, key: &LoanKey) -> Option<LoanPhase> {
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases.get(key).cloned()
    }
}

// ---------------------------------------------------------------------------------------
// Executing node.

/// The trusted peer calling. Peers still see and stop their runs after `cluster.accept` was
/// turned off.
fn known_peer(state: &AppState, request: &HttpRequest) -> Result<TrustedPeer, ApiError> {
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
fn lender_peer(state: &AppState, request: &HttpRequest) -> Result<TrustedPeer, ApiError> {
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

fn amounts(allocation: &aienv_actors::runtime_supervisor::Allocation) -> AmountsDto {
    AmountsDto {
        cpus: allocation.cpus.unwrap_or(0.0),
        memory_bytes: allocation.memory.unwrap_or(0),
        gpus: allocation.gpus.len() as u32,
    }
}

fn lent_amounts(lent: &aienv_actors::runtime_supervisor::Lent) -> AmountsDto {
    AmountsDto {
        cpus: lent.cpus,
        memory_bytes: lent.memory,
        gpus: lent.gpus,
    }
}

/// What this node lends. A trusted peer sees the runs it asked for; a signed-in person here
/// sees every run lent.
async fn offer(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: super::Caller,
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
async fn own_offer(state: &AppState, request: Option<&HttpRequest>) -> Result<OfferDto, ApiError> {
    let asker = request.and_then(|r| trusted_caller(state, r));
    let viewers = request.map(|r| super::peers::peer_viewers(state, r));
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
            LentRunDto {
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
                lent_to: s.borrower.as_ref().map(borrower_dto),
                allocation: s.allocation.as_ref().map(amounts),
            }
        })
        .collect();
    Ok(OfferDto {
        node_id: state.node.id,
        name: state.node.name.clone(),
        accept: if state.cluster.accept {
            "trusted"
        } else {
            "off"
        }
        .into(),
        host: AmountsDto {
            cpus: lending.host.cpu_cores as f64,
            memory_bytes: lending.host.memory_total,
            gpus: lending.host.gpus.len() as u32,
        },
        limits: LendLimitsDto {
            cpus: lending.limits.cpus,
            memory_bytes: lending.limits.memory,
            gpus: lending.limits.gpus,
        },
        lent: lent_amounts(&lending.lent),
        left: lent_amounts(&lending.left),
        load: lending.load,
        runs,
    })
}

/// The cluster view: this node and every trusted peer with its offer, as asked lately (the
/// Placements actor asks them while someone watches; this call starts or renews that).
async fn cluster(state: web::Data<AppState>, _: Login) -> Result<HttpResponse, ApiError> {
    let view = state.placements.cluster();
    let peers = state.peers.view();
    let mut nodes = vec![ClusterNodeDto {
        node_id: state.node.id,
        name: state.node.name.clone(),
        state: "this node".into(),
        offer: Some(own_offer(&state, None).await?),
        error: None,
    }];
    let mut others: Vec<ClusterNodeDto> = peers
        .trusted
        .iter()
        .map(|trusted| {
            let seen = peers.peers.iter().find(|p| p.id == trusted.id);
            let asked = view.offers.iter().find(|(id, _)| *id == trusted.id);
            ClusterNodeDto {
                node_id: trusted.id,
                name: seen.map_or(trusted.name.clone(), |p| p.name.clone()),
                state: seen.map_or("unseen", |p| p.state_name()).to_string(),
                offer: asked
                    .and_then(|(_, a)| a.as_ref().ok())
                    .map(|o| offer_dto(o, trusted.id, &trusted.name)),
                error: asked.and_then(|(_, a)| a.as_ref().err().cloned()),
            }
        })
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.extend(others);
    Ok(HttpResponse::Ok().json(ClusterDto {
        nodes,
        asked_at: view.asked_at,
    }))
}

/// A peer's offer as the actor keeps it, back in the API's shape.
pub(super) fn offer_dto(
    offer: &aienv_actors::cluster::NodeOffer,
    id: Uuid,
    name: &str,
) -> OfferDto {
    let amounts = |a: &aienv_actors::cluster::Amounts| AmountsDto {
        cpus: a.cpus,
        memory_bytes: a.memory,
        gpus: a.gpus,
    };
    OfferDto {
        node_id: id,
        name: name.to_string(),
        accept: if offer.accept { "trusted" } else { "off" }.into(),
        host: amounts(&offer.host),
        limits: LendLimitsDto {
            cpus: offer.limits.cpus,
            memory_bytes: offer.limits.memory,
            gpus: offer.limits.gpus,
        },
        lent: amounts(&offer.lent),
        left: amounts(&offer.left),
        load: offer.load,
        runs: offer
            .runs
            .iter()
            .map(|r| LentRunDto {
                workspace: r.workspace.clone(),
                environment: r.environment.clone(),
                state: r.state.clone(),
                lent_to: r.peer.as_ref().map(|(peer_id, peer_name)| BorrowerDto {
                    peer_id: *peer_id,
                    peer_name: peer_name.clone(),
                    user: r.user.clone(),
                }),
                allocation: r.allocation.as_ref().map(amounts),
            })
            .collect(),
    }
}

fn borrower_dto(borrower: &Borrower) -> BorrowerDto {
    BorrowerDto {
        peer_id: borrower.peer,
        peer_name: borrower.peer_name.clone(),
        user: borrower.user.clone(),
    }
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

/// How this node would run the asking peer's environment now.
async fn fit(
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
    if let Err(error) = peer {
        // A refusal is an answer the ranking shows, not a failed call.
        return if error.code == "cluster-off" {
            Ok(HttpResponse::Ok().json(refused(error.message)))
        } else {
            Err(error)
        };
    }
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
    let answer = match state
        .runtimes
        .fit_for_peer(&body.environment, spec.clone())
        .await?
    {
        Ok(allocation) => FitDto {
            fits: true,
            refusal: None,
            variant: allocation.variant.clone(),
            allocation: amounts(&allocation),
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
fn local_clone(state: &AppState, peer: Uuid, workspace: Uuid) -> Option<Arc<WorkspaceEntry>> {
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
            amounts: amounts(a),
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
async fn start_lent(
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
    let (kind, transfer) = match &local {
        Some(local) => (
            TransferKind::Sync,
            TransferRequest {
                peer: peer.id.to_string(),
                workspace: local.manifest.id.to_string(),
                by: format!("{}@{}", body.user, peer.name),
                ..TransferRequest::default()
            },
        ),
        None => (
            TransferKind::Clone,
            TransferRequest {
                peer: peer.id.to_string(),
                workspace: body.workspace_id.to_string(),
                rename_to: Some(body.workspace_name.clone()),
                private: true,
                by: format!("{}@{}", body.user, peer.name),
                placed: true,
            },
        ),
    };
    let job = state.transfers.enqueue(kind, transfer).await?;
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

async fn lent_status(
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
    let local = local_clone(&state, peer.id, workspace)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    let status = lent_env(&state, peer.id, local.manifest.id, &environment)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    Ok(HttpResponse::Ok().json(remote_run(&status)))
}

async fn stop_lent(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let local = local_clone(&state, peer.id, workspace)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    lent_env(&state, peer.id, local.manifest.id, &environment)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    tracing::info!(peer = %peer.name, workspace = %local.manifest.name, %environment, "stop asked by the peer that placed it");
    state
        .runtimes
        .stop(
            Some(&local.manifest.id.to_string()),
            Some(&environment),
            Duration::from_secs(60),
        )
        .await?;
    let status = lent_env(&state, peer.id, local.manifest.id, &environment)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    Ok(HttpResponse::Ok().json(remote_run(&status)))
}

async fn lent_logs(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<super::runtimes::LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let local = local_clone(&state, peer.id, workspace)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    let status = lent_env(&state, peer.id, local.manifest.id, &environment)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    let mut query = query.into_inner();
    query.environment = Some(environment);
    super::runtimes::serve_logs(&state, vec![status], &query)
}

/// A shell in an environment running here for the asking peer (WebSocket, as
/// `GET /workspaces/{ws}/terminal`).
async fn lent_terminal(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<super::runtimes::TerminalQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let peer = known_peer(&state, &request)?;
    let (workspace, environment) = run_path(&path)?;
    let local = local_clone(&state, peer.id, workspace)
        .ok_or_else(|| run_not_found(&state, &environment))?;
    let status = lent_env(&state, peer.id, local.manifest.id, &environment)
        .filter(|s| s.state.is_active())
        .ok_or_else(|| run_not_found(&state, &environment))?;
    let target = state
        .runtimes
        .terminal(&local.manifest.id.to_string(), Some(&environment))
        .await?;
    let ended = state.runtimes.run_ended(status.workspace_id, &environment);
    tracing::info!(peer = %peer.name, workspace = %local.manifest.name, %environment, "terminal opened for the peer that placed it");
    super::runtimes::serve_terminal(&state, target, Some(ended), &query, &request, body).await
}

/// Relays a terminal of a placed environment to its peer.
pub(super) async fn placed_terminal(
    state: &AppState,
    placement: &aienv_actors::cluster::Placement,
    request: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let record = &placement.record;
    let endpoint = state.peers.view().endpoint(record.peer).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "peer-gone",
            format!(
                "`{}` runs on {}, which is gone",
                record.workspace_name, record.peer_name
            ),
        )
    })?;
    let query = web::Query::<super::runtimes::TerminalQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request("invalid-query", e.to_string()))?;
    let url = format!(
        "{}/api/v1/cluster/runs/{}/{}/terminal?cols={}&rows={}",
        endpoint.url.replacen("https://", "wss://", 1),
        record.workspace_id,
        record.environment,
        query.cols.unwrap_or(80),
        query.rows.unwrap_or(24)
    );
    let upstream = cluster_client::client(&state.identity, &endpoint).ws(url);
    tool_proxy::bridge_websocket(request, body, upstream).await
}

/// The tool of an environment running here for `peer` (`None`: not one of its runs).
pub(super) fn lent_tool(
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

// ---------------------------------------------------------------------------------------
// Requesting node.

/// A tool of an environment placed on a peer: where to relay its requests.
#[derive(Debug, Clone)]
pub struct PeerTool {
    /// The peer, with the key it must present.
    pub endpoint: PeerEndpoint,
    /// The peer's name.
    pub peer_name: String,
    /// `/w/<workspace>/<tool>/`.
    pub base_path: String,
}

/// Where a tool of a placed environment is reached (`None`: no placement has it). The tool
/// is known from the environment's own spec, so requests are relayed from the moment the peer
/// accepted it: the peer answers for its tool as the local proxy does (not running yet, then
/// the tool), without waiting for the next poll of its state.
pub(super) fn placed_tool(
    state: &AppState,
    workspace: &str,
    tool: &str,
) -> Option<Result<PeerTool, String>> {
    let entry = state.store.get(workspace).ok()?;
    let view = state.placements.view();
    let placement = view.placements.iter().find(|p| {
        p.record.workspace_id == entry.manifest.id
            && entry
                .environments
                .get(&p.record.environment)
                .is_some_and(|spec| spec.tools.iter().any(|t| t.name == tool))
    })?;
    let peer_name = placement.record.peer_name.clone();
    if let Some(since) = placement.lost_since {
        return Some(Err(format!(
            "`{}` runs on {peer_name}, which is lost since {}",
            entry.manifest.name,
            since.format("%H:%M:%S")
        )));
    }
    if !placement.active() {
        return Some(Err(format!(
            "`{}/{}` is {} on {peer_name}",
            entry.manifest.name,
            placement.record.environment,
            placement.state()
        )));
    }
    let endpoint = state.peers.view().endpoint(placement.record.peer)?;
    Some(Ok(PeerTool {
        endpoint,
        peer_name,
        base_path: format!("/w/{}/{tool}/", entry.manifest.name),
    }))
}

/// The request's headers as the peer should see them: no credentials of this node, no
/// hop-by-hop fields, the browser's host and scheme as `X-Forwarded-*`.
fn relay_headers(request: &HttpRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower)
            || name == header::AUTHORIZATION
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || lower.starts_with("sec-websocket-")
            || lower.starts_with("x-forwarded-")
        {
            continue;
        }
        if name == header::COOKIE {
            if let Some(kept) = tool_proxy::strip_node_cookies(value) {
                headers.append(header::COOKIE, kept);
            }
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let info = request.connection_info();
    for (name, value) in [
        ("x-forwarded-host", info.host().to_string()),
        ("x-forwarded-proto", info.scheme().to_string()),
        (
            "x-forwarded-for",
            info.realip_remote_addr().unwrap_or("").to_string(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::HeaderName::from_static(name), value);
        }
    }
    headers
}

/// Relays one request to a tool of an environment placed on a peer, over mutual TLS.
pub(super) async fn relay_tool(
    request: HttpRequest,
    payload: web::Payload,
    peer: PeerTool,
    key: &ToolKey,
) -> Result<HttpResponse, ApiError> {
    let path_and_query = match request.query_string() {
        "" => request.path().to_string(),
        query => format!("{}?{query}", request.path()),
    };
    let state = request
        .app_data::<web::Data<AppState>>()
        .cloned()
        .expect("the app state is registered");
    let client = cluster_client::client(&state.identity, &peer.endpoint);
    let headers = relay_headers(&request);
    let is_websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_websocket {
        let url = format!(
            "{}{path_and_query}",
            peer.endpoint.url.replacen("https://", "wss://", 1)
        );
        let mut upstream = client.ws(url);
        for (name, value) in headers.iter() {
            upstream = upstream.set_header(name.clone(), value.clone());
        }
        return tool_proxy::bridge_websocket(&request, payload, upstream).await;
    }
    let mut upstream = client
        .request(
            request.method().clone(),
            format!("{}{path_and_query}", peer.endpoint.url),
        )
        .timeout(Duration::from_secs(300));
    for (name, value) in headers.iter() {
        upstream = upstream.append_header((name.clone(), value.clone()));
    }
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let sent = if has_body {
        upstream.send_stream(payload).await
    } else {
        upstream.send().await
    };
    let response = sent.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "tool-unreachable",
            format!(
                "tool `{}` of `{}` runs on {}, which did not answer: {e}",
                key.tool, key.workspace, peer.peer_name
            ),
        )
    })?;
    let mut builder = HttpResponse::build(response.status());
    for (name, value) in response.headers() {
        if HOP_BY_HOP.contains(&name.as_str())
            || name == header::CONTENT_LENGTH
            || (name == header::SET_COOKIE && tool_proxy::is_node_cookie(value.as_bytes()))
        {
            continue;
        }
        builder.append_header((name.clone(), value.clone()));
    }
    Ok(builder.streaming(response))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementQuery {
    environment: Option<String>,
}

/// The environment to place: the one named, or the workspace's only one.
fn environment_of<'a>(
    entry: &'a WorkspaceEntry,
    named: Option<&str>,
) -> Result<(String, &'a EnvironmentSpec), ApiError> {
    let name = match named {
        Some(name) => name.to_string(),
        None if entry.environments.len() == 1 => entry
            .environments
            .keys()
            .next()
            .cloned()
            .unwrap_or_default(),
        None => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                format!(
                    "name the environment to place: `{}` has {}",
                    entry.manifest.name,
                    if entry.environments.is_empty() {
                        "none".to_string()
                    } else {
                        entry
                            .environments
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ))
        }
    };
    let spec = entry.environments.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "environment-not-found",
            format!(
                "workspace `{}` has no environment `{name}`",
                entry.manifest.name
            ),
        )
    })?;
    Ok((name, spec))
}

/// Asks every trusted online peer (or only `only`) how it would run the environment, and
/// ranks the answers.
async fn rank_peers(
    state: &AppState,
    entry: &WorkspaceEntry,
    environment: &str,
    spec: &EnvironmentSpec,
    only: Option<Uuid>,
) -> Result<RankingDto, ApiError> {
    let started = Instant::now();
    let (snapshot, _) = state.store.snapshot(&entry.manifest.id.to_string()).await?;
    let mut seen = HashSet::new();
    let mut chunks = Vec::new();
    let mut total = 0u64;
    for file in &snapshot.entries {
        for (_, chunk) in file.file_chunks() {
            if seen.insert(chunk.hash) {
                total += chunk.size as u64;
                chunks.push(FitChunk {
                    hash: chunk.hash.to_hex(),
                    size: chunk.size,
                });
            }
        }
    }
    let body = Arc::new(FitRequest {
        environment: environment.to_string(),
        spec: serde_json::to_value(spec).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                e.to_string(),
            )
        })?,
        chunks,
    });
    let peers = state.peers.view();
    let asks = peers
        .peers
        .iter()
        .filter(|p| p.trusted && p.state == PeerState::Online)
        .filter(|p| only.is_none_or(|id| id == p.id))
        .filter_map(|p| Some((p.id, p.name.clone(), p.endpoint()?)))
        .map(|(id, name, endpoint)| {
            let identity = state.identity.clone();
            let body = body.clone();
            async move {
                let fit = match cluster_client::fit(&identity, &endpoint, &body).await {
                    Ok(answer) if answer.fits => Ok(Offer {
                        variant: answer.variant,
                        cpus: answer.allocation.cpus,
                        memory: answer.allocation.memory_bytes,
                        gpus: answer.allocation.gpus,
                        preferred_met: answer.preferred_met,
                        load: answer.load,
                        bytes_held: answer.bytes_held.min(total),
                        bytes_to_move: total.saturating_sub(answer.bytes_held),
                        notes: answer.notes,
                    }),
                    Ok(answer) => Err(answer.refusal.unwrap_or_else(|| "does not fit".into())),
                    Err(CallError::Refused(_, message)) => Err(message),
                    Err(error) => Err(format!("did not answer: {error}")),
                };
                Candidate {
                    peer: id,
                    peer_name: name,
                    fit,
                }
            }
        });
    let candidates = futures_util::future::join_all(asks).await;
    let ranking = rank::rank(candidates);
    Ok(RankingDto::new(
        &entry.manifest.name,
        environment,
        &ranking,
        total,
        started.elapsed().as_secs_f64() * 1000.0,
    ))
}

/// The ranking of trusted online peers for an environment (nothing is placed).
async fn placement(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    query: web::Query<PlacementQuery>,
) -> Result<HttpResponse, ApiError> {
    super::permissions::authorize(&state, &login.0, &path, crate::access::Action::Use).await?;
    let entry = state.store.get(&path)?;
    let (environment, spec) = environment_of(&entry, query.environment.as_deref())?;
    Ok(HttpResponse::Ok().json(rank_peers(&state, &entry, &environment, spec, None).await?))
}

async fn placements(state: web::Data<AppState>, _: Login) -> HttpResponse {
    HttpResponse::Ok().json(
        state
            .placements
            .view()
            .placements
            .iter()
            .map(|p| PlacementDto::from(&**p))
            .collect::<Vec<_>>(),
    )
}

/// The peer `on` names (`best`: the rule's choice among the trusted online peers).
fn named_peer(state: &AppState, on: &str) -> Result<Option<Uuid>, ApiError> {
    if on == "best" {
        return Ok(None);
    }
    let view = state.peers.view();
    let peer = view
        .peers
        .iter()
        .find(|p| p.name == on || p.id.to_string() == on)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "peer-not-found",
                format!(
                    "no peer `{on}`; peers: {}",
                    view.peers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    if !peer.trusted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "peer-not-trusted",
            format!(
                "{} is not trusted here: environments run only on trusted peers (trust it with `aienv peers trust {}` after comparing its key id)",
                peer.name, peer.name
            ),
        ));
    }
    if peer.state != PeerState::Online {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "peer-offline",
            format!("{} is {}", peer.name, peer.state_name()),
        ));
    }
    Ok(Some(peer.id))
}

/// `POST /workspaces/{ws}/run` with `on`: ranks, records the placement (which lets the
/// chosen peer fetch the workspace), and asks the peer to run it.
pub(super) async fn place(
    state: &web::Data<AppState>,
    login: &Login,
    workspace: &str,
    environment: Option<&str>,
    on: &str,
) -> Result<HttpResponse, ApiError> {
    let entry = state.store.get(workspace)?;
    let (environment, spec) = environment_of(&entry, environment)?;
    if state
        .runtimes
        .view()
        .find(entry.manifest.id, &environment)
        .is_some_and(|s| s.state.is_active())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already-running",
            format!(
                "`{}/{environment}` runs on this node; stop it first",
                entry.manifest.name
            ),
        ));
    }
    let only = named_peer(state, on)?;
    let ranking = rank_peers(state, &entry, &environment, spec, only).await?;
    let Some(chosen) = ranking.candidates.first().filter(|c| c.fits).cloned() else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "no-peer-fits",
            message: match ranking.candidates.first() {
                Some(c) if only.is_some() => format!(
                    "{} cannot run `{environment}`: {}",
                    c.peer_name,
                    c.refusal.clone().unwrap_or_default()
                ),
                _ => format!(
                    "no trusted online peer can run `{environment}`: {}",
                    ranking.reason
                ),
            },
            details: Some(serde_json::to_value(&ranking).unwrap_or_default()),
        });
    };
    let endpoint = state.peers.view().endpoint(chosen.peer_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "peer-offline",
            format!("{} went away", chosen.peer_name),
        )
    })?;
    let record = PlacementRecord {
        workspace_id: entry.manifest.id,
        workspace_name: entry.manifest.name.clone(),
        environment: environment.clone(),
        peer: chosen.peer_id,
        peer_name: chosen.peer_name.clone(),
        by: login.name().to_string(),
        placed_at: Utc::now(),
        reason: if only.is_some() {
            format!("{} was named", chosen.peer_name)
        } else {
            ranking.reason.clone()
        },
    };
    // A refusal below must not lose the record of where it ran before (a lost peer).
    let previous = state
        .placements
        .view()
        .find(entry.manifest.id, Some(&environment))
        .map(|p| p.record.clone());
    state.placements.place(record).await.map_err(|message| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            message,
        )
    })?;
    let asked = cluster_client::start_run(
        &state.identity,
        &endpoint,
        &PeerRunRequest {
            workspace_id: entry.manifest.id,
            workspace_name: entry.manifest.name.clone(),
            environment: environment.clone(),
            user: login.name().to_string(),
            spec: serde_json::to_value(spec).unwrap_or_default(),
        },
    )
    .await;
    if let Err(error) = asked {
        let _ = match previous {
            Some(previous) => state.placements.place(previous).await.map(|_| ()),
            None => {
                state
                    .placements
                    .forget(entry.manifest.id, &environment)
                    .await
            }
        };
        return Err(match error {
            CallError::Refused(status, message) => ApiError {
                status: StatusCode::CONFLICT,
                code: "peer-refused",
                message: format!("{} refused: {message}", chosen.peer_name),
                details: Some(serde_json::json!({"peer_status": status.as_u16()})),
            },
            CallError::Unreachable(message) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "peer-unreachable",
                format!("{} did not answer: {message}", chosen.peer_name),
            ),
        });
    }
    tracing::info!(user = login.name(), workspace = %entry.manifest.name, %environment, peer = %chosen.peer_name, "placed on a peer");
    let placement = state
        .placements
        .view()
        .find(entry.manifest.id, Some(&environment))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "placement-gone",
                "the placement was removed meanwhile",
            )
        })?;
    Ok(HttpResponse::Accepted().json(PlacedDto {
        placement: PlacementDto::from(&*placement),
        ranking,
    }))
}

/// Stops environments of `workspace` placed on peers (all, or `environment`) and forgets
/// them; the peers' answers, or why they could not be asked.
pub(super) async fn stop_placed(
    state: &AppState,
    workspace: Uuid,
    environment: Option<&str>,
) -> Vec<String> {
    let placements: Vec<_> = state
        .placements
        .view()
        .placements
        .iter()
        .filter(|p| {
            p.record.workspace_id == workspace
                && environment.is_none_or(|e| e == p.record.environment)
        })
        .cloned()
        .collect();
    let mut notes = Vec::new();
    for placement in placements {
        let record = &placement.record;
        match state.peers.view().endpoint(record.peer) {
            Some(endpoint) => {
                match cluster_client::stop_run(
                    &state.identity,
                    &endpoint,
                    workspace,
                    &record.environment,
                )
                .await
                {
                    Ok(_) => notes.push(format!(
                        "{} stopped `{}`",
                        record.peer_name, record.environment
                    )),
                    Err(CallError::Refused(status, _)) if status == StatusCode::NOT_FOUND => notes
                        .push(format!(
                            "{} no longer ran `{}`",
                            record.peer_name, record.environment
                        )),
                    Err(error) => notes.push(format!(
                        "{} could not be asked to stop `{}` ({error}); its owner can stop it there",
                        record.peer_name, record.environment
                    )),
                }
            }
            None => notes.push(format!(
                "{} is gone; `{}` may still run there until its owner stops it",
                record.peer_name, record.environment
            )),
        }
        let _ = state
            .placements
            .forget(workspace, &record.environment)
            .await;
    }
    notes
}

/// Relays `GET /workspaces/{ws}/logs` of a placed environment to its peer.
pub(super) async fn placed_logs(
    state: &AppState,
    placement: &aienv_actors::cluster::Placement,
    query_string: &str,
) -> Result<HttpResponse, ApiError> {
    let record = &placement.record;
    let endpoint = state.peers.view().endpoint(record.peer).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "peer-gone",
            format!(
                "`{}` runs on {}, which is gone",
                record.workspace_name, record.peer_name
            ),
        )
    })?;
    let url = match query_string {
        "" => format!(
            "{}/api/v1/cluster/runs/{}/{}/logs",
            endpoint.url, record.workspace_id, record.environment
        ),
        query => format!(
            "{}/api/v1/cluster/runs/{}/{}/logs?{query}",
            endpoint.url, record.workspace_id, record.environment
        ),
    };
    let response = cluster_client::client(&state.identity, &endpoint)
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "peer-unreachable",
                format!("{} did not answer: {e}", record.peer_name),
            )
        })?;
    let mut builder = HttpResponse::build(response.status());
    builder
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"));
    Ok(builder.streaming(response))
}
