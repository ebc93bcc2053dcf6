//! `charon-echo`: the standard echo service, `system.echo.0.raw`.
//!
//! It answers every request with its body, unchanged. Context entries named
//! `echo.*` make it misbehave on purpose, for tests and diagnosis:
//!
//! | entry | effect |
//! |-------|--------|
//! | `echo.log=TEXT` | write one line `charon-echo: TEXT` to stderr, then go on |
//! | `echo.sleep-ms=N` | sleep N ms (at most 3600000) first |
//! | `echo.die-once=PATH` | if PATH does not exist, create it and exit 0 without answering; otherwise go on |
//! | `echo.exit=N` | exit with status N (0-255) without answering |
//! | `echo.signal=N` | raise signal N (a standard signal number), then go on if still alive |
//! | `echo.fork-panic=TEXT` | fork a child that panics with TEXT (a bug in a worker the service forked), wait for it, then go on |
//! | `echo.panic=TEXT` | panic with TEXT (a Rust service's bug: the process exits 101) |
//! | `echo.fault=CODE:TEXT` | answer with fault CODE (1 and up) and TEXT instead of the body |
//! | `echo.close-stdio=N` | close fd N (0, 1 or 2: stdin, stdout or stderr) first, then go on (before `echo.log`) |
//!
//! They act in that order. All values are checked before any acts: a bad
//! one (or an unknown `echo.` name) is answered with fault 5, bad context,
//! naming what would be valid.
//!
//! `--thread` starts an idle thread before serving: a program a template
//! (`template = true`) refuses to fork, for tests.
//!
//! It runs in any of the service library's three modes (managed by
//! `charond`, accept mode with `CHARON_ACCEPT_SOCKET=PATH`, or standalone
//! with `charon-echo 3<request 4>response`). Exit status: 0 when told to
//! stop; 2 if it cannot start (one line on stderr says why); 1 if serving
//! fails; otherwise what `echo.exit` asked for.
//!
//! `unsafe` lives in `sys.rs` alone (resetting a signal to its default,
//! forking).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod sys;

use std::time::Duration;

use charon_service::{fault, Request, Service};
use nix::sys::signal::Signal;

const USAGE: &str = "\
usage: charon-echo [--help | --thread]

The standard echo service (system.echo.0.raw): answers each request with
its body. Run it under charond, or by hand:

  CHARON_ACCEPT_SOCKET=/tmp/echo.sock charon-echo   (accept mode)
  charon-echo 3<request 4>response                  (standalone: one request)

Context controls (in the order they act; a bad value gives fault 5):
  echo.log=TEXT          write one line to stderr, then echo
  echo.sleep-ms=N        sleep N milliseconds first (N <= 3600000)
  echo.die-once=PATH     if PATH does not exist: create it, exit 0 unanswered
  echo.exit=N            exit with status N (0-255) without answering
  echo.signal=N          raise signal N (a standard signal, e.g. 11)
  echo.fork-panic=TEXT   fork a child that panics with TEXT, wait, go on
  echo.panic=TEXT        panic with TEXT (the process exits 101)
  echo.fault=CODE:TEXT   answer with fault CODE (>= 1) and TEXT
  echo.close-stdio=N     close fd N (0, 1 or 2) first, then go on

--thread starts an idle thread before serving: a program that runs
threads, which a template (template = true) refuses to fork.

Exit status: 0 when told to stop (SIGTERM), 1 if serving fails,
2 if it cannot start, or the status echo.exit asked for.
";

/// Most an `echo.sleep-ms` may ask for: an hour.
const MAX_SLEEP_MS: u64 = 3_600_000;

/// What a request's `echo.*` entries ask for, checked before any acts.
#[derive(Debug, Default)]
struct Controls<'a> {
    log: Option<&'a str>,
    sleep_ms: Option<u64>,
    die_once: Option<&'a str>,
    exit: Option<i32>,
    signal: Option<Signal>,
    fork_panic: Option<&'a str>,
    panic: Option<&'a str>,
    fault: Option<(u32, &'a str)>,
    close_stdio: Option<i32>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return;
        }
        Some("--thread") => {
            std::thread::spawn(|| loop {
                std::thread::park();
            });
        }
        Some(other) => {
            eprintln!(
                "charon-echo: unknown argument {other:?}; the options are --help and --thread"
            );
            std::process::exit(2);
        }
    }
    let mut svc = match Service::init("system.echo.0.raw") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("charon-echo: cannot start: {e}");
            std::process::exit(2);
        }
    };
    loop {
        let req = match svc.next_request() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                eprintln!("charon-echo: {e}");
                std::process::exit(1);
            }
        };
        if let Err(e) = serve(req) {
            // The client already got a framework error; keep serving.
            eprintln!("charon-echo: {e}");
        }
    }
}

fn serve(req: Request<'_>) -> Result<(), charon_service::Error> {
    let c = match parse_controls(&req) {
        Ok(c) => c,
        Err(text) => return req.fault(fault::BAD_CONTEXT, &text),
    };
    if let Some(fd) = c.close_stdio {
        let _ = nix::unistd::close(fd);
    }
    if let Some(line) = c.log {
        // As a service usually logs: eprintln! panics if the write fails.
        eprintln!("charon-echo: {line}");
    }
    if let Some(ms) = c.sleep_ms {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(path) = c.die_once {
        if let Err(text) = die_once(path) {
            return req.fault(fault::INTERNAL, &text);
        }
    }
    if let Some(status) = c.exit {
        std::process::exit(status);
    }
    if let Some(sig) = c.signal {
        raise(sig);
    }
    if let Some(text) = c.fork_panic {
        match sys::fork_and_wait() {
            Ok(true) => panic!("echo.fork-panic: {text}"),
            Ok(false) => {}
            Err(e) => return req.fault(fault::INTERNAL, &format!("echo.fork-panic: {e}")),
        }
    }
    if let Some(text) = c.panic {
        panic!("echo.panic: {text}");
    }
    if let Some((code, text)) = c.fault {
        return req.fault(code, text);
    }
    let body = req.body();
    req.respond(body)
}

/// `echo.die-once`: exits 0 if this call creates the file at `path`;
/// goes on if it exists (an earlier call died).
fn die_once(path: &str) -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => std::process::exit(0),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("echo.die-once cannot create {path:?}: {e}")),
    }
}

/// `echo.signal`: raises `sig`. A signal that does not kill (SIGTERM is
/// caught by the library and means "stop after this request") lets the
/// echo go on.
fn raise(sig: Signal) {
    if matches!(sig, Signal::SIGSEGV | Signal::SIGBUS) {
        // Rust's runtime catches these two to report stack overflows and
        // ignores a raised one (no faulting address), so the crash this
        // control exists to simulate would not happen.
        sys::default_disposition(sig);
    }
    let _ = nix::sys::signal::raise(sig);
}

fn parse_controls<'a>(req: &Request<'a>) -> Result<Controls<'a>, String> {
    let mut c = Controls::default();
    for (name, value) in req.context_entries() {
        let Some(control) = name.strip_prefix("echo.") else {
            continue;
        };
        let value = std::str::from_utf8(value).map_err(|_| format!("{name} must be UTF-8 text"))?;
        match control {
            "log" => c.log = Some(value),
            "sleep-ms" => c.sleep_ms = Some(number(name, value, 0, MAX_SLEEP_MS)?),
            "die-once" if !value.is_empty() => c.die_once = Some(value),
            "die-once" => return Err(format!("{name} must be a file path, not empty")),
            "exit" => c.exit = Some(number(name, value, 0, 255)? as i32),
            "signal" => {
                let n = number(name, value, 1, 64)? as i32;
                let sig = Signal::try_from(n)
                    .map_err(|_| format!("{name}={n} is not a signal this system can raise"))?;
                c.signal = Some(sig);
            }
            "panic" => c.panic = Some(value),
            "fork-panic" => c.fork_panic = Some(value),
            "close-stdio" => c.close_stdio = Some(number(name, value, 0, 2)? as i32),
            "fault" => {
                let (code, text) = value.split_once(':').ok_or_else(|| {
                    format!("{name} must be CODE:TEXT (e.g. 100:out of stock), not {value:?}")
                })?;
                c.fault = Some((number(name, code, 1, u64::from(u32::MAX))? as u32, text));
            }
            _ => {
                return Err(format!(
                    "unknown control {name:?}; valid: echo.log, echo.sleep-ms, echo.die-once, \
                     echo.exit, echo.signal, echo.fork-panic, echo.panic, echo.fault, \
                     echo.close-stdio"
                ))
            }
        }
    }
    Ok(c)
}

fn number(name: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be a whole number from {min} to {max}, not {value:?}"
        )),
    }
}
