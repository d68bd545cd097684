//! What makes a checkout safe for the node to run `git` in, and which remotes it may reach.
//!
//! A workspace's `.git` is the workspace's content: a peer sent it, or an environment (running
//! confined, as another user) may have written it. Several repository settings make git run
//! programs (`core.fsmonitor`, `core.hooksPath`, filter drivers, `core.sshCommand`,
//! `remote.*.uploadpack`, `include.path` pulling in more of them...). Git reads a repository's
//! own config with no way to switch it off, so the node inspects it first and runs git only
//! where every key is one of a known list of plain settings; anything else is refused,
//! naming the key. The file is read by `git config --file`, which interprets nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{command, GitError};

/// Exact keys (lower case) a checkout's config may set.
const PLAIN_KEYS: &[&str] = &[
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "core.autocrlf",
    "core.eol",
    "core.safecrlf",
    "core.sparsecheckout",
    "core.sparsecheckoutcone",
    "core.untrackedcache",
    "core.checkstat",
    "core.trustctime",
    "core.quotepath",
    "core.abbrev",
    "core.compression",
    "user.name",
    "user.email",
    "pull.rebase",
    "pull.ff",
    "fetch.prune",
    "push.default",
    "push.autosetupremote",
    "init.defaultbranch",
    "gc.auto",
    "index.version",
    "merge.conflictstyle",
    "lfs.repositoryformatversion",
    "receive.denycurrentbranch",
    "extensions.objectformat",
    "extensions.worktreeconfig",
    "extensions.partialclone",
    "extensions.refstorage",
];

/// Keys allowed under `<section>.<name>.<key>` for any name.
const NAMED_KEYS: &[(&str, &[&str])] = &[
    (
        "remote",
        &[
            "url",
            "pushurl",
            "fetch",
            "push",
            "tagopt",
            "prune",
            "prunetags",
            "mirror",
            "promisor",
            "partialclonefilter",
        ],
    ),
    (
        "branch",
        &["remote", "merge", "rebase", "pushremote", "description"],
    ),
    ("submodule", &["url", "active", "branch", "update"]),
];

/// Values `submodule.*.update` may have (`!command` runs a program).
const SUBMODULE_UPDATES: &[&str] = &["checkout", "rebase", "merge", "none"];

/// Checks the repository at `checkout/.git` (and its submodules' repositories) before the
/// node runs git there.
pub fn check_checkout(checkout: &Path) -> Result<(), GitError> {
    let dot_git = checkout.join(".git");
    let meta = std::fs::symlink_metadata(&dot_git).map_err(|_| GitError::NotACheckout {
        path: checkout.display().to_string(),
    })?;
    if !meta.is_dir() {
        // A `.git` file (`gitdir: ...`) or link would point the node at another directory.
        return Err(unsafe_repo(
            checkout,
            "`.git` is not a directory (a link or a `gitdir:` file points elsewhere)",
        ));
    }
    for name in ["commondir", "objects/info/alternates", "config.worktree"] {
        if dot_git.join(name).exists() {
            return Err(unsafe_repo(
                checkout,
                &format!(".git/{name} would make git read another directory"),
            ));
        }
    }
    check_config(checkout, &dot_git.join("config"))?;
    let modules = dot_git.join("modules");
    if modules.is_dir() {
        let mut pending = vec![(modules, 0)];
        let mut seen = 0;
        while let Some((dir, depth)) = pending.pop() {
            seen += 1;
            if seen > 1000 || depth > 6 {
                return Err(unsafe_repo(checkout, ".git/modules is nested too deeply"));
            }
            let config = dir.join("config");
            if config.is_file() {
                check_config(checkout, &config)?;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push((entry.path(), depth + 1));
                }
            }
        }
    }
    Ok(())
}

fn check_config(checkout: &Path, config: &Path) -> Result<(), GitError> {
    if !config.exists() {
        return Ok(());
    }
    let mut read = Command::new("git");
    read.arg("config")
        .arg("--file")
        .arg(config)
        .args(["--no-includes", "--list", "-z"])
        .current_dir("/")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    let output = command::run(read, "git config --list", Duration::from_secs(10))?;
    if !output.success() {
        return Err(unsafe_repo(
            checkout,
            &format!("{} does not parse: {}", config.display(), output.stderr),
        ));
    }
    for item in output.stdout.split(|b| *b == 0).filter(|i| !i.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let (key, value) = item.split_once('\n').unwrap_or((&item, ""));
        if let Some(reason) = refused(key, value) {
            return Err(unsafe_repo(
                checkout,
                &format!("{} sets `{key}`: {reason}", config.display()),
            ));
        }
        if key.starts_with("remote.") && (key.ends_with(".url") || key.ends_with(".pushurl")) {
            check_url(value, false)?;
        }
    }
    Ok(())
}

/// Why a config key is refused, if it is.
fn refused(key: &str, value: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    if PLAIN_KEYS.contains(&lower.as_str()) {
        return None;
    }
    const NOT_PLAIN: &str =
        "the node only runs git where the repository sets plain settings; remove it";
    let Some((section, rest)) = lower.split_once('.') else {
        return Some(NOT_PLAIN);
    };
    let Some((_, keys)) = NAMED_KEYS.iter().find(|(s, _)| *s == section) else {
        return Some(NOT_PLAIN);
    };
    let last = rest.rsplit('.').next().unwrap_or(rest);
    if !rest.contains('.') || !keys.contains(&last) {
        return Some(NOT_PLAIN);
    }
    if section == "submodule" && last == "update" && !SUBMODULE_UPDATES.contains(&value) {
        return Some("a submodule update command runs a program");
    }
    None
}

/// Checks a remote URL. Local paths and `file://` reach this node's own disk, so they are
/// only allowed where the node's administrator asked (`local`); `ext::` runs a program and is
/// never allowed.
pub fn check_url(url: &str, local: bool) -> Result<(), GitError> {
    let refuse = |reason: &str| GitError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_control()) {
        return Err(refuse("empty, too long or with control characters"));
    }
    if url.starts_with('-') {
        return Err(refuse("starts with `-`"));
    }
    let lower = url.to_ascii_lowercase();
    if let Some((scheme, _)) = lower.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git" => Ok(()),
            "file" if local => Ok(()),
            "file" => Err(refuse(
                "a file:// remote reads this node's disk; only the node's administrator may use one",
            )),
            _ => Err(refuse("the scheme is not one of https, http, ssh, git")),
        };
    }
    if lower.contains("::") {
        return Err(refuse("remote helpers (`<helper>::`) are not allowed"));
    }
    // scp-like `user@host:path` (a colon before any slash).
    if let Some(colon) = url.find(':') {
        if !url[..colon].contains('/') {
            return Ok(());
        }
    }
    if local {
        Ok(())
    } else {
        Err(refuse(
            "a local path reads this node's disk; only the node's administrator may use one",
        ))
    }
}

fn unsafe_repo(checkout: &Path, reason: &str) -> GitError {
    GitError::Unsafe {
        path: checkout.display().to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_settings_pass_and_program_runners_are_named() {
        assert_eq!(refused("core.filemode", "true"), None);
        assert_eq!(refused("remote.origin.url", "x"), None);
        assert_eq!(refused("remote.my.fork.fetch", "x"), None);
        assert_eq!(refused("branch.main.merge", "refs/heads/main"), None);
        for key in [
            "core.fsmonitor",
            "core.hookspath",
            "core.sshcommand",
            "core.pager",
            "remote.origin.uploadpack",
            "filter.lfs.clean",
            "include.path",
            "includeif.gitdir:/x.path",
            "credential.helper",
            "diff.external",
            "branch",
        ] {
            assert!(refused(key, "x").is_some(), "{key} must be refused");
        }
        assert!(refused("submodule.a.update", "!rm -rf /").is_some());
        assert_eq!(refused("submodule.a.update", "rebase"), None);
    }

    #[test]
    fn urls_reach_the_network_unless_the_administrator_allows_local() {
        for url in [
            "https://example.org/a.git",
            "git://10.0.0.1/a",
            "ssh://git@h/a",
            "git@github.com:a/b.git",
        ] {
            check_url(url, false).unwrap();
        }
        for url in [
            "/srv/git/a",
            "file:///srv/a",
            "ext::sh -c touch% /tmp/x",
            "-uhelp",
            "./a",
            "ftp://h/a",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
        }
        check_url("/srv/git/a", true).unwrap();
        check_url("file:///srv/a", true).unwrap();
        assert!(check_url("ext::sh", true).is_err());
    }
}
