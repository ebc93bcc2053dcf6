//! `charon restart KEY`: end a service's backoff now (the operator fixed
//! the cause) and recycle its running instances gracefully, each
//! replacement started first. The manager does it; this asks.

use std::path::PathBuf;

use super::common::check_config_key;
use super::stats::{control, QUICK};
use super::Failure;

/// End a backoff and recycle a service's instances.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The service key.
    key: String,
}

pub fn run(args: Args) -> Result<(), Failure> {
    check_config_key(&args.key)?;
    let req = serde_json::json!({ "cmd": "restart", "key": args.key });
    let v = control(args.run_dir, &req, QUICK)?;
    println!(
        "{}: backoff {}, {} instance(s) being recycled",
        args.key,
        if v["backoff_ended"] == true {
            "ended"
        } else {
            "was not in effect"
        },
        v["recycled"]
    );
    Ok(())
}
