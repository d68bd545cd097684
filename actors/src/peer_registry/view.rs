//! The registry's published read view: every known peer with its state, key, trust and
//! catalog, and the network catalog built from them. Readers get it from
//! [`super::PeerRegistryHandle::view`]; only the registry writes it.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::{CatalogEntry, CatalogFilter};
use crate::discovery::wire::{ResourceSummary, Scheme};
use crate::identity::KeyFingerprint;

use super::{PeerEndpoint, TrustedPeer};

/// A peer's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Heard from within 3 announce intervals.
    Online,
    /// Silent for 3 intervals.
    Stale,
    /// Silent for 6 intervals, or said goodbye.
    Gone,
}

impl PeerState {
    /// `online`, `stale` or `gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Online => "online",
            PeerState::Stale => "stale",
            PeerState::Gone => "gone",
        }
    }
}

/// How a peer is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    /// From multicast announcements.
    Multicast,
    /// From `discovery.static_peers`, polled over HTTP.
    Static,
}

/// Everything known about one peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// Addresses it was heard from (most recent first).
    pub addresses: Vec<IpAddr>,
    /// Its REST API port.
    pub http_port: u16,
    /// Its REST API scheme.
    pub scheme: Scheme,
    /// Liveness.
    pub state: PeerState,
    /// How it is known.
    pub source: PeerSource,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// Its resources.
    pub resources: ResourceSummary,
    /// Shared workspaces it announced.
    pub shared_workspaces: u32,
    /// Running environments it announced.
    pub running_environments: u32,
    /// Seconds it has been up, as announced.
    pub uptime_seconds: u64,
    /// Announced catalog digest.
    pub catalog_digest: String,
    /// The catalog, as last fetched.
    pub catalog: Arc<Vec<CatalogEntry>>,
    /// Why the last catalog fetch failed, if it did.
    pub catalog_error: Option<String>,
    /// Whether `catalog` was fetched for the digest announced last.
    pub catalog_current: bool,
    /// Its key (pinned for its id).
    pub key: KeyFingerprint,
    /// Whether a person trusts it (with this key).
    pub trusted: bool,
    /// Another key claimed its id, if that happened.
    pub conflict: Option<Conflict>,
}

/// Another key presented under a known peer's id: refused, and remembered here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key presented last.
    pub key: KeyFingerprint,
    /// Where it came from.
    pub address: IpAddr,
    /// When it was seen last.
    pub last_seen: DateTime<Utc>,
    /// How many times it was refused.
    pub count: u64,
    /// Whether it was seen within the last 6 announce intervals (the peer shows `conflict`).
    pub active: bool,
}

/// A refused key, as the event tells it.
#[derive(Debug, Clone)]
pub struct ConflictReport {
    /// The id claimed.
    pub id: Uuid,
    /// The name claimed.
    pub name: String,
    /// Where the claim came from.
    pub address: IpAddr,
    /// The key presented.
    pub presented: KeyFingerprint,
    /// The key the id belongs to, when known.
    pub expected: Option<KeyFingerprint>,
    /// How it was learnt: `announcement` or `handshake`.
    pub via: &'static str,
}

impl PeerInfo {
    /// `online`, `stale` or `gone`, or `conflict` while another key claims its id.
    pub fn state_name(&self) -> &'static str {
        match &self.conflict {
            Some(conflict) if conflict.active => "conflict",
            _ => self.state.as_str(),
        }
    }

    /// Where to reach it, and the key it must present there.
    pub fn endpoint(&self) -> Option<PeerEndpoint> {
        Some(PeerEndpoint {
            url: self.base_url()?,
            key: self.key,
        })
    }

    /// Base URL of the peer's API.
    pub fn base_url(&self) -> Option<String> {
        let address = self.addresses.first()?;
        Some(match address {
            IpAddr::V4(v4) => format!("{}://{v4}:{}", self.scheme.as_str(), self.http_port),
            IpAddr::V6(v6) => format!("{}://[{v6}]:{}", self.scheme.as_str(), self.http_port),
        })
    }
}

/// Published read view of the registry.
#[derive(Debug, Clone, Default)]
pub struct PeersView {
    /// Sequence number of the last event reflected here.
    pub seq: u64,
    /// Every peer, by name.
    pub peers: Vec<Arc<PeerInfo>>,
    /// Every trusted peer (seen or not), by name.
    pub trusted: Arc<Vec<TrustedPeer>>,
    /// Announcements and answers refused for presenting another key than their id's.
    pub key_conflicts: u64,
}

/// One entry of the merged network catalog.
#[derive(Debug, Clone)]
pub struct NetworkEntry {
    /// The peer sharing it.
    pub peer: Arc<PeerInfo>,
    /// The workspace.
    pub entry: CatalogEntry,
}

impl PeersView {
    /// The trust record of the node holding `key`, if a person trusts it.
    pub fn trusted_by_key(&self, key: &KeyFingerprint) -> Option<&TrustedPeer> {
        self.trusted.iter().find(|t| t.key == *key)
    }

    /// Where to reach a peer that is not gone, and the key it must present.
    pub fn endpoint(&self, id: Uuid) -> Option<PeerEndpoint> {
        self.peers
            .iter()
            .find(|p| p.id == id && p.state != PeerState::Gone)?
            .endpoint()
    }

    /// Everything online peers share that matches `filter`, optionally from one peer (by id
    /// or name), ordered by workspace name then peer name.
    pub fn network_catalog(&self, filter: &CatalogFilter, peer: Option<&str>) -> Vec<NetworkEntry> {
        let mut entries: Vec<NetworkEntry> = self
            .peers
            .iter()
            .filter(|p| p.state == PeerState::Online)
            .filter(|p| peer.is_none_or(|wanted| p.name == wanted || p.id.to_string() == wanted))
            .flat_map(|p| {
                p.catalog
                    .iter()
                    .filter(|e| e.matches(filter))
                    .map(|e| NetworkEntry {
                        peer: p.clone(),
                        entry: e.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        entries.sort_by(|a, b| {
            (a.entry.name.as_str(), a.peer.name.as_str())
                .cmp(&(b.entry.name.as_str(), b.peer.name.as_str()))
        });
        entries
    }
}
