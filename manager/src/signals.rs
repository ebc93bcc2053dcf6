//! SIGCHLD, SIGHUP, SIGTERM, SIGINT and SIGUSR1 as one signalfd in the event loop's
//! poll (the signals are blocked, so they arrive only through the fd).
//! SIGPIPE is ignored: a client that went away must not kill the manager.
//! What each signal means is the loop's business.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the manager handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    Child,
    Hangup,
    Terminate,
    /// SIGUSR1: reopen the log file (after logrotate renamed it).
    Reopen,
}

/// The signalfd.
pub(crate) struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals, ignores SIGPIPE and opens the fd. Must
    /// run before any instance is forked (children reset the mask
    /// themselves before exec).
    ///
    /// # Errors
    ///
    /// The failing system call's error.
    pub(crate) fn new() -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGHUP,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
        ] {
            set.add(s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        crate::sys::ignore_sigpipe()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// The raw fd, for registration.
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Drains pending signals.
    pub(crate) fn drain(&mut self) -> Vec<Sig> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            let s = match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => Sig::Child,
                Ok(Signal::SIGHUP) => Sig::Hangup,
                Ok(Signal::SIGTERM | Signal::SIGINT) => Sig::Terminate,
                Ok(Signal::SIGUSR1) => Sig::Reopen,
                _ => continue,
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
