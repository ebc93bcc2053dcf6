//! The panic hook [`crate::Service::init`] installs: a panic prints one
//! line, `NAME: panicked at FILE:LINE:COL: MESSAGE`, as the program's last
//! stderr line, so that the manager's log, `charon stats` and a fast-fail
//! reason (which all show the last stderr line) say what went wrong rather
//! than Rust's `note: run with RUST_BACKTRACE=1 ...`. With
//! `RUST_BACKTRACE` set, the standard report (and its backtrace) comes
//! first, and the one line still last.

use std::any::Any;
use std::io::Write;
use std::panic::Location;

/// Replaces the panic hook with one that writes [`line`] to stderr.
pub(crate) fn install(name: &str) {
    let name = name.to_string();
    let standard = std::panic::take_hook();
    let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    std::panic::set_hook(Box::new(move |info| {
        if backtrace {
            standard(info);
        }
        let thread = std::thread::current();
        let text = line(&name, thread.name(), info.location(), info.payload());
        // One write: the line is not interleaved with other output.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }));
}

/// The panic's one line, newline-terminated: the message's own newlines
/// become spaces. A thread other than `main` is named.
pub(crate) fn line(
    name: &str,
    thread: Option<&str>,
    location: Option<&Location<'_>>,
    payload: &(dyn Any + Send),
) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not text)");
    let mut s = format!("{name}: panicked");
    match thread {
        Some("main") => {}
        Some(t) => s.push_str(&format!(" in thread '{t}'")),
        None => s.push_str(" in an unnamed thread"),
    }
    if let Some(l) = location {
        s.push_str(&format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
    }
    s.push_str(": ");
    s.push_str(&message.replace(['\r', '\n'], " "));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_the_message_and_the_place() {
        let here = Location::caller();
        let l = line("upper", Some("main"), Some(here), &"index out of bounds");
        assert_eq!(
            l,
            format!(
                "upper: panicked at {}:{}:{}: index out of bounds\n",
                here.file(),
                here.line(),
                here.column()
            )
        );
    }

    #[test]
    fn a_string_payload_on_several_lines_stays_one_line() {
        let payload: String = "bad input:\nline two".into();
        let l = line("svc", Some("worker"), None, &payload);
        assert_eq!(l, "svc: panicked in thread 'worker': bad input: line two\n");
        assert_eq!(l.matches('\n').count(), 1);
    }

    #[test]
    fn any_other_payload_is_named() {
        let l = line("svc", None, None, &42_u32);
        assert_eq!(
            l,
            "svc: panicked in an unnamed thread: (a panic payload that is not text)\n"
        );
    }
}
