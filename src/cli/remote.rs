//! Commands that talk to a node over REST through [`crate::client::Client`]: the node, its
//! peers, trust and pairing, events, and the workspace, transfer and runtime commands (each in
//! its own module).

use std::io::IsTerminal;
use std::net::IpAddr;

use futures_util::StreamExt;

use crate::client::{Client, Credentials};

use super::{exit, output, runtime, transfer, workspace, Cli, CliError, Command, PeersCommand};

fn print_peers(cli: &Cli, peers: &[crate::api::PeerDto]) {
    if cli.json {
        output::print_json(&peers);
        return;
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let gpus = if p.resources.gpus.is_empty() {
                "-".to_string()
            } else {
                p.resources
                    .gpus
                    .iter()
                    .map(|g| g.model.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                p.name.clone(),
                p.state.clone(),
                if p.trusted { "trusted" } else { "known" }.to_string(),
                p.key_id.clone(),
                p.url.clone().unwrap_or_default(),
                p.resources.cpu_cores.to_string(),
                output::bytes(p.resources.memory_total),
                output::cell(&gpus, 30),
                p.shared_workspaces.to_string(),
                p.last_seen.format("%H:%M:%S").to_string(),
            ]
        })
        .collect();
    output::print_table(
        &[
            "PEER",
            "STATE",
            "TRUST",
            "KEY ID",
            "URL",
            "CPUS",
            "RAM",
            "GPUS",
            "SHARED",
            "LAST SEEN",
        ],
        &rows,
    );
}

/// Credentials for talking to `node`: AIENV_TOKEN, else AIENV_USER/AIENV_PASSWORD, else the
/// local node's admin token — only when `node` is on this machine, so the token never leaves it.
fn credentials(cli: &Cli) -> Option<Credentials> {
    if let Ok(token) = std::env::var("AIENV_TOKEN") {
        return Some(Credentials::Token(token));
    }
    if let (Ok(user), Ok(password)) = (std::env::var("AIENV_USER"), std::env::var("AIENV_PASSWORD"))
    {
        return Some(Credentials::Basic { user, password });
    }
    let host = cli
        .node
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&cli.node)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']']);
    let local = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local {
        return None;
    }
    let path = super::local::local_data_dir(cli).join(crate::auth::TOKEN_FILE);
    std::fs::read_to_string(path)
        .ok()
        .map(|t| Credentials::Token(t.trim().to_string()))
}

pub(super) async fn remote(cli: &Cli) -> Result<(), CliError> {
    let client = if cli.node.starts_with("https://") {
        let Some(key) = &cli.node_key else {
            return Err(CliError::with_code(
                exit::INVALID,
                format!(
                    "{} speaks TLS with its own key: give that key with --node-key KEY-ID (`aienv node` on that machine shows it)",
                    cli.node
                ),
            ));
        };
        let key = aienv_actors::identity::KeyFingerprint::parse(key)
            .map_err(|e| CliError::with_code(exit::INVALID, format!("--node-key: {e}")))?;
        Client::with_key(&cli.node, credentials(cli), key)
    } else {
        Client::new(&cli.node, credentials(cli))
    };
    match &cli.command {
        Command::Ws(command) => workspace::run(cli, &client, command).await,
        Command::Slurm => {
            let slurm = client.slurm_partitions().await?;
            if cli.json {
                output::print_json(&slurm);
            } else if !slurm.configured {
                println!("this node has no Slurm: set runtime.slurm.url in its config file");
            } else if let Some(error) = &slurm.error {
                return Err(CliError::new(format!(
                    "slurmrestd: {}",
                    output::printable(error)
                )));
            } else {
                let rows: Vec<Vec<String>> = slurm
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            output::printable(&p.name),
                            output::printable(&p.state),
                            format!("{}/{}", p.nodes_idle, p.nodes),
                            format!("{}/{}", p.cpus_free, p.cpus),
                            format!(
                                "{}/{}",
                                output::bytes(p.memory_free),
                                output::bytes(p.memory)
                            ),
                            format!("{}/{}", p.gpus_free, p.gpus),
                        ]
                    })
                    .collect();
                output::print_table(
                    &[
                        "PARTITION",
                        "STATE",
                        "IDLE NODES",
                        "FREE CPUS",
                        "FREE MEMORY",
                        "FREE GPUS",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
        Command::Node => {
            let node = client.node().await?;
            if cli.json {
                output::print_json(&node);
            } else {
                println!("name:       {}", node.name);
                println!("key id:     {}", node.key_id);
                println!(
                    "id:         {}{}",
                    node.id,
                    if node.legacy_id {
                        " (kept from before node keys)"
                    } else {
                        ""
                    }
                );
                println!("tls cert:   SHA-256 {}", node.certificate_sha256);
                println!("version:    {}", node.version);
                if let Some(dir) = &node.data_dir {
                    println!("data dir:   {dir}");
                }
                println!("started:    {}", node.started.to_rfc3339());
                println!("uptime:     {} s", node.uptime_seconds);
                println!("workspaces: {}", node.workspaces);
                let r = &node.resources;
                println!("cpu:        {} ({} cores)", r.cpu_model, r.cpu_cores);
                println!(
                    "memory:     {} total, {} available",
                    output::bytes(r.memory_total),
                    output::bytes(r.memory_available)
                );
                println!("disk free:  {}", output::bytes(r.disk_free));
                for gpu in &r.gpus {
                    println!("gpu:        {} ({})", gpu.model, output::bytes(gpu.memory));
                }
                let d = &node.discovery;
                match &d.problem {
                    Some(problem) => println!("discovery:  {problem}"),
                    None => println!("discovery:  on {}", d.interfaces.join(", ")),
                }
                println!(
                    "shared:     {} workspaces (catalog {})",
                    d.shared_workspaces, d.catalog_digest
                );
                let c = &d.datagrams;
                println!(
                    "datagrams:  {} sent, {} accepted, dropped: {} own, {} forged, {} malformed, {} oversized, {} unknown version, {} replayed, {} flood",
                    c.sent, c.accepted, c.own, c.forged, c.malformed, c.oversized, c.unknown_version, c.replayed, c.flood
                );
                if d.key_conflicts > 0 {
                    println!(
                        "conflicts:  {} announcements or answers refused: another key claimed a known node's id (see `aienv peers`)",
                        d.key_conflicts
                    );
                }
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Trust { peer, key }),
            ..
        } => {
            let record = client.trust_peer(peer, key.as_deref()).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!(
                    "trusted {} ({}), key {}",
                    record.name, record.id, record.key_id
                );
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Pair { peer, code, show }),
            ..
        } => {
            if *show {
                let shown = client.pairing_code().await?;
                if cli.json {
                    output::print_json(&shown);
                } else {
                    println!("pairing code: {}", shown.code);
                    println!(
                        "type it on the other node within 5 minutes: aienv peers pair <this node> --code {}",
                        shown.code
                    );
                    println!("this node's key id: {}", shown.key_id);
                }
                return Ok(());
            }
            let (Some(peer), Some(code)) = (peer, code) else {
                return Err(CliError::with_code(
                    exit::USAGE,
                    "give the peer and the code it shows: aienv peers pair PEER --code CODE",
                ));
            };
            let record = client.pair(peer, code).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!(
                    "paired with {} ({}): each node now trusts the other; key {}",
                    record.name, record.id, record.key_id
                );
            }
            Ok(())
        }
        Command::Peers {
            action: Some(PeersCommand::Untrust { peer }),
            ..
        } => {
            let record = client.untrust_peer(peer).await?;
            if cli.json {
                output::print_json(&record);
            } else {
                println!("no longer trusted: {} ({})", record.name, record.id);
            }
            Ok(())
        }
        Command::Peers { trusted: true, .. } => {
            let trusted = client.trusted_peers().await?;
            if cli.json {
                output::print_json(&trusted);
            } else {
                let rows: Vec<Vec<String>> = trusted
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.key_id.clone(),
                            t.since.format("%Y-%m-%d %H:%M").to_string(),
                            t.by.clone(),
                        ]
                    })
                    .collect();
                output::print_table(&["PEER", "KEY ID", "SINCE", "BY"], &rows);
            }
            Ok(())
        }
        Command::Peers { watch, .. } => {
            print_peers(cli, &client.peers().await?);
            if !*watch {
                return Ok(());
            }
            let mut stream = client.events().await?;
            while let Some(message) = stream.next().await {
                let message = message?;
                let kind = message["type"].as_str().unwrap_or_default();
                if kind.starts_with("peer_") || kind == "snapshot" {
                    if !cli.json && std::io::stdout().is_terminal() {
                        print!("\x1b[2J\x1b[H");
                    }
                    print_peers(cli, &client.peers().await?);
                }
            }
            Err(CliError::with_code(
                exit::UNREACHABLE,
                "the node closed the event stream",
            ))
        }
        Command::Catalog { filter, peer } => {
            let entries = client
                .network_catalog(&crate::client::NetworkQuery {
                    kind: filter.kind.clone(),
                    tool: filter.tool.clone(),
                    lang: filter.language.clone(),
                    tag: filter.tag.clone(),
                    q: filter.text(),
                    peer: peer.clone(),
                })
                .await?;
            if cli.json {
                output::print_json(&entries);
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.workspace.name.clone(),
                            e.peer_name.clone(),
                            e.workspace.kind.clone(),
                            e.workspace.revision.to_string(),
                            output::cell(&e.workspace.tags.join(","), 30),
                            output::cell(&e.workspace.title, 40),
                        ]
                    })
                    .collect();
                output::print_table(
                    &["WORKSPACE", "PEER", "TYPE", "REV", "TAGS", "TITLE"],
                    &rows,
                );
            }
            Ok(())
        }
        Command::Clone {
            source,
            rename_to,
            private,
            no_wait,
            run,
        } => {
            transfer::clone(
                cli,
                &client,
                source,
                rename_to.clone(),
                *private,
                *no_wait,
                *run,
            )
            .await
        }
        Command::Ci(args) => super::ci::ci(cli, &client, args).await,
        Command::Sync {
            workspace,
            push: true,
            force,
            ..
        } => transfer::push(cli, &client, workspace, *force).await,
        Command::Sync {
            workspace,
            peer,
            no_wait,
            force,
            ..
        } => transfer::sync(cli, &client, workspace, peer.clone(), *no_wait, *force).await,
        Command::Transfers { action, watch } => {
            transfer::transfers(cli, &client, action, *watch).await
        }
        Command::Run {
            workspace,
            environment,
            on: Some(on),
            timeout,
            explain,
            ..
        } => {
            runtime::run_on(
                cli,
                &client,
                workspace,
                environment.clone(),
                on,
                *explain,
                *timeout,
            )
            .await
        }
        Command::Run {
            workspace,
            environment,
            backend,
            timeout,
            ..
        } => {
            runtime::run(
                cli,
                &client,
                workspace,
                environment.clone(),
                backend.clone(),
                *timeout,
            )
            .await
        }
        Command::Stop {
            workspace,
            environment,
        } => runtime::stop(cli, &client, workspace, environment.as_deref()).await,
        Command::Status { workspace } => runtime::status(cli, &client, workspace.as_deref()).await,
        Command::Logs {
            workspace,
            environment,
            tool,
            follow,
            tail,
        } => {
            runtime::logs(
                &client,
                workspace,
                environment.as_deref(),
                tool.as_deref(),
                *follow,
                *tail,
            )
            .await
        }
        Command::Open {
            workspace,
            tool,
            print,
        } => match workspace {
            Some(workspace) => {
                runtime::open(cli, &client, workspace, tool.as_deref(), *print).await
            }
            None => runtime::open_dashboard(cli, &client, *print).await,
        },
        Command::Shell {
            workspace,
            environment,
        } => runtime::shell(&client, workspace, environment.as_deref()).await,
        Command::Env(command) => runtime::env(cli, &client, command).await,
        Command::Events => {
            let mut stream = client.events().await?;
            while let Some(message) = stream.next().await {
                let message = message?;
                println!("{message}");
            }
            Err(CliError::with_code(
                exit::UNREACHABLE,
                "the node closed the event stream",
            ))
        }
        Command::Serve(_)
        | Command::Config(_)
        | Command::User(_)
        | Command::Daemon(_)
        | Command::Resources
        | Command::GitCredential { .. } => {
            unreachable!("handled locally")
        }
    }
}
