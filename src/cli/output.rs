//! How the CLI talks to people and scripts: aligned tables, JSON, one-line errors and exit
//! codes that mean something.

use std::process::ExitCode;

use crate::client::ClientError;

/// Exit codes (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The named thing does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Conflict: name taken, outdated revision.
    pub const CONFLICT: u8 = 4;
    /// Missing or wrong credentials, or refused by the node's network rules.
    pub const AUTH: u8 = 5;
    /// Invalid input: validation, YAML, archive refused.
    pub const INVALID: u8 = 6;
    /// The node could not be reached.
    pub const UNREACHABLE: u8 = 7;
}

/// A CLI failure: a message and an exit code.
#[derive(Debug)]
pub struct CliError {
    /// One line, with the cause.
    pub message: String,
    /// Exit code.
    pub code: u8,
}

impl CliError {
    /// A failure with the generic exit code.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: exit::FAILURE,
        }
    }

    /// A failure with a specific exit code.
    pub fn with_code(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code,
        }
    }

    /// Prints the error on stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("aienv: error: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> CliError {
        let code = match &error {
            ClientError::Connect { .. } => exit::UNREACHABLE,
            ClientError::Api { status, .. } => match status {
                401 | 403 => exit::AUTH,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                400 | 413 | 415 | 422 => exit::INVALID,
                _ => exit::FAILURE,
            },
            _ => exit::FAILURE,
        };
        let mut message = error.to_string();
        if let ClientError::Api {
            details: Some(details),
            ..
        } = &error
        {
            if let Some(fields) = details.get("fields").and_then(|f| f.as_array()) {
                // Each field the message does not already say, once.
                let list: Vec<String> = fields
                    .iter()
                    .filter_map(|f| {
                        let (field, says) =
                            (f.get("field")?.as_str()?, f.get("message")?.as_str()?);
                        (!message.contains(says)).then(|| format!("{field}: {says}"))
                    })
                    .collect();
                if !list.is_empty() {
                    message = format!("{message} [{}]", list.join("; "));
                }
            }
            // A refused sync or push: every conflicting path, one per line.
            if let Some(paths) = details.get("paths").and_then(|p| p.as_array()) {
                for path in paths.iter().filter_map(|p| p.as_str()) {
                    message.push_str(&format!("\n  both changed: {}", printable(path)));
                }
            }
        }
        if let ClientError::Api { status: 401, .. } = &error {
            message.push_str(
                " — set AIENV_TOKEN, or AIENV_USER and AIENV_PASSWORD, or run on the node's host with its --data-dir",
            );
        }
        CliError { message, code }
    }
}

/// Prints rows as left-aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    // Cells hold what peers announce (names, titles, tags): never let them drive the terminal.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `text` with control characters (escape sequences, carriage returns, bidi overrides) shown
/// as `\u{…}` escapes instead of acting on the terminal.
pub fn printable(text: &str) -> String {
    let acts = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(acts) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if acts(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("CLI output serializes")
    );
}

/// Truncates text for a table cell.
pub fn cell(text: &str, max: usize) -> String {
    let text = text.lines().next().unwrap_or("");
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Formats a byte count for people.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_is_said_once() {
        let error = ClientError::Api {
            status: 422,
            code: "validation-failed".into(),
            message: "request: field `name`: `bad name!` is not a valid name".into(),
            details: Some(serde_json::json!({"fields": [
                {"field": "name", "message": "`bad name!` is not a valid name"},
                {"field": "tags", "message": "at most 32 tags"},
            ]})),
        };
        let said = CliError::from(error);
        assert_eq!(
            said.message,
            "request: field `name`: `bad name!` is not a valid name (validation-failed, HTTP 422) [tags: at most 32 tags]"
        );
        assert_eq!(said.code, exit::INVALID);
    }

    #[test]
    fn peer_strings_cannot_drive_the_terminal() {
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(printable("evil\u{1b}[2Jname"), "evil\\u{1b}[2Jname");
        assert_eq!(printable("a\rb\u{202e}c"), "a\\u{d}b\\u{202e}c");
    }
}
