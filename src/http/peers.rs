//! `GET /api/v1/catalog` (what this node shares), `GET /api/v1/peers` and
//! `GET /api/v1/network/catalog` (everything online peers share, merged and searchable).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use aienv_actors::catalog::{CatalogEntry, CatalogFilter};
use aienv_actors::model::WorkspaceKind;
use aienv_actors::workspace_store::Viewer;

use crate::api::{CatalogDto, CatalogEntryDto, NetworkEntryDto, PeerDto};
use crate::peer_client::PEER_HEADER;

use super::{ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/catalog", web::get().to(catalog))
        .route("/peers", web::get().to(peers))
        .route("/network/catalog", web::get().to(network_catalog));
}

/// Who an unauthenticated request may see as: anyone on the LAN, and the node naming itself
/// in `X-Aienv-Peer` (by id, and by the name it announces, since `sharing.peers` may list
/// either).
pub(super) fn peer_viewers(state: &AppState, request: &HttpRequest) -> Vec<Viewer> {
    let mut viewers = vec![Viewer::Anonymous];
    if let Some(id) = asking_peer(request) {
        let peers = state.peers.view();
        if let Some(peer) = peers.peers.iter().find(|p| p.id.to_string() == id) {
            viewers.push(Viewer::Peer(peer.name.clone()));
        }
        viewers.push(Viewer::Peer(id));
    }
    viewers
}

/// The node id a request names in `X-Aienv-Peer`, if any.
pub(super) fn asking_peer(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get(PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// This node's shared workspaces, as the asking node may see them: a node naming itself in
/// `X-Aienv-Peer` also sees what is shared with it by name. (Until TLS identities land, the
/// header is the peer's word; `peers` mode narrows listings, it does not authenticate.)
async fn catalog(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let viewers = peer_viewers(&state, &request);
    let view = state.store.view();
    let items = view
        .iter()
        .filter(|entry| viewers.iter().any(|v| v.may_see(&entry.manifest)))
        .map(|entry| CatalogEntryDto::from(&CatalogEntry::from_manifest(&entry.manifest)))
        .collect();
    HttpResponse::Ok().json(CatalogDto {
        node_id: state.node.id,
        digest: aienv_actors::catalog::digest(&view).0,
        items,
    })
}

async fn peers(state: web::Data<AppState>) -> HttpResponse {
    let view = state.peers.view();
    HttpResponse::Ok().json(
        view.peers
            .iter()
            .map(|p| PeerDto::from(&**p))
            .collect::<Vec<_>>(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    tool: Option<String>,
    lang: Option<String>,
    tag: Option<String>,
    q: Option<String>,
    peer: Option<String>,
}

async fn network_catalog(
    state: web::Data<AppState>,
    query: web::Query<NetworkQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let kind = match query.kind.as_deref() {
        Some(value) => Some(WorkspaceKind::parse(value).ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                format!("type `{value}` is not a workspace type"),
            )
        })?),
        None => None,
    };
    let filter = CatalogFilter {
        kind,
        tool: query.tool,
        language: query.lang,
        tag: query.tag,
        text: query.q,
    };
    let entries = state
        .peers
        .view()
        .network_catalog(&filter, query.peer.as_deref());
    Ok(HttpResponse::Ok().json(
        entries
            .iter()
            .map(|e| NetworkEntryDto {
                peer_id: e.peer.id,
                peer_name: e.peer.name.clone(),
                peer_url: e.peer.base_url(),
                workspace: CatalogEntryDto::from(&e.entry),
            })
            .collect::<Vec<_>>(),
    ))
}
