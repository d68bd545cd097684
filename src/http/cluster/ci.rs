//! CI runs for trusted peers (`aienv ci --on THIS-NODE` there): `POST /cluster/ci` fetches the
//! peer's workspace (a private clone, or a sync of the clone already here) and queues the run
//! as this node's own CI run for that borrower, sized within the lending limits;
//! `GET /cluster/ci/{run}`, `…/log?offset=` and `…/junit/{i}` let the peer follow it. A peer
//! sees only the runs it asked for.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use aienv_actors::ci::{CiError, CiRequest, CiRun, Trigger};
use aienv_actors::model::is_slug;
use aienv_actors::runtime_supervisor::Borrower;

use crate::api::{CiRunDto, PeerCiRequest};

use super::super::{ApiError, AppState};
use super::lending::{fetch_workspace, known_peer, lender_peer, local_clone};

/// Longest a peer's command may run.
const MAX_TIMEOUT: u64 = 24 * 3600;

pub(super) async fn start(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<PeerCiRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer = lender_peer(&state, &request)?;
    let body = body.into_inner();
    let invalid = |field: &str, message: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid-field",
        message,
        details: Some(serde_json::json!({"field": field})),
    };
    if !is_slug(&body.workspace_name) {
        return Err(invalid(
            "workspace_name",
            format!(
                "workspace_name: `{}` is not a valid workspace name",
                body.workspace_name
            ),
        ));
    }
    if body.timeout_seconds == 0 || body.timeout_seconds > MAX_TIMEOUT {
        return Err(invalid(
            "timeout_seconds",
            format!(
                "timeout_seconds: {} is not 1 to {MAX_TIMEOUT}",
                body.timeout_seconds
            ),
        ));
    }
    if body.user.is_empty() || body.user.len() > 128 || body.user.chars().any(char::is_control) {
        return Err(invalid(
            "user",
            "user: 1 to 128 printable characters".into(),
        ));
    }
    // A clone under another workspace's name is refused by the transfer (`name-taken`).
    let local = local_clone(&state, peer.id, body.workspace_id);
    let job = fetch_workspace(
        &state,
        &peer,
        local.as_deref(),
        body.workspace_id,
        &body.workspace_name,
        &body.user,
    )
    .await?;
    let started = state
        .ci
        .start_run(CiRequest {
            workspace: job.target_name.clone(),
            environment: body.environment,
            command: body.command,
            pull: body.pull,
            timeout: Duration::from_secs(body.timeout_seconds),
            trigger: Trigger {
                by: format!("{}@{}", body.user, peer.name),
                hook: None,
                event: None,
                delivery: None,
            },
            on: None,
            borrower: Some(Borrower {
                peer: peer.id,
                peer_name: peer.name.clone(),
                user: body.user.clone(),
            }),
            transfer: Some(job.id),
        })
        .await?;
    tracing::info!(peer = %peer.name, user = %body.user, workspace = %body.workspace_name, run = %started.run.id, transfer = %job.id, "accepted a CI run for a peer");
    Ok(HttpResponse::Accepted().json(CiRunDto::from(&*started.run)))
}

/// The run `target` if the calling peer asked for it (a peer learns nothing of others').
fn peers_run(
    state: &AppState,
    request: &HttpRequest,
    target: &str,
) -> Result<std::sync::Arc<CiRun>, ApiError> {
    let peer = known_peer(state, request)?;
    state
        .ci
        .get(target)
        .ok()
        .filter(|run| run.borrower.as_ref().is_some_and(|b| b.peer == peer.id))
        .ok_or_else(|| CiError::NotFound(format!("no CI run `{target}` for you here")).into())
}

pub(super) async fn status(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run = peers_run(&state, &request, &path)?;
    Ok(HttpResponse::Ok().json(CiRunDto::from(&*run)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    #[serde(default)]
    offset: u64,
}

pub(super) async fn log(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let run = peers_run(&state, &request, &path)?;
    super::super::ci::log_from(&run, query.offset).await
}

pub(super) async fn junit(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, usize)>,
) -> Result<HttpResponse, ApiError> {
    let (target, index) = path.into_inner();
    let run = peers_run(&state, &request, &target)?;
    super::super::ci::junit_of(&state, &run, index).await
}
