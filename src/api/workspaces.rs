//! Workspaces: listing, detail, create, update, share, import, history and access.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::OriginDto;
use aienv_actors::model::{Project, Sharing, SharingMode, WorkspaceManifest};
use aienv_actors::workspace_store::{ImportSummary, RevisionInfo, RevisionRecord, WorkspaceEntry};

/// Sharing settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingDto {
    /// Shared or not.
    pub enabled: bool,
    /// `lan` or `peers`.
    pub mode: String,
    /// Allowed peers in `peers` mode.
    pub peers: Vec<String>,
}

/// A code project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectDto {
    /// Name.
    pub name: String,
    /// Workspace-relative path.
    pub path: String,
    /// Git remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    /// The declared branch, tag or commit (`ref` in workspace.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_rev: Option<String>,
    /// The checkout as it is now (shown for one workspace, not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitStateDto>,
}

/// A project's git checkout now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitStateDto {
    /// Current commit (absent before the first commit, or when `error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Current branch (absent when detached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Upstream branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Commits ahead of the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    /// Commits behind the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
    /// Whether anything is uncommitted.
    pub dirty: bool,
    /// How many paths are uncommitted.
    pub changed_count: usize,
    /// The first uncommitted paths.
    pub changed: Vec<String>,
    /// Remotes: name and URL (credentials masked).
    pub remotes: Vec<GitRemoteDto>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// Why the state could not be read (an unsafe repository, git missing, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A git remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRemoteDto {
    /// Name.
    pub name: String,
    /// URL, credentials masked.
    pub url: String,
}

impl GitStateDto {
    /// What git says of a checkout, or why it could not say.
    pub fn from_result(
        result: Result<aienv_actors::git::GitState, aienv_actors::git::GitError>,
    ) -> GitStateDto {
        match result {
            Ok(state) => GitStateDto {
                dirty: state.dirty(),
                commit: state.commit,
                branch: state.branch,
                upstream: state.upstream,
                ahead: state.ahead,
                behind: state.behind,
                changed_count: state.changed_count,
                changed: state.changed,
                remotes: state
                    .remotes
                    .into_iter()
                    .map(|(name, url)| GitRemoteDto { name, url })
                    .collect(),
                warnings: state.warnings,
                error: None,
            },
            Err(error) => GitStateDto {
                commit: None,
                branch: None,
                upstream: None,
                ahead: None,
                behind: None,
                dirty: false,
                changed_count: 0,
                changed: Vec::new(),
                remotes: Vec::new(),
                warnings: Vec::new(),
                error: Some(error.to_string()),
            },
        }
    }
}

/// A workspace as listed and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceDto {
    /// Id.
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
    /// Current revision.
    pub revision: u64,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// Sharing.
    pub sharing: SharingDto,
    /// Projects.
    pub projects: Vec<ProjectDto>,
    /// Environment names.
    pub environments: Vec<String>,
    /// Directory on the node (only for logged-in users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where this clone came from (clones only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginDto>,
    /// What the person should know about what they just did (sharing a workspace that some
    /// nodes cannot clone); only in answers to a change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Present when the workspace is a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateDto>,
    /// The peer whose template it was made from (its content is that peer's: it runs
    /// confined like a clone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_peer: Option<String>,
}

/// A workspace offered as a template: what a new one from it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDto {
    /// Its parameters.
    pub parameters: Vec<TemplateParameterDto>,
}

/// A template's parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateParameterDto {
    /// Name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Value when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The only values allowed (when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

impl From<&aienv_actors::model::TemplateSpec> for TemplateDto {
    fn from(spec: &aienv_actors::model::TemplateSpec) -> TemplateDto {
        TemplateDto {
            parameters: spec
                .parameters
                .iter()
                .map(|p| TemplateParameterDto {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    default: p.default.clone(),
                    choices: p.choices.clone(),
                })
                .collect(),
        }
    }
}

impl TemplateDto {
    /// Back to the model (a peer's catalog entry).
    pub fn to_spec(&self) -> aienv_actors::model::TemplateSpec {
        aienv_actors::model::TemplateSpec {
            parameters: self
                .parameters
                .iter()
                .map(|p| aienv_actors::model::TemplateParameter {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    default: p.default.clone(),
                    choices: p.choices.clone(),
                })
                .collect(),
            files: Vec::new(),
        }
    }
}

impl WorkspaceDto {
    /// Converts a store entry; `show_path` reveals the directory.
    pub fn from_entry(entry: &WorkspaceEntry, show_path: bool) -> WorkspaceDto {
        let manifest: &WorkspaceManifest = &entry.manifest;
        WorkspaceDto {
            id: manifest.id,
            name: manifest.name.clone(),
            title: manifest.title.clone(),
            description: manifest.description.clone(),
            tags: manifest.tags.clone(),
            kind: manifest.kind.as_str().to_string(),
            languages: manifest.languages.clone(),
            tools: manifest.tools.clone(),
            revision: manifest.revision,
            created: manifest.created,
            updated: manifest.updated,
            sharing: SharingDto::from(&manifest.sharing),
            projects: manifest.projects.iter().map(ProjectDto::from).collect(),
            environments: entry.environments.keys().cloned().collect(),
            path: show_path.then(|| entry.path.display().to_string()),
            origin: entry.origin.as_deref().map(OriginDto::from),
            warnings: Vec::new(),
            template: manifest.template.as_ref().map(TemplateDto::from),
            from_peer: entry.from_peer.clone(),
        }
    }
}

impl From<&Sharing> for SharingDto {
    fn from(sharing: &Sharing) -> SharingDto {
        SharingDto {
            enabled: sharing.enabled,
            mode: match sharing.mode {
                SharingMode::Lan => "lan",
                SharingMode::Peers => "peers",
            }
            .to_string(),
            peers: sharing.peers.clone(),
        }
    }
}

impl From<&Project> for ProjectDto {
    fn from(project: &Project) -> ProjectDto {
        ProjectDto {
            name: project.name.clone(),
            path: project.path.clone(),
            git_url: project.git.as_ref().map(|g| g.url.clone()),
            git_rev: project.git.as_ref().and_then(|g| g.git_ref.clone()),
            git: None,
        }
    }
}

/// A workspace with its environments' specs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceDetail {
    /// The workspace.
    #[serde(flatten)]
    pub workspace: WorkspaceDto,
    /// Environment specs by name, in their `environment.yaml` form.
    pub environment_specs: BTreeMap<String, serde_json::Value>,
}

impl WorkspaceDetail {
    /// Converts a store entry.
    pub fn from_entry(entry: &WorkspaceEntry, show_path: bool) -> WorkspaceDetail {
        WorkspaceDetail {
            workspace: WorkspaceDto::from_entry(entry, show_path),
            environment_specs: entry
                .environments
                .iter()
                .map(|(name, spec)| {
                    let value = serde_json::to_value(spec).expect("specs serialize");
                    (name.clone(), value)
                })
                .collect(),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspacePage {
    /// Workspaces on this page.
    pub items: Vec<WorkspaceDto>,
    /// Matches in all.
    pub total: usize,
    /// Pass as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/workspaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Name (slug); may be omitted when `from_dir` holds a `workspace.yaml`.
    #[serde(default)]
    pub name: String,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Languages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Built-in template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Directory on the node to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dir: Option<String>,
    /// A repository to clone as the workspace's project (`projects/<repo>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSourceDto>,
    /// Values of the template's parameters.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
}

/// A repository and the branch, tag or commit to check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceDto {
    /// Remote URL.
    pub url: String,
    /// Branch, tag or commit; the remote's default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl GitSourceDto {
    /// Reads `URL[@REF]` as the command line writes it. The `@` of `user@host` stays part
    /// of the URL: a ref follows only an `@` after the repository's path.
    pub fn parse(text: &str) -> GitSourceDto {
        if let Some((url, git_ref)) = text.rsplit_once('@') {
            let after_host = match url.split_once("://") {
                Some((_, rest)) => rest.contains('/'),
                None => url.contains(':'),
            };
            if after_host && !git_ref.is_empty() && !git_ref.contains(':') {
                return GitSourceDto {
                    url: url.to_string(),
                    git_ref: Some(git_ref.to_string()),
                };
            }
        }
        GitSourceDto {
            url: text.to_string(),
            git_ref: None,
        }
    }
}

/// `PATCH /api/v1/workspaces/{ws}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspace {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// New type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// New languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    /// New tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Offer it as a template (keeping the parameters `workspace.yaml` declares), or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<bool>,
    /// Refuse with 409 unless the workspace is at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
}

/// `POST /api/v1/workspaces/{ws}/share`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// `lan` (default) or `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Allowed peers for `peers` mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Result of create and import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedDto {
    /// The new workspace.
    pub workspace: WorkspaceDto,
    /// What was done on the way.
    pub notes: Vec<String>,
    /// For imports, what the archive held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSummaryDto>,
}

/// What an import unpacked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSummaryDto {
    /// Workspace id in the archive.
    pub source_id: Uuid,
    /// Workspace name in the archive.
    pub source_name: String,
    /// Revision in the archive.
    pub source_revision: u64,
    /// Files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of content.
    pub bytes: u64,
    /// Links pointing outside the workspace, kept as links.
    pub external_links: Vec<ExternalLink>,
}

/// A symlink whose target is outside the workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalLink {
    /// Link path in the workspace.
    pub path: String,
    /// Its target.
    pub target: String,
}

impl From<&ImportSummary> for ImportSummaryDto {
    fn from(summary: &ImportSummary) -> ImportSummaryDto {
        ImportSummaryDto {
            source_id: summary.source_id,
            source_name: summary.source_name.clone(),
            source_revision: summary.source_revision,
            files: summary.files,
            dirs: summary.dirs,
            symlinks: summary.symlinks,
            bytes: summary.bytes,
            external_links: summary
                .external_links
                .iter()
                .map(|(path, target)| ExternalLink {
                    path: path.clone(),
                    target: target.clone(),
                })
                .collect(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionDto {
    /// Revision number.
    pub revision: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: String,
    /// Kind of change.
    pub change: String,
}

impl From<&RevisionInfo> for RevisionDto {
    fn from(info: &RevisionInfo) -> RevisionDto {
        RevisionDto {
            revision: info.revision,
            at: info.at,
            by: info.by.clone(),
            change: info.change.clone(),
        }
    }
}

/// One revision with its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionDetail {
    /// The history entry.
    #[serde(flatten)]
    pub info: RevisionDto,
    /// `workspace.yaml` at that revision.
    pub workspace_yaml: String,
    /// `environment.yaml` texts by environment.
    pub environments: BTreeMap<String, String>,
}

impl From<&RevisionRecord> for RevisionDetail {
    fn from(record: &RevisionRecord) -> RevisionDetail {
        RevisionDetail {
            info: RevisionDto {
                revision: record.revision,
                at: record.at,
                by: record.by.clone(),
                change: record.change.clone(),
            },
            workspace_yaml: record.workspace_yaml.clone(),
            environments: record.environments.clone(),
        }
    }
}

/// A workspace's owner and members, and what the caller may do with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessDto {
    /// Owner's user name (`admin`: the admin token).
    pub owner: String,
    /// Users who may use and change it like its owner.
    pub members: Vec<String>,
    /// Trusted peers whose clones may push changes into it, by their trusted names.
    #[serde(default)]
    pub writers: Vec<String>,
    /// The caller.
    pub you: String,
    /// The caller's role: `admin`, `member` or `viewer`.
    pub role: String,
    /// Whether the caller may run it, open its tools and terminal.
    pub may_use: bool,
    /// Whether the caller may change it.
    pub may_change: bool,
    /// Whether the caller may change its members.
    pub may_grant: bool,
}

/// `PUT /workspaces/{ws}/access`: fields left out stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessUpdate {
    /// New owner (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The whole member list (the owner or an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// The whole list of peers that may push (trusted peers by name, node id or key id; the
    /// owner or an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers: Option<Vec<String>>,
}

/// Filter and page of a workspace listing (`GET /workspaces` query), as the server reads it
/// and the client writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
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
    /// Shared only / unshared only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Cursor from the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[cfg(test)]
mod git_source_tests {
    use super::GitSourceDto;

    #[test]
    fn url_at_ref_is_read_without_taking_user_at_host() {
        let parse = |t: &str| {
            let d = GitSourceDto::parse(t);
            (d.url, d.git_ref)
        };
        assert_eq!(
            parse("https://h/x.git@main"),
            ("https://h/x.git".into(), Some("main".into()))
        );
        assert_eq!(parse("git@h:a/b.git"), ("git@h:a/b.git".into(), None));
        assert_eq!(
            parse("git@h:a/b.git@feature/x"),
            ("git@h:a/b.git".into(), Some("feature/x".into()))
        );
        assert_eq!(parse("ssh://git@h/a"), ("ssh://git@h/a".into(), None));
        assert_eq!(
            parse("ssh://git@h/a@v1.0"),
            ("ssh://git@h/a".into(), Some("v1.0".into()))
        );
    }
}
