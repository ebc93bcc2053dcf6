//! `charon`: the command line to talk to Charon services (send a request,
//! run a service standalone, look a key up, ping).
//!
//! This file is only the entry point; each subcommand is a module under
//! `src/cli/`, and `src/cli/mod.rs` turns outcomes into exit statuses.
#![forbid(unsafe_code)]

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
