//! How the TransferQueue reaches peers: the [`TransferClient`] trait, implemented over HTTP by
//! the `aienv` package (this crate knows no HTTP).

use std::time::Duration;

use uuid::Uuid;

use crate::peer_registry::{LocalFuture, PeerEndpoint};

/// Pieces of a response body, as the HTTP client received them; an error ends the stream.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, FetchError>>>>;
use crate::snapshot::Hash;

/// Why a request to a source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The source is at its upload limit; ask again after the delay.
    #[error("busy (retry after {0:?})")]
    Busy(Duration),
    /// The source does not share this workspace (any more) with this node.
    #[error("{0}")]
    Refused(String),
    /// The connection failed or broke.
    #[error("{0}")]
    Network(String),
}

/// A snapshot as a source sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestBody {
    /// The whole snapshot (`application/vnd.aienv.snapshot+msgpack+zstd`).
    Full(Vec<u8>),
    /// Changes from the snapshot named by `since`
    /// (`application/vnd.aienv.snapshot-delta+msgpack+zstd`).
    Delta(Vec<u8>),
}

impl ManifestBody {
    /// Bytes received.
    pub fn len(&self) -> usize {
        match self {
            ManifestBody::Full(bytes) | ManifestBody::Delta(bytes) => bytes.len(),
        }
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Transfer requests to one peer, over mutual TLS to the key the endpoint names.
pub trait TransferClient {
    /// `GET {base}/api/v1/workspaces/{workspace}/snapshot[?since=<root>]`: the snapshot, or
    /// `None` when its root is still `known` (HTTP 304). With `since` (the root of a snapshot
    /// this node holds), the source may answer with a delta from it.
    fn manifest(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        known: Option<Hash>,
        since: Option<Hash>,
    ) -> LocalFuture<Result<Option<ManifestBody>, FetchError>>;

    /// `POST {base}/api/v1/workspaces/{workspace}/chunks`: the frames for `hashes` as a
    /// stream of byte pieces, as they arrive.
    fn chunks(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        hashes: &[Hash],
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>>;

    /// `POST {base}/api/v1/workspaces/{workspace}/chunks/parts`: the part-list answer for
    /// `asked` (chunk hashes and sizes), whole. A source that does not offer parts answers
    /// `Refused` (HTTP 404); the caller then fetches whole chunks.
    fn parts(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        asked: &[(Hash, u32)],
    ) -> LocalFuture<Result<Vec<u8>, FetchError>>;

    /// `POST {base}/api/v1/workspaces/{workspace}/chunks/ranges`: one frame per range, as a
    /// stream of byte pieces.
    fn ranges(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        ranges: &[crate::chunk_parts::Range],
        compress: bool,
    ) -> LocalFuture<Result<ByteStream, FetchError>>;
}
