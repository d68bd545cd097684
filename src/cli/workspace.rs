//! `aienv ws ...`: workspace commands.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;

use crate::api::{CreateWorkspace, ShareRequest, UpdateWorkspace, WorkspaceDto};
use crate::client::{Client, ListQuery};

use super::output::{self, exit, CliError};
use super::Cli;

/// Workspace commands.
#[derive(Debug, Subcommand)]
pub enum WsCommand {
    /// Create a workspace: empty, from a template, or adopting a directory.
    Create {
        /// Name (lower-case letters, digits, hyphens). Optional with --from DIR holding a
        /// workspace.yaml.
        name: Option<String>,
        /// Title.
        #[arg(long)]
        title: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Type: general, notebook, training, fine-tuning, inference, dataset, model, app, course.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Language (repeatable).
        #[arg(long = "lang")]
        languages: Vec<String>,
        /// Tool (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// Template: built-in (empty, python, notebook), a workspace template here, or
        /// PEER/NAME one a peer shares (`aienv ws templates` lists them).
        #[arg(long)]
        template: Option<String>,
        /// A template parameter's value (repeatable): `--set python=3.11`.
        #[arg(long = "set", value_name = "NAME=VALUE", requires = "template")]
        parameters: Vec<String>,
        /// Adopt this directory (on the node's machine): its files are copied in.
        #[arg(long = "from", conflicts_with = "git")]
        from_dir: Option<PathBuf>,
        /// Clone this repository as the workspace's project, at a branch, tag or commit
        /// (`URL@REF`); the name defaults to the repository's, and detection proposes its
        /// environment.
        #[arg(long, value_name = "URL[@REF]")]
        git: Option<String>,
    },
    /// List workspaces, with filters and free-text search.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        filter: super::FilterArgs,
        /// Only shared workspaces.
        #[arg(long, conflicts_with = "unshared")]
        shared: bool,
        /// Only unshared workspaces.
        #[arg(long)]
        unshared: bool,
        /// Page size; without it every match is listed.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Offer a workspace as a template (its parameters are declared under `template` in its
    /// workspace.yaml; shared, it appears as a template in the network catalog).
    Template {
        /// Name or id.
        workspace: String,
        /// Stop offering it as a template.
        #[arg(long)]
        off: bool,
    },
    /// List the templates: built-in, this node's, and those peers share.
    Templates,
    /// Show one workspace.
    Show {
        /// Name or id.
        workspace: String,
    },
    /// Change a workspace. Without field flags, opens workspace.yaml (or an environment's
    /// environment.yaml with --env) in $EDITOR.
    Edit {
        /// Name or id.
        workspace: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New title.
        #[arg(long)]
        title: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New type.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Add a tag (repeatable).
        #[arg(long)]
        add_tag: Vec<String>,
        /// Remove a tag (repeatable).
        #[arg(long)]
        rm_tag: Vec<String>,
        /// Replace languages (repeatable).
        #[arg(long = "lang")]
        languages: Vec<String>,
        /// Replace tools (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// Edit this environment's environment.yaml (created if new).
        #[arg(long = "env")]
        environment: Option<String>,
        /// Take the new YAML from this file instead of an editor.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete a workspace and its history.
    Rm {
        /// Name or id.
        workspace: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Share a workspace with the LAN, or only with some peers.
    Share {
        /// Name or id.
        workspace: String,
        /// Share only with this peer (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
    },
    /// Stop sharing a workspace.
    Unshare {
        /// Name or id.
        workspace: String,
    },
    /// Show or change who may use a workspace: its owner and members, and the peers whose
    /// clones may push changes into it.
    Access {
        /// Name or id.
        workspace: String,
        /// Make this user a member (repeatable): they may run, open and change it.
        #[arg(long = "add", value_name = "USER")]
        add: Vec<String>,
        /// Take this user's membership away (repeatable).
        #[arg(long = "remove", value_name = "USER")]
        remove: Vec<String>,
        /// Let this trusted peer's clones push their changes here (`aienv sync WS --push`
        /// there; repeatable).
        #[arg(long = "writer", value_name = "PEER")]
        writer: Vec<String>,
        /// Take this peer's right to push away (repeatable).
        #[arg(long = "no-writer", value_name = "PEER")]
        no_writer: Vec<String>,
        /// Give the workspace to this user (admins only).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// List a workspace's revisions.
    History {
        /// Name or id.
        workspace: String,
    },
    /// Make an earlier revision current again (as a new revision).
    Restore {
        /// Name or id.
        workspace: String,
        /// Revision to restore.
        revision: u64,
    },
    /// Export a workspace as one .tar.zst archive.
    Export {
        /// Name or id.
        workspace: String,
        /// Output file (default: NAME.tar.zst).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Import a workspace from an archive.
    Import {
        /// The .tar.zst archive.
        archive: PathBuf,
        /// Name for the imported workspace (when its name is taken).
        #[arg(long = "as")]
        rename_to: Option<String>,
    },
}

fn row(workspace: &WorkspaceDto) -> Vec<String> {
    vec![
        workspace.name.clone(),
        workspace.kind.clone(),
        workspace.revision.to_string(),
        if workspace.sharing.enabled {
            workspace.sharing.mode.clone()
        } else {
            "-".into()
        },
        output::cell(&workspace.tags.join(","), 30),
        output::cell(&workspace.title, 40),
    ]
}

const HEADER: [&str; 6] = ["NAME", "TYPE", "REV", "SHARED", "TAGS", "TITLE"];

fn print_workspace(cli: &Cli, workspace: &WorkspaceDto) {
    if cli.json {
        output::print_json(workspace);
    } else {
        output::print_table(&HEADER, &[row(workspace)]);
    }
}

/// Runs a workspace command.
pub async fn run(cli: &Cli, client: &Client, command: &WsCommand) -> Result<(), CliError> {
    match command {
        WsCommand::Create {
            name,
            title,
            description,
            tags,
            kind,
            languages,
            tools,
            template,
            parameters,
            from_dir,
            git,
        } => {
            let from_dir = match from_dir {
                Some(dir) => Some(
                    std::path::absolute(dir)
                        .map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            if name.is_none() && from_dir.is_none() && git.is_none() {
                return Err(CliError::with_code(
                    exit::USAGE,
                    "give a NAME, --from DIR or --git URL[@REF]",
                ));
            }
            let created = client
                .create(&CreateWorkspace {
                    name: name.clone().unwrap_or_default(),
                    title: title.clone(),
                    description: description.clone(),
                    tags: tags.clone(),
                    kind: kind.clone(),
                    languages: languages.clone(),
                    tools: tools.clone(),
                    template: template.clone(),
                    from_dir,
                    git: git.as_deref().map(crate::api::GitSourceDto::parse),
                    parameters: parse_parameters(parameters)?,
                })
                .await?;
            if cli.json {
                output::print_json(&created);
            } else {
                for note in &created.notes {
                    eprintln!("note: {note}");
                }
                println!(
                    "created workspace `{}` ({})",
                    created.workspace.name, created.workspace.id
                );
            }
        }
        WsCommand::Template { workspace, off } => {
            let updated = client
                .update(
                    workspace,
                    &UpdateWorkspace {
                        template: Some(!off),
                        ..UpdateWorkspace::default()
                    },
                )
                .await?;
            if cli.json {
                output::print_json(&updated);
            } else if *off {
                println!("`{}` is no longer a template", updated.name);
            } else {
                let parameters = updated
                    .template
                    .as_ref()
                    .map(|t| {
                        t.parameters
                            .iter()
                            .map(|p| p.name.clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                println!(
                    "`{}` is a template{}; `aienv ws create NAME --template {}` makes a workspace from it{}",
                    updated.name,
                    if parameters.is_empty() {
                        " (declare parameters under `template.parameters` in its workspace.yaml)".to_string()
                    } else {
                        format!(" with parameters {}", parameters.join(", "))
                    },
                    updated.name,
                    if updated.sharing.enabled { ", and peers see it" } else { "; share it for peers" }
                );
            }
        }
        WsCommand::Templates => {
            let listed = client.templates().await?;
            if cli.json {
                output::print_json(&listed);
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            for name in listed["builtin"].as_array().into_iter().flatten() {
                rows.push(vec![
                    name.as_str().unwrap_or_default().to_string(),
                    "built-in".into(),
                    String::new(),
                ]);
            }
            for (kind, list) in [("here", &listed["local"]), ("peer", &listed["network"])] {
                for item in list.as_array().into_iter().flatten() {
                    let parameters: Vec<String> = item["template"]["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| match p["default"].as_str() {
                            Some(default) => {
                                format!("{}={default}", p["name"].as_str().unwrap_or(""))
                            }
                            None => format!("{} (required)", p["name"].as_str().unwrap_or("")),
                        })
                        .collect();
                    rows.push(vec![
                        item["name"].as_str().unwrap_or_default().to_string(),
                        kind.into(),
                        parameters.join(", "),
                    ]);
                }
            }
            output::print_table(&["TEMPLATE", "FROM", "PARAMETERS"], &rows);
        }
        WsCommand::Ls {
            filter,
            shared,
            unshared,
            limit,
        } => {
            let query = ListQuery {
                kind: filter.kind.clone(),
                tool: filter.tool.clone(),
                lang: filter.language.clone(),
                tag: filter.tag.clone(),
                q: filter.text(),
                shared: if *shared {
                    Some(true)
                } else if *unshared {
                    Some(false)
                } else {
                    None
                },
                limit: *limit,
                cursor: None,
            };
            let items = match limit {
                Some(_) => client.list(&query).await?.items,
                None => client.list_all(&query).await?,
            };
            if cli.json {
                output::print_json(&items);
            } else {
                let rows: Vec<Vec<String>> = items.iter().map(row).collect();
                output::print_table(&HEADER, &rows);
            }
        }
        WsCommand::Show { workspace } => {
            let detail = client.get(workspace).await?;
            if cli.json {
                output::print_json(&detail);
            } else {
                let w = &detail.workspace;
                // What a clone shows came from a peer: never let it drive the terminal.
                macro_rules! say {
                    ($($arg:tt)*) => {
                        for line in format!($($arg)*).split('\n') {
                            println!("{}", output::printable(line));
                        }
                    };
                }
                say!("name:         {}", w.name);
                say!("id:           {}", w.id);
                if !w.title.is_empty() {
                    say!("title:        {}", w.title);
                }
                say!("type:         {}", w.kind);
                say!("revision:     {}", w.revision);
                say!("created:      {}", w.created.to_rfc3339());
                say!("updated:      {}", w.updated.to_rfc3339());
                say!(
                    "sharing:      {}",
                    if w.sharing.enabled {
                        format!("{} {}", w.sharing.mode, w.sharing.peers.join(","))
                    } else {
                        "not shared".into()
                    }
                    .trim_end()
                );
                say!("tags:         {}", w.tags.join(", "));
                say!("languages:    {}", w.languages.join(", "));
                say!("tools:        {}", w.tools.join(", "));
                for project in &w.projects {
                    say!("project:      {} ({})", project.name, project.path);
                    if let Some(git) = &project.git {
                        say!("  git:        {}", describe_git(git));
                        for remote in &git.remotes {
                            say!("  remote:     {} {}", remote.name, remote.url);
                        }
                        for warning in &git.warnings {
                            say!("  warning:    {warning}");
                        }
                    } else if let Some(url) = &project.git_url {
                        say!("  git:        declared {url} (not a checkout here)");
                    }
                }
                say!("environments: {}", w.environments.join(", "));
                if let Some(origin) = &w.origin {
                    say!(
                        "cloned from:  {}/{} (revision {}, {})",
                        origin.peer_name,
                        origin.workspace_name,
                        origin.revision,
                        match origin.synced_at {
                            Some(at) => format!("synced {}", at.to_rfc3339()),
                            None => format!("cloned {}", origin.cloned_at.to_rfc3339()),
                        }
                    );
                    for rebuild in &origin.needs_rebuild {
                        say!("needs rebuild: {rebuild}");
                    }
                }
                if let Some(path) = &w.path {
                    say!("path:         {path}");
                }
                if !w.description.is_empty() {
                    say!("\n{}", w.description);
                }
            }
        }
        WsCommand::Edit {
            workspace,
            name,
            title,
            description,
            kind,
            add_tag,
            rm_tag,
            languages,
            tools,
            environment,
            file,
        } => {
            let has_fields = name.is_some()
                || title.is_some()
                || description.is_some()
                || kind.is_some()
                || !add_tag.is_empty()
                || !rm_tag.is_empty()
                || !languages.is_empty()
                || !tools.is_empty();
            let updated = if has_fields {
                let tags = if add_tag.is_empty() && rm_tag.is_empty() {
                    None
                } else {
                    let current = client.get(workspace).await?.workspace.tags;
                    let mut tags: Vec<String> = current
                        .into_iter()
                        .filter(|t| !rm_tag.contains(t))
                        .collect();
                    for tag in add_tag {
                        if !tags.contains(tag) {
                            tags.push(tag.clone());
                        }
                    }
                    Some(tags)
                };
                client
                    .update(
                        workspace,
                        &UpdateWorkspace {
                            name: name.clone(),
                            title: title.clone(),
                            description: description.clone(),
                            tags,
                            kind: kind.clone(),
                            languages: (!languages.is_empty()).then(|| languages.clone()),
                            tools: (!tools.is_empty()).then(|| tools.clone()),
                            template: None,
                            expected_revision: None,
                        },
                    )
                    .await?
            } else {
                let current = match environment {
                    Some(env) => match client.environment(workspace, env).await {
                        Ok(text) => text,
                        Err(error)
                            if error.status() == Some(404)
                                && error.code() == Some("environment-not-found") =>
                        {
                            "schema_version: 1\nruntime: auto\n".to_string()
                        }
                        Err(error) => return Err(error.into()),
                    },
                    None => client.manifest(workspace).await?,
                };
                let text = match file {
                    Some(path) => std::fs::read_to_string(path)
                        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?,
                    None => edit_in_editor(&current)?,
                };
                if text == current {
                    eprintln!("no changes");
                    return Ok(());
                }
                match environment {
                    Some(env) => client.put_environment(workspace, env, text).await?,
                    None => client.put_manifest(workspace, text).await?,
                }
            };
            if cli.json {
                output::print_json(&updated);
            } else {
                println!(
                    "workspace `{}` is now at revision {}",
                    updated.name, updated.revision
                );
            }
        }
        WsCommand::Rm { workspace, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::with_code(
                        exit::USAGE,
                        format!(
                            "refusing to delete `{workspace}` without confirmation; pass --yes"
                        ),
                    ));
                }
                eprint!("delete workspace `{workspace}` and all its files? [y/N] ");
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| CliError::new(e.to_string()))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(CliError::new("not deleted"));
                }
            }
            client.delete(workspace).await?;
            if cli.json {
                output::print_json(&serde_json::json!({"deleted": workspace}));
            } else {
                println!("deleted workspace `{workspace}`");
            }
        }
        WsCommand::Share { workspace, peers } => {
            let request = ShareRequest {
                mode: Some(if peers.is_empty() { "lan" } else { "peers" }.into()),
                peers: peers.clone(),
            };
            let updated = client.share(workspace, &request).await?;
            print_workspace(cli, &updated);
            if !cli.json {
                for warning in &updated.warnings {
                    eprintln!("warning: {}", output::printable(warning));
                }
            }
        }
        WsCommand::Unshare { workspace } => {
            let updated = client.unshare(workspace).await?;
            print_workspace(cli, &updated);
        }
        WsCommand::Access {
            workspace,
            add,
            remove,
            owner,
            writer,
            no_writer,
        } => {
            let mut access = client.access(workspace).await?;
            let changing = !add.is_empty()
                || !remove.is_empty()
                || owner.is_some()
                || !writer.is_empty()
                || !no_writer.is_empty();
            if changing {
                let mut members = access.members.clone();
                for name in add {
                    if !members.contains(name) {
                        members.push(name.clone());
                    }
                }
                members.retain(|m| !remove.contains(m));
                let mut writers = access.writers.clone();
                for name in writer {
                    if !writers.contains(name) {
                        writers.push(name.clone());
                    }
                }
                writers.retain(|w| !no_writer.contains(w));
                let request = crate::api::AccessUpdate {
                    owner: owner.clone(),
                    members: (members != access.members).then_some(members),
                    writers: (writers != access.writers).then_some(writers),
                };
                access = client.set_access(workspace, &request).await?;
            }
            if cli.json {
                output::print_json(&access);
            } else {
                println!("owner    {}", access.owner);
                println!(
                    "members  {}",
                    if access.members.is_empty() {
                        "(none)".to_string()
                    } else {
                        access.members.join(", ")
                    }
                );
                println!(
                    "writers  {}",
                    if access.writers.is_empty() {
                        "(no peer may push)".to_string()
                    } else {
                        access.writers.join(", ")
                    }
                );
                let can = |yes: bool| if yes { "yes" } else { "no" };
                println!(
                    "you      {} ({}): use {}, change {}, change members {}",
                    access.you,
                    access.role,
                    can(access.may_use),
                    can(access.may_change),
                    can(access.may_grant)
                );
            }
        }
        WsCommand::History { workspace } => {
            let history = client.revisions(workspace).await?;
            if cli.json {
                output::print_json(&history);
            } else {
                let rows: Vec<Vec<String>> = history
                    .iter()
                    .map(|r| {
                        vec![
                            r.revision.to_string(),
                            r.at.to_rfc3339(),
                            r.by.clone(),
                            r.change.clone(),
                        ]
                    })
                    .collect();
                output::print_table(&["REV", "AT", "BY", "CHANGE"], &rows);
            }
        }
        WsCommand::Restore {
            workspace,
            revision,
        } => {
            let updated = client.restore(workspace, *revision).await?;
            if cli.json {
                output::print_json(&updated);
            } else {
                println!(
                    "restored revision {revision} of `{}` as revision {}",
                    updated.name, updated.revision
                );
            }
        }
        WsCommand::Export { workspace, output } => {
            let target = output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{workspace}.tar.zst")));
            let bar = progress_bar(cli, None, "exporting");
            let progress = {
                let bar = bar.clone();
                move |done| bar.set_position(done)
            };
            let total = client.export(workspace, &target, progress).await;
            bar.finish_and_clear();
            let total = total?;
            if cli.json {
                output::print_json(&serde_json::json!({"file": target, "bytes": total}));
            } else {
                println!(
                    "exported `{workspace}` to {} ({})",
                    target.display(),
                    output::bytes(total)
                );
            }
        }
        WsCommand::Import { archive, rename_to } => {
            let size = std::fs::metadata(archive)
                .map_err(|e| CliError::new(format!("{}: {e}", archive.display())))?
                .len();
            let bar = progress_bar(cli, Some(size), "uploading");
            let progress = {
                let bar = bar.clone();
                move |done| bar.set_position(done)
            };
            let created = client.import(archive, rename_to.as_deref(), progress).await;
            bar.finish_and_clear();
            let created = created?;
            if cli.json {
                output::print_json(&created);
            } else {
                for note in &created.notes {
                    eprintln!("note: {note}");
                }
                let files = created.import.as_ref().map_or(0, |i| i.files);
                println!(
                    "imported workspace `{}` ({}, {files} files, verified)",
                    created.workspace.name, created.workspace.id
                );
            }
        }
    }
    Ok(())
}

fn progress_bar(cli: &Cli, total: Option<u64>, label: &'static str) -> indicatif::ProgressBar {
    if cli.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(label);
    bar
}

fn edit_in_editor(current: &str) -> Result<String, CliError> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let path = std::env::temp_dir().join(format!("aienv-edit-{}.yaml", std::process::id()));
    std::fs::write(&path, current)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|e| CliError::new(format!("cannot start editor `{editor}`: {e}")));
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status? {
        s if s.success() => text.map_err(|e| CliError::new(e.to_string())),
        s => Err(CliError::new(format!(
            "editor `{editor}` exited with {s}; nothing changed"
        ))),
    }
}

/// `a1b2c3d4e5f6 on main (origin/main, 2 ahead), 3 uncommitted: a.py, b.py, c.txt`.
fn describe_git(git: &crate::api::GitStateDto) -> String {
    if let Some(error) = &git.error {
        return format!("not read: {error}");
    }
    let commit = git
        .commit
        .as_deref()
        .map_or("no commit yet", |c| &c[..c.len().min(12)]);
    let mut text = match &git.branch {
        Some(branch) => format!("{commit} on {branch}"),
        None => format!("{commit} (detached)"),
    };
    if let Some(upstream) = &git.upstream {
        let mut parts = vec![upstream.clone()];
        if let Some(ahead) = git.ahead.filter(|a| *a > 0) {
            parts.push(format!("{ahead} ahead"));
        }
        if let Some(behind) = git.behind.filter(|b| *b > 0) {
            parts.push(format!("{behind} behind"));
        }
        text.push_str(&format!(" ({})", parts.join(", ")));
    }
    if git.dirty {
        let shown: Vec<&str> = git.changed.iter().take(5).map(String::as_str).collect();
        let more = git.changed_count.saturating_sub(shown.len());
        text.push_str(&format!(
            ", {} uncommitted: {}{}",
            git.changed_count,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    } else {
        text.push_str(", clean");
    }
    text
}

/// `NAME=VALUE` pairs of `--set`.
fn parse_parameters(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| {
                    CliError::with_code(exit::USAGE, format!("--set {pair}: write NAME=VALUE"))
                })
        })
        .collect()
}
