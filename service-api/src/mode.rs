//! Choosing how the service runs, from the environment and the inherited
//! fds, and setting up that mode's endpoints: managed (fds 3, 4 and 5 from
//! the manager), accept mode (a socket we bind, `bind.rs`), or standalone (one request
//! on fd 3, its response to fd 4).
//!
//! Serving requests over the endpoints is left to `service.rs`.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use charon_protocol::managed::{
    CONTROL_FD, ENV_ACCEPT_SOCKET, ENV_SLOT, ENV_TEMPLATE, LISTEN_FD, REPORT_FD, SCOREBOARD_FD,
    STANDALONE_REQUEST_FD, STANDALONE_RESPONSE_FD,
};
use charon_protocol::scoreboard::{Scoreboard, SlotState};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

use crate::bind::{bind, Bound};
use crate::error::{Error, ErrorKind};
use crate::managed::{check_report_fd, Managed};
use crate::sys;
use crate::template::Template;

/// How this process is being run. The program never needs to know; it is
/// exposed for logs and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Started by the manager with the arranged fds (`CHARON_SLOT` is set),
    /// or forked by the service's template (`CHARON_TEMPLATE` is set: the
    /// process is the template until its first `next_request`, which
    /// returns only in the instances it forks).
    Managed,
    /// Listening on `CHARON_ACCEPT_SOCKET` itself.
    Accept,
    /// One request from fd 3, its response to fd 4.
    Standalone,
}

/// Where requests come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A listening socket (managed and accept mode).
    Listener(UnixListener),
    /// Standalone mode's two fds.
    Standalone {
        /// fd 3, read to the end of one frame.
        input: File,
        /// fd 4, written once.
        output: File,
    },
}

/// A mode, set up.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) mode: Mode,
    pub(crate) source: Source,
    pub(crate) managed: Option<Managed>,
    pub(crate) bound: Option<Bound>,
    /// A template's endpoints, until its first `next_request` forks.
    pub(crate) template: Option<Template>,
}

/// Chooses the mode and sets it up. The caller has claimed the process
/// (`sys::claim_process`), which makes adopting fds 3-5 sound.
pub(crate) fn setup(env: &dyn Fn(&str) -> Option<String>) -> Result<Setup, Error> {
    if let Some(slot) = env(ENV_SLOT) {
        return managed(&slot);
    }
    if env(ENV_TEMPLATE).is_some() {
        return template();
    }
    if let Some(path) = env(ENV_ACCEPT_SOCKET) {
        return accept(Path::new(&path));
    }
    if sys::fd_is_open(STANDALONE_REQUEST_FD) && sys::fd_is_open(STANDALONE_RESPONSE_FD) {
        let input = File::from(adopt(STANDALONE_REQUEST_FD, "open (the request)")?);
        let output = File::from(adopt(STANDALONE_RESPONSE_FD, "open (for the response)")?);
        return Ok(Setup {
            mode: Mode::Standalone,
            source: Source::Standalone { input, output },
            managed: None,
            bound: None,
            template: None,
        });
    }
    Err(Error::new(ErrorKind::NoMode))
}

fn adopt(fd: i32, expected: &'static str) -> Result<OwnedFd, Error> {
    sys::adopt_fd(fd).map_err(|e| {
        Error::new(ErrorKind::BadFd {
            fd,
            expected,
            found: format!("unusable ({e})"),
        })
    })
}

/// The listener (fd 3) and the scoreboard (fd 4), adopted and checked.
fn listener_and_scoreboard() -> Result<(UnixListener, Scoreboard, OwnedFd), Error> {
    const LISTEN: &str = "a listening AF_UNIX stream socket (the rendezvous socket)";
    let listen = adopt(LISTEN_FD, LISTEN)?;
    check_listener(listen.as_fd(), LISTEN_FD)?;
    let sb_fd = adopt(SCOREBOARD_FD, "the scoreboard memfd")?;
    let scoreboard = sys::map_scoreboard(sb_fd.as_fd()).map_err(|e| {
        Error::new(ErrorKind::BadFd {
            fd: SCOREBOARD_FD,
            expected: "the scoreboard memfd",
            found: format!("not a scoreboard ({e})"),
        })
    })?;
    let listener = UnixListener::from(listen);
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("make the rendezvous socket non-blocking", e))?;
    Ok((listener, scoreboard, sb_fd))
}

/// Fd 5: a `SOCK_SEQPACKET` socket, the report (or a template's control)
/// channel.
fn seqpacket(fd: i32, what: &'static str) -> Result<OwnedFd, Error> {
    let owned = adopt(fd, what)?;
    match check_report_fd(owned.as_fd()) {
        Ok(true) => Ok(owned),
        Ok(false) => Err(bad_fd(fd, what, "another kind of socket".into())),
        Err(e) => Err(bad_fd(fd, what, format!("not a socket ({e})"))),
    }
}

fn managed(slot_text: &str) -> Result<Setup, Error> {
    let slot: u32 = slot_text.trim().parse().map_err(|_| {
        Error::new(ErrorKind::BadEnv {
            var: ENV_SLOT,
            value: slot_text.to_string(),
            expected: "a scoreboard slot index (a whole number)",
        })
    })?;
    let (listener, scoreboard, sb_fd) = listener_and_scoreboard()?;
    if slot >= scoreboard.slot_count() {
        return Err(Error::new(ErrorKind::BadEnv {
            var: ENV_SLOT,
            value: slot_text.to_string(),
            expected: "below the scoreboard's slot count",
        }));
    }
    let report = seqpacket(REPORT_FD, "a SOCK_SEQPACKET socket (the report channel)")?;
    sys::watch_manager().map_err(|e| Error::io("open /dev/null for after the manager", e))?;
    let managed = managed_part(scoreboard, sb_fd, slot, report)?;
    Ok(Setup {
        mode: Mode::Managed,
        source: Source::Listener(listener),
        managed: Some(managed),
        bound: None,
        template: None,
    })
}

/// An instance's scoreboard slot and report channel, marked starting.
pub(crate) fn managed_part(
    scoreboard: Scoreboard,
    sb_fd: OwnedFd,
    slot: u32,
    report: OwnedFd,
) -> Result<Managed, Error> {
    let managed = Managed::new(scoreboard, sb_fd, slot, report);
    managed
        .flush_at_exit()
        .map_err(|e| Error::io("register the exit hook for the report channel", e))?;
    managed.set_state(SlotState::Starting);
    Ok(managed)
}

/// A template: the listener and scoreboard as an instance's, a control
/// channel at fd 5, no slot (`template.rs`).
fn template() -> Result<Setup, Error> {
    let (listener, scoreboard, sb_fd) = listener_and_scoreboard()?;
    let control = seqpacket(CONTROL_FD, "a SOCK_SEQPACKET socket (the control channel)")?;
    sys::watch_manager().map_err(|e| Error::io("open /dev/null for after the manager", e))?;
    Ok(Setup {
        mode: Mode::Managed,
        source: Source::Listener(listener),
        managed: None,
        bound: None,
        template: Some(Template::new(scoreboard, sb_fd, control)),
    })
}

fn bad_fd(fd: i32, expected: &'static str, found: String) -> Error {
    Error::new(ErrorKind::BadFd {
        fd,
        expected,
        found,
    })
}

fn check_listener(fd: BorrowedFd<'_>, n: i32) -> Result<(), Error> {
    const WHAT: &str = "a listening AF_UNIX stream socket (the rendezvous socket)";
    let kind = getsockopt(&fd, sockopt::SockType)
        .map_err(|e| bad_fd(n, WHAT, format!("not a socket ({e})")))?;
    if kind != SockType::Stream {
        return Err(bad_fd(n, WHAT, format!("a {kind:?} socket")));
    }
    let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .ok()
        .and_then(|a| a.family());
    if family != Some(AddressFamily::Unix) {
        return Err(bad_fd(n, WHAT, format!("a socket of family {family:?}")));
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn)
        .map_err(|e| bad_fd(n, WHAT, format!("unreadable ({e})")))?;
    if !listening {
        return Err(bad_fd(n, WHAT, "a socket that is not listening".into()));
    }
    Ok(())
}

/// Accept mode: a socket of our own at `path` (`bind.rs`).
fn accept(path: &Path) -> Result<Setup, Error> {
    let (listener, bound) = bind(path)?;
    listener.set_nonblocking(true).map_err(|e| {
        Error::new(ErrorKind::Socket {
            path: path.to_path_buf(),
            reason: format!("cannot make it non-blocking: {e}"),
        })
    })?;
    Ok(Setup {
        mode: Mode::Accept,
        source: Source::Listener(listener),
        managed: None,
        bound: Some(bound),
        template: None,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn accept_mode_refuses_a_regular_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.sock");
        std::fs::write(&p, b"precious").unwrap();
        let err = accept(&p).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn accept_mode_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(UnixListener::bind(&p).unwrap());
        assert!(p.exists());
        let setup = accept(&p).unwrap();
        assert_eq!(setup.mode, Mode::Accept);
        let err = accept(&p).unwrap_err().to_string();
        assert!(err.contains("another process is listening"), "{err}");
        drop(setup);
        assert!(!p.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn listener_checks_name_what_is_wrong() {
        let (a, _b) = UnixStream::pair().unwrap();
        let err = check_listener(a.as_fd(), 3).unwrap_err().to_string();
        assert!(err.contains("not listening"), "{err}");
        let f = tempfile::tempfile().unwrap();
        let err = check_listener(f.as_fd(), 3).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }
}
