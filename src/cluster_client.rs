//! The lab cluster's calls to peers, over mutual TLS through [`PeerConnections`]: the
//! Placements actor's polling ([`ClusterClient`]) and the calls handlers make (offer, fit,
//! run, stop, logs, tool relays). Each call pins the key of the peer it means.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use aienv_actors::cluster::{ClusterClient, NodeOffer, RemoteRun};
use aienv_actors::identity::NodeIdentity;
use aienv_actors::peer_registry::{LocalFuture, PeerCallError, PeerEndpoint};

use crate::api::{ErrorBody, FitDto, FitRequest, OfferDto, PeerRunRequest, RemoteRunDto};
use crate::peer_client::{call_error, PeerConnections};

/// Largest answer accepted from a peer's cluster API (logs are streamed, not counted here).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// [`ClusterClient`] over [`PeerConnections`].
pub struct HttpClusterClient {
    connections: PeerConnections,
}

impl HttpClusterClient {
    /// Short timeouts: a silent peer must turn into `lost`, not a hang.
    pub fn new(identity: Arc<NodeIdentity>) -> HttpClusterClient {
        HttpClusterClient {
            connections: PeerConnections::new(identity, Duration::from_secs(5), 4),
        }
    }
}

impl ClusterClient for HttpClusterClient {
    fn run_status(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        environment: &str,
    ) -> LocalFuture<Result<Option<RemoteRun>, PeerCallError>> {
        let request = self.connections.client(peer.key).get(format!(
            "{}/api/v1/cluster/runs/{workspace}/{environment}",
            peer.url
        ));
        Box::pin(async move {
            let mut response = request.send().await.map_err(call_error)?;
            if response.status() == awc::http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let body = response
                .body()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(call_error)?;
            if !response.status().is_success() {
                return Err(PeerCallError::Failed(refusal(response.status(), &body)));
            }
            let run: RemoteRunDto = serde_json::from_slice(&body)
                .map_err(|e| PeerCallError::Failed(format!("invalid run state: {e}")))?;
            Ok(Some(run.to_remote()))
        })
    }

    fn offer(&self, peer: &PeerEndpoint) -> LocalFuture<Result<NodeOffer, PeerCallError>> {
        let request = self
            .connections
            .client(peer.key)
            .get(format!("{}/api/v1/cluster/offer", peer.url));
        Box::pin(async move {
            let mut response = request.send().await.map_err(call_error)?;
            let body = response
                .body()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(call_error)?;
            if !response.status().is_success() {
                return Err(PeerCallError::Failed(refusal(response.status(), &body)));
            }
            let offer: OfferDto = serde_json::from_slice(&body)
                .map_err(|e| PeerCallError::Failed(format!("invalid offer: {e}")))?;
            Ok(offer.to_offer())
        })
    }
}

/// A peer's refusal in its own words (`{"error": {"message"}}`), else the status.
pub fn refusal(status: awc::http::StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| format!("HTTP {status}"))
}

thread_local! {
    /// Connections for the calls handlers make, one set per worker thread.
    static CONNECTIONS: RefCell<Option<PeerConnections>> = const { RefCell::new(None) };
}

/// A client for `peer` on this worker, presenting this node's certificate and accepting
/// only the peer's key.
pub fn client(identity: &Arc<NodeIdentity>, peer: &PeerEndpoint) -> awc::Client {
    CONNECTIONS.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                PeerConnections::new(identity.clone(), Duration::from_secs(300), 64)
            })
            .client(peer.key)
    })
}

/// What a call to a peer ended with.
#[derive(Debug)]
pub enum CallError {
    /// The peer could not be reached or answered nonsense.
    Unreachable(String),
    /// The peer answered with an error: its status and words.
    Refused(awc::http::StatusCode, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(message) | CallError::Refused(_, message) => {
                f.write_str(message)
            }
        }
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    request: awc::ClientRequest,
    body: Option<&impl serde::Serialize>,
    timeout: Duration,
) -> Result<T, CallError> {
    let request = request.timeout(timeout);
    let sent = match body {
        Some(body) => request.send_json(body).await,
        None => request.send().await,
    };
    let mut response = sent.map_err(|e| CallError::Unreachable(e.to_string()))?;
    let bytes = response
        .body()
        .limit(MAX_ANSWER_BYTES)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(CallError::Refused(
            response.status(),
            refusal(response.status(), &bytes),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| CallError::Unreachable(format!("invalid answer: {e}")))
}

/// `GET /cluster/offer` of a peer.
pub async fn offer(
    identity: &Arc<NodeIdentity>,
    peer: &PeerEndpoint,
) -> Result<OfferDto, CallError> {
    let request = client(identity, peer).get(format!("{}/api/v1/cluster/offer", peer.url));
    call(request, None::<&()>, Duration::from_secs(5)).await
}

/// `POST /cluster/fit` of a peer.
pub async fn fit(
    identity: &Arc<NodeIdentity>,
    peer: &PeerEndpoint,
    body: &FitRequest,
) -> Result<FitDto, CallError> {
    let request = client(identity, peer).post(format!("{}/api/v1/cluster/fit", peer.url));
    call(request, Some(body), Duration::from_secs(5)).await
}

/// `POST /cluster/runs` of a peer.
pub async fn start_run(
    identity: &Arc<NodeIdentity>,
    peer: &PeerEndpoint,
    body: &PeerRunRequest,
) -> Result<RemoteRunDto, CallError> {
    let request = client(identity, peer).post(format!("{}/api/v1/cluster/runs", peer.url));
    call(request, Some(body), Duration::from_secs(30)).await
}

/// `POST /cluster/runs/{ws}/{env}/stop` of a peer.
pub async fn stop_run(
    identity: &Arc<NodeIdentity>,
    peer: &PeerEndpoint,
    workspace: Uuid,
    environment: &str,
) -> Result<RemoteRunDto, CallError> {
    let request = client(identity, peer).post(format!(
        "{}/api/v1/cluster/runs/{workspace}/{environment}/stop",
        peer.url
    ));
    call(request, None::<&()>, Duration::from_secs(60)).await
}

/// [`CiRemote`](aienv_actors::ci::CiRemote) over [`PeerConnections`]: `aienv ci --on PEER`.
pub struct HttpCiRemote {
    connections: PeerConnections,
}

impl HttpCiRemote {
    /// Calls that wait at most 30 s (a run is followed by polling, never by one long call).
    pub fn new(identity: Arc<NodeIdentity>) -> HttpCiRemote {
        HttpCiRemote {
            connections: PeerConnections::new(identity, Duration::from_secs(30), 4),
        }
    }

    async fn bytes(
        request: awc::ClientRequest,
        body: Option<&crate::api::PeerCiRequest>,
    ) -> Result<bytes::Bytes, PeerCallError> {
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(call_error)?;
        let bytes = response
            .body()
            .limit(MAX_ANSWER_BYTES * 4)
            .await
            .map_err(call_error)?;
        if !response.status().is_success() {
            return Err(PeerCallError::Failed(refusal(response.status(), &bytes)));
        }
        Ok(bytes)
    }

    fn status_of(bytes: &[u8]) -> Result<aienv_actors::ci::RemoteCiStatus, PeerCallError> {
        let run: crate::api::CiRunDto = serde_json::from_slice(bytes)
            .map_err(|e| PeerCallError::Failed(format!("invalid run: {e}")))?;
        let state = aienv_actors::ci::CiState::parse(&run.state)
            .ok_or_else(|| PeerCallError::Failed(format!("unknown run state `{}`", run.state)))?;
        Ok(aienv_actors::ci::RemoteCiStatus {
            id: run.id,
            state,
            environment: run.environment,
            backend: run.backend,
            exit_code: run.exit_code,
            reason: run.reason,
            error: run.error,
            notes: run.notes,
            timings: run.timings,
            junit: run
                .junit
                .into_iter()
                .map(|j| aienv_actors::ci::JunitReport {
                    path: j.path,
                    tests: j.tests,
                    failures: j.failures,
                    errors: j.errors,
                    skipped: j.skipped,
                })
                .collect(),
        })
    }
}

impl aienv_actors::ci::CiRemote for HttpCiRemote {
    fn start(
        &self,
        peer: &PeerEndpoint,
        request: &aienv_actors::ci::RemoteCiRequest,
    ) -> LocalFuture<Result<aienv_actors::ci::RemoteCiStatus, PeerCallError>> {
        let call = self
            .connections
            .client(peer.key)
            .post(format!("{}/api/v1/cluster/ci", peer.url));
        let body = crate::api::PeerCiRequest {
            workspace_id: request.workspace_id,
            workspace_name: request.workspace_name.clone(),
            environment: request.environment.clone(),
            command: request.command.clone(),
            pull: request.pull,
            timeout_seconds: request.timeout_seconds,
            user: request.user.clone(),
        };
        Box::pin(async move { Self::status_of(&Self::bytes(call, Some(&body)).await?) })
    }

    fn status(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
    ) -> LocalFuture<Result<aienv_actors::ci::RemoteCiStatus, PeerCallError>> {
        let call = self
            .connections
            .client(peer.key)
            .get(format!("{}/api/v1/cluster/ci/{run}", peer.url));
        Box::pin(async move { Self::status_of(&Self::bytes(call, None).await?) })
    }

    fn log(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
        offset: u64,
    ) -> LocalFuture<Result<Vec<u8>, PeerCallError>> {
        let call = self.connections.client(peer.key).get(format!(
            "{}/api/v1/cluster/ci/{run}/log?offset={offset}",
            peer.url
        ));
        Box::pin(async move { Ok(Self::bytes(call, None).await?.to_vec()) })
    }

    fn junit(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
        index: usize,
    ) -> LocalFuture<Result<Vec<u8>, PeerCallError>> {
        let call = self.connections.client(peer.key).get(format!(
            "{}/api/v1/cluster/ci/{run}/junit/{index}",
            peer.url
        ));
        Box::pin(async move { Ok(Self::bytes(call, None).await?.to_vec()) })
    }
}
