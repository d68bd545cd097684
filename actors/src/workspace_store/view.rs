//! The store's published read view: an immutable snapshot of every workspace, replaced as a
//! whole after each change. Lists, searches and lookups read it without a round trip through
//! the actor, so reads never wait behind a long import or copy.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use crate::model::{EnvironmentSpec, WorkspaceKind, WorkspaceManifest};

use super::clone::Origin;

/// One workspace as readers see it.
#[derive(Debug, Clone)]
pub struct WorkspaceEntry {
    /// Its `workspace.yaml`.
    pub manifest: WorkspaceManifest,
    /// Its environments by name.
    pub environments: BTreeMap<String, EnvironmentSpec>,
    /// Its directory on this node.
    pub path: PathBuf,
    /// Where it was cloned from, for a clone.
    pub origin: Option<Arc<Origin>>,
    /// The peer whose template it was made from (not a clone, but a peer's content).
    pub from_peer: Option<String>,
    /// Lower-cased searchable text (name, title, description, tags, tools, languages).
    search_text: String,
}

impl WorkspaceEntry {
    /// Builds an entry, precomputing its search text.
    pub fn new(
        manifest: WorkspaceManifest,
        environments: BTreeMap<String, EnvironmentSpec>,
        path: PathBuf,
    ) -> WorkspaceEntry {
        let search_text = [
            manifest.name.as_str(),
            manifest.title.as_str(),
            manifest.description.as_str(),
            manifest.kind.as_str(),
            &manifest.tags.join(" "),
            &manifest.tools.join(" "),
            &manifest.languages.join(" "),
        ]
        .join("\n")
        .to_lowercase();
        WorkspaceEntry {
            manifest,
            environments,
            path,
            origin: None,
            from_peer: None,
            search_text,
        }
    }

    /// The same entry, recording where it was cloned from.
    /// The entry with the peer whose template it was made from.
    pub fn with_from_peer(mut self, peer: Option<String>) -> WorkspaceEntry {
        self.from_peer = peer;
        self
    }

    /// The peer this workspace's content came from: its clone's source, or the template's.
    pub fn foreign_peer(&self) -> Option<&str> {
        self.origin
            .as_deref()
            .map(|o| o.peer_name.as_str())
            .or(self.from_peer.as_deref())
    }

    pub fn with_origin(mut self, origin: Option<Arc<Origin>>) -> WorkspaceEntry {
        self.origin = origin;
        self
    }
}

/// Who is asking for a listing; decides which unshared workspaces stay hidden.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Viewer {
    /// A logged-in user of this node: sees everything.
    #[default]
    Owner,
    /// An anonymous LAN client: sees workspaces shared with the whole LAN.
    Anonymous,
    /// Another node, by id or name: sees what is shared with the LAN or with it.
    Peer(String),
}

impl Viewer {
    /// Whether this viewer may see `manifest`.
    pub fn may_see(&self, manifest: &WorkspaceManifest) -> bool {
        match self {
            Viewer::Owner => true,
            Viewer::Anonymous => manifest.visible_to(None),
            Viewer::Peer(peer) => manifest.visible_to(Some(peer)),
        }
    }
}

/// Default and largest page sizes of a listing.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE: usize = 500;

/// A listing request: every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Workspace type.
    pub kind: Option<WorkspaceKind>,
    /// A tool the workspace lists.
    pub tool: Option<String>,
    /// A language the workspace lists.
    pub language: Option<String>,
    /// A tag the workspace has.
    pub tag: Option<String>,
    /// Free text: every whitespace-separated term must occur (case-insensitive).
    pub text: Option<String>,
    /// Only shared (`true`) or unshared (`false`) workspaces.
    pub shared: Option<bool>,
    /// Who is asking.
    pub viewer: Viewer,
    /// Page size (defaults to [`DEFAULT_PAGE`], capped at [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Start after this workspace name (the previous page's `next_cursor`).
    pub after: Option<String>,
}

/// One page of a listing, ordered by name.
#[derive(Debug, Clone)]
pub struct Page {
    /// The workspaces on this page.
    pub items: Vec<Arc<WorkspaceEntry>>,
    /// How many workspaces match in all.
    pub total: usize,
    /// Cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// Immutable snapshot of every workspace.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// Sequence number of the last event reflected in this view.
    pub seq: u64,
    by_id: HashMap<Uuid, Arc<WorkspaceEntry>>,
    by_name: BTreeMap<String, Uuid>,
}

impl StoreView {
    /// A view of `entries`.
    pub fn new(entries: impl IntoIterator<Item = Arc<WorkspaceEntry>>, seq: u64) -> StoreView {
        let mut view = StoreView {
            seq,
            ..StoreView::default()
        };
        for entry in entries {
            view.insert(entry);
        }
        view
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, entry: Arc<WorkspaceEntry>) {
        let id = entry.manifest.id;
        if let Some(old) = self.by_id.get(&id) {
            self.by_name.remove(&old.manifest.name);
        }
        self.by_name.insert(entry.manifest.name.clone(), id);
        self.by_id.insert(id, entry);
    }

    /// Removes an entry.
    pub fn remove(&mut self, id: Uuid) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_name.remove(&old.manifest.name);
        }
    }

    /// Number of workspaces.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no workspaces.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The workspace with this id, or else this name.
    pub fn find(&self, id_or_name: &str) -> Option<Arc<WorkspaceEntry>> {
        if let Ok(id) = Uuid::parse_str(id_or_name) {
            if let Some(entry) = self.by_id.get(&id) {
                return Some(entry.clone());
            }
        }
        let id = self.by_name.get(id_or_name)?;
        self.by_id.get(id).cloned()
    }

    /// Every workspace, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<WorkspaceEntry>> {
        self.by_name.values().filter_map(|id| self.by_id.get(id))
    }

    /// One page of the workspaces matching `filter`.
    pub fn list(&self, filter: &ListFilter) -> Page {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let terms: Vec<String> = filter
            .text
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        let matches = |entry: &WorkspaceEntry| {
            let manifest = &entry.manifest;
            filter.viewer.may_see(manifest)
                && filter.kind.is_none_or(|kind| manifest.kind == kind)
                && filter
                    .tool
                    .as_ref()
                    .is_none_or(|t| manifest.tools.contains(t))
                && filter
                    .language
                    .as_ref()
                    .is_none_or(|l| manifest.languages.contains(l))
                && filter
                    .tag
                    .as_ref()
                    .is_none_or(|t| manifest.tags.contains(t))
                && filter
                    .shared
                    .is_none_or(|shared| manifest.sharing.enabled == shared)
                && terms.iter().all(|term| entry.search_text.contains(term))
        };
        let mut items = Vec::with_capacity(limit);
        let mut total = 0;
        let mut next_cursor = None;
        for entry in self.iter() {
            if !matches(entry) {
                continue;
            }
            total += 1;
            let after_cursor = filter
                .after
                .as_ref()
                .is_none_or(|after| entry.manifest.name.as_str() > after.as_str());
            if !after_cursor {
                continue;
            }
            if items.len() < limit {
                items.push(entry.clone());
            } else if next_cursor.is_none() {
                next_cursor = items.last().map(|last| last.manifest.name.clone());
            }
        }
        Page {
            items,
            total,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, tags: &[&str], shared: bool) -> Arc<WorkspaceEntry> {
        let mut manifest = WorkspaceManifest::new(name, chrono::Utc::now());
        manifest.tags = tags.iter().map(|t| t.to_string()).collect();
        manifest.sharing.enabled = shared;
        manifest.title = format!("The {name} project");
        Arc::new(WorkspaceEntry::new(
            manifest,
            BTreeMap::new(),
            PathBuf::new(),
        ))
    }

    #[test]
    fn filter_search_and_pages() {
        let view = StoreView::new(
            [
                entry("alpha", &["nlp"], true),
                entry("beta", &["vision"], false),
                entry("gamma", &["nlp", "llm"], true),
                entry("delta", &[], false),
            ],
            0,
        );
        let names = |filter: ListFilter| -> Vec<String> {
            view.list(&filter)
                .items
                .iter()
                .map(|e| e.manifest.name.clone())
                .collect()
        };
        assert_eq!(
            names(ListFilter::default()),
            ["alpha", "beta", "delta", "gamma"]
        );
        let tag = ListFilter {
            tag: Some("nlp".into()),
            ..ListFilter::default()
        };
        assert_eq!(names(tag), ["alpha", "gamma"]);
        let text = ListFilter {
            text: Some("GAMMA project".into()),
            ..ListFilter::default()
        };
        assert_eq!(names(text), ["gamma"]);
        let anonymous = ListFilter {
            viewer: Viewer::Anonymous,
            ..ListFilter::default()
        };
        assert_eq!(names(anonymous), ["alpha", "gamma"]);

        let first = view.list(&ListFilter {
            limit: Some(3),
            ..ListFilter::default()
        });
        assert_eq!(
            (first.total, first.next_cursor.as_deref()),
            (4, Some("delta"))
        );
        let second = view.list(&ListFilter {
            limit: Some(3),
            after: first.next_cursor,
            ..ListFilter::default()
        });
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.next_cursor, None);
    }
}
