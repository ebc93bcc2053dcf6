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

// ---- The template's fork server (`template.rs`) ----

/// The template's fork: a raw `clone(CLONE_PARENT | SIGCHLD)`, so that
/// the new process is a child of the template's parent (the manager, which
/// reaps it and sees its exit status), not of the template. `Ok(None)` in
/// the child, `Ok(Some(pid))` in the template.
///
/// The caller must have checked that this process runs one thread
/// ([`thread_count`]) and must call this from no signal handler and with no
/// lock held.
pub(crate) fn clone_parent() -> io::Result<Option<u32>> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a clone with no CLONE_VM and a null stack is a fork: the
    // child gets a copy of this process's memory and continues on its copy
    // of this stack, returning 0 from this call. glibc's fork(3) does more
    // than the syscall (atfork handlers, resetting its locks and the
    // thread-id cache), and skipping that is sound here because:
    // - the process runs one thread (the caller checked /proc/self/task),
    //   so no lock (malloc's, stdio's, Rust std's) is held by another
    //   thread at the fork, and this thread holds none here;
    // - getpid(2) is not cached by glibc since 2.25, so the child's
    //   `std::process::id()` is its own;
    // - glibc's raise/abort signal the calling thread found with gettid(2),
    //   not the thread-id its TCB still holds from the template;
    // - Rust's std keys its reentrant locks on its own per-thread ids, kept
    //   in thread-local memory the child copied with the one thread;
    // - nothing in this crate registers atfork handlers, and the child
    //   resets what the library shares with the template (the wake-up
    //   eventfd, `reset_after_clone`).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some(u32::try_from(p).unwrap_or(0))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The number of threads of this process (entries in `/proc/self/task`).
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Receives one message from the `SOCK_SEQPACKET` socket `sock` into `buf`,
/// waiting for it, with the fds sent along it (`SCM_RIGHTS`, up to 4)
/// owned and close-on-exec. 0 bytes means the peer hung up.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let m = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
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

/// In a new instance forked by the template: puts `stderr` on fd 2 and
/// `report` on fd 5, where `control` (the template's control channel, which
/// the child must not keep) was. Returns fd 5, now the report channel,
/// close-on-exec like an exec'd instance's.
pub(crate) fn place_child_fds(
    control: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
) -> io::Result<OwnedFd> {
    let target = control.as_raw_fd();
    // SAFETY: both are valid open fds; dup2 atomically replaces what fd 2
    // refers to (the template's stderr pipe, which this child must not
    // write to) and clears close-on-exec on it, as stderr should be.
    if unsafe { libc::dup2(stderr.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `target` is the fd `control` owns; dup2 replaces the control
    // channel there with the report channel in one step, and `control`
    // keeps owning the fd number, which now refers to the report channel.
    if unsafe { libc::dup2(report.as_raw_fd(), target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    fcntl(&control, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(control)
}

/// In a new instance forked by the template, before anything else: forgets
/// the stop and drain requests the template may have seen (they were the
/// template's), and gives the instance a wake-up eventfd of its own at the
/// same fd number (the template's is shared with it and every sibling: a
/// signal to one would wake them all).
pub(crate) fn reset_after_clone() -> io::Result<()> {
    STOP.store(false, Ordering::Release);
    DRAIN.store(false, Ordering::Release);
    let Some(wake) = WAKE.get() else {
        return Ok(());
    };
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    let fresh = OwnedFd::from(EventFd::from_value_and_flags(0, flags)?);
    // SAFETY: both are valid open fds; `wake` is never closed (a static),
    // and dup2 atomically makes its number refer to the fresh eventfd, so
    // the handler, which writes to that number, wakes this process only.
    if unsafe { libc::dup2(fresh.as_raw_fd(), wake.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    fcntl(wake, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// The wake-up eventfd, once [`install_stop_handler`] made it.
pub(crate) fn wake_fd() -> Option<BorrowedFd<'static>> {
    WAKE.get().map(AsFd::as_fd)
}

/// Clears the wake-up eventfd (the template polls it, and a child that
/// was signalled before it replaced its copy may have written to it).
pub(crate) fn clear_wake() {
    if let Some(wake) = WAKE.get() {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(wake, &mut buf);
    }
}

/// In a new instance forked by the template: its own process group, as
/// an exec'd instance has, and the manager's death signal (SIGUSR1: drain),
/// which a fork does not inherit. If the manager died before the signal
/// was armed, the instance drains at once.
pub(crate) fn join_own_group(manager: i32) -> io::Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches
    // no memory of ours.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGUSR1 as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != manager {
        DRAIN.store(true, Ordering::Release);
    }
    Ok(())
}

/// The manager's pid as [`watch_manager`] recorded it (0 if not managed).
pub(crate) fn manager_pid() -> i32 {
    MANAGER_PID.load(Ordering::Acquire)
}
