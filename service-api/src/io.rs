//! Deadline-bounded I/O on one connection: waiting with `poll`, and writing
//! a response as header plus body in one vectored call, the body never
//! copied.
//!
//! Sockets are written with `sendmsg(MSG_NOSIGNAL)`, so a client that
//! vanished gives `EPIPE` here instead of killing the instance with
//! SIGPIPE. What to do about a failure (count it, drop the connection) is
//! left to `core.rs`.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, MsgFlags, UnixAddr};

/// Waits until one of `fds` is ready or `deadline` passes (`None`: no
/// deadline). Returns false on timeout. An interrupted wait returns true
/// with no revents set, so callers recheck their conditions.
pub(crate) fn wait(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Round up so we never wake a hair before the deadline and spin.
            let ms = left.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(fds, timeout) {
        Ok(0) => Ok(deadline.is_none_or(|d| Instant::now() < d)),
        Ok(_) | Err(Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// True if `fd` has revents among `flags` after a [`wait`].
pub(crate) fn ready(fd: &PollFd<'_>, flags: PollFlags) -> bool {
    fd.revents().is_some_and(|r| r.intersects(flags))
}

/// Readiness that means "look at this fd": data, hang-up or error.
pub(crate) const READABLE: PollFlags = PollFlags::POLLIN
    .union(PollFlags::POLLHUP)
    .union(PollFlags::POLLERR);

/// Writes `head` then `body` to `fd` with as few system calls as the peer
/// allows, waiting for writability up to `deadline` if the fd is
/// non-blocking. `socket` selects `sendmsg(MSG_NOSIGNAL)`; otherwise
/// `writev` is used (standalone mode's fd 4 may be a file or a pipe).
///
/// # Errors
///
/// The first failing call's error; `TimedOut` past the deadline.
pub(crate) fn write_all2(
    fd: BorrowedFd<'_>,
    socket: bool,
    head: &[u8],
    body: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    let total = head.len() + body.len();
    let mut done = 0usize;
    while done < total {
        let (h, b) = if done < head.len() {
            (&head[done..], body)
        } else {
            (&[][..], &body[done - head.len()..])
        };
        let iov = [IoSlice::new(h), IoSlice::new(b)];
        let iov = if h.is_empty() { &iov[1..] } else { &iov[..] };
        let res = if socket {
            sendmsg::<UnixAddr>(fd.as_raw_fd(), iov, &[], MsgFlags::MSG_NOSIGNAL, None)
        } else {
            nix::sys::uio::writev(fd, iov)
        };
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                if !wait(&mut fds, Some(deadline))? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read the response in time",
                    ));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn writes_head_and_large_body_through_a_nonblocking_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        write_all2(a.as_fd(), true, b"head", &body, deadline).unwrap();
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == body[..]);
    }

    #[test]
    fn vanished_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = write_all2(a.as_fd(), true, b"x", b"y", deadline).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_peer_that_never_reads_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let body = vec![0u8; 8 << 20];
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = write_all2(a.as_fd(), true, b"", &body, deadline).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn wait_honours_the_deadline() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut fds = [PollFd::new(a.as_fd(), PollFlags::POLLIN)];
        let t = Instant::now();
        assert!(!wait(&mut fds, Some(t + Duration::from_millis(30))).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
