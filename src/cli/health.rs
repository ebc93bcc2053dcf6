//! `charon health`: for probes (a container's HEALTHCHECK, a Kubernetes
//! readiness probe). Asks the manager `{"cmd":"health"}` on its control
//! socket; exits 0 when every configured service is ready or on demand,
//! else non-zero with one line naming each service in trouble and each
//! config file that failed to load. With `--live` (liveness probes) only
//! charond's answer counts. The verdicts are the manager's
//! (`health.rs` there); this module only asks and words the line.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::common::parse_seconds;
use super::stats::control;
use super::{status, Failure};

/// How long to wait for the manager by default: a probe has its own
/// timeout too, and a manager this slow is not healthy.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit 0 if charond answers and every service can take requests.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Give up waiting for charond after SECONDS [default: 5].
    #[arg(short = 't', value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Print the manager's JSON answer as well (on stdout).
    #[arg(long)]
    json: bool,
    /// Only check that charond answers, whatever its services' health (for
    /// liveness probes: a service in backoff is no reason to restart
    /// charond).
    #[arg(long)]
    live: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let req = serde_json::json!({ "cmd": "health" });
    let mut v = control(args.run_dir, &req, args.timeout.unwrap_or(DEFAULT_TIMEOUT))?;
    if let Value::Object(m) = &mut v {
        m.remove("ok");
    }
    if args.json {
        println!("{v}");
    }
    if args.live {
        if !args.json {
            println!("charond answers");
        }
        return Ok(());
    }
    match verdict(&v) {
        Ok(line) => {
            if !args.json {
                println!("{line}");
            }
            Ok(())
        }
        Err(line) => Err(Failure::new(status::UNAVAILABLE, line)),
    }
}

/// The one line for the manager's answer: `Ok` when healthy.
fn verdict(v: &Value) -> Result<String, String> {
    let services = v["services"].as_array().map_or(&[][..], Vec::as_slice);
    let broken = v["broken"].as_array().map_or(&[][..], Vec::as_slice);
    let mut problems: Vec<String> = services
        .iter()
        .filter(|s| !matches!(s["health"].as_str(), Some("ready" | "on_demand")))
        .map(|s| {
            format!(
                "{}: {}",
                s["key"].as_str().unwrap_or("?"),
                s["detail"]
                    .as_str()
                    .or_else(|| s["health"].as_str())
                    .unwrap_or("unhealthy")
            )
        })
        .collect();
    problems.extend(broken.iter().map(|b| {
        let more = b["errors"].as_u64().unwrap_or(1).saturating_sub(1);
        let what = if b["key"].is_string() {
            "config file failed to load"
        } else {
            "file in the config dir failed to load"
        };
        let mut p = format!("{what}: {}", b["error"].as_str().unwrap_or("?"));
        if more > 0 {
            p.push_str(&format!(" (and {more} more error(s))"));
        }
        p
    }));
    if v["stopping"] == true {
        problems.insert(0, "charond is stopping".into());
    }
    if v["healthy"] == true && problems.is_empty() {
        let ready = services.iter().filter(|s| s["health"] == "ready").count();
        return Ok(format!(
            "healthy: {} service(s), {ready} ready, {} on demand",
            services.len(),
            services.len() - ready
        ));
    }
    if problems.is_empty() {
        problems.push(format!("charond says unhealthy: {v}"));
    }
    Err(format!("unhealthy: {}", problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn healthy_counts_ready_and_on_demand() {
        let v = json!({"healthy": true, "stopping": false, "broken": [], "services": [
            {"key": "a.b.0.raw", "health": "ready", "detail": null},
            {"key": "a.c.0.raw", "health": "on_demand", "detail": null},
        ]});
        assert_eq!(
            verdict(&v).unwrap(),
            "healthy: 2 service(s), 1 ready, 1 on demand"
        );
    }

    #[test]
    fn each_problem_is_named_on_one_line() {
        let v = json!({"healthy": false, "stopping": false,
            "services": [
                {"key": "a.b.0.raw", "health": "ready", "detail": null},
                {"key": "a.bad.0.raw", "health": "backoff", "detail": "in backoff for 9.5s more: exit 3"},
            ],
            "broken": [{"file": "/c/a.x.0.raw.toml", "key": "a.x.0.raw",
                        "error": "/c/a.x.0.raw.toml:2: exec: missing", "errors": 3}],
        });
        let line = verdict(&v).unwrap_err();
        assert_eq!(
            line,
            "unhealthy: a.bad.0.raw: in backoff for 9.5s more: exit 3; config file failed to load: \
             /c/a.x.0.raw.toml:2: exec: missing (and 2 more error(s))"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn stopping_and_unexplained_verdicts_are_unhealthy() {
        let v = json!({"healthy": false, "stopping": true, "services": [], "broken": []});
        assert_eq!(verdict(&v).unwrap_err(), "unhealthy: charond is stopping");
        let v = json!({"healthy": false, "stopping": false, "services": [], "broken": []});
        assert!(verdict(&v)
            .unwrap_err()
            .starts_with("unhealthy: charond says unhealthy"));
    }
}
