//! The [`Client`]: options shared by every request, the connections kept for
//! affinity, and the blocking one-request call.
//!
//! The call path connects without blocking (a full backlog is Overloaded at
//! once), sends with one sendmsg, then switches the socket to blocking mode
//! with the time left as its read timeout and blocks in the read: socket,
//! connect, sendmsg, ioctl(FIONBIO), setsockopt(SO_RCVTIMEO), read(s),
//! close. poll(2) is used only if the request cannot be sent at once. Many
//! requests at once are left to [`crate::Batch`], which adds
//! [`Client::batch`] to the client's methods from its own file.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use charon_protocol::{Attributes, FrameBuf, Limits, MAX_CLIENT_NAME};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, ErrorKind};
use crate::exchange::{new_frame, Exchange, Step};
use crate::locate::{connect_key, default_run_dir};
use crate::request::{encode_parts, Request};

/// The default timeout of a call or a batch: 4 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);

/// What a timeout too long to add to the clock (such as `Duration::MAX`,
/// for "no limit") stands for.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The instant `timeout` from now, or a century from now if `timeout` goes
/// past what the clock holds.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Options for a [`Client`], validated by [`ClientBuilder::build`].
///
/// ```no_run
/// use std::time::Duration;
/// let client = charon_client::Client::builder()
///     .run_dir("/tmp/charon-test")
///     .timeout(Duration::from_secs(1))
///     .name("billing")
///     .build()?;
/// # Ok::<(), charon_client::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClientBuilder {
    run_dir: Option<PathBuf>,
    timeout: Option<Duration>,
    limits: Option<Limits>,
    name: Option<String>,
}

impl ClientBuilder {
    /// The run dir holding the services' sockets. Default: see
    /// [`crate::default_run_dir`].
    #[must_use]
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> ClientBuilder {
        self.run_dir = Some(dir.into());
        self
    }

    /// The timeout of each call and of each batch's clock. Default 4 s;
    /// `Duration::MAX` waits as long as the service takes.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = Some(timeout);
        self
    }

    /// The sizes requests must respect and responses may reach. Default:
    /// the protocol's documented limits.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> ClientBuilder {
        self.limits = Some(limits);
        self
    }

    /// The client name sent in every request (for services' logs and
    /// statistics). Default: the program's file name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> ClientBuilder {
        self.name = Some(name.into());
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidOption`] for a zero timeout or a client name
    /// longer than the protocol allows.
    pub fn build(self) -> Result<Client, Error> {
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(
                ErrorKind::InvalidOption("timeout must be greater than zero".to_string()).into(),
            );
        }
        let name = self.name.unwrap_or_else(program_name);
        if name.len() > usize::from(MAX_CLIENT_NAME) {
            return Err(ErrorKind::InvalidOption(format!(
                "client name of {} bytes is too long: at most {MAX_CLIENT_NAME} bytes",
                name.len()
            ))
            .into());
        }
        Ok(Client {
            run_dir: self.run_dir.unwrap_or_else(default_run_dir),
            timeout,
            limits: self.limits.unwrap_or_default(),
            name,
            head: Vec::new(),
            frame: None,
            kept: HashMap::new(),
        })
    }
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .map(|mut n| {
            // Cut on a character boundary so the name always encodes.
            while n.len() > usize::from(MAX_CLIENT_NAME) {
                n.pop();
            }
            n
        })
        .unwrap_or_default()
}

/// A client of Charon services.
///
/// It holds the options (run dir, timeout, limits, client name) and the
/// connections kept by keep-affinity requests, so calls take `&mut self`.
/// Use one client per thread.
#[derive(Debug)]
pub struct Client {
    run_dir: PathBuf,
    timeout: Duration,
    limits: Limits,
    name: String,
    /// Reused encoding buffer for request heads.
    head: Vec<u8>,
    /// Reused response buffer of [`Client::call`]: a fresh one per call
    /// cost an allocation, zeroing its first window, and regrowing (with
    /// copies) for every large response.
    frame: Option<FrameBuf>,
    /// Connections kept for affinity, by requested key.
    kept: HashMap<String, UnixStream>,
}

impl Client {
    /// A client with the default options.
    ///
    /// # Errors
    ///
    /// None in practice; the signature matches [`ClientBuilder::build`].
    pub fn new() -> Result<Client, Error> {
        ClientBuilder::default().build()
    }

    /// A builder for a client with chosen options.
    #[must_use]
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The run dir this client looks services up in.
    #[must_use]
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The timeout of a call, and the default clock of a batch.
    #[must_use]
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The limits requests are checked against.
    #[must_use]
    pub const fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// True when a keep-affinity request left a connection for `key`.
    #[must_use]
    pub fn has_affinity(&self, key: &str) -> bool {
        self.kept.contains_key(key)
    }

    /// Closes the connection kept for `key`, ending the conversation.
    pub fn drop_affinity(&mut self, key: &str) {
        self.kept.remove(key);
    }

    /// Sends `body` to the service `key` and waits for its response.
    ///
    /// # Errors
    ///
    /// Any [`ErrorKind`]: the service's fault, or the framework's reason
    /// for having no response (see the crate docs' `# Retries` and
    /// `# Timeouts`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut client = charon_client::Client::new()?;
    /// let echo = client.call("system.echo.0.raw", b"ping")?;
    /// assert_eq!(echo, b"ping");
    /// # Ok::<(), charon_client::Error>(())
    /// ```
    pub fn call(&mut self, key: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
        self.call_parts(key, &[] as &[(&str, &[u8])], body, Attributes::NONE)
    }

    /// Sends a [`Request`] (with its context and attributes) and waits for
    /// its response. A no-wait request returns an empty body once sent.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], plus [`ErrorKind::NoAffinity`] for a
    /// need-affinity request with no kept connection.
    pub fn call_request(&mut self, req: &Request) -> Result<Vec<u8>, Error> {
        self.call_parts(
            req.key(),
            req.context_entries(),
            req.body(),
            req.attributes(),
        )
    }

    fn call_parts<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        key: &str,
        context: &[(K, V)],
        body: &[u8],
        attrs: Attributes,
    ) -> Result<Vec<u8>, Error> {
        let deadline = deadline_after(self.timeout);
        let limits = self.limits;
        let mut head = std::mem::take(&mut self.head);
        let mut attempt = 1;
        let result = loop {
            let step = encode_parts(
                key,
                &self.name,
                context,
                body.len(),
                attrs,
                attempt,
                &limits,
                &mut head,
            )
            .and_then(|()| self.try_once(key, &head, body, attrs, attempt, deadline));
            match step {
                Err(e) => break Err(e),
                Ok(Step::Sent) => break Ok(Vec::new()),
                Ok(Step::Response(r)) => break r.map_err(|k| Error::with_key(k, key)),
                Ok(Step::SilentClose) if may_retry(attrs, attempt) => attempt = 2,
                Ok(_) => {
                    break Err(Error::with_key(
                        ErrorKind::Disconnected { received: 0 },
                        key,
                    ))
                }
            }
        };
        self.head = head;
        result
    }

    /// One attempt of a call: opens its connection, sends `head` and
    /// `body`, and reads the answer until `deadline`. After a response the
    /// connection is kept if the request asked for it.
    fn try_once(
        &mut self,
        key: &str,
        head: &[u8],
        body: &[u8],
        attrs: Attributes,
        attempt: u8,
        deadline: Instant,
    ) -> Result<Step, Error> {
        let stream = self.open(key, attrs, attempt)?;
        let frame = self.frame.take().unwrap_or_else(|| new_frame(&self.limits));
        let mut ex = Exchange::reusing(stream, frame).wait_before_reading();
        let no_wait = attrs.contains(Attributes::NO_WAIT);
        let step = self.drive(&mut ex, head, body, no_wait, deadline);
        let (stream, frame) = ex.into_parts();
        self.frame = Some(frame);
        let step = step.map_err(|kind| Error::with_key(kind, key))?;
        if let Step::Response(r) = &step {
            self.keep_if_asked(key, attrs, r, stream);
        }
        Ok(step)
    }

    /// The connection a request goes over: the kept one for affinity, or a
    /// fresh one. A retry (attempt 2) always gets a fresh one.
    pub(crate) fn open(
        &mut self,
        key: &str,
        attrs: Attributes,
        attempt: u8,
    ) -> Result<UnixStream, Error> {
        if attempt == 1
            && (attrs.contains(Attributes::NEED_AFFINITY)
                || attrs.contains(Attributes::KEEP_AFFINITY))
        {
            if let Some(s) = self.kept.remove(key) {
                return Ok(s);
            }
        }
        if attrs.contains(Attributes::NEED_AFFINITY) {
            return Err(Error::with_key(ErrorKind::NoAffinity, key));
        }
        match connect_key(&self.run_dir, key) {
            // A retry that finds nobody listening (the service's instances
            // and its manager gone): the request was written to a service
            // that existed and its connection closed before any response.
            // That, not "no such service", is what happened to it.
            Err(e) if attempt == 2 && matches!(e.kind(), ErrorKind::NotFound { .. }) => Err(
                Error::with_key(ErrorKind::Disconnected { received: 0 }, key),
            ),
            other => other,
        }
    }

    /// After a response, keeps the connection if the request asked for it
    /// and the service answered (it keeps reading on the connection).
    pub(crate) fn keep_if_asked(
        &mut self,
        key: &str,
        attrs: Attributes,
        result: &Result<Vec<u8>, ErrorKind>,
        stream: UnixStream,
    ) {
        let answered = matches!(result, Ok(_) | Err(ErrorKind::ServiceFault { .. }));
        if attrs.contains(Attributes::KEEP_AFFINITY) && answered {
            self.kept.insert(key.to_string(), stream);
        }
    }

    /// Runs one exchange to its end, or fails with Timeout: poll(2) while
    /// the request cannot be sent, then blocking reads. A connection kept
    /// for affinity stays in blocking mode; a batch that takes it back sets
    /// it non-blocking.
    fn drive(
        &self,
        ex: &mut Exchange,
        head: &[u8],
        body: &[u8],
        no_wait: bool,
        deadline: Instant,
    ) -> Result<Step, ErrorKind> {
        let mut blocking = false;
        loop {
            let flags = match ex.advance(head, body, no_wait, &self.limits) {
                Step::WantWrite => PollFlags::POLLOUT,
                Step::WantRead => PollFlags::POLLIN,
                done => return Ok(done),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::Timeout {
                    after: self.timeout,
                });
            }
            if flags == PollFlags::POLLIN {
                // Wait in the read itself, as a blocking read with the time
                // left as SO_RCVTIMEO, not in poll(2): the roundtrip bench
                // measured the poll-then-read pattern about 10 us slower at
                // p50 on one request at a time, worth two cheap syscalls
                // (the connect before stays non-blocking, for Overloaded at
                // once). A read that times out gives WouldBlock: WantRead
                // again, and the deadline above ends it.
                let s = ex.stream();
                if (blocking || s.set_nonblocking(false).is_ok())
                    && s.set_read_timeout(Some(left)).is_ok()
                {
                    blocking = true;
                    continue;
                }
            }
            let mut fds = [PollFd::new(ex.fd(), flags)];
            match poll(&mut fds, poll_timeout(left)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::io("wait for the service", e.into())),
            }
        }
    }
}

/// True when a silent close may be resent: first attempt, no no-retry, and
/// not bound to a kept connection.
pub(crate) fn may_retry(attrs: Attributes, attempt: u8) -> bool {
    attempt == 1
        && !attrs.contains(Attributes::NO_RETRY)
        && !attrs.contains(Attributes::NEED_AFFINITY)
}

/// poll(2) counts milliseconds; round up so a wait never ends just before
/// the deadline and spins.
fn poll_timeout(left: Duration) -> PollTimeout {
    let ms = left.as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
