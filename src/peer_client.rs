//! The PeerRegistry's HTTP side: fetches a peer's catalog and node facts with awc. The actors
//! crate knows no HTTP; it calls this through the `PeerClient` trait.

use std::time::Duration;

use uuid::Uuid;

use aienv_actors::catalog::CatalogEntry;
use aienv_actors::peer_registry::{LocalFuture, PeerClient, RemoteNode};

use crate::api::{CatalogDto, NodeInfo};

/// Header naming the asking node, so `peers`-mode sharing can answer per node.
pub const PEER_HEADER: &str = "x-aienv-peer";

/// Largest catalog accepted from a peer.
const MAX_CATALOG_BYTES: usize = 64 * 1024 * 1024;

/// awc-based [`PeerClient`].
pub struct HttpPeerClient {
    http: awc::Client,
}

impl HttpPeerClient {
    /// A client with short timeouts: a slow peer must not hold up discovery.
    pub fn new() -> HttpPeerClient {
        HttpPeerClient {
            http: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .disable_redirects()
                .finish(),
        }
    }
}

impl Default for HttpPeerClient {
    fn default() -> HttpPeerClient {
        HttpPeerClient::new()
    }
}

impl PeerClient for HttpPeerClient {
    fn catalog(
        &self,
        base_url: &str,
        viewer: Uuid,
    ) -> LocalFuture<Result<Vec<CatalogEntry>, String>> {
        let request = self
            .http
            .get(format!("{base_url}/api/v1/catalog"))
            .insert_header((PEER_HEADER, viewer.to_string()));
        Box::pin(async move {
            let mut response = request.send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let body = response
                .body()
                .limit(MAX_CATALOG_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            let catalog: CatalogDto =
                serde_json::from_slice(&body).map_err(|e| format!("invalid catalog: {e}"))?;
            catalog
                .items
                .iter()
                .map(|item| {
                    item.to_entry()
                        .ok_or_else(|| format!("invalid catalog: unknown type `{}`", item.kind))
                })
                .collect()
        })
    }

    fn node(&self, base_url: &str) -> LocalFuture<Result<RemoteNode, String>> {
        let request = self.http.get(format!("{base_url}/api/v1/node"));
        Box::pin(async move {
            let mut response = request.send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let body = response
                .body()
                .limit(1024 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            let node: NodeInfo =
                serde_json::from_slice(&body).map_err(|e| format!("invalid node answer: {e}"))?;
            Ok(RemoteNode {
                id: node.id,
                name: node.name,
                resources: node.resources.to_summary(),
                catalog_digest: node.discovery.catalog_digest,
                shared_workspaces: node.discovery.shared_workspaces,
                uptime_seconds: node.uptime_seconds,
            })
        })
    }
}
