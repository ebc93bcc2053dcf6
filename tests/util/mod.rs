//! Test harness shared by the integration tests: unique temp dirs, the
//! built binaries, child processes that are always killed and reaped, and
//! polling for a condition until a deadline (never sleeping and hoping).
#![allow(dead_code)]

pub mod daemon;
pub mod fds;
pub mod load;
pub mod reap;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use fds::pass_fds;

/// Path of a binary of the root package, built by cargo for these tests.
pub fn bin(name: &str) -> PathBuf {
    let from_env = match name {
        "charon" => option_env!("CARGO_BIN_EXE_charon"),
        "charon-echo" => option_env!("CARGO_BIN_EXE_charon-echo"),
        "charond" => option_env!("CARGO_BIN_EXE_charond"),
        _ => None,
    };
    if let Some(p) = from_env {
        return PathBuf::from(p);
    }
    // Fallback: beside the test executable's parent (target/debug/).
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

/// A service config running `charon-echo`, with `extra` lines (TOML)
/// after its `exec`.
pub fn echo_config(extra: &str) -> String {
    format!("exec = \"{}\"\n{extra}\n", bin("charon-echo").display())
}

/// A unique temp dir, removed on drop. Paths are kept short because Unix
/// socket paths are limited to 107 bytes.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("ch")
            .tempdir_in("/tmp")
            .expect("temp dir");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A subdirectory, created.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }
}

/// A child process in its own process group. Dropping it SIGKILLs the whole
/// group and reaps the child, so a failing test leaves no orphan.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
}

impl Proc {
    /// Spawns `cmd` in a new process group, stdin from /dev/null.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if cmd.get_program() != OsStr::new("") {
            // Keep stdin closed unless the test set it.
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends a signal to the process (not its group).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Exit status if it has exited (reaps it), else None.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for exit until `timeout`, panicking past it.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_for(timeout, &format!("{} to exit", self.name), || {
            status = self.try_wait();
            status.is_some()
        });
        status.expect("status")
    }

    /// Takes the child out (the caller must reap it).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(-(c.id() as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` every few milliseconds until it holds; panics with `what`
/// once `timeout` has passed.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs a command to completion with a deadline, returning (status, stdout,
/// stderr). The command runs in its own process group, killed on timeout.
pub fn run(mut cmd: Command, timeout: Duration) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    use std::io::Read;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = Proc::spawn("command", cmd);
    let mut out = p.child_mut().stdout.take().expect("stdout");
    let mut err = p.child_mut().stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = p.wait_timeout(timeout);
    (
        status,
        t_out.join().expect("join"),
        t_err.join().expect("join"),
    )
}

/// A TCP port free on 127.0.0.1 a moment ago (for a listener the test
/// cannot ask to bind port 0, such as charond's `--metrics-listen`).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:port: the whole response, head
/// included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}
