//! Start-up of the run dir: create it, take the exclusive lock that keeps a
//! second `charond` out, remove sockets a dead manager left behind, and bind
//! a service's rendezvous socket with its backlog, mode and group (and
//! remove it when the service ends). Any
//! failure here is fatal for the manager (or, for one socket, for that
//! service); the caller decides which.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use charon_protocol::scoreboard::Scoreboard;

use crate::config::ServiceConfig;
use crate::log::warning;
use crate::services::Bound;

/// Name of the lock file in the run dir.
pub(crate) const LOCK_FILE: &str = "charond.lock";

/// Creates the run dir (0755) if missing, refuses one that is not owned by
/// this manager's user or is writable by group or others (anyone who can
/// write there can put a socket in a service's place), and locks it for this
/// manager's lifetime (the lock goes when the returned value or the process
/// does).
///
/// # Errors
///
/// A message fit for the single fatal line.
pub(crate) fn lock_run_dir(run_dir: &Path) -> Result<Flock<File>, String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
        .map_err(|e| format!("unable to create run dir {}: {e}", run_dir.display()))?;
    check_run_dir(run_dir)?;
    let path = run_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("run dir {} is not writable: {e}", run_dir.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            format!(
                "another charond already runs on {} (it holds {})",
                run_dir.display(),
                path.display()
            )
        } else {
            format!("unable to lock {}: {e}", path.display())
        }
    })
}

/// The run dir must be a directory owned by the manager's user and
/// writable by it alone.
fn check_run_dir(run_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(run_dir)
        .map_err(|e| format!("unable to stat run dir {}: {e}", run_dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "run dir {} is owned by uid {}, not by charond's uid {me}: give it to charond's user \
             or choose another --run-dir",
            run_dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "run dir {} has mode {:04o}, writable by group or others, who could put their own \
             socket in a service's place: chmod go-w it (0755 is what charond creates)",
            run_dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Removes every socket in the run dir but those in `keep` (sockets
/// systemd passed back, still listening): they belong to a dead manager (we
/// hold the lock). Returns the paths removed.
pub(crate) fn remove_stale_sockets(run_dir: &Path, keep: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(run_dir)? {
        let entry = entry?;
        if entry.file_type().is_ok_and(|t| t.is_socket()) && !keep.contains(&entry.path()) {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Binds and listens at `path` (`<run-dir>/<key>.sock`, or a temporary name
/// for a reload's new generation, renamed over the key's path later) with
/// the configured backlog, mode and group. The fd is close-on-exec and
/// non-blocking (instances inherit the same open file description).
///
/// The socket is made at a private temporary name and renamed to `path`
/// only once it listens with its final mode and group, so a client never
/// finds at `path` a socket that refuses connections (bound, not yet
/// listening: it would look stale) or has the default permissions.
///
/// # Errors
///
/// A message naming the socket and the failing step.
pub(crate) fn bind_socket_at(
    c: &ServiceConfig,
    path: PathBuf,
) -> Result<(OwnedFd, PathBuf), String> {
    let what = |step: &str, e: &dyn std::fmt::Display| {
        format!("unable to {step} socket {}: {e}", path.display())
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| what("create", &e))?;
    let tmp = path.with_file_name(format!(
        ".bind{}.sock",
        BIND_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let addr = UnixAddr::new(&tmp).map_err(|e| what("name", &e))?;
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(what("replace", &e)),
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| what("bind", &e))?;
    // From here on the temporary name exists: remove it on any failure.
    let placed = finish_socket(c, &fd, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &path).map_err(|e| format!("renaming into place failed: {e}"))
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(what("set up", &e));
    }
    Ok((fd, path))
}

/// Names of temporary sockets, unique within this manager (one manager per
/// run dir: the lock).
static BIND_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Listen, non-blocking, mode and group for a socket bound at `tmp`.
fn finish_socket(c: &ServiceConfig, fd: &OwnedFd, path: &Path) -> Result<(), String> {
    let what = |step: &str, e: &dyn std::fmt::Display| format!("{step} failed: {e}");
    let backlog = Backlog::new(i32::try_from(c.listen_backlog).unwrap_or(i32::MAX))
        .map_err(|e| what("setting the backlog", &e))?;
    listen(fd, backlog).map_err(|e| what("listen", &e))?;
    // Non-blocking for everyone sharing it: the manager's own accept (fast
    // fail) must never block on a connection an instance took first, and
    // the service library waits in epoll anyway.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| what("making it non-blocking", &e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(c.socket_mode))
        .map_err(|e| what("chmod", &e))?;
    if let Some(g) = &c.socket_group {
        let group = nix::unistd::Group::from_name(g)
            .map_err(|e| what("looking up the group", &e))?
            .ok_or_else(|| what("setting the group", &format!("no such group {g:?}")))?;
        nix::unistd::chown(path, None, Some(group.gid)).map_err(|e| what("chown", &e))?;
    }
    Ok(())
}

/// Extra slots beyond `maximum-processes`, for replacements that start
/// before the instance they replace has left.
fn slot_count(max: u32) -> u32 {
    max.saturating_add((max / 4).max(4))
        .min(charon_protocol::scoreboard::MAX_SLOTS)
}

/// Binds a generation's socket at `path` and creates its scoreboard.
///
/// # Errors
///
/// A message naming the failing step; nothing is left behind.
pub(crate) fn bind_generation(c: ServiceConfig, path: PathBuf) -> Result<Bound, String> {
    let (listen, sock_path) = bind_socket_at(&c, path)?;
    with_scoreboard(c, listen, sock_path)
}

/// A generation on a socket systemd passed back, already bound and
/// listening at `path`: its backlog, mode and group are set again from the
/// config (they may have changed across the restart).
///
/// # Errors
///
/// A message naming the failing step; the socket is closed, its file kept.
pub(crate) fn adopt_generation(
    c: ServiceConfig,
    listen: OwnedFd,
    path: PathBuf,
) -> Result<Bound, String> {
    finish_socket(&c, &listen, &path)
        .map_err(|e| format!("unable to set up socket {}: {e}", path.display()))?;
    with_scoreboard(c, listen, path)
}

fn with_scoreboard(c: ServiceConfig, listen: OwnedFd, sock_path: PathBuf) -> Result<Bound, String> {
    let name = std::ffi::CString::new(format!("charon-{}", c.key.as_str())).unwrap_or_default();
    match Scoreboard::create(&name, slot_count(c.maximum_processes)) {
        Ok(board) => Ok(Bound::new(c, (listen, sock_path), board)),
        Err(e) => {
            let _ = std::fs::remove_file(&sock_path);
            Err(format!("unable to create scoreboard: {e}"))
        }
    }
}

/// `/dev/null`, for instances' stdin and stdout.
pub(crate) fn devnull() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")?,
    ))
}

/// Removes a service's socket file as it ends; one already gone is no
/// error, any other failure is logged.
pub(crate) fn remove_socket(path: &Path, key: &str) {
    // A draining generation's path was handed to its successor.
    if path.as_os_str().is_empty() {
        return;
    }
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warning!(
                Some(key),
                None,
                "unable to remove socket {}: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_dir_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let _held = lock_run_dir(&run).unwrap();
        let err = lock_run_dir(&run).unwrap_err();
        assert!(err.contains("another charond already runs"), "{err}");
    }

    #[test]
    fn a_run_dir_writable_by_others_is_refused_and_a_new_one_is_0755() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        drop(lock_run_dir(&run).unwrap());
        let mode = std::fs::metadata(&run).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = lock_run_dir(&run).unwrap_err();
        assert!(
            err.contains("mode 1777, writable by group or others"),
            "{err}"
        );
    }

    #[test]
    fn stale_sockets_are_removed_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.b.0.raw.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
        let removed = remove_stale_sockets(dir.path(), &[]).unwrap();
        assert_eq!(removed, std::slice::from_ref(&sock));
        assert!(!sock.exists());
        assert!(dir.path().join("keep.txt").exists());
    }
}
