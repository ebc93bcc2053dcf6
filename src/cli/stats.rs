//! `charon stats`: the manager's per-service figures, read over its control
//! socket (`<run-dir>/charond.sock`), as an aligned table, as JSON (the
//! manager's answer, field names unchanged), or as Prometheus text. Also
//! home of the small control-socket client the other manager subcommands
//! (`ps`, `reload`, `restart`) share. The figures are the manager's; this
//! module only asks and formats.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use charon_client::default_run_dir;
use serde_json::Value;

use super::common::check_config_key;
use super::{status, Failure};

/// Show each service's figures.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Print the manager's JSON answer (one object with a `services` array).
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print Prometheus text exposition format.
    #[arg(long)]
    prometheus: bool,
    /// Only this service.
    key: Option<String>,
}

/// Sends one request line to the manager and returns its answer, or a
/// failure with the manager's error message. `timeout` bounds the whole
/// exchange.
pub fn control(
    run_dir: Option<PathBuf>,
    request: &Value,
    timeout: Duration,
) -> Result<Value, Failure> {
    let run_dir = run_dir.unwrap_or_else(default_run_dir);
    let path = run_dir.join(charon_manager::control::SOCKET_NAME);
    let stream = connect(&path, &run_dir)?;
    let answer = exchange(&stream, &path, request, timeout)?;
    parse_answer(&answer)
}

/// Writes `request` as one line on `stream` and reads the one-line answer
/// within `timeout` for each.
fn exchange(
    mut stream: &UnixStream,
    path: &Path,
    request: &Value,
    timeout: Duration,
) -> Result<String, Failure> {
    let io = |e: std::io::Error| talk_failure(path, e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = request.to_string();
    line.push('\n');
    // charond may refuse the connection (too many) and close it before our
    // request is written: its one-line answer is still there to read, and
    // it says more than `Broken pipe`.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| read_failure(e, &sent, path, timeout))?;
    if answer.is_empty() {
        return Err(match sent {
            Err(w) => io(w),
            Ok(()) => Failure::other(format!(
                "charond at {} closed the connection without an answer",
                path.display()
            )),
        });
    }
    Ok(answer)
}

/// Unable to talk to charond at `path`.
fn talk_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::other(format!(
        "unable to talk to charond at {}: {e}",
        path.display()
    ))
}

/// Why the answer could not be read: the request's write failing comes
/// first, then a timeout, then the read's own error.
fn read_failure(
    e: std::io::Error,
    sent: &std::io::Result<()>,
    path: &Path,
    timeout: Duration,
) -> Failure {
    if let Err(w) = sent {
        return talk_failure(path, std::io::Error::new(w.kind(), w.to_string()));
    }
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        Failure::new(
            status::TIMEOUT,
            format!(
                "charond at {} did not answer within {}s",
                path.display(),
                timeout.as_secs()
            ),
        )
    } else {
        talk_failure(path, e)
    }
}

/// The manager's answer line as JSON, or its error as a failure (not
/// found for an unknown service).
fn parse_answer(answer: &str) -> Result<Value, Failure> {
    let v: Value = serde_json::from_str(answer).map_err(|e| {
        Failure::other(format!(
            "charond sent an answer that is not JSON ({e}): {:?}",
            answer.trim_end()
        ))
    })?;
    if v["ok"] == Value::Bool(false) && v.get("error").is_some() {
        let msg = v["error"].as_str().unwrap_or("unknown error").to_string();
        let st = if msg.starts_with("no service") {
            status::NOT_FOUND
        } else {
            status::OTHER
        };
        return Err(Failure::new(st, format!("charond: {msg}")));
    }
    Ok(v)
}

fn connect(path: &Path, run_dir: &Path) -> Result<UnixStream, Failure> {
    UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                format!("no charond is running on run dir {} (no control socket {}); start charond or give --run-dir", run_dir.display(), path.display())
            }
            std::io::ErrorKind::PermissionDenied => format!(
                "unable to connect to {}: permission denied (the control socket is owner-only: run as charond's user)",
                path.display()
            ),
            _ => format!("unable to connect to {}: {e}", path.display()),
        };
        Failure::other(why)
    })
}

/// How long the read-only commands wait for the manager.
pub const QUICK: Duration = Duration::from_secs(10);

pub fn run(args: Args) -> Result<(), Failure> {
    let mut req = serde_json::json!({ "cmd": "stats" });
    if let Some(k) = &args.key {
        check_config_key(k)?;
        req["key"] = Value::String(k.clone());
    }
    let v = control(args.run_dir, &req, QUICK)?;
    if args.json {
        // Without the transport's "ok": exactly the documented object.
        let out = serde_json::json!({ "manager": v["manager"], "services": v["services"] });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if args.prometheus {
        print!("{}", charon_manager::metrics::prometheus(&v));
    } else {
        print!("{}", table(&v));
    }
    Ok(())
}

fn n(v: &Value) -> String {
    match v {
        Value::Number(x) => x.to_string(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Aligns rows of cells under a header; the last column is left free.
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The table's header line.
const HEADER: [&str; 18] = [
    "KEY",
    "STATE",
    "INST",
    "BUSY",
    "IDLE",
    "MAX",
    "REQUESTS",
    "FAULTS",
    "RETRIED",
    "QUEUE",
    "P50us",
    "P99us",
    "MAXus",
    "LAUNCHES",
    "BACKOFFS",
    "FASTFAIL",
    "EXITS",
    "LAST EXIT",
];

/// The table a person reads at a glance: one line per service.
pub fn table(v: &Value) -> String {
    let mut rows = vec![HEADER.iter().map(ToString::to_string).collect::<Vec<_>>()];
    let empty = Vec::new();
    let services = v["services"].as_array().unwrap_or(&empty);
    rows.extend(services.iter().map(row));
    let mut out = align(&rows);
    for s in services {
        if let Some(p) = s["manager_problem"].as_str() {
            out.push_str(&format!("{}: {p}\n", s["key"].as_str().unwrap_or("-")));
        }
    }
    let m = &v["manager"];
    if !m["fds_open"].is_null() {
        out.push_str(&format!(
            "charond (pid {}): {} fds open of {} ({} free)\n",
            n(&m["pid"]),
            n(&m["fds_open"]),
            n(&m["fds_limit"]),
            n(&m["fds_free"])
        ));
    }
    out
}

/// One service's line of the table, in [`HEADER`]'s order.
fn row(s: &Value) -> Vec<String> {
    let state = match s["state"].as_str() {
        Some("backoff") => format!("backoff({}s)", n(&s["backoff_remaining_s"])),
        Some(x) => x.to_string(),
        None => "-".into(),
    };
    vec![
        s["key"].as_str().unwrap_or("-").to_string(),
        state,
        n(&s["instances"]["running"]),
        n(&s["instances"]["busy"]),
        n(&s["instances"]["idle"]),
        n(&s["instances"]["max"]),
        n(&s["requests"]),
        n(&s["faults"]),
        n(&s["retried"]),
        n(&s["queue_depth"]),
        n(&s["latency_us"]["p50"]),
        n(&s["latency_us"]["p99"]),
        n(&s["latency_us"]["max"]),
        n(&s["launches"]),
        n(&s["backoffs"]),
        n(&s["fast_failed"]),
        exits_cell(s),
        last_exit_cell(s),
    ]
}

/// The exit classes seen, as `class=count` (those with a count), or `-`.
fn exits_cell(s: &Value) -> String {
    let exits: Vec<String> = s["exits"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, c)| c.as_u64().is_some_and(|c| c > 0))
                .map(|(k, c)| format!("{k}={c}"))
                .collect()
        })
        .unwrap_or_default();
    if exits.is_empty() {
        "-".into()
    } else {
        exits.join(",")
    }
}

/// The last exit with its stderr line, or for a broken config file its
/// first error (which says why nothing runs), or `-`.
fn last_exit_cell(s: &Value) -> String {
    match &s["last_exit"] {
        Value::Object(e) => {
            let mut t = format!(
                "pid {} {}",
                n(&e["pid"]),
                e["description"].as_str().unwrap_or("")
            );
            if let Some(l) = e["stderr"].as_str().filter(|l| !l.is_empty()) {
                let short: String = l.chars().take(200).collect();
                t.push_str(&format!(": {short}"));
            }
            t
        }
        _ => match s["config_errors"].as_array().and_then(|e| e.first()) {
            Some(Value::String(e)) => format!("config error: {e}"),
            _ => "-".into(),
        },
    }
}
