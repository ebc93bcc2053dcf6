//! Finding the processes a charond started, and getting rid of them: shared
//! by the test harness (`daemon.rs`) and the benches' (`benches/roundtrip/
//! daemon.rs` includes this file by path), so neither leaves an instance
//! behind. Instances run in process groups of their own, so they are found
//! by the `CHARON_RUN_DIR` in their environment, not by their parent.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Every process listed in /proc now: its pid and its /proc directory.
pub fn processes() -> impl Iterator<Item = (i32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            Some((pid, e.path()))
        })
}

/// Live processes whose environment names `run` as their run dir, sorted.
/// A zombie's environ reads empty, so zombies are not counted.
pub fn instances_of(run: &Path) -> Vec<i32> {
    let needle = format!("CHARON_RUN_DIR={}", run.display());
    let mut pids: Vec<i32> = processes()
        .filter(|(_, dir)| {
            std::fs::read(dir.join("environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Once charond itself is dead (so nothing restarts them), SIGKILLs every
/// instance of `run` and its process group until none is left, then waits
/// until they are gone, not just dead (orphans are reaped by init), so that
/// nothing, not even a zombie, outlives the caller. `seen` are instances
/// seen before charond died. Gives up after 10 s.
pub fn kill_instances(run: &Path, seen: Vec<i32>) {
    let mut killed = seen;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = instances_of(run);
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    while killed
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}
