//! How many connections wait in a rendezvous socket's accept queue, asked
//! of the kernel through a `NETLINK_SOCK_DIAG` query for the listening
//! socket's inode (`UNIX_DIAG_RQLEN`: queued connections and the backlog).
//! This lets the manager start as many instances as there are waiting
//! clients and notice a full backlog (clients refused as overloaded). When
//! the kernel does not answer, callers fall back to a zero-timeout `poll`
//! (one or more waiting, count unknown). Policy is `calibrate.rs`'s. The
//! same query (`UNIX_DIAG_VFS`) also says which file a socket is bound to,
//! so that a socket handed back by systemd can be matched with the file at
//! its key's path (`fdstore.rs`).

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
const UDIAG_SHOW_VFS: u32 = 0x02;
const UNIX_DIAG_VFS: u16 = 1;
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
        let (waiting, backlog) = self.ask(ino, UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN)?;
        Ok(Depth { waiting, backlog })
    }

    /// The file the listening Unix socket with inode `ino` is bound to, as
    /// `(st_ino, st_dev)` of that file (it stays the same across a rename
    /// of the file, which a socket's address does not follow).
    ///
    /// # Errors
    ///
    /// The query failed or the answer was not understood.
    pub(crate) fn bound_file(&mut self, ino: u64) -> io::Result<(u32, u32)> {
        self.ask(ino, UDIAG_SHOW_VFS, UNIX_DIAG_VFS)
    }

    /// The two `u32`s of attribute `attr` in the answer about `ino`.
    fn ask(&mut self, ino: u64, show: u32, attr: u16) -> io::Result<(u32, u32)> {
        self.seq = self.seq.wrapping_add(1);
        let ino = u32::try_from(ino).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket inode over 32 bits")
        })?;
        send(
            self.fd.as_raw_fd(),
            &request(self.seq, ino, show),
            MsgFlags::empty(),
        )?;
        let mut buf = [0u8; 1024];
        // The kernel answers during the send: the reply is already queued.
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
        parse(&buf[..n], self.seq, ino, attr)
    }
}

fn request(seq: u32, ino: u32, show: u32) -> Vec<u8> {
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
    m.extend_from_slice(&show.to_ne_bytes());
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
fn parse(b: &[u8], seq: u32, ino: u32, attr: u16) -> io::Result<(u32, u32)> {
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
        if atype == attr && alen >= 12 {
            let a = u32_at(b, off + 4).ok_or_else(|| bad("is truncated"))?;
            let b = u32_at(b, off + 8).ok_or_else(|| bad("is truncated"))?;
            return Ok((a, b));
        }
        off += (alen + 3) & !3;
    }
    Err(bad("lacks the attribute asked for"))
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
        assert!(parse(&[], 1, 1, UNIX_DIAG_RQLEN).is_err());
        assert!(parse(&[0xff; 40], 1, 1, UNIX_DIAG_RQLEN).is_err());
        let mut short = request(1, 7, UDIAG_SHOW_RQLEN);
        short.truncate(20);
        assert!(parse(&short, 1, 7, UNIX_DIAG_RQLEN).is_err());
    }

    #[test]
    fn names_the_file_a_socket_is_bound_to_even_after_a_rename() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp.sock");
        let path = dir.path().join("q.sock");
        let l = UnixListener::bind(&tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let other = UnixListener::bind(dir.path().join("other.sock")).unwrap();
        let Ok(mut p) = QueueProbe::new() else {
            return; // No sock_diag here.
        };
        let meta = std::fs::metadata(&path).unwrap();
        let ino = nix::sys::stat::fstat(&l).unwrap().st_ino;
        let (file_ino, _) = p.bound_file(ino).unwrap();
        assert_eq!(u64::from(file_ino), meta.ino());
        let ino = nix::sys::stat::fstat(&other).unwrap().st_ino;
        assert_ne!(u64::from(p.bound_file(ino).unwrap().0), meta.ino());
    }
}
