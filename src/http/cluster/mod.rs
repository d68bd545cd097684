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
//! `GET /placements` lists where this node's environments run; `GET /cluster` is the cluster
//! view. Status, stop, logs, terminal and tools of a placed environment go to the peer
//! through this node, and a sync brings its results back.

mod ci;
mod lending;
mod placing;

use actix_web::web;

pub(super) use lending::lent_tool;
pub use lending::Loans;
pub(super) use placing::{
    choose_peer, place, placed_logs, placed_terminal, placed_tool, relay_tool, stop_placed,
    sync_results, PeerTool,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster/offer", web::get().to(lending::offer))
        .service(
            web::resource("/cluster/fit")
                .app_data(
                    web::JsonConfig::default()
                        .limit(crate::api::MAX_FIT_BYTES)
                        .error_handler(|error, _| super::json_error(error).into()),
                )
                .route(web::post().to(lending::fit)),
        )
        .route("/cluster/runs", web::post().to(lending::start_lent))
        .route("/cluster/ci", web::post().to(ci::start))
        .route("/cluster/ci/{run}", web::get().to(ci::status))
        .route("/cluster/ci/{run}/log", web::get().to(ci::log))
        .route("/cluster/ci/{run}/junit/{index}", web::get().to(ci::junit))
        .route(
            "/cluster/runs/{ws}/{env}",
            web::get().to(lending::lent_status),
        )
        .route(
            "/cluster/runs/{ws}/{env}/stop",
            web::post().to(lending::stop_lent),
        )
        .route(
            "/cluster/runs/{ws}/{env}/logs",
            web::get().to(lending::lent_logs),
        )
        .route(
            "/cluster/runs/{ws}/{env}/terminal",
            web::get().to(lending::lent_terminal),
        )
        .route(
            "/workspaces/{ws}/placement",
            web::get().to(placing::placement),
        )
        .route("/placements", web::get().to(placing::placements))
        .route("/cluster", web::get().to(placing::cluster));
}

/// Whether trusted peers may place work here (`cluster.accept`).
#[derive(Debug, Clone, Copy)]
pub struct ClusterPolicy {
    /// `cluster.accept: trusted`.
    pub accept: bool,
}
