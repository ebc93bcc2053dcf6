//! The one home of `unsafe` in this crate: a recv(2) straight into a
//! `Vec`'s spare capacity, so that a large response body is copied once,
//! by the kernel (see `exchange.rs` for why that copy matters).
//!
//! A thin, checked wrapper with a safe signature; when to call it and what
//! its errors mean is left to `exchange.rs`.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::errno::Errno;

/// One recv(2) from `stream` into `body`'s spare capacity, never past `len`
/// bytes in all: appends what arrived to `body` and returns how many bytes
/// that was (0 at end of stream, or when `body` already holds `len` bytes
/// or has no spare capacity). Blocks only if `stream` is in blocking mode.
pub(crate) fn recv_into_spare(
    stream: &UnixStream,
    body: &mut Vec<u8>,
    len: usize,
) -> Result<usize, Errno> {
    let want = len.saturating_sub(body.len());
    let spare = body.spare_capacity_mut();
    let want = want.min(spare.len());
    // SAFETY: recv(2) writes at most `want` bytes starting at `spare`'s
    // first element; `want <= spare.len()`, so every byte written lies in
    // the Vec's own spare capacity, which nothing else references while
    // `spare` borrows it mutably (MaybeUninit<u8> has u8's layout). The fd
    // is open: `stream` owns it and outlives the call.
    let n = unsafe { libc::recv(stream.as_raw_fd(), spare.as_mut_ptr().cast(), want, 0) };
    let n = usize::try_from(n).map_err(|_| Errno::last())?;
    debug_assert!(
        n <= want,
        "recv(2) reported more than it was given room for"
    );
    // SAFETY: recv reported `n <= want` bytes written at the start of the
    // spare capacity, so the first `body.len() + n` bytes are initialized,
    // and `body.len() + n <= capacity` because `want <= spare.len()`.
    unsafe { body.set_len(body.len() + n) };
    Ok(n)
}
