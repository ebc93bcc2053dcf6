//! The template: a pre-initialised instance that forks the service's
//! instances on the manager's command instead of the manager exec'ing the
//! program for each (`template = true` in the service's config).
//!
//! `Service::init` sets a template up like a managed instance without a
//! slot (fd 5 is a control channel instead of a report channel). At the
//! program's first `next_request`, its own initialisation done, the
//! template checks that it runs one thread, says READY, and from then on
//! only forks: for each START (a slot, the new instance's stderr pipe and
//! report channel) it clones itself with `CLONE_PARENT`, so the instance is
//! the manager's child, and answers STARTED or FAILED. The child returns
//! from [`Template::serve`] as an ordinary managed instance; the template
//! never returns from it: it exits 0 on SIGTERM, SIGINT, SIGUSR1 or the
//! manager hanging up, and 1 if it cannot fork (more than one thread).
//!
//! Setting up the child's `Managed` part and wait set is left to `core.rs`;
//! the messages are `charon_protocol::template`; the syscalls are `sys.rs`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use charon_protocol::managed::{ENV_SLOT, ENV_TEMPLATE};
use charon_protocol::scoreboard::Scoreboard;
use charon_protocol::template::{
    decode_command, encode_reply, Command, Reply, MAX_MESSAGE_LEN, START_FDS,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::sys;

/// A template's endpoints besides the listener: the scoreboard its
/// instances will use and the control channel to the manager.
#[derive(Debug)]
pub(crate) struct Template {
    scoreboard: Scoreboard,
    scoreboard_fd: OwnedFd,
    control: OwnedFd,
}

/// What a forked instance starts with: its slot and the endpoints its
/// `Managed` part takes.
#[derive(Debug)]
pub(crate) struct Forked {
    pub(crate) scoreboard: Scoreboard,
    pub(crate) scoreboard_fd: OwnedFd,
    pub(crate) slot: u32,
    /// The report channel, at fd 5.
    pub(crate) report: OwnedFd,
}

/// What the template does with one message from the manager.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The manager hung up: exit 0.
    Leave,
    /// Fork an instance for this slot.
    Fork(u32),
    /// Refuse this start (bad fds or slot) with an errno.
    Refuse(u32, i32),
    /// Not a command: log it and carry on.
    Ignore(String),
}

/// Decides what one received message asks for; pure.
fn step(bytes: &[u8], fds: usize, slot_count: u32) -> Step {
    if bytes.is_empty() {
        return Step::Leave;
    }
    match decode_command(bytes) {
        Ok(Command::Start { slot }) if fds != START_FDS => Step::Refuse(slot, libc::EBADF),
        Ok(Command::Start { slot }) if slot >= slot_count => Step::Refuse(slot, libc::EINVAL),
        Ok(Command::Start { slot }) => Step::Fork(slot),
        Err(e) => Step::Ignore(e.to_string()),
    }
}

/// Why a process with `threads` threads cannot be a template, if it cannot.
fn not_forkable(threads: io::Result<usize>) -> Option<String> {
    match threads {
        Ok(1) => None,
        Ok(n) => Some(format!(
            "{n} threads (a template must be single-threaded when it asks for its first request)"
        )),
        Err(e) => Some(format!("cannot count its threads in /proc/self/task: {e}")),
    }
}

impl Template {
    pub(crate) fn new(scoreboard: Scoreboard, scoreboard_fd: OwnedFd, control: OwnedFd) -> Self {
        Template {
            scoreboard,
            scoreboard_fd,
            control,
        }
    }

    /// Becomes the fork server. Returns only in a forked instance (an
    /// error there is the instance's); the template itself exits here.
    /// `name` labels its stderr lines.
    pub(crate) fn serve(self, name: &str) -> io::Result<Forked> {
        if let Some(why) = not_forkable(sys::thread_count()) {
            let _ = self.reply(&Reply::NotForkable(why.clone()));
            eprintln!("{name}: template: cannot fork instances: {why}");
            std::process::exit(1);
        }
        if self.reply(&Reply::Ready).is_err() {
            std::process::exit(0);
        }
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        loop {
            if sys::stop_requested() || sys::drain_requested() {
                std::process::exit(0);
            }
            match self.wait() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    eprintln!("{name}: template: unable to wait for the manager: {e}");
                    std::process::exit(1);
                }
            }
            let (n, fds) = match sys::recv_with_fds(self.control.as_fd(), &mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The manager's end is gone (ECONNRESET) or unusable.
                Err(_) => std::process::exit(0),
            };
            let slot = match step(&buf[..n], fds.len(), self.scoreboard.slot_count()) {
                Step::Leave => std::process::exit(0),
                Step::Ignore(why) => {
                    eprintln!("{name}: template: ignoring a message: {why}");
                    continue;
                }
                Step::Refuse(slot, errno) => {
                    self.answer(&Reply::Failed { slot, errno });
                    continue;
                }
                Step::Fork(slot) => slot,
            };
            match sys::clone_parent() {
                Ok(None) => return self.into_instance(slot, fds),
                Ok(Some(pid)) => {
                    drop(fds);
                    self.answer(&Reply::Started { slot, pid });
                }
                Err(e) => {
                    drop(fds);
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    self.answer(&Reply::Failed { slot, errno });
                }
            }
        }
    }

    /// Waits until the control channel or the wake-up eventfd (a signal)
    /// is readable. True for the control channel.
    fn wait(&self) -> io::Result<bool> {
        let Some(wake) = sys::wake_fd() else {
            return Err(io::Error::other("no stop handler installed"));
        };
        let mut fds = [
            PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake, PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            sys::clear_wake();
        }
        Ok(fds[0].any().unwrap_or(false))
    }

    /// In the forked child: leaves everything that was the template's and
    /// takes the instance's endpoints.
    fn into_instance(self, slot: u32, fds: Vec<OwnedFd>) -> io::Result<Forked> {
        sys::reset_after_clone()?;
        let mut fds = fds.into_iter();
        let (Some(stderr), Some(report)) = (fds.next(), fds.next()) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let report = sys::place_child_fds(self.control, stderr, report)?;
        sys::join_own_group(sys::manager_pid())?;
        // The program's own children must not think they are templates.
        std::env::remove_var(ENV_TEMPLATE);
        std::env::set_var(ENV_SLOT, slot.to_string());
        Ok(Forked {
            scoreboard: self.scoreboard,
            scoreboard_fd: self.scoreboard_fd,
            slot,
            report,
        })
    }

    fn reply(&self, reply: &Reply) -> nix::Result<usize> {
        let flags = MsgFlags::MSG_NOSIGNAL;
        loop {
            match send(self.control.as_raw_fd(), &encode_reply(reply), flags) {
                Err(Errno::EINTR) => {}
                r => return r,
            }
        }
    }

    /// Sends a reply; a manager that is gone ends the template.
    fn answer(&self, reply: &Reply) {
        if self.reply(reply).is_err() {
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_protocol::template::encode_command;

    #[test]
    fn each_message_maps_to_its_step() {
        let start = |slot| encode_command(Command::Start { slot });
        assert_eq!(step(&[], 0, 4), Step::Leave, "a hang-up");
        assert_eq!(step(&start(3), 2, 4), Step::Fork(3));
        assert_eq!(step(&start(4), 2, 4), Step::Refuse(4, libc::EINVAL));
        assert_eq!(step(&start(0), 1, 4), Step::Refuse(0, libc::EBADF));
        assert_eq!(step(&start(0), 3, 4), Step::Refuse(0, libc::EBADF));
        assert!(matches!(step(&[1, 9, 0, 0], 0, 4), Step::Ignore(_)));
    }

    #[test]
    fn only_one_thread_is_forkable() {
        assert_eq!(not_forkable(Ok(1)), None);
        let why = not_forkable(Ok(3)).unwrap();
        assert!(why.starts_with("3 threads"), "{why}");
        let why = not_forkable(Err(io::Error::from_raw_os_error(libc::ENOENT))).unwrap();
        assert!(why.contains("/proc/self/task"), "{why}");
    }
}
