//! Keeping the rendezvous sockets across a restart of charond, with
//! systemd's file-descriptor store (sd_notify(3) `FDSTORE=1`,
//! systemd.service(5) `FileDescriptorStoreMax=`): each live socket is handed
//! to systemd under its service key, and at start the sockets systemd hands
//! back (`LISTEN_FDS`/`LISTEN_FDNAMES`, sd_listen_fds(3)) are taken back for
//! the keys still served instead of binding new ones. A `.socket` unit's
//! sockets (socket activation, `FileDescriptorName=` the key) come the same
//! way. Which offered socket to take is the pure `verdict`; the checks and
//! the messages are the thin shell around it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt, AddressFamily, SockType, SockaddrLike};
use sd_notify::NotifyState;

use crate::generation::Gen;
use crate::log::{info, warning};
use crate::queue::QueueProbe;
use crate::services::Services;

/// What to do with one socket offered at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve the key on it.
    Take,
    /// Close it (and drop it from systemd's store), for this reason.
    Drop(String),
}

/// The pure rule: a socket is taken when its name is a key this charond
/// serves, no socket was taken for that key already, and it is a listening
/// Unix stream socket bound to the file at the key's path (`check`).
pub(crate) fn verdict(served: bool, already: bool, check: Result<(), String>) -> Verdict {
    match (served, already, check) {
        (false, _, _) => Verdict::Drop("no config file serves this key".into()),
        (true, true, _) => Verdict::Drop("a socket for this key was taken already".into()),
        (true, false, Err(why)) => Verdict::Drop(why),
        (true, false, Ok(())) => Verdict::Take,
    }
}

/// Checks that `fd` is a listening Unix stream socket and that the socket
/// file at `path` is this very socket (not one bound later in its place).
pub(crate) fn check(
    fd: BorrowedFd<'_>,
    path: &Path,
    probe: Option<&mut QueueProbe>,
) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| format!("not a socket: {e}"))?;
    let family = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
    )
    .map_err(|e| format!("unable to read its address: {e}"))?
    .family();
    if ty != SockType::Stream || family != Some(AddressFamily::Unix) {
        return Err("not a Unix stream socket".into());
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(|e| format!("unable to ask: {e}"))? {
        return Err("not listening".into());
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("no socket file at {}: {e}", path.display()))?;
    if !meta.file_type().is_socket() {
        return Err(format!("{} is not a socket file", path.display()));
    }
    let Some(probe) = probe else {
        return Err(
            "the kernel cannot say which file the socket is bound to (no sock_diag)".into(),
        );
    };
    let ino = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("unable to stat it: {e}"))?
        .st_ino;
    let (file_ino, _) = probe
        .bound_file(ino)
        .map_err(|e| format!("unable to ask which file it is bound to: {e}"))?;
    if u64::from(file_ino) != meta.ino() {
        return Err(format!(
            "{} is another socket (bound after this one)",
            path.display()
        ));
    }
    Ok(())
}

/// The sockets offered at start, checked against the run dir.
pub(crate) struct Offered {
    /// Sockets that passed the checks, by key.
    fit: BTreeMap<String, OwnedFd>,
    /// Keys whose offered socket was claimed.
    claimed: Vec<String>,
    /// Names of sockets already refused (closed), for FDSTOREREMOVE.
    refused: Vec<String>,
}

impl Offered {
    /// Takes the sockets passed in `LISTEN_FDS` and checks each against
    /// `<run_dir>/<name>.sock`. Nothing is decided about keys yet.
    pub(crate) fn take(run_dir: &Path) -> Offered {
        let mut o = Offered {
            fit: BTreeMap::new(),
            claimed: Vec::new(),
            refused: Vec::new(),
        };
        let fds = match crate::sys::take_listen_fds() {
            Ok(fds) => fds,
            Err(e) => {
                warning!(None, None, "unable to take the sockets systemd passed: {e}");
                return o;
            }
        };
        let mut probe = QueueProbe::new().ok();
        for (name, fd) in fds {
            let path = run_dir.join(format!("{name}.sock"));
            let ok = if name.contains('/') || name.is_empty() {
                Err("its name is not a service key".to_string())
            } else {
                check(fd.as_fd(), &path, probe.as_mut())
            };
            match verdict(true, o.fit.contains_key(&name), ok) {
                Verdict::Take => {
                    o.fit.insert(name, fd);
                }
                Verdict::Drop(why) => {
                    warning!(
                        Some(&name),
                        None,
                        "unable to take back the socket systemd passed: {why}; closing it"
                    );
                    o.refused.push(name);
                }
            }
        }
        o
    }

    /// The socket files to keep when clearing the run dir of stale ones.
    pub(crate) fn paths(&self, run_dir: &Path) -> Vec<PathBuf> {
        self.fit
            .keys()
            .map(|k| run_dir.join(format!("{k}.sock")))
            .collect()
    }

    /// The socket offered for `key`, if one fits.
    pub(crate) fn claim(&mut self, key: &str) -> Option<OwnedFd> {
        let fd = self.fit.remove(key)?;
        self.claimed.push(key.to_string());
        Some(fd)
    }

    /// Closes what no key claimed (removing its file: no key is served
    /// there), drops those from systemd's store, and notes the keys served
    /// on a socket systemd passed.
    pub(crate) fn settle(self, run_dir: &Path, store: &mut FdStore) {
        for name in self.refused {
            store.remove(&name);
        }
        store.passed.extend(self.claimed);
        for (name, fd) in self.fit {
            if let Verdict::Drop(why) = verdict(false, false, Ok(())) {
                info!(
                    Some(&name),
                    None, "{why}: closing the socket systemd passed"
                );
            }
            drop(fd);
            let _ = std::fs::remove_file(run_dir.join(format!("{name}.sock")));
            store.remove(&name);
        }
    }
}

/// systemd's fd store, when the unit may have one: `NOTIFY_SOCKET` is set
/// and `FDSTORE` (set by systemd 254 and later from
/// `FileDescriptorStoreMax=`) is above 0 or absent (an older systemd does
/// not say; a socket it does not keep is only closed on its side).
pub(crate) struct FdStore {
    max: usize,
    /// Keys whose socket systemd holds in the store.
    held: BTreeSet<String>,
    /// Keys served on the socket systemd passed at start (a `.socket`
    /// unit's, or the store's), not replaced since.
    passed: BTreeSet<String>,
    warned: bool,
}

impl FdStore {
    pub(crate) fn from_env() -> FdStore {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let max = match std::env::var("FDSTORE") {
            Ok(v) => v.parse().unwrap_or(0),
            Err(_) => usize::MAX,
        };
        FdStore {
            max: if notify { max } else { 0 },
            held: BTreeSet::new(),
            passed: BTreeSet::new(),
            warned: false,
        }
    }

    /// A store that holds `key`'s socket as if systemd had passed it
    /// (tests of the loop; nothing is sent).
    #[cfg(test)]
    pub(crate) fn passed(key: &str) -> FdStore {
        FdStore {
            max: 0,
            held: BTreeSet::new(),
            passed: BTreeSet::from([key.to_string()]),
            warned: false,
        }
    }

    /// True when systemd holds `key`'s socket: its file must outlive
    /// charond.
    pub(crate) fn holds(&self, key: &str) -> bool {
        self.held.contains(key) || self.passed.contains(key)
    }

    /// Hands `fd` to systemd as `key`'s socket, replacing the one held (or
    /// the one systemd passed at start: it is no longer `key`'s).
    pub(crate) fn store(&mut self, key: &str, fd: BorrowedFd<'_>) {
        if self.max == 0 {
            return;
        }
        if self.held.contains(key) {
            self.remove(key);
        }
        if self.held.len() >= self.max {
            self.warn(&format!(
                "unable to hand the socket of {key} to systemd: its fd store is full ({} fds; raise FileDescriptorStoreMax=)",
                self.max
            ));
            return;
        }
        match sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(key)], &[fd]) {
            Ok(()) => {
                self.held.insert(key.to_string());
            }
            Err(e) => self.warn(&format!(
                "unable to hand the socket of {key} to systemd: {e}"
            )),
        }
    }

    /// Drops `key`'s socket from systemd's store.
    pub(crate) fn remove(&mut self, key: &str) {
        self.passed.remove(key);
        if self.max == 0 {
            return;
        }
        self.held.remove(key);
        if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(key)]) {
            self.warn(&format!(
                "unable to drop the socket of {key} from systemd's store: {e}"
            ));
        }
    }

    /// Hands every live generation's socket to systemd's store
    /// (start-up: systemd ignores one it holds already).
    pub(crate) fn store_live(&mut self, services: &Services) {
        for (_, svc) in services.iter() {
            if svc.gen() == Gen::Live {
                self.store(svc.key(), svc.listen().as_fd());
            }
        }
    }

    fn warn(&mut self, msg: &str) {
        if !self.warned {
            self.warned = true;
            warning!(None, None, "{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn every_verdict() {
        let ok = || Ok(());
        let bad = || Err("not listening".to_string());
        assert_eq!(verdict(true, false, ok()), Verdict::Take);
        assert_eq!(
            verdict(false, false, ok()),
            Verdict::Drop("no config file serves this key".into())
        );
        assert_eq!(
            verdict(true, true, ok()),
            Verdict::Drop("a socket for this key was taken already".into())
        );
        assert_eq!(
            verdict(true, false, bad()),
            Verdict::Drop("not listening".into())
        );
        assert!(matches!(verdict(false, true, bad()), Verdict::Drop(_)));
    }

    #[test]
    fn check_takes_only_the_listening_socket_bound_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.b.0.raw.sock");
        let Ok(mut probe) = QueueProbe::new() else {
            return; // No sock_diag here.
        };
        let l = UnixListener::bind(&path).unwrap();
        assert_eq!(check(l.as_fd(), &path, Some(&mut probe)), Ok(()));
        // A file bound later in its place: the old socket is refused.
        std::fs::remove_file(&path).unwrap();
        let newer = UnixListener::bind(&path).unwrap();
        let e = check(l.as_fd(), &path, Some(&mut probe)).unwrap_err();
        assert!(e.contains("another socket"), "{e}");
        assert_eq!(check(newer.as_fd(), &path, Some(&mut probe)), Ok(()));
        // No file: refused.
        let gone = dir.path().join("gone.sock");
        let e = check(newer.as_fd(), &gone, Some(&mut probe)).unwrap_err();
        assert!(e.contains("no socket file"), "{e}");
        // Not listening, not a stream.
        let c = UnixStream::connect(&path).unwrap();
        assert_eq!(
            check(c.as_fd(), &path, Some(&mut probe)),
            Err("not listening".into())
        );
        let d = UnixDatagram::unbound().unwrap();
        assert_eq!(
            check(d.as_fd(), &path, Some(&mut probe)),
            Err("not a Unix stream socket".into())
        );
    }
}
