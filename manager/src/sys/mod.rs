//! The only home of `unsafe` in the manager: starting a child (a
//! `clone` that shares memory until the exec, as `posix_spawn` does) and
//! its work up to `execve`, `wait4`, `accept4` and the SIGPIPE
//! disposition. Everything the child needs is prepared by the caller
//! (`spawn.rs`) before the clone, so that between clone and exec only
//! async-signal-safe system calls run: no allocation, no locks, no Rust
//! standard library I/O, no write to memory but the child's own stack
//! (and errno). Launch failures exit with the documented codes 11-30
//! (doc/charond.md).
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;

/// Exit codes of a child that failed between clone and exec.
pub(crate) mod code {
    /// `chdir` to the `cd` directory failed.
    pub const CHDIR: i32 = 11;
    /// `setgroups` or `setgid` failed.
    pub const SETGID: i32 = 12;
    /// `setuid` failed.
    pub const SETUID: i32 = 13;
    /// `setrlimit` failed.
    pub const SETRLIMIT: i32 = 14;
    /// The program was not found.
    pub const EXEC_NOT_FOUND: i32 = 15;
    /// The program may not be executed (permissions).
    pub const EXEC_DENIED: i32 = 16;
    /// `execve` failed for another reason.
    pub const EXEC_OTHER: i32 = 17;
    /// Arranging fds 0-5 failed.
    pub const FDS: i32 = 18;
    /// `setpgid` failed.
    pub const SETPGID: i32 = 19;
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    pub const PRCTL: i32 = 20;
    /// The manager died before the child could exec.
    pub const ORPHANED: i32 = 21;
    /// Resetting the signal mask failed.
    pub const SIGMASK: i32 = 22;
    /// Arranging fds or exec failed for want of the manager's or the
    /// system's resources (`EMFILE`, `ENFILE`, `ENOMEM`): the manager's
    /// problem, never charged to the service.
    pub const RESOURCES: i32 = 23;

    /// What a launch-failure code means, for log lines and Unavailable
    /// reasons.
    #[must_use]
    pub fn describe(c: i32) -> Option<&'static str> {
        Some(match c {
            CHDIR => "chdir to the cd directory failed",
            SETGID => "setgroups/setgid failed",
            SETUID => "setuid failed",
            SETRLIMIT => "setrlimit failed",
            EXEC_NOT_FOUND => "executable not found",
            EXEC_DENIED => "executable not permitted",
            EXEC_OTHER => "exec failed",
            FDS => "fd setup failed",
            SETPGID => "setpgid failed",
            PRCTL => "prctl(PR_SET_PDEATHSIG) failed",
            ORPHANED => "manager exited during launch",
            SIGMASK => "signal mask reset failed",
            RESOURCES => "out of file descriptors or memory (the manager's problem)",
            24..=30 => "launch failure (reserved code)",
            _ => return None,
        })
    }
}

/// Everything the child does before exec, prepared before the clone.
pub(crate) struct ChildPlan {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// (resource, soft = hard limit).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// (uid, gid, supplementary groups) when switching user.
    pub ids: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    pub manager_pid: libc::pid_t,
    /// Highest signal number whose disposition the child resets (read
    /// before the clone: `SIGRTMAX()` is a libc call).
    pub max_signal: libc::c_int,
}

/// The fds the child gets at 0-5, in order: stdin, stdout, stderr, then
/// `charon_protocol::managed`'s LISTEN_FD, SCOREBOARD_FD, REPORT_FD.
pub(crate) struct ChildFds<'a> {
    pub fds: [BorrowedFd<'a>; 6],
}

/// Starts the child, which arranges itself per `plan` and execs. Returns
/// the child's pid.
///
/// The child is made with `clone(CLONE_VM | CLONE_VFORK)`, as
/// `posix_spawn` does, not with `fork`: it borrows the manager's memory
/// until its `execve`, so nothing of the manager's address space is copied
/// (fork copied every page table and then took a copy-on-write fault for
/// each page either side touched before the exec). The manager's thread is
/// suspended until the child has exec'd or exited: a `cd` or program on a
/// file system that hangs hangs the manager too, as with `posix_spawn`.
///
/// # Errors
///
/// The error of `mmap` (the child's stack) or `clone` (the child's own
/// failures show as its exit code).
pub(crate) fn spawn(plan: &ChildPlan, fds: &ChildFds<'_>) -> io::Result<libc::pid_t> {
    let argv: Vec<*const c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let envp: Vec<*const c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let child = Child {
        plan,
        fds: fds.fds.map(|f| f.as_raw_fd()),
        argv: &argv,
        envp: &envp,
    };
    STACK.with_borrow_mut(|stack| {
        let stack = match stack {
            Some(s) => s,
            None => stack.insert(ChildStack::new()?),
        };
        clone_child(&child, stack)
    })
}

thread_local! {
    /// The child stack, made at the first start and kept: mapping and
    /// unmapping it at every start cost a TLB shootdown each. Reusing it is
    /// safe because `clone_child` returns only once the child that ran on it
    /// has exec'd or exited (CLONE_VFORK).
    static STACK: RefCell<Option<ChildStack>> = const { RefCell::new(None) };
}

/// The clone itself, on `stack`.
fn clone_child(child: &Child<'_>, stack: &ChildStack) -> io::Result<libc::pid_t> {
    let mask = BlockAll::new()?;
    // SAFETY: `child_entry` gets a pointer to `child`, which outlives this
    // call, and with CLONE_VFORK clone returns only once the child has
    // exec'd or exited: the child never sees it dangle. The child runs on
    // its own stack (`stack`, kept for the life of the thread), so it
    // cannot overwrite this thread's frames. Every signal is
    // blocked (`mask`), so no handler of the manager can run in the child
    // before `child_before_exec` has reset the dispositions. Without
    // CLONE_FILES, CLONE_FS, CLONE_SIGHAND and CLONE_THREAD the child gets
    // its own copies of the fd table, cwd, dispositions and credentials;
    // only memory is shared, and `child_before_exec` writes to no memory but
    // its own stack and the errno of this (suspended) thread. The manager's
    // other thread (`--metrics-listen`) may hold locks meanwhile: the child
    // takes none (see `child_before_exec`). SIGCHLD as the exit signal makes
    // it an ordinary child for wait4.
    let pid = unsafe {
        libc::clone(
            child_entry,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            ptr::from_ref(child).cast_mut().cast(),
        )
    };
    let err = io::Error::last_os_error();
    drop(mask);
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// What the child needs, passed to [`child_entry`] by pointer.
struct Child<'a> {
    plan: &'a ChildPlan,
    fds: [RawFd; 6],
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
}

/// The child's entry point from `clone`.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` on `spawn`'s frame, alive (the parent is
    // suspended in clone until this child execs or exits) and only read.
    let c = unsafe { &*arg.cast::<Child<'_>>() };
    // SAFETY: we are the child right after clone, with the signals blocked;
    // `argv`/`envp` are NULL-terminated arrays of pointers to
    // NUL-terminated strings owned by `plan`, and `fds` were open in the
    // parent at clone time (the child has copies).
    unsafe { child_before_exec(c.plan, &c.fds, c.argv, c.envp) }
}

/// The child's stack: a private mapping with a guard page below it, so an
/// overflow faults instead of writing into the manager's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Room for `child_before_exec`, its 512-byte failure line and the libc
    /// calls it makes (execve copies nothing onto the caller's stack).
    const SIZE: usize = 64 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<ChildStack> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing touches no existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping made just above.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer: the stack grows down from the end.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is `len` long.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no one now: a child
        // that ran on it has exec'd or exited (CLONE_VFORK).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in this thread until dropped, when the previous
/// mask comes back.
struct BlockAll {
    old: libc::sigset_t,
}

impl BlockAll {
    fn new() -> io::Result<BlockAll> {
        // SAFETY: sigset_t is plain data, valid zeroed; both pointers point
        // to live locals.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(BlockAll { old })
        }
    }
}

impl Drop for BlockAll {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, ptr::null_mut()) };
    }
}

/// The child's side. Never returns: execs or `_exit`s with a code.
///
/// # Safety
///
/// Must only run in the child right after `clone`, with every signal
/// blocked, `argv`/`envp` NULL-terminated pointer arrays into live CStrings
/// and `fds` open descriptors. It must stay async-signal-safe and
/// allocation-free, take no lock and write no memory but its own stack
/// and errno: it runs in the manager's memory, whose other thread may hold
/// a lock.
unsafe fn child_before_exec(
    plan: &ChildPlan,
    fds: &[RawFd; 6],
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> ! {
    // Fds first, so that later failure messages reach the stderr pipe.
    place_fds(fds);
    join_own_group(plan);
    reset_signals(plan);
    limit_and_enter(plan);
    become_user(plan);
    libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    let c = match errno() {
        libc::ENOENT | libc::ENOTDIR => code::EXEC_NOT_FOUND,
        libc::EACCES | libc::EPERM => code::EXEC_DENIED,
        _ => resource_or(code::EXEC_OTHER),
    };
    fail(c, b"exec", Some(&plan.path))
}

// The steps of `child_before_exec`, in order. Each has its contract: only
// in the child right after `clone`, with every signal blocked;
// async-signal-safe and allocation-free, taking no lock and writing no
// memory but its own stack and errno. Each `fail`s (exits) on an error.

/// Puts `fds` on 0-5 (close-on-exec cleared) and closes every other fd.
///
/// # Safety
///
/// The contract of [`child_before_exec`]; `fds` are open descriptors.
unsafe fn place_fds(fds: &[RawFd; 6]) {
    // Close every fd but the sources first: the copies below need free
    // slots, and a manager near its fd limit must not make them fail.
    close_all_but(fds);
    // Copy every source above 9 first: a source may itself be one of 0-5.
    let mut high = [0 as RawFd; 6];
    for (h, &src) in high.iter_mut().zip(fds) {
        *h = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 10);
        if *h < 0 {
            fail(resource_or(code::FDS), b"dup fd", None);
        }
    }
    for (target, &h) in high.iter().enumerate() {
        // dup2 clears close-on-exec on the target, which is what we want
        // for 0-5 only.
        if libc::dup2(h, target as RawFd) < 0 {
            fail(code::FDS, b"dup2 fd", None);
        }
    }
    // Everything else is close-on-exec already; close_range is belt and
    // braces (ENOSYS on old kernels is fine to ignore for that reason).
    libc::syscall(
        libc::SYS_close_range,
        6 as libc::c_uint,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );
}

/// Makes the child its own process group's leader and ties its life to
/// the manager's.
///
/// # Safety
///
/// The contract of [`child_before_exec`].
unsafe fn join_own_group(plan: &ChildPlan) {
    if libc::setpgid(0, 0) != 0 {
        fail(code::SETPGID, b"setpgid", None);
    }
    // The manager's death means drain (SIGUSR1), not stop: the instance
    // serves the connections already queued on its socket before it leaves,
    // so a killed manager loses no request a client has written.
    if libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGUSR1 as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
    {
        fail(code::PRCTL, b"prctl", None);
    }
    // The manager may have died before PDEATHSIG was armed.
    if libc::getppid() != plan.manager_pid {
        fail(code::ORPHANED, b"find the manager", None);
    }
}

/// Resets every signal's disposition and unblocks them all.
///
/// # Safety
///
/// The contract of [`child_before_exec`].
unsafe fn reset_signals(plan: &ChildPlan) {
    // SIG_IGN survives exec (the manager ignores SIGPIPE); reset them all,
    // handlers too, before unblocking: a handler must not run here, in the
    // manager's memory. libc refuses the two signals it reserves for its
    // threads (EINVAL, ignored): nothing sends them to this new process,
    // and exec resets their handler.
    for sig in 1..=plan.max_signal {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    if libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) != 0 {
        fail(code::SIGMASK, b"sigprocmask", None);
    }
}

/// Applies the rlimits and changes to the working directory.
///
/// # Safety
///
/// The contract of [`child_before_exec`].
unsafe fn limit_and_enter(plan: &ChildPlan) {
    for &(res, lim) in &plan.rlimits {
        let rl = libc::rlimit {
            rlim_cur: lim,
            rlim_max: lim,
        };
        if libc::setrlimit(res, &rl) != 0 {
            fail(code::SETRLIMIT, b"setrlimit", None);
        }
    }
    if let Some(cwd) = &plan.cwd {
        if libc::chdir(cwd.as_ptr()) != 0 {
            fail(code::CHDIR, b"chdir to", Some(cwd));
        }
    }
}

/// Takes the service's user, group and supplementary groups, if any.
///
/// # Safety
///
/// The contract of [`child_before_exec`].
unsafe fn become_user(plan: &ChildPlan) {
    // Raw system calls, not libc's wrappers: those make every thread of
    // the process change ids, and in this child libc's thread list is the
    // manager's (shared memory). The kernel changes this process's only.
    if let Some((uid, gid, groups)) = &plan.ids {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setgid, *gid) != 0
        {
            fail(code::SETGID, b"setgid", None);
        }
        if libc::syscall(libc::SYS_setuid, *uid) != 0 {
            fail(code::SETUID, b"setuid", None);
        }
    }
}

/// [`code::RESOURCES`] if errno says the manager or the system ran out of
/// fds or memory, else `other`. Async-signal-safe.
fn resource_or(other: i32) -> i32 {
    match errno() {
        libc::EMFILE | libc::ENFILE | libc::ENOMEM => code::RESOURCES,
        _ => other,
    }
}

/// Closes every fd of the child but `keep`, with `close_range` over the
/// gaps between them (sorted on the stack: async-signal-safe). On a kernel
/// without `close_range` nothing is closed, as before.
///
/// # Safety
///
/// Only in the child after clone: the fds closed are the child's copies.
unsafe fn close_all_but(keep: &[RawFd; 6]) {
    let mut sorted = *keep;
    sorted.sort_unstable();
    let mut from: libc::c_uint = 0;
    for &k in &sorted {
        let k = k as libc::c_uint;
        if k > from {
            libc::syscall(libc::SYS_close_range, from, k - 1, 0 as libc::c_uint);
        }
        from = from.max(k + 1);
    }
    libc::syscall(
        libc::SYS_close_range,
        from,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always
    // valid to read.
    unsafe { *libc::__errno_location() }
}

/// Writes `charond: launch failed: unable to <what> [<subject>]: <strerror
/// text> (errno N)` to fd 2 and exits with `code`. Async-signal-safe: a
/// stack buffer, a static message table (`Errno::desc`), write, _exit.
fn fail(code: i32, what: &[u8], subject: Option<&CStr>) -> ! {
    let e = errno();
    let mut line = StackLine::new();
    line.push(b"charond: launch failed: unable to ");
    line.push(what);
    if let Some(s) = subject {
        line.push(b" ");
        line.push(s.to_bytes());
    }
    line.push(b": ");
    line.push(nix::errno::Errno::from_raw(e).desc().as_bytes());
    line.push(b" (errno ");
    line.push_decimal(e.unsigned_abs());
    line.push(b")");
    let bytes = line.finish();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `bytes` is a
    // live slice of a stack array.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(code)
    }
}

/// One line built in a stack buffer, cut short when full: no allocation,
/// so it may be used between clone and exec.
struct StackLine {
    buf: [u8; 512],
    n: usize,
}

impl StackLine {
    const fn new() -> StackLine {
        StackLine {
            buf: [0; 512],
            n: 0,
        }
    }

    /// Appends what fits, keeping one byte for the newline.
    fn push(&mut self, part: &[u8]) {
        let take = part.len().min(self.buf.len() - 1 - self.n);
        self.buf[self.n..self.n + take].copy_from_slice(&part[..take]);
        self.n += take;
    }

    fn push_decimal(&mut self, mut v: u32) {
        let mut digits = [0u8; 10];
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[d..]);
    }

    /// The line with its newline.
    fn finish(&mut self) -> &[u8] {
        self.buf[self.n] = b'\n';
        &self.buf[..=self.n]
    }
}

/// How an instance ended, from `wait4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// One reaped child with its resource usage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reaped {
    pub pid: libc::pid_t,
    pub status: WaitStatus,
    /// User + system CPU time in microseconds.
    pub cpu_us: u64,
    /// Peak resident set size in KiB.
    pub maxrss_kib: u64,
}

/// Reaps one exited child without blocking; `Ok(None)` when none is left
/// to reap (none exited, or no children at all).
///
/// # Errors
///
/// An unexpected `wait4` error.
pub(crate) fn reap_one() -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, valid zeroed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both out-pointers point to live locals of the right types.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECHILD) => Ok(None),
            Some(libc::EINTR) => reap_one(),
            _ => Err(e),
        };
    }
    if pid == 0 {
        return Ok(None);
    }
    let ws = if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        // Stopped/continued are not requested (no WUNTRACED); report as a
        // signal so the caller never loses the pid.
        WaitStatus::Signaled(0)
    };
    let tv = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    Ok(Some(Reaped {
        pid,
        status: ws,
        cpu_us: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss.max(0) as u64,
    }))
}

/// Page size for `/proc/PID/statm`.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Accepts one connection (close-on-exec, non-blocking).
///
/// # Errors
///
/// The error of `accept4`.
pub(crate) fn accept(listen: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: null address pointers are allowed by accept4(2) when the
    // peer address is not wanted.
    let fd = unsafe {
        libc::accept4(
            listen.as_raw_fd(),
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Ignores SIGPIPE for the manager: a client or instance that went away
/// must not kill it. (Children reset every disposition before exec.)
///
/// # Errors
///
/// The error of `sigaction`.
pub(crate) fn ignore_sigpipe() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler function, so no code of ours can
    // run in signal context; nix marks sigaction unsafe only for handlers.
    unsafe { sigaction(Signal::SIGPIPE, &ignore) }?;
    Ok(())
}

/// Makes charond a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphaned
/// descendants of its instances are re-parented to it, not to init.
///
/// # Errors
///
/// The error of `prctl`.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// The sockets passed to this process under the sd_listen_fds(3) protocol
/// (`LISTEN_PID` is this process, `LISTEN_FDS` counts fds from 3,
/// `LISTEN_FDNAMES` names them), each with its name, made close-on-exec.
/// Only the first call returns them; later calls return none.
///
/// # Errors
///
/// The variables are malformed.
pub(crate) fn take_listen_fds() -> io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (raw, name) in sd_notify::listen_fds_with_names()? {
        // An fd the variables name but that is not open is skipped: it
        // cannot be owned.
        // SAFETY: fcntl(F_GETFD) on any integer only reads the fd table.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            continue;
        }
        // SAFETY: LISTEN_PID is this process (checked by sd_notify), so the
        // fds from 3 were put there for it by whoever exec'd it; the fd is
        // open (just checked); nothing in this process has wrapped it (this
        // is the only place, and TAKEN lets it run once), so the OwnedFd is
        // its one owner.
        out.push((name, unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }));
    }
    Ok(out)
}
