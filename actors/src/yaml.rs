//! YAML reading and writing for every file aienv owns (`workspace.yaml`, `environment.yaml`,
//! the config file, archive manifests).
//!
//! Parsing goes through serde-saphyr (the maintained successor of serde_yaml) wrapped in
//! `serde_path_to_error`, so a failure names the file, the line and column, and the field path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest YAML document aienv will parse; bigger inputs are refused before parsing.
pub const MAX_YAML_BYTES: usize = 1024 * 1024;

/// A YAML document that could not be read, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct YamlError {
    /// The file (or logical source, such as `request body`) that was parsed.
    pub file: PathBuf,
    /// 1-based line of the fault, when known.
    pub line: Option<u64>,
    /// 1-based column of the fault, when known.
    pub column: Option<u64>,
    /// Dotted path of the field at fault (`sharing.mode`, `projects[0].git.url`), when known.
    pub field: Option<String>,
    /// What is wrong, without location.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses `text` as one YAML document of type `T`; `file` only labels errors.
pub fn from_str<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, YamlError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(YamlError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: format!(
                "document is {} bytes, more than the limit of {MAX_YAML_BYTES}",
                text.len()
            ),
        });
    }
    let mut field: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            // `?` stands for a place the path could not name (a duplicate key's): the
            // mapping holding it is what the person can find.
            let path = error.path().to_string();
            let path = path.strip_suffix(".?").unwrap_or(&path);
            if path != "." && path != "?" {
                field = Some(path.to_string());
            }
            error.into_inner()
        })
    });
    result.map_err(|error| {
        let location = error.location();
        let message = plain_message(&error);
        YamlError {
            file: file.to_path_buf(),
            line: location.map(|l| l.line()).filter(|l| *l > 0),
            column: location.map(|l| l.column()).filter(|c| *c > 0),
            field,
            message,
        }
    })
}

/// Reads and parses a YAML file, bounded by [`MAX_YAML_BYTES`].
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, YamlError> {
    let text = read_bounded(path)?;
    from_str(&text, path)
}

/// Serializes `value` as YAML text.
pub fn to_string<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("aienv's own types always serialize to YAML")
}

fn read_bounded(path: &Path) -> Result<String, YamlError> {
    use std::io::Read;
    let fail = |message: String| YamlError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: None,
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut text = String::new();
    file.take(MAX_YAML_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if text.len() > MAX_YAML_BYTES {
        return Err(fail(format!(
            "file is larger than the limit of {MAX_YAML_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// The parser's message without its own location prefix or source snippet (we print those).
fn plain_message(error: &serde_saphyr::Error) -> String {
    let text = error.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // serde-saphyr appends " at line L, column C"; the location is reported separately.
    let first = match first.rfind(" at line ") {
        Some(index) => &first[..index],
        None => first,
    };
    // Its advice on duplicate keys names a parser setting the person cannot change.
    let first = first
        .strip_suffix(", set DuplicateKeyPolicy in Options if acceptable")
        .unwrap_or(first);
    match first.strip_prefix("duplicate mapping key: ") {
        Some(key) => format!("`{key}` is given twice in one mapping"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn check(text: &str, line: Option<u64>, field: Option<&str>, message_part: &str) {
        let error = from_str::<Outer>(text, Path::new("t.yaml")).unwrap_err();
        eprintln!("{error}");
        assert_eq!(error.line, line, "{error}");
        assert_eq!(error.field.as_deref(), field, "{error}");
        assert!(error.message.contains(message_part), "{error}");
    }

    #[test]
    fn errors_name_line_and_field() {
        check(
            "name: a\ninner:\n  count: x\n",
            Some(3),
            Some("inner.count"),
            "",
        );
        check(
            "name: a\ninner:\n  count: 1\n  extra: 2\n",
            Some(4),
            Some("inner.extra"),
            "unknown field",
        );
        check(
            "name: a\ninner: [1\n",
            Some(2),
            Some("inner"),
            "expected mapping",
        );
        let syntax = from_str::<Outer>("name: \"a\ninner: 1\n", Path::new("t.yaml")).unwrap_err();
        assert!(syntax.line.is_some(), "{syntax}");
        check(
            "inner:\n  count: 1\n",
            Some(1),
            None,
            "missing field `name`",
        );
        check(
            "name: a\ninner:\n  count: 1\nname: b\n",
            Some(4),
            None,
            "`name` is given twice in one mapping",
        );
        let twice = from_str::<Outer>(
            "name: a\ninner:\n  count: 1\n  count: 2\n",
            Path::new("t.yaml"),
        )
        .unwrap_err();
        assert!(!twice.to_string().contains("DuplicateKeyPolicy"), "{twice}");
        assert!(!twice.to_string().contains('?'), "{twice}");
    }
}
