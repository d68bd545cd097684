//! Runs last (cargo runs test files in name order): lists every test this `cargo test` run
//! skipped, with why, so a skip is never mistaken for a pass.

mod common;

use std::io::Write;

#[test]
fn summary_of_skipped_tests() {
    let log = common::skip_log();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    // Logs of runs that ended before reaching this file.
    if let Ok(entries) = std::fs::read_dir(log.parent().expect("a parent")) {
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() > 24 * 3600));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let summary = if lines.is_empty() {
        "\naienv tests: nothing was skipped\n".to_string()
    } else {
        format!(
            "\naienv tests: {} test(s) SKIPPED (they passed without running; AIENV_REQUIRE_ALL=1 makes this a failure):\n{}\n",
            lines.len(),
            lines
                .iter()
                .map(|l| format!("  - {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    // Straight to the terminal: the harness would hide `eprint!` of a passing test.
    let _ = std::io::stderr().write_all(summary.as_bytes());
}
