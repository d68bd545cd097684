//! The `aienv` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    aienv::cli::run(aienv::cli::Cli::parse())
}
