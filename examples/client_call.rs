//! One request to a service with `charon_client::Client::call`, and what to
//! do with each kind of answer.
//!
//! ```text
//! CHARON_ACCEPT_SOCKET=/tmp/demo/system.echo.0.raw.sock charon-echo &
//! cargo run --example client_call -- /tmp/demo system.echo.0.raw hello
//! ```
//!
//! Starting the service is left to the caller (by hand as above, or
//! `charond`).

use std::process::ExitCode;

use charon_client::{Client, ErrorKind, Request};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [run_dir, key, body] = args.as_slice() else {
        eprintln!("usage: client_call RUN_DIR KEY BODY");
        return ExitCode::from(2);
    };
    let mut client = match Client::builder().run_dir(run_dir).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client_call: {e}");
            return ExitCode::from(2);
        }
    };
    // Context entries travel beside the body; charon-echo logs this one.
    let request =
        Request::new(key.as_str(), body.as_bytes()).context("echo.log", "from client_call");
    match client.call_request(&request) {
        Ok(response) => {
            println!("{}", String::from_utf8_lossy(&response));
            ExitCode::SUCCESS
        }
        // The service looked at the request and refused it: retrying the
        // same request will not help.
        Err(e) if e.is_service_fault() => {
            eprintln!("client_call: {e}");
            ExitCode::from(1)
        }
        // Backoff: the manager says when to come back.
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable { .. }) => {
            eprintln!("client_call: {e}");
            ExitCode::from(3)
        }
        // Everything else is the framework's: not found, overloaded,
        // timeout, lost connection ... `is_retryable` says whether a later
        // attempt could succeed.
        Err(e) => {
            let later = if e.is_retryable() {
                " (worth retrying later)"
            } else {
                ""
            };
            eprintln!("client_call: {e}{later}");
            ExitCode::from(7)
        }
    }
}
