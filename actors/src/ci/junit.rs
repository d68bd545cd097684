//! JUnit XML reports a CI command wrote: found in the workspace (files ending in `.xml`,
//! written during the run, at most 16 MiB, holding a `<testsuite`), with their counts.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Most directory entries looked at.
const MAX_ENTRIES: usize = 50_000;
/// Largest report read.
const MAX_REPORT: u64 = 16 << 20;
/// Most reports listed.
const MAX_REPORTS: usize = 32;

/// One JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JunitReport {
    /// Workspace-relative path.
    pub path: String,
    /// Test cases.
    pub tests: u64,
    /// Failed assertions.
    pub failures: u64,
    /// Errors.
    pub errors: u64,
    /// Skipped.
    pub skipped: u64,
}

/// The reports under `root` modified at or after `since` (links not followed; `.git`,
/// virtual environments and `node_modules` skipped).
pub fn find(root: &Path, since: SystemTime) -> Vec<JunitReport> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES || found.len() >= MAX_REPORTS {
                return sorted(found);
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                if ![".git", "node_modules", ".venv", "venv", "__pycache__"].contains(&&*name) {
                    pending.push(entry.path());
                }
                continue;
            }
            if !kind.is_file() || !name.ends_with(".xml") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.len() > MAX_REPORT || meta.modified().is_ok_and(|m| m < since) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Some(mut report) = counts(&text) {
                report.path = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap_or(&entry.path())
                    .display()
                    .to_string();
                found.push(report);
            }
        }
    }
    sorted(found)
}

fn sorted(mut found: Vec<JunitReport>) -> Vec<JunitReport> {
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Sums the `<testsuite>` elements' counts (the outer `<testsuites>` when it has them).
fn counts(text: &str) -> Option<JunitReport> {
    if !text.contains("<testsuite") {
        return None;
    }
    let mut report = JunitReport {
        path: String::new(),
        tests: 0,
        failures: 0,
        errors: 0,
        skipped: 0,
    };
    let mut rest = text;
    while let Some(at) = rest.find("<testsuite") {
        let tag_end = rest[at..].find('>').map_or(rest.len(), |e| at + e);
        let tag = &rest[at..tag_end];
        rest = &rest[tag_end..];
        if tag.starts_with("<testsuites") {
            continue;
        }
        report.tests += attribute(tag, "tests");
        report.failures += attribute(tag, "failures");
        report.errors += attribute(tag, "errors");
        report.skipped += attribute(tag, "skipped").max(attribute(tag, "skips"));
    }
    Some(report)
}

fn attribute(tag: &str, name: &str) -> u64 {
    let needle = format!(" {name}=");
    let Some(at) = tag.find(&needle) else {
        return 0;
    };
    let value = &tag[at + needle.len()..];
    let quote = value.chars().next().unwrap_or('"');
    value[1..]
        .split(quote)
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytest_and_maven_shapes_are_counted() {
        let pytest = r#"<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="5" time="0.1"><testcase/></testsuite></testsuites>"#;
        let report = counts(pytest).unwrap();
        assert_eq!(
            (report.tests, report.failures, report.errors, report.skipped),
            (5, 1, 0, 2)
        );
        let maven = "<testsuite tests='3' failures='0' errors='1'></testsuite>\n<testsuite tests='2'></testsuite>";
        let report = counts(maven).unwrap();
        assert_eq!((report.tests, report.errors), (5, 1));
        assert!(counts("<project/>").is_none());
    }
}
