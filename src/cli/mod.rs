//! The `aienv` command line: its arguments ([`args`]), the commands that work on this machine
//! ([`local`]), and those that talk to a node over REST ([`remote`]).

mod args;
pub mod ci;
mod daemon;
mod local;
mod output;
mod remote;
mod runtime;
mod transfer;
mod workspace;

use std::process::ExitCode;

pub use args::*;
pub use output::{exit, CliError};

use local::{config_show, daemon_command, resources, serve, user};
use remote::remote;

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve(_)) {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`aienv ws ls | head`). Sockets are unaffected: they write with MSG_NOSIGNAL.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match &cli.command {
        Command::Serve(args) => serve(&cli, args),
        Command::Config(ConfigCommand::Show(args)) => config_show(&cli, args),
        Command::User(command) => user(&cli, command),
        Command::Daemon(command) => daemon_command(&cli, command),
        Command::Resources => {
            resources(&cli);
            Ok(())
        }
        Command::GitCredential { file, operation } => {
            let stdin = std::io::stdin().lock();
            crate::git_credentials::answer(file, operation, stdin, std::io::stdout())
                .map_err(|e| CliError::new(e.to_string()))
        }
        _ => actix_rt::System::new().block_on(remote(&cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}
