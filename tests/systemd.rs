//! charond under systemd, with the test playing systemd's part: a datagram
//! socket bound in the temp dir is `NOTIFY_SOCKET`, and the test reads what
//! charond sends there (sd_notify(3)): readiness, reload, stop, status,
//! watchdog pings, and the sockets it hands to the fd store.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::daemon::{Daemon, PATIENCE};
use crate::util::fds::recv_with_fds;
use crate::util::load::Load;
use crate::util::pass_fds;
use crate::util::{bin, wait_for, Proc, TestDir};

const KEY: &str = "system.echo.0.raw";

/// One datagram charond sent: its lines, when it came, the fds with it.
pub struct Note {
    pub lines: Vec<String>,
    pub at: Instant,
    pub fds: Vec<OwnedFd>,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    }
}

/// systemd's end of `NOTIFY_SOCKET`.
pub struct Systemd {
    sock: UnixDatagram,
    pub path: PathBuf,
    pub notes: Vec<Note>,
}

impl Systemd {
    pub fn bind(dir: &TestDir) -> Systemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Systemd {
            sock,
            path,
            notes: Vec::new(),
        }
    }

    /// Reads what has come (waiting at most 100 ms for the first).
    fn read(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let (n, fds) = match recv_with_fds(&self.sock, &mut buf) {
                Ok(received) => received,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => panic!("recvmsg on the notify socket: {e}"),
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.notes.push(Note {
                lines: text.lines().map(str::to_string).collect(),
                at: Instant::now(),
                fds,
            });
            self.sock
                .set_read_timeout(Some(Duration::from_millis(1)))
                .expect("timeout");
        }
    }

    /// Reads until a datagram has `line`; returns its index.
    pub fn wait_line(&mut self, line: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(i) = self.notes.iter().position(|n| n.has(line)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {PATIENCE:?}; got {:?}",
                self.lines()
            );
            self.sock
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            self.read();
        }
    }

    /// Every line received, watchdog pings left out, in order.
    pub fn lines(&self) -> Vec<String> {
        self.notes
            .iter()
            .flat_map(|n| n.lines.iter().cloned())
            .filter(|l| l != "WATCHDOG=1")
            .collect()
    }
}

/// A temp dir with a config dir serving `KEY` by charon-echo, every
/// knob at its default (on demand).
fn on_demand_echo() -> (TestDir, PathBuf) {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(
        &format!("conf/{KEY}.toml"),
        format!("exec = \"{}\"\n", bin("charon-echo").display()),
    );
    (dir, conf)
}

fn echo_prestarted() -> String {
    // Prestarted, so that readiness has an instance to wait for (the
    // default, on demand, is ready as soon as the socket listens).
    format!(
        "exec = \"{}\"\nprestart-processes = true\n",
        bin("charon-echo").display()
    )
}

/// The plain charond command line on `conf` and `run`.
fn charond(conf: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--config-dir").arg(conf).arg("--run-dir").arg(run);
    cmd
}

fn start(dir: TestDir, sd: &Systemd, env: &[(&str, String)]) -> Daemon {
    let conf = dir.join("conf");
    let run = dir.join("run");
    let notify = sd.path.clone();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut cmd = charond(&conf, &run);
    cmd.env("NOTIFY_SOCKET", &notify);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(dir, conf, run, cmd)
}

fn monotonic_usec() -> i128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1000
}

fn is_ready_in_ps(d: &Daemon) -> bool {
    d.ps()
        .iter()
        .any(|p| p["key"] == KEY && (p["state"] == "idle" || p["state"] == "busy"))
}

/// READY=1 once the prestarted instance is ready; RELOADING=1 with
/// MONOTONIC_USEC then READY=1 around a good and a broken reload; STATUS
/// lines; STOPPING=1 at SIGTERM; and WATCHDOG=1 pings no further apart
/// than the interval systemd gave.
#[test]
fn notify_start_reload_stop_and_watchdog() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_prestarted());
    let mut sd = Systemd::bind(&dir);
    // The watchdog interval systemd would set from `WatchdogSec=`; this
    // test is about it. 4 s: pings every 2 s.
    let watchdog = Duration::from_secs(4);
    let d = start(
        dir,
        &sd,
        &[("WATCHDOG_USEC", watchdog.as_micros().to_string())],
    );
    ready_once_with_its_status_and_the_socket_stored(&mut sd, &d);
    a_good_reload_says_reloading_then_ready(&mut sd, &d, &conf);
    a_broken_reload_is_refused_and_says_ready_again(&mut sd, &d, &conf);

    // Pings keep coming, no further apart than the interval.
    let pings = sd.notes.iter().filter(|n| n.has("WATCHDOG=1")).count();
    wait_for(PATIENCE, "two more watchdog pings", || {
        sd.read();
        sd.notes.iter().filter(|n| n.has("WATCHDOG=1")).count() >= pings + 2
    });

    a_stop_says_stopping_and_nothing_after(&mut sd, d);
    let at: Vec<Instant> = sd
        .notes
        .iter()
        .filter(|n| n.has("WATCHDOG=1"))
        .map(|n| n.at)
        .collect();
    let gap = at.windows(2).map(|w| w[1] - w[0]).max().expect("pings");
    assert!(
        gap < watchdog,
        "watchdog pings {gap:?} apart, over {watchdog:?}"
    );
}

/// READY=1 once, after the prestarted instance is ready, with the status
/// line; and the socket handed to the fd store.
fn ready_once_with_its_status_and_the_socket_stored(sd: &mut Systemd, d: &Daemon) {
    let ready = sd.wait_line("READY=1");
    assert!(
        is_ready_in_ps(d),
        "READY=1 came before the prestarted instance was ready: {:?}",
        d.ps()
    );
    let status = sd.notes[ready].value("STATUS").expect("STATUS with READY");
    assert_eq!(
        status,
        "1 service, 0/1 instances busy, 0 req/s, 0 in backoff"
    );
    assert_eq!(sd.lines().iter().filter(|l| *l == "READY=1").count(), 1);
    // FDSTORE absent (systemd before 254 does not set it): the socket is
    // handed over anyway.
    assert!(sd
        .notes
        .iter()
        .any(|n| n.has(&format!("FDNAME={KEY}")) && n.fds.len() == 1));
}

/// A good reload (a changed file, a new generation): RELOADING=1 with the
/// time of the reload, then READY=1.
fn a_good_reload_says_reloading_then_ready(sd: &mut Systemd, d: &Daemon, conf: &Path) {
    std::fs::write(
        conf.join(format!("{KEY}.toml")),
        echo_prestarted() + "env = { CHANGED = \"1\" }\n",
    )
    .expect("write conf");
    let before = monotonic_usec();
    d.signal(Signal::SIGHUP);
    let reloading = sd.wait_line("RELOADING=1");
    let usec: i128 = sd.notes[reloading]
        .value("MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .expect("a number");
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "{usec} vs {before}"
    );
    wait_for(PATIENCE, "READY=1 after the reload", || {
        sd.read();
        sd.notes[reloading + 1..].iter().any(|n| n.has("READY=1"))
    });
    assert!(d
        .log()
        .contains("reload done: 0 started, 0 stopped, 1 changed"));
}

/// A broken file: refused, the old config kept, RELOADING=1 then READY=1.
fn a_broken_reload_is_refused_and_says_ready_again(sd: &mut Systemd, d: &Daemon, conf: &Path) {
    std::fs::write(conf.join(format!("{KEY}.toml")), "exec = [[[\n").expect("write");
    let n = sd.notes.len();
    d.signal(Signal::SIGHUP);
    wait_for(PATIENCE, "RELOADING=1 then READY=1 (broken file)", || {
        sd.read();
        let l: Vec<String> = sd.notes[n..]
            .iter()
            .flat_map(|n| n.lines.iter().cloned())
            .filter(|l| l == "RELOADING=1" || l == "READY=1")
            .collect();
        l == ["RELOADING=1", "READY=1"]
    });
    assert!(d.log().contains("1 config error(s)"));
    assert_eq!(d.client().call(KEY, b"still").expect("served"), b"still");
}

/// SIGTERM: STOPPING=1, a clean exit, and neither READY=1 nor RELOADING=1
/// after it.
fn a_stop_says_stopping_and_nothing_after(sd: &mut Systemd, mut d: Daemon) {
    d.signal(Signal::SIGTERM);
    sd.wait_line("STOPPING=1");
    let status = d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    assert!(status.success(), "{status:?}");
    sd.read();
    let lines = sd.lines();
    let stop = lines
        .iter()
        .position(|l| l == "STOPPING=1")
        .expect("STOPPING=1");
    assert!(
        !lines[stop..]
            .iter()
            .any(|l| l == "READY=1" || l == "RELOADING=1"),
        "{lines:?}"
    );
}

/// Without NOTIFY_SOCKET nothing is sent (and nothing changes): the path a
/// stale variable would name stays silent.
#[test]
fn without_notify_socket_nothing_is_sent() {
    let dir = TestDir::new();
    dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_prestarted());
    let mut sd = Systemd::bind(&dir);
    let conf = dir.join("conf");
    let run = dir.join("run");
    let mut cmd = charond(&conf, &run);
    cmd.env_remove("NOTIFY_SOCKET")
        .env("WATCHDOG_USEC", "200000");
    let d = Daemon::spawn(dir, conf, run, cmd);
    wait_for(PATIENCE, "the instance ready", || is_ready_in_ps(&d));
    sd.read();
    assert!(sd.notes.is_empty());
}

/// The sh wrapper that sets `LISTEN_PID` to its own pid and execs charond
/// (same pid), as systemd does for the process it starts.
fn with_listen_pid(charond: Command) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
        .arg(charond.get_program())
        .args(charond.get_args());
    cmd
}

/// The fd store, with the test as systemd: charond hands its socket over
/// (`FDSTORE=1`, `FDNAME=` the key), is SIGKILLed under 4 client loops, and
/// a new charond is started with that socket in `LISTEN_FDS`. The socket
/// and the connections queued on it survive: no request fails.
#[test]
fn fd_store_keeps_the_socket_across_a_sigkill_and_restart_under_load() {
    let (dir, conf) = on_demand_echo();
    let run = dir.join("run");
    let mut sd = Systemd::bind(&dir);
    // What systemd sets from `FileDescriptorStoreMax=8`.
    let mut d1 = start(dir, &sd, &[("FDSTORE", "8".to_string())]);
    sd.wait_line("READY=1");
    let i = sd.wait_line(&format!("FDNAME={KEY}"));
    assert!(sd.notes[i].has("FDSTORE=1"), "{:?}", sd.notes[i].lines);
    let stored = sd.notes[i]
        .fds
        .pop()
        .expect("the socket came with FDSTORE=1");
    assert!(sd.notes[i].fds.is_empty());

    // The clients' own timeout, generous for a loaded CI machine: a
    // restart must make clients wait, not fail.
    let load = Load::echo(&run, KEY, 4, Duration::from_secs(30));
    wait_for(PATIENCE, "requests served", || {
        d1.stats(KEY)["requests"].as_u64() > Some(50)
    });
    d1.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let st = d1.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    assert!(!st.success());
    // systemd's restart delay: let the old instances drain and leave, so
    // that clients wait on the socket alone.
    std::thread::sleep(Duration::from_millis(500));

    let d2 = restarted_with_the_stored_socket(&conf, &run, &sd, &stored);
    let restarted = killed_at.elapsed();
    wait_for(PATIENCE, "requests served by the new charond", || {
        d2.stats(KEY)["requests"].as_u64() > Some(50)
    });
    let t = load.finish();
    println!(
        "fd store, SIGKILL then restart under 4 loops: answered={} failed={} longest wait={:?} \
         (restart {restarted:?} after the kill)",
        t.ok,
        t.total() - t.ok,
        t.slowest
    );
    assert!(
        d2.log().contains("socket passed back by systemd"),
        "{}",
        d2.log()
    );
    assert_eq!(t.ok, t.total(), "{:?}", t.errors);
    // The new charond handed the same socket back to the store.
    sd.read();
    assert!(sd.notes[i + 1..]
        .iter()
        .any(|n| n.has("FDSTORE=1") && n.fds.len() == 1));
    drop(d1);
}

/// A new charond started as systemd restarts a unit with an fd store:
/// `stored` passed in `LISTEN_FDS`, named by the key.
fn restarted_with_the_stored_socket(
    conf: &Path,
    run: &Path,
    sd: &Systemd,
    stored: &OwnedFd,
) -> Daemon {
    let mut cmd = with_listen_pid(charond(conf, run));
    cmd.env("NOTIFY_SOCKET", &sd.path)
        .env("FDSTORE", "8")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", KEY);
    pass_fds(&mut cmd, vec![std::os::fd::AsRawFd::as_raw_fd(stored)]);
    Daemon::spawn(TestDir::new(), conf.to_path_buf(), run.to_path_buf(), cmd)
}

/// Socket activation: a `.socket` unit made the socket (the test binds it
/// at the key's path) and systemd passes it with `FileDescriptorName=` the
/// key. charond serves on it, closes one for a key it does not serve, and
/// leaves the file at a stop (the socket unit owns it), so clients queue
/// there until the next start.
#[test]
fn socket_activation_serves_the_passed_socket_and_leaves_it_at_a_stop() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let (dir, conf) = on_demand_echo();
    let run = dir.mkdir("run");
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = run.join(format!("{KEY}.sock"));
    let unit = UnixListener::bind(&path).expect("the socket unit's socket");
    let unserved = "other.x.0.raw";
    let other = UnixListener::bind(run.join(format!("{unserved}.sock"))).expect("bind");
    let mut cmd = with_listen_pid(charond(&conf, &run));
    cmd.env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", format!("{KEY}:{unserved}"));
    pass_fds(
        &mut cmd,
        vec![
            std::os::fd::AsRawFd::as_raw_fd(&unit),
            std::os::fd::AsRawFd::as_raw_fd(&other),
        ],
    );
    let mut d = Daemon::spawn(dir, conf, run.clone(), cmd);
    assert_eq!(
        d.client().call(KEY, b"activated").expect("served"),
        b"activated"
    );
    let log = d.log();
    assert!(
        log.contains("listening (socket passed back by systemd)"),
        "{log}"
    );
    assert!(log.contains("no config file serves this key"), "{log}");
    assert!(!run.join(format!("{unserved}.sock")).exists());
    d.signal(Signal::SIGTERM);
    let st = d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    assert!(st.success(), "{st:?}");
    assert!(path.exists(), "the socket unit's file is left in place");
    // A client connecting now queues on the unit's socket.
    let _queued = UnixStream::connect(&path).expect("still listening");
}

/// stderr is the journal's stream (`JOURNAL_STREAM` names its device and
/// inode, as systemd sets it): each line starts with its sd-daemon(3)
/// priority instead of the time and level.
#[test]
fn journal_lines_carry_their_priority() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    // A program that does not exist: a warning-level line comes too.
    dir.write(
        &format!("conf/{KEY}.toml"),
        "exec = \"/nonexistent/prog\"\nprestart-processes = true\n",
    );
    let run = dir.join("run");
    let plain = charond(&conf, &run);
    // The wrapper sets JOURNAL_STREAM to its stderr (the harness's pipe),
    // which charond inherits, then execs it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$0\" \"$@\"")
        .arg(plain.get_program())
        .args(plain.get_args());
    let d = Daemon::spawn(dir, conf, run, cmd);
    wait_for(PATIENCE, "a warning", || d.log().contains("<4>"));
    let log = d.log();
    assert!(log.lines().any(|l| l.starts_with("<6>charond ")), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with(&format!("<4>{KEY} "))),
        "{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.starts_with("<6>") || l.starts_with("<4>")),
        "{log}"
    );
}

/// A real systemd, PID 1 of its own PID, mount, network, UTS and IPC
/// namespaces, running the shipped unit (paths pointed at the built
/// binaries, the config dir under the target dir since the unit's
/// `PrivateTmp=` hides /tmp, and without the default dependencies, which
/// would boot the machine's whole system).
struct RealSystemd {
    proc: Proc,
    pid: i32,
}

impl RealSystemd {
    fn boot(units: &Path) -> RealSystemd {
        let script = format!(
            "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run; \
             mkdir -p /run/systemd/system; cp {}/* /run/systemd/system/; \
             export container=other; \
             exec /lib/systemd/systemd --system --unit=charon-test.target --show-status=no",
            units.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
        ])
        .args(["--mount-proc", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let proc = Proc::spawn("unshare systemd", cmd);
        let children = format!("/proc/{0}/task/{0}/children", proc.pid());
        let mut pid = 0;
        wait_for(PATIENCE, "systemd to start in its namespace", || {
            pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            pid != 0
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
        });
        RealSystemd { proc, pid }
    }

    /// Runs `args` inside the namespaces: (success, stdout).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-m", "-p", "-n"])
            .args(args);
        let (st, out, _) = crate::util::run(cmd, PATIENCE);
        (
            st.success(),
            String::from_utf8_lossy(&out).trim().to_string(),
        )
    }

    fn systemctl(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `charon ping` inside the namespaces: 100000 requests, 4 in flight,
    /// 30 s timeout, its output piped.
    fn ping_under_load(&self) -> Proc {
        let ping = bin("charon").display().to_string();
        let mut load = Command::new("nsenter");
        load.args(["-t", &self.pid.to_string(), "-m", "-p", "-n", &ping])
            .args([
                "ping",
                "-c",
                "100000",
                "-p",
                "4",
                "-t",
                "30",
                "--run-dir",
                "/run/charon",
                KEY,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Proc::spawn("charon ping", load)
    }
}

/// The shipped unit under a real systemd (252 on Debian 12): start waits
/// for readiness and shows the status line; under 4 requests in flight
/// (`charon ping -p 4`), `systemctl restart`, a SIGKILL of charond
/// (`Restart=on-failure`) and `systemctl reload` fail no request and keep
/// the very same socket; `systemctl stop` ends cleanly. Needs root, for the
/// namespaces.
#[test]
fn the_unit_under_a_real_systemd_loses_nothing_across_restart_crash_and_reload() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: namespaces for a real systemd need root");
        return;
    }
    assert!(
        Path::new("/lib/systemd/systemd").exists(),
        "systemd is not installed (.ci/run installs Debian's systemd package)"
    );
    let dir = tempfile::Builder::new()
        .prefix("sd")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let units = write_the_shipped_unit(dir.path());
    let sd = RealSystemd::boot(&units);
    wait_for(PATIENCE, "charond active", || {
        sd.systemctl(&["is-active", "charond"]).1 == "active"
    });
    let (_, status) = sd.systemctl(&["show", "-p", "StatusText", "charond"]);
    assert!(status.contains("1 service, 0/1 instances busy"), "{status}");
    let sock = format!("/run/charon/{KEY}.sock");
    let (_, inode) = sd.run(&["stat", "-c", "%i", &sock]);

    let mut load = sd.ping_under_load();
    std::thread::sleep(Duration::from_millis(500));
    assert!(sd.systemctl(&["restart", "charond"]).0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sd.systemctl(&["kill", "-s", "KILL", "--kill-whom=main", "charond"])
            .0
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_for(PATIENCE, "charond active again", || {
        sd.systemctl(&["is-active", "charond"]).1 == "active"
    });
    assert!(sd.systemctl(&["reload", "charond"]).0);
    let st = load.wait_timeout(Duration::from_secs(300));
    let out = output_of(&mut load);
    println!("real systemd, restart + SIGKILL + reload under charon ping -p 4: {out}");
    assert!(st.success(), "{out}");
    assert!(out.contains("100000 requests, 0 errors"), "{out}");
    assert_eq!(
        sd.run(&["stat", "-c", "%i", &sock]).1,
        inode,
        "the same socket"
    );

    assert!(sd.systemctl(&["stop", "charond"]).0);
    assert_eq!(sd.systemctl(&["is-active", "charond"]).1, "inactive");
    let (_, result) = sd.systemctl(&["show", "-p", "Result", "charond"]);
    assert_eq!(result, "Result=success");
    drop(sd.proc);
}

/// Writes, under `dir`, a config dir serving `KEY` (prestarted, so that
/// readiness waits for an instance) and a units dir: the shipped
/// `charond.service` pointed at the built binaries and that config dir,
/// and a target that wants it. Returns the units dir.
fn write_the_shipped_unit(dir: &Path) -> PathBuf {
    let conf = dir.join("conf");
    let units = dir.join("units");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::create_dir_all(&units).expect("mkdir");
    std::fs::write(conf.join(format!("{KEY}.toml")), echo_prestarted()).expect("write");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/charond.service"),
    )
    .expect("the unit");
    let bindir = bin("charond")
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let unit = shipped
        .replace("/usr/local/bin/", &format!("{bindir}/"))
        .replace(
            "--config-dir /etc/charon",
            &format!("--config-dir {}", conf.display()),
        )
        .replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n");
    // The unit's private /tmp would hide the binaries and the config dir
    // from charond when the checkout itself lives under /tmp.
    let unit = if bindir.starts_with("/tmp/") || conf.starts_with("/tmp/") {
        unit.replace("PrivateTmp=yes", "PrivateTmp=no")
    } else {
        unit
    };
    std::fs::write(units.join("charond.service"), unit).expect("write");
    std::fs::write(
        units.join("charon-test.target"),
        "[Unit]\nDefaultDependencies=no\nWants=charond.service\n",
    )
    .expect("write");
    units
}

/// What a finished process wrote, stdout then stderr.
fn output_of(p: &mut Proc) -> String {
    let mut out = String::new();
    std::io::Read::read_to_string(p.child_mut().stdout.as_mut().expect("stdout"), &mut out)
        .expect("read");
    let mut err = String::new();
    std::io::Read::read_to_string(p.child_mut().stderr.as_mut().expect("stderr"), &mut err)
        .expect("read");
    out.push_str(&err);
    out
}
