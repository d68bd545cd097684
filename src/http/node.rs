//! `GET /api/v1/health` and `GET /api/v1/node`.

use actix_web::{web, HttpResponse};

use aienv_actors::workspace_store::{ListFilter, Viewer};

use crate::api::{DatagramCounters, DiscoveryDto, NodeInfo, ResourcesDto};

use super::{AppState, Caller};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/node", web::get().to(node));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

async fn node(state: web::Data<AppState>, caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(node_info(&state, &caller))
}

/// The node's facts as the caller may see them.
pub fn node_info(state: &AppState, caller: &Caller) -> NodeInfo {
    let facts = &state.node;
    let view = state.store.view();
    let announcer = state.announcer.view();
    let workspaces = match caller.viewer() {
        Viewer::Owner => view.len(),
        viewer => {
            view.list(&ListFilter {
                viewer,
                limit: Some(1),
                ..ListFilter::default()
            })
            .total
        }
    };
    NodeInfo {
        id: facts.id,
        name: facts.name.clone(),
        key_id: facts.key.to_readable(),
        key_fingerprint: facts.key.to_hex(),
        certificate_sha256: facts.certificate_sha256.clone(),
        legacy_id: facts.legacy_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: caller
            .is_logged_in()
            .then(|| facts.data_dir.display().to_string()),
        started: facts.started,
        uptime_seconds: facts.started_instant.elapsed().as_secs(),
        workspaces,
        startup_repairs: caller.is_logged_in().then(|| facts.startup_repairs.clone()),
        resources: ResourcesDto::from(&announcer.resources),
        discovery: DiscoveryDto {
            interfaces: announcer.interfaces.clone(),
            problem: announcer.problem.clone(),
            catalog_digest: announcer.catalog_digest.clone(),
            shared_workspaces: announcer.shared_workspaces,
            datagrams: DatagramCounters::from(&announcer.counters),
            key_conflicts: state.peers.view().key_conflicts,
        },
    }
}
