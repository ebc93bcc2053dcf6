//! Placing fds in a child at 3, 4, ... as systemd passes sockets and
//! charond an instance's fds: shared by the integration tests, the service
//! library's report tests and the benches (both include this file by
//! path), which start children that way.
//!
//! The pre-exec hook is `unsafe`: this file allows it for itself, so that
//! a crate including it may deny `unsafe_code` everywhere else.

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

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
