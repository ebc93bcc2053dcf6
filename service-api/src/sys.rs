//! The one home of `unsafe` in this crate: the SIGTERM/SIGINT/SIGUSR1 handler and
//! its wake-up eventfd, stderr pointed at /dev/null once the manager is gone,
//! adopting the file descriptors a launcher arranged (fds 3,
//! 4 and 5), mapping the scoreboard, a non-blocking `accept4`, and an exit hook.
//!
//! Everything here is a thin, checked wrapper returning `io::Result`; the
//! policy (which mode, when to stop) is left to `mode.rs` and `service.rs`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use charon_protocol::scoreboard::Scoreboard;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by the handler on SIGTERM/SIGINT; never cleared (a stop request is
/// final).
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by the handler on SIGUSR1; never cleared.
static DRAIN: AtomicBool = AtomicBool::new(false);
/// The wake-up eventfd as the handler sees it; -1 until installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The wake-up eventfd, kept for the life of the process (the handler may
/// run at any moment, so it must never be closed). One fd, not a pipe's
/// two: an instance holds as few fds beyond 0-5 as it can.
static WAKE: OnceLock<OwnedFd> = OnceLock::new();
/// Set by the first successful [`claim_process`]: the fds and handlers are
/// adopted once per process.
static CLAIMED: AtomicBool = AtomicBool::new(false);
/// The manager's pid in managed mode (0 otherwise), for the handler to tell
/// the manager's death (`PR_SET_PDEATHSIG` sends SIGUSR1) from a drain.
static MANAGER_PID: AtomicI32 = AtomicI32::new(0);
/// An fd open on /dev/null for [`quiet_stderr`], -1 until
/// [`watch_manager`]; never closed (the handler may use it at any moment).
static DEVNULL_FD: AtomicI32 = AtomicI32::new(-1);
static DEVNULL: OnceLock<OwnedFd> = OnceLock::new();

/// Claims the process-wide resources (inherited fds, signal handlers) for
/// the one `Service` a process may have. False if already claimed.
pub(crate) fn claim_process() -> bool {
    !CLAIMED.swap(true, Ordering::AcqRel)
}

/// True once SIGTERM or SIGINT has arrived.
pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::Acquire)
}

/// True once SIGUSR1 has arrived: serve what is queued, then stop.
pub(crate) fn drain_requested() -> bool {
    DRAIN.load(Ordering::Acquire)
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Only async-signal-safe work: atomics, getppid(2), dup2(2) and
    // write(2). errno is saved and restored so the interrupted code never
    // sees it change.
    // SAFETY: __errno_location returns this thread's errno slot, valid for
    // the thread's life; reading and writing it is signal-safe.
    let saved = unsafe { *libc::__errno_location() };
    if sig == libc::SIGUSR1 {
        DRAIN.store(true, Ordering::Release);
        let manager = MANAGER_PID.load(Ordering::Acquire);
        // SAFETY: getppid has no preconditions and is async-signal-safe.
        if manager > 0 && unsafe { libc::getppid() } != manager {
            quiet_stderr();
        }
    } else {
        STOP.store(true, Ordering::Release);
    }
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: `fd` is an eventfd that is never closed (it lives in a
        // static); `one` is a valid 8-byte buffer on our stack, the size an
        // eventfd write takes. A saturated counter (EAGAIN, the fd is
        // non-blocking) is fine: it is already readable, all a waiter needs.
        let _ = unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Managed mode: remembers the manager (this process's parent now) and
/// opens /dev/null, so that [`quiet_stderr`] and the SIGUSR1 handler can
/// act once it is gone.
pub(crate) fn watch_manager() -> io::Result<()> {
    let null = match DEVNULL.get() {
        Some(fd) => fd,
        None => {
            let fd = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            DEVNULL.get_or_init(|| OwnedFd::from(fd))
        }
    };
    DEVNULL_FD.store(null.as_raw_fd(), Ordering::Release);
    // SAFETY: getppid has no preconditions.
    MANAGER_PID.store(unsafe { libc::getppid() }, Ordering::Release);
    Ok(())
}

/// The manager is gone: points fd 2 at /dev/null. The manager read the
/// instance's stderr pipe; with it gone a write there fails with EPIPE,
/// which makes `eprintln!` panic and would cost the request in hand. Its
/// lines had nobody to read them anyway. Async-signal-safe, idempotent.
pub(crate) fn quiet_stderr() {
    let null = DEVNULL_FD.load(Ordering::Acquire);
    if null >= 0 {
        // SAFETY: `null` is an fd on /dev/null that is never closed (it
        // lives in a static); dup2 onto 2 only replaces what fd 2 refers
        // to, and is async-signal-safe.
        let _ = unsafe { libc::dup2(null, 2) };
    }
}

/// Installs the SIGTERM, SIGINT and SIGUSR1 handler and returns its
/// wake-up eventfd, which becomes readable (and stays so: nobody reads it)
/// once one of them has arrived. Polling it beside the listening socket
/// makes the wait race-free: a signal that lands just before `poll` leaves
/// it readable.
pub(crate) fn install_stop_handler() -> io::Result<BorrowedFd<'static>> {
    let wake = match WAKE.get() {
        Some(fd) => fd,
        None => {
            let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
            let fd = OwnedFd::from(EventFd::from_value_and_flags(0, flags)?);
            WAKE.get_or_init(|| fd)
        }
    };
    WAKE_FD.store(wake.as_raw_fd(), Ordering::Release);
    // SA_RESTART: a service's own blocking calls resume after the handler
    // instead of failing with EINTR; our waits poll the eventfd anyway.
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let signals = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1];
    for sig in signals {
        // SAFETY: the handler only performs async-signal-safe operations
        // (atomic load/store, write(2), errno save/restore), and it reads
        // only statics that are initialized before it is installed.
        unsafe { sigaction(sig, &action) }?;
    }
    // A launcher may have blocked them; the handler is useless if so.
    let mut set = SigSet::empty();
    for sig in signals {
        set.add(sig);
    }
    set.thread_unblock()?;
    Ok(wake.as_fd())
}

/// True if `fd` is open in this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table; an fd that is not
    // open gives EBADF and touches nothing.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Takes ownership of an inherited fd and marks it close-on-exec, so a
/// service's own children do not inherit it.
///
/// The caller must have won [`claim_process`]: that is what makes this the
/// only owner (the crate docs require a program not to use fds 3-5 itself
/// before `Service::init`).
pub(crate) fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    debug_assert!(CLAIMED.load(Ordering::Acquire));
    if !fd_is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is open (checked just above), and nothing else in the
    // process owns it: the launcher put it there for the service library,
    // the process claimed it once (claim_process), and the documented
    // contract forbids the program from using it before Service::init.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

/// Maps the scoreboard the manager passed.
pub(crate) fn map_scoreboard(fd: BorrowedFd<'_>) -> io::Result<Scoreboard> {
    // SAFETY: in managed mode fd 4 is the memfd made by Scoreboard::create
    // in the manager, sealed against shrinking (F_SEAL_SHRINK and
    // F_SEAL_SEAL), so no process can shrink it while we map it; map()
    // itself checks size, magic and layout version.
    unsafe { Scoreboard::map(fd) }
}

/// Accepts one connection without blocking; the new socket is non-blocking
/// and close-on-exec from birth (one syscall, no fcntl after).
pub(crate) fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers is allowed (we do not want
    // the peer address); `listener` is a valid open fd for the call.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 succeeded, so `fd` is a new descriptor nobody else
    // owns.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd <= libc::STDERR_FILENO {
        return above_stdio(conn).map(UnixStream::from);
    }
    Ok(UnixStream::from(conn))
}

/// A connection accepted onto fd 0, 1 or 2 (the program closed its own
/// stdin, stdout or stderr), moved above them and the hole filled with
/// `/dev/null`: the program's prints never reach a client, and later
/// connections land above 2 again.
fn above_stdio(low: OwnedFd) -> io::Result<OwnedFd> {
    let high = fcntl(&low, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl succeeded, so `high` is a new descriptor nobody else
    // owns.
    let high = unsafe { OwnedFd::from_raw_fd(high) };
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return Ok(high); // `low` closes: a hole the next accept lifts again
    };
    let null = OwnedFd::from(null);
    // SAFETY: both are valid open fds; dup2 atomically puts /dev/null
    // where the connection's low copy was (the program's stdio slot).
    if unsafe { libc::dup2(null.as_raw_fd(), low.as_raw_fd()) } >= 0 {
        let _stdio: RawFd = low.into_raw_fd();
    }
    if null.as_raw_fd() <= libc::STDERR_FILENO {
        let _another_hole_filled: RawFd = null.into_raw_fd();
    }
    Ok(high)
}

/// Registers `hook` to run when the process calls `exit()` (as
/// `std::process::exit` does), after main returns, but not on a signal.
pub(crate) fn at_exit(hook: extern "C" fn()) -> io::Result<()> {
    // SAFETY: atexit(3) only records the pointer; `hook` is a plain
    // function that lives as long as the program, takes no arguments and
    // cannot unwind (an `extern "C" fn` aborts instead).
    if unsafe { libc::atexit(hook) } != 0 {
        return Err(io::Error::other("atexit refused the hook"));
    }
    Ok(())
}
