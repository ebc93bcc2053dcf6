//! Options several subcommands share (run dir, context entries, timeout)
//! and how they become a [`Client`].
//!
//! Each subcommand keeps its own arguments; this module only parses the
//! shared values.

use std::path::PathBuf;
use std::time::Duration;

use charon_client::{Client, Request};

use super::Failure;

/// Parses `-C name=value`.
pub fn parse_context(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!(
            "context entry {s:?} must be NAME=VALUE with a non-empty name"
        )),
    }
}

/// Parses a timeout in seconds (fractions allowed, greater than zero).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 4 or 0.5)"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!(
            "{s} seconds is out of range: give more than 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a pause in seconds (zero allowed).
pub fn parse_pause(s: &str) -> Result<Duration, String> {
    if s.parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(Duration::ZERO);
    }
    parse_seconds(s)
}

/// Builds the client from `--run-dir` and `-t`.
pub fn client(run_dir: Option<PathBuf>, timeout: Option<Duration>) -> Result<Client, Failure> {
    let mut b = Client::builder().name("charon");
    if let Some(dir) = run_dir {
        b = b.run_dir(dir);
    }
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| Failure::usage(e.to_string()))
}

/// Adds the `-C` entries to a request.
pub fn with_context(mut req: Request, context: &[(String, String)]) -> Request {
    for (name, value) in context {
        req = req.context(name.clone(), value.clone().into_bytes());
    }
    req
}

/// Checks a key given to a manager command (`stats`, `ps`, `restart`): a
/// key as a config file names it, so a wildcard such as `text..1.raw` is
/// valid. A key that breaks a rule is a usage error, as for `send`.
pub fn check_config_key(key: &str) -> Result<(), Failure> {
    charon_protocol::ServiceKey::parse_config(key)
        .map(drop)
        .map_err(|e| Failure::usage(format!("invalid service key {key:?}: {e}")))
}
