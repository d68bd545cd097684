//! `aienv run`, `stop`, `status`, `logs`, `open`, `shell` and `env detect`: environments
//! and their tools, driven through the node.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures_util::{SinkExt, StreamExt};

use crate::api::{EnvironmentStatusDto, RunRequest};
use crate::client::Client;

use super::output::{self, exit, CliError};
use super::Cli;

/// `aienv env ...`.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Propose an environment.yaml from the workspace's project files (shown, not written,
    /// unless `--write`).
    Detect {
        /// Workspace name or id.
        workspace: String,
        /// Save the proposal as this environment (`default` when no name is given).
        #[arg(long, num_args = 0..=1, default_missing_value = "default")]
        write: Option<String>,
        /// Replace an existing environment of that name.
        #[arg(long)]
        force: bool,
    },
}

/// `aienv run WS [ENV]`: starts and waits until the tools answer or fail.
pub async fn run(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    environment: Option<String>,
    backend: Option<String>,
    timeout: u64,
) -> Result<(), CliError> {
    let started = Instant::now();
    let initial = client
        .run(
            workspace,
            &RunRequest {
                environment: environment.clone(),
                backend,
                wait: false,
                timeout_seconds: None,
                on: None,
            },
        )
        .await?;
    let statuses = wait_settled(cli, client, initial, Duration::from_secs(timeout)).await?;
    report_run(cli, client, &statuses, started.elapsed())
}

/// `aienv run WS [ENV] --on PEER|best`: places the environment on a trusted peer, then
/// follows it there until it runs (or fails, or the peer is lost).
pub async fn run_on(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    environment: Option<String>,
    on: &str,
    explain: bool,
    timeout: u64,
) -> Result<(), CliError> {
    let started = Instant::now();
    let placed = client
        .run_on(
            workspace,
            &RunRequest {
                environment,
                on: Some(on.to_string()),
                ..RunRequest::default()
            },
        )
        .await;
    let placed = match placed {
        Ok(placed) => placed,
        Err(error) => {
            // The ranking rides along with "no peer fits": show every candidate's answer.
            if let crate::client::ClientError::Api {
                details: Some(details),
                ..
            } = &error
            {
                if let Ok(ranking) =
                    serde_json::from_value::<crate::api::RankingDto>(details.clone())
                {
                    if !cli.json {
                        print_ranking(&ranking);
                    }
                }
            }
            return Err(error.into());
        }
    };
    if explain && !cli.json {
        print_ranking(&placed.ranking);
    }
    if !cli.json {
        eprintln!(
            "placed {}/{} on {}: {}",
            placed.placement.workspace,
            placed.placement.environment,
            placed.placement.peer_name,
            placed.placement.reason
        );
    }
    let key = (
        placed.placement.workspace_id,
        placed.placement.environment.clone(),
    );
    let mut current = placed.placement.clone();
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut events = client.events().await?;
    let done = |p: &crate::api::PlacementDto| {
        matches!(p.state.as_str(), "running" | "failed" | "stopped" | "lost")
            || (p.state == "degraded"
                && p.remote.as_ref().is_some_and(|r| {
                    r.tools
                        .iter()
                        .all(|t| !matches!(t.state.as_str(), "starting" | "restarting" | "pending"))
                }))
    };
    if let Some(now) = client
        .placements()
        .await?
        .into_iter()
        .find(|p| (p.workspace_id, p.environment.clone()) == key)
    {
        current = now;
    }
    let spinner = spinner(cli);
    while !done(&current) {
        spinner.set_message(describe_placement(&current));
        let message = next_event(&mut events, deadline, &spinner, || {
            format!(
                "still not ready after {timeout} s: {}; it keeps starting (see `aienv status {workspace}`)",
                describe_placement(&current)
            )
        })
        .await?;
        if message["type"].as_str() != Some("placement_changed") {
            continue;
        }
        if let Ok(placement) =
            serde_json::from_value::<crate::api::PlacementDto>(message["placement"].clone())
        {
            if (placement.workspace_id, placement.environment.clone()) == key {
                if message["removed"].as_bool() == Some(true) {
                    spinner.finish_and_clear();
                    return Err(CliError::with_code(
                        exit::FAILURE,
                        "the placement was removed (stopped) meanwhile",
                    ));
                }
                current = placement;
            }
        }
    }
    spinner.finish_and_clear();
    if cli.json {
        output::print_json(&current);
    } else {
        println!("{}", describe_placement(&current));
        let base = client.base().trim_end_matches('/').to_string();
        for tool in current.remote.iter().flat_map(|r| &r.tools) {
            if tool.kind != "terminal" {
                println!("  {:<12} {:<10} {base}{}", tool.name, tool.state, tool.url);
            }
        }
        println!("({:.1} s)", started.elapsed().as_secs_f64());
    }
    match current.state.as_str() {
        "failed" | "stopped" | "lost" => Err(CliError::with_code(
            exit::FAILURE,
            format!(
                "{}/{} on {}: {}",
                current.workspace,
                current.environment,
                current.peer_name,
                current
                    .remote
                    .as_ref()
                    .and_then(|r| r.error.clone())
                    .or(current.error.clone())
                    .unwrap_or_else(|| current.state.clone())
            ),
        )),
        _ => Ok(()),
    }
}

fn describe_placement(p: &crate::api::PlacementDto) -> String {
    let mut text = format!(
        "{}/{} on {}: {}",
        p.workspace, p.environment, p.peer_name, p.state
    );
    if let Some(transfer) = p.remote.as_ref().and_then(|r| r.transfer) {
        text.push_str(&format!(
            " ({} of {})",
            crate::cli::output::bytes(transfer.done),
            crate::cli::output::bytes(transfer.total)
        ));
    }
    if let Some(since) = p.lost_since {
        text.push_str(&format!(" since {}", since.format("%H:%M:%S")));
    }
    if let Some(allocation) = p.remote.as_ref().and_then(|r| r.allocation.as_ref()) {
        text.push_str(&format!(
            " [{}{} CPU, {}, {} GPU]",
            allocation
                .variant
                .as_ref()
                .map(|v| format!("{v}, "))
                .unwrap_or_default(),
            allocation.amounts.cpus,
            crate::cli::output::bytes(allocation.amounts.memory_bytes),
            allocation.amounts.gpus
        ));
    }
    text
}

/// The candidates in the rule's order, with each one's fit, and the reason.
pub fn print_ranking(ranking: &crate::api::RankingDto) {
    println!(
        "{:<16} {:<5} {:<8} {:>6} {:>10} {:>4} {:>6} {:>10} {:>8}  NOTE",
        "PEER", "FITS", "VARIANT", "CPUS", "MEMORY", "GPUS", "LOAD", "TO MOVE", "ETA"
    );
    for c in &ranking.candidates {
        if c.fits {
            println!(
                "{:<16} {:<5} {:<8} {:>6} {:>10} {:>4} {:>5.0}% {:>10} {:>7.1}s  {}",
                c.peer_name,
                "yes",
                c.variant.as_deref().unwrap_or("-"),
                c.allocation.cpus,
                crate::cli::output::bytes(c.allocation.memory_bytes),
                c.allocation.gpus,
                c.load * 100.0,
                crate::cli::output::bytes(c.bytes_to_move),
                c.eta_seconds,
                if c.preferred_met {
                    "preferred met"
                } else {
                    "less than preferred"
                }
            );
        } else {
            println!(
                "{:<16} {:<5} {}",
                c.peer_name,
                "no",
                c.refusal.as_deref().unwrap_or("")
            );
        }
    }
    println!(
        "chosen: {} ({}; decided in {:.0} ms)",
        ranking.chosen.as_deref().unwrap_or("none"),
        ranking.reason,
        ranking.decided_ms
    );
}

/// A spinner on stderr; hidden with `--json` and when stderr is not a terminal.
fn spinner(cli: &Cli) -> indicatif::ProgressBar {
    if cli.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The next message of the event stream; at `deadline`, a failure saying what `late` says.
async fn next_event(
    events: &mut futures_util::stream::LocalBoxStream<
        'static,
        Result<serde_json::Value, crate::client::ClientError>,
    >,
    deadline: Instant,
    spinner: &indicatif::ProgressBar,
    late: impl FnOnce() -> String,
) -> Result<serde_json::Value, CliError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, events.next()).await {
        Ok(Some(message)) => Ok(message?),
        Ok(None) => Err(CliError::with_code(
            exit::UNREACHABLE,
            "the node closed the event stream",
        )),
        Err(_) => {
            spinner.finish_and_clear();
            Err(CliError::with_code(exit::FAILURE, late()))
        }
    }
}

/// Follows runtime events until every environment settled.
pub async fn wait_settled(
    cli: &Cli,
    client: &Client,
    initial: Vec<EnvironmentStatusDto>,
    timeout: Duration,
) -> Result<Vec<EnvironmentStatusDto>, CliError> {
    let mut current: BTreeMap<(uuid::Uuid, String), EnvironmentStatusDto> = initial
        .into_iter()
        .map(|s| ((s.workspace_id, s.environment.clone()), s))
        .collect();
    let spinner = spinner(cli);
    let deadline = Instant::now() + timeout;
    let mut events = client.events().await?;
    // The snapshot and events may have overtaken the first answer: refresh once.
    for status in client.runtimes().await? {
        let key = (status.workspace_id, status.environment.clone());
        if current.contains_key(&key) {
            current.insert(key, status);
        }
    }
    while !current.values().all(settled) {
        spinner.set_message(describe_progress(&current));
        let message = next_event(&mut events, deadline, &spinner, || {
            format!(
                "still not ready after {} s: {}; the environments keep starting (see `aienv status`)",
                timeout.as_secs(),
                describe_progress(&current)
            )
        })
        .await?;
        let status = match message["type"].as_str() {
            Some("runtime_changed") | Some("tool_ready") => message["environment"].clone(),
            _ => continue,
        };
        if let Ok(status) = serde_json::from_value::<EnvironmentStatusDto>(status) {
            let key = (status.workspace_id, status.environment.clone());
            if current.contains_key(&key) {
                current.insert(key, status);
            }
        }
    }
    spinner.finish_and_clear();
    Ok(current.into_values().collect())
}

fn settled(status: &EnvironmentStatusDto) -> bool {
    match status.state.as_str() {
        "running" | "failed" | "stopped" => true,
        "degraded" => status
            .tools
            .iter()
            .all(|t| !matches!(t.state.as_str(), "starting" | "restarting" | "pending")),
        _ => false,
    }
}

fn describe_progress(current: &BTreeMap<(uuid::Uuid, String), EnvironmentStatusDto>) -> String {
    current
        .values()
        .map(|s| {
            let tools: Vec<String> = s
                .tools
                .iter()
                .filter(|t| t.kind != "terminal")
                .map(|t| format!("{} {}", t.name, t.state))
                .collect();
            format!(
                "{}/{}: {} ({})",
                s.workspace,
                s.environment,
                s.state,
                tools.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn report_run(
    cli: &Cli,
    client: &Client,
    statuses: &[EnvironmentStatusDto],
    elapsed: Duration,
) -> Result<(), CliError> {
    if cli.json {
        output::print_json(&statuses);
    } else {
        for status in statuses {
            print_environment(client, status);
        }
        println!("({:.1} s)", elapsed.as_secs_f64());
    }
    let failed: Vec<String> = statuses
        .iter()
        .filter(|s| s.state == "failed")
        .map(|s| {
            format!(
                "{}/{}: {}",
                s.workspace,
                s.environment,
                s.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::with_code(
            exit::FAILURE,
            format!(
                "{} (logs: `aienv logs {}`)",
                failed.join("; "),
                statuses[0].workspace
            ),
        ))
    }
}

fn print_environment(client: &Client, status: &EnvironmentStatusDto) {
    let mut sizing = Vec::new();
    if let Some(a) = &status.allocation {
        if let Some(variant) = &a.variant {
            sizing.push(format!("variant {variant}"));
        }
        if let Some(cpus) = a.cpus {
            sizing.push(format!("{cpus} CPU"));
        }
        if let Some(memory) = a.memory {
            sizing.push(output::bytes(memory));
        }
        if !a.gpus.is_empty() {
            sizing.push(format!("GPU {:?}", a.gpus));
        }
    }
    println!(
        "{}/{}: {} ({}{})",
        status.workspace,
        status.environment,
        status.state,
        status.backend,
        if sizing.is_empty() {
            String::new()
        } else {
            format!("; {}", sizing.join(", "))
        }
    );
    if let Some(placement) = &status.placement {
        println!(
            "  on {} (placed by {}: {}){}",
            placement.peer_name,
            placement.by,
            placement.reason,
            placement.lost_since.map_or(String::new(), |since| format!(
                "; lost since {}",
                since.format("%H:%M:%S")
            ))
        );
    }
    if let Some(lent) = &status.lent_to {
        println!("  runs here for {} ({})", lent.peer_name, lent.user);
    }
    if let Some(error) = &status.error {
        println!("  error: {error}");
    }
    for note in status
        .notes
        .iter()
        .chain(status.allocation.iter().flat_map(|a| a.notes.iter()))
        .collect::<std::collections::BTreeSet<_>>()
    {
        println!("  note: {note}");
    }
    for tool in &status.tools {
        let url = format!("{}{}", client.base(), tool.url);
        let detail = tool
            .detail
            .as_deref()
            .map_or(String::new(), |d| format!(" — {d}"));
        println!("  {:<12} {:<11} {url}{detail}", tool.name, tool.state);
    }
}

/// `aienv stop WS [ENV]`.
pub async fn stop(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    environment: Option<&str>,
) -> Result<(), CliError> {
    let statuses = client.stop(workspace, environment).await?;
    if cli.json {
        output::print_json(&statuses);
    } else {
        for status in statuses
            .iter()
            .filter(|s| environment.is_none_or(|e| e == s.environment))
        {
            println!(
                "{}/{}: {}",
                status.workspace, status.environment, status.state
            );
        }
    }
    Ok(())
}

/// `aienv status [WS]`.
pub async fn status(cli: &Cli, client: &Client, workspace: Option<&str>) -> Result<(), CliError> {
    let statuses = match workspace {
        Some(workspace) => client.status(workspace).await?,
        None => client.runtimes().await?,
    };
    if cli.json {
        output::print_json(&statuses);
        return Ok(());
    }
    if workspace.is_some() {
        for status in &statuses {
            print_environment(client, status);
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let a = s.allocation.as_ref();
            vec![
                s.workspace.clone(),
                s.environment.clone(),
                s.backend.clone(),
                s.state.clone(),
                a.and_then(|a| a.cpus).map_or("-".into(), |c| c.to_string()),
                a.and_then(|a| a.memory).map_or("-".into(), output::bytes),
                s.tools
                    .iter()
                    .map(|t| format!("{}:{}", t.name, t.state))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    output::print_table(
        &[
            "WORKSPACE",
            "ENV",
            "BACKEND",
            "STATE",
            "CPU",
            "MEMORY",
            "TOOLS",
        ],
        &rows,
    );
    let plugins = client.plugins().await?;
    if !plugins.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.version.clone().unwrap_or_else(|| "-".into()),
                    if p.healthy { "healthy" } else { "unusable" }.to_string(),
                    p.detail.clone(),
                    p.path.clone(),
                ]
            })
            .collect();
        output::print_table(&["PLUGIN", "VERSION", "HEALTH", "DETAIL", "PATH"], &rows);
    }
    Ok(())
}

/// `aienv logs WS [ENV]`.
pub async fn logs(
    client: &Client,
    workspace: &str,
    environment: Option<&str>,
    tool: Option<&str>,
    follow: bool,
    tail: Option<usize>,
) -> Result<(), CliError> {
    let mut stream = client
        .logs(workspace, environment, tool, follow, tail)
        .await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if stdout
            .write_all(&chunk)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// `aienv open`: a link that signs the browser into the dashboard once, opened or printed.
pub async fn open_dashboard(cli: &Cli, client: &Client, print_only: bool) -> Result<(), CliError> {
    let link = client.sign_in_link().await?;
    if cli.json {
        output::print_json(&link);
        return Ok(());
    }
    browse(&link.url, print_only);
    Ok(())
}

/// Opens `url` in the person's browser when this is a terminal and one can be found;
/// prints it otherwise (or as well).
fn browse(url: &str, print_only: bool) {
    if !print_only && std::io::stdout().is_terminal() {
        let opened = std::process::Command::new("xdg-open")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if opened {
            println!("opened {url}");
            return;
        }
    }
    println!("{url}");
}

/// `aienv open WS [TOOL]`: prints the tool's URL, or opens it in a browser.
pub async fn open(
    cli: &Cli,
    client: &Client,
    workspace: &str,
    tool: Option<&str>,
    print_only: bool,
) -> Result<(), CliError> {
    let statuses = client.status(workspace).await?;
    let openable: Vec<String> = statuses
        .iter()
        .flat_map(|s| s.tools.iter())
        .filter(|t| t.kind != "terminal")
        .map(|t| t.name.clone())
        .collect();
    let tool = match (tool, openable.as_slice()) {
        (Some(tool), _) => tool,
        (None, [only]) => only.as_str(),
        (None, []) => {
            return Err(CliError::with_code(
                exit::NOT_FOUND,
                format!("`{workspace}` has no tool to open in a browser (`aienv shell {workspace}` opens its terminal)"),
            ))
        }
        (None, several) => {
            return Err(CliError::with_code(
                exit::INVALID,
                format!("`{workspace}` has several tools: name one ({})", several.join(", ")),
            ))
        }
    };
    let found = statuses
        .iter()
        .flat_map(|s| s.tools.iter().map(move |t| (s, t)))
        .find(|(_, t)| t.name == tool);
    let Some((status, found)) = found else {
        let known: Vec<String> = statuses
            .iter()
            .flat_map(|s| s.tools.iter().map(|t| t.name.clone()))
            .collect();
        return Err(CliError::with_code(
            exit::NOT_FOUND,
            format!(
                "`{workspace}` has no tool `{tool}` (it has: {})",
                known.join(", ")
            ),
        ));
    };
    if found.state != "ready" {
        if cli.json {
            let url = format!("{}{}", client.base(), found.url);
            output::print_json(&serde_json::json!({"url": url, "state": found.state}));
            return Ok(());
        }
        return Err(CliError::with_code(
            exit::CONFLICT,
            format!(
                "tool `{tool}` is {} (environment {} is {}): start it with `aienv run {workspace}`",
                found.state, status.environment, status.state
            ),
        ));
    }
    // The tool lives on an origin of its own: a single-use link signs the browser in there.
    let ticket = client.tool_ticket(workspace, tool).await?;
    let url = ticket.url;
    if cli.json {
        output::print_json(&serde_json::json!({
            "url": url,
            "state": found.state,
            "expires_in_seconds": ticket.expires_in_seconds,
        }));
        return Ok(());
    }
    browse(&url, print_only);
    Ok(())
}

/// `aienv shell WS [ENV]`: the environment's terminal on this terminal.
pub async fn shell(
    client: &Client,
    workspace: &str,
    environment: Option<&str>,
) -> Result<(), CliError> {
    use awc::ws::{Frame, Message};
    let (cols, rows) = terminal_size().unwrap_or((80, 24));
    let framed = client.terminal(workspace, environment, cols, rows).await?;
    let (mut sink, mut stream) = framed.split();
    let raw = RawMode::enable();
    let (input_sender, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut stdin, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input_sender.blocking_send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut size = (cols, rows);
    let mut resize_check = tokio::time::interval(Duration::from_millis(500));
    let mut stdout = std::io::stdout();
    let reason = loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Frame::Binary(bytes))) | Some(Ok(Frame::Text(bytes))) => {
                    let _ = stdout.write_all(&bytes);
                    let _ = stdout.flush();
                }
                Some(Ok(Frame::Close(reason))) => break reason.and_then(|r| r.description),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break None,
            },
            bytes = input.recv() => match bytes {
                Some(bytes) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        break None;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break None;
                }
            },
            _ = resize_check.tick() => {
                if let Some(now) = terminal_size() {
                    if now != size {
                        size = now;
                        let text = serde_json::json!({"type": "resize", "cols": now.0, "rows": now.1}).to_string();
                        let _ = sink.send(Message::Text(text.into())).await;
                    }
                }
            }
        }
    };
    drop(raw);
    if let Some(reason) = reason {
        eprintln!("\r\naienv: {reason}");
    }
    Ok(())
}

fn terminal_size() -> Option<(u16, u16)> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize for a terminal on stdout.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some((size.ws_col, size.ws_row))
}

/// Puts the local terminal in raw mode (keys go to the remote shell as typed) until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: termios calls on stdin, a terminal.
        unsafe {
            if libc::tcgetattr(0, &mut original) != 0 {
                return RawMode(None);
            }
            let mut raw = original;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        RawMode(Some(original))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            // SAFETY: restores the settings read in `enable`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, original);
            }
        }
    }
}

/// `aienv env detect WS [--write NAME]`.
pub async fn env(cli: &Cli, client: &Client, command: &EnvCommand) -> Result<(), CliError> {
    match command {
        EnvCommand::Detect {
            workspace,
            write,
            force,
        } => {
            let detection = client.detect(workspace).await?;
            if let Some(name) = write {
                if !force && client.environment(workspace, name).await.is_ok() {
                    return Err(CliError::with_code(
                        exit::CONFLICT,
                        format!("`{workspace}` already has an environment `{name}`: pass --force to replace it, or --write OTHER-NAME"),
                    ));
                }
                client
                    .put_environment(workspace, name, detection.yaml.clone())
                    .await?;
            }
            if cli.json {
                output::print_json(&serde_json::json!({
                    "yaml": detection.yaml,
                    "findings": detection.findings,
                    "written": write,
                }));
                return Ok(());
            }
            println!("# found:");
            for finding in &detection.findings {
                println!("#   {finding}");
            }
            match write {
                Some(name) => println!("# written as environments/{name}/environment.yaml:"),
                None => println!(
                    "# proposed environment.yaml (save it with `aienv env detect {workspace} --write [NAME]`):"
                ),
            }
            print!("{}", detection.yaml);
            Ok(())
        }
    }
}
