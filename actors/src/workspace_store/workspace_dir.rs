//! Reading a workspace directory from disk and preparing new ones in staging.
//!
//! These functions touch only the directory they are given, so the store runs them off its
//! actor thread (copying a 50 GB project must not hold up other changes) and then commits the
//! prepared directory in one short message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::model::{
    is_slug, EnvironmentSpec, Project, WorkspaceKind, WorkspaceManifest, ENVIRONMENT_FILE,
    WORKSPACE_FILE,
};
use crate::yaml;

use super::error::StoreError;
use super::templates;
use crate::fsio::{copy_tree, CopyReport, FileStamp};

/// The directories every workspace has.
pub const STANDARD_DIRS: [&str; 4] = ["projects", "environments", "data", "scripts"];

/// A workspace directory as read from disk.
#[derive(Debug, Clone)]
pub struct LoadedWorkspace {
    /// Its `workspace.yaml`.
    pub manifest: WorkspaceManifest,
    /// Its environments.
    pub environments: BTreeMap<String, EnvironmentSpec>,
    /// Environments that were listed but had no file, created with defaults.
    pub created_environments: Vec<String>,
}

/// Path of an environment's spec file inside a workspace directory.
pub fn environment_file(root: &Path, name: &str) -> PathBuf {
    root.join("environments").join(name).join(ENVIRONMENT_FILE)
}

/// Reads and validates `workspace.yaml` and every environment of the directory `root`.
/// Environments found on disk but not listed are added to the list; listed environments
/// without a file are an error unless `create_missing`, when a default spec is used.
pub fn load(root: &Path, create_missing: bool) -> Result<LoadedWorkspace, StoreError> {
    let manifest_path = root.join(WORKSPACE_FILE);
    let mut manifest: WorkspaceManifest = yaml::read_file(&manifest_path)?;
    manifest.validate().map_err(|errors| StoreError::Invalid {
        file: manifest_path.display().to_string(),
        errors,
    })?;
    let mut environments = BTreeMap::new();
    let mut created_environments = Vec::new();
    for name in &manifest.environments {
        let path = environment_file(root, name);
        if path.exists() {
            environments.insert(name.clone(), read_environment(&path)?);
        } else if create_missing {
            environments.insert(name.clone(), EnvironmentSpec::new(""));
            created_environments.push(name.clone());
        } else {
            return Err(StoreError::BadRequest(format!(
                "{}: environment `{name}` is listed but {} does not exist",
                manifest_path.display(),
                path.display()
            )));
        }
    }
    if let Ok(dirs) = fs::read_dir(root.join("environments")) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let path = environment_file(root, &name);
            if !environments.contains_key(&name) && is_slug(&name) && path.is_file() {
                environments.insert(name.clone(), read_environment(&path)?);
                manifest.environments.push(name);
            }
        }
    }
    Ok(LoadedWorkspace {
        manifest,
        environments,
        created_environments,
    })
}

/// Reads and validates one `environment.yaml`.
pub fn read_environment(path: &Path) -> Result<EnvironmentSpec, StoreError> {
    let spec: EnvironmentSpec = yaml::read_file(path)?;
    spec.validate().map_err(|errors| StoreError::Invalid {
        file: path.display().to_string(),
        errors,
    })?;
    Ok(spec)
}

/// Stamps of `workspace.yaml` and each environment file, keyed by workspace-relative path.
pub fn stamps(
    root: &Path,
    environments: &BTreeMap<String, EnvironmentSpec>,
) -> BTreeMap<String, FileStamp> {
    let mut stamps = BTreeMap::new();
    if let Some(stamp) = FileStamp::of(&root.join(WORKSPACE_FILE)) {
        stamps.insert(WORKSPACE_FILE.to_string(), stamp);
    }
    for name in environments.keys() {
        if let Some(stamp) = FileStamp::of(&environment_file(root, name)) {
            stamps.insert(format!("environments/{name}/{ENVIRONMENT_FILE}"), stamp);
        }
    }
    stamps
}

/// What a new workspace should be.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Its name (slug). When adopting a directory that has a `workspace.yaml`, may be empty
    /// to keep the name found there.
    pub name: String,
    /// Title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Type.
    pub kind: Option<WorkspaceKind>,
    /// Languages.
    pub languages: Vec<String>,
    /// Tools.
    pub tools: Vec<String>,
    /// Built-in template to start from.
    pub template: Option<String>,
    /// Existing directory to adopt (its files are copied in).
    pub from_dir: Option<PathBuf>,
    /// A repository to clone as the workspace's project.
    pub git: Option<crate::model::GitSource>,
    /// Whether `git.url` may be a path or `file://` URL on this node (its administrator).
    pub git_local: bool,
    /// Values of a workspace template's parameters (`--set name=value`).
    pub template_values: BTreeMap<String, String>,
    /// The peer the template came from, when it is a peer's (the new workspace then runs
    /// confined like a clone of that peer's).
    pub from_peer: Option<String>,
}

/// A directory prepared in staging, ready to be committed.
#[derive(Debug)]
pub struct Prepared {
    /// The staging directory holding the new workspace.
    pub staging: PathBuf,
    /// Its manifest (written by the commit).
    pub manifest: WorkspaceManifest,
    /// Its environments (written by the commit).
    pub environments: BTreeMap<String, EnvironmentSpec>,
    /// Human-readable notes on what was done (adopted files, skipped entries, ...).
    pub notes: Vec<String>,
    /// The peer whose template the content came from.
    pub from_peer: Option<String>,
}

impl Prepared {
    /// A prepared workspace whose manifest passed validation (errors name the request).
    fn checked(
        staging: &Path,
        manifest: WorkspaceManifest,
        environments: BTreeMap<String, EnvironmentSpec>,
        notes: Vec<String>,
        from_peer: Option<String>,
    ) -> Result<Prepared, StoreError> {
        manifest.validate().map_err(|errors| StoreError::Invalid {
            file: "request".into(),
            errors,
        })?;
        Ok(Prepared {
            staging: staging.to_path_buf(),
            manifest,
            environments,
            notes,
            from_peer,
        })
    }
}

/// Builds a new workspace in the empty directory `staging`.
pub fn prepare_new(request: &CreateRequest, staging: &Path) -> Result<Prepared, StoreError> {
    let result = prepare_new_in(request, staging);
    match &request.from_dir {
        // Errors name the files the person wrote, not their copies in staging.
        Some(source) => result.map_err(|error| name_source(error, staging, source)),
        None => result,
    }
}

/// `error` with every path under `staging` named as the same path under `source`.
fn name_source(error: StoreError, staging: &Path, source: &Path) -> StoreError {
    let source = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let rename = |path: &Path| match path.strip_prefix(staging) {
        Ok(rest) => source.join(rest),
        Err(_) => path.to_path_buf(),
    };
    let (from, to) = (staging.display().to_string(), source.display().to_string());
    match error {
        StoreError::Yaml(mut yaml) => {
            yaml.file = rename(&yaml.file);
            StoreError::Yaml(yaml)
        }
        StoreError::Io {
            action,
            path,
            source: io,
        } => StoreError::Io {
            action,
            path: rename(&path),
            source: io,
        },
        StoreError::BadRequest(message) => StoreError::BadRequest(message.replace(&from, &to)),
        StoreError::Invalid { file, errors } => StoreError::Invalid {
            file: file.replace(&from, &to),
            errors,
        },
        other => other,
    }
}

fn prepare_new_in(request: &CreateRequest, staging: &Path) -> Result<Prepared, StoreError> {
    let now = Utc::now();
    let mut notes = Vec::new();
    let mut manifest;
    let mut environments;
    match &request.from_dir {
        Some(source) => {
            // A path the person typed: a missing or unreadable one is their input, not a
            // fault of the node.
            let source = source.canonicalize().map_err(|error| {
                StoreError::BadRequest(format!(
                    "from_dir: cannot open {}: {error}",
                    source.display()
                ))
            })?;
            if !source.is_dir() {
                return Err(StoreError::BadRequest(format!(
                    "{} is not a directory",
                    source.display()
                )));
            }
            if source.join(WORKSPACE_FILE).is_file() {
                // A workspace directory: copy it whole and keep its files.
                let report = copy_tree(&source, staging)?;
                describe_copy(&mut notes, &source, &report);
                let loaded = load(staging, true)?;
                manifest = loaded.manifest;
                environments = loaded.environments;
                for name in loaded.created_environments {
                    notes.push(format!(
                        "created missing environments/{name}/{ENVIRONMENT_FILE}"
                    ));
                }
                notes.push(format!("kept {WORKSPACE_FILE} of {}", source.display()));
                if !request.name.is_empty() && request.name != manifest.name {
                    notes.push(format!("renamed `{}` to `{}`", manifest.name, request.name));
                    manifest.name = request.name.clone();
                }
            } else if has_environment_files(&source) {
                // Workspace-shaped but without workspace.yaml: keep its environments, create
                // the manifest.
                let report = copy_tree(&source, staging)?;
                describe_copy(&mut notes, &source, &report);
                let name = if request.name.is_empty() {
                    slug_from(&source)
                } else {
                    request.name.clone()
                };
                manifest = WorkspaceManifest::new(&name, now);
                environments = BTreeMap::new();
                let env_root = staging.join("environments");
                let entries = fs::read_dir(&env_root)
                    .map_err(StoreError::io("reading directory", &env_root))?;
                for entry in entries.flatten() {
                    let env_name = entry.file_name().to_string_lossy().into_owned();
                    let path = environment_file(staging, &env_name);
                    if !path.is_file() {
                        continue;
                    }
                    if !is_slug(&env_name) {
                        return Err(StoreError::BadRequest(format!(
                            "{}: `{env_name}` is not a valid environment name",
                            path.display()
                        )));
                    }
                    environments.insert(env_name, read_environment(&path)?);
                }
                notes.push(format!(
                    "created {WORKSPACE_FILE}; kept environments {}",
                    environments.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            } else {
                // A plain project directory: it becomes projects/<name>.
                let name = if request.name.is_empty() {
                    slug_from(&source)
                } else {
                    request.name.clone()
                };
                manifest = WorkspaceManifest::new(&name, now);
                let project_dir = staging.join("projects").join(&name);
                fs::create_dir_all(&project_dir)
                    .map_err(StoreError::io("creating directory", &project_dir))?;
                let report = copy_tree(&source, &project_dir)?;
                describe_copy(&mut notes, &source, &report);
                manifest.projects.push(Project {
                    name: name.clone(),
                    path: format!("projects/{name}"),
                    git: None,
                });
                for language in detect_languages(&project_dir) {
                    if !manifest.languages.iter().any(|l| l == language) {
                        manifest.languages.push(language.to_string());
                    }
                }
                environments = BTreeMap::new();
            }
        }
        None => {
            manifest = WorkspaceManifest::new(&request.name, now);
            environments = BTreeMap::new();
        }
    }
    apply_request_fields(request, &mut manifest);
    if let Some(template) = &request.template {
        let Some(applied) = templates::apply(template, &mut manifest) else {
            return Err(StoreError::BadRequest(format!(
                "unknown template `{template}`; built-in templates are: {}",
                templates::TEMPLATE_NAMES.join(", ")
            )));
        };
        for (path, content) in applied.files {
            let target = staging.join(path);
            if target.exists() {
                continue;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(StoreError::io("creating directory", parent))?;
            }
            fs::write(&target, content).map_err(StoreError::io("writing", &target))?;
            if path.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                    .map_err(StoreError::io("setting mode of", &target))?;
            }
        }
        for (name, spec) in applied.environments {
            environments.entry(name).or_insert(spec);
        }
    }
    for dir in STANDARD_DIRS {
        let path = staging.join(dir);
        fs::create_dir_all(&path).map_err(StoreError::io("creating directory", &path))?;
    }
    manifest.environments = environments.keys().cloned().collect();
    Prepared::checked(staging, manifest, environments, notes, None)
}

/// Whether `dir` has any `environments/<name>/environment.yaml`.
fn has_environment_files(dir: &Path) -> bool {
    fs::read_dir(dir.join("environments")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join(ENVIRONMENT_FILE).is_file())
    })
}

fn apply_request_fields(request: &CreateRequest, manifest: &mut WorkspaceManifest) {
    if let Some(title) = &request.title {
        manifest.title = title.clone();
    }
    if let Some(description) = &request.description {
        manifest.description = description.clone();
    }
    if let Some(kind) = request.kind {
        manifest.kind = kind;
    }
    for (list, extra) in [
        (&mut manifest.tags, &request.tags),
        (&mut manifest.languages, &request.languages),
        (&mut manifest.tools, &request.tools),
    ] {
        for value in extra {
            if !list.contains(value) {
                list.push(value.clone());
            }
        }
    }
}

fn describe_copy(notes: &mut Vec<String>, source: &Path, report: &CopyReport) {
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    notes.push(format!(
        "copied {} ({}) and {} from {}",
        count(report.files, "file", "files"),
        count(report.bytes, "byte", "bytes"),
        count(report.symlinks, "symlink", "symlinks"),
        source.display()
    ));
    for skipped in &report.skipped {
        notes.push(format!("left out special file {skipped}"));
    }
}

/// A slug made from a directory's name (`My Project_2` → `my-project-2`).
/// Makes a new workspace in `staging` from the template workspace at `source`: its files,
/// projects and environments, with a new id, the request's name and fields, revision 1,
/// unshared, no longer a template, and every `{{ parameter }}` in `workspace.yaml`, the
/// environments and the template's `files` filled in. Git projects declared by URL only are
/// cloned.
pub fn from_template(
    source: &Path,
    request: &CreateRequest,
    staging: &Path,
    git: &crate::git::Git,
) -> Result<Prepared, StoreError> {
    let template_manifest: WorkspaceManifest = yaml::read_file(&source.join(WORKSPACE_FILE))?;
    let Some(template) = template_manifest.template.clone() else {
        return Err(StoreError::BadRequest(format!(
            "`{}` is not a template (`aienv ws template {}` makes it one)",
            template_manifest.name, template_manifest.name
        )));
    };
    let values = template
        .fill(&request.template_values)
        .map_err(StoreError::BadRequest)?;
    let report = copy_tree(source, staging)?;
    let mut notes = Vec::new();
    describe_copy(&mut notes, source, &report);
    // workspace.yaml first: fill, then make it a new workspace.
    let manifest_path = staging.join(WORKSPACE_FILE);
    let text =
        fs::read_to_string(&manifest_path).map_err(StoreError::io("reading", &manifest_path))?;
    let mut manifest: WorkspaceManifest =
        yaml::from_str(&crate::model::substitute(&text, &values), &manifest_path)?;
    let now = Utc::now();
    manifest.id = uuid::Uuid::new_v4();
    manifest.name = request.name.clone();
    manifest.revision = 1;
    manifest.created = now;
    manifest.updated = now;
    manifest.sharing = crate::model::Sharing::default();
    manifest.template = None;
    apply_request_fields(request, &mut manifest);
    let mut filled = 0;
    let mut targets: Vec<String> = manifest
        .environments
        .iter()
        .map(|name| format!("environments/{name}/{ENVIRONMENT_FILE}"))
        .collect();
    targets.extend(template.files.iter().cloned());
    for relative in &targets {
        let parent = Path::new(relative)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if crate::git::no_link_on_the_way(staging, &parent).is_err() {
            return Err(StoreError::BadRequest(format!(
                "template file {relative} passes through a link"
            )));
        }
        let path = staging.join(relative);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > 4 << 20 {
            return Err(StoreError::BadRequest(format!(
                "template file {relative} is not a regular file of at most 4 MiB"
            )));
        }
        let text = fs::read_to_string(&path).map_err(StoreError::io("reading", &path))?;
        let replaced = crate::model::substitute(&text, &values);
        if replaced != text {
            fs::write(&path, replaced).map_err(StoreError::io("writing", &path))?;
            filled += 1;
        }
    }
    let mut environments = BTreeMap::new();
    for name in &manifest.environments {
        let path = environment_file(staging, name);
        if path.is_file() {
            environments.insert(name.clone(), read_environment(&path)?);
        }
    }
    let mut projects_cloned = Vec::new();
    for project in &manifest.projects {
        let has_git = fs::symlink_metadata(staging.join(&project.path).join(".git")).is_ok();
        if project.git.is_some() && !has_git {
            if let Some(arrival) = git.arrive(staging, project) {
                projects_cloned.push(arrival.note);
            }
        }
    }
    notes.push(format!(
        "made from template `{}`{}; {filled} file(s) filled in",
        template_manifest.name,
        if values.is_empty() {
            String::new()
        } else {
            format!(
                " with {}",
                values
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    notes.extend(projects_cloned);
    Prepared::checked(
        staging,
        manifest,
        environments,
        notes,
        request.from_peer.clone(),
    )
}

/// The slug a repository URL names (`https://h/group/My_Repo.git` → `my-repo`).
pub fn repo_slug(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    slug_from(Path::new(last))
}

/// Clones `source` into `projects/<repo>` of a prepared workspace, declares it, and, when the
/// workspace has no environment yet, adds the one detection proposes from its files.
pub fn add_git_project(
    mut prepared: Prepared,
    source: &crate::model::GitSource,
    local: bool,
    git: &crate::git::Git,
) -> Result<Prepared, StoreError> {
    let name = repo_slug(&source.url);
    let path = format!("projects/{name}");
    if prepared
        .manifest
        .projects
        .iter()
        .any(|p| p.name == name || p.path == path)
    {
        return Err(StoreError::BadRequest(format!(
            "the workspace already has a project `{name}`"
        )));
    }
    let dest = prepared.staging.join(&path);
    if dest.exists() {
        fs::remove_dir(&dest).map_err(|_| {
            StoreError::BadRequest(format!(
                "{path} already holds files; the clone needs it empty"
            ))
        })?;
    }
    let parent = dest.parent().expect("projects/<name> has a parent");
    fs::create_dir_all(parent).map_err(StoreError::io("creating directory", parent))?;
    let state = git.clone_into(&source.url, source.git_ref.as_deref(), &dest, local)?;
    prepared.notes.push(format!(
        "cloned {} into {path} at {}{}",
        crate::git::mask_url(&source.url).0,
        state
            .commit
            .as_deref()
            .map_or("no commit", |c| &c[..c.len().min(12)]),
        state
            .branch
            .as_deref()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default()
    ));
    for language in detect_languages(&dest) {
        if !prepared.manifest.languages.iter().any(|l| l == language) {
            prepared.manifest.languages.push(language.to_string());
        }
    }
    prepared.manifest.projects.push(Project {
        name,
        path: path.clone(),
        git: Some(source.clone()),
    });
    if prepared.environments.is_empty() {
        let detection = crate::runtime_supervisor::detect::detect(
            &prepared.staging,
            std::slice::from_ref(&path),
        );
        prepared.notes.push(format!(
            "proposed environment `default` from {}",
            detection.findings.join("; ")
        ));
        prepared
            .environments
            .insert("default".into(), detection.spec);
        prepared.manifest.environments = prepared.environments.keys().cloned().collect();
    }
    prepared
        .manifest
        .validate()
        .map_err(|errors| StoreError::Invalid {
            file: "request".into(),
            errors,
        })?;
    Ok(prepared)
}

fn slug_from(path: &Path) -> String {
    let raw = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut slug = String::new();
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(63).collect();
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "workspace".to_string()
    } else {
        slug
    }
}

/// Languages evident from a project's top-level files.
fn detect_languages(project: &Path) -> Vec<&'static str> {
    let has = |name: &str| project.join(name).exists();
    let mut languages = Vec::new();
    if has("requirements.txt") || has("pyproject.toml") || has("setup.py") || has("environment.yml")
    {
        languages.push("python");
    }
    if has("package.json") {
        languages.push("javascript");
    }
    if has("Cargo.toml") {
        languages.push("rust");
    }
    if has("go.mod") {
        languages.push("go");
    }
    languages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_described_in_words_that_agree_with_its_counts() {
        let mut notes = Vec::new();
        let one = CopyReport {
            files: 1,
            bytes: 1,
            symlinks: 1,
            skipped: Vec::new(),
        };
        describe_copy(&mut notes, Path::new("/src/p"), &one);
        let many = CopyReport {
            files: 2,
            bytes: 0,
            symlinks: 3,
            skipped: vec!["fifo".into()],
        };
        describe_copy(&mut notes, Path::new("/src/q"), &many);
        assert_eq!(
            notes,
            [
                "copied 1 file (1 byte) and 1 symlink from /src/p",
                "copied 2 files (0 bytes) and 3 symlinks from /src/q",
                "left out special file fifo",
            ]
        );
    }

    #[test]
    fn slugs_from_directory_names() {
        assert_eq!(slug_from(Path::new("/x/My Project_2")), "my-project-2");
        assert_eq!(slug_from(Path::new("/x/__")), "workspace");
        assert_eq!(slug_from(Path::new("/x/llama")), "llama");
        assert_eq!(repo_slug("https://h/group/My_Repo.git"), "my-repo");
        assert_eq!(repo_slug("git@h:team/tool.git/"), "tool");
        assert_eq!(repo_slug("git://10.0.0.1/x"), "x");
    }
}
