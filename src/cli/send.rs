//! `charon send`: one request to one service; the response body goes to
//! stdout (with a newline added when stdout is a terminal and the body does
//! not end with one), any failure to the exit status.
//!
//! Exit statuses and messages are left to `cli/mod.rs`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use charon_client::Request;

use super::common::{client, parse_context, parse_seconds, with_context};
use super::Failure;

/// Send one request and print the response body.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir holding the services' sockets [default: $CHARON_RUN_DIR,
    /// /run/charon for root, $XDG_RUNTIME_DIR/charon, /tmp/charon-$UID].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// A context entry sent beside the body (repeatable).
    #[arg(short = 'C', value_name = "NAME=VALUE", value_parser = parse_context)]
    context: Vec<(String, String)>,
    /// Give up after SECONDS [default: 4].
    #[arg(short = 't', value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Do not resend the request once if the connection closes silently.
    #[arg(long)]
    no_retry: bool,
    /// The service key, e.g. system.echo.0.raw.
    key: String,
    /// The request body [default: read stdin].
    data: Option<String>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let body = match args.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| Failure::other(format!("unable to read the body from stdin: {e}")))?;
            v
        }
    };
    let mut client = client(args.run_dir, args.timeout)?;
    let mut req = with_context(Request::new(args.key, body), &args.context);
    if args.no_retry {
        req = req.no_retry();
    }
    let response = client.call_request(&req)?;
    let mut out = std::io::stdout().lock();
    // On a terminal the prompt must not run on after the body; in a pipe
    // or a file the body is exactly what the service answered.
    let newline = out.is_terminal() && !response.ends_with(b"\n");
    out.write_all(&response)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush())
        .map_err(|e| Failure::other(format!("unable to write the response to stdout: {e}")))
}
