//! A real `charond` for integration tests: config and run dirs in a temp
//! dir, its log captured, and on drop charond and every instance it started
//! (found by the `CHARON_RUN_DIR` in their environment, since instances run
//! in process groups of their own) killed and waited for until they are
//! gone, not just dead, even when the test fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charon_client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub use super::reap::instances_of;
use super::reap::kill_instances;
use super::{bin, run, wait_for, Proc, TestDir};

/// How long the harness waits for the daemon: generous, because CI runs on
/// a shared 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The client name the harness's clients give (visible in charond's log).
pub const CLIENT_NAME: &str = "charon-test";

/// A running charond with its log captured.
pub struct Daemon {
    pub proc: Option<Proc>,
    pub log: Arc<Mutex<String>>,
    pub run: PathBuf,
    pub conf: PathBuf,
    pub dir: TestDir,
}

impl Daemon {
    /// Writes `<key>.toml` files and starts charond on them.
    pub fn start(services: &[(&str, &str)]) -> Daemon {
        Daemon::start_args(services, &[])
    }

    /// The same, with extra charond arguments.
    pub fn start_args(services: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let dir = TestDir::new();
        let conf = dir.mkdir("conf");
        for (key, toml) in services {
            dir.write(&format!("conf/{key}.toml"), toml);
        }
        let run = dir.join("run");
        let d = Daemon::start_with(dir, conf, run, extra);
        for (k, _) in services {
            assert!(d.run.join(format!("{k}.sock")).exists(), "{k} is served");
        }
        d
    }

    /// Starts charond on dirs the test prepared.
    pub fn start_in(dir: TestDir, conf: PathBuf, run: PathBuf) -> Daemon {
        Daemon::start_with(dir, conf, run, &[])
    }

    /// Starts charond in `dir` with one prestarted service `KEY` run by
    /// `/bin/sh -c script`: for tests whose instances must behave
    /// differently from one start to the next (a script keeping a count in
    /// `dir`). Prestarted, so the first start happens without a client.
    pub fn start_script(dir: TestDir, key: &str, script: &str) -> Daemon {
        let conf = dir.mkdir("conf");
        dir.write(
            &format!("conf/{key}.toml"),
            format!("exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\n"),
        );
        let run = dir.join("run");
        Daemon::start_in(dir, conf, run)
    }

    /// Starts charond on dirs the test prepared, with extra arguments. Two
    /// variables are set in charond's environment that must never reach an
    /// instance (instances get a scrubbed environment).
    pub fn start_with(dir: TestDir, conf: PathBuf, run: PathBuf, extra: &[&str]) -> Daemon {
        Daemon::start_under(dir, conf, run, extra, &[])
    }

    /// Starts charond through `wrapper` (a program and its arguments that
    /// exec the rest of the command line, e.g. `prlimit --nofile=40:40`),
    /// which becomes charond: the same pid.
    pub fn start_under(
        dir: TestDir,
        conf: PathBuf,
        run: PathBuf,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Daemon {
        let mut cmd = match wrapper {
            [] => Command::new(bin("charond")),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("charond"));
                c
            }
        };
        cmd.args(extra)
            .arg("--config-dir")
            .arg(&conf)
            .arg("--run-dir")
            .arg(&run)
            .env("CHARON_TEST_LEAK", "must-not-reach-instances")
            .env("LD_LIBRARY_PATH", "/must/not/reach/instances");
        Daemon::spawn(dir, conf, run, cmd)
    }

    /// Starts charond from a command line the test built whole (the
    /// image's entrypoint, say); `run` is the run dir that command gives
    /// it. Returns once the control socket answers.
    pub fn spawn(dir: TestDir, conf: PathBuf, run: PathBuf, mut cmd: Command) -> Daemon {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut proc = Proc::spawn("charond", cmd);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = proc.child_mut().stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let d = Daemon {
            proc: Some(proc),
            log,
            run,
            conf,
            dir,
        };
        // The control socket answers only once the event loop runs, that is
        // after every service socket is bound and listening.
        wait_for(PATIENCE, "charond to answer on its control socket", || {
            control_answers(&d.run)
        });
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times `needle` appears in the log so far.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Polls the log until `cond` holds; panics with the log past the
    /// deadline.
    pub fn wait_log(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let mut last = String::new();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            last = self.log();
            if cond(&last) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}; log:\n{last}");
    }

    /// A client on this daemon's run dir.
    pub fn client(&self) -> Client {
        Client::builder()
            .run_dir(&self.run)
            .timeout(Duration::from_secs(20))
            .name(CLIENT_NAME)
            .build()
            .expect("client")
    }

    pub fn pid(&self) -> i32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Sends charond a signal.
    pub fn signal(&self, sig: Signal) {
        self.proc.as_ref().expect("charond").signal(sig);
    }

    /// Sends `pid` a signal (charond's own pid when a wrapper started it).
    pub fn signal_pid(&self, pid: i32, sig: Signal) {
        let _ = kill(Pid::from_raw(pid), sig);
    }

    /// Live (non-zombie) instances of this daemon.
    pub fn instances(&self) -> Vec<i32> {
        instances_of(&self.run)
    }

    /// Instances that are ready (idle or busy, by `charon ps` over the
    /// control socket): past start-up, so that an outside SIGKILL of one
    /// is not a young failure (doc/charond.md, *Instance lifecycle*).
    pub fn ready_instances(&self) -> Vec<i32> {
        let ps = control(&self.run, &serde_json::json!({"cmd": "ps"}));
        let mut pids: Vec<i32> = ps["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] == "idle" || i["state"] == "busy")
            .filter_map(|i| i["pid"].as_i64()?.try_into().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// SIGKILLs a random ready instance every `every` (on a schedule, not
    /// `every` after each look, which can be slow under load) until
    /// `run_for` has passed, as an operator's `kill -9` or the OOM killer
    /// would. Returns the number of kills.
    pub fn sigkill_chaos(&self, every: Duration, run_for: Duration) -> u64 {
        let mut seed = u64::from(std::process::id()) | 1;
        let mut kills = 0;
        let start = Instant::now();
        let mut next = start;
        while Instant::now() < start + run_for {
            let pids = self.ready_instances();
            if !pids.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let victim = pids[(seed % pids.len() as u64) as usize];
                if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                    kills += 1;
                }
            }
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        kills
    }

    /// Waits until exactly one instance is seen and returns its pid, from
    /// the same look: a second look can miss it while it execs (its
    /// environ unreadable for a moment), which made a test index an empty
    /// list.
    pub fn one_instance(&self, timeout: Duration, what: &str) -> i32 {
        let mut pid = 0;
        wait_for(timeout, what, || match self.instances()[..] {
            [p] => {
                pid = p;
                true
            }
            _ => false,
        });
        pid
    }

    /// Writes `<key>.toml` beside and renames it in, so a reload never
    /// reads half a file.
    pub fn write_conf(&self, key: &str, toml: &str) {
        let tmp = self.conf.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, self.conf.join(format!("{key}.toml"))).expect("rename config");
    }

    /// Runs `charon ARGS --run-dir RUN`: (exit code, stdout, stderr).
    pub fn charon(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(bin("charon"));
        cmd.args(args).arg("--run-dir").arg(&self.run);
        let (st, out, err) = run(cmd, PATIENCE);
        (
            st.code().unwrap_or(-1),
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    /// `charon stats --json KEY`: that service's object.
    pub fn stats(&self, key: &str) -> Value {
        let (code, out, err) = self.charon(&["stats", "--json", key]);
        assert_eq!(code, 0, "charon stats: {err}");
        let v: Value = serde_json::from_str(&out).expect("stats --json is JSON");
        v["services"][0].clone()
    }

    /// `charon ps --json`: the instances.
    pub fn ps(&self) -> Vec<Value> {
        let (code, out, err) = self.charon(&["ps", "--json"]);
        assert_eq!(code, 0, "charon ps: {err}");
        let v: Value = serde_json::from_str(&out).expect("ps --json is JSON");
        v["instances"].as_array().cloned().unwrap_or_default()
    }
}

/// True if a charond answers a `version` request on its control socket in
/// `run`.
pub fn control_answers(run: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(run.join("charond.sock")) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"{\"cmd\":\"version\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.contains("\"ok\":true")
}

/// One request on charond's control socket in `run`, and its answer.
pub fn control(run: &Path, request: &Value) -> Value {
    let mut s = UnixStream::connect(run.join("charond.sock")).expect("control socket");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    writeln!(s, "{request}").expect("write a control request");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("read a control answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("control answer {line:?}: {e}"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kill charond first (so nothing restarts), then every instance.
        let seen = self.instances();
        drop(self.proc.take());
        kill_instances(&self.run, seen);
    }
}
