//! The requesting node's side: the cluster view, ranking the trusted peers for an
//! environment, placing it on one, and relaying its tools, logs, terminal and stop there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use aienv_actors::cluster::fit_chunks::{FitChunks, FIT_CHUNKS_LISTED};
use aienv_actors::cluster::rank::{self, Candidate, Offer};
use aienv_actors::cluster::PlacementRecord;
use aienv_actors::model::EnvironmentSpec;
use aienv_actors::peer_registry::{PeerEndpoint, PeerState};
use aienv_actors::snapshot::Hash;
use aienv_actors::transfer_queue::{JobInfo, JobState, TransferKind, TransferRequest};
use aienv_actors::workspace_store::WorkspaceEntry;

use crate::api::{
    ClusterDto, ClusterNodeDto, FitChunk, FitRequest, OfferDto, PeerRunRequest, PlacedDto,
    PlacementDto, RankingDto, TransferRequestDto,
};
use crate::cluster_client::{self, CallError};

use super::super::tool_proxy::{self, HOP_BY_HOP};
use super::super::tool_tickets::ToolKey;
use super::super::{ApiError, AppState, Login};

/// The cluster view: this node and every trusted peer with its offer, as asked lately (the
/// Placements actor asks them while someone watches; this call starts or renews that).
pub(super) async fn cluster(
    state: web::Data<AppState>,
    _: Login,
) -> Result<HttpResponse, ApiError> {
    let view = state.placements.cluster();
    let peers = state.peers.view();
    let mut nodes = vec![ClusterNodeDto {
        node_id: state.node.id,
        name: state.node.name.clone(),
        state: "this node".into(),
        offer: Some(super::lending::own_offer(&state, None).await?),
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
                    .map(|o| OfferDto::from_offer(o, trusted.id, &trusted.name)),
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
pub(in crate::http) fn placed_tool(
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
pub(in crate::http) async fn relay_tool(
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

/// Relays a terminal of a placed environment to its peer.
pub(in crate::http) async fn placed_terminal(
    state: &AppState,
    placement: &aienv_actors::cluster::Placement,
    request: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let record = &placement.record;
    let endpoint = placement_endpoint(state, record)?;
    let query =
        web::Query::<super::super::runtimes::TerminalQuery>::from_query(request.query_string())
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementQuery {
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
) -> Result<(RankingDto, Hash), ApiError> {
    let started = Instant::now();
    // The workspace's largest chunks, read in order from the memo's file: the request lists
    // a bounded number of them, the snapshot itself is never held.
    let taken = state
        .store
        .take_snapshot(&entry.manifest.id.to_string())
        .await?;
    let root = taken.root;
    let dir = entry.path.clone();
    let (chunks, total) = web::block(move || -> Result<_, ApiError> {
        let mut listing = FitChunks::new(FIT_CHUNKS_LISTED);
        taken.entries()?.for_each(
            aienv_actors::workspace_store::StoreError::io("reading the snapshot of", &dir),
            |file| {
                listing.entry(file);
                Ok(())
            },
        )?;
        let (listed, total) = listing.finish();
        let chunks = listed
            .into_iter()
            .map(|(hash, size)| FitChunk {
                hash: hash.to_hex(),
                size,
            })
            .collect::<Vec<_>>();
        Ok((chunks, total))
    })
    .await
    .map_err(|_| ApiError::from(aienv_actors::transfer_queue::TransferError::Unavailable))??;
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
        workspace_bytes: Some(total),
        workspace_id: Some(entry.manifest.id),
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
    let dto = RankingDto::new(
        &entry.manifest.name,
        environment,
        &ranking,
        total,
        started.elapsed().as_secs_f64() * 1000.0,
    );
    Ok((dto, root))
}

/// The ranking of trusted online peers for an environment (nothing is placed).
pub(super) async fn placement(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    query: web::Query<PlacementQuery>,
) -> Result<HttpResponse, ApiError> {
    super::super::permissions::authorize(&state, &login.0, &path, crate::access::Action::Use)
        .await?;
    let entry = state.store.get(&path)?;
    let (environment, spec) = environment_of(&entry, query.environment.as_deref())?;
    let (ranking, _) = rank_peers(&state, &entry, &environment, spec, None).await?;
    Ok(HttpResponse::Ok().json(ranking))
}

pub(super) async fn placements(state: web::Data<AppState>, _: Login) -> HttpResponse {
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

/// The trusted online peer `on` names that can run the workspace's environment (`best`: the
/// rule's first choice), with its name: for a CI run on a peer.
pub(in crate::http) async fn choose_peer(
    state: &AppState,
    entry: &WorkspaceEntry,
    environment: Option<&str>,
    on: &str,
) -> Result<(Uuid, String), ApiError> {
    let named = match environment {
        Some(name) => Some(name.to_string()),
        None => entry.environments.keys().next().cloned(),
    };
    let (environment, spec) = environment_of(entry, named.as_deref())?;
    let only = named_peer(state, on)?;
    let (ranking, _) = rank_peers(state, entry, &environment, spec, only).await?;
    match ranking.candidates.first().filter(|c| c.fits) {
        Some(chosen) => Ok((chosen.peer_id, chosen.peer_name.clone())),
        None => Err(no_peer_fits(&ranking, only.is_some(), &environment)),
    }
}

/// The refusal when no peer (or not the one named) can run `environment`.
fn no_peer_fits(ranking: &RankingDto, named: bool, environment: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "no-peer-fits",
        message: match ranking.candidates.first() {
            Some(c) if named => format!(
                "{} cannot run `{environment}`: {}",
                c.peer_name,
                c.refusal.clone().unwrap_or_default()
            ),
            _ => format!(
                "no trusted online peer can run `{environment}`: {}",
                ranking.reason
            ),
        },
        details: Some(serde_json::to_value(ranking).unwrap_or_default()),
    }
}

/// `POST /workspaces/{ws}/run` with `on`: ranks, records the placement (which lets the
/// chosen peer fetch the workspace), and asks the peer to run it.
pub(in crate::http) async fn place(
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
    let (ranking, root) = rank_peers(state, &entry, &environment, spec, only).await?;
    let Some(chosen) = ranking.candidates.first().filter(|c| c.fits).cloned() else {
        return Err(no_peer_fits(&ranking, only.is_some(), &environment));
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
        placed_root: Some(root),
        stopped_at: None,
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

/// Stops environments of `workspace` placed on peers (all, or `environment`) and marks them
/// stopped (kept, so their results can still come back with a sync); the peers' answers, or
/// why they could not be asked.
pub(in crate::http) async fn stop_placed(
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
            .stopped(workspace, &record.environment)
            .await;
    }
    notes
}

/// Relays `GET /workspaces/{ws}/logs` of a placed environment to its peer.
pub(in crate::http) async fn placed_logs(
    state: &AppState,
    placement: &aienv_actors::cluster::Placement,
    query_string: &str,
) -> Result<HttpResponse, ApiError> {
    let record = &placement.record;
    let endpoint = placement_endpoint(state, record)?;
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

/// Where the peer running a placement is reached, or why not.
fn placement_endpoint(
    state: &AppState,
    record: &PlacementRecord,
) -> Result<PeerEndpoint, ApiError> {
    state.peers.view().endpoint(record.peer).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "peer-gone",
            format!(
                "`{}` runs on {}, which is gone",
                record.workspace_name, record.peer_name
            ),
        )
    })
}

/// `POST /transfers` with `kind: sync` of a workspace that is not a clone but was placed on a
/// peer: brings the results back from the clone there (only the changed chunks). Refused
/// when the workspace changed here since it was placed (or its results last came back),
/// unless `force`. `None` when the workspace is no placed one (the queue decides then).
pub(in crate::http) async fn sync_results(
    state: &web::Data<AppState>,
    login: &Login,
    body: &TransferRequestDto,
) -> Result<Option<Arc<JobInfo>>, ApiError> {
    let entry = state.store.get(&body.workspace)?;
    if entry.origin.is_some() {
        return Ok(None);
    }
    let view = state.placements.view();
    let Some(placement) = view
        .placements
        .iter()
        .filter(|p| p.record.workspace_id == entry.manifest.id)
        .filter(|p| {
            body.peer
                .as_deref()
                .is_none_or(|peer| peer == p.record.peer_name || peer == p.record.peer.to_string())
        })
        .max_by_key(|p| p.record.placed_at)
        .cloned()
    else {
        return Ok(None);
    };
    let record = &placement.record;
    // Only its root is compared: the entries stay in the memo's file.
    let now = state
        .store
        .take_snapshot(&entry.manifest.id.to_string())
        .await?;
    if !body.force && record.placed_root.is_some_and(|root| root != now.root) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "changed-here",
            message: format!(
                "`{}` changed here since it was placed on {}: bringing its results back would overwrite those changes; sync with force (`aienv sync {} --force`) to take {}'s copy, or export yours first",
                entry.manifest.name, record.peer_name, entry.manifest.name, record.peer_name
            ),
            details: Some(serde_json::json!({"peer": record.peer_name})),
        });
    }
    let job = state
        .transfers
        .enqueue(
            TransferKind::Sync,
            TransferRequest {
                peer: record.peer.to_string(),
                workspace: entry.manifest.id.to_string(),
                by: login.name().to_string(),
                placed: true,
                force: false,
                ..TransferRequest::default()
            },
        )
        .await?;
    tracing::info!(user = login.name(), workspace = %entry.manifest.name, peer = %record.peer_name, transfer = %job.id, "bringing a placed workspace's results back");
    // Once they are here, later syncs compare against the new state.
    let (state, id, workspace) = (state.clone(), job.id, entry.manifest.id);
    actix_web::rt::spawn(async move {
        let mut view = state.transfers.subscribe();
        loop {
            let finished = view
                .borrow()
                .find(&id.to_string())
                .map(|j| (j.state.is_finished(), j.state == JobState::Done));
            match finished {
                Some((true, true)) => break,
                Some((false, _)) => {}
                _ => return,
            }
            if view.changed().await.is_err() {
                return;
            }
        }
        if let Ok(taken) = state.store.take_snapshot(&workspace.to_string()).await {
            let _ = state.placements.results_back(workspace, taken.root).await;
        }
    });
    Ok(Some(job))
}
