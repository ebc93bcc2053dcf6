//! The one home of `unsafe` in `charon-echo`: putting a signal's
//! disposition back to the default, so that `echo.signal` can crash the
//! process with SIGSEGV or SIGBUS as a real fault would (see `raise` in
//! `main.rs` for why that takes more than raising it), and forking for
//! `echo.fork-panic`.

#![allow(unsafe_code)]

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

/// Sets `sig`'s disposition to SIG_DFL. Errors are ignored: the caller
/// raises `sig` next, and a failure here only means the signal is handled
/// as before.
pub fn default_disposition(sig: Signal) {
    // SAFETY: installing SIG_DFL registers no handler code, so none of
    // signal(2)'s handler requirements (async-signal safety, a handler
    // that stays valid) apply; replacing whatever handler Rust's runtime
    // installed is this call's purpose, and nothing in this program relies
    // on that handler afterwards (the signal is raised to end the process).
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
}

/// Forks: true in the child; the parent waits for the child to end and
/// gets false.
pub fn fork_and_wait() -> nix::Result<bool> {
    // SAFETY: charon-echo runs one thread (the service library starts
    // none), so the child is a whole copy of the process: no lock is held
    // by a thread that does not exist in it, and it may run any code.
    match unsafe { fork() }? {
        ForkResult::Child => Ok(true),
        ForkResult::Parent { child } => waitpid(child, None).map(|_| false),
    }
}
