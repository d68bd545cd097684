//! The Rust client of a node's REST API v1, used by the CLI, the tests and any other program.
//! Needs an actix (or plain tokio `LocalSet`) runtime, as `awc` does.

use std::path::Path;
use std::time::Duration;

use awc::http::header::{AUTHORIZATION, CONTENT_TYPE};
use awc::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use aienv_actors::identity::{KeyFingerprint, NodeIdentity};

use crate::api::{
    CreateWorkspace, CreatedDto, ErrorBody, Health, NodeInfo, PairRequest, PairingCodeDto,
    RevisionDetail, RevisionDto, ShareRequest, TransferDto, TransferRequestDto, TrustRequest,
    TrustedPeerDto, UpdateWorkspace, WorkspaceDetail, WorkspaceDto, WorkspacePage,
};

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The node's admin token.
    Token(String),
    /// A node user.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach the node at {url}: {message}")]
    Connect {
        /// Node URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The node answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine code.
        code: String,
        /// Message.
        message: String,
        /// Structured details.
        details: Option<serde_json::Value>,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Machine code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub use crate::api::{ListQuery, NetworkQuery};

/// A client of one node.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: awc::Client,
    credentials: Option<Credentials>,
}

type Response = awc::ClientResponse;

/// How long a client keeps an idle connection to reuse: less than the node's
/// [`crate::serve::KEEP_ALIVE`]. awc's default equals it, and a request sent about 15 s after
/// the last one could go out on a connection the node was closing just then, failing with
/// "connector has been disconnected".
pub const POOL_IDLE: Duration = Duration::from_secs(10);
const _: () = assert!(POOL_IDLE.as_secs() < crate::serve::KEEP_ALIVE.as_secs());

impl Client {
    /// A client of the node at `base` over plain HTTP (such as `http://127.0.0.1:37779`,
    /// the node's loopback listener).
    pub fn new(base: &str, credentials: Option<Credentials>) -> Client {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .disable_redirects()
            .connector(awc::Connector::new().conn_keep_alive(POOL_IDLE))
            .finish();
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            credentials,
        }
    }

    /// A client of the node at `https://...` that accepts only the node key `key` (the key
    /// id `aienv node` shows on that machine): no certificate authority is involved.
    pub fn with_key(base: &str, credentials: Option<Credentials>, key: KeyFingerprint) -> Client {
        let config = crate::tls::client_config(None, key)
            .expect("a client configuration without a client certificate");
        Client::over_tls(base, credentials, config)
    }

    /// A client that calls as the node `identity` (presenting its certificate, as nodes call
    /// each other) the node at `base` holding `key`.
    pub fn as_node(
        base: &str,
        credentials: Option<Credentials>,
        identity: &NodeIdentity,
        key: KeyFingerprint,
    ) -> Client {
        let config = crate::tls::client_config(Some(identity), key)
            .expect("the node's key and certificate make a client configuration");
        Client::over_tls(base, credentials, config)
    }

    fn over_tls(
        base: &str,
        credentials: Option<Credentials>,
        config: rustls::ClientConfig,
    ) -> Client {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .disable_redirects()
            .connector(
                awc::Connector::new()
                    .rustls_0_23(std::sync::Arc::new(config))
                    .conn_keep_alive(POOL_IDLE),
            )
            .finish();
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            credentials,
        }
    }

    /// The node URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// The `Authorization` header value for the client's credentials.
    fn authorization(&self) -> Option<String> {
        match &self.credentials {
            Some(Credentials::Token(token)) => Some(format!("Bearer {token}")),
            Some(Credentials::Basic { user, password }) => {
                let encoded = crate::auth::base64_encode(format!("{user}:{password}").as_bytes());
                Some(format!("Basic {encoded}"))
            }
            None => None,
        }
    }

    fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let request = self.http.request(method, self.url(path));
        match self.authorization() {
            Some(value) => request.insert_header((AUTHORIZATION, value)),
            None => request,
        }
    }

    fn connect_error(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Connect {
            url: self.base.clone(),
            message: error.to_string(),
        }
    }

    async fn check(&self, mut response: Response) -> Result<Response, ClientError> {
        if response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response
            .body()
            .limit(1024 * 1024)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => Err(ClientError::Api {
                status,
                code: error.error.code,
                message: error.error.message,
                details: error.error.details,
            }),
            Err(_) => Err(ClientError::Api {
                status,
                code: "http-error".into(),
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
                details: None,
            }),
        }
    }

    async fn json<T: DeserializeOwned>(&self, response: Response) -> Result<T, ClientError> {
        let mut response = self.check(response).await?;
        let body = response
            .body()
            .limit(256 * 1024 * 1024)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn text(&self, response: Response) -> Result<String, ClientError> {
        let mut response = self.check(response).await?;
        let body = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        String::from_utf8(body.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends a request without a body.
    async fn send(&self, method: awc::http::Method, path: &str) -> Result<Response, ClientError> {
        self.request(method, path)
            .send()
            .await
            .map_err(|e| self.connect_error(e))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.send(awc::http::Method::GET, path).await?;
        self.json(response).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .request(method, path)
            .send_json(body)
            .await
            .map_err(|e| self.connect_error(e))?;
        self.json(response).await
    }

    async fn send_yaml(
        &self,
        method: awc::http::Method,
        path: &str,
        text: String,
    ) -> Result<WorkspaceDto, ClientError> {
        let response = self
            .request(method, path)
            .insert_header((CONTENT_TYPE, "application/yaml"))
            .send_body(text)
            .await
            .map_err(|e| self.connect_error(e))?;
        self.json(response).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get_json("/health").await
    }

    /// `GET /node`.
    pub async fn node(&self) -> Result<NodeInfo, ClientError> {
        self.get_json("/node").await
    }

    /// Known peers.
    pub async fn peers(&self) -> Result<Vec<crate::api::PeerDto>, ClientError> {
        self.get_json("/peers").await
    }

    /// Every trusted peer, seen or not.
    pub async fn trusted_peers(&self) -> Result<Vec<TrustedPeerDto>, ClientError> {
        self.get_json("/peers/trusted").await
    }

    /// Trusts a peer (id, key id or name); `key_id` is the key id the person compared.
    pub async fn trust_peer(
        &self,
        peer: &str,
        key_id: Option<&str>,
    ) -> Result<TrustedPeerDto, ClientError> {
        self.send_json(
            awc::http::Method::POST,
            &format!("/peers/{}/trust", segment(peer)),
            &TrustRequest {
                key_id: key_id.map(str::to_string),
            },
        )
        .await
    }

    /// Shows a new pairing code on this node.
    pub async fn pairing_code(&self) -> Result<PairingCodeDto, ClientError> {
        let response = self.send(awc::http::Method::POST, "/pairing").await?;
        self.json(response).await
    }

    /// Pairs with `peer` using the code it shows; both nodes then trust each other.
    pub async fn pair(&self, peer: &str, code: &str) -> Result<TrustedPeerDto, ClientError> {
        self.send_json(
            awc::http::Method::POST,
            &format!("/peers/{}/pair", segment(peer)),
            &PairRequest {
                code: code.to_string(),
            },
        )
        .await
    }

    /// Revokes trust in a peer.
    pub async fn untrust_peer(&self, peer: &str) -> Result<TrustedPeerDto, ClientError> {
        let response = self
            .send(
                awc::http::Method::DELETE,
                &format!("/peers/{}/trust", segment(peer)),
            )
            .await?;
        self.json(response).await
    }

    /// This node's catalog, as an anonymous LAN client sees it.
    pub async fn catalog(&self) -> Result<crate::api::CatalogDto, ClientError> {
        self.get_json("/catalog").await
    }

    /// Everything online peers share, filtered.
    pub async fn network_catalog(
        &self,
        query: &NetworkQuery,
    ) -> Result<Vec<crate::api::NetworkEntryDto>, ClientError> {
        let query = query_string(query);
        self.get_json(&format!("/network/catalog{query}")).await
    }

    /// One page of workspaces.
    pub async fn list(&self, query: &ListQuery) -> Result<WorkspacePage, ClientError> {
        let query = query_string(query);
        self.get_json(&format!("/workspaces{query}")).await
    }

    /// Every workspace matching `query`, following pages.
    pub async fn list_all(&self, query: &ListQuery) -> Result<Vec<WorkspaceDto>, ClientError> {
        let mut query = query.clone();
        query.limit = Some(aienv_actors::workspace_store::MAX_PAGE);
        let mut all = Vec::new();
        loop {
            let page = self.list(&query).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    /// One workspace by id or name.
    pub async fn get(&self, workspace: &str) -> Result<WorkspaceDetail, ClientError> {
        self.get_json(&format!("/workspaces/{}", segment(workspace)))
            .await
    }

    /// Creates a workspace.
    pub async fn create(&self, body: &CreateWorkspace) -> Result<CreatedDto, ClientError> {
        self.send_json(awc::http::Method::POST, "/workspaces", body)
            .await
    }

    /// Changes metadata.
    pub async fn update(
        &self,
        workspace: &str,
        body: &UpdateWorkspace,
    ) -> Result<WorkspaceDto, ClientError> {
        let path = format!("/workspaces/{}", segment(workspace));
        self.send_json(awc::http::Method::PATCH, &path, body).await
    }

    /// `workspace.yaml` text.
    pub async fn manifest(&self, workspace: &str) -> Result<String, ClientError> {
        let response = self
            .send(
                awc::http::Method::GET,
                &format!("/workspaces/{}/manifest", segment(workspace)),
            )
            .await?;
        self.text(response).await
    }

    /// Replaces `workspace.yaml`.
    pub async fn put_manifest(
        &self,
        workspace: &str,
        text: String,
    ) -> Result<WorkspaceDto, ClientError> {
        let path = format!("/workspaces/{}/manifest", segment(workspace));
        self.send_yaml(awc::http::Method::PUT, &path, text).await
    }

    /// An environment's `environment.yaml` text.
    pub async fn environment(
        &self,
        workspace: &str,
        environment: &str,
    ) -> Result<String, ClientError> {
        let path = format!(
            "/workspaces/{}/environments/{}",
            segment(workspace),
            segment(environment)
        );
        let response = self.send(awc::http::Method::GET, &path).await?;
        self.text(response).await
    }

    /// Creates or replaces an environment.
    pub async fn put_environment(
        &self,
        workspace: &str,
        environment: &str,
        text: String,
    ) -> Result<WorkspaceDto, ClientError> {
        let path = format!(
            "/workspaces/{}/environments/{}",
            segment(workspace),
            segment(environment)
        );
        self.send_yaml(awc::http::Method::PUT, &path, text).await
    }

    /// Deletes a workspace.
    pub async fn delete(&self, workspace: &str) -> Result<(), ClientError> {
        let response = self
            .send(
                awc::http::Method::DELETE,
                &format!("/workspaces/{}", segment(workspace)),
            )
            .await?;
        self.check(response).await.map(|_| ())
    }

    /// Shares a workspace.
    pub async fn share(
        &self,
        workspace: &str,
        body: &ShareRequest,
    ) -> Result<WorkspaceDto, ClientError> {
        let path = format!("/workspaces/{}/share", segment(workspace));
        self.send_json(awc::http::Method::POST, &path, body).await
    }

    /// `GET /workspaces/{ws}/access`: owner, members, and what the caller may do.
    pub async fn access(&self, workspace: &str) -> Result<crate::api::AccessDto, ClientError> {
        self.get_json(&format!("/workspaces/{}/access", segment(workspace)))
            .await
    }

    /// `PUT /workspaces/{ws}/access`.
    pub async fn set_access(
        &self,
        workspace: &str,
        body: &crate::api::AccessUpdate,
    ) -> Result<crate::api::AccessDto, ClientError> {
        let path = format!("/workspaces/{}/access", segment(workspace));
        self.send_json(awc::http::Method::PUT, &path, body).await
    }

    /// Stops sharing a workspace.
    pub async fn unshare(&self, workspace: &str) -> Result<WorkspaceDto, ClientError> {
        let path = format!("/workspaces/{}/unshare", segment(workspace));
        let response = self.send(awc::http::Method::POST, &path).await?;
        self.json(response).await
    }

    /// Queues a clone or sync (`POST /transfers`).
    pub async fn start_transfer(
        &self,
        body: &TransferRequestDto,
    ) -> Result<TransferDto, ClientError> {
        self.send_json(awc::http::Method::POST, "/transfers", body)
            .await
    }

    /// `POST /workspaces/{ws}/push`: sends a clone's changes to its origin and waits for the
    /// origin to take them in.
    pub async fn push(
        &self,
        workspace: &str,
        force: bool,
    ) -> Result<crate::api::PushResultDto, ClientError> {
        let response = self
            .request(
                awc::http::Method::POST,
                &format!("/workspaces/{}/push", segment(workspace)),
            )
            .timeout(Duration::from_secs(7 * 3600))
            .send_json(&crate::api::PushAsk { force })
            .await
            .map_err(|e| self.connect_error(e))?;
        self.json(response).await
    }

    /// Every transfer job, newest first.
    pub async fn transfers(&self) -> Result<Vec<TransferDto>, ClientError> {
        self.get_json("/transfers").await
    }

    /// One transfer job.
    pub async fn transfer(&self, id: &str) -> Result<TransferDto, ClientError> {
        self.get_json(&format!("/transfers/{}", segment(id))).await
    }

    /// Cancels an active transfer; removes a finished one (then returns `None`).
    pub async fn cancel_transfer(&self, id: &str) -> Result<Option<TransferDto>, ClientError> {
        let response = self
            .send(
                awc::http::Method::DELETE,
                &format!("/transfers/{}", segment(id)),
            )
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.json(response).await.map(Some)
    }

    /// Retries a failed or cancelled transfer.
    pub async fn retry_transfer(&self, id: &str) -> Result<TransferDto, ClientError> {
        let response = self
            .send(
                awc::http::Method::POST,
                &format!("/transfers/{}/retry", segment(id)),
            )
            .await?;
        self.json(response).await
    }

    /// History, oldest first.
    pub async fn revisions(&self, workspace: &str) -> Result<Vec<RevisionDto>, ClientError> {
        self.get_json(&format!("/workspaces/{}/revisions", segment(workspace)))
            .await
    }

    /// One revision.
    pub async fn revision(
        &self,
        workspace: &str,
        revision: u64,
    ) -> Result<RevisionDetail, ClientError> {
        self.get_json(&format!(
            "/workspaces/{}/revisions/{revision}",
            segment(workspace)
        ))
        .await
    }

    /// Restores a revision.
    pub async fn restore(
        &self,
        workspace: &str,
        revision: u64,
    ) -> Result<WorkspaceDto, ClientError> {
        let path = format!(
            "/workspaces/{}/revisions/{revision}/restore",
            segment(workspace)
        );
        let response = self.send(awc::http::Method::POST, &path).await?;
        self.json(response).await
    }

    /// The workspace's transfer snapshot, as encoded on the wire (decode it with
    /// `aienv_actors::snapshot::Snapshot::decode`).
    pub async fn snapshot(&self, workspace: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/workspaces/{}/snapshot", segment(workspace));
        let response = self.send(awc::http::Method::GET, &path).await?;
        let mut response = self.check(response).await?;
        let body = response
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(body.to_vec())
    }

    /// Downloads an export to `target`, written atomically; `progress` gets bytes so far.
    pub async fn export(
        &self,
        workspace: &str,
        target: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        use std::io::Write;
        let path = format!("/workspaces/{}/export", segment(workspace));
        let response = self
            .request(awc::http::Method::GET, &path)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        let mut response = self.check(response).await?;
        let io = |source| ClientError::Io {
            path: target.display().to_string(),
            source,
        };
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let temp = dir.join(format!(
            ".{}.partial",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut file = std::fs::File::create(&temp).map_err(io)?;
        let mut total = 0u64;
        let result = async {
            while let Some(chunk) = response.next().await {
                let chunk: Bytes =
                    chunk.map_err(|e| ClientError::Decode(format!("download interrupted: {e}")))?;
                file.write_all(&chunk).map_err(io)?;
                total += chunk.len() as u64;
                progress(total);
            }
            file.sync_all().map_err(io)?;
            std::fs::rename(&temp, target).map_err(io)?;
            Ok(total)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Uploads the archive at `source` as a new workspace, named `rename_to` when given.
    pub async fn import(
        &self,
        source: &Path,
        rename_to: Option<&str>,
        progress: impl FnMut(u64) + 'static,
    ) -> Result<CreatedDto, ClientError> {
        let file = std::fs::File::open(source).map_err(|e| ClientError::Io {
            path: source.display().to_string(),
            source: e,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let query = match rename_to {
            Some(name) => format!("?as={}", segment(name)),
            None => String::new(),
        };
        let stream = file_stream(file, progress);
        let response = self
            .request(
                awc::http::Method::POST,
                &format!("/workspaces/import{query}"),
            )
            .timeout(Duration::from_secs(24 * 3600))
            .insert_header((CONTENT_TYPE, "application/zstd"))
            .insert_header((awc::http::header::CONTENT_LENGTH, size))
            .send_stream(stream)
            .await
            .map_err(|e| self.connect_error(e))?;
        self.json(response).await
    }

    /// `POST /workspaces/{ws}/run`.
    pub async fn run(
        &self,
        workspace: &str,
        request: &crate::api::RunRequest,
    ) -> Result<Vec<crate::api::EnvironmentStatusDto>, ClientError> {
        let timeout = Duration::from_secs(request.timeout_seconds.unwrap_or(600) + 30);
        let response = self
            .request(
                awc::http::Method::POST,
                &format!("/workspaces/{}/run", segment(workspace)),
            )
            .timeout(timeout)
            .send_json(request)
            .await
            .map_err(|e| self.connect_error(e))?;
        Ok(self.json::<Environments>(response).await?.environments)
    }

    /// `GET` a tool's path (`/w/<workspace>/<tool>/…`) with the client's credentials, as
    /// scripts reach tools through the node: the status and the body as text.
    pub async fn tool_get(&self, path: &str) -> Result<(u16, String), ClientError> {
        let mut request = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if let Some(value) = self.authorization() {
            request = request.insert_header((AUTHORIZATION, value));
        }
        let mut response = request.send().await.map_err(|e| self.connect_error(e))?;
        let body = response
            .body()
            .limit(16 << 20)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((
            response.status().as_u16(),
            String::from_utf8_lossy(&body).to_string(),
        ))
    }

    /// `POST /workspaces/{ws}/run` with `on`: places the environment on a trusted peer.
    pub async fn run_on(
        &self,
        workspace: &str,
        request: &crate::api::RunRequest,
    ) -> Result<crate::api::PlacedDto, ClientError> {
        let response = self
            .request(
                awc::http::Method::POST,
                &format!("/workspaces/{}/run", segment(workspace)),
            )
            .timeout(Duration::from_secs(60))
            .send_json(request)
            .await
            .map_err(|e| self.connect_error(e))?;
        self.json(response).await
    }

    /// `GET /workspaces/{ws}/placement`: how every trusted online peer would run it.
    pub async fn placement(
        &self,
        workspace: &str,
        environment: Option<&str>,
    ) -> Result<crate::api::RankingDto, ClientError> {
        let query = environment
            .map(|e| format!("?environment={}", segment(e)))
            .unwrap_or_default();
        self.get_json(&format!(
            "/workspaces/{}/placement{query}",
            segment(workspace)
        ))
        .await
    }

    /// `GET /placements`: where this node's environments run on peers.
    pub async fn placements(&self) -> Result<Vec<crate::api::PlacementDto>, ClientError> {
        self.get_json("/placements").await
    }

    /// `GET /cluster/offer`: what this node lends and what peers' environments hold here.
    pub async fn cluster_offer(&self) -> Result<crate::api::OfferDto, ClientError> {
        self.get_json("/cluster/offer").await
    }

    /// `GET /templates`: built-in templates, this node's, and those peers share.
    pub async fn templates(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/templates").await
    }

    /// `POST /ci/runs`: starts a headless run.
    pub async fn ci_start(
        &self,
        request: &crate::api::CiRunRequest,
    ) -> Result<crate::api::CiRunDto, ClientError> {
        self.send_json(awc::http::Method::POST, "/ci/runs", request)
            .await
    }

    /// `GET /ci/runs`.
    pub async fn ci_runs(
        &self,
        workspace: Option<&str>,
    ) -> Result<Vec<crate::api::CiRunDto>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Runs {
            runs: Vec<crate::api::CiRunDto>,
        }
        let query = workspace
            .map(|w| format!("?workspace={}", segment(w)))
            .unwrap_or_default();
        Ok(self
            .get_json::<Runs>(&format!("/ci/runs{query}"))
            .await?
            .runs)
    }

    /// `GET /ci/runs/{run}`.
    pub async fn ci_run(&self, run: &str) -> Result<crate::api::CiRunDto, ClientError> {
        self.get_json(&format!("/ci/runs/{}", segment(run))).await
    }

    /// `GET /ci/runs/{run}/log?offset=N`: the log from `offset`, where to ask next, and the
    /// run's state when it answered.
    pub async fn ci_log(
        &self,
        run: &str,
        offset: u64,
    ) -> Result<(Vec<u8>, u64, String), ClientError> {
        let path = format!("/ci/runs/{}/log?offset={offset}", segment(run));
        let response = self.send(awc::http::Method::GET, &path).await?;
        let mut response = self.check(response).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let next = header("x-next-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let state = header("x-run-state").unwrap_or_default();
        let body = response
            .body()
            .limit(2 << 20)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((body.to_vec(), next, state))
    }

    /// `GET /ci/runs/{run}/junit/{index}`: a JUnit report the run's command wrote.
    pub async fn ci_junit(&self, run: &str, index: usize) -> Result<Vec<u8>, ClientError> {
        let path = format!("/ci/runs/{}/junit/{index}", segment(run));
        let response = self.send(awc::http::Method::GET, &path).await?;
        let mut response = self.check(response).await?;
        let body = response
            .body()
            .limit(16 << 20)
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(body.to_vec())
    }

    /// `POST /workspaces/{ws}/stop`.
    pub async fn stop(
        &self,
        workspace: &str,
        environment: Option<&str>,
    ) -> Result<Vec<crate::api::EnvironmentStatusDto>, ClientError> {
        let body = crate::api::StopRequest {
            environment: environment.map(str::to_string),
        };
        let response = self
            .request(
                awc::http::Method::POST,
                &format!("/workspaces/{}/stop", segment(workspace)),
            )
            .timeout(Duration::from_secs(180))
            .send_json(&body)
            .await
            .map_err(|e| self.connect_error(e))?;
        Ok(self.json::<Environments>(response).await?.environments)
    }

    /// `GET /workspaces/{ws}/status`.
    pub async fn status(
        &self,
        workspace: &str,
    ) -> Result<Vec<crate::api::EnvironmentStatusDto>, ClientError> {
        Ok(self
            .get_json::<Environments>(&format!("/workspaces/{}/status", segment(workspace)))
            .await?
            .environments)
    }

    /// `GET /runtimes`: every environment that ran since the node started.
    pub async fn runtimes(&self) -> Result<Vec<crate::api::EnvironmentStatusDto>, ClientError> {
        Ok(self
            .get_json::<Environments>("/runtimes")
            .await?
            .environments)
    }

    /// `GET /runtimes`: the runtime plugins on the node, each asked `check` now.
    pub async fn plugins(&self) -> Result<Vec<crate::api::PluginDto>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Plugins {
            #[serde(default)]
            plugins: Vec<crate::api::PluginDto>,
        }
        Ok(self.get_json::<Plugins>("/runtimes").await?.plugins)
    }

    /// `GET /slurm/partitions`: the lab's Slurm partitions and what is free in them.
    pub async fn slurm_partitions(&self) -> Result<crate::api::SlurmPartitionsDto, ClientError> {
        self.get_json("/slurm/partitions").await
    }

    /// `POST /workspaces/{ws}/detect`.
    pub async fn detect(&self, workspace: &str) -> Result<crate::api::DetectionDto, ClientError> {
        let response = self
            .send(
                awc::http::Method::POST,
                &format!("/workspaces/{}/detect", segment(workspace)),
            )
            .await?;
        self.json(response).await
    }

    /// `POST /session/ticket`: a link that opens the dashboard signed in, once.
    pub async fn sign_in_link(&self) -> Result<crate::api::SignInLinkDto, ClientError> {
        let response = self
            .send(awc::http::Method::POST, "/session/ticket")
            .await?;
        self.json(response).await
    }

    /// `POST /workspaces/{ws}/tools/{tool}/ticket`: a link that opens the tool signed in,
    /// once.
    pub async fn tool_ticket(
        &self,
        workspace: &str,
        tool: &str,
    ) -> Result<crate::api::SignInLinkDto, ClientError> {
        let response = self
            .send(
                awc::http::Method::POST,
                &format!(
                    "/workspaces/{}/tools/{}/ticket",
                    segment(workspace),
                    segment(tool)
                ),
            )
            .await?;
        self.json(response).await
    }

    /// `GET /workspaces/{ws}/logs`: as a stream of text chunks (endless with `follow`).
    pub async fn logs(
        &self,
        workspace: &str,
        environment: Option<&str>,
        tool: Option<&str>,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<
        futures_util::stream::LocalBoxStream<'static, Result<Bytes, ClientError>>,
        ClientError,
    > {
        let mut query = vec![format!("follow={follow}")];
        if let Some(environment) = environment {
            query.push(format!("environment={}", segment(environment)));
        }
        if let Some(tool) = tool {
            query.push(format!("tool={}", segment(tool)));
        }
        if let Some(tail) = tail {
            query.push(format!("tail={tail}"));
        }
        let response = self
            .request(
                awc::http::Method::GET,
                &format!(
                    "/workspaces/{}/logs?{}",
                    segment(workspace),
                    query.join("&")
                ),
            )
            .timeout(Duration::from_secs(if follow {
                365 * 24 * 3600
            } else {
                120
            }))
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        let response = self.check(response).await?;
        Ok(response
            .map(|chunk| chunk.map_err(|e| ClientError::Decode(e.to_string())))
            .boxed_local())
    }

    /// Opens the terminal WebSocket of a running environment.
    pub async fn terminal(
        &self,
        workspace: &str,
        environment: Option<&str>,
        cols: u16,
        rows: u16,
    ) -> Result<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>, ClientError> {
        let mut path = format!(
            "/workspaces/{}/terminal?cols={cols}&rows={rows}",
            segment(workspace)
        );
        if let Some(environment) = environment {
            path.push_str(&format!("&environment={}", segment(environment)));
        }
        let url = self.url(&path).replacen("http", "ws", 1);
        let mut request = self.http.ws(url).max_frame_size(16 << 20);
        if let Some(value) = self.authorization() {
            request = request.header(AUTHORIZATION, value);
        }
        match request.connect().await {
            Ok((_, framed)) => Ok(framed),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                // Ask again over plain HTTP to read the API's error body.
                let response = self.send(awc::http::Method::GET, &path).await?;
                self.check(response).await?;
                Err(ClientError::Api {
                    status: status.as_u16(),
                    code: "websocket-refused".into(),
                    message: format!("the node refused the terminal ({status})"),
                    details: None,
                })
            }
            Err(other) => Err(self.connect_error(other)),
        }
    }

    /// Opens the live event stream; yields each message as JSON.
    pub async fn events(
        &self,
    ) -> Result<
        futures_util::stream::LocalBoxStream<'static, Result<serde_json::Value, ClientError>>,
        ClientError,
    > {
        let url = self.url("/events").replacen("http", "ws", 1);
        let mut request = self.http.ws(url).max_frame_size(512 * 1024 * 1024);
        if let Some(value) = self.authorization() {
            request = request.header(AUTHORIZATION, value);
        }
        let (response, framed) = request.connect().await.map_err(|e| match e {
            awc::error::WsClientError::InvalidResponseStatus(status) => ClientError::Api {
                status: status.as_u16(),
                code: "websocket-refused".into(),
                message: format!("the node refused the event stream ({status})"),
                details: None,
            },
            other => self.connect_error(other),
        })?;
        drop(response);
        Ok(framed
            .filter_map(|frame| async move {
                match frame {
                    Ok(awc::ws::Frame::Text(bytes)) => Some(
                        serde_json::from_slice(&bytes)
                            .map_err(|e| ClientError::Decode(e.to_string())),
                    ),
                    Ok(awc::ws::Frame::Close(_)) => None,
                    Ok(_) => None,
                    Err(e) => Some(Err(ClientError::Decode(e.to_string()))),
                }
            })
            .boxed_local())
    }
}

fn file_stream(
    mut file: std::fs::File,
    mut progress: impl FnMut(u64) + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    use std::io::Read;
    let mut sent = 0u64;
    futures_util::stream::poll_fn(move |_| {
        let mut buffer = vec![0u8; 256 * 1024];
        match file.read(&mut buffer) {
            Ok(0) => std::task::Poll::Ready(None),
            Ok(n) => {
                buffer.truncate(n);
                sent += n as u64;
                progress(sent);
                std::task::Poll::Ready(Some(Ok(Bytes::from(buffer))))
            }
            Err(e) => std::task::Poll::Ready(Some(Err(e))),
        }
    })
}

#[derive(serde::Deserialize)]
struct Environments {
    environments: Vec<crate::api::EnvironmentStatusDto>,
}

/// Percent-encodes one path segment or query value.
fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn query_string<Q: Serialize>(query: &Q) -> String {
    let value = serde_json::to_value(query).expect("queries serialize");
    let mut parts = Vec::new();
    if let serde_json::Value::Object(map) = value {
        for (key, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            parts.push(format!("{key}={}", segment(&text)));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A connection idle for longer than [`POOL_IDLE`] is not sent on again: the node may be
    /// closing it. (With awc's default the second request went out on the first connection.)
    #[actix_rt::test]
    async fn an_idle_connection_is_not_reused_past_the_pool_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut byte = [0u8; 1];
                    while stream.read(&mut byte).is_ok_and(|read| read == 1) {
                        request.push(byte[0]);
                        if request.ends_with(b"\r\n\r\n") {
                            request.clear();
                            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                            stream.write_all(answer.as_bytes()).unwrap();
                        }
                    }
                });
            }
        });
        let client = Client::new(&format!("http://{address}"), None);
        let ask = || async {
            let response = client
                .send(awc::http::Method::GET, "/health")
                .await
                .unwrap();
            assert_eq!(client.text(response).await.unwrap(), "{}");
        };
        ask().await;
        ask().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
        actix_rt::time::sleep(POOL_IDLE + Duration::from_millis(500)).await;
        ask().await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a fresh connection after idling"
        );
    }
}
