//! `charon reload`: ask the manager to rescan its config dir (as SIGHUP
//! does) and wait for the outcome: which services started, stopped,
//! changed (their new generation took over) or could not be changed, and
//! the config errors. The reload itself is the manager's.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::stats::control;
use super::Failure;

/// Rescan the config dir and report what changed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Print the manager's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Longer than the manager's deadline for a new generation to be ready.
const WAIT: Duration = Duration::from_secs(60);

pub fn run(args: Args) -> Result<(), Failure> {
    let v = control(args.run_dir, &serde_json::json!({ "cmd": "reload" }), WAIT)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_summary(&v);
    }
    outcome(&v)
}

/// The strings of the answer's array `field`; none if it is missing.
fn strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// One line per kind of change that has keys, then one per config error.
fn print_summary(v: &Value) {
    for (label, f) in [
        ("started", "started"),
        ("stopped", "stopped"),
        ("changed", "changed"),
        ("unchanged", "unchanged"),
    ] {
        let keys = strings(v, f);
        if !keys.is_empty() {
            println!("{label}: {}", keys.join(" "));
        }
    }
    for e in strings(v, "errors") {
        println!("config error (previous config kept): {e}");
    }
}

/// Success only if every change was applied, no config file had errors
/// and charond confirmed the reload.
fn outcome(v: &Value) -> Result<(), Failure> {
    let failed: Vec<String> = v["failed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f["key"].as_str().unwrap_or("?"),
                        f["error"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let errors = strings(v, "errors").len();
    if !failed.is_empty() {
        return Err(Failure::other(format!(
            "reload could not apply {} change(s), the old config keeps running: {}",
            failed.len(),
            failed.join("; ")
        )));
    }
    if errors > 0 {
        return Err(Failure::other(format!(
            "{errors} config error(s): those services keep their previous config"
        )));
    }
    if v.get("ok") != Some(&Value::Bool(true)) {
        return Err(Failure::other("charond did not confirm the reload"));
    }
    Ok(())
}
