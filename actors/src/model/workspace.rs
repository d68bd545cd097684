//! `workspace.yaml`: what a workspace is, who may see it, what it contains.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::{validate_relative_path, ValidationErrors};

/// File name of the workspace manifest at the root of a workspace directory.
pub const WORKSPACE_FILE: &str = "workspace.yaml";
/// The `schema_version` this build writes and reads.
pub const WORKSPACE_SCHEMA_VERSION: u32 = 1;

const MAX_TITLE: usize = 200;
const MAX_DESCRIPTION: usize = 10_000;
const MAX_LIST: usize = 64;
const MAX_PEERS: usize = 256;

/// The contents of `workspace.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "aienv workspace.yaml")]
pub struct WorkspaceManifest {
    /// Format version of this file; this build understands 1.
    pub schema_version: u32,
    /// Stable identity, kept across renames and clones.
    pub id: Uuid,
    /// Unique name on a node: lower-case letters, digits and hyphens.
    pub name: String,
    /// Human title shown in listings.
    #[serde(default)]
    pub title: String,
    /// Longer description (Markdown).
    #[serde(default)]
    pub description: String,
    /// Free tags for search (slugs).
    #[serde(default)]
    pub tags: Vec<String>,
    /// What kind of work the workspace holds.
    #[serde(default, rename = "type")]
    pub kind: WorkspaceKind,
    /// Programming languages used (`python`, `rust`, ...).
    #[serde(default)]
    pub languages: Vec<String>,
    /// Tools the workspace offers or needs (`jupyterlab`, `vscode`, `pytorch`, ...).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Bumped by every change; earlier revisions stay listable and restorable.
    pub revision: u64,
    /// When the workspace was created.
    pub created: DateTime<Utc>,
    /// When the workspace last changed.
    pub updated: DateTime<Utc>,
    /// Whether and with whom the workspace is shared.
    #[serde(default)]
    pub sharing: Sharing,
    /// Code projects inside the workspace.
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Names of the environments under `environments/<name>/environment.yaml`.
    #[serde(default)]
    pub environments: Vec<String>,
    /// Commands run after a clone arrives and around every environment's runs.
    #[serde(default, skip_serializing_if = "super::Hooks::is_empty")]
    pub hooks: super::Hooks,
    /// Present when the workspace is a template others start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::TemplateSpec>,
}

/// The kind of work a workspace holds; used for filtering the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceKind {
    /// Anything else.
    #[default]
    General,
    /// Exploratory notebooks.
    Notebook,
    /// Model training.
    Training,
    /// Fine-tuning an existing model.
    FineTuning,
    /// Serving or batch inference.
    Inference,
    /// A data set with its tooling.
    Dataset,
    /// Model weights with their tooling.
    Model,
    /// An application or demo.
    App,
    /// Teaching material.
    Course,
}

impl WorkspaceKind {
    /// The name used in YAML, JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceKind::General => "general",
            WorkspaceKind::Notebook => "notebook",
            WorkspaceKind::Training => "training",
            WorkspaceKind::FineTuning => "fine-tuning",
            WorkspaceKind::Inference => "inference",
            WorkspaceKind::Dataset => "dataset",
            WorkspaceKind::Model => "model",
            WorkspaceKind::App => "app",
            WorkspaceKind::Course => "course",
        }
    }

    /// Every kind, for help texts and error messages.
    pub const ALL: [WorkspaceKind; 9] = [
        WorkspaceKind::General,
        WorkspaceKind::Notebook,
        WorkspaceKind::Training,
        WorkspaceKind::FineTuning,
        WorkspaceKind::Inference,
        WorkspaceKind::Dataset,
        WorkspaceKind::Model,
        WorkspaceKind::App,
        WorkspaceKind::Course,
    ];

    /// Parses a kind name as written in YAML.
    pub fn parse(value: &str) -> Option<WorkspaceKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

/// Sharing settings of a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sharing {
    /// Whether other nodes may see and clone the workspace.
    #[serde(default)]
    pub enabled: bool,
    /// Who may see it when enabled.
    #[serde(default)]
    pub mode: SharingMode,
    /// Node ids or names allowed when `mode` is `peers`.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// Audience of a shared workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SharingMode {
    /// Every node on the LAN.
    #[default]
    Lan,
    /// Only the nodes listed in `peers`.
    Peers,
}

/// A code project inside the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Project name (slug), unique in the workspace.
    pub name: String,
    /// Directory relative to the workspace root, usually `projects/<name>`.
    pub path: String,
    /// Where the project's code comes from, when it is a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
}

/// A git remote and revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Remote URL (`https://`, `http://`, `ssh://`, `git://` or `user@host:path`). Never
    /// a credential: the node's `git.credentials` hold those.
    pub url: String,
    /// Branch, tag or commit (`rev` is read as a synonym).
    #[serde(
        default,
        rename = "ref",
        alias = "rev",
        skip_serializing_if = "Option::is_none"
    )]
    pub git_ref: Option<String>,
}

impl WorkspaceManifest {
    /// A fresh manifest at revision 1.
    pub fn new(name: &str, now: DateTime<Utc>) -> WorkspaceManifest {
        WorkspaceManifest {
            schema_version: WORKSPACE_SCHEMA_VERSION,
            id: Uuid::new_v4(),
            name: name.to_string(),
            title: String::new(),
            description: String::new(),
            tags: Vec::new(),
            kind: WorkspaceKind::General,
            languages: Vec::new(),
            tools: Vec::new(),
            revision: 1,
            created: now,
            updated: now,
            sharing: Sharing::default(),
            projects: Vec::new(),
            environments: Vec::new(),
            hooks: super::Hooks::default(),
            template: None,
        }
    }

    /// Checks everything serde cannot: names, lengths, paths, uniqueness.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.schema_version != WORKSPACE_SCHEMA_VERSION {
            errors.add(
                "schema_version",
                format!(
                    "version {} is not supported; this aienv reads version {WORKSPACE_SCHEMA_VERSION}",
                    self.schema_version
                ),
            );
        }
        errors.check_slug("name", &self.name);
        errors.check_len("title", &self.title, MAX_TITLE);
        errors.check_len("description", &self.description, MAX_DESCRIPTION);
        if self.revision == 0 {
            errors.add("revision", "must be at least 1");
        }
        if self.updated < self.created {
            errors.add("updated", "is earlier than `created`");
        }
        for (field, list) in [
            ("tags", &self.tags),
            ("languages", &self.languages),
            ("tools", &self.tools),
            ("environments", &self.environments),
        ] {
            errors.check_count(field, list.len(), MAX_LIST);
            let mut seen = BTreeSet::new();
            for (index, value) in list.iter().enumerate() {
                let item = format!("{field}[{index}]");
                errors.check_slug(&item, value);
                if !seen.insert(value) {
                    errors.add(item, format!("`{value}` is listed twice"));
                }
            }
        }
        errors.check_count("sharing.peers", self.sharing.peers.len(), MAX_PEERS);
        for (index, peer) in self.sharing.peers.iter().enumerate() {
            let field = format!("sharing.peers[{index}]");
            if peer.trim().is_empty() {
                errors.add(field, "is empty");
            } else {
                errors.check_len(&field, peer, 128);
            }
        }
        errors.check_count("projects", self.projects.len(), MAX_LIST);
        let mut names = BTreeSet::new();
        for (index, project) in self.projects.iter().enumerate() {
            errors.check_slug(&format!("projects[{index}].name"), &project.name);
            if !names.insert(&project.name) {
                errors.add(
                    format!("projects[{index}].name"),
                    format!("`{}` is listed twice", project.name),
                );
            }
            if let Err(message) = validate_relative_path(&project.path) {
                errors.add(format!("projects[{index}].path"), message);
            }
            if let Some(git) = &project.git {
                if git.url.trim().is_empty() {
                    errors.add(format!("projects[{index}].git.url"), "is empty");
                }
                errors.check_len(&format!("projects[{index}].git.url"), &git.url, 2048);
                if crate::git::mask_url(&git.url).1 {
                    errors.add(
                        format!("projects[{index}].git.url"),
                        "holds a credential; a workspace never stores one (the node's \
                         `git.credentials` configuration does)",
                    );
                }
                if let Some(git_ref) = &git.git_ref {
                    if crate::git::check_ref(git_ref).is_err() {
                        errors.add(
                            format!("projects[{index}].git.ref"),
                            format!("`{git_ref}` is not a branch, tag or commit name"),
                        );
                    }
                }
            }
        }
        self.hooks.validate(&mut errors, true);
        if let Some(template) = &self.template {
            template.validate(&mut errors);
        }
        errors.into_result()
    }

    /// Whether a listing by `viewer` (a node id or name; `None` for an anonymous LAN client)
    /// may include this workspace.
    pub fn visible_to(&self, viewer: Option<&str>) -> bool {
        if !self.sharing.enabled {
            return false;
        }
        match self.sharing.mode {
            SharingMode::Lan => true,
            SharingMode::Peers => {
                viewer.is_some_and(|viewer| self.sharing.peers.iter().any(|peer| peer == viewer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;
    use std::path::Path;

    fn parse(text: &str) -> Result<WorkspaceManifest, String> {
        let manifest: WorkspaceManifest =
            yaml::from_str(text, Path::new("workspace.yaml")).map_err(|e| e.to_string())?;
        manifest.validate().map_err(|e| e.to_string())?;
        Ok(manifest)
    }

    const GOOD: &str = "schema_version: 1
id: 0b7f3c1e-8d1a-4a57-9f51-2f1d5f0f3a10
name: llama-finetune
title: Llama fine-tune
tags: [nlp, llm]
type: fine-tuning
languages: [python]
tools: [jupyterlab]
revision: 3
created: 2026-01-01T00:00:00Z
updated: 2026-01-02T00:00:00Z
sharing: {enabled: true, mode: lan}
projects:
  - name: main
    path: projects/main
    git: {url: 'https://example.org/x.git', ref: main}
environments: [default]
";

    #[test]
    fn table() {
        let good = parse(GOOD).unwrap();
        assert_eq!(good.kind, WorkspaceKind::FineTuning);
        assert_eq!(
            good.projects[0].git.as_ref().unwrap().git_ref.as_deref(),
            Some("main")
        );
        // Round trip through our own writer.
        assert_eq!(parse(&yaml::to_string(&good)).unwrap(), good);

        let cases: &[(&str, &str, &str)] = &[
            ("name: llama-finetune", "name: Llama", "field `name`"),
            ("type: fine-tuning", "type: cooking", "field `type`"),
            ("tags: [nlp, llm]", "tags: [nlp, nlp]", "tags[1]"),
            ("path: projects/main", "path: ../escape", "projects[0].path"),
            ("revision: 3", "revision: 3\ncolour: red", "colour"),
            ("schema_version: 1", "schema_version: 9", "schema_version"),
            ("mode: lan", "mode: everyone", "sharing.mode"),
            (
                "https://example.org/x.git",
                "https://bob:hunter2@example.org/x.git",
                "projects[0].git.url",
            ),
            ("ref: main", "ref: --upload-pack=x", "projects[0].git.ref"),
        ];
        // `rev` (the field's first name) still reads.
        let old = parse(&GOOD.replacen("ref: main", "rev: main", 1)).unwrap();
        assert_eq!(old, good);
        for (from, to, expected) in cases {
            let text = GOOD.replacen(from, to, 1);
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{to}: {error}");
        }
    }

    #[test]
    fn visibility() {
        let mut manifest = parse(GOOD).unwrap();
        assert!(manifest.visible_to(None));
        manifest.sharing.mode = SharingMode::Peers;
        manifest.sharing.peers = vec!["gpu-box".into()];
        assert!(!manifest.visible_to(None));
        assert!(manifest.visible_to(Some("gpu-box")));
        manifest.sharing.enabled = false;
        assert!(!manifest.visible_to(Some("gpu-box")));
    }
}
