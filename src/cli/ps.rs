//! `charon ps`: one line per instance the manager runs (pid, key,
//! generation, state, requests served, age, age of the request in hand),
//! read over the control socket. The manager knows; this only formats.

use std::path::PathBuf;

use serde_json::Value;

use super::common::check_config_key;
use super::stats::{align, control, QUICK};
use super::Failure;

/// List the running instances.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Print the manager's JSON answer (one object with an `instances` array).
    #[arg(long)]
    json: bool,
    /// Only this service's instances.
    key: Option<String>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let mut req = serde_json::json!({ "cmd": "ps" });
    if let Some(k) = &args.key {
        check_config_key(k)?;
        req["key"] = Value::String(k.clone());
    }
    let v = control(args.run_dir, &req, QUICK)?;
    if args.json {
        let out = serde_json::json!({ "instances": v["instances"] });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    print!("{}", align(&table(&v)));
    print_broken(&v);
    Ok(())
}

/// The header and one row per instance in the answer.
fn table(v: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![["PID", "KEY", "GEN", "STATE", "REQUESTS", "AGE", "IN HAND"]
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()];
    let empty = Vec::new();
    for i in v["instances"].as_array().unwrap_or(&empty) {
        let cell = |f: &str| match &i[f] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            x => x.to_string(),
        };
        let in_hand = match i["request_age_ms"].as_u64() {
            Some(ms) => format!("{:.3}s", ms as f64 / 1000.0),
            None => "-".into(),
        };
        rows.push(vec![
            cell("pid"),
            cell("key"),
            cell("generation"),
            cell("state"),
            cell("requests"),
            format!("{}s", cell("age_s")),
            in_hand,
        ]);
    }
    rows
}

/// Keys that run nothing because their config file is broken, each with
/// its file's errors.
fn print_broken(v: &Value) {
    let empty = Vec::new();
    for b in v["broken"].as_array().unwrap_or(&empty) {
        println!(
            "{}: broken, not running: config file {} has errors:",
            b["key"].as_str().unwrap_or("-"),
            b["config_file"].as_str().unwrap_or("-")
        );
        for e in b["config_errors"].as_array().unwrap_or(&empty) {
            println!("  {}", e.as_str().unwrap_or_default());
        }
    }
}
