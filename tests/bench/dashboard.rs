//! Dashboard benchmark: first render, first-load size and event-to-DOM latency, measured in
//! Debian's Chromium by `tests/e2e/bench.mjs` against a real node.
//!
//! Run: `cargo bench --bench dashboard` (needs chromium and `npm ci --prefix tests/e2e`).
//! `BENCH_EVENTS` (default 200) sets how many events are timed, `BENCH_GAP_MS` (default 15)
//! the pause between two. Figures, not assertions.

use std::path::Path;
use std::process::Command;

#[path = "../common/mod.rs"]
mod common;
use common::TestNode;

fn main() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() || !e2e.join("node_modules/playwright-core").is_dir() {
        println!("Chromium or playwright-core is missing (apt-get install chromium; npm ci --prefix tests/e2e): nothing to measure");
        return;
    }
    let node = TestNode::spawn();
    println!("aienv dashboard benchmark");
    let status = Command::new("node")
        .arg(e2e.join("bench.mjs"))
        .current_dir(&e2e)
        .env("NODE_URL", &node.url)
        .env("TOKEN", node.token())
        .env("CHROMIUM", &chromium)
        .env(
            "GAP_MS",
            std::env::var("BENCH_GAP_MS").unwrap_or_else(|_| "15".into()),
        )
        .env(
            "EVENTS",
            std::env::var("BENCH_EVENTS").unwrap_or_else(|_| "200".into()),
        )
        .status()
        .expect("run node");
    assert!(status.success(), "the dashboard benchmark failed");
}
