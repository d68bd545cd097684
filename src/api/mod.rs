//! The REST API's JSON shapes (v1), shared by the server and the client, one module per area
//! like `http/`. They match `schemas/openapi.yaml`; conversions from the actors' types are
//! explicit. Everything is re-exported here: clients name `aienv::api::WorkspaceDto`.

use serde::{Deserialize, Serialize};

mod ci;
mod cluster;
mod node;
mod peers;
mod runtimes;
mod session;
mod transfers;
mod workspaces;

pub use ci::*;
pub use cluster::*;
pub use node::*;
pub use peers::*;
pub use runtimes::*;
pub use session::*;
pub use transfers::*;
pub use workspaces::*;

/// The one error shape: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine code, human message and optional structured details of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine code such as `workspace-not-found`.
    pub code: String,
    /// One-line human message.
    pub message: String,
    /// Structured details (field errors, locations), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
}
