//! Workspace templates: `GET /templates` (the built-in ones, this node's, and those peers
//! share), and making a workspace from a template a peer shares (`POST /workspaces` with
//! `template: PEER/NAME`): the template is fetched with the transfer machinery (verified, only
//! the chunks this node lacks), a new workspace is made from it, and the fetched copy is
//! removed.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use aienv_actors::catalog::CatalogFilter;
use aienv_actors::transfer_queue::{JobState, TransferKind, TransferRequest};
use aienv_actors::workspace_store::{CreateRequest, Created, TEMPLATE_NAMES};

use crate::api::TemplateDto;

use super::{ApiError, AppState, Login};

/// Longest a template may take to arrive.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/templates", web::get().to(list));
}

async fn list(state: web::Data<AppState>, _: Login) -> Result<HttpResponse, ApiError> {
    let local: Vec<_> = state
        .store
        .view()
        .iter()
        .filter_map(|e| {
            e.manifest.template.as_ref().map(|t| {
                json!({
                    "name": e.manifest.name,
                    "title": e.manifest.title,
                    "template": TemplateDto::from(t),
                })
            })
        })
        .collect();
    let network: Vec<_> = state
        .peers
        .view()
        .network_catalog(&CatalogFilter::default(), None)
        .into_iter()
        .filter_map(|n| {
            n.entry.template.as_ref().map(|t| {
                json!({
                    "name": format!("{}/{}", n.peer.name, n.entry.name),
                    "peer": n.peer.name,
                    "title": n.entry.title,
                    "template": TemplateDto::from(t),
                })
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "builtin": TEMPLATE_NAMES,
        "local": local,
        "network": network,
    })))
}

/// Makes the workspace `request` asks for from `template`, shared by `peer`.
pub async fn create_from_peer(
    state: &AppState,
    mut request: CreateRequest,
    peer: &str,
    template: &str,
    by: &str,
) -> Result<Created, ApiError> {
    let shared = state
        .peers
        .view()
        .network_catalog(&CatalogFilter::default(), Some(peer))
        .into_iter()
        .find(|n| n.entry.name == template || n.entry.id.to_string() == template);
    let Some(shared) = shared else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "template-not-found",
            format!("no online peer `{peer}` shares a workspace `{template}` with this node (see `aienv ws templates`)"),
        ));
    };
    let Some(spec) = &shared.entry.template else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-a-template",
            format!("{peer}/{template} is shared, but not as a template"),
        ));
    };
    // Wrong or missing values are said before anything moves.
    spec.fill(&request.template_values).map_err(|message| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", message)
    })?;
    let fetched_as = format!(
        "template-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let job = state
        .transfers
        .enqueue(
            TransferKind::Clone,
            TransferRequest {
                peer: shared.peer.id.to_string(),
                workspace: shared.entry.id.to_string(),
                rename_to: Some(fetched_as.clone()),
                private: true,
                by: by.to_string(),
                placed: false,
                force: false,
            },
        )
        .await?;
    // Every change of the queue's view wakes this; nothing is polled.
    let mut views = state.transfers.subscribe();
    let finished = tokio::time::timeout(FETCH_TIMEOUT, async {
        loop {
            let done = views
                .borrow_and_update()
                .jobs
                .iter()
                .find(|j| j.id == job.id && j.state.is_finished())
                .cloned();
            if let Some(done) = done {
                return Some(done);
            }
            if views.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    let job = match finished {
        Ok(Some(job)) => job,
        Ok(None) => return Err(aienv_actors::transfer_queue::TransferError::Unavailable.into()),
        Err(_) => {
            let _ = state.transfers.cancel(&job.id.to_string()).await;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "template-unavailable",
                format!(
                    "{peer}/{template} did not arrive within {} s",
                    FETCH_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    if job.state != JobState::Done {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "template-unavailable",
            format!(
                "fetching {peer}/{template} {}: {}",
                job.state.as_str(),
                job.error.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    request.template = Some(fetched_as.clone());
    // The content is the peer's: the new workspace runs confined like a clone of it.
    request.from_peer = Some(shared.peer.name.clone());
    let created = state.store.create(request, by).await;
    // The fetched copy was only the source; its chunks stay known to this node's index.
    if let Err(error) = state.store.delete(&fetched_as, by).await {
        tracing::warn!(%error, workspace = %fetched_as, "could not remove a fetched template");
    }
    let mut created = created?;
    created.notes.insert(
        0,
        format!(
            "fetched template {peer}/{template}: {} bytes from the network",
            job.progress.bytes_from_peers
        ),
    );
    Ok(created)
}
