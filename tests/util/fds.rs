//! Passing fds between processes, the tests' home of `unsafe`: placing fds
//! in a child at 3, 4, ... as systemd passes sockets and charond an
//! instance's fds (shared by the integration tests, the service library's
//! report tests and the benches, which include this file by path and start
//! children that way), and receiving fds sent over a socket (SCM_RIGHTS),
//! as the systemd tests' fd store does.
//!
//! This file allows `unsafe` for itself, so that a crate including it may
//! deny `unsafe_code` everywhere else.

#![allow(unsafe_code)]

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Places `fds` at 3, 4, ... in the child `cmd` starts (as systemd passes
/// sockets, or charond an instance's fds). They stay open in the caller
/// until `spawn` returns.
pub fn pass_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    // Allocated here, not in the child: between fork and exec only
    // async-signal-safe calls are allowed.
    let mut high = vec![0; fds.len()];
    // SAFETY: the closure runs in the child between fork and exec and
    // calls only fcntl(2) and dup2(2), which are async-signal-safe, and
    // writes into `high`, allocated before the fork; the fds were captured
    // by value and stay open in the parent until spawn returns. Each is
    // first moved above 100 so that placing one at 3.. cannot overwrite
    // another still to place; dup2 leaves the targets without FD_CLOEXEC,
    // so they survive exec.
    unsafe {
        cmd.pre_exec(move || {
            for (h, fd) in high.iter_mut().zip(&fds) {
                *h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, h) in (3..).zip(&high) {
                if libc::dup2(*h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Receives one datagram from `sock` into `buf`, with the fds sent along
/// it (SCM_RIGHTS, up to 16) owned and close-on-exec. Returns the datagram's
/// length and the fds; a timeout is `EAGAIN`.
// Only the integration tests receive fds; the other includers do not.
#[allow(dead_code)]
pub fn recv_with_fds(sock: &UnixDatagram, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC;
    let m = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags)?;
    let mut fds = Vec::new();
    for c in m.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: recvmsg(2) just installed these fds in this process
            // for this message (SCM_RIGHTS); each number appears once and
            // nothing else owns or closes them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    Ok((m.bytes, fds))
}
