//! Tunables of the request loop: size limits and the three timeouts, with
//! their defaults and the environment variables that override them.
//!
//! The environment wins over a program's own choice because it comes from
//! the operator (the manager copies `affinity-timeout` from the service's
//! config, for instance). Which mode runs is decided in `mode.rs`.

use std::time::Duration;

use charon_protocol::managed::{
    ENV_AFFINITY_TIMEOUT_MS, ENV_DRAIN_TIMEOUT_MS, ENV_READ_TIMEOUT_MS,
};
use charon_protocol::Limits;

use crate::error::{Error, ErrorKind};

/// Default for [`Options::read_timeout`]: 10 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Options::affinity_timeout`]: 60 s.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`Options::write_timeout`]: 10 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Options::drain_timeout`]: 10 s (the manager's default
/// `stop-grace`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest timeout the environment may set: one day.
const MAX_ENV_MS: u64 = 86_400_000;

/// Tunables for [`crate::Service::init_with`].
///
/// ```
/// use std::time::Duration;
/// let mut opts = charon_service::Options::default();
/// opts.read_timeout = Duration::from_secs(2);
/// opts.limits.max_request_body = 1 << 20;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Sizes a request may have. A request over them is answered with a
    /// `REQUEST_TOO_LARGE` framework error before its body is read, and a
    /// response over [`Limits::max_response_body`] is replaced by a
    /// `RESPONSE_TOO_LARGE` error.
    pub limits: Limits,
    /// How long an accepted connection may take to deliver its whole
    /// request (and a kept connection its next request, once its first
    /// byte has arrived). Past it the client gets a `READ_TIMEOUT`
    /// framework error and the connection is closed. Overridden by
    /// `CHARON_READ_TIMEOUT_MS`.
    pub read_timeout: Duration,
    /// How long a connection kept for affinity may sit idle waiting for the
    /// client's next request before it is closed. Overridden by
    /// `CHARON_AFFINITY_TIMEOUT_MS`.
    pub affinity_timeout: Duration,
    /// How long a client may take to read a response before the instance
    /// gives up on it (counted as no answer).
    pub write_timeout: Duration,
    /// How long a drain (SIGUSR1, or the manager gone) keeps taking
    /// connections from the socket's queue; after it the request in hand is
    /// finished and [`crate::Service::next_request`] returns `None`. It
    /// bounds a drain that new clients keep feeding. Overridden by
    /// `CHARON_DRAIN_TIMEOUT_MS` (the manager passes the service's
    /// `stop-grace`).
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            limits: Limits::default(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            affinity_timeout: DEFAULT_AFFINITY_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl Options {
    /// Applies the environment's overrides.
    pub(crate) fn with_env(
        mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, Error> {
        if let Some(d) = env_ms(&env, ENV_READ_TIMEOUT_MS)? {
            self.read_timeout = d;
        }
        if let Some(d) = env_ms(&env, ENV_AFFINITY_TIMEOUT_MS)? {
            self.affinity_timeout = d;
        }
        if let Some(d) = env_ms(&env, ENV_DRAIN_TIMEOUT_MS)? {
            self.drain_timeout = d;
        }
        Ok(self)
    }
}

fn env_ms(
    env: impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<Duration>, Error> {
    let Some(value) = env(var) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(ms) if (1..=MAX_ENV_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(Error::new(ErrorKind::BadEnv {
            var,
            value,
            expected: "a whole number of milliseconds from 1 to 86400000",
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_overrides_defaults() {
        let o = Options::default()
            .with_env(env_of(&[
                ("CHARON_READ_TIMEOUT_MS", "250"),
                ("CHARON_AFFINITY_TIMEOUT_MS", " 1500 "),
                ("CHARON_DRAIN_TIMEOUT_MS", "2000"),
            ]))
            .unwrap();
        assert_eq!(o.read_timeout, Duration::from_millis(250));
        assert_eq!(o.affinity_timeout, Duration::from_millis(1500));
        assert_eq!(o.drain_timeout, Duration::from_secs(2));
        assert_eq!(o.write_timeout, DEFAULT_WRITE_TIMEOUT);
        let o = Options::default().with_env(env_of(&[])).unwrap();
        assert_eq!(o, Options::default());
    }

    #[test]
    fn bad_values_name_the_variable_and_the_range() {
        for bad in ["0", "-1", "ten", "", "86400001"] {
            let pairs: &'static [(&str, &str)] =
                Box::leak(vec![("CHARON_READ_TIMEOUT_MS", bad)].into_boxed_slice());
            let err = Options::default().with_env(env_of(pairs)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("CHARON_READ_TIMEOUT_MS must be"), "{msg}");
            assert!(msg.contains("1 to 86400000"), "{msg}");
        }
    }
}
