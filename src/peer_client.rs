//! The PeerRegistry's HTTP side: fetches a peer's catalog and a static peer's node facts over
//! mutual TLS. The actors crate knows no HTTP; it calls this through the `PeerClient` trait.
//! [`PeerConnections`] is the one way this node opens a connection to a peer: an awc client
//! per peer key, whose TLS configuration presents this node's certificate and accepts only
//! that key.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aienv_actors::catalog::CatalogEntry;
use aienv_actors::identity::{KeyFingerprint, NodeIdentity};
use aienv_actors::peer_registry::{
    LocalFuture, PeerCallError, PeerClient, PeerEndpoint, RemoteNode,
};

use crate::api::{CatalogDto, NodeInfo};
use crate::tls;

/// Largest catalog accepted from a peer.
const MAX_CATALOG_BYTES: usize = 64 * 1024 * 1024;
/// Most cached clients (one per peer key); past it the cache starts over.
const MAX_CLIENTS: usize = 1024;

/// awc clients for calls to peers, one per peer key, each with its own connection pool.
pub struct PeerConnections {
    identity: Arc<NodeIdentity>,
    timeout: Duration,
    connections: usize,
    clients: RefCell<HashMap<KeyFingerprint, awc::Client>>,
}

impl PeerConnections {
    /// Clients that time out after `timeout` and keep up to `connections` per peer.
    pub fn new(identity: Arc<NodeIdentity>, timeout: Duration, connections: usize) -> Self {
        PeerConnections {
            identity,
            timeout,
            connections,
            clients: RefCell::new(HashMap::new()),
        }
    }

    /// The client for the peer holding `key`.
    pub fn client(&self, key: KeyFingerprint) -> awc::Client {
        let mut clients = self.clients.borrow_mut();
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let config = tls::client_config(Some(&self.identity), key)
            .expect("the node's own key and certificate make a client configuration");
        let client = self.build(config);
        clients.insert(key, client.clone());
        client
    }

    /// A one-off client that accepts any key and records the one presented in `seen`.
    pub fn recording(&self, seen: Arc<Mutex<Option<KeyFingerprint>>>) -> awc::Client {
        let config = tls::client_config_recording(&self.identity, seen)
            .expect("the node's own key and certificate make a client configuration");
        self.build(config)
    }

    fn build(&self, config: rustls::ClientConfig) -> awc::Client {
        awc::Client::builder()
            .timeout(self.timeout)
            .disable_redirects()
            .connector(
                awc::Connector::new()
                    .rustls_0_23(Arc::new(config))
                    .limit(self.connections)
                    .timeout(Duration::from_secs(5))
                    .conn_keep_alive(crate::client::POOL_IDLE),
            )
            .finish()
    }
}

/// Classifies a failed call: a handshake refused for the key is a conflict, not an outage.
pub fn call_error(error: impl std::fmt::Display) -> PeerCallError {
    let message = error.to_string();
    match message.find(tls::KEY_MISMATCH) {
        Some(_) => PeerCallError::KeyMismatch {
            presented: message
                .rsplit("presented key ")
                .next()
                .and_then(|rest| KeyFingerprint::parse(rest.split_whitespace().next()?).ok()),
            message,
        },
        None => PeerCallError::Failed(message),
    }
}

/// [`PeerClient`] over [`PeerConnections`].
pub struct HttpPeerClient {
    connections: PeerConnections,
}

impl HttpPeerClient {
    /// A client with short timeouts: a slow peer must not hold up discovery.
    pub fn new(identity: Arc<NodeIdentity>) -> HttpPeerClient {
        HttpPeerClient {
            connections: PeerConnections::new(identity, Duration::from_secs(10), 4),
        }
    }
}

impl PeerClient for HttpPeerClient {
    fn catalog(
        &self,
        peer: &PeerEndpoint,
    ) -> LocalFuture<Result<Vec<CatalogEntry>, PeerCallError>> {
        let request = self
            .connections
            .client(peer.key)
            .get(format!("{}/api/v1/catalog", peer.url));
        Box::pin(async move {
            let mut response = request.send().await.map_err(call_error)?;
            if !response.status().is_success() {
                return Err(PeerCallError::Failed(format!("HTTP {}", response.status())));
            }
            let body = response
                .body()
                .limit(MAX_CATALOG_BYTES)
                .await
                .map_err(call_error)?;
            let catalog: CatalogDto = serde_json::from_slice(&body)
                .map_err(|e| PeerCallError::Failed(format!("invalid catalog: {e}")))?;
            catalog
                .items
                .iter()
                .map(|item| {
                    item.to_entry().ok_or_else(|| {
                        PeerCallError::Failed(format!(
                            "invalid catalog: unknown type `{}`",
                            item.kind
                        ))
                    })
                })
                .collect()
        })
    }

    fn node(
        &self,
        base_url: &str,
        expected: Option<KeyFingerprint>,
    ) -> LocalFuture<Result<RemoteNode, PeerCallError>> {
        let seen = Arc::new(Mutex::new(expected));
        let client = match expected {
            Some(key) => self.connections.client(key),
            None => self.connections.recording(seen.clone()),
        };
        let request = client.get(format!("{base_url}/api/v1/node"));
        let https = base_url.starts_with("https://");
        Box::pin(async move {
            if !https {
                return Err(PeerCallError::Failed(
                    "peers are reached over TLS only: write the static peer as https://host:port"
                        .into(),
                ));
            }
            let mut response = request.send().await.map_err(call_error)?;
            if !response.status().is_success() {
                return Err(PeerCallError::Failed(format!("HTTP {}", response.status())));
            }
            let body = response
                .body()
                .limit(1024 * 1024)
                .await
                .map_err(call_error)?;
            let node: NodeInfo = serde_json::from_slice(&body)
                .map_err(|e| PeerCallError::Failed(format!("invalid node answer: {e}")))?;
            let key = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| PeerCallError::Failed("no certificate was presented".into()))?;
            Ok(RemoteNode {
                id: node.id,
                name: node.name,
                resources: node.resources.to_summary(),
                catalog_digest: node.discovery.catalog_digest,
                shared_workspaces: node.discovery.shared_workspaces,
                uptime_seconds: node.uptime_seconds,
                key,
            })
        })
    }
}
