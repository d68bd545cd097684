//! `GET /api/v1/events`: the live event stream over WebSocket.
//!
//! Protocol: the first message is `{"type":"snapshot", "seq": N, ...}` with the full node
//! state; then one JSON message per `NodeEvent`, in order, each with its `seq`. Events the
//! snapshot already contains are skipped. A client that falls more than the bus capacity behind
//! gets a fresh snapshot (with `"resync": true`) instead of the missed events; one that stops
//! reading for 30 s is disconnected. Browser connections from other origins are refused.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use aienv_actors::event_bus::Envelope;
use aienv_actors::events::{EventSource, NodeEvent};

use crate::api::{
    ConflictEventDto, EnvironmentStatusDto, PeerDto, PlacementDto, TransferDto, TrustedPeerDto,
    WorkspaceDto,
};

use super::node::node_info;
use super::{ApiError, AppState, Caller, Login};

/// How long one message may wait for a slow client before it is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/events", web::get().to(events));
}

async fn events(
    state: web::Data<AppState>,
    login: Login,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    super::extract::check_origin(&state, &request, "open this node's event stream")?;
    let (response, mut session, mut incoming) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::bad_request("not-a-websocket", e.to_string()))?;
    let mut receiver = state.bus.subscribe();
    let shutdown = state.shutdown.clone();
    let user = login.name().to_string();
    tracing::debug!(%user, "event stream opened");
    actix_web::rt::spawn(async move {
        let (text, mut watermarks) = snapshot(&state, &login, false).await;
        if session.text(text).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                received = receiver.recv() => {
                    let text = match received {
                        Ok(envelope) => {
                            if envelope.seq <= watermarks.of(&envelope.event) {
                                continue;
                            }
                            // A CI run is seen by those who may use its workspace, as in
                            // `GET /ci/runs`.
                            if let NodeEvent::CiRunChanged(run) = &envelope.event {
                                if !super::ci::may_see(&state, &login, run).await {
                                    continue;
                                }
                            }
                            event_json(&envelope)
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "event stream client lagged; resnapshot");
                            let (text, seen) = snapshot(&state, &login, true).await;
                            watermarks = seen;
                            text
                        }
                        Err(RecvError::Closed) => break,
                    };
                    match tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                message = incoming.next() => match message {
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = shutdown.wait() => {
                    let _ = session
                        .close(Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Away,
                            description: Some("node shutting down".into()),
                        }))
                        .await;
                    return;
                }
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

/// Per actor view, the seq of the last event a snapshot already contains.
struct Watermarks {
    workspaces: u64,
    peers: u64,
    transfers: u64,
    runtimes: u64,
    placements: u64,
    ci: u64,
}

impl Watermarks {
    fn of(&self, event: &NodeEvent) -> u64 {
        match event.source() {
            EventSource::Workspaces => self.workspaces,
            EventSource::Peers => self.peers,
            EventSource::Transfers => self.transfers,
            EventSource::Runtimes => self.runtimes,
            EventSource::Placements => self.placements,
            EventSource::Ci => self.ci,
        }
    }
}

/// The full state for `login`: everything, but CI runs only of workspaces they may use.
async fn snapshot(state: &AppState, login: &Login, resync: bool) -> (String, Watermarks) {
    let ci = state.ci.view();
    let mut runs = Vec::with_capacity(ci.runs.len());
    for run in ci.runs.iter() {
        if super::ci::may_see(state, login, run).await {
            runs.push(crate::api::CiRunDto::from(&**run));
        }
    }
    let view = state.store.view();
    let peers = state.peers.view();
    let transfers = state.transfers.view();
    let runtimes = state.runtimes.view();
    let placements = state.placements.view();
    let owner = Caller(Some(crate::auth::Principal::Admin));
    let workspaces: Vec<WorkspaceDto> = view
        .iter()
        .map(|entry| WorkspaceDto::from_entry(entry, true))
        .collect();
    let text = json!({
        "type": "snapshot",
        "seq": view.seq.max(peers.seq).max(transfers.seq).max(runtimes.seq).max(placements.seq).max(ci.seq),
        "resync": resync,
        "node": node_info(state, &owner),
        "workspaces": workspaces,
        "peers": peers.peers.iter().map(|p| PeerDto::from(&**p)).collect::<Vec<_>>(),
        "transfers": transfers.jobs.iter().map(|j| TransferDto::from(&**j)).collect::<Vec<_>>(),
        "runtimes": runtimes.envs.iter().map(|e| EnvironmentStatusDto::from(&**e)).collect::<Vec<_>>(),
        "placements": placements.placements.iter().map(|p| PlacementDto::from(&**p)).collect::<Vec<_>>(),
        "ci_runs": runs,
    })
    .to_string();
    (
        text,
        Watermarks {
            workspaces: view.seq,
            peers: peers.seq,
            transfers: transfers.seq,
            runtimes: runtimes.seq,
            placements: placements.seq,
            ci: ci.seq,
        },
    )
}

fn event_json(envelope: &Arc<Envelope>) -> String {
    match &envelope.event {
        NodeEvent::WorkspaceChanged(changed) => json!({
            "type": "workspace_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "change": changed.change.as_str(),
            "id": changed.id,
            "name": changed.name,
            "by": changed.by,
            "workspace": changed.workspace.as_ref().map(|w| WorkspaceDto::from_entry(w, true)),
        })
        .to_string(),
        NodeEvent::PeerJoined(peer) | NodeEvent::PeerUpdated(peer) | NodeEvent::PeerLeft(peer) => {
            let kind = match &envelope.event {
                NodeEvent::PeerJoined(_) => "peer_joined",
                NodeEvent::PeerUpdated(_) => "peer_updated",
                _ => "peer_left",
            };
            json!({
                "type": kind,
                "seq": envelope.seq,
                "at": envelope.at,
                "peer": PeerDto::from(&**peer),
            })
            .to_string()
        }
        NodeEvent::PeerConflict(conflict) => json!({
            "type": "peer_conflict",
            "seq": envelope.seq,
            "at": envelope.at,
            "conflict": ConflictEventDto::from(&**conflict),
        })
        .to_string(),
        NodeEvent::TrustChanged(trusted) => json!({
            "type": "trust_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "trusted": trusted.iter().map(TrustedPeerDto::from).collect::<Vec<_>>(),
        })
        .to_string(),
        NodeEvent::TransferChanged(job) => json!({
            "type": "transfer_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "transfer": TransferDto::from(&**job),
        })
        .to_string(),
        NodeEvent::RuntimeChanged(status) => json!({
            "type": "runtime_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "environment": EnvironmentStatusDto::from(&**status),
        })
        .to_string(),
        NodeEvent::PlacementChanged { placement, removed } => json!({
            "type": "placement_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "removed": removed,
            "placement": PlacementDto::from(&**placement),
        })
        .to_string(),
        NodeEvent::ClusterChanged(view) => json!({
            "type": "cluster_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "asked_at": view.asked_at,
            "offers": view.offers.iter().map(|(id, answer)| json!({
                "node_id": id,
                "offer": answer.as_ref().ok().map(|o| crate::api::OfferDto::from_offer(o, *id, "")),
                "error": answer.as_ref().err(),
            })).collect::<Vec<_>>(),
        })
        .to_string(),
        NodeEvent::CiRunChanged(run) => json!({
            "type": "ci_run_changed",
            "seq": envelope.seq,
            "at": envelope.at,
            "run": crate::api::CiRunDto::from(&**run),
        })
        .to_string(),
        NodeEvent::ToolReady { status, tool } => json!({
            "type": "tool_ready",
            "seq": envelope.seq,
            "at": envelope.at,
            "tool": tool,
            "environment": EnvironmentStatusDto::from(&**status),
        })
        .to_string(),
        #[allow(unreachable_patterns)]
        _ => json!({"type": "unknown", "seq": envelope.seq}).to_string(),
    }
}
