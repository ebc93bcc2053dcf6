//! Waiting for the next connection without a thundering herd.
//!
//! Every idle instance of a service waits on the same listening socket.
//! With `poll(2)` a connection wakes all of them and all but one find
//! nothing to accept: on two cores, at one request at a time, the losers
//! compete for the CPU with the winner (the roundtrip benchmark's
//! concurrency-1 latency). An epoll set with `EPOLLEXCLUSIVE` on the
//! listening socket wakes one waiter per connection, as a blocking
//! `accept(2)` does, while the same set still watches the stop eventfd and
//! the report channel, which a blocking accept could not.
//!
//! A woken instance always accepts before it looks at a stop request, so a
//! connection that woke it is never left for waiters that were not woken.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const REPORT: u64 = 2;

/// What a wait saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Woke {
    /// The listening socket has a connection (or the deadline passed).
    pub(crate) listener: bool,
    /// The report channel is readable or hung up.
    pub(crate) report: bool,
}

/// An epoll set over the listener (exclusive), the stop eventfd and, in
/// managed mode, the report channel.
#[derive(Debug)]
pub(crate) struct IdleWait {
    epoll: Epoll,
}

impl IdleWait {
    pub(crate) fn new(
        listener: BorrowedFd<'_>,
        stop: BorrowedFd<'_>,
        report: Option<BorrowedFd<'_>>,
    ) -> io::Result<IdleWait> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )?;
        epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        if let Some(r) = report {
            epoll.add(r, EpollEvent::new(EpollFlags::EPOLLIN, REPORT))?;
        }
        Ok(IdleWait { epoll })
    }

    /// Waits until something is ready or `deadline` passes. EINTR is a
    /// wake-up like any other (the caller re-checks its flags).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<Woke> {
        let timeout = match deadline {
            None => EpollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so we never wake a hair early and spin.
                let ms = left.as_micros().div_ceil(1000);
                EpollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX))
                    .unwrap_or(EpollTimeout::NONE)
            }
        };
        let mut events = [EpollEvent::empty(); 3];
        let n = match self.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut woke = Woke::default();
        for e in &events[..n] {
            match e.data() {
                LISTENER => woke.listener = true,
                REPORT => woke.report = true,
                _ => {}
            }
        }
        Ok(woke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    #[test]
    fn one_connection_wakes_one_exclusive_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stop = nix::sys::eventfd::EventFd::new().unwrap();
        let a = IdleWait::new(listener.as_fd(), stop.as_fd(), None).unwrap();
        let soon = || Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(a.wait(soon()).unwrap(), Woke::default(), "nothing yet");
        let _c = UnixStream::connect(&path).unwrap();
        assert!(a.wait(soon()).unwrap().listener);
        stop.write(1).unwrap();
        let w = a.wait(soon()).unwrap();
        assert!(w.listener, "still queued: level-triggered");
    }
}
