//! The HTTP layer: REST API v1 and the event gateway, on actix-web. Handlers stay thin: they
//! check who is asking, convert DTOs, and call actor handles. Routes are wired per area in
//! one `configure` function each.

mod ci;
mod cluster;
mod error;
mod events;
mod extract;
mod list_cache;
mod members;
mod node;
mod pairing;
mod peers;
mod permissions;
mod push;
mod runtimes;
mod session;
mod templates;
mod tokens;
mod tool_origin;
mod tool_proxy;
mod tool_tickets;
mod transfers;
mod ui;
mod upstream;
pub mod webhook;
mod workspaces;

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use aienv_actors::discovery::AnnouncerHandle;
use aienv_actors::event_bus::EventBus;
use aienv_actors::identity::KeyFingerprint;
use aienv_actors::peer_registry::PeerRegistryHandle;
use aienv_actors::runtime_supervisor::RuntimeSupervisorHandle;
use aienv_actors::shutdown::Shutdown;
use aienv_actors::transfer_queue::TransferQueueHandle;
use aienv_actors::workspace_store::WorkspaceStoreHandle;

use crate::auth::{AccessPolicy, Authenticator};

pub use cluster::{ClusterPolicy, Loans};
pub use error::ApiError;
pub use extract::{Caller, Login};
pub use list_cache::ListCache;
pub use pairing::Pairing;
pub use push::{PushGrants, PUSH_TYPE};
pub use session::{Sessions, SIGN_IN_PATH};
pub use tool_origin::{OriginSettings, ToolOrigins};
pub use tool_tickets::ToolTickets;
pub use transfers::{TestHooks, Uploads, CHUNKS_TYPE, SNAPSHOT_TYPE};

/// Everything handlers need, shared by all workers.
pub struct AppState {
    /// The workspace store.
    pub store: WorkspaceStoreHandle,
    /// The peer registry.
    pub peers: PeerRegistryHandle,
    /// The announcer (resources, discovery status).
    pub announcer: AnnouncerHandle,
    /// The transfer queue.
    pub transfers: TransferQueueHandle,
    /// The runtime supervisor.
    pub runtimes: RuntimeSupervisorHandle,
    /// Where this node's environments run on peers.
    pub placements: aienv_actors::cluster::PlacementsHandle,
    /// Whether trusted peers may place work here.
    pub cluster: ClusterPolicy,
    /// Runs accepted for peers that have not started yet.
    pub loans: Loans,
    /// Limits on chunk uploads to peers.
    pub uploads: Arc<Uploads>,
    /// Snapshots served recently, for answering later requests with deltas.
    pub snapshot_history: aienv_actors::snapshot_history::SnapshotHistory,
    /// Clones being pushed, readable by their origin meanwhile.
    pub pushing: PushGrants,
    /// The event bus.
    pub bus: EventBus,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Workspaces' owners and members.
    pub workspace_access: crate::access::AccessBook,
    /// Bounds on password checks.
    pub login_gate: crate::login_gate::LoginGate,
    /// Network rules.
    pub access: AccessPolicy,
    /// The node-wide shutdown signal.
    pub shutdown: Shutdown,
    /// Facts about this node.
    pub node: NodeFacts,
    /// Request size limits.
    pub limits: Limits,
    /// Serialized listing pages of the current view.
    pub list_cache: ListCache,
    /// Dashboard sessions.
    pub sessions: Sessions,
    /// The pairing code shown now.
    pub pairing: Pairing,
    /// Tickets and sessions for tools' own origins.
    pub tool_tickets: ToolTickets,
    /// The listeners of tools' own origins.
    pub tool_origins: ToolOrigins,
    /// CI runs.
    pub ci: aienv_actors::ci::CiRunsHandle,
    /// Incoming webhooks (`ci.hooks`).
    pub ci_hooks: Arc<Vec<crate::config::IncomingHook>>,
    /// The node's key and certificate (for calls to peers made by handlers).
    pub identity: Arc<aienv_actors::identity::NodeIdentity>,
    /// Serve the dashboard from this directory instead of the embedded copy (`--dev`).
    pub ui_dir: Option<PathBuf>,
}

/// Static facts about the node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node id.
    pub id: Uuid,
    /// The node's key.
    pub key: KeyFingerprint,
    /// SHA-256 of its TLS certificate, colon-separated hex.
    pub certificate_sha256: String,
    /// Whether the id is a legacy UUID.
    pub legacy_id: bool,
    /// Node name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Start time.
    pub started: DateTime<Utc>,
    /// Start instant, for uptime.
    pub started_instant: std::time::Instant,
    /// What the workspace store repaired at start-up.
    pub startup_repairs: Vec<String>,
}

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// JSON and YAML bodies.
    pub max_body_bytes: usize,
    /// Archive uploads.
    pub max_upload_bytes: u64,
}

/// Registers every route and the extractor configuration.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let max_body = state.limits.max_body_bytes;
        cfg.app_data(state)
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(|error, _| json_error(error).into()),
            )
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(|error, _| {
                ApiError::bad_request("invalid-query", error.to_string()).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|error, _| {
                ApiError::bad_request("invalid-path", error.to_string()).into()
            }))
            .service(
                web::scope("/api/v1")
                    .configure(node::configure)
                    .configure(workspaces::configure)
                    .configure(members::configure)
                    .configure(peers::configure)
                    .configure(pairing::configure)
                    .configure(session::configure)
                    .configure(events::configure)
                    .configure(transfers::configure)
                    .configure(push::configure)
                    .configure(runtimes::configure)
                    .configure(cluster::configure)
                    .configure(ci::configure)
                    .configure(templates::configure)
                    .default_service(web::to(not_found)),
            )
            .configure(session::configure_sign_in)
            .configure(tool_proxy::configure)
            .configure(ui::configure);
    }
}

async fn not_found(request: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "route-not-found",
        format!("no route {} {}", request.method(), request.path()),
    ))
}

pub(super) fn json_error(error: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match &error {
        E::OverflowKnownLength { length, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("request body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        E::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("request body exceeds the limit of {limit} bytes"),
        ),
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the body as application/json",
        ),
        E::Deserialize(inner) => {
            let (code, status) = if inner.is_syntax() || inner.is_eof() {
                ("malformed-json", StatusCode::BAD_REQUEST)
            } else {
                ("invalid-field", StatusCode::UNPROCESSABLE_ENTITY)
            };
            ApiError {
                status,
                code,
                message: format!("request body: {inner}"),
                details: Some(serde_json::json!({"line": inner.line(), "column": inner.column()})),
            }
        }
        _ => ApiError::bad_request("malformed-json", format!("request body: {error}")),
    }
}

/// Refuses requests from public addresses (unless allowed) and with a `Host` that is not this
/// node (DNS rebinding), before any route runs.
pub async fn network_guard(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(state) = request.app_data::<web::Data<AppState>>() {
        if let Some(peer) = request.peer_addr() {
            if !state.access.allows_peer(peer.ip()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "address-not-allowed",
                    format!(
                        "requests from the public address {} are refused; set http.allow_public to accept them",
                        peer.ip()
                    ),
                )
                .into());
            }
        }
        if let Some(host) = request
            .headers()
            .get(actix_web::http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            if !state.access.allows_host(host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "host-not-allowed",
                    format!(
                        "`{host}` is not a name of this node; add it to http.hostnames to accept it"
                    ),
                )
                .into());
            }
        }
    }
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.call(request).await;
    }
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.path().to_string();
    let response = next.call(request).await?;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(response)
}
