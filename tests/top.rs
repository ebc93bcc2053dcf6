//! `charon top` against a real charond running the demo service: once
//! under a real pseudo-terminal (a tmux pane: keys sent, the screen
//! captured), once with stdout not a terminal (one frame, then exit).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::daemon::Daemon;
use crate::util::{bin, run, wait_for};

const KEY: &str = "system.echo.0.raw";
const LONG: Duration = Duration::from_secs(60);

/// charond on the demo's config file, as shipped (the bare `charon-echo`
/// is found beside charond).
fn demo() -> Daemon {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/system.echo.0.raw.toml"),
    )
    .expect("the demo config");
    Daemon::start(&[(KEY, &conf)])
}

/// One client sending echo requests until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(d: &Daemon) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = d.client();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // The test reads what top shows; an error here would show
                // there as a missing rate.
                let _ = c.call(KEY, b"top");
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tmux server of our own (its socket in the test's temp dir), killed
/// on drop with every pane in it.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A tmux server of its own in `d`'s dir, with a 160x24 pane running
    /// `charon top` on `d`, which writes its exit status to `done`.
    fn run_top(d: &Daemon, done: &Path) -> Tmux {
        let tmux = Tmux {
            socket: d.dir.join("tmux.sock"),
        };
        let line = format!(
            "{} top --run-dir {}; echo exit=$? > {}",
            bin("charon").display(),
            d.run.display(),
            done.display()
        );
        let (ok, out) = tmux.cmd(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "24",
            &line,
        ]);
        assert!(ok, "tmux new-session: {out}");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(args);
        let (st, out, err) = run(c, LONG);
        let mut text = String::from_utf8_lossy(&out).into_owned();
        text.push_str(&String::from_utf8_lossy(&err));
        (st.success(), text)
    }

    /// The pane's text, with colours as escape sequences if `escapes`.
    fn screen(&self, escapes: bool) -> String {
        let args: &[&str] = if escapes {
            &["capture-pane", "-p", "-e"]
        } else {
            &["capture-pane", "-p"]
        };
        self.cmd(args).1
    }

    /// Polls the screen until `cond` holds on it.
    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let mut seen = false;
        wait_for(LONG, what, || {
            last = self.screen(false);
            seen = cond(&last);
            seen
        });
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// tmux is installed by .ci/run; a machine without it skips the terminal
/// test with a loud message, except under CI.
fn have_tmux() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing under CI (.ci/run installs it)"
        );
        eprintln!("\n!!! tmux not found: `charon top` was NOT tested under a terminal (.ci/run installs tmux) !!!\n");
    }
    found
}

/// The cell under `title` in the line of `key`.
fn cell<'a>(screen: &'a str, title: &str, key: &str) -> Option<&'a str> {
    let header = screen.lines().find(|l| l.starts_with("KEY"))?;
    let col = header.find(title)?;
    let line = screen.lines().find(|l| l.starts_with(key))?;
    line.get(col..)?.split_whitespace().next()
}

#[test]
fn top_under_a_terminal_shows_the_service_sorts_on_keys_and_quits_on_q() {
    if !have_tmux() {
        return;
    }
    let d = demo();
    let done = d.dir.join("top.exit");
    let tmux = Tmux::run_top(&d, &done);
    let screen = tmux.wait_screen("the first frame", |s| s.contains(KEY));
    assert!(screen.starts_with("charon top: 1 service(s)"), "{screen}");
    assert!(screen.contains("sorted by KEY"), "{screen}");
    assert!(screen.contains("KEY^"), "{screen}");
    assert!(screen.contains("q quit"), "{screen}");
    requests_show_as_a_rate_and_percentiles_unprompted(&d, &tmux);

    // `>` five times from KEY: sorted by REQ/S, largest first; `r`
    // reverses.
    for _ in 0..5 {
        tmux.cmd(&["send-keys", ">"]);
    }
    let screen = tmux.wait_screen("sorted by REQ/S", |s| s.contains("sorted by REQ/S"));
    assert!(screen.contains("REQ/Sv"), "{screen}");
    tmux.cmd(&["send-keys", "r"]);
    let screen = tmux.wait_screen("the order reversed", |s| s.contains("(reversed)"));
    assert!(screen.contains("REQ/S^"), "{screen}");
    tmux.cmd(&["send-keys", "<"]);
    tmux.wait_screen("sorted by MAX", |s| s.contains("sorted by MAX"));

    tmux.cmd(&["send-keys", "q"]);
    wait_for(LONG, "charon top to exit 0 on q", || {
        std::fs::read_to_string(&done).is_ok_and(|s| s.trim() == "exit=0")
    });
}

/// Requests show as a rate and interval percentiles, refreshed without a
/// key pressed; the service's state is green.
fn requests_show_as_a_rate_and_percentiles_unprompted(d: &Daemon, tmux: &Tmux) {
    let load = Load::start(d);
    let screen = tmux.wait_screen("a rate and a p50 for the service", |s| {
        cell(s, "REQ/S", KEY).and_then(|r| r.parse::<f64>().ok()) > Some(0.0)
            && cell(s, "P50", KEY).is_some_and(|p| p.ends_with("us") || p.ends_with("ms"))
    });
    drop(load);
    assert_eq!(cell(&screen, "STATE", KEY), Some("running"), "{screen}");
    assert_eq!(cell(&screen, "MAX", KEY), Some("4"), "{screen}");
    let coloured = tmux.screen(true);
    let at = coloured.find("running").expect("the state");
    let before = &coloured[at.saturating_sub(12)..at];
    assert!(
        before.contains("\u{1b}[32m") || before.contains("\u{1b}[38;5;2m"),
        "running is green: {before:?}"
    );
}

#[test]
fn top_without_a_terminal_prints_one_frame_over_one_interval() {
    let d = demo();
    let load = Load::start(&d);
    let (code, out, err) = d.charon(&["top", "--sort", "rps"]);
    drop(load);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("charon top: 1 service(s)") && lines[0].contains("sorted by REQ/S"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("KEY ") && lines[1].contains("REQ/Sv"),
        "{out}"
    );
    assert_eq!(cell(&out, "STATE", KEY), Some("running"), "{out}");
    // The rate of the interval, not of charond's life: a number, and the
    // load made it more than zero.
    let rate: f64 = cell(&out, "REQ/S", KEY).unwrap().parse().unwrap();
    assert!(rate > 0.0, "{out}");

    // No manager: one line on stderr, status 7, nothing drawn.
    let mut cmd = Command::new(bin("charon"));
    cmd.args(["top", "--run-dir"]).arg(d.dir.join("none"));
    let (st, out, err) = run(cmd, LONG);
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert_eq!(st.code(), Some(7), "{err}");
    assert!(
        out.is_empty() && err.contains("no charond is running"),
        "{err}"
    );
}
