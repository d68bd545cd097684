//! `GET /api/v1/catalog` (what this node shares), `GET /api/v1/peers` and
//! `GET /api/v1/network/catalog` (everything online peers share, merged and searchable).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use aienv_actors::catalog::{CatalogEntry, CatalogFilter};
use aienv_actors::model::WorkspaceKind;
use aienv_actors::workspace_store::Viewer;

use aienv_actors::identity::KeyFingerprint;
use aienv_actors::peer_registry::TrustedPeer;

use crate::api::{
    CatalogDto, CatalogEntryDto, NetworkEntryDto, NetworkQuery, PeerDto, TrustRequest,
    TrustedPeerDto,
};
use crate::tls::PeerKey;

use super::{ApiError, AppState, Login};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/catalog", web::get().to(catalog))
        .route("/peers", web::get().to(peers))
        .route("/peers/trusted", web::get().to(trusted))
        .route("/peers/{peer}/trust", web::post().to(trust))
        .route("/peers/{peer}/trust", web::delete().to(untrust))
        .route("/network/catalog", web::get().to(network_catalog));
}

/// Every peer a person trusts, seen or not (admin and users).
async fn trusted(state: web::Data<AppState>, _login: Login) -> HttpResponse {
    let view = state.peers.view();
    HttpResponse::Ok().json(
        view.trusted
            .iter()
            .map(TrustedPeerDto::from)
            .collect::<Vec<_>>(),
    )
}

/// Trusts a peer (by id, key id or name), after an optional comparison of its key id.
async fn trust(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: Option<web::Json<TrustRequest>>,
) -> Result<HttpResponse, ApiError> {
    super::permissions::require_admin(&state, &login.0, "trust peers")?;
    let confirm_key = match body.and_then(|b| b.into_inner().key_id) {
        Some(text) => Some(KeyFingerprint::parse(&text).map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-key-id",
                error.to_string(),
            )
        })?),
        None => None,
    };
    let record = state.peers.trust(&path, confirm_key, login.name()).await?;
    Ok(HttpResponse::Ok().json(TrustedPeerDto::from(&record)))
}

/// Revokes trust in a peer: from the next request on, it sees only what the LAN sees.
async fn untrust(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    super::permissions::require_admin(&state, &login.0, "revoke trust in peers")?;
    let record = state.peers.untrust(&path).await?;
    Ok(HttpResponse::Ok().json(TrustedPeerDto::from(&record)))
}

/// Who a request without a login may see as: anyone on the LAN; and, when it comes over
/// mutual TLS from a key a person trusts, that peer, under the names `sharing.peers` may list
/// for it (its id, its key id, and the name it had when it was trusted). Nothing the request
/// says about itself counts: no header, no announced name.
pub(super) fn peer_viewers(state: &AppState, request: &HttpRequest) -> Vec<Viewer> {
    let mut viewers = vec![Viewer::Anonymous];
    if let Some(trusted) = trusted_caller(state, request) {
        viewers.push(Viewer::Peer(trusted.id.to_string()));
        viewers.push(Viewer::Peer(trusted.key.to_readable()));
        viewers.push(Viewer::Peer(trusted.name));
    }
    viewers
}

/// The key a caller proved over mutual TLS, if any.
pub(super) fn caller_key(request: &HttpRequest) -> Option<KeyFingerprint> {
    request.conn_data::<PeerKey>().map(|key| key.0)
}

/// The trusted peer calling, if the caller's key is trusted.
pub(super) fn trusted_caller(state: &AppState, request: &HttpRequest) -> Option<TrustedPeer> {
    let key = caller_key(request)?;
    state.peers.view().trusted_by_key(&key).cloned()
}

/// This node's shared workspaces, as the asking node may see them: a trusted peer calling
/// over mutual TLS also sees what is shared with it by name, id or key id.
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
        digest: aienv_actors::catalog::digest(&view, &state.peers.view().trusted).0,
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
