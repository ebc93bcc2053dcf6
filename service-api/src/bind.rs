//! Putting accept mode's socket in place at `CHARON_ACCEPT_SOCKET`'s path
//! without a moment where a client finds nothing there: the socket is bound
//! and listening at a temporary name in the same directory, then renamed
//! over the path (one atomic step), and its file is removed when the
//! service leaves if it is still ours ([`Bound`]).
//!
//! What may be replaced is decided as before: nothing (the path is free)
//! or a stale socket (nobody listens); a live socket or a file that is not
//! a socket is refused and kept. Two services starting on the same path at
//! once take turns: each holds an exclusive `flock(2)` on the directory
//! from its check to its rename, so the second finds the first's socket
//! live. Choosing the mode is `mode.rs`.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, ErrorKind};

/// The longest path a Unix socket address holds (`sun_path`, 108 bytes
/// with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// An accept-mode socket file, removed on drop if it is still ours.
#[derive(Debug)]
pub(crate) struct Bound {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Another process may have replaced the file since: remove only the
        // inode we bound.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path`, replacing a stale socket there
/// atomically; a live socket or a file that is not a socket is refused and
/// left as it was. No temporary file is left behind, whatever the outcome.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, Bound), Error> {
    let fail = |reason: String| {
        Error::new(ErrorKind::Socket {
            path: path.to_path_buf(),
            reason,
        })
    };
    if path.as_os_str().is_empty() {
        return Err(fail(
            "CHARON_ACCEPT_SOCKET is empty; set it to a socket path".into(),
        ));
    }
    let temp_name = temp_path(path);
    if temp_name.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(fail(format!(
            "too long: its temporary name {} must fit in a socket address \
             ({MAX_SOCKET_PATH} bytes)",
            temp_name.display()
        )));
    }
    let _turn = take_turn(path);
    check_replaceable(path).map_err(fail)?;
    let temp = Temp(temp_name);
    let listener = temp
        .bind()
        .map_err(|e| fail(format!("cannot listen there: {e}")))?;
    std::fs::rename(&temp.0, path).map_err(|e| fail(format!("cannot listen there: {e}")))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
    let bound = Bound {
        path: path.to_path_buf(),
        dev: m.dev(),
        ino: m.ino(),
    };
    Ok((listener, bound))
}

/// Refuses what must not be replaced at `path`: a live socket, or a file
/// that is not a socket. A free path or a stale socket is fine.
fn check_replaceable(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                Err("another process is listening there; stop it or choose another path".into())
            }
            // Stale: nobody listens. The rename replaces it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("cannot tell whether it is in use: {e}")),
        },
        Ok(_) => Err("a file that is not a socket is in the way; refusing to replace it".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// How long a service waits for its turn on the directory. Another service
/// holds it for a check, a bind and a rename, well under a millisecond;
/// this bounds the wait if something else holds a lock on the directory.
const TURN_WAIT: Duration = Duration::from_secs(1);

/// An exclusive lock on `path`'s directory, held until dropped, so that
/// services starting on the same path check and replace one at a time.
/// None if the directory cannot be opened (no read permission, say) or
/// locked within [`TURN_WAIT`]: the rename is still atomic for clients;
/// only two services starting at the same instant over the same stale
/// socket could then both think they replaced it.
fn take_turn(path: &Path) -> Option<Flock<File>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut file = File::open(dir).ok()?;
    let deadline = Instant::now() + TURN_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

/// The temporary name: beside `path` (a rename does not cross file
/// systems), and this process's own (its pid), as the Python library names
/// it.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// The temporary socket file, removed on drop: after the rename nothing is
/// there any more; after a failure the socket bound there goes.
struct Temp(PathBuf);

impl Temp {
    /// Binds and listens at the temporary name, after removing what a
    /// process of the same pid may have left there.
    fn bind(&self) -> io::Result<UnixListener> {
        match std::fs::remove_file(&self.0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        UnixListener::bind(&self.0)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn no_temporary_file_is_left_on_success_or_on_any_failure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("f.sock");
        std::fs::write(&file, b"precious").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(names(d), ["f.sock"]);

        let p = d.join("s.sock");
        drop(UnixListener::bind(&p).unwrap());
        let live = bind(&p).unwrap();
        assert_eq!(names(d), ["f.sock", "s.sock"], "the stale socket replaced");
        let err = bind(&p).unwrap_err().to_string();
        assert!(err.contains("another process is listening"), "{err}");
        assert_eq!(names(d), ["f.sock", "s.sock"]);
        assert!(UnixStream::connect(&p).is_ok(), "the live socket is kept");
        drop(live);
        assert_eq!(names(d), ["f.sock"], "removed on drop");

        // The path fits in sun_path (108 bytes with its NUL) but its
        // temporary name, longer by the pid and ".tmp", does not.
        let long = d.join("x".repeat(MAX_SOCKET_PATH - d.as_os_str().len() - 1));
        let err = bind(&long).unwrap_err().to_string();
        assert!(err.contains("its temporary name"), "{err}");
        let err = bind(&d.join("no-such-dir/s.sock")).unwrap_err().to_string();
        assert!(err.contains("cannot listen there"), "{err}");
        assert_eq!(names(d), ["f.sock"]);
    }

    /// Services starting at once over one stale socket: one gets the path,
    /// the others find its socket live and refuse (none replaces another's
    /// live socket, which would leave it listening on a name nobody finds).
    #[test]
    fn of_services_starting_at_once_one_wins_and_the_others_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(UnixListener::bind(&p).unwrap());
        let start = Arc::new(Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (p, start) = (p.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    bind(&p)
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        assert_eq!(won.len(), 1, "{lost:?}");
        for e in &lost {
            let e = e.as_ref().unwrap_err().to_string();
            assert!(e.contains("another process is listening"), "{e}");
        }
        // The racers share a pid, so a temporary name too: the lock keeps
        // them apart there as well.
        assert_eq!(names(dir.path()), ["s.sock"]);
    }

    /// Something else holding a lock on the directory delays a start by
    /// at most the turn's wait, not for as long as it holds it.
    #[test]
    fn a_foreign_lock_on_the_directory_does_not_hold_a_start_forever() {
        let dir = tempfile::tempdir().unwrap();
        let held = Flock::lock(File::open(dir.path()).unwrap(), FlockArg::LockExclusive).unwrap();
        let started = Instant::now();
        let bound = bind(&dir.path().join("s.sock")).unwrap();
        assert!(started.elapsed() >= TURN_WAIT, "it waited for its turn");
        assert!(UnixStream::connect(dir.path().join("s.sock")).is_ok());
        drop((bound, held));
    }

    /// A service restarting over its predecessor's stale socket, again and
    /// again, while a client connects in a loop: the client is refused
    /// until the new socket is in place, and never finds the path empty
    /// (which a remove-then-bind shows as `NotFound`).
    #[test]
    fn a_client_never_finds_the_path_empty_while_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(UnixListener::bind(&p).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let client = thread::spawn({
            let (p, done, refused) = (p.clone(), done.clone(), refused.clone());
            move || {
                let mut connected = 0u64;
                while !done.load(Ordering::Relaxed) {
                    match UnixStream::connect(&p) {
                        Ok(_) => connected += 1,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(format!("{e} after {connected} connections")),
                    }
                }
                Ok(connected)
            }
        });
        for round in 0..200 {
            // The client is trying the stale socket when it is replaced.
            let seen = refused.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(30);
            while refused.load(Ordering::Relaxed) == seen && !client.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no client attempt"
                );
                thread::yield_now();
            }
            let (listener, bound) = bind(&p).unwrap();
            // The predecessor dies without removing its file: it goes stale.
            std::mem::forget(bound);
            drop(listener);
        }
        done.store(true, Ordering::Relaxed);
        let connected = client.join().unwrap().unwrap();
        assert_eq!(names(dir.path()), ["s.sock"], "no temporary file left");
        eprintln!("{connected} connections, none found the path empty");
    }
}
