//! The node's git credentials and the credential-helper side of git's protocol (the
//! `aienv-actors` git module only knows the helper's command line).
//!
//! Credentials live only in the node's configuration, never in a workspace. The node writes
//! them (mode 0600, in its data directory, hidden from environments) and hands git a helper
//! command, `aienv git-credential --file <that file>`, which answers git's `get` from it. A
//! password may be given as a file to read at each use, so a token can be rotated without a
//! restart.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One credential: used for every remote whose URL starts with `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredential {
    /// A URL prefix such as `https://git.example.org/` or `https://host/group/`.
    pub url: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password or token (read at each use; trailing newline dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// Errors of the helper.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credentials file is unreadable or malformed.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    /// A password file is unreadable.
    #[error("git credential for {url}: password_file {path}: {source}")]
    PasswordFile {
        url: String,
        path: String,
        source: std::io::Error,
    },
}

/// Writes the node's credentials for the helper (0600, atomically).
pub fn write_file(path: &Path, credentials: &[GitCredential]) -> std::io::Result<()> {
    aienv_actors::fsio::write_private(
        path,
        &serde_json::to_vec(credentials).expect("credentials serialize"),
    )
}

/// Answers one helper call: `operation` is `get`, `store` or `erase`; only `get` answers
/// (the node's configuration is the one place credentials change).
pub fn answer(
    file: &Path,
    operation: &str,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), CredentialError> {
    if operation != "get" {
        return Ok(());
    }
    let mut asked = std::collections::HashMap::new();
    for line in input.lines().map_while(Result::ok).take(64) {
        if line.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            asked.insert(key.to_string(), value.to_string());
        }
    }
    let (Some(protocol), Some(host)) = (asked.get("protocol"), asked.get("host")) else {
        return Ok(());
    };
    let url = match asked.get("path") {
        Some(path) => format!("{protocol}://{host}/{path}"),
        None => format!("{protocol}://{host}/"),
    };
    let text = std::fs::read(file).map_err(|e| CredentialError::File {
        path: file.display().to_string(),
        detail: e.to_string(),
    })?;
    let credentials: Vec<GitCredential> =
        serde_json::from_slice(&text).map_err(|e| CredentialError::File {
            path: file.display().to_string(),
            detail: e.to_string(),
        })?;
    let Some(found) = best_match(&credentials, &url, asked.get("username")) else {
        return Ok(());
    };
    let password = match (&found.password, &found.password_file) {
        (Some(password), _) => password.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| CredentialError::PasswordFile {
                url: found.url.clone(),
                path: path.display().to_string(),
                source,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => return Ok(()),
    };
    let _ = writeln!(output, "username={}", found.username);
    let _ = writeln!(output, "password={password}");
    Ok(())
}

/// The longest configured prefix of `url` (and of the user name git asks for, if any).
fn best_match<'a>(
    credentials: &'a [GitCredential],
    url: &str,
    username: Option<&String>,
) -> Option<&'a GitCredential> {
    credentials
        .iter()
        .filter(|c| prefix_matches(&c.url, url))
        .filter(|c| username.is_none_or(|u| *u == c.username))
        .max_by_key(|c| c.url.len())
}

/// Whether `prefix` covers `url` at a path boundary (`https://h/a` covers `https://h/a/b`,
/// not `https://h/ab`); host names compare without case.
fn prefix_matches(prefix: &str, url: &str) -> bool {
    let (Some((p_scheme, p_rest)), Some((u_scheme, u_rest))) =
        (prefix.split_once("://"), url.split_once("://"))
    else {
        return false;
    };
    if !p_scheme.eq_ignore_ascii_case(u_scheme) {
        return false;
    }
    let (p_host, p_path) = p_rest.split_once('/').unwrap_or((p_rest, ""));
    let (u_host, u_path) = u_rest.split_once('/').unwrap_or((u_rest, ""));
    if !p_host.eq_ignore_ascii_case(u_host) {
        return false;
    }
    let p_path = p_path.trim_end_matches('/');
    p_path.is_empty()
        || u_path == p_path
        || u_path
            .strip_prefix(p_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(url: &str, user: &str, password: &str) -> GitCredential {
        GitCredential {
            url: url.into(),
            username: user.into(),
            password: Some(password.into()),
            password_file: None,
        }
    }

    #[test]
    fn the_longest_prefix_at_a_path_boundary_answers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        write_file(
            &file,
            &[
                credential("https://git.lab/", "all", "p1"),
                credential("https://git.lab/team", "team", "p2"),
            ],
        )
        .unwrap();
        let ask = |input: &str| {
            let mut out = Vec::new();
            answer(&file, "get", input.as_bytes(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            ask("protocol=https\nhost=git.lab\npath=team/x.git\n\n"),
            "username=team\npassword=p2\n"
        );
        assert_eq!(
            ask("protocol=https\nhost=GIT.lab\npath=teamx/y.git\n\n"),
            "username=all\npassword=p1\n"
        );
        assert_eq!(ask("protocol=http\nhost=git.lab\npath=team\n\n"), "");
        assert_eq!(ask("protocol=https\nhost=other\n\n"), "");
        let mut out = Vec::new();
        answer(
            &file,
            "erase",
            "protocol=https\nhost=git.lab\n".as_bytes(),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert!(
            std::fs::read(&file).unwrap().len() > 10,
            "erase leaves the file"
        );
    }

    #[test]
    fn a_password_file_is_read_at_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t1\n").unwrap();
        let file = dir.path().join("c.json");
        let mut entry = credential("https://h/", "u", "");
        entry.password = None;
        entry.password_file = Some(token.clone());
        write_file(&file, &[entry]).unwrap();
        let mut out = Vec::new();
        answer(
            &file,
            "get",
            "protocol=https\nhost=h\n\n".as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "username=u\npassword=t1\n");
        std::fs::remove_file(&token).unwrap();
        let error = answer(
            &file,
            "get",
            "protocol=https\nhost=h\n\n".as_bytes(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("password_file"), "{error}");
    }
}
