//! A charond for the bench: config files written into a temp dir, its log
//! sent to a file there, and on drop charond and every instance it started
//! (found by the `CHARON_RUN_DIR` in their environment) killed, waited for
//! until gone, and the dir removed. What to configure and measure is left
//! to the callers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use charon_client::Client;

// The test harness's: finding and killing what a charond started.
#[path = "../../tests/util/reap.rs"]
pub(crate) mod reap;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running charond.
pub struct Daemon {
    child: Option<Child>,
    pub run: PathBuf,
    pub conf: PathBuf,
    log: PathBuf,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

/// Names another echo program to run under charond, to compare two builds
/// of the service library in the same conditions.
pub const ECHO_ENV: &str = "CHARON_BENCH_ECHO";

/// The config file of an echo service with `extra` lines.
pub fn echo_conf(extra: &str) -> String {
    let echo =
        std::env::var(ECHO_ENV).unwrap_or_else(|_| env!("CARGO_BIN_EXE_charon-echo").to_string());
    format!("exec = \"{echo}\"\n{extra}\n")
}

impl Daemon {
    /// Writes `<key>.toml` for each service and starts charond; returns
    /// once it logged that it started.
    pub fn start(services: &[(String, String)]) -> Result<Daemon, String> {
        let dir = tempfile::Builder::new()
            .prefix("chb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).map_err(|e| format!("mkdir conf: {e}"))?;
        for (key, toml) in services {
            std::fs::write(conf.join(format!("{key}.toml")), toml)
                .map_err(|e| format!("write {key}.toml: {e}"))?;
        }
        let run = dir.path().join("run");
        let log = dir.path().join("charond.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_charond"))
            .arg("--config-dir")
            .arg(&conf)
            .arg("--run-dir")
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn charond: {e}"))?;
        let d = Daemon {
            child: Some(child),
            run,
            conf,
            log,
            started,
            _dir: dir,
        };
        d.wait_log(Duration::from_secs(30), |l| {
            l.contains("charond 0.1.0 started")
        })?;
        Ok(d)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `cond` holds or `timeout` passes.
    pub fn wait_log(&self, timeout: Duration, cond: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.log();
            if cond(&l) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail: Vec<&str> = l.lines().rev().take(10).collect();
                return Err(format!(
                    "charond log condition not met within {timeout:?}; last lines: {tail:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The socket of service `key` (a concrete key), named as charond
    /// names it.
    pub fn socket(&self, key: &str) -> PathBuf {
        let key = charon_protocol::ServiceKey::parse(key)
            .unwrap_or_else(|e| unreachable!("the bench's keys are valid: {e}"));
        self.run.join(key.socket_file_name())
    }

    pub fn client(&self) -> Client {
        Client::builder()
            .run_dir(&self.run)
            .timeout(Duration::from_secs(20))
            .name("bench")
            .build()
            .unwrap_or_else(|e| unreachable!("constant client options are valid: {e}"))
    }

    /// Live processes started by this daemon.
    pub fn instances(&self) -> Vec<i32> {
        reap::instances_of(&self.run)
    }

    /// Sends a signal to charond itself.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let seen = self.instances();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap::kill_instances(&self.run, seen);
    }
}
