//! The control socket, `<run-dir>/charond.sock` (mode 0600): line-delimited
//! JSON, one request line in, one response line out, in order (specified in
//! doc/control-protocol.md). Everything here is non-blocking inside the
//! event loop: each connection has a bounded read buffer and an output
//! buffer; a line too long, bad JSON or an unknown command gets an error
//! answer and the manager goes on.
//!
//! This file owns the socket, its connections and their buffers
//! (`Control`'s fields are its own): it accepts, reads, hands out the
//! next request of a connection, queues answers and writes them, and
//! closes idle connections. It never sees the manager: the loop
//! (`runtime/control.rs`) asks it for requests and gives it the answers,
//! computed by `runtime/snapshot.rs` (stats, ps), `runtime/reload.rs` and
//! `runtime/restart.rs`.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::Interest;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::log::warning;
use crate::reload::ReloadReport;
use crate::starved::Starvation;
use crate::tokens::{token, Owner};

/// The control socket's file name in the run dir.
pub const SOCKET_NAME: &str = "charond.sock";
/// Longest request line accepted; a longer one is answered with an error
/// and the connection closed.
pub const MAX_LINE: usize = 64 * 1024;
/// Control connections open at once; more are answered with an error.
pub const MAX_CONNS: usize = 32;
/// Stop reading a connection's requests while this much of its output is
/// unsent (a client that sends without reading cannot grow it unbounded).
pub const MAX_UNSENT: usize = 16 * 1024;
/// A connection that neither sends a byte nor takes one of its answers for
/// this long is closed (one waiting for a reload's answer excepted), so
/// that idle or stuck connections cannot hold the connection limit.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from one connection per round, and rounds per wake-up: the
/// rest waits for the next turn of the loop, so a client that writes
/// without pause cannot hold the manager.
const READ_BUDGET: usize = 16 * 1024;
pub(crate) const ROUNDS: usize = 4;
/// Capacity a connection's buffers keep between requests.
const KEEP_BUFFER: usize = 16 * 1024;

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Figures per service, or of one key.
    Stats(Option<String>),
    /// One entry per instance, or of one key's instances.
    Ps(Option<String>),
    /// Rescan the config dir.
    Reload,
    /// End a backoff and recycle the instances of a key.
    Restart(String),
    /// The manager's version.
    Version,
    /// Whether every service can take requests now (for probes).
    Health,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cmd: String,
    #[serde(default)]
    key: Option<String>,
}

/// Parses one request line (without its newline).
///
/// # Errors
///
/// A message saying what is wrong and what would be valid.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    let raw: Raw = serde_json::from_slice(line).map_err(|e| {
        format!(
            "request is not a valid JSON object with \"cmd\" and an optional \"key\" ({e}); send one per line, e.g. {{\"cmd\":\"stats\"}}"
        )
    })?;
    let key = raw.key;
    match raw.cmd.as_str() {
        "stats" => Ok(Request::Stats(key)),
        "ps" => Ok(Request::Ps(key)),
        "reload" => no_key("reload", key).map(|()| Request::Reload),
        "version" => no_key("version", key).map(|()| Request::Version),
        "health" => no_key("health", key).map(|()| Request::Health),
        "restart" => key
            .map(Request::Restart)
            .ok_or_else(|| "command \"restart\" needs a \"key\"".to_string()),
        other => Err(format!(
            "unknown command {other:?}; valid commands are stats, ps, reload, restart, version, health"
        )),
    }
}

fn no_key(cmd: &str, key: Option<String>) -> Result<(), String> {
    match key {
        None => Ok(()),
        Some(_) => Err(format!("command {cmd:?} takes no \"key\"")),
    }
}

/// An error answer line's value.
pub fn error_answer(msg: &str) -> Value {
    json!({ "ok": false, "error": msg })
}

struct Conn {
    stream: UnixStream,
    serial: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    /// No more requests: close once the output is sent.
    closing: bool,
    /// A reload's answer is due before any later request is answered.
    awaiting_reload: bool,
    /// The line being read grew past [`MAX_LINE`]: answer an error after
    /// the complete lines before it, then close.
    too_long: bool,
    /// Last time a byte came in or one of its answers went out.
    active: Instant,
}

/// The listening socket and its connections.
pub(crate) struct Control {
    listener: UnixListener,
    path: PathBuf,
    conns: Vec<Option<Conn>>,
    next_serial: u64,
    /// Connections with work left after their wake-up's budget.
    again: Vec<usize>,
}

impl Control {
    /// Binds `<run-dir>/charond.sock` owner-only.
    ///
    /// # Errors
    ///
    /// The bind failed.
    pub(crate) fn bind(run_dir: &Path) -> io::Result<Control> {
        let path = run_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Created owner-only, not chmod-ed after: no moment when others
        // could connect. The manager is single-threaded here.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = bound?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Control {
            listener,
            path,
            conns: Vec::new(),
            next_serial: 1,
            again: Vec::new(),
        })
    }

    /// Removes the socket file.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// When connection `c` passes the idle timeout, if it is open and not
    /// waiting for a reload's answer.
    pub(crate) fn idle_deadline(&self, c: usize) -> Option<Instant> {
        let conn = self.conns.get(c)?.as_ref()?;
        (!conn.awaiting_reload).then_some(conn.active + IDLE_TIMEOUT)
    }

    pub(crate) fn register(&mut self, reg: &mio::Registry) -> io::Result<()> {
        reg.register(
            &mut self.listener,
            token(Owner::ControlListen),
            Interest::READABLE,
        )
    }
}

impl Control {
    /// The control socket is readable: take every waiting connection.
    /// `spare` gives up its fd for a moment to answer a connection when
    /// none is left. Returns the new connections.
    pub(crate) fn accept(&mut self, reg: &mio::Registry, spare: &mut Starvation) -> Vec<usize> {
        let mut new = Vec::new();
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return new,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                        && spare.give_up_spare() =>
                {
                    // Out of fds: the operator gets the reason at once
                    // rather than a connection left waiting (the listener
                    // is edge-triggered, so it would wait for the next).
                    // accept(2) says EMFILE even with nothing waiting: stop
                    // once nothing was taken.
                    let took = self.listener.accept().map(|(mut stream, _)| {
                        let mut line = error_answer(&format!(
                            "charond is out of file descriptors ({e}); try again"
                        ))
                        .to_string();
                        line.push('\n');
                        let _ = stream.write(line.as_bytes());
                    });
                    spare.take_back_spare();
                    if took.is_err() {
                        return new;
                    }
                    continue;
                }
                Err(e) => {
                    warning!(None, None, "unable to accept a control connection: {e}");
                    return new;
                }
            };
            if let Some(c) = self.add(stream, reg) {
                new.push(c);
            }
        }
    }

    /// Takes a new connection in (or turns it away, past [`MAX_CONNS`]).
    /// Returns its index.
    fn add(&mut self, mut stream: UnixStream, reg: &mio::Registry) -> Option<usize> {
        let live = self.conns.iter().filter(|c| c.is_some()).count();
        if live >= MAX_CONNS {
            let mut line = error_answer(&format!(
                "too many control connections (at most {MAX_CONNS}); try again"
            ))
            .to_string();
            line.push('\n');
            // Best effort: a fresh socket's buffer takes one short line.
            let _ = stream.write(line.as_bytes());
            return None;
        }
        let idx = self
            .conns
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.conns.len());
        if let Err(e) = reg.register(
            &mut stream,
            token(Owner::ControlConn(idx)),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warning!(None, None, "unable to watch a control connection: {e}");
            return None;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let conn = Conn {
            stream,
            serial,
            input: Vec::new(),
            output: Vec::new(),
            closing: false,
            awaiting_reload: false,
            too_long: false,
            active: Instant::now(),
        };
        if idx == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[idx] = Some(conn);
        }
        Some(idx)
    }

    fn conn_mut(&mut self, c: usize) -> Option<&mut Conn> {
        self.conns.get_mut(c).and_then(Option::as_mut)
    }

    /// True if connection `c` has work left after a round: bytes perhaps
    /// left unread (`unread`, no readiness edge will say so), or lines left
    /// while its output has room (a writable edge comes only after a full
    /// socket buffer).
    pub(crate) fn has_more(&mut self, c: usize, unread: bool) -> bool {
        let Some(conn) = self.conn_mut(c) else {
            return false;
        };
        let unserved =
            !conn.awaiting_reload && conn.output.len() < MAX_UNSENT && conn.input.contains(&b'\n');
        unread || unserved
    }

    /// Connection `c` had work left after its wake-up's budget: it gets
    /// another turn.
    pub(crate) fn again(&mut self, c: usize) {
        if !self.again.contains(&c) {
            self.again.push(c);
        }
    }

    /// The connections to give another turn, taken.
    pub(crate) fn take_again(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.again)
    }

    /// Reads what is there, up to the line limit and the round's budget.
    /// True if it stopped on the budget with bytes perhaps left unread
    /// (no readiness edge will say so).
    pub(crate) fn read(&mut self, c: usize) -> bool {
        let Some(conn) = self.conn_mut(c) else {
            return false;
        };
        let mut buf = [0u8; 8192];
        let mut budget = READ_BUDGET;
        // Waiting for a reload's answer or for the output to drain: the
        // reload's answer and the writable edge resume reading.
        while !conn.closing && !conn.awaiting_reload && conn.output.len() < MAX_UNSENT {
            if budget == 0 {
                return true;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.closing = true;
                }
                Ok(n) => {
                    conn.active = Instant::now();
                    budget = budget.saturating_sub(n);
                    conn.input.extend_from_slice(&buf[..n]);
                    let pending_line = conn.input.iter().rposition(|b| *b == b'\n');
                    let tail = pending_line.map_or(conn.input.len(), |i| conn.input.len() - i - 1);
                    if tail > MAX_LINE {
                        // Nothing after the last newline can become a valid
                        // line: answer what came before, then refuse.
                        let keep = pending_line.map_or(0, |i| i + 1);
                        conn.input.truncate(keep);
                        conn.too_long = true;
                        conn.closing = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.closing = true;
                    conn.input.clear();
                }
            }
        }
        false
    }

    /// The next request of connection `c` to answer, with its
    /// connection's serial, in order; None once a reload must be answered
    /// first, too much output waits, or no complete line is left. Lines
    /// that are blank are skipped; lines that are not a request, and a
    /// line too long, are answered with an error here. A reload marks the
    /// connection as waiting for its answer ([`Control::answer_reload`]).
    pub(crate) fn next_request(&mut self, c: usize) -> Option<(Request, u64)> {
        loop {
            let conn = self.conn_mut(c)?;
            if conn.awaiting_reload || conn.output.len() >= MAX_UNSENT {
                return None;
            }
            let Some(nl) = conn.input.iter().position(|b| *b == b'\n') else {
                if conn.too_long {
                    conn.too_long = false;
                    conn.input.clear();
                    let e = error_answer(&format!(
                        "request line longer than {MAX_LINE} bytes; closing the connection"
                    ));
                    self.push(c, &e);
                    return None;
                }
                if conn.closing && !conn.input.is_empty() {
                    // A last line without its newline is still a request.
                    conn.input.push(b'\n');
                    continue;
                }
                return None;
            };
            let line: Vec<u8> = conn.input.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse(line) {
                Err(e) => self.push(c, &error_answer(&e)),
                Ok(req) => {
                    conn.awaiting_reload = req == Request::Reload;
                    return Some((req, conn.serial));
                }
            }
        }
    }

    /// Queues one answer line on connection `c`.
    pub(crate) fn push(&mut self, c: usize, v: &Value) {
        if let Some(conn) = self.conn_mut(c) {
            // Serializing a Value cannot fail.
            let _ = serde_json::to_writer(&mut conn.output, v);
            conn.output.push(b'\n');
        }
    }

    /// Sends what it can; closes a finished connection.
    pub(crate) fn flush(&mut self, c: usize, reg: &mio::Registry) {
        let Some(conn) = self.conn_mut(c) else {
            return;
        };
        let mut broken = false;
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => {
                    conn.active = Instant::now();
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        // A large answer once sent leaves no large buffer behind: 32
        // connections' buffers stay small (doc/control-protocol.md).
        if conn.output.is_empty() && conn.output.capacity() > KEEP_BUFFER {
            conn.output.shrink_to(KEEP_BUFFER);
        }
        if conn.input.capacity() > KEEP_BUFFER && conn.input.len() <= KEEP_BUFFER {
            conn.input.shrink_to(KEEP_BUFFER);
        }
        let done = conn.closing
            && conn.output.is_empty()
            && !conn.awaiting_reload
            && !conn.input.contains(&b'\n');
        if broken || done {
            self.close(c, reg);
        }
    }

    /// Closes connection `c` if it has been idle past [`IDLE_TIMEOUT`] at
    /// `now`, telling it why (best effort: its socket buffer may be full).
    pub(crate) fn expire(&mut self, c: usize, now: Instant, reg: &mio::Registry) {
        if self.idle_deadline(c).is_none_or(|t| t > now) {
            return;
        }
        if let Some(conn) = self.conn_mut(c) {
            let mut line = error_answer(&format!(
                "idle for {}s (no request sent and no answer taken): closing the connection",
                IDLE_TIMEOUT.as_secs()
            ))
            .to_string();
            line.push('\n');
            let _ = conn.stream.write(line.as_bytes());
        }
        self.close(c, reg);
    }

    fn close(&mut self, c: usize, reg: &mio::Registry) {
        if let Some(mut conn) = self.conns.get_mut(c).and_then(Option::take) {
            let _ = reg.deregister(&mut conn.stream);
        }
    }

    /// Queues a reload's answer on the connection that asked (`serial`),
    /// if still there, and lets it read again. Returns that connection,
    /// to be served.
    pub(crate) fn answer_reload(
        &mut self,
        serial: u64,
        r: Result<ReloadReport, String>,
    ) -> Option<usize> {
        let c = self
            .conns
            .iter()
            .position(|x| x.as_ref().is_some_and(|x| x.serial == serial))?;
        let v = match r {
            Ok(rep) => {
                let mut v = serde_json::to_value(&rep).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("ok".into(), Value::Bool(rep.failed.is_empty()));
                }
                v
            }
            Err(e) => error_answer(&e),
        };
        self.push(c, &v);
        if let Some(conn) = self.conn_mut(c) {
            conn.awaiting_reload = false;
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_command() {
        assert_eq!(parse(br#"{"cmd":"stats"}"#), Ok(Request::Stats(None)));
        assert_eq!(
            parse(br#"{"cmd":"stats","key":"a.b.0.raw"}"#),
            Ok(Request::Stats(Some("a.b.0.raw".into())))
        );
        assert_eq!(parse(br#"{"cmd":"ps"}"#), Ok(Request::Ps(None)));
        assert_eq!(parse(br#" {"cmd":"reload"} "#), Ok(Request::Reload));
        assert_eq!(parse(br#"{"cmd":"version"}"#), Ok(Request::Version));
        assert_eq!(parse(br#"{"cmd":"health"}"#), Ok(Request::Health));
        assert_eq!(
            parse(br#"{"cmd":"restart","key":"a.b.0.raw"}"#),
            Ok(Request::Restart("a.b.0.raw".into()))
        );
    }

    #[test]
    fn refuses_with_what_would_be_valid() {
        let e = parse(b"stats").unwrap_err();
        assert!(
            e.contains("not a valid JSON object") && e.contains(r#"{"cmd":"stats"}"#),
            "{e}"
        );
        let e = parse(br#"{"cmd":"frobnicate"}"#).unwrap_err();
        assert!(
            e.contains("unknown command \"frobnicate\"") && e.contains("stats, ps, reload"),
            "{e}"
        );
        let e = parse(br#"{"cmd":"restart"}"#).unwrap_err();
        assert!(e.contains("needs a \"key\""), "{e}");
        let e = parse(br#"{"cmd":"reload","key":"x"}"#).unwrap_err();
        assert!(e.contains("takes no \"key\""), "{e}");
        let e = parse(br#"{"cmd":"health","key":"x"}"#).unwrap_err();
        assert!(e.contains("takes no \"key\""), "{e}");
        let e = parse(br#"{"cmd":"stats","extra":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(br#"{"cmd":7}"#).unwrap_err();
        assert!(e.contains("not a valid JSON object"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_commands_are_errors_unless_known(cmd in "[a-z]{0,12}") {
            let line = format!(r#"{{"cmd":"{cmd}"}}"#);
            let known = ["stats", "ps", "reload", "version", "health"].contains(&cmd.as_str());
            prop_assert_eq!(parse(line.as_bytes()).is_ok(), known);
        }
    }
}
