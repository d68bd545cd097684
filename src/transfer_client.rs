//! The TransferQueue's HTTP side: a peer's snapshot and chunk batches over awc. The actors
//! crate knows no HTTP; it calls this through the `TransferClient` trait.

use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use aienv_actors::chunk_frame;
use aienv_actors::peer_registry::LocalFuture;
use aienv_actors::snapshot::Hash;
use aienv_actors::transfer_queue::{ByteStream, FetchError, TransferClient};

use crate::api::ErrorBody;
use crate::peer_client::PEER_HEADER;

/// Largest snapshot accepted (the snapshot limits check the decoded size again).
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;
/// A chunk stream that sends nothing for this long is broken.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// awc-based [`TransferClient`].
pub struct HttpTransferClient {
    http: awc::Client,
}

impl HttpTransferClient {
    /// A client with one connection pool for all sources.
    pub fn new() -> HttpTransferClient {
        HttpTransferClient {
            http: awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .disable_redirects()
                .connector(awc::Connector::new().limit(64))
                .finish(),
        }
    }
}

impl Default for HttpTransferClient {
    fn default() -> HttpTransferClient {
        HttpTransferClient::new()
    }
}

impl TransferClient for HttpTransferClient {
    fn manifest(
        &self,
        base_url: &str,
        workspace: Uuid,
        viewer: Uuid,
        known: Option<Hash>,
    ) -> LocalFuture<Result<Option<Vec<u8>>, FetchError>> {
        let mut request = self
            .http
            .get(format!("{base_url}/api/v1/workspaces/{workspace}/snapshot"))
            .insert_header((PEER_HEADER, viewer.to_string()));
        if let Some(root) = known {
            request = request.insert_header(("if-none-match", format!("\"{root}\"")));
        }
        Box::pin(async move {
            let mut response = request
                .send()
                .await
                .map_err(|e| FetchError::Network(e.to_string()))?;
            if response.status().as_u16() == 304 {
                return Ok(None);
            }
            if !response.status().is_success() {
                let body = response.body().limit(64 * 1024).await.unwrap_or_default();
                return Err(status_error(
                    response.status().as_u16(),
                    response.headers(),
                    &body,
                ));
            }
            response
                .body()
                .limit(MAX_SNAPSHOT_BYTES)
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| FetchError::Network(format!("reading the manifest: {e}")))
        })
    }

    fn chunks(
        &self,
        base_url: &str,
        workspace: Uuid,
        viewer: Uuid,
        hashes: &[Hash],
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>> {
        let mut body = Vec::with_capacity(hashes.len() * 32);
        for hash in hashes {
            body.extend_from_slice(&hash.0);
        }
        let limit = chunk_frame::max_response_len(hashes.len());
        let request = self
            .http
            .post(format!(
                "{base_url}/api/v1/workspaces/{workspace}/chunks?compress={}",
                if compress { "zstd" } else { "none" }
            ))
            .insert_header((PEER_HEADER, viewer.to_string()))
            .content_type("application/octet-stream");
        Box::pin(async move {
            let mut response = request
                .send_body(body)
                .await
                .map_err(|error| FetchError::Network(error.to_string()))?;
            if !response.status().is_success() {
                let text = response.body().limit(64 * 1024).await.unwrap_or_default();
                return Err(status_error(
                    response.status().as_u16(),
                    response.headers(),
                    &text,
                ));
            }
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
                                Ok(piece.to_vec())
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
