//! Many requests at once with a `charon_client::Batch`: every request to
//! every service progresses in parallel in this one thread, under one
//! timeout clock, and results are taken as they complete.
//!
//! ```text
//! CHARON_ACCEPT_SOCKET=/tmp/demo/system.echo.0.raw.sock charon-echo &
//! cargo run --example client_batch -- /tmp/demo system.echo.0.raw 16
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use charon_client::{Client, Request};

fn main() -> ExitCode {
    let Some((run_dir, key, count)) = args() else {
        return ExitCode::from(2);
    };
    let mut client = match Client::builder().run_dir(&run_dir).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client_batch: {e}");
            return ExitCode::from(2);
        }
    };
    let mut batch = client.batch();
    // One clock for the whole batch.
    batch.set_timeout(Duration::from_secs(10));
    let started = Instant::now();
    for i in 0..count {
        // Each echo sleeps 50 ms: one after the other they would take
        // count * 50 ms; with several instances they overlap.
        let req = Request::new(key.as_str(), format!("request {i}")).context("echo.sleep-ms", "50");
        if let Err(e) = batch.add(req) {
            eprintln!("client_batch: {e}");
            return ExitCode::from(2);
        }
    }
    let mut failures = 0;
    while let Some(id) = batch.wait_any() {
        match batch.take(id) {
            Some(Ok(body)) => println!(
                "{:>4} ms  {}",
                started.elapsed().as_millis(),
                String::from_utf8_lossy(&body)
            ),
            Some(Err(e)) => {
                failures += 1;
                eprintln!("request {}: {e}", id.index());
            }
            None => {}
        }
    }
    println!(
        "{count} requests in {} ms, {failures} failed",
        started.elapsed().as_millis()
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// RUN_DIR, KEY and COUNT from the command line; `None` once the problem
/// is said.
fn args() -> Option<(String, String, u32)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [run_dir, key, count] = args.as_slice() else {
        eprintln!("usage: client_batch RUN_DIR KEY COUNT");
        return None;
    };
    let Ok(count) = count.parse::<u32>() else {
        eprintln!("client_batch: COUNT must be a number, not {count:?}");
        return None;
    };
    Some((run_dir.clone(), key.clone(), count))
}
