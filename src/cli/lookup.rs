//! `charon lookup`: the socket path each key resolves to in the run dir,
//! wildcard applied, as a client would connect.
//!
//! It only looks at the file system; whether anyone listens is left to
//! `charon send` and `charon ping`.

use std::path::PathBuf;

use charon_client::{default_run_dir, resolve};
use charon_protocol::ServiceKey;

use super::{status, Failure};

/// Print the socket path each key resolves to.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir holding the services' sockets [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Service keys to look up.
    #[arg(required = true)]
    keys: Vec<String>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let run_dir = args.run_dir.unwrap_or_else(default_run_dir);
    let mut keys = Vec::with_capacity(args.keys.len());
    for text in &args.keys {
        let key = ServiceKey::parse(text)
            .map_err(|e| Failure::usage(format!("invalid service key {text:?}: {e}")))?;
        keys.push(key);
    }
    let mut missing = Vec::new();
    for key in &keys {
        match resolve(&run_dir, key) {
            Some(path) => println!("{}", path.display()),
            None => missing.push(key.as_str()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        status::NOT_FOUND,
        format!(
            "no socket for {} (nor its wildcard) in {}",
            missing.join(", "),
            run_dir.display()
        ),
    ))
}
