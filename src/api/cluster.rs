//! The lab cluster: what a node lends (`/cluster/offer`), a peer's fit for an environment
//! (`/cluster/fit`), runs a peer placed here (`/cluster/runs`), and, on the requester, the
//! ranking of peers (`/workspaces/{ws}/placement`) and where its environments run
//! (`/placements`). Spec: `schemas/cluster.md`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use aienv_actors::cluster::rank::{Candidate, Ranking};
use aienv_actors::cluster::{LentRun, NodeOffer, Placement, RemoteRun, RemoteTool};
use aienv_actors::runtime_supervisor::{Amounts, Borrower, LendLimits};

/// Largest fit request body (the chunk list).
pub const MAX_FIT_BYTES: usize = 32 << 20;
/// Most chunk hashes in one fit request (a 256 GiB workspace at 1 MiB chunks).
pub const MAX_FIT_CHUNKS: usize = 262_144;

/// CPU cores, memory and GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AmountsDto {
    /// CPU cores (quotas may be fractions).
    pub cpus: f64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// GPUs.
    pub gpus: u32,
}

/// Lending limits; `null` is "all the host has".
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LendLimitsDto {
    /// CPU cores.
    pub cpus: Option<u32>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// GPUs.
    pub gpus: Option<u32>,
}

/// `GET /cluster/offer`: what this node lends and what peers hold of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferDto {
    /// Node id.
    pub node_id: Uuid,
    /// Node name.
    pub name: String,
    /// `off` or `trusted`.
    pub accept: String,
    /// The host.
    pub host: AmountsDto,
    /// The limits.
    pub limits: LendLimitsDto,
    /// Held by peers' environments now.
    pub lent: AmountsDto,
    /// Left to lend.
    pub left: AmountsDto,
    /// Share of the host's CPU cores that running environments hold.
    pub load: f64,
    /// Environments active here (a peer sees the names of those it may see: its own runs and
    /// workspaces shared with it).
    pub runs: Vec<LentRunDto>,
}

/// An environment active on a node: its own, or one it runs for a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LentRunDto {
    /// The workspace there; empty when the asker may not see it (not shared with it).
    pub workspace: String,
    /// The environment (empty with the workspace).
    pub environment: String,
    /// Its state.
    pub state: String,
    /// For whom, when a peer placed it there.
    pub lent_to: Option<super::BorrowerDto>,
    /// What it holds.
    pub allocation: Option<AmountsDto>,
}

impl From<&Amounts> for AmountsDto {
    fn from(a: &Amounts) -> AmountsDto {
        AmountsDto {
            cpus: a.cpus,
            memory_bytes: a.memory,
            gpus: a.gpus,
        }
    }
}

impl From<&AmountsDto> for Amounts {
    fn from(a: &AmountsDto) -> Amounts {
        Amounts {
            cpus: a.cpus,
            memory: a.memory_bytes,
            gpus: a.gpus,
        }
    }
}

impl From<&LendLimits> for LendLimitsDto {
    fn from(l: &LendLimits) -> LendLimitsDto {
        LendLimitsDto {
            cpus: l.cpus,
            memory_bytes: l.memory,
            gpus: l.gpus,
        }
    }
}

impl From<&LendLimitsDto> for LendLimits {
    fn from(l: &LendLimitsDto) -> LendLimits {
        LendLimits {
            cpus: l.cpus,
            memory: l.memory_bytes,
            gpus: l.gpus,
        }
    }
}

impl From<&super::BorrowerDto> for Borrower {
    fn from(b: &super::BorrowerDto) -> Borrower {
        Borrower {
            peer: b.peer_id,
            peer_name: b.peer_name.clone(),
            user: b.user.clone(),
        }
    }
}

impl OfferDto {
    /// The offer of node `id` named `name`.
    pub fn from_offer(offer: &NodeOffer, id: Uuid, name: &str) -> OfferDto {
        OfferDto {
            node_id: id,
            name: name.to_string(),
            accept: if offer.accept { "trusted" } else { "off" }.into(),
            host: (&offer.host).into(),
            limits: (&offer.limits).into(),
            lent: (&offer.lent).into(),
            left: (&offer.left).into(),
            load: offer.load,
            runs: offer
                .runs
                .iter()
                .map(|r| LentRunDto {
                    workspace: r.workspace.clone(),
                    environment: r.environment.clone(),
                    state: r.state.clone(),
                    lent_to: r.lent_to.as_ref().map(super::BorrowerDto::from),
                    allocation: r.allocation.as_ref().map(AmountsDto::from),
                })
                .collect(),
        }
    }

    /// As the Placements actor keeps it.
    pub fn to_offer(&self) -> NodeOffer {
        NodeOffer {
            accept: self.accept == "trusted",
            host: (&self.host).into(),
            limits: (&self.limits).into(),
            lent: (&self.lent).into(),
            left: (&self.left).into(),
            load: self.load,
            runs: self
                .runs
                .iter()
                .map(|r| LentRun {
                    workspace: r.workspace.clone(),
                    environment: r.environment.clone(),
                    state: r.state.clone(),
                    lent_to: r.lent_to.as_ref().map(Borrower::from),
                    allocation: r.allocation.as_ref().map(Amounts::from),
                })
                .collect(),
        }
    }
}

/// `GET /cluster`: every node of the cluster this node trusts, and what runs where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterDto {
    /// This node first, then every trusted peer, by name.
    pub nodes: Vec<ClusterNodeDto>,
    /// When the peers were asked last (they are asked while someone watches).
    pub asked_at: Option<DateTime<Utc>>,
}

/// One node in the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNodeDto {
    /// Node id.
    pub node_id: Uuid,
    /// Name.
    pub name: String,
    /// `this node`, or the peer's discovery state (`online`, `stale`, `gone`, `unseen`).
    pub state: String,
    /// Its offer, when it answered.
    pub offer: Option<OfferDto>,
    /// Why it could not be asked.
    pub error: Option<String>,
}

/// `POST /cluster/fit`: how would this node run this environment for the asking peer?
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitRequest {
    /// The environment's name.
    pub environment: String,
    /// The environment as the requester has it (`schemas/environment.schema.json`).
    pub spec: serde_json::Value,
    /// The workspace's largest distinct chunks, to count what this node holds already
    /// (`aienv_actors::cluster::fit_chunks`).
    #[serde(default)]
    pub chunks: Vec<FitChunk>,
    /// The bytes of every file of the workspace: what a clone writes. Absent (an older
    /// requester, which listed every chunk): the sum of the listed chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_bytes: Option<u64>,
    /// The workspace's id on the requester: a node that already holds its clone needs disk
    /// only for what changed.
    #[serde(default)]
    pub workspace_id: Option<Uuid>,
}

/// One chunk of the workspace: hash and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitChunk {
    /// BLAKE3, hex.
    pub hash: String,
    /// Bytes.
    pub size: u32,
}

/// A node's answer to a fit request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitDto {
    /// Whether it would run it now.
    pub fits: bool,
    /// Why not, with the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The variant it would pick.
    pub variant: Option<String>,
    /// What it would give.
    pub allocation: AmountsDto,
    /// Whether that meets the preferred resources.
    pub preferred_met: bool,
    /// Share of its CPU cores held by running environments.
    pub load: f64,
    /// Bytes of the workspace it holds already.
    pub bytes_held: u64,
    /// Its notes on the sizing.
    pub notes: Vec<String>,
}

/// `POST /cluster/runs`: run an environment of the asking peer's workspace here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRunRequest {
    /// The workspace's id on the asking peer.
    pub workspace_id: Uuid,
    /// Its name there (the clone here gets the same name, so tool paths match).
    pub workspace_name: String,
    /// The environment.
    pub environment: String,
    /// Who asked on the peer.
    pub user: String,
    /// The environment as the requester has it, to refuse at once what cannot fit (the
    /// workspace's own copy decides once it arrived).
    pub spec: serde_json::Value,
}

/// A run this node does for a peer, as that peer sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteRunDto {
    /// `transferring`, or the environment's state (`setting-up`, `starting`, `running`,
    /// `degraded`, `stopping`, `stopped`, `failed`).
    pub state: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Notes.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The variant and what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationSummaryDto>,
    /// Tools.
    #[serde(default)]
    pub tools: Vec<RemoteToolDto>,
    /// Bytes received and to receive while `transferring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferBytesDto>,
    /// The workspace's name on the executing node.
    pub workspace: String,
}

/// The variant and amounts of an allocation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AllocationSummaryDto {
    /// Variant.
    pub variant: Option<String>,
    /// Amounts.
    #[serde(flatten)]
    pub amounts: AmountsDto,
}

/// Progress of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TransferBytesDto {
    /// Received.
    pub done: u64,
    /// In all.
    pub total: u64,
}

/// A tool of an environment running on a peer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteToolDto {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: String,
    /// Path that opens it (the same on the requester's node).
    pub url: String,
}

impl RemoteRunDto {
    /// As the Placements actor keeps it.
    pub fn to_remote(&self) -> RemoteRun {
        RemoteRun {
            state: self.state.clone(),
            error: self.error.clone(),
            notes: self.notes.clone(),
            allocation: self
                .allocation
                .as_ref()
                .map(|a| (a.variant.clone(), Amounts::from(&a.amounts))),
            tools: self
                .tools
                .iter()
                .map(|t| RemoteTool {
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    state: t.state.clone(),
                    url: t.url.clone(),
                })
                .collect(),
            transfer: self.transfer.map(|t| (t.done, t.total)),
            peer_workspace: self.workspace.clone(),
        }
    }

    /// From the Placements actor's copy.
    pub fn from_remote(remote: &RemoteRun) -> RemoteRunDto {
        RemoteRunDto {
            state: remote.state.clone(),
            error: remote.error.clone(),
            notes: remote.notes.clone(),
            allocation: remote
                .allocation
                .as_ref()
                .map(|(variant, amounts)| AllocationSummaryDto {
                    variant: variant.clone(),
                    amounts: amounts.into(),
                }),
            tools: remote
                .tools
                .iter()
                .map(|t| RemoteToolDto {
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    state: t.state.clone(),
                    url: t.url.clone(),
                })
                .collect(),
            transfer: remote
                .transfer
                .map(|(done, total)| TransferBytesDto { done, total }),
            workspace: remote.peer_workspace.clone(),
        }
    }
}

/// `GET /workspaces/{ws}/placement?environment=E`: every trusted online peer's fit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankingDto {
    /// The workspace.
    pub workspace: String,
    /// The environment.
    pub environment: String,
    /// The chosen peer's name (`null` when none fits).
    pub chosen: Option<String>,
    /// Why, by the rule.
    pub reason: String,
    /// Every candidate, best first.
    pub candidates: Vec<CandidateDto>,
    /// Bytes of the workspace's files (what a clone writes).
    pub workspace_bytes: u64,
    /// Time to ask every candidate and rank them, milliseconds.
    pub decided_ms: f64,
}

/// One peer's fit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateDto {
    /// Node id.
    pub peer_id: Uuid,
    /// Name.
    pub peer_name: String,
    /// Whether it would run it.
    pub fits: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Variant it would pick.
    pub variant: Option<String>,
    /// What it would give.
    pub allocation: AmountsDto,
    /// Whether that meets the preferred resources.
    pub preferred_met: bool,
    /// Its load.
    pub load: f64,
    /// Bytes it holds already.
    pub bytes_held: u64,
    /// Bytes that must move.
    pub bytes_to_move: u64,
    /// Seconds to move them at 1 Gbit/s.
    pub eta_seconds: f64,
    /// Its notes.
    pub notes: Vec<String>,
}

impl From<&Candidate> for CandidateDto {
    fn from(c: &Candidate) -> CandidateDto {
        let offer = c.fit.as_ref().ok().cloned().unwrap_or_default();
        CandidateDto {
            peer_id: c.peer,
            peer_name: c.peer_name.clone(),
            fits: c.fit.is_ok(),
            refusal: c.fit.as_ref().err().cloned(),
            variant: offer.variant.clone(),
            allocation: AmountsDto {
                cpus: offer.cpus,
                memory_bytes: offer.memory,
                gpus: offer.gpus,
            },
            preferred_met: offer.preferred_met,
            load: offer.load,
            bytes_held: offer.bytes_held,
            bytes_to_move: offer.bytes_to_move,
            eta_seconds: offer.eta_seconds(),
            notes: offer.notes.clone(),
        }
    }
}

impl RankingDto {
    /// From a ranking.
    pub fn new(
        workspace: &str,
        environment: &str,
        ranking: &Ranking,
        workspace_bytes: u64,
        decided_ms: f64,
    ) -> RankingDto {
        RankingDto {
            workspace: workspace.to_string(),
            environment: environment.to_string(),
            chosen: ranking.best().map(|c| c.peer_name.clone()),
            reason: ranking.reason.clone(),
            candidates: ranking.candidates.iter().map(CandidateDto::from).collect(),
            workspace_bytes,
            decided_ms,
        }
    }
}

/// Where an environment of this node runs on a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementDto {
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Workspace name.
    pub workspace: String,
    /// Environment.
    pub environment: String,
    /// The peer.
    pub peer_id: Uuid,
    /// Its name.
    pub peer_name: String,
    /// Who placed it.
    pub by: String,
    /// When.
    pub placed_at: DateTime<Utc>,
    /// Why this peer.
    pub reason: String,
    /// `placing`, `lost`, or the state on the peer.
    pub state: String,
    /// Since when it is lost.
    pub lost_since: Option<DateTime<Utc>>,
    /// When the peer last answered.
    pub last_seen: Option<DateTime<Utc>>,
    /// The last failed call, or why it is lost.
    pub error: Option<String>,
    /// What the peer said last.
    pub remote: Option<RemoteRunDto>,
}

impl From<&Placement> for PlacementDto {
    fn from(p: &Placement) -> PlacementDto {
        PlacementDto {
            workspace_id: p.record.workspace_id,
            workspace: p.record.workspace_name.clone(),
            environment: p.record.environment.clone(),
            peer_id: p.record.peer,
            peer_name: p.record.peer_name.clone(),
            by: p.record.by.clone(),
            placed_at: p.record.placed_at,
            reason: p.record.reason.clone(),
            state: p.state().to_string(),
            lost_since: p.lost_since,
            last_seen: p.last_seen,
            error: p.error.clone(),
            remote: p.remote.as_ref().map(RemoteRunDto::from_remote),
        }
    }
}

/// `POST /workspaces/{ws}/run` with `on`: where it was placed and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacedDto {
    /// The placement.
    pub placement: PlacementDto,
    /// The ranking (only the chosen peer when one was named).
    pub ranking: RankingDto,
}
