//! Connections the manager takes from a service's socket itself and never
//! serves (fast fail in backoff, a key whose config file is broken): whether
//! one waits, and answering one and closing it without a reset.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

/// True if a connection waits in the socket's queue.
pub(crate) fn waiting(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Sends `frame` (an encoded answer) on an accepted connection and reads
/// what the client sent, so that closing it does not reset the answer.
pub(crate) fn refuse(conn: &OwnedFd, frame: &[u8]) {
    // A full socket buffer or a gone client: nothing to do either way.
    let _ = send(
        conn.as_raw_fd(),
        frame,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
    discard_unread(conn);
}

/// Reads and discards the request bytes already sent: closing a Unix
/// socket with unread data makes the client's read fail with ECONNRESET
/// once it has read our answer. Bounded, non-blocking: a client still
/// sending gets EPIPE and then reads the answer.
fn discard_unread(conn: &OwnedFd) {
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..4 {
        match nix::sys::socket::recv(conn.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n == buf.len() => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_refused_client_reads_the_whole_answer_after_sending_its_request() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(&[7u8; 1000]).unwrap();
        let server = OwnedFd::from(server);
        refuse(&server, b"unavailable");
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"unavailable");
    }

    #[test]
    fn waiting_sees_a_queued_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = OwnedFd::from(listener.try_clone().unwrap());
        assert!(!waiting(&fd));
        let _c = UnixStream::connect(&path).unwrap();
        assert!(waiting(&fd));
    }
}
