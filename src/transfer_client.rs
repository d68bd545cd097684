//! The TransferQueue's HTTP side: a peer's snapshot and chunk batches over mutual TLS. The
//! actors crate knows no HTTP; it calls this through the `TransferClient` trait.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use aienv_actors::chunk_frame;
use aienv_actors::chunk_parts;
use aienv_actors::identity::NodeIdentity;
use aienv_actors::peer_registry::{LocalFuture, PeerEndpoint};
use aienv_actors::snapshot::Hash;
use aienv_actors::transfer_queue::{ByteStream, FetchError, ManifestBody, TransferClient};

use crate::api::ErrorBody;
use crate::peer_client::PeerConnections;

/// Largest snapshot accepted (the snapshot limits check the decoded size again).
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;
/// A chunk stream that sends nothing for this long is broken.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`TransferClient`] over [`PeerConnections`].
pub struct HttpTransferClient {
    connections: PeerConnections,
}

impl HttpTransferClient {
    /// A client with a pool of up to 64 connections per source.
    pub fn new(identity: Arc<NodeIdentity>) -> HttpTransferClient {
        HttpTransferClient {
            connections: PeerConnections::new(identity, Duration::from_secs(60), 64),
        }
    }
}

impl TransferClient for HttpTransferClient {
    fn manifest(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        known: Option<Hash>,
        since: Option<Hash>,
    ) -> LocalFuture<Result<Option<ManifestBody>, FetchError>> {
        let query = since
            .map(|root| format!("?since={root}"))
            .unwrap_or_default();
        let mut request = self.connections.client(peer.key).get(format!(
            "{}/api/v1/workspaces/{workspace}/snapshot{query}",
            peer.url
        ));
        if let Some(root) = known {
            request = request.insert_header(("if-none-match", format!("\"{root}\"")));
        }
        Box::pin(async move {
            let response = request.send().await.map_err(send_error)?;
            if response.status().as_u16() == 304 {
                return Ok(None);
            }
            let mut response = succeeded(response).await?;
            let delta = response
                .headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/vnd.aienv.snapshot-delta+"));
            let body = response
                .body()
                .limit(MAX_SNAPSHOT_BYTES)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| FetchError::Network(format!("reading the manifest: {e}")))?;
            Ok(Some(if delta {
                ManifestBody::Delta(body)
            } else {
                ManifestBody::Full(body)
            }))
        })
    }

    fn chunks(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        hashes: &[Hash],
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>> {
        let mut body = Vec::with_capacity(hashes.len() * 32);
        for hash in hashes {
            body.extend_from_slice(&hash.0);
        }
        let limit = chunk_frame::max_response_len(hashes.len());
        self.frames(peer, workspace, "chunks", body, limit, compress)
    }

    fn parts(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        asked: &[(Hash, u32)],
    ) -> LocalFuture<Result<Vec<u8>, FetchError>> {
        let mut body = Vec::with_capacity(asked.len() * 32);
        for (hash, _) in asked {
            body.extend_from_slice(&hash.0);
        }
        let limit = chunk_parts::max_list_len(asked);
        let request = self
            .connections
            .client(peer.key)
            .post(format!(
                "{}/api/v1/workspaces/{workspace}/chunks/parts",
                peer.url
            ))
            .content_type("application/octet-stream");
        Box::pin(async move {
            let response = request.send_body(body).await.map_err(send_error)?;
            let mut response = succeeded(response).await?;
            response
                .body()
                .limit(limit)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| FetchError::Network(format!("reading the part lists: {e}")))
        })
    }

    fn ranges(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        ranges: &[chunk_parts::Range],
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>> {
        let limit = chunk_frame::max_response_len(ranges.len());
        let body = chunk_parts::encode_ranges(ranges);
        self.frames(peer, workspace, "chunks/ranges", body, limit, compress)
    }
}

impl HttpTransferClient {
    /// Posts `body` to `…/workspaces/{workspace}/{what}` and streams the frames that come
    /// back, at most `limit` bytes, breaking off after [`IDLE_TIMEOUT`] of silence.
    fn frames(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        what: &str,
        body: Vec<u8>,
        limit: usize,
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>> {
        let request = self
            .connections
            .client(peer.key)
            .post(format!(
                "{}/api/v1/workspaces/{workspace}/{what}?compress={}",
                peer.url,
                if compress { "zstd" } else { "none" }
            ))
            .content_type("application/octet-stream");
        Box::pin(async move {
            let response = request.send_body(body).await.map_err(send_error)?;
            let response = succeeded(response).await?;
            // The state carries the response and the bytes received so far.
            let stream =
                futures_util::stream::unfold(Some((response, 0usize)), move |state| async move {
                    let (mut response, mut received) = state?;
                    let item = match tokio::time::timeout(IDLE_TIMEOUT, response.next()).await {
                        Ok(Some(Ok(piece))) => {
                            received += piece.len();
                            if received > limit {
                                Err(FetchError::Network(
                                    "the source sent more than was asked for".into(),
                                ))
                            } else {
                                Ok(piece)
                            }
                        }
                        Ok(Some(Err(error))) => Err(FetchError::Network(error.to_string())),
                        Ok(None) => return None,
                        Err(_) => Err(FetchError::Network(format!("no data for {IDLE_TIMEOUT:?}"))),
                    };
                    let next = item.is_ok().then_some((response, received));
                    Some((item, next))
                });
            Ok(Box::pin(stream) as ByteStream)
        })
    }
}

/// The response when it is a success; otherwise the error its status and body say.
async fn succeeded<S>(
    mut response: awc::ClientResponse<S>,
) -> Result<awc::ClientResponse<S>, FetchError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    if response.status().is_success() {
        return Ok(response);
    }
    let body = response.body().limit(64 * 1024).await.unwrap_or_default();
    Err(status_error(
        response.status().as_u16(),
        response.headers(),
        &body,
    ))
}

/// A connection that failed; one refused for the peer's key is not retried.
fn send_error(error: impl std::fmt::Display) -> FetchError {
    match crate::peer_client::call_error(error) {
        aienv_actors::peer_registry::PeerCallError::KeyMismatch { message, .. } => {
            FetchError::Refused(message)
        }
        other => FetchError::Network(other.to_string()),
    }
}

fn status_error(
    status: u16,
    headers: &actix_web::http::header::HeaderMap,
    body: &[u8],
) -> FetchError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    match status {
        429 | 503 => {
            let seconds = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            FetchError::Busy(Duration::from_secs(seconds.clamp(1, 60)))
        }
        403 | 404 => FetchError::Refused(format!("HTTP {status}: {message}")),
        _ => FetchError::Network(format!("HTTP {status}: {message}")),
    }
}
