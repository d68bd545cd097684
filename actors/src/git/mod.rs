//! Git projects: the node shells out to `git` (so LFS, submodules, ssh config and the
//! operator's own git settings keep working) rather than re-implementing it.
//!
//! Every run is hardened the same way: no terminal prompts, no askpass programs, hooks and
//! fsmonitor off, the node's own credential helper only, a deadline that kills git and its
//! helpers. A checkout's `.git` is untrusted content, so [`safety::check_checkout`] vets it
//! before git runs there.

mod arrival;
mod command;
pub mod safety;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use arrival::Arrival;

/// Most changed paths listed in a project's state.
const MAX_LISTED: usize = 50;

/// How the node runs git.
#[derive(Debug, Clone)]
pub struct Git {
    /// `credential.helper` value that answers from the node's configuration, if any.
    helper: Option<String>,
    /// Deadline of a clone or fetch.
    pub network_timeout: Duration,
    /// Deadline of a quick look at a remote (is it reachable?).
    pub probe_timeout: Duration,
    /// Deadline of local commands.
    pub local_timeout: Duration,
}

impl Default for Git {
    fn default() -> Self {
        Git::new(None)
    }
}

/// What went wrong running git.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No `git` on `PATH`.
    #[error("`git` is not installed on this node (Debian: apt install git)")]
    NotInstalled,
    /// git could not be started.
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// git ran past its deadline and was stopped.
    #[error("`{command}` did not finish within {seconds} s and was stopped")]
    Timeout { command: String, seconds: u64 },
    /// The directory has no `.git`.
    #[error("{path} is not a git checkout")]
    NotACheckout { path: String },
    /// The checkout's own settings could make git run programs.
    #[error("the node will not run git in {path}: {reason}")]
    Unsafe { path: String, reason: String },
    /// A remote URL the node refuses.
    #[error("git remote `{url}` refused: {reason}")]
    BadUrl { url: String, reason: String },
    /// The remote refused the node's credentials, or needed some it lacks.
    #[error(
        "git remote {url} refused access ({detail}); the node's credentials for it are in \
         `git.credentials` of its configuration"
    )]
    Auth { url: String, detail: String },
    /// The remote could not be reached.
    #[error("git remote {url} is not reachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// The branch, tag or commit does not exist.
    #[error("`{git_ref}` is not a branch, tag or commit of {url}")]
    UnknownRef { url: String, git_ref: String },
    /// git failed otherwise.
    #[error("`{command}` failed in {dir}: {stderr}")]
    Failed {
        command: String,
        dir: String,
        stderr: String,
    },
}

/// A project checkout as `ws show` and the dashboard show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// Current commit (absent in a repository without commits).
    pub commit: Option<String>,
    /// Current branch (absent when detached).
    pub branch: Option<String>,
    /// The branch's upstream, such as `origin/main`.
    pub upstream: Option<String>,
    /// Commits ahead of / behind the upstream.
    pub ahead: Option<u64>,
    /// Commits behind the upstream.
    pub behind: Option<u64>,
    /// Remotes by name, credentials in URLs masked.
    pub remotes: Vec<(String, String)>,
    /// Uncommitted changes (modified, staged, untracked), the first few paths.
    pub changed: Vec<String>,
    /// How many paths have uncommitted changes.
    pub changed_count: usize,
    /// Things the person should know (a remote URL holding a credential, ...).
    pub warnings: Vec<String>,
}

impl GitState {
    /// Whether anything is uncommitted.
    pub fn dirty(&self) -> bool {
        self.changed_count > 0
    }
}

impl Git {
    /// Git with the node's credential helper command (`None`: no credentials configured).
    pub fn new(helper: Option<String>) -> Git {
        Git {
            helper,
            network_timeout: Duration::from_secs(600),
            probe_timeout: Duration::from_secs(20),
            local_timeout: Duration::from_secs(60),
        }
    }

    /// A hardened `git` command running in `dir`.
    fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new("git");
        command.current_dir(dir);
        for name in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_ASKPASS",
            "SSH_ASKPASS",
            "GIT_CONFIG_PARAMETERS",
            "GIT_CONFIG_COUNT",
            "GIT_EXEC_PATH",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        ] {
            command.env_remove(name);
        }
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_PAGER", "cat")
            .env("LC_ALL", "C");
        if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
            command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        command.args([
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.askPass=",
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "submodule.recurse=false",
            "-c",
            "credential.helper=",
        ]);
        if let Some(helper) = &self.helper {
            command.arg("-c").arg(format!("credential.helper={helper}"));
        }
        // A workspace an environment ran in belongs to the user environments run as, and git
        // refuses a repository another user owns — to keep its settings from running
        // programs as the caller. The node vets those settings itself before running git
        // anywhere (`safety`), so it tells git this directory is fine.
        command
            .arg("-c")
            .arg(format!("safe.directory={}", dir.display()));
        command
    }

    /// Runs git in `dir`; fails with git's own message unless it exits 0.
    fn run(
        &self,
        dir: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<command::Output, GitError> {
        let mut command = self.command(dir);
        command.args(args);
        let label = format!("git {}", args.first().copied().unwrap_or_default());
        let output = command::run(command, &label, timeout)?;
        if output.success() {
            Ok(output)
        } else {
            Err(GitError::Failed {
                command: format!("git {}", args.join(" ")),
                dir: dir.display().to_string(),
                stderr: output.stderr,
            })
        }
    }

    /// Runs a git command that talks to `url`, telling auth failures and unreachable
    /// remotes apart from other failures.
    fn run_remote(
        &self,
        dir: &Path,
        args: &[&str],
        url: &str,
        timeout: Duration,
    ) -> Result<command::Output, GitError> {
        self.run(dir, args, timeout)
            .map_err(|error| classify(error, url))
    }

    /// The state of each project of the workspace at `root` that is a git checkout, in
    /// order (projects without `.git` are left out).
    pub fn inspect_projects(
        &self,
        root: &Path,
        projects: &[crate::model::Project],
    ) -> Vec<(String, Result<GitState, GitError>)> {
        projects
            .iter()
            .filter_map(|project| {
                let dir = root.join(&project.path);
                if let Err(reason) = no_link_on_the_way(root, &project.path) {
                    return Some((
                        project.name.clone(),
                        Err(GitError::Unsafe {
                            path: dir.display().to_string(),
                            reason,
                        }),
                    ));
                }
                std::fs::symlink_metadata(dir.join(".git")).ok()?;
                Some((project.name.clone(), self.inspect(&dir)))
            })
            .collect()
    }

    /// The state of the checkout at `checkout`, after vetting its settings.
    pub fn inspect(&self, checkout: &Path) -> Result<GitState, GitError> {
        safety::check_checkout(checkout)?;
        let status = self.run(
            checkout,
            &[
                "status",
                "--porcelain=v2",
                "--branch",
                "-z",
                "--untracked-files=normal",
                "--ignore-submodules=all",
            ],
            self.local_timeout,
        )?;
        let mut state = parse_status(&status.stdout);
        let remotes = self
            .run(
                checkout,
                &["config", "-z", "--get-regexp", r"^remote\..*\.url$"],
                self.local_timeout,
            )
            .map(|o| o.stdout)
            .unwrap_or_default();
        for item in remotes.split(|b| *b == 0).filter(|i| !i.is_empty()) {
            let item = String::from_utf8_lossy(item);
            let Some((key, url)) = item.split_once('\n') else {
                continue;
            };
            let name = key
                .strip_prefix("remote.")
                .and_then(|k| k.strip_suffix(".url"))
                .unwrap_or(key);
            let (masked, had_secret) = mask_url(url);
            if had_secret {
                state.warnings.push(format!(
                    "remote `{name}` holds a credential in its URL, and it travels with the \
                     workspace; remove it and use the node's `git.credentials`"
                ));
            }
            state.remotes.push((name.to_string(), masked));
        }
        Ok(state)
    }

    /// Fast-forwards the checkout's branch from its upstream (`git pull --ff-only`); says
    /// what moved.
    pub fn pull(&self, checkout: &Path) -> Result<String, GitError> {
        let before = self.inspect(checkout)?;
        let (Some(branch), Some(upstream)) = (&before.branch, &before.upstream) else {
            return Err(GitError::Failed {
                command: "git pull".into(),
                dir: checkout.display().to_string(),
                stderr: "the checkout is not on a branch with an upstream to pull from".into(),
            });
        };
        let remote = upstream.split('/').next().unwrap_or_default();
        let url = before
            .remotes
            .iter()
            .find(|(name, _)| name == remote)
            .map(|(_, url)| url.clone())
            .unwrap_or_default();
        self.run_remote(
            checkout,
            &["pull", "--ff-only", "--no-rebase", "--quiet"],
            &url,
            self.network_timeout,
        )?;
        let after = self.inspect(checkout)?;
        let short = |c: &Option<String>| {
            c.as_deref()
                .map(|c| c[..c.len().min(12)].to_string())
                .unwrap_or_default()
        };
        Ok(if before.commit == after.commit {
            format!("{branch} already up to date at {}", short(&after.commit))
        } else {
            format!(
                "{branch} fast-forwarded from {} to {} ({upstream})",
                short(&before.commit),
                short(&after.commit)
            )
        })
    }

    /// Points branch `name` of the checkout at `commit`, which a peer's push brought (its
    /// objects were added with the pushed files). Only a name under `aienv/` is ever set, so
    /// a push never moves one of the checkout's own branches; the commit must be complete
    /// here, every object it reaches present.
    pub fn receive_branch(
        &self,
        checkout: &Path,
        name: &str,
        commit: &str,
    ) -> Result<String, GitError> {
        safety::check_checkout(checkout)?;
        let refname = format!("refs/heads/{name}");
        let hex = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !name.starts_with("aienv/") || !hex {
            return Err(GitError::UnknownRef {
                url: String::new(),
                git_ref: refname,
            });
        }
        self.run(
            checkout,
            &["check-ref-format", &refname],
            self.local_timeout,
        )
        .map_err(|_| GitError::UnknownRef {
            url: String::new(),
            git_ref: refname.clone(),
        })?;
        let current = self.run(
            checkout,
            &["rev-parse", "-q", "--verify", &refname],
            self.local_timeout,
        );
        if current.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == commit) {
            return Ok(format!("branch {name} already at {}", &commit[..12]));
        }
        let kind = self.run(checkout, &["cat-file", "-t", commit], self.local_timeout)?;
        if String::from_utf8_lossy(&kind.stdout).trim() != "commit" {
            return Err(GitError::Failed {
                command: format!("git cat-file -t {commit}"),
                dir: checkout.display().to_string(),
                stderr: "the pushed commit is not a commit here".into(),
            });
        }
        // Every object the commit reaches must be here before a ref may point at it.
        self.run(
            checkout,
            &["rev-list", "--objects", "--quiet", commit, "--not", "--all"],
            self.network_timeout,
        )?;
        self.run(
            checkout,
            &[
                "update-ref",
                "-m",
                "aienv: pushed from a clone",
                &refname,
                commit,
            ],
            self.local_timeout,
        )?;
        Ok(format!("branch {name} set to {}", &commit[..12]))
    }

    /// Clones `url` into `dest` (which must not exist) and checks out `git_ref` (branch,
    /// tag or commit; the remote's default branch when absent).
    pub fn clone_into(
        &self,
        url: &str,
        git_ref: Option<&str>,
        dest: &Path,
        local_allowed: bool,
    ) -> Result<GitState, GitError> {
        safety::check_url(url, local_allowed)?;
        if let Some(git_ref) = git_ref {
            check_ref(git_ref)?;
        }
        let parent = dest.parent().unwrap_or(Path::new("/"));
        let dest_arg = dest.display().to_string();
        self.run_remote(
            parent,
            &["clone", "--quiet", "--", url, &dest_arg],
            url,
            self.network_timeout,
        )?;
        if let Some(git_ref) = git_ref {
            let found = self.run(
                dest,
                &["checkout", "--quiet", git_ref, "--"],
                self.local_timeout,
            );
            if found.is_err() {
                return Err(GitError::UnknownRef {
                    url: mask_url(url).0,
                    git_ref: git_ref.to_string(),
                });
            }
        }
        self.inspect(dest)
    }
}

/// Refuses a project path that passes through a link (or a non-directory): git must never
/// run, nor `.git` move, outside the workspace. Missing parts are fine.
pub fn no_link_on_the_way(tree: &Path, relative: &str) -> Result<(), String> {
    let mut path = tree.to_path_buf();
    for component in Path::new(relative).components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", path.display())),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Refuses refs git would read as options or that cannot be names.
pub fn check_ref(git_ref: &str) -> Result<(), GitError> {
    let bad = git_ref.is_empty()
        || git_ref.len() > 255
        || git_ref.starts_with('-')
        || git_ref
            .chars()
            .any(|c| c.is_control() || c == ' ' || c == ':' || c == '\\');
    if bad {
        return Err(GitError::UnknownRef {
            url: String::new(),
            git_ref: git_ref.to_string(),
        });
    }
    Ok(())
}

/// `https://user:secret@host/x` → `https://user:***@host/x`, and whether a secret was there.
pub fn mask_url(url: &str) -> (String, bool) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), false);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), false);
    };
    let user_info = &authority[..at];
    let user = user_info.split(':').next().unwrap_or_default();
    let secret = user_info.contains(':') || (matches!(scheme, "http" | "https") && user.len() > 20);
    if !secret {
        return (url.to_string(), false);
    }
    let shown_user = if user_info.contains(':') { user } else { "***" };
    let masked = if user_info.contains(':') {
        format!("{scheme}://{shown_user}:***@{}", &rest[at + 1..])
    } else {
        format!("{scheme}://***@{}", &rest[at + 1..])
    };
    (masked, true)
}

/// Turns git's failure talking to a remote into an auth or reachability error when its
/// message says so.
fn classify(error: GitError, url: &str) -> GitError {
    let GitError::Failed { stderr, .. } = &error else {
        return error;
    };
    let lower = stderr.to_ascii_lowercase();
    let detail = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim_start_matches("fatal: ")
        .to_string();
    let url = mask_url(url).0;
    let auth = [
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied (publickey",
        "access denied",
        "http basic",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
        "invalid username or password",
    ];
    if auth.iter().any(|p| lower.contains(p)) {
        return GitError::Auth { url, detail };
    }
    let unreachable = [
        "could not resolve host",
        "connection refused",
        "connection timed out",
        "no route to host",
        "network is unreachable",
        "unable to connect",
        "failed to connect",
        "could not connect",
        "unable to look up",
        "couldn't connect",
        "operation timed out",
    ];
    if unreachable.iter().any(|p| lower.contains(p)) {
        return GitError::Unreachable { url, detail };
    }
    error
}

/// Parses `git status --porcelain=v2 --branch -z`.
fn parse_status(bytes: &[u8]) -> GitState {
    let mut state = GitState::default();
    let mut items = bytes.split(|b| *b == 0).filter(|i| !i.is_empty());
    while let Some(item) = items.next() {
        let line = String::from_utf8_lossy(item);
        if let Some(header) = line.strip_prefix("# ") {
            let (key, value) = header.split_once(' ').unwrap_or((header, ""));
            match key {
                "branch.oid" if value != "(initial)" => state.commit = Some(value.to_string()),
                "branch.head" if value != "(detached)" => state.branch = Some(value.to_string()),
                "branch.upstream" => state.upstream = Some(value.to_string()),
                "branch.ab" => {
                    let mut parts = value.split(' ');
                    state.ahead = parts
                        .next()
                        .and_then(|a| a.trim_start_matches('+').parse().ok());
                    state.behind = parts
                        .next()
                        .and_then(|b| b.trim_start_matches('-').parse().ok());
                }
                _ => {}
            }
            continue;
        }
        let fields_before_path = match line.chars().next() {
            Some('1') => 8,
            Some('2') => 9,
            Some('u') => 10,
            Some('?') => 1,
            _ => continue,
        };
        if line.starts_with('2') {
            // The original path follows as its own item.
            items.next();
        }
        let path = line
            .splitn(fields_before_path + 1, ' ')
            .last()
            .unwrap_or_default();
        state.changed_count += 1;
        if state.changed.len() < MAX_LISTED {
            state.changed.push(path.to_string());
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_v2_is_read() {
        let text = "# branch.oid 0123abcd\0# branch.head main\0# branch.upstream origin/main\0\
                    # branch.ab +2 -1\0\
                    1 .M N... 100644 100644 100644 aaaa bbbb src/a b.py\0\
                    2 R. N... 100644 100644 100644 aaaa bbbb R100 new.txt\0old.txt\0\
                    ? notes.md\0";
        let state = parse_status(text.as_bytes());
        assert_eq!(state.commit.as_deref(), Some("0123abcd"));
        assert_eq!(state.branch.as_deref(), Some("main"));
        assert_eq!(state.upstream.as_deref(), Some("origin/main"));
        assert_eq!((state.ahead, state.behind), (Some(2), Some(1)));
        assert_eq!(state.changed, vec!["src/a b.py", "new.txt", "notes.md"]);
        let detached = parse_status(b"# branch.oid (initial)\0# branch.head (detached)\0");
        assert_eq!((detached.commit, detached.branch), (None, None));
    }

    #[test]
    fn secrets_in_urls_are_masked() {
        assert_eq!(
            mask_url("https://alice:tok@h/x.git"),
            ("https://alice:***@h/x.git".to_string(), true)
        );
        assert_eq!(
            mask_url("https://ghp_0123456789abcdefghijklmn@h/x"),
            ("https://***@h/x".to_string(), true)
        );
        assert!(!mask_url("ssh://git@h/x").1);
        assert!(!mask_url("git@h:x").1);
    }

    #[test]
    fn refs_that_read_as_options_are_refused() {
        assert!(check_ref("--upload-pack=x").is_err());
        assert!(check_ref("a b").is_err());
        check_ref("v1.2").unwrap();
        check_ref("feature/x").unwrap();
    }
}
