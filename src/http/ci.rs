//! CI runs: `POST /ci/runs` (start), `GET /ci/runs` (list), `GET /ci/runs/{run}`,
//! `GET /ci/runs/{run}/log?offset=N` (the log from a byte offset, for following it), and the
//! incoming webhooks, `POST /hooks/{name}` (`webhook.rs`).

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use aienv_actors::ci::{CiError, CiRequest, CiRun, Trigger};

use crate::access::Action;
use crate::api::{CiRunDto, CiRunRequest};

use super::permissions::{authorize, check};
use super::{ApiError, AppState, Login};

/// Longest a command may run.
const MAX_TIMEOUT: u64 = 24 * 3600;
/// Default time a command may run.
const DEFAULT_TIMEOUT: u64 = 3600;
/// Most log bytes in one answer.
const LOG_CHUNK: u64 = 1 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ci/runs", web::post().to(start))
        .route("/ci/runs", web::get().to(list))
        .route("/ci/runs/{run}", web::get().to(show))
        .route("/ci/runs/{run}/log", web::get().to(log))
        .route("/ci/runs/{run}/junit/{index}", web::get().to(junit))
        .service(
            web::resource("/hooks/{name}")
                .app_data(web::PayloadConfig::new(super::webhook::MAX_DELIVERY))
                .route(web::post().to(super::webhook::deliver)),
        );
}

impl From<CiError> for ApiError {
    fn from(error: CiError) -> ApiError {
        let (status, code) = match &error {
            CiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            CiError::BadRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-field"),
            CiError::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "database"),
            CiError::Gone => (StatusCode::SERVICE_UNAVAILABLE, "shutting-down"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

async fn start(
    state: web::Data<AppState>,
    login: Login,
    body: web::Json<CiRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    authorize(&state, &login.0, &body.workspace, Action::Use).await?;
    let timeout = body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT);
    if timeout == 0 || timeout > MAX_TIMEOUT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            format!("timeout_seconds: {timeout} is not 1 to {MAX_TIMEOUT}"),
        ));
    }
    // On a peer: the rule picks (or checks) the peer now, so a refusal comes at once.
    let on = match &body.on {
        Some(on) => {
            let entry = state.store.get(&body.workspace)?;
            let (id, name) =
                super::cluster::choose_peer(&state, &entry, body.environment.as_deref(), on)
                    .await?;
            Some(aienv_actors::ci::RemotePeer { id, name })
        }
        None => None,
    };
    let started = state
        .ci
        .start_run(CiRequest {
            workspace: body.workspace,
            environment: body.environment,
            command: body.command,
            pull: body.pull,
            timeout: Duration::from_secs(timeout),
            trigger: Trigger {
                by: login.name().to_string(),
                hook: None,
                event: None,
                delivery: None,
            },
            on,
            borrower: None,
            transfer: None,
        })
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/api/v1/ci/runs/{}", started.run.id),
        ))
        .json(CiRunDto::from(&*started.run)))
}

#[derive(Deserialize)]
struct ListQuery {
    workspace: Option<String>,
}

async fn list(
    state: web::Data<AppState>,
    login: Login,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let wanted = match &query.workspace {
        Some(target) => Some(state.store.get(target)?.manifest.id),
        None => None,
    };
    let mut runs = Vec::new();
    for run in state.ci.view().runs.iter() {
        if wanted.is_some_and(|id| id != run.workspace_id) {
            continue;
        }
        if may_see(&state, &login, run).await {
            runs.push(CiRunDto::from(&**run));
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "runs": runs })))
}

/// Whether the caller may use the run's workspace (a run of a deleted workspace: admins).
pub(super) async fn may_see(state: &AppState, login: &Login, run: &CiRun) -> bool {
    match state.store.get(&run.workspace_id.to_string()) {
        Ok(entry) => check(state, &login.0, &entry, Action::Use).await.is_ok(),
        Err(_) => super::permissions::require_admin(state, &login.0, "see it").is_ok(),
    }
}

async fn visible_run(
    state: &AppState,
    login: &Login,
    target: &str,
) -> Result<std::sync::Arc<CiRun>, ApiError> {
    let run = state.ci.get(target)?;
    if !may_see(state, login, &run).await {
        // Not found rather than forbidden: the run's existence is the workspace's business.
        return Err(CiError::NotFound(format!("no CI run `{target}`")).into());
    }
    Ok(run)
}

async fn show(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run = visible_run(&state, &login, &path).await?;
    Ok(HttpResponse::Ok().json(CiRunDto::from(&*run)))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// The log from `offset` (at most 1 MiB); `X-Next-Offset` is where to ask next and
/// `X-Run-State` says whether more can come.
async fn log(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let run = visible_run(&state, &login, &path).await?;
    log_from(&run, query.offset).await
}

/// The run's log from `offset` (at most 1 MiB), with `X-Next-Offset` and `X-Run-State`.
pub(super) async fn log_from(run: &CiRun, offset: u64) -> Result<HttpResponse, ApiError> {
    let file = run.log.clone();
    let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut file = match std::fs::File::open(&file) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut chunk = Vec::new();
        file.take(LOG_CHUNK).read_to_end(&mut chunk)?;
        Ok(chunk)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "stopping"))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io-error",
            format!("reading the run's log: {e}"),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Next-Offset", (offset + chunk.len() as u64).to_string()))
        .insert_header(("X-Run-State", run.state.as_str()))
        .body(chunk))
}

/// A JUnit report the run's command wrote, as it is now in the workspace.
async fn junit(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<(String, usize)>,
) -> Result<HttpResponse, ApiError> {
    let (target, index) = path.into_inner();
    let run = visible_run(&state, &login, &target).await?;
    junit_of(&state, &run, index).await
}

/// JUnit report `index` of `run`: as it is now in the workspace, or, for a run on a peer,
/// the copy taken when it finished.
pub(super) async fn junit_of(
    state: &AppState,
    run: &CiRun,
    index: usize,
) -> Result<HttpResponse, ApiError> {
    let Some(report) = run.junit.get(index) else {
        return Err(CiError::NotFound(format!(
            "run #{} has {} JUnit report(s); there is no #{index}",
            run.number,
            run.junit.len()
        ))
        .into());
    };
    if run.peer.is_some() {
        let copy = run.junit_copy(index);
        let bytes = web::block(move || std::fs::read(copy))
            .await
            .map_err(|_| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "stopping")
            })?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("{} was not copied from the peer: {e}", report.path),
                )
            })?;
        return Ok(HttpResponse::Ok()
            .content_type("application/xml")
            .body(bytes));
    }
    let entry = state.store.get(&run.workspace_id.to_string())?;
    // The path was found by walking the workspace without following links; read it the same
    // way, so a link planted since cannot point the node elsewhere.
    let relative = std::path::Path::new(&report.path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    aienv_actors::git::no_link_on_the_way(&entry.path, &relative)
        .map_err(|why| ApiError::new(StatusCode::NOT_FOUND, "not-found", why))?;
    let file = entry.path.join(&report.path);
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)?;
        let mut bytes = Vec::new();
        (&mut opened).take(16 << 20).read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "stopping"))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{}: {e}", report.path),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/xml")
        .body(bytes))
}
