//! The `charon` command line: argument parsing, the exit status table, and
//! dispatch to one module per subcommand.
//!
//! This is the only place where outcomes become exit statuses and stderr
//! lines; the subcommands return a [`Failure`] and leave printing it here.
//!
//! # Exit statuses
//!
//! | status | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | the service answered a fault (stderr: `fault CODE: TEXT`) |
//! | 2 | usage error (bad option, invalid key, reserved context name) |
//! | 3 | the service is unavailable or overloaded (stderr says which, the reason and retry-after) |
//! | 4 | no such service |
//! | 5 | timeout |
//! | 6 | connection lost |
//! | 7 | any other error |
//!
//! Whenever the status is not 0, stderr gets a one-line message.
//!
//! `stats`, `ps`, `reload`, `restart`, `health` and `top` talk to the
//! manager over its control socket; for them 4 means the key is not
//! configured and 7 covers "no manager running", a reload that could not
//! apply a change, and config errors found by a reload. `health` exits 3
//! when charond answers but a service is not ready (backoff, starting, ...)
//! or a config file failed to load, 5 when charond does not answer in time,
//! 7 when there is no charond.
//!
//! A new subcommand is a module here with an `Args` (clap derive) and a
//! `run(Args) -> Result<(), Failure>`, plus one variant in [`Command`].

mod common;
mod health;
mod lookup;
mod ping;
mod ps;
mod reload;
mod restart;
mod send;
mod standalone;
mod stats;
mod top;

use std::process::ExitCode;

use charon_client::{Error, ErrorKind};
use clap::{Parser, Subcommand};

/// Talk to Charon services and to their manager, charond.
#[derive(Debug, Parser)]
#[command(name = "charon", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one request and print the response body.
    Send(send::Args),
    /// Run a service program standalone on one request (fds 3 and 4).
    Test(standalone::Args),
    /// Print the socket path each key resolves to.
    Lookup(lookup::Args),
    /// Send echo requests and report the rate and latency.
    Ping(ping::Args),
    /// Show each service's figures (from the manager).
    Stats(stats::Args),
    /// List the running instances (from the manager).
    Ps(ps::Args),
    /// Make the manager rescan its config dir, and report what changed.
    Reload(reload::Args),
    /// End a service's backoff and recycle its instances.
    Restart(restart::Args),
    /// Exit 0 if charond answers and every service can take requests.
    Health(health::Args),
    /// A live view of the services, refreshed every second (q quits).
    Top(top::Args),
}

/// Exit statuses, as documented above.
pub mod status {
    /// The service answered a fault.
    pub const FAULT: u8 = 1;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// Unavailable or overloaded.
    pub const UNAVAILABLE: u8 = 3;
    /// No such service.
    pub const NOT_FOUND: u8 = 4;
    /// Timeout.
    pub const TIMEOUT: u8 = 5;
    /// Connection lost.
    pub const LOST: u8 = 6;
    /// Any other error.
    pub const OTHER: u8 = 7;
}

/// Why a subcommand did not succeed: its exit status and one line for
/// stderr.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(status::USAGE, message)
    }

    pub fn other(message: impl Into<String>) -> Failure {
        Failure::new(status::OTHER, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(status_of(&e), message_of(&e))
    }
}

/// The exit status for a client error.
pub fn status_of(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::ServiceFault { .. } => status::FAULT,
        ErrorKind::Unavailable { .. } | ErrorKind::Overloaded => status::UNAVAILABLE,
        ErrorKind::NotFound { .. } => status::NOT_FOUND,
        ErrorKind::Timeout { .. } => status::TIMEOUT,
        ErrorKind::Disconnected { .. } => status::LOST,
        ErrorKind::InvalidKey(_) | ErrorKind::ReservedContext { .. } => status::USAGE,
        _ => status::OTHER,
    }
}

/// The stderr line for a client error: a fault as `fault CODE: TEXT`,
/// everything else as the library says it.
pub fn message_of(e: &Error) -> String {
    match e.kind() {
        ErrorKind::ServiceFault { code, text } => format!("fault {code}: {text}"),
        _ => e.to_string(),
    }
}

pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let outcome = match cli.command {
        Command::Send(args) => send::run(args),
        Command::Test(args) => standalone::run(args),
        Command::Lookup(args) => lookup::run(args),
        Command::Ping(args) => ping::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Ps(args) => ps::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Restart(args) => restart::run(args),
        Command::Health(args) => health::run(args),
        Command::Top(args) => top::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&f),
    }
}

/// The command line, or how to exit when it asked for help or the
/// version (success) or is wrong (a usage error, said on one line).
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `charon` alone: the help (to stderr), as a usage error.
            let _ = e.print();
            Err(ExitCode::from(status::USAGE))
        }
        Err(e) => {
            // clap's message spans lines (what is wrong, then usage); keep
            // its first paragraph on one line.
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            eprintln!("charon: {what} (see charon --help)");
            Err(ExitCode::from(status::USAGE))
        }
    }
}

/// Says why a command failed, on one line, and gives its exit status.
fn report(f: &Failure) -> ExitCode {
    let line = f.message.replace('\n', " ");
    // A fault is the service's own answer: print it bare, as
    // `fault CODE: TEXT`, so scripts can match it.
    if f.status == status::FAULT {
        eprintln!("{line}");
    } else {
        eprintln!("charon: {line}");
    }
    ExitCode::from(f.status)
}
