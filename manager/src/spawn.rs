//! Starting one instance: resolve the program, build its environment and
//! limits, create its stderr pipe and report channel, and hand the prepared
//! plan to `sys::spawn` (which clones and execs). Policy (when and how many)
//! is left to the service transitions; the clone itself to `sys`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use charon_protocol::managed;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use crate::config::ServiceConfig;
use crate::sys::{self, ChildFds, ChildPlan};

/// `PATH` given to instances when the manager has none.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What one launch needs beyond the service config.
pub(crate) struct Launch<'a> {
    pub config: &'a ServiceConfig,
    pub config_dir: &'a Path,
    pub run_dir: &'a Path,
    pub slot: u32,
    pub listen: &'a OwnedFd,
    pub scoreboard: &'a OwnedFd,
    pub devnull: &'a OwnedFd,
    /// Start the service's template (PROTOCOL.md section 10.4): no slot,
    /// `CHARON_TEMPLATE` set, and fd 5 its control channel, which comes
    /// back as [`Spawned::report`].
    pub template: bool,
}

/// A started instance's manager-side fds.
pub(crate) struct Spawned {
    pub pid: i32,
    /// Read end of the instance's stderr pipe (non-blocking).
    pub stderr: OwnedFd,
    /// Manager end of the report channel (non-blocking); a template's
    /// control channel.
    pub report: OwnedFd,
}

/// Finds the program: a path with a `/` is taken as written (relative to
/// the config dir); a bare name is looked up in `PATH`, then beside the
/// `charond` executable. Returns the name as written when nothing matches,
/// so that exec fails in the child with the documented not-found code.
pub(crate) fn resolve_program(name: &str, config_dir: &Path, path_var: &str) -> PathBuf {
    if name.contains('/') {
        return config_dir.join(name);
    }
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let candidates = path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(own_dir);
    for dir in candidates {
        let p = dir.join(name);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return p;
        }
    }
    PathBuf::from(name)
}

fn cstring(what: &str, bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// The instance environment: `PATH`, the `CHARON_*` variables (with
/// `CHARON_ALLOWED_UIDS` / `_GIDS` only when configured), then the
/// configured `env` (which may override `PATH`). Nothing else of the
/// manager's environment is passed on.
pub(crate) fn environment(l: &Launch<'_>, path_var: &str) -> Vec<(String, String)> {
    let c = l.config;
    let slot_or_template = if l.template {
        (managed::ENV_TEMPLATE.to_string(), "1".to_string())
    } else {
        (managed::ENV_SLOT.to_string(), l.slot.to_string())
    };
    let mut env = vec![
        ("PATH".to_string(), path_var.to_string()),
        slot_or_template,
        (
            managed::ENV_SERVICE_KEY.to_string(),
            c.key.as_str().to_string(),
        ),
        (
            managed::ENV_RUN_DIR.to_string(),
            l.run_dir.to_string_lossy().into_owned(),
        ),
        (
            managed::ENV_AFFINITY_TIMEOUT_MS.to_string(),
            c.affinity_timeout.as_millis().to_string(),
        ),
        (
            managed::ENV_READ_TIMEOUT_MS.to_string(),
            c.read_timeout.as_millis().to_string(),
        ),
        (
            managed::ENV_DRAIN_TIMEOUT_MS.to_string(),
            c.stop_grace.as_millis().to_string(),
        ),
    ];
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if let Some(uids) = &c.allowed_uids {
        env.push((managed::ENV_ALLOWED_UIDS.to_string(), list(uids)));
    }
    if let Some(gids) = &c.allowed_gids {
        env.push((managed::ENV_ALLOWED_GIDS.to_string(), list(gids)));
    }
    for (k, v) in &c.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

fn plan(l: &Launch<'_>) -> io::Result<ChildPlan> {
    let c = l.config;
    let path_var = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    let first = c
        .exec
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "exec is empty"))?;
    let program = resolve_program(first, l.config_dir, &path_var);
    if nix::unistd::geteuid().is_root() {
        check_program_owner(&program)?;
    }
    let mut argv = Vec::with_capacity(c.exec.len());
    for a in &c.exec {
        argv.push(cstring("exec", a.as_bytes())?);
    }
    let mut envp = Vec::new();
    for (k, v) in environment(l, &path_var) {
        envp.push(cstring("env", format!("{k}={v}").as_bytes())?);
    }
    let cwd_path = match &c.cd {
        Some(d) => l.config_dir.join(d),
        None => l.config_dir.to_path_buf(),
    };
    let mut rlimits = Vec::new();
    if let Some(ms) = c.ulimit_cpu_milliseconds {
        rlimits.push((libc::RLIMIT_CPU, ms.div_ceil(1000).max(1)));
    }
    if let Some(b) = c.ulimit_data_memory {
        rlimits.push((libc::RLIMIT_DATA, b));
    }
    if let Some(n) = c.ulimit_open_files {
        rlimits.push((libc::RLIMIT_NOFILE, n));
    }
    Ok(ChildPlan {
        path: cstring("exec", program.as_os_str().as_bytes())?,
        argv,
        envp,
        cwd: Some(cstring("cd", cwd_path.as_os_str().as_bytes())?),
        rlimits,
        ids: ids(c)?,
        manager_pid: std::process::id() as i32,
        max_signal: libc::SIGRTMAX(),
    })
}

/// As sshd's StrictModes: a root manager refuses to run a program that
/// another user could replace, that is one not owned by root or writable by
/// group or others, or in such a directory (unless it is sticky, as /tmp
/// is). A program that does not exist is left to exec, which reports it.
fn check_program_owner(program: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |what: &Path, why: &str| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to run {} as root: {} {why}; it must be owned by root and \
                 writable by its owner only",
                program.display(),
                what.display()
            ),
        )
    };
    let Ok(meta) = std::fs::metadata(program) else {
        return Ok(());
    };
    let unsafe_dir = |m: &std::fs::Metadata| m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
    if meta.uid() != 0 {
        return Err(refuse(program, &format!("is owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(
            program,
            &format!(
                "has mode {:04o} (writable by group or others)",
                meta.mode() & 0o7777
            ),
        ));
    }
    if let Some(dir) = program.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dm) = std::fs::metadata(dir) {
            if dm.uid() != 0 {
                return Err(refuse(
                    dir,
                    &format!("(its directory) is owned by uid {}", dm.uid()),
                ));
            }
            if unsafe_dir(&dm) {
                return Err(refuse(
                    dir,
                    &format!(
                        "(its directory) has mode {:04o} (writable by group or others)",
                        dm.mode() & 0o7777
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// uid/gid/groups to switch to: only when the manager runs as root and the
/// config names a user or group.
fn ids(c: &ServiceConfig) -> io::Result<Option<(u32, u32, Vec<u32>)>> {
    if !nix::unistd::geteuid().is_root() || (c.user.is_none() && c.group.is_none()) {
        return Ok(None);
    }
    let not_found = |what: &str, name: &str| {
        io::Error::new(io::ErrorKind::NotFound, format!("no such {what} {name:?}"))
    };
    let user = match &c.user {
        Some(u) => Some(nix::unistd::User::from_name(u)?.ok_or_else(|| not_found("user", u))?),
        None => None,
    };
    let gid = match (&c.group, &user) {
        (Some(g), _) => {
            nix::unistd::Group::from_name(g)?
                .ok_or_else(|| not_found("group", g))?
                .gid
        }
        (None, Some(u)) => u.gid,
        (None, None) => nix::unistd::getegid(),
    };
    let uid = user.as_ref().map_or(nix::unistd::geteuid(), |u| u.uid);
    let groups = match &user {
        Some(u) => {
            let name = cstring("user", u.name.as_bytes())?;
            nix::unistd::getgrouplist(&name, gid)?
                .into_iter()
                .map(|g| g.as_raw())
                .collect()
        }
        None => vec![gid.as_raw()],
    };
    Ok(Some((uid.as_raw(), gid.as_raw(), groups)))
}

/// How the event loop starts and signals instances: the seam that lets the
/// loop's bookkeeping (slots, exits, backoff, fast fail, shutdown) be tested
/// with a recording stand-in instead of real processes.
pub(crate) trait Spawner {
    /// Starts one instance.
    ///
    /// # Errors
    ///
    /// The instance could not be started.
    fn spawn(&mut self, l: &Launch<'_>) -> io::Result<Spawned>;

    /// Signals the instance `pid` (not yet reaped) and what it forked.
    fn signal(&mut self, pid: i32, sig: Signal);

    /// The manager's children now, instances or not (`orphans.rs`).
    fn children(&self) -> Vec<i32> {
        children()
    }
}

/// The real thing: clone and exec.
pub(crate) struct ForkExec;

impl Spawner for ForkExec {
    fn spawn(&mut self, l: &Launch<'_>) -> io::Result<Spawned> {
        spawn(l)
    }

    /// Signals the process group, falling back to the pid while the child
    /// has not made its group yet. The caller only passes pids it has not
    /// reaped, so the pid cannot have been reused.
    fn signal(&mut self, pid: i32, sig: Signal) {
        if kill(Pid::from_raw(-pid), sig).is_err() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Starts one instance.
///
/// # Errors
///
/// Preparing the plan (a NUL in exec/env, an unknown user) or creating the
/// pipe, socketpair or clone.
pub(crate) fn spawn(l: &Launch<'_>) -> io::Result<Spawned> {
    let plan = plan(l)?;
    let ((err_r, err_w), (rep_m, rep_c)) = channels()?;
    let fds = ChildFds {
        fds: [
            l.devnull.as_fd(),
            l.devnull.as_fd(),
            err_w.as_fd(),
            l.listen.as_fd(),
            l.scoreboard.as_fd(),
            rep_c.as_fd(),
        ],
    };
    debug_assert_eq!(managed::LISTEN_FD, 3);
    debug_assert_eq!(managed::SCOREBOARD_FD, 4);
    debug_assert_eq!(managed::REPORT_FD, 5);
    let pid = sys::spawn(&plan, &fds)?;
    Ok(Spawned {
        pid,
        stderr: err_r,
        report: rep_m,
    })
}

/// An instance's stderr pipe and report channel: the manager's ends
/// (non-blocking) and the instance's (blocking).
fn channels() -> io::Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd))> {
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // The child's end must block: only our end is non-blocking. pipe2 sets
    // O_NONBLOCK on both, so clear it on the write end.
    nix::fcntl::fcntl(&err_w, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
    crate::stderr::enlarge_pipe(&err_r);
    let (rep_m, rep_c) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(&rep_m, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(((err_r, err_w), (rep_m, rep_c)))
}

/// Asks a READY template (its control channel, non-blocking) to fork the
/// instance for `slot`: makes the instance's stderr pipe and report
/// channel as [`spawn`] does, sends their instance ends with the START,
/// and returns the manager's ends. Never waits: a full channel is an
/// error (`EAGAIN`), and the caller starts the instance by exec instead.
///
/// # Errors
///
/// Creating the pipe or socketpair, or sending.
pub(crate) fn start_via_template(control: &OwnedFd, slot: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    use charon_protocol::template::{encode_command, Command};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let ((err_r, err_w), (rep_m, rep_c)) = channels()?;
    let msg = encode_command(Command::Start { slot });
    let fds = [err_w.as_raw_fd(), rep_c.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(&msg)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        match sendmsg::<()>(control.as_raw_fd(), &iov, &cmsg, flags, None) {
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok((err_r, rep_m)),
        }
    }
}

/// charond's children, from its main thread's `children` file (instances
/// are started and orphans re-parented there). Empty where the kernel lacks
/// the file.
fn children() -> Vec<i32> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_slash_paths_against_config_dir() {
        let p = resolve_program("bin/x", Path::new("/etc/charon"), "/usr/bin");
        assert_eq!(p, PathBuf::from("/etc/charon/bin/x"));
        let p = resolve_program("/bin/false", Path::new("/etc/charon"), "");
        assert_eq!(p, PathBuf::from("/bin/false"));
    }

    #[test]
    fn resolves_bare_names_in_path_or_keeps_them() {
        let p = resolve_program("sh", Path::new("/x"), "/nonexistent:/bin:/usr/bin");
        assert!(p.ends_with("sh") && p.is_absolute(), "{p:?}");
        let p = resolve_program("no-such-program-xyz", Path::new("/x"), "/bin");
        assert_eq!(p, PathBuf::from("no-such-program-xyz"));
    }
}
