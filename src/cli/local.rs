//! Commands that work on this machine without a running node: `serve`, `daemon`, `config`,
//! `user` and `resources`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use crate::config::{self, LogFormat};

use super::{daemon, exit, output, Cli, CliError, DaemonCommand, ServeArgs, UserCommand};

#[cfg(any(debug_assertions, feature = "test-hooks"))]
fn test_hooks(args: &ServeArgs) -> crate::http::TestHooks {
    crate::http::TestHooks {
        corrupt_chunks: args.test_corrupt_chunks,
        chunk_delay_ms: args.test_chunk_delay_ms,
    }
}

#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
fn test_hooks(_: &ServeArgs) -> crate::http::TestHooks {
    crate::http::TestHooks::default()
}

pub(super) fn daemon_command(cli: &Cli, command: &DaemonCommand) -> Result<(), CliError> {
    let args = match command {
        DaemonCommand::Start(args) | DaemonCommand::Stop(args) | DaemonCommand::Status(args) => {
            args
        }
    };
    let data_dir = resolve(cli, args)?.config.data_dir;
    match command {
        DaemonCommand::Start(_) => daemon::start(&data_dir),
        DaemonCommand::Stop(_) => daemon::stop(&data_dir),
        DaemonCommand::Status(_) => {
            let code = daemon::status(&data_dir, cli.json)?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
    }
}

fn resolve(cli: &Cli, args: &ServeArgs) -> Result<config::Resolved, CliError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = config::config_file(args.config.as_deref(), &env);
    let explicit = args.config.is_some() || env.contains_key("AIENV_CONFIG");
    // --data-dir on the command line is a flag; AIENV_DATA_DIR is read as an env layer.
    let flag_dir = cli.data_dir.as_deref().filter(|_| data_dir_flag_given());
    config::resolve(file.as_deref(), explicit, &env, &args.flags(flag_dir))
        .map_err(|e| CliError::with_code(exit::INVALID, e.to_string()))
}

/// Whether `--data-dir` was given on the command line (clap merges it with the env var).
fn data_dir_flag_given() -> bool {
    std::env::args().any(|a| a == "--data-dir" || a.starts_with("--data-dir="))
}

pub(super) fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let resolved = resolve(cli, args)?;
    let config = resolved.config;
    init_tracing(&config.log.level, config.log.format);
    if let Some(file) = &resolved.file {
        tracing::info!(file = %file.display(), "read config file");
    }
    actix_rt::System::new()
        .block_on(crate::serve::serve(
            config,
            crate::serve::ServeOptions {
                dev_ui: args.dev,
                test_hooks: test_hooks(args),
            },
        ))
        .map_err(|e| CliError::new(e.to_string()))
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIENV_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub(super) fn config_show(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let resolved = resolve(cli, args)?;
    let mut value = serde_json::to_value(&resolved.config).expect("config serializes");
    // Passwords and secrets are never printed.
    for (list, field) in [
        ("/git/credentials", "password"),
        ("/ci/hooks", "secret"),
        ("/ci/notify", "secret"),
    ] {
        if let Some(items) = value.pointer_mut(list).and_then(|v| v.as_array_mut()) {
            for item in items {
                if let Some(secret) = item.get_mut(field).filter(|s| !s.is_null()) {
                    *secret = serde_json::Value::String("***".into());
                }
            }
        }
    }
    if cli.json {
        let settings: Vec<serde_json::Value> = resolved
            .sources
            .iter()
            .map(|(key, source)| {
                let pointer = format!("/{}", key.replace('.', "/"));
                serde_json::json!({
                    "key": key,
                    "value": value.pointer(&pointer),
                    "source": source,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "file": resolved.file,
            "settings": settings,
        }));
        return Ok(());
    }
    match &resolved.file {
        Some(file) => println!("config file: {}", file.display()),
        None => println!("config file: none"),
    }
    let rows: Vec<Vec<String>> = resolved
        .sources
        .iter()
        .map(|(key, source)| {
            let pointer = format!("/{}", key.replace('.', "/"));
            let shown = match value.pointer(&pointer) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            vec![key.clone(), shown, source.to_string()]
        })
        .collect();
    output::print_table(&["SETTING", "VALUE", "SOURCE"], &rows);
    Ok(())
}

pub(super) fn resources(cli: &Cli) {
    let data_dir = local_data_dir(cli);
    let probe_dir = if data_dir.exists() {
        data_dir
    } else {
        PathBuf::from("/")
    };
    let detected = aienv_actors::resources::detect(&probe_dir);
    let dto = crate::api::ResourcesDto::from(&detected);
    if cli.json {
        output::print_json(&dto);
        return;
    }
    println!("cpu:    {} ({} cores)", dto.cpu_model, dto.cpu_cores);
    println!(
        "memory: {} total, {} available",
        output::bytes(dto.memory_total),
        output::bytes(dto.memory_available)
    );
    println!(
        "disk:   {} free in {}",
        output::bytes(dto.disk_free),
        probe_dir.display()
    );
    println!("os:     {} {}", dto.os, dto.arch);
    if dto.gpus.is_empty() {
        println!("gpus:   none");
    }
    for gpu in &dto.gpus {
        println!(
            "gpu:    {} {} ({})",
            gpu.vendor,
            gpu.model,
            output::bytes(gpu.memory)
        );
    }
}

pub(super) fn local_data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir)
}

pub(super) fn user(cli: &Cli, command: &UserCommand) -> Result<(), CliError> {
    use crate::auth::UsersFile;
    let data_dir = local_data_dir(cli);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| CliError::new(format!("data dir {}: {e}", data_dir.display())))?;
    let invalid = |e: crate::auth::AuthError| {
        let code = match e {
            crate::auth::AuthError::UserExists(_) => exit::CONFLICT,
            crate::auth::AuthError::NoSuchUser(_) => exit::NOT_FOUND,
            _ => exit::INVALID,
        };
        CliError::with_code(code, e.to_string())
    };
    let mut users = UsersFile::load(&data_dir).map_err(invalid)?;
    match command {
        UserCommand::Add {
            name,
            password_stdin,
            role,
        } => {
            let role = crate::auth::Role::parse(role)
                .ok_or_else(|| invalid(crate::auth::AuthError::BadRole(role.clone())))?;
            let password = read_password(*password_stdin)?;
            users.add(name, &password, role).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!(
                "added user `{name}` to {}",
                data_dir.join(crate::auth::USERS_FILE).display()
            );
        }
        UserCommand::Role { name, role } => {
            let role = crate::auth::Role::parse(role)
                .ok_or_else(|| invalid(crate::auth::AuthError::BadRole(role.clone())))?;
            users.set_role(name, role).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!("`{name}` is now {}", role.as_str());
        }
        UserCommand::Rm { name } => {
            users.remove(name).map_err(invalid)?;
            users.save(&data_dir).map_err(invalid)?;
            eprintln!("removed user `{name}`");
        }
        UserCommand::Ls => {
            if cli.json {
                let list: Vec<_> = users
                    .users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "role": u.role.as_str(), "created": u.created}))
                    .collect();
                output::print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = users
                    .users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.as_str().to_string(),
                            u.created.to_rfc3339(),
                        ]
                    })
                    .collect();
                output::print_table(&["USER", "ROLE", "CREATED"], &rows);
            }
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, CliError> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        eprint!("password (input is shown; use --password-stdin to pipe it): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
