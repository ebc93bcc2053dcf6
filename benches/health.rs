//! How fast `charon health` answers a probe (issue 13: under 10 ms).
//!
//! `cargo bench --bench health [-- --rounds N]` starts charond on one echo
//! service and times, A B A B in one run so machine noise hits both:
//!
//! - **baseline**: `charon --version`, the same binary started and exited
//!   without talking to anyone: what any exec probe pays;
//! - **health**: `charon health --run-dir ...`, start to exit;
//! - **exchange**: the control exchange alone, in this process (connect,
//!   `{"cmd":"health"}`, read the answer line): charond's share.
//!
//! It prints the quantiles of each and checks the guard: health's median
//! is at most [`MAX_RATIO`] times the baseline's (the exchange must stay
//! small beside a process start), exit 1 if not. The 10 ms target is
//! printed as a figure, not enforced: it depends on the machine.
#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "roundtrip/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{echo_conf, Daemon};

/// Health's median over the baseline's: above this, the exchange costs
/// more than starting the command does.
const MAX_RATIO: f64 = 2.0;
/// The absolute target for the whole command.
const TARGET: Duration = Duration::from_millis(10);

fn main() {
    let rounds = rounds_arg();
    let d = Daemon::start(&[("system.echo.0.raw".to_string(), echo_conf(""))])
        .unwrap_or_else(|e| fail(&e));
    let (b, h, x) = measure(&d, rounds);
    println!("charon health, {rounds} rounds (A B A B), microseconds:");
    println!("  {:<36} {b}", "baseline (charon --version)");
    println!("  {:<36} {h}", "charon health (start to exit)");
    println!("  {:<36} {x}", "control exchange alone (in process)");
    let ok = judge(&b, &h);
    drop(d);
    if !ok {
        std::process::exit(1);
    }
}

/// `--rounds N` (default 500); cargo bench's own `--bench` is ignored.
fn rounds_arg() -> usize {
    let mut rounds = 500usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| fail("--rounds needs a number above 0"));
            }
            // cargo bench passes --bench.
            "--bench" => {}
            other => fail(&format!("unknown argument {other:?}; valid: --rounds N")),
        }
    }
    rounds
}

/// The baseline, the health command and the exchange alone, timed in
/// turn `rounds` times after a warm-up.
fn measure(d: &Daemon, rounds: usize) -> (Quantiles, Quantiles, Quantiles) {
    let charon = env!("CARGO_BIN_EXE_charon");
    let version = || {
        let mut c = Command::new(charon);
        c.arg("--version");
        c
    };
    let health = || {
        let mut c = Command::new(charon);
        c.arg("health").arg("--run-dir").arg(&d.run);
        c
    };
    // Warm the page cache and charond.
    for _ in 0..20 {
        time_command(version());
        time_command(health());
    }
    let (mut base, mut cmd, mut exchange) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(time_command(version()));
        cmd.push(time_command(health()));
        exchange.push(time_exchange(d));
    }
    (
        Quantiles::of(&mut base),
        Quantiles::of(&mut cmd),
        Quantiles::of(&mut exchange),
    )
}

/// Prints the target (a figure) and the guard; true if the guard holds.
fn judge(b: &Quantiles, h: &Quantiles) -> bool {
    let ratio = h.p50.as_secs_f64() / b.p50.as_secs_f64();
    let under = h.p50 < TARGET;
    println!(
        "  {} health p50 {:.2} ms (target under {} ms, issue 13)",
        if under { "PASS" } else { "MISS" },
        h.p50.as_secs_f64() * 1000.0,
        TARGET.as_millis()
    );
    let ok = ratio <= MAX_RATIO;
    println!(
        "  {} health / baseline p50 = {ratio:.2} (guard: at most {MAX_RATIO})",
        if ok { "PASS" } else { "MISS" }
    );
    ok
}

fn fail(msg: &str) -> ! {
    eprintln!("health bench: {msg}");
    std::process::exit(2);
}

/// Runs `cmd` to its exit, which must be 0; its wall time.
fn time_command(mut cmd: Command) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let st = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("run charon: {e}")));
    let elapsed = t.elapsed();
    if !st.success() {
        fail(&format!("{cmd:?} exited {st}"));
    }
    elapsed
}

/// One control exchange on a fresh connection; its wall time.
fn time_exchange(d: &Daemon) -> Duration {
    let t = Instant::now();
    let mut s = UnixStream::connect(d.run.join("charond.sock"))
        .unwrap_or_else(|e| fail(&format!("connect: {e}")));
    s.write_all(b"{\"cmd\":\"health\"}\n")
        .unwrap_or_else(|e| fail(&format!("write: {e}")));
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .unwrap_or_else(|e| fail(&format!("read: {e}")));
    let elapsed = t.elapsed();
    if !line.contains("\"healthy\":true") {
        fail(&format!("charond says: {line}"));
    }
    elapsed
}

struct Quantiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Quantiles {
    fn of(v: &mut [Duration]) -> Quantiles {
        v.sort_unstable();
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Quantiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_micros();
        write!(
            f,
            "p50 {:>6}  p90 {:>6}  p99 {:>6}  max {:>6}",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max)
        )
    }
}
