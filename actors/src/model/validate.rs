//! Checks that serde cannot express: slugs, lengths, workspace-relative paths.

use std::fmt;
use std::path::{Component, Path};

/// Longest slug (workspace, project, environment and tag names).
pub const MAX_SLUG_LEN: usize = 63;

/// One field that failed validation, named by its path in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path such as `projects[1].path`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Every field that failed validation in one document (never empty when returned as an error).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// The failures, in document order.
    pub errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// Records a failure of `field`.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `Ok(())` when nothing was recorded, `Err(self)` otherwise.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Checks that `value` is a slug, recording a failure of `field` otherwise.
    pub fn check_slug(&mut self, field: &str, value: &str) {
        if !is_slug(value) {
            self.add(
                field,
                format!(
                    "`{value}` is not a valid name: use 1 to {MAX_SLUG_LEN} lower-case letters, \
                     digits and single hyphens, starting with a letter or digit"
                ),
            );
        }
    }

    /// Checks that `value` is at most `max` characters long.
    pub fn check_len(&mut self, field: &str, value: &str, max: usize) {
        let count = value.chars().count();
        if count > max {
            self.add(
                field,
                format!("is {count} characters long, at most {max} allowed"),
            );
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.add(field, "contains control characters");
        }
    }

    /// Checks a list's length.
    pub fn check_count(&mut self, field: &str, count: usize, max: usize) {
        if count > max {
            self.add(field, format!("has {count} entries, at most {max} allowed"));
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "field `{}`: {}", error.field, error.message)?;
        }
        Ok(())
    }
}

/// A slug: `[a-z0-9]` then `[a-z0-9-]`, no leading/trailing/double hyphen, 1..=63 chars.
pub fn is_slug(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SLUG_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !value.contains("--")
}

/// Checks that `value` is a normal relative path that stays inside its root.
pub fn validate_relative_path(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    if value.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    for component in Path::new(value).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{value}` contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{value}` is absolute; use a path relative to the workspace"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for good in ["a", "llama-finetune", "x1", "0abc", &"a".repeat(63)] {
            assert!(is_slug(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "A",
            "a_b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    #[test]
    fn relative_paths() {
        assert!(validate_relative_path("projects/main").is_ok());
        assert!(validate_relative_path("./data").is_ok());
        assert!(validate_relative_path("/etc").is_err());
        assert!(validate_relative_path("a/../../b").is_err());
        assert!(validate_relative_path("").is_err());
    }
}
