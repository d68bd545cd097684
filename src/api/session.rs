//! Sign-in links for the dashboard and for tools on their own origins.

use serde::{Deserialize, Serialize};

/// A link that signs a browser in once: into the dashboard, or into a tool's own origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignInLinkDto {
    /// Opens the dashboard or the tool signed in; works once.
    pub url: String,
    /// Seconds the link stays valid.
    pub expires_in_seconds: u64,
}
