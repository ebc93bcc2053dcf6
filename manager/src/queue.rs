//! How many connections wait in a rendezvous socket's accept queue, asked
//! of the kernel through a `NETLINK_SOCK_DIAG` query for the listening
//! socket's inode (`UNIX_DIAG_RQLEN`: queued connections and the backlog).
//! This lets the manager start as many instances as there are waiting
//! clients and notice a full backlog (clients refused as overloaded). When
//! the kernel does not answer, callers fall back to a zero-timeout `poll`
//! (one or more waiting, count unknown). Policy is `calibrate.rs`'s.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u32 = 10;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const UNIX_DIAG_MSG_LEN: usize = 16;

/// A listening socket's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Depth {
    /// Connections waiting to be accepted.
    pub waiting: u32,
    /// The backlog: when `waiting` reaches it, new connects are refused.
    pub backlog: u32,
}

/// A netlink socket for queue queries.
pub(crate) struct QueueProbe {
    fd: OwnedFd,
    seq: u32,
}

impl QueueProbe {
    /// Opens the netlink socket.
    ///
    /// # Errors
    ///
    /// The kernel has no sock_diag (the caller then polls instead).
    pub(crate) fn new() -> io::Result<QueueProbe> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        Ok(QueueProbe { fd, seq: 0 })
    }

    /// The queue of the listening Unix socket with inode `ino`.
    ///
    /// # Errors
    ///
    /// The query failed or the answer was not understood.
    pub(crate) fn depth(&mut self, ino: u64) -> io::Result<Depth> {
        self.seq = self.seq.wrapping_add(1);
        let ino = u32::try_from(ino).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket inode over 32 bits")
        })?;
        send(
            self.fd.as_raw_fd(),
            &request(self.seq, ino),
            MsgFlags::empty(),
        )?;
        let mut buf = [0u8; 1024];
        // The kernel answers during the send: the reply is already queued.
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
        parse(&buf[..n], self.seq, ino)
    }
}

fn request(seq: u32, ino: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + 24);
    m.extend_from_slice(&((NLMSG_HDRLEN + 24) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req
    m.push(libc::AF_UNIX as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    m.extend_from_slice(&ino.to_ne_bytes());
    m.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    // No cookie: look the socket up by inode alone.
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off + 2)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag answer {what}"),
    )
}

/// Parses the kernel's answer (untrusted in shape, so every offset is
/// checked).
fn parse(b: &[u8], seq: u32, ino: u32) -> io::Result<Depth> {
    let len = u32_at(b, 0).ok_or_else(|| bad("is truncated"))? as usize;
    let kind = u16_at(b, 4).ok_or_else(|| bad("is truncated"))?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(b, NLMSG_HDRLEN).map_or(0, |e| e as i32);
        return Err(io::Error::from_raw_os_error(
            errno.checked_neg().unwrap_or(libc::EIO),
        ));
    }
    if kind != SOCK_DIAG_BY_FAMILY || u32_at(b, 8) != Some(seq) || len > b.len() {
        return Err(bad("does not match the query"));
    }
    if u32_at(b, NLMSG_HDRLEN + 4) != Some(ino) {
        return Err(bad("is about another socket"));
    }
    let mut off = NLMSG_HDRLEN + UNIX_DIAG_MSG_LEN;
    while off + 4 <= len {
        let alen = usize::from(u16_at(b, off).ok_or_else(|| bad("is truncated"))?);
        let atype = u16_at(b, off + 2).ok_or_else(|| bad("is truncated"))?;
        if alen < 4 {
            return Err(bad("has a malformed attribute"));
        }
        if atype == UNIX_DIAG_RQLEN {
            let waiting = u32_at(b, off + 4).ok_or_else(|| bad("is truncated"))?;
            let backlog = u32_at(b, off + 8).ok_or_else(|| bad("is truncated"))?;
            return Ok(Depth { waiting, backlog });
        }
        off += (alen + 3) & !3;
    }
    Err(bad("has no queue length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn counts_waiting_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let l = UnixListener::bind(&path).unwrap();
        // The socket's inode is the fd's (sockfs), not the path's.
        let ino = nix::sys::stat::fstat(&l).unwrap().st_ino;
        let Ok(mut p) = QueueProbe::new() else {
            return; // No sock_diag here: the manager polls instead.
        };
        assert_eq!(p.depth(ino).unwrap().waiting, 0);
        let _c: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let d = p.depth(ino).unwrap();
        assert_eq!(d.waiting, 3);
        assert!(d.backlog >= 3);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(&[], 1, 1).is_err());
        assert!(parse(&[0xff; 40], 1, 1).is_err());
        let mut short = request(1, 7);
        short.truncate(20);
        assert!(parse(&short, 1, 7).is_err());
    }
}
