//! A git project arriving with a cloned workspace.
//!
//! The transferred copy is a complete checkout already (its `.git` travels like any file), so
//! an offline LAN loses nothing. When the project's remote answers, the node rebuilds the
//! repository from there instead — history comes from where it lives — at the source's
//! commit and branch, with the source's remotes, and lays the source's working tree on top:
//! whatever the source had not committed shows up as uncommitted here, and is reported. A
//! project declared by URL only (a template referring to repositories) is cloned.

use std::path::{Path, PathBuf};

use crate::model::Project;

use super::{safety, Git, GitError, GitState};

/// What happened to one project.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The project's workspace-relative path.
    pub path: String,
    /// One line for the person.
    pub note: String,
    /// Whether the node rewrote the project's `.git` (its files are not the source's).
    pub rewrote_git_dir: bool,
}

impl Git {
    /// Handles one project of a clone staged at `tree`. Never fails the clone: what could not
    /// be done is said in the note, and the transferred copy stays.
    pub fn arrive(&self, tree: &Path, project: &Project) -> Option<Arrival> {
        let dir = tree.join(&project.path);
        let declared = project.git.as_ref();
        if let Err(reason) = super::no_link_on_the_way(tree, &project.path) {
            return Some(Arrival {
                path: project.path.clone(),
                note: format!("{}: left alone: {reason}", project.path),
                rewrote_git_dir: false,
            });
        }
        let has_git = dir.join(".git").exists() || dir.join(".git").is_symlink();
        let arrival = |note: String, rewrote_git_dir: bool| {
            Some(Arrival {
                path: project.path.clone(),
                note: format!("{}: {note}", project.path),
                rewrote_git_dir,
            })
        };
        if !has_git {
            let declared = declared?;
            let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
            if !empty {
                return arrival(
                    format!(
                        "declared from {} but arrived without .git; kept the files as they are",
                        super::mask_url(&declared.url).0
                    ),
                    false,
                );
            }
            let _ = std::fs::remove_dir(&dir);
            return match self.clone_into(&declared.url, declared.git_ref.as_deref(), &dir, false) {
                Ok(state) => arrival(
                    format!(
                        "cloned from {} at {}",
                        super::mask_url(&declared.url).0,
                        describe(&state)
                    ),
                    true,
                ),
                Err(error) => {
                    let _ = std::fs::create_dir_all(&dir);
                    arrival(format!("not cloned: {error}"), false)
                }
            };
        }
        let state = match self.inspect(&dir) {
            Ok(state) => state,
            Err(error) => return arrival(format!("kept the transferred copy: {error}"), false),
        };
        let Some(commit) = state.commit.clone() else {
            return arrival("kept the transferred copy (no commits yet)".into(), false);
        };
        let remote = self.remote_of(&dir, &state, declared.map(|d| d.url.as_str()));
        let Some((remote_name, url)) = remote else {
            return arrival(
                format!(
                    "kept the transferred checkout at {} (it has no remote)",
                    describe(&state)
                ),
                false,
            );
        };
        match self.rebuild_from_remote(&dir, &state, &commit, &remote_name, &url) {
            Ok(after) => {
                let mut note = format!(
                    "checked out from {} at {}",
                    super::mask_url(&url).0,
                    describe(&after)
                );
                if after.dirty() {
                    note.push_str(&format!(
                        "; the source's {} uncommitted change(s) laid on top: {}",
                        after.changed_count,
                        list(&after.changed)
                    ));
                }
                arrival(note, true)
            }
            Err(error) => arrival(
                format!(
                    "kept the transferred checkout at {} ({error})",
                    describe(&state)
                ),
                false,
            ),
        }
    }

    /// The remote to rebuild from: the declared URL, else the branch's upstream remote, else
    /// `origin`. Its URL is read unmasked from the (already vetted) config.
    fn remote_of(
        &self,
        dir: &Path,
        state: &GitState,
        declared: Option<&str>,
    ) -> Option<(String, String)> {
        let config = |key: &str| {
            self.run(dir, &["config", "--get", key], self.local_timeout)
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let name = state
            .branch
            .as_ref()
            .and_then(|b| config(&format!("branch.{b}.remote")))
            .filter(|name| name != ".")
            .or_else(|| {
                state
                    .remotes
                    .iter()
                    .any(|(n, _)| n == "origin")
                    .then(|| "origin".to_string())
            })
            .or_else(|| state.remotes.first().map(|(n, _)| n.clone()));
        match (declared, name) {
            (Some(url), name) => Some((name.unwrap_or_else(|| "origin".into()), url.to_string())),
            (None, Some(name)) => {
                let url = config(&format!("remote.{name}.url"))?;
                Some((name, url))
            }
            (None, None) => None,
        }
    }

    fn rebuild_from_remote(
        &self,
        dir: &Path,
        state: &GitState,
        commit: &str,
        remote_name: &str,
        url: &str,
    ) -> Result<GitState, GitError> {
        safety::check_url(url, false)?;
        // A quick look first: an offline remote should not hold the clone up for minutes.
        self.run_remote(
            dir,
            &["ls-remote", "--heads", "--", url],
            url,
            self.probe_timeout,
        )?;
        let work = Scratch::new(dir)?;
        let fresh = work.path.join("repo");
        let fresh_arg = fresh.display().to_string();
        self.run_remote(
            &work.path,
            &[
                "clone",
                "--quiet",
                "--no-checkout",
                "--origin",
                remote_name,
                "--",
                url,
                &fresh_arg,
            ],
            url,
            self.network_timeout,
        )?;
        let object = format!("{commit}^{{commit}}");
        if self
            .run(&fresh, &["cat-file", "-e", &object], self.local_timeout)
            .is_err()
        {
            // Commits the source never pushed: take them from the transferred repository.
            let source = dir.join(".git").display().to_string();
            self.run(
                &fresh,
                &["fetch", "--quiet", "--no-tags", &source, commit],
                self.network_timeout,
            )?;
        }
        // The source's other remotes and its branch's upstream.
        for (name, _) in &state.remotes {
            if name == remote_name {
                continue;
            }
            let key = format!("remote.{name}.url");
            if let Ok(output) = self.run(dir, &["config", "--get", &key], self.local_timeout) {
                let other = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if safety::check_url(&other, false).is_ok() {
                    let _ = self.run(
                        &fresh,
                        &["remote", "add", "--", name, &other],
                        self.local_timeout,
                    );
                }
            }
        }
        match &state.branch {
            Some(branch) => {
                let full = format!("refs/heads/{branch}");
                self.run(&fresh, &["update-ref", &full, commit], self.local_timeout)?;
                self.run(&fresh, &["symbolic-ref", "HEAD", &full], self.local_timeout)?;
                for key in ["remote", "merge"] {
                    let key = format!("branch.{branch}.{key}");
                    if let Ok(output) =
                        self.run(dir, &["config", "--get", &key], self.local_timeout)
                    {
                        let value = String::from_utf8_lossy(&output.stdout).trim().to_string();
                        let _ = self.run(&fresh, &["config", &key, &value], self.local_timeout);
                    }
                }
            }
            None => {
                self.run(
                    &fresh,
                    &["update-ref", "--no-deref", "HEAD", commit],
                    self.local_timeout,
                )?;
            }
        }
        let old = work.path.join("transferred.git");
        std::fs::rename(dir.join(".git"), &old).map_err(|e| failed(dir, "moving .git", e))?;
        if let Err(error) = std::fs::rename(fresh.join(".git"), dir.join(".git")) {
            let _ = std::fs::rename(&old, dir.join(".git"));
            return Err(failed(dir, "placing the new .git", error));
        }
        // Submodules keep their repositories (their `.git` files point into `.git/modules`).
        if old.join("modules").is_dir() {
            std::fs::rename(old.join("modules"), dir.join(".git").join("modules"))
                .map_err(|e| failed(dir, "moving .git/modules", e))?;
        }
        // The index now matches the commit; the working tree stays the source's.
        self.run(dir, &["reset", "--quiet"], self.local_timeout)?;
        self.inspect(dir)
    }
}

/// A scratch directory beside the project (same file system, so renames work), removed on
/// drop.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(dir: &Path) -> Result<Scratch, GitError> {
        let parent = dir.parent().unwrap_or(dir);
        let path = parent.join(format!(".aienv-git-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).map_err(|e| failed(dir, "creating a scratch directory", e))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn failed(dir: &Path, what: &str, error: std::io::Error) -> GitError {
    GitError::Failed {
        command: what.to_string(),
        dir: dir.display().to_string(),
        stderr: error.to_string(),
    }
}

fn describe(state: &GitState) -> String {
    let commit = state
        .commit
        .as_deref()
        .map(|c| &c[..c.len().min(12)])
        .unwrap_or("no commit");
    match &state.branch {
        Some(branch) => format!("{commit} ({branch})"),
        None => format!("{commit} (detached)"),
    }
}

fn list(paths: &[String]) -> String {
    let shown: Vec<&str> = paths.iter().take(10).map(String::as_str).collect();
    let more = paths.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
