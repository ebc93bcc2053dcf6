//! `charon test`: run a service program standalone on one request, the way
//! the service library's standalone mode expects it: the request frame on
//! fd 3, the response frame written to fd 4.
//!
//! The fds are arranged by `sh` (`exec PROGRAM 3<req 4>resp`), which keeps
//! this binary free of `unsafe` pre-exec code. Turning the response into an
//! exit status is left to `cli/mod.rs`.

use std::fs::{DirBuilder, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use charon_protocol::{
    decode_response, encode_request, managed, Attributes, Fill, FrameBuf, FrameKind, Limits,
    RequestHead, Response,
};

use super::common::{parse_context, parse_seconds};
use super::{status, Failure};

/// Run a service program standalone on one request (fds 3 and 4).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A context entry sent beside the body (repeatable).
    #[arg(short = 'C', value_name = "NAME=VALUE", value_parser = parse_context)]
    context: Vec<(String, String)>,
    /// The service key the request names.
    #[arg(short = 'K', value_name = "KEY", default_value = "system.echo.0.raw")]
    key: String,
    /// Read the request body from FILE [default: stdin].
    #[arg(short = 'i', value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write the response body to FILE [default: stdout].
    #[arg(short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Kill the program if it runs longer than SECONDS.
    #[arg(short = 't', value_name = "SECONDS", value_parser = parse_seconds, default_value = "30")]
    timeout: Duration,
    /// The service program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    program: Vec<String>,
}

/// A private temp dir for the request and response files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("charon-test.{}.{nanos}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Failure::other(format!("unable to create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let body = read_body(args.input.as_deref())?;
    let limits = Limits::default();
    let mut frame = Vec::new();
    let head = RequestHead {
        key: &args.key,
        client: "charon-test",
        attempt: 1,
        attributes: Attributes::NONE,
    };
    let reserved = args.context.iter().find(|(n, _)| n.starts_with("charon."));
    if let Some((name, _)) = reserved {
        return Err(Failure::usage(format!(
            "context name {name:?} is reserved: names starting with \"charon.\" belong to the framework"
        )));
    }
    encode_request(&head, &args.context, &body, &limits, &mut frame)
        .map_err(|e| Failure::usage(format!("request refused before running the program: {e}")))?;

    let scratch = Scratch::new()?;
    let req_path = scratch.0.join("request");
    let resp_path = scratch.0.join("response");
    std::fs::write(&req_path, &frame)
        .map_err(|e| Failure::other(format!("unable to write {}: {e}", req_path.display())))?;
    File::create(&resp_path)
        .map_err(|e| Failure::other(format!("unable to create {}: {e}", resp_path.display())))?;

    let program = &args.program[0];
    let exit = run_program(&args.program, &req_path, &resp_path, args.timeout)?;
    let how = describe(exit);
    if !exit.success() {
        // Worth knowing even when a response came: exit 0 is the only
        // status a managed instance is replaced after without a backoff.
        eprintln!("charon: program {program} {how}");
    }

    if exit.code() == Some(126) || exit.code() == Some(127) {
        // sh's own statuses for a program it could not execute.
        return Err(Failure::other(format!(
            "unable to run {program}: not found or not executable (give a path to a service program)"
        )));
    }
    let wire = std::fs::read(&resp_path)
        .map_err(|e| Failure::other(format!("unable to read {}: {e}", resp_path.display())))?;
    let response_body = answer(&wire, &limits, program, &how)?;
    write_body(args.output.as_deref(), &response_body)
}

fn read_body(input: Option<&Path>) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let read = match input {
        Some(path) => File::open(path).and_then(|mut f| f.read_to_end(&mut body)),
        None => std::io::stdin().read_to_end(&mut body),
    };
    read.map_err(|e| {
        let from = input.map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
        Failure::other(format!("unable to read the request body from {from}: {e}"))
    })?;
    Ok(body)
}

/// Runs PROGRAM with the request on fd 3 and the response file on fd 4; its
/// stdout goes to our stderr so that our stdout carries only the response.
fn run_program(
    program: &[String],
    req: &Path,
    resp: &Path,
    timeout: Duration,
) -> Result<ExitStatus, Failure> {
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Failure::other(format!("unable to duplicate stderr: {e}")))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"req=$1 resp=$2; shift 2; exec "$@" 3<"$req" 4>"$resp""#)
        .arg("charon-test")
        .arg(req)
        .arg(resp)
        .args(program)
        // Standalone mode is the one without these.
        .env_remove(managed::ENV_ACCEPT_SOCKET)
        .env_remove(managed::ENV_SLOT)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout));
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::other(format!("unable to start /bin/sh for {}: {e}", program[0])))?;
    wait_with_deadline(&mut child, timeout, &program[0])
}

fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
    program: &str,
) -> Result<ExitStatus, Failure> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(Failure::other(format!("unable to wait for {program}: {e}"))),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::new(
                status::TIMEOUT,
                format!(
                    "program {program} did not finish within {} ms and was killed",
                    timeout.as_millis()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended in an unknown way".to_string(),
    }
}

/// The response body, or the failure the response (or its absence) means.
fn answer(wire: &[u8], limits: &Limits, program: &str, how: &str) -> Result<Vec<u8>, Failure> {
    if wire.is_empty() {
        return Err(Failure::new(
            status::LOST,
            format!("program {program} wrote no response on fd 4 ({how})"),
        ));
    }
    let mut fb = FrameBuf::new(FrameKind::Response, limits.max_response_payload());
    let bad = |e: String| Failure::other(format!("program {program} wrote a bad response: {e}"));
    match fb.read_from(&mut &wire[..]) {
        Ok(Fill::Complete) => {}
        Ok(_) => {
            return Err(Failure::new(
                status::LOST,
                format!(
                    "program {program} wrote {} bytes, not a whole response frame ({how})",
                    wire.len()
                ),
            ))
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    if fb.surplus() > 0 {
        return Err(bad(format!(
            "{} bytes follow the response frame",
            fb.surplus()
        )));
    }
    match decode_response(fb.payload(), limits).map_err(|e| bad(e.to_string()))? {
        Response::Ok(body) => Ok(body.to_vec()),
        Response::Fault { code, text } => {
            Err(Failure::new(status::FAULT, format!("fault {code}: {text}")))
        }
        Response::Unavailable {
            retry_after,
            reason,
        } => Err(Failure::new(
            status::UNAVAILABLE,
            format!("unavailable (retry after {retry_after} s): {reason}"),
        )),
        Response::Error { code, text } => {
            Err(Failure::other(format!("framework error {code}: {text}")))
        }
    }
}

fn write_body(output: Option<&Path>, body: &[u8]) -> Result<(), Failure> {
    let written = match output {
        Some(path) => std::fs::write(path, body),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(body).and_then(|()| out.flush())
        }
    };
    written.map_err(|e| {
        let to = output.map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
        Failure::other(format!("unable to write the response to {to}: {e}"))
    })
}
