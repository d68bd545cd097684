//! `NodeEvent`: everything an actor tells the rest of the node. One variant per kind of
//! change; each actor publishes only its own variants.

use std::sync::Arc;

use uuid::Uuid;

use crate::peer_registry::{ConflictReport, PeerInfo, TrustedPeer};
use crate::runtime_supervisor::EnvStatus;
use crate::transfer_queue::JobInfo;
use crate::workspace_store::WorkspaceEntry;

/// Every event on the node's bus.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A workspace was created, changed or deleted (published by the WorkspaceStore).
    WorkspaceChanged(WorkspaceChanged),
    /// A new peer was heard (published by the PeerRegistry).
    PeerJoined(Arc<PeerInfo>),
    /// A peer's state, resources or catalog changed.
    PeerUpdated(Arc<PeerInfo>),
    /// A peer left (goodbye or silence).
    PeerLeft(Arc<PeerInfo>),
    /// Another key claimed a node id that belongs to a known key: refused.
    PeerConflict(Arc<ConflictReport>),
    /// A peer was trusted or no longer trusted: every trusted peer now.
    TrustChanged(Arc<Vec<TrustedPeer>>),
    /// A transfer job was queued, progressed, or finished (published by the TransferQueue;
    /// progress at most a few times per second per job).
    TransferChanged(Arc<JobInfo>),
    /// An environment started, changed state or stopped (published by the
    /// RuntimeSupervisor).
    RuntimeChanged(Arc<EnvStatus>),
    /// An environment placed on a peer was placed, changed state there, was lost or found
    /// again, or was forgotten (`removed`) (published by the Placements actor).
    PlacementChanged {
        /// The placement.
        placement: Arc<crate::cluster::Placement>,
        /// Whether it was forgotten.
        removed: bool,
    },
    /// A CI run was queued, moved on or finished (published by the CiRuns actor).
    CiRunChanged(Arc<crate::ci::CiRun>),
    /// Trusted peers' offers changed (asked only while someone watches the cluster view).
    ClusterChanged(Arc<crate::cluster::ClusterView>),
    /// A tool of a running environment answered for the first time in this run.
    ToolReady {
        /// The environment.
        status: Arc<EnvStatus>,
        /// The tool.
        tool: String,
    },
}

/// Which actor's read view an event belongs to; a snapshot carries one watermark per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// The WorkspaceStore.
    Workspaces,
    /// The PeerRegistry.
    Peers,
    /// The TransferQueue.
    Transfers,
    /// The RuntimeSupervisor.
    Runtimes,
    /// The Placements actor.
    Placements,
    /// The CiRuns actor.
    Ci,
}

impl NodeEvent {
    /// The actor that published this event.
    pub fn source(&self) -> EventSource {
        match self {
            NodeEvent::WorkspaceChanged(_) => EventSource::Workspaces,
            NodeEvent::PeerJoined(_)
            | NodeEvent::PeerUpdated(_)
            | NodeEvent::PeerLeft(_)
            | NodeEvent::PeerConflict(_)
            | NodeEvent::TrustChanged(_) => EventSource::Peers,
            NodeEvent::TransferChanged(_) => EventSource::Transfers,
            NodeEvent::RuntimeChanged(_) | NodeEvent::ToolReady { .. } => EventSource::Runtimes,
            NodeEvent::PlacementChanged { .. } | NodeEvent::ClusterChanged(_) => {
                EventSource::Placements
            }
            NodeEvent::CiRunChanged(_) => EventSource::Ci,
        }
    }
}

/// A change to one workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceChanged {
    /// What happened.
    pub change: WorkspaceChange,
    /// The workspace's id.
    pub id: Uuid,
    /// Its name (the old name for a deletion).
    pub name: String,
    /// Its new state; `None` after a deletion.
    pub workspace: Option<Arc<WorkspaceEntry>>,
    /// Who made the change (user name, `admin`, or `node` for repairs).
    pub by: String,
}

/// Kinds of workspace change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceChange {
    /// Newly created or adopted.
    Created,
    /// Imported from an archive.
    Imported,
    /// Cloned from another node.
    Cloned,
    /// Updated from the node it was cloned from.
    Synced,
    /// A peer's clone pushed its changes into it.
    Pushed,
    /// Metadata or environments changed.
    Updated,
    /// Sharing settings changed.
    SharingChanged,
    /// An earlier revision was restored.
    Restored,
    /// Deleted.
    Deleted,
}

impl WorkspaceChange {
    /// Stable lower-case name for logs and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceChange::Created => "created",
            WorkspaceChange::Imported => "imported",
            WorkspaceChange::Cloned => "cloned",
            WorkspaceChange::Pushed => "pushed",
            WorkspaceChange::Synced => "synced",
            WorkspaceChange::Updated => "updated",
            WorkspaceChange::SharingChanged => "sharing-changed",
            WorkspaceChange::Restored => "restored",
            WorkspaceChange::Deleted => "deleted",
        }
    }
}
