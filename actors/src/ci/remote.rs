//! CI runs on a trusted peer (`aienv ci --on PEER`): the requester's CiRuns actor starts the
//! run there and follows it — state, log, exit code, JUnit reports — through [`CiRemote`],
//! which the `aienv` package implements over mutual TLS (this crate knows no HTTP). The peer
//! runs it as its own CI run for a borrower (`http/cluster/ci.rs`): it fetches the
//! workspace from the requester first (allowed while the run is active), and sizes it within
//! its lending limits.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::peer_registry::{LocalFuture, PeerCallError, PeerEndpoint};

use super::{CiState, JunitReport};

/// The peer a run goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePeer {
    /// Its node id.
    pub id: Uuid,
    /// Its trusted name.
    pub name: String,
}

/// What the peer is asked to run.
#[derive(Debug, Clone)]
pub struct RemoteCiRequest {
    /// The requester's workspace id (the peer clones it, or syncs its clone).
    pub workspace_id: Uuid,
    /// Its name.
    pub workspace_name: String,
    /// The environment (`None`: the workspace's first).
    pub environment: Option<String>,
    /// The command's argument vector.
    pub command: Vec<String>,
    /// Pull the git projects first.
    pub pull: bool,
    /// Seconds the command may run.
    pub timeout_seconds: u64,
    /// Who asked on the requester.
    pub user: String,
}

/// The run on the peer, as the peer reports it.
#[derive(Debug, Clone)]
pub struct RemoteCiStatus {
    /// The peer's id of the run.
    pub id: Uuid,
    /// Where it is.
    pub state: CiState,
    /// The environment used.
    pub environment: Option<String>,
    /// Where it ran there.
    pub backend: Option<String>,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// How it ended.
    pub reason: Option<String>,
    /// Why it could not get to its command.
    pub error: Option<String>,
    /// The peer's notes.
    pub notes: Vec<String>,
    /// Seconds per phase there.
    pub timings: std::collections::BTreeMap<String, f64>,
    /// JUnit reports written there.
    pub junit: Vec<JunitReport>,
}

/// How the CiRuns actor talks to peers about runs.
pub trait CiRemote {
    /// Asks `peer` to run `request`.
    fn start(
        &self,
        peer: &PeerEndpoint,
        request: &RemoteCiRequest,
    ) -> LocalFuture<Result<RemoteCiStatus, PeerCallError>>;
    /// The run's state there.
    fn status(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
    ) -> LocalFuture<Result<RemoteCiStatus, PeerCallError>>;
    /// The run's log there from byte `offset` (at most 1 MiB).
    fn log(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
        offset: u64,
    ) -> LocalFuture<Result<Vec<u8>, PeerCallError>>;
    /// JUnit report `index` of the run there.
    fn junit(
        &self,
        peer: &PeerEndpoint,
        run: Uuid,
        index: usize,
    ) -> LocalFuture<Result<Vec<u8>, PeerCallError>>;
}
