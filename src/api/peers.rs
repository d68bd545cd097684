//! Peers, their catalogs, trust and pairing, and the merged network catalog.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ResourcesDto;

/// A workspace in a node's catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntryDto {
    /// Workspace id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Languages.
    pub languages: Vec<String>,
    /// Tools.
    pub tools: Vec<String>,
    /// Revision.
    pub revision: u64,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Environment names.
    pub environments: Vec<String>,
    /// Present when the workspace is offered as a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::TemplateDto>,
}

impl From<&aienv_actors::catalog::CatalogEntry> for CatalogEntryDto {
    fn from(e: &aienv_actors::catalog::CatalogEntry) -> CatalogEntryDto {
        CatalogEntryDto {
            id: e.id,
            name: e.name.clone(),
            title: e.title.clone(),
            description: e.description.clone(),
            tags: e.tags.clone(),
            kind: e.kind.as_str().to_string(),
            languages: e.languages.clone(),
            tools: e.tools.clone(),
            revision: e.revision,
            updated: e.updated,
            environments: e.environments.clone(),
            template: e.template.as_ref().map(super::TemplateDto::from),
        }
    }
}

impl CatalogEntryDto {
    /// Converts back to the actors' type; `None` for an unknown type name.
    pub fn to_entry(&self) -> Option<aienv_actors::catalog::CatalogEntry> {
        Some(aienv_actors::catalog::CatalogEntry {
            id: self.id,
            name: self.name.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            kind: aienv_actors::model::WorkspaceKind::parse(&self.kind)?,
            languages: self.languages.clone(),
            tools: self.tools.clone(),
            revision: self.revision,
            updated: self.updated,
            environments: self.environments.clone(),
            template: self.template.as_ref().map(super::TemplateDto::to_spec),
        })
    }
}

/// `GET /api/v1/catalog`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogDto {
    /// The node.
    pub node_id: Uuid,
    /// Digest of the whole shared catalog (as announced).
    pub digest: String,
    /// Workspaces shared with the caller.
    pub items: Vec<CatalogEntryDto>,
}

/// A peer, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerDto {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// `online`, `stale` or `gone`.
    pub state: String,
    /// `multicast` or `static`.
    pub source: String,
    /// Its API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Addresses it was heard from.
    pub addresses: Vec<String>,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// Its resources.
    pub resources: ResourcesDto,
    /// Shared workspaces it announced.
    pub shared_workspaces: u32,
    /// Workspaces in its fetched catalog.
    pub catalog_size: usize,
    /// Why the last catalog fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_error: Option<String>,
    /// Whether the catalog held is the one it announced last.
    pub catalog_current: bool,
    /// Running environments it announced.
    pub running_environments: u32,
    /// Seconds it has been up.
    pub uptime_seconds: u64,
    /// Its key id (readable).
    pub key_id: String,
    /// Whether a person trusts it.
    pub trusted: bool,
    /// Another key that claimed its id, if any did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<PeerConflictDto>,
}

/// Another key presented under a peer's id (refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConflictDto {
    /// The key id presented last.
    pub key_id: String,
    /// Where it came from.
    pub address: String,
    /// When it was seen last.
    pub last_seen: DateTime<Utc>,
    /// How many times it was refused.
    pub count: u64,
    /// Whether it was seen recently (the peer's state is then `conflict`).
    pub active: bool,
}

/// The `peer_conflict` event's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictEventDto {
    /// The id claimed.
    pub id: Uuid,
    /// The name claimed.
    pub name: String,
    /// Where the claim came from.
    pub address: String,
    /// The key id presented.
    pub presented_key_id: String,
    /// The key id the id belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_key_id: Option<String>,
    /// `announcement` or `handshake`.
    pub via: String,
}

impl From<&aienv_actors::peer_registry::ConflictReport> for ConflictEventDto {
    fn from(c: &aienv_actors::peer_registry::ConflictReport) -> ConflictEventDto {
        ConflictEventDto {
            id: c.id,
            name: c.name.clone(),
            address: c.address.to_string(),
            presented_key_id: c.presented.to_readable(),
            expected_key_id: c.expected.map(|k| k.to_readable()),
            via: c.via.to_string(),
        }
    }
}

/// A trusted peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPeerDto {
    /// Node id.
    pub id: Uuid,
    /// Key id (readable): trust follows this key.
    pub key_id: String,
    /// Its name when trusted (what `sharing.peers` may list).
    pub name: String,
    /// When it was trusted.
    pub since: DateTime<Utc>,
    /// Who trusted it.
    pub by: String,
}

impl From<&aienv_actors::peer_registry::TrustedPeer> for TrustedPeerDto {
    fn from(t: &aienv_actors::peer_registry::TrustedPeer) -> TrustedPeerDto {
        TrustedPeerDto {
            id: t.id,
            key_id: t.key.to_readable(),
            name: t.name.clone(),
            since: t.since,
            by: t.by.clone(),
        }
    }
}

/// `POST /pairing`: the code to type on the other node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingCodeDto {
    /// `XXXXX-XXXXX`.
    pub code: String,
    /// When it stops working (5 minutes; single use).
    pub expires_at: DateTime<Utc>,
    /// This node's key id, to show beside the code.
    pub key_id: String,
}

/// `POST /peers/{peer}/pair`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The code shown on the peer.
    pub code: String,
}

/// `POST /pairing/confirm` (node to node) and its answer: an HMAC-SHA256 proof of the code
/// bound to both nodes' keys, 64 hex digits (see `schemas/identity.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfirm {
    /// The proof.
    pub proof: String,
}

/// `POST /peers/{peer}/trust`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The key id the person compared with the one the peer shows; refused if it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl From<&aienv_actors::peer_registry::PeerInfo> for PeerDto {
    fn from(p: &aienv_actors::peer_registry::PeerInfo) -> PeerDto {
        PeerDto {
            id: p.id,
            name: p.name.clone(),
            state: p.state_name().to_string(),
            source: match p.source {
                aienv_actors::peer_registry::PeerSource::Multicast => "multicast",
                aienv_actors::peer_registry::PeerSource::Static => "static",
            }
            .to_string(),
            url: p.base_url(),
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            last_seen: p.last_seen,
            resources: ResourcesDto::from(&p.resources),
            shared_workspaces: p.shared_workspaces,
            catalog_size: p.catalog.len(),
            catalog_error: p.catalog_error.clone(),
            catalog_current: p.catalog_current,
            running_environments: p.running_environments,
            uptime_seconds: p.uptime_seconds,
            key_id: p.key.to_readable(),
            trusted: p.trusted,
            conflict: p.conflict.as_ref().map(|c| PeerConflictDto {
                key_id: c.key.to_readable(),
                address: c.address.to_string(),
                last_seen: c.last_seen,
                count: c.count,
                active: c.active,
            }),
        }
    }
}

/// One workspace in the merged network catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkEntryDto {
    /// The sharing peer's id.
    pub peer_id: Uuid,
    /// Its name.
    pub peer_name: String,
    /// Its API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    /// The workspace.
    pub workspace: CatalogEntryDto,
}

/// Filter of the network catalog (`GET /network/catalog` query).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkQuery {
    /// Type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Only this peer (name or id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}
