//! `charond`: the Charon manager. Turns arguments into options and calls the
//! manager library; the only place where errors become exit codes (see
//! doc/charond.md: 0 graceful stop or valid config, 1 config errors found
//! by `--check`, 2 usage, 3 a stop that had to SIGKILL, 100 fatal start-up
//! problem).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Runs Charon services: one rendezvous socket per configured service,
/// instances forked on demand, scaled, recycled and supervised.
#[derive(Parser, Debug)]
#[command(name = "charond", version)]
struct Args {
    /// Directory of `<service key>.toml` files.
    #[arg(long, value_name = "DIR")]
    config_dir: PathBuf,
    /// Directory for the rendezvous sockets and the lock (created if
    /// missing) [default: $CHARON_RUN_DIR, /run/charon for root,
    /// $XDG_RUNTIME_DIR/charon, /tmp/charon-$UID: where the clients look].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Validate the config files, print each error, and exit (1 if any).
    #[arg(long)]
    check: bool,
    /// Seconds between the per-service statistics log lines.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    stats_interval: u64,
    /// Write the log to this file (appending) instead of stderr; SIGUSR1
    /// reopens it, so logrotate can rename it without copytruncate.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Serve the statistics as Prometheus text at GET /metrics over HTTP on
    /// this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<SocketAddr>,
}

/// Exit status for a fatal start-up problem.
const FATAL: u8 = 100;
/// Exit status of a stop that had to SIGKILL something.
const FORCED: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match charon_manager::check(&args.config_dir) {
            Ok(report) => {
                for i in &report.ignored {
                    eprintln!("charond: ignored {i}");
                }
                for e in &report.errors {
                    println!("{e}");
                }
                println!("{}", report.summary(&args.config_dir));
                if report.errors.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("charond: {e}");
                ExitCode::from(1)
            }
        };
    }
    // The same default as the clients', so that `charon` finds the
    // manager with neither given a run dir.
    let run_dir = args.run_dir.unwrap_or_else(charon_client::default_run_dir);
    let opts = charon_manager::Options {
        config_dir: args.config_dir,
        run_dir,
        stats_interval: Duration::from_secs(args.stats_interval),
        log_file: args.log_file,
        metrics_listen: args.metrics_listen,
    };
    match charon_manager::run(&opts) {
        Ok(charon_manager::Stop::Graceful) => ExitCode::SUCCESS,
        Ok(charon_manager::Stop::Forced) => ExitCode::from(FORCED),
        Err(e) => {
            eprintln!("charond: {e}");
            ExitCode::from(FATAL)
        }
    }
}
