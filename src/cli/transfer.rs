//! `aienv clone`, `aienv sync` and `aienv transfers`: queue jobs on the local node and follow
//! them live over the event stream, with a progress bar and a one-line summary.

use std::io::IsTerminal;
use std::time::Instant;

use clap::Subcommand;
use futures_util::StreamExt;

use crate::api::{TransferDto, TransferRequestDto};
use crate::client::Client;

use super::output::{self, exit, CliError};
use super::Cli;

/// `aienv transfers ...` actions.
#[derive(Debug, Subcommand)]
pub enum TransfersAction {
    /// Cancel an active transfer (it keeps what arrived; `retry` resumes it), or remove a
    /// finished one from the list.
    Cancel {
        /// Transfer id.
        id: String,
    },
    /// Resume a failed or cancelled transfer.
    Retry {
        /// Transfer id.
        id: String,
        /// Return at once instead of following the transfer.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `aienv clone PEER/WS`.
pub async fn clone(
    cli: &Cli,
    client: &Client,
    source: &str,
    rename_to: Option<String>,
    private: bool,
    no_wait: bool,
    run: bool,
) -> Result<(), CliError> {
    let Some((peer, workspace)) = source.split_once('/') else {
        return Err(CliError::with_code(
            exit::USAGE,
            format!("`{source}`: name the source as PEER/WORKSPACE (see `aienv catalog`)"),
        ));
    };
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some(peer.to_string()),
            workspace: workspace.to_string(),
            rename_to,
            private,
            force: false,
        })
        .await?;
    let target = job.target_name.clone();
    follow(cli, client, job, no_wait && !run).await?;
    if run {
        // Set up and start on arrival, sized to this host.
        super::runtime::run(cli, client, &target, None, None, 600).await?;
    }
    Ok(())
}

/// `aienv sync WS`: a clone from its origin, or a workspace placed on a peer from the clone
/// there (its results back).
pub async fn sync(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    peer: Option<String>,
    no_wait: bool,
    force: bool,
) -> Result<(), CliError> {
    let job = client
        .start_transfer(&TransferRequestDto {
            kind: "sync".into(),
            peer,
            workspace: workspace.to_string(),
            rename_to: None,
            private: false,
            force,
        })
        .await?;
    follow(cli, client, job, no_wait).await
}

/// `aienv sync WS --push`: the clone's changes back to its origin, as a new revision there.
pub async fn push(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    force: bool,
) -> Result<(), CliError> {
    if !cli.json {
        eprintln!("pushing the changes of `{workspace}` to its origin…");
    }
    let result = client.push(workspace, force).await?;
    if cli.json {
        output::print_json(&result);
        return Ok(());
    }
    match (result.state.as_str(), result.revision) {
        ("done", Some(revision)) => println!(
            "pushed {} changed paths to {}/{}: revision {revision} there",
            result.changes, result.peer, result.workspace
        ),
        _ => println!(
            "nothing to push: {}/{} already has it",
            result.peer, result.workspace
        ),
    }
    for note in &result.notes {
        println!("  {}", output::printable(note));
    }
    Ok(())
}

/// `aienv transfers [--watch] [cancel|retry]`.
pub async fn transfers(
    cli: &Cli,
    client: &Client,
    action: &Option<TransfersAction>,
    watch: bool,
) -> Result<(), CliError> {
    match action {
        Some(TransfersAction::Cancel { id }) => {
            match client.cancel_transfer(id).await? {
                Some(job) if cli.json => output::print_json(&job),
                Some(job) => println!("transfer {} is {}", job.id, job.state),
                None if cli.json => output::print_json(&serde_json::json!({"removed": id})),
                None => println!("removed transfer {id}"),
            }
            return Ok(());
        }
        Some(TransfersAction::Retry { id, no_wait }) => {
            let job = client.retry_transfer(id).await?;
            return follow(cli, client, job, *no_wait).await;
        }
        None => {}
    }
    print_transfers(cli, &client.transfers().await?);
    if !watch {
        return Ok(());
    }
    let mut stream = client.events().await?;
    let mut last = Instant::now();
    while let Some(message) = stream.next().await {
        let message = message?;
        let kind = message["type"].as_str().unwrap_or_default();
        if kind != "transfer_changed" && kind != "snapshot" {
            continue;
        }
        // Redraw at most a few times a second.
        if kind == "transfer_changed"
            && last.elapsed().as_millis() < 250
            && message["transfer"]["state"] == "transferring"
        {
            continue;
        }
        last = Instant::now();
        if !cli.json && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        print_transfers(cli, &client.transfers().await?);
    }
    Err(CliError::with_code(
        exit::UNREACHABLE,
        "the node closed the event stream",
    ))
}

fn print_transfers(cli: &Cli, jobs: &[TransferDto]) {
    if cli.json {
        output::print_json(&jobs);
        return;
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let p = &job.progress;
            let percent = (p.bytes_done * 100)
                .checked_div(p.bytes_total)
                .unwrap_or(100);
            vec![
                job.id.to_string()[..8].to_string(),
                job.kind.clone(),
                format!("{}/{}", job.peer_name, job.workspace_name),
                job.target_name.clone(),
                job.state.clone(),
                format!("{percent}%"),
                format!(
                    "{}/{}",
                    output::bytes(p.bytes_done),
                    output::bytes(p.bytes_total)
                ),
                if p.rate > 0 {
                    format!("{}/s", output::bytes(p.rate))
                } else {
                    String::new()
                },
                output::cell(job.error.as_deref().unwrap_or_default(), 50),
            ]
        })
        .collect();
    output::print_table(
        &[
            "ID", "KIND", "SOURCE", "TARGET", "STATE", "DONE", "BYTES", "RATE", "ERROR",
        ],
        &rows,
    );
}

/// Follows a job until it ends, with a progress bar on a terminal; prints the summary.
async fn follow(
    cli: &Cli,
    client: &Client,
    job: TransferDto,
    no_wait: bool,
) -> Result<(), CliError> {
    if no_wait {
        if cli.json {
            output::print_json(&job);
        } else {
            println!(
                "queued transfer {} ({} {}/{}); follow it with `aienv transfers --watch`",
                job.id, job.kind, job.peer_name, job.workspace_name
            );
        }
        return Ok(());
    }
    let started = Instant::now();
    let current = wait_for(cli, client, job).await?;
    if cli.json {
        output::print_json(&current);
    } else {
        print_summary(&current, started.elapsed().as_secs_f64());
    }
    match current.state.as_str() {
        "done" => match &current.hook_error {
            // Like `git clone` with a failing hook: the clone is there, the command fails.
            Some(error) => Err(CliError::new(format!(
                "`{}` arrived, but {error}",
                current.target_name
            ))),
            None => Ok(()),
        },
        "cancelled" => Err(CliError::new(format!(
            "transfer {} was cancelled; `aienv transfers retry {}` resumes it",
            current.id, current.id
        ))),
        _ => Err(CliError::new(format!(
            "transfer {} failed: {}; `aienv transfers retry {}` resumes it",
            current.id,
            current.error.as_deref().unwrap_or("unknown error"),
            current.id
        ))),
    }
}

/// Waits for a transfer to finish, following it on the event stream with a progress bar on
/// stderr (hidden when stderr is not a terminal); returns the job as it ended.
pub(super) async fn wait_for(
    cli: &Cli,
    client: &Client,
    job: TransferDto,
) -> Result<TransferDto, CliError> {
    let bar = progress_bar(cli);
    bar.set_message(format!(
        "{} {}/{}",
        job.kind, job.peer_name, job.workspace_name
    ));
    let id = job.id;
    let mut stream = client.events().await?;
    // The job may have finished before the stream opened: ask once more after subscribing.
    let mut current = client.transfer(&id.to_string()).await?;
    loop {
        update_bar(&bar, &current);
        if current.is_finished() {
            break;
        }
        let Some(message) = stream.next().await else {
            bar.abandon();
            return Err(CliError::with_code(
                exit::UNREACHABLE,
                "the node closed the event stream; the transfer goes on (`aienv transfers`)",
            ));
        };
        let message = message?;
        let found = match message["type"].as_str() {
            Some("transfer_changed") => Some(message["transfer"].clone()),
            Some("snapshot") => message["transfers"]
                .as_array()
                .and_then(|jobs| jobs.iter().find(|j| j["id"] == id.to_string()).cloned()),
            _ => None,
        };
        if let Some(value) = found.filter(|j| j["id"] == id.to_string()) {
            current = serde_json::from_value(value)
                .map_err(|e| CliError::new(format!("unexpected transfer event: {e}")))?;
        }
    }
    bar.finish_and_clear();
    Ok(current)
}

fn print_summary(job: &TransferDto, seconds: f64) {
    let p = &job.progress;
    if job.state != "done" {
        return;
    }
    println!(
        "{} {} from {}/{}: {} in {} files; {} fetched ({} on the wire), {} deduplicated locally, {} already in place; {seconds:.1} s",
        if job.kind == "clone" { "cloned" } else { "synced" },
        job.target_name,
        job.peer_name,
        job.workspace_name,
        output::bytes(p.bytes_total),
        p.files_total,
        output::bytes(p.bytes_from_peers),
        output::bytes(p.bytes_fetched),
        output::bytes(p.bytes_local),
        output::bytes(p.bytes_present),
    );
    for note in &job.notes {
        let summary_line = note.starts_with(|c: char| c.is_ascii_digit());
        if !summary_line {
            println!("  {note}");
        }
    }
}

fn progress_bar(cli: &Cli) -> indicatif::ProgressBar {
    if cli.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {prefix}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    )
}

fn update_bar(bar: &indicatif::ProgressBar, job: &TransferDto) {
    let p = &job.progress;
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
    bar.set_prefix(format!(
        "{}/{} files · {}",
        p.files_done, p.files_total, job.state
    ));
}
