//! The floor: the same exchange with no framework, so Charon's cost is a
//! ratio against the least a Unix-socket round trip can cost here.
//!
//! N pre-forked server processes block in `accept()` on ONE listening
//! socket; each reads a length-prefixed request (4-byte little-endian
//! length, then the body), writes it back with the same prefix and closes
//! (or, in persistent mode, keeps reading on the connection until the
//! client closes). The servers are this bench binary re-executed with
//! [`SERVE_ENV`] set and the listening socket as their stdin, so no fork
//! (and no fd juggling before exec) is needed.
//! Measuring and reporting are left to the runner.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use charon_protocol::{encode_ok_head, encode_request, Attributes, Limits, RequestHead};

/// Set in a floor server process (its stdin is the listening socket):
/// `persistent` to answer many requests per connection, `oneshot` for one.
pub const SERVE_ENV: &str = "CHARON_BENCH_FLOOR";

/// Runs as a floor server if the environment says so; returns false when
/// this process is the bench itself.
pub fn serve_if_asked() -> bool {
    let Ok(mode) = std::env::var(SERVE_ENV) else {
        return false;
    };
    let persistent = mode == "persistent";
    // The parent made the listening socket this process's stdin.
    let listener = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixListener::from(fd),
        Err(e) => {
            eprintln!("floor server: cannot take the listening socket from stdin: {e}");
            std::process::exit(1);
        }
    };
    let mut buf = Vec::new();
    loop {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        loop {
            match serve_one(&mut conn, &mut buf) {
                Ok(true) if persistent => {}
                _ => break,
            }
        }
    }
}

/// Reads one request and echoes it; `Ok(false)` at a clean end of stream.
fn serve_one(conn: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match conn.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(4 + n, 0);
    conn.read_exact(&mut buf[4..])?;
    conn.write_all(buf)?;
    Ok(true)
}

/// N floor server processes sharing one listening socket; killed and
/// reaped on drop.
pub struct FloorServers {
    children: Vec<Child>,
    path: PathBuf,
}

impl FloorServers {
    /// Binds `path` and starts `n` servers on it.
    pub fn start(path: &Path, n: usize, persistent: bool) -> io::Result<FloorServers> {
        let listener = UnixListener::bind(path)?;
        let exe = std::env::current_exe()?;
        let mut servers = FloorServers {
            children: Vec::new(),
            path: path.to_path_buf(),
        };
        for _ in 0..n {
            // Each server gets the socket as its stdin: a duplicate that
            // only the child keeps (the Command closes ours once spawned).
            let socket = OwnedFd::from(listener.try_clone()?);
            let child = Command::new(&exe)
                .env(SERVE_ENV, if persistent { "persistent" } else { "oneshot" })
                .stdin(Stdio::from(socket))
                .stdout(Stdio::null())
                .spawn()?;
            servers.children.push(child);
        }
        Ok(servers)
    }

    /// The socket clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FloorServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A floor client: the request is encoded once, like a real client that
/// knows its body; the response buffer is reused.
///
/// [`FloorClient::charon`] makes the same minimal client speak the Charon
/// protocol (a pre-encoded request frame, blocking reads of a response of
/// known length): driven against charond's instances it separates what the
/// client library costs from what the instance costs.
pub struct FloorClient {
    path: PathBuf,
    request: Vec<u8>,
    /// The response's length and first bytes (the length prefix, or the
    /// Charon OK head).
    expect_len: usize,
    expect_head: Vec<u8>,
    response: Vec<u8>,
    conn: Option<UnixStream>,
}

impl FloorClient {
    pub fn new(path: &Path, body: &[u8]) -> FloorClient {
        let mut request = Vec::with_capacity(4 + body.len());
        request.extend_from_slice(&(body.len() as u32).to_le_bytes());
        request.extend_from_slice(body);
        FloorClient {
            path: path.to_path_buf(),
            expect_len: request.len(),
            expect_head: request[..4].to_vec(),
            request,
            response: Vec::new(),
            conn: None,
        }
    }

    /// The minimal client for a Charon echo service at `path`.
    pub fn charon(path: &Path, key: &str, body: &[u8], keep: bool) -> FloorClient {
        let limits = Limits::default();
        let mut attributes = Attributes::NONE;
        attributes.set(Attributes::KEEP_AFFINITY, keep);
        let head = RequestHead {
            key,
            client: "bench-raw",
            attempt: 1,
            attributes,
        };
        let mut request = Vec::new();
        encode_request::<&str, &[u8]>(&head, &[], body, &limits, &mut request)
            .unwrap_or_else(|e| unreachable!("the bench's request is valid: {e}"));
        let mut expect_head = Vec::new();
        encode_ok_head(body.len(), &limits, &mut expect_head)
            .unwrap_or_else(|e| unreachable!("the bench's response is valid: {e}"));
        FloorClient {
            path: path.to_path_buf(),
            request,
            expect_len: expect_head.len() + body.len(),
            expect_head,
            response: Vec::new(),
            conn: None,
        }
    }

    /// One exchange on a new connection: connect, write, read, close.
    pub fn call(&mut self) -> Result<(), String> {
        let mut conn =
            UnixStream::connect(&self.path).map_err(|e| format!("floor connect: {e}"))?;
        self.exchange(&mut conn)
    }

    /// One exchange on the connection kept since the first call.
    pub fn call_persistent(&mut self) -> Result<(), String> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => UnixStream::connect(&self.path).map_err(|e| format!("floor connect: {e}"))?,
        };
        self.exchange(&mut conn)?;
        self.conn = Some(conn);
        Ok(())
    }

    fn exchange(&mut self, conn: &mut UnixStream) -> Result<(), String> {
        conn.write_all(&self.request)
            .map_err(|e| format!("floor write: {e}"))?;
        self.response.resize(self.expect_len, 0);
        conn.read_exact(&mut self.response)
            .map_err(|e| format!("floor read: {e}"))?;
        if !self.response.starts_with(&self.expect_head) {
            return Err("floor answered a different length".to_string());
        }
        Ok(())
    }
}
