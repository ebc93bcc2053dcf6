//! Finding a service: the run dir, the socket path a key resolves to, and
//! the non-blocking connect that tells found, stale, overloaded and missing
//! apart.
//!
//! What happens on the connection afterwards is left to the exchange.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use charon_protocol::{ServiceKey, SOCKET_SUFFIX};
use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::os::fd::AsRawFd;

use crate::error::{Error, ErrorKind};

/// The environment variable that names the run dir.
pub const RUN_DIR_ENV: &str = "CHARON_RUN_DIR";

/// The run dir to use when none is given: `$CHARON_RUN_DIR`, else
/// `/run/charon` for root, else `$XDG_RUNTIME_DIR/charon`, else
/// `/tmp/charon-$UID`.
#[must_use]
pub fn default_run_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/charon");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("charon");
    }
    PathBuf::from(format!("/tmp/charon-{uid}"))
}

/// Where a key's request would go: the first of the key and its wildcard
/// whose socket file exists in `run_dir`, or `None`.
///
/// This only looks at the file system; it does not check that anyone
/// listens (see [`crate::Client::call`] for that).
#[must_use]
pub fn resolve(run_dir: &Path, key: &ServiceKey) -> Option<PathBuf> {
    key.lookup_order()
        .iter()
        .map(|k| run_dir.join(k.socket_file_name()))
        .find(|p| p.exists())
}

/// Opens a non-blocking connection to the service for `key` (already
/// checked against the key rules), trying the exact key, then its wildcard.
///
/// A missing socket (ENOENT) or one nobody listens on (ECONNREFUSED) falls
/// through to the next candidate; a full backlog (EAGAIN on the
/// non-blocking connect) is [`ErrorKind::Overloaded`] at once. The wildcard
/// is only worked out when the exact key has no listener, so the common
/// path costs one path allocation.
pub(crate) fn connect_key(run_dir: &Path, key: &str) -> Result<UnixStream, Error> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::with_key(Error::io("create a socket", e.into()), key))?;
    let mut stale = None;
    let exact = socket_path(run_dir, key);
    if try_connect(&fd, &exact, key, &mut stale)? {
        return Ok(UnixStream::from(fd));
    }
    let wildcard = ServiceKey::parse(key)
        .map_err(|e| Error::with_key(ErrorKind::InvalidKey(e), key))?
        .wildcard();
    if let Some(w) = wildcard {
        if try_connect(&fd, &socket_path(run_dir, w.as_str()), key, &mut stale)? {
            return Ok(UnixStream::from(fd));
        }
    }
    Err(Error::with_key(
        ErrorKind::NotFound {
            run_dir: run_dir.to_path_buf(),
            stale,
        },
        key,
    ))
}

fn socket_path(run_dir: &Path, key: &str) -> PathBuf {
    let mut p = PathBuf::with_capacity(run_dir.as_os_str().len() + key.len() + 8);
    p.push(run_dir);
    p.push(key);
    p.as_mut_os_string().push(SOCKET_SUFFIX);
    p
}

/// One connect attempt: `Ok(true)` connected, `Ok(false)` nobody there
/// (try the next candidate).
fn try_connect(
    fd: &OwnedFd,
    path: &Path,
    key: &str,
    stale: &mut Option<PathBuf>,
) -> Result<bool, Error> {
    let addr = UnixAddr::new(path)
        .map_err(|e| Error::with_key(Error::io("form the socket address", e.into()), key))?;
    // A failed connect leaves an AF_UNIX socket unconnected and reusable,
    // so the fallback costs no second socket(2).
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(Errno::ECONNREFUSED) => {
            stale.get_or_insert_with(|| path.to_path_buf());
            Ok(false)
        }
        Err(Errno::EAGAIN) => Err(Error::with_key(ErrorKind::Overloaded, key)),
        Err(e) => Err(Error::with_key(
            Error::io("connect to the service socket", e.into()),
            key,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_prefers_exact_then_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let key: ServiceKey = "app.fn.0.raw".parse().unwrap();
        assert_eq!(resolve(dir.path(), &key), None);
        std::fs::write(dir.path().join("app..0.raw.sock"), b"").unwrap();
        assert_eq!(
            resolve(dir.path(), &key),
            Some(dir.path().join("app..0.raw.sock"))
        );
        std::fs::write(dir.path().join("app.fn.0.raw.sock"), b"").unwrap();
        assert_eq!(
            resolve(dir.path(), &key),
            Some(dir.path().join("app.fn.0.raw.sock"))
        );
    }

    #[test]
    fn stale_socket_is_not_found_and_says_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.fn.0.raw.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let key: ServiceKey = "app.fn.0.raw".parse().unwrap();
        let err = connect_key(dir.path(), key.as_str()).unwrap_err();
        match err.kind() {
            ErrorKind::NotFound { stale, .. } => assert_eq!(stale.as_deref(), Some(&*path)),
            other => panic!("{other:?}"),
        }
    }
}
