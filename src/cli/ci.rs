//! `aienv ci [PEER/]WS [ENV] -- CMD...`: a command run headless for pipelines, with its output
//! streamed and its exit code passed through; `aienv ci runs` and `aienv ci log RUN`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::api::{CiRunDto, CiRunRequest, TransferRequestDto};
use crate::client::Client;

use super::output::{self, exit, CliError};
use super::Cli;

/// Exit code when the command ran past its time (as `timeout(1)`).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit code when the run never got to its command (as `docker run`).
const EXIT_NOT_RUN: u8 = 125;

/// `aienv ci`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CiArgs {
    #[command(subcommand)]
    pub action: Option<CiCommand>,
    /// The workspace, or PEER/WORKSPACE to clone it first (or sync the clone already here).
    pub workspace: Option<String>,
    /// The environment (default: the workspace's first).
    pub environment: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Fast-forward the workspace's git projects from their remotes first.
    #[arg(long)]
    pub pull: bool,
    /// Seconds the command may run (default 3600).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Write a JSON summary here: state, exit code, timings, log location, JUnit counts.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the JUnit XML the command produced here (several reports merged).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Run it on a trusted peer instead (its name or id, or `best`: the placement rule's
    /// choice): the peer fetches the workspace, sets it up within its lending limits and runs
    /// the command; its output streams here.
    #[arg(long, value_name = "PEER")]
    pub on: Option<String>,
}

/// `aienv ci runs|log`.
#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// List the runs (newest first), from `aienv ci`, the API and webhooks.
    Runs {
        /// Only this workspace's.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Print a run's log.
    Log {
        /// Run number or id.
        run: String,
        /// Keep printing until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
}

/// Runs `aienv ci ...`.
pub async fn ci(cli: &Cli, client: &Client, args: &CiArgs) -> Result<(), CliError> {
    match &args.action {
        Some(CiCommand::Runs { workspace }) => {
            let runs = client.ci_runs(workspace.as_deref()).await?;
            print_runs(cli, &runs);
            return Ok(());
        }
        Some(CiCommand::Log { run, follow }) => {
            let run = client.ci_run(run).await?;
            stream_log(client, &run, *follow).await?;
            return Ok(());
        }
        None => {}
    }
    let Some(target) = &args.workspace else {
        return Err(CliError::with_code(
            exit::USAGE,
            "give [PEER/]WORKSPACE [ENV] -- COMMAND... (or `aienv ci runs`)",
        ));
    };
    if args.command.is_empty() {
        return Err(CliError::with_code(
            exit::USAGE,
            "give the command after `--`: aienv ci WORKSPACE [ENV] -- COMMAND...",
        ));
    }
    let workspace = match target.split_once('/') {
        Some((peer, name)) => bring(cli, client, peer, name).await?,
        None => target.clone(),
    };
    let run = client
        .ci_start(&CiRunRequest {
            workspace: workspace.clone(),
            environment: args.environment.clone(),
            command: args.command.clone(),
            pull: args.pull,
            timeout_seconds: args.timeout,
            on: args.on.clone(),
        })
        .await?;
    eprintln!(
        "aienv: CI run #{} in {workspace}{}{}: {}",
        run.number,
        args.environment
            .as_deref()
            .map(|e| format!("/{e}"))
            .unwrap_or_default(),
        run.peer
            .as_deref()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default(),
        run.command.join(" ")
    );
    let run = stream_log(client, &run, true).await?;
    if let Some(path) = &args.junit {
        write_junit(client, &run, path).await?;
    }
    if let Some(path) = &args.report {
        write_report(path, &run, &cli.node)?;
    }
    if cli.json {
        output::print_json(&run);
    }
    finish(&run)
}

/// Clones `peer/name` here, or syncs the clone already here; returns the local name.
async fn bring(cli: &Cli, client: &Client, peer: &str, name: &str) -> Result<String, CliError> {
    let local = client.get(name).await.ok().map(|d| d.workspace);
    let kind = match &local {
        None => "clone",
        Some(w) => match &w.origin {
            Some(origin) if origin.peer_name == peer || origin.peer_id.to_string() == peer => {
                "sync"
            }
            _ => {
                return Err(CliError::with_code(
                    exit::CONFLICT,
                    format!(
                        "a workspace named `{name}` exists here and is not a clone of {peer}/{name}; run it as `aienv ci {name} ...` or remove it"
                    ),
                ))
            }
        },
    };
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: kind.into(),
            peer: Some(peer.to_string()),
            workspace: name.to_string(),
            ..TransferRequestDto::default()
        })
        .await?;
    eprintln!("aienv: {kind} of {peer}/{name}...");
    let job = super::transfer::wait_for(cli, client, job).await?;
    if job.state != "done" {
        return Err(CliError::with_code(
            EXIT_NOT_RUN,
            format!(
                "the {kind} of {peer}/{name} {}: {}",
                job.state,
                job.error.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    if let Some(error) = &job.hook_error {
        return Err(CliError::with_code(EXIT_NOT_RUN, error.clone()));
    }
    eprintln!("aienv: {kind} done ({})", job.target_name);
    Ok(job.target_name)
}

/// Prints the run's log to stdout as it grows; returns the run as it ended (or is now, when
/// not following).
async fn stream_log(client: &Client, run: &CiRunDto, follow: bool) -> Result<CiRunDto, CliError> {
    let id = run.id.to_string();
    let mut offset = 0;
    let mut stdout = std::io::stdout();
    loop {
        let (chunk, next, state) = client.ci_log(&id, offset).await?;
        if !chunk.is_empty() {
            let _ = stdout.write_all(&chunk);
            let _ = stdout.flush();
            offset = next;
            continue;
        }
        let finished = matches!(state.as_str(), "passed" | "failed" | "error");
        if finished || !follow {
            // The log is complete once the run is finished: one more read got nothing.
            return Ok(client.ci_run(&id).await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The exit status of `aienv ci`: the command's.
fn finish(run: &CiRunDto) -> Result<(), CliError> {
    match (run.state.as_str(), run.exit_code) {
        ("passed", _) => Ok(()),
        ("failed", Some(code)) => Err(CliError::with_code(
            u8::try_from(code).unwrap_or(exit::FAILURE).max(1),
            format!("CI run #{} failed: exit status {code}", run.number),
        )),
        ("failed", None) => {
            let reason = run.reason.clone().unwrap_or_default();
            let code = if reason.contains("ran past") {
                EXIT_TIMED_OUT
            } else {
                exit::FAILURE
            };
            Err(CliError::with_code(
                code,
                format!("CI run #{} failed: {reason}", run.number),
            ))
        }
        _ => Err(CliError::with_code(
            EXIT_NOT_RUN,
            format!(
                "CI run #{} did not run its command: {}",
                run.number,
                run.error.as_deref().unwrap_or("no reason given")
            ),
        )),
    }
}

fn write_report(path: &Path, run: &CiRunDto, node: &str) -> Result<(), CliError> {
    let report = serde_json::json!({
        "run": run.id,
        "number": run.number,
        "workspace": run.workspace,
        "environment": run.environment,
        "command": run.command,
        "state": run.state,
        "exit_code": run.exit_code,
        "reason": run.reason,
        "error": run.error,
        "backend": run.backend,
        "timings": run.timings,
        "created": run.created,
        "started": run.started,
        "finished": run.finished,
        "log": {"url": format!("{}{}", node.trim_end_matches('/'), run.log_url)},
        "junit": run.junit,
        "notes": run.notes,
    });
    write_file(
        path,
        &serde_json::to_vec_pretty(&report).expect("JSON encodes"),
    )
}

/// Writes the run's JUnit reports to `path`: one as it is, several inside one
/// `<testsuites>`. Nothing is written when the command produced none.
async fn write_junit(client: &Client, run: &CiRunDto, path: &Path) -> Result<(), CliError> {
    if run.junit.is_empty() {
        eprintln!(
            "aienv: the command wrote no JUnit report; {} not written",
            path.display()
        );
        return Ok(());
    }
    let mut reports = Vec::new();
    for index in 0..run.junit.len() {
        reports.push(client.ci_junit(&run.id.to_string(), index).await?);
    }
    let bytes = if reports.len() == 1 {
        reports.remove(0)
    } else {
        merge_junit(&reports).into_bytes()
    };
    write_file(path, &bytes)
}

/// Several reports as one: their suites side by side in a new `<testsuites>`.
fn merge_junit(reports: &[Vec<u8>]) -> String {
    let mut merged = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for report in reports {
        let text = String::from_utf8_lossy(report);
        let mut body: &str = &text;
        if let Some(end) = body
            .find("?>")
            .filter(|_| body.trim_start().starts_with("<?xml"))
        {
            body = &body[end + 2..];
        }
        let body = body.trim();
        let inner = match (body.find("<testsuites"), body.rfind("</testsuites>")) {
            (Some(start), Some(end)) => {
                let open_end = body[start..].find('>').map_or(end, |e| start + e + 1);
                body[open_end..end].trim()
            }
            _ => body,
        };
        merged.push_str(inner);
        merged.push('\n');
    }
    merged.push_str("</testsuites>\n");
    merged
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes)
        .map_err(|e| CliError::new(format!("writing {}: {e}", path.display())))
}

fn print_runs(cli: &Cli, runs: &[CiRunDto]) {
    if cli.json {
        output::print_json(&runs);
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.number),
                r.workspace.clone(),
                r.environment.clone().unwrap_or_default(),
                r.state.clone(),
                r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                r.by.clone(),
                r.created.to_rfc3339(),
                r.timings
                    .get("total")
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_default(),
                r.command.join(" "),
            ]
        })
        .collect();
    output::print_table(
        &[
            "RUN",
            "WORKSPACE",
            "ENV",
            "STATE",
            "EXIT",
            "BY",
            "CREATED",
            "TOOK",
            "COMMAND",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_reports_merge_into_one_testsuites() {
        let a = br#"<?xml version="1.0"?><testsuites name="x"><testsuite name="a" tests="1"/></testsuites>"#;
        let b = br#"<testsuite name="b" tests="2"></testsuite>"#;
        let merged = merge_junit(&[a.to_vec(), b.to_vec()]);
        assert_eq!(
            merged,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"a\" tests=\"1\"/>\n<testsuite name=\"b\" tests=\"2\"></testsuite>\n</testsuites>\n"
        );
    }
}
