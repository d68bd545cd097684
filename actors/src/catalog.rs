//! What a node shares, as other nodes see it: one [`CatalogEntry`] per shared workspace, and
//! the digest that tells peers when to fetch the catalog again.

use chrono::{DateTime, Utc};

use crate::model::{WorkspaceKind, WorkspaceManifest};
use crate::peer_registry::TrustedPeer;
use crate::workspace_store::StoreView;

/// One shared workspace in a node's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Workspace id.
    pub id: uuid::Uuid,
    /// Name.
    pub name: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Type.
    pub kind: WorkspaceKind,
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
    pub template: Option<crate::model::TemplateSpec>,
}

impl CatalogEntry {
    /// The catalog entry of a workspace.
    pub fn from_manifest(manifest: &WorkspaceManifest) -> CatalogEntry {
        CatalogEntry {
            id: manifest.id,
            name: manifest.name.clone(),
            title: manifest.title.clone(),
            description: manifest.description.clone(),
            tags: manifest.tags.clone(),
            kind: manifest.kind,
            languages: manifest.languages.clone(),
            tools: manifest.tools.clone(),
            revision: manifest.revision,
            updated: manifest.updated,
            environments: manifest.environments.clone(),
            template: manifest.template.clone().map(|mut t| {
                // Which files get filled is the template's own business.
                t.files.clear();
                t
            }),
        }
    }

    /// Whether the entry matches every given criterion (free text: every word, any case).
    pub fn matches(&self, filter: &CatalogFilter) -> bool {
        let text = || {
            [
                self.name.as_str(),
                &self.title,
                &self.description,
                self.kind.as_str(),
                &self.tags.join(" "),
                &self.tools.join(" "),
                &self.languages.join(" "),
            ]
            .join("\n")
            .to_lowercase()
        };
        filter.kind.is_none_or(|k| self.kind == k)
            && filter.tool.as_ref().is_none_or(|t| self.tools.contains(t))
            && filter
                .language
                .as_ref()
                .is_none_or(|l| self.languages.contains(l))
            && filter.tag.as_ref().is_none_or(|t| self.tags.contains(t))
            && filter.text.as_ref().is_none_or(|q| {
                let haystack = text();
                q.split_whitespace()
                    .all(|term| haystack.contains(&term.to_lowercase()))
            })
    }
}

/// Criteria for searching catalogs.
#[derive(Debug, Clone, Default)]
pub struct CatalogFilter {
    /// Type.
    pub kind: Option<WorkspaceKind>,
    /// Tool.
    pub tool: Option<String>,
    /// Language.
    pub language: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Free text.
    pub text: Option<String>,
}

/// `(digest, count)` of everything this node shares: changes whenever a shared workspace
/// changes, is shared or unshared, or a peer is trusted or no longer trusted.
pub fn digest(view: &StoreView, trusted: &[TrustedPeer]) -> (String, u32) {
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u32;
    // What a peer sees depends on whether it is trusted: a change of trust must make peers
    // fetch the catalog again, as a change of sharing does.
    for peer in trusted {
        hasher.update(peer.id.as_bytes());
        hasher.update(&peer.key.0);
        hasher.update(peer.name.as_bytes());
        hasher.update(&[0]);
    }
    for entry in view.iter() {
        let manifest = &entry.manifest;
        if !manifest.sharing.enabled {
            continue;
        }
        count += 1;
        hasher.update(manifest.id.as_bytes());
        hasher.update(&manifest.revision.to_le_bytes());
        hasher.update(manifest.name.as_bytes());
        hasher.update(&[manifest.sharing.mode as u8]);
        for peer in &manifest.sharing.peers {
            hasher.update(peer.as_bytes());
            hasher.update(&[0]);
        }
    }
    let hex = hasher.finalize().to_hex();
    (hex[..32].to_string(), count)
}
