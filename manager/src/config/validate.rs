//! From the TOML side to a [`ServiceConfig`]: units, ranges, relations
//! between keys, and paths resolved against the config dir.
//!
//! Input is a [`RawService`] whose TOML types are already checked by
//! `raw.rs`; this module decides what each value means and whether it is
//! allowed. It reports every problem it finds, not just the first. Reading
//! files and naming services is left to `mod.rs`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use charon_protocol::ServiceKey;

use super::error::Errors;
use super::raw::{At, Exec, IntOrText, RawService, KEYS};
use super::units::{parse_duration, parse_octal_mode, parse_size};
use super::ServiceConfig;

/// The most processes a service may have.
pub(crate) const MAX_PROCESSES: i64 = 10_000;

/// The longest duration any key accepts. Far beyond any sensible setting,
/// and small enough that adding it to an `Instant` cannot overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Environment names with this prefix are set by the manager itself.
const RESERVED_ENV_PREFIX: &str = "CHARON_";

/// Builds the validated config, or records why it cannot.
///
/// `dir` is the config dir, absolute, against which relative `cd` and
/// `exec` paths resolve.
pub(crate) fn validate(
    raw: &RawService,
    key: ServiceKey,
    file: &Path,
    dir: &Path,
    errors: &mut Errors,
) -> Option<ServiceConfig> {
    let mut v = Validator { errors, dir };
    let exec = match &raw.exec {
        Some(exec) => v.exec(exec),
        None if raw.exec_written => None,
        None => {
            v.errors.at(
                None,
                "exec",
                "missing: every service needs exec, the program to run, \
                 e.g. exec = \"/usr/bin/my-service --flag\"",
            );
            None
        }
    };
    let mut cfg = ServiceConfig::defaults(key, file.to_path_buf(), exec.unwrap_or_default());
    v.paths_and_names(raw, &mut cfg);
    v.processes(raw, &mut cfg);
    v.timing(raw, &mut cfg);
    v.limits(raw, &mut cfg);
    v.socket(raw, &mut cfg);
    if v.errors.is_empty() {
        Some(cfg)
    } else {
        None
    }
}

struct Validator<'a> {
    errors: &'a mut Errors,
    dir: &'a Path,
}

/// For an optional key: `None` when absent, `Some(None)` when present but
/// invalid (already reported), `Some(Some(value))` when valid.
type Checked<T> = Option<Option<T>>;

/// What is wrong with an `[env]` entry, if anything.
fn env_problem(name: &str, value: &str) -> Option<String> {
    if name.is_empty() {
        Some("an environment name must not be empty".to_string())
    } else if name.contains('=') {
        Some("an environment name must not contain '='".to_string())
    } else if name.contains('\0') || value.contains('\0') {
        Some("an environment name or value must not contain a NUL character".to_string())
    } else if KEYS.contains(&name) {
        // TOML puts every line after `[env]` into env, so a key written
        // below the table lands here by mistake.
        Some(format!(
            "{name:?} is a config key, not an environment name: keys written \
             after [env] belong to env, so move it above the [env] line"
        ))
    } else if name.starts_with(RESERVED_ENV_PREFIX) {
        Some(format!(
            "names starting with {RESERVED_ENV_PREFIX} are reserved: the manager sets them"
        ))
    } else {
        None
    }
}

/// Overwrites a default with a valid value.
fn put<T>(target: &mut T, checked: Checked<T>) {
    if let Some(Some(value)) = checked {
        *target = value;
    }
}

impl Validator<'_> {
    fn exec(&mut self, exec: &At<Exec>) -> Option<Vec<String>> {
        let words: Vec<(String, Option<usize>)> = match &exec.value {
            Exec::Words(s) => s
                .split_whitespace()
                .map(|w| (w.to_string(), exec.line))
                .collect(),
            Exec::List(list) => list.iter().map(|w| (w.value.clone(), w.line)).collect(),
        };
        let Some((program, _)) = words.first() else {
            self.errors.at(
                exec.line,
                &exec.key,
                "is empty: give the program to run and its arguments, \
                 e.g. exec = \"/usr/bin/my-service --flag\"",
            );
            return None;
        };
        if !self.words_ok(exec, program, &words) {
            return None;
        }
        let mut argv: Vec<String> = words.into_iter().map(|(w, _)| w).collect();
        if let Some(program) = argv.first_mut() {
            self.resolve_program(exec, program)?;
        }
        Some(argv)
    }

    /// Checks the words of `exec`: a program is named and no word holds a
    /// NUL. Each problem is an error.
    fn words_ok(
        &mut self,
        exec: &At<Exec>,
        program: &str,
        words: &[(String, Option<usize>)],
    ) -> bool {
        let mut ok = true;
        if program.is_empty() {
            ok = false;
            self.errors.at(
                exec.line,
                &exec.key,
                "the program (element 0) is an empty string: name a program",
            );
        }
        for (i, (word, line)) in words.iter().enumerate() {
            if word.contains('\0') {
                ok = false;
                let message =
                    format!("element {i} contains a NUL character, which no argument may hold");
                self.errors.at(*line, &exec.key, message);
            }
        }
        ok
    }

    /// Resolves a relative `program` path with a '/' against the config
    /// dir; it would otherwise depend on the manager's own cwd. A bare
    /// name is looked up in PATH at spawn time and left as it is. None
    /// (an error) if the path cannot be resolved.
    fn resolve_program(&mut self, exec: &At<Exec>, program: &mut String) -> Option<()> {
        if program.contains('/') && Path::new(program.as_str()).is_relative() {
            let resolved = self.resolve(Path::new(program.as_str()));
            let Some(resolved) = resolved.to_str() else {
                self.errors.at(
                    exec.line,
                    &exec.key,
                    "the config dir's path is not UTF-8, so this relative program \
                     path cannot be resolved: use an absolute path",
                );
                return None;
            };
            *program = resolved.to_string();
        }
        Some(())
    }

    /// `dir/path` with `.` components dropped, for readable logs.
    fn resolve(&self, path: &Path) -> PathBuf {
        self.dir
            .join(path)
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect()
    }

    fn paths_and_names(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        if let Some(cd) = &raw.cd {
            if cd.value.is_empty() {
                self.errors.at(
                    cd.line,
                    &cd.key,
                    "is empty: name a directory, or leave cd out to run in the config dir",
                );
            } else if cd.value.contains('\0') {
                self.errors.at(
                    cd.line,
                    &cd.key,
                    "contains a NUL character, which no path may hold",
                );
            } else {
                cfg.cd = Some(self.resolve(Path::new(&cd.value)));
            }
        }
        for entry in &raw.env {
            let (name, value) = &entry.value;
            match env_problem(name, value) {
                Some(message) => self.errors.at(entry.line, &entry.key, message),
                None => {
                    cfg.env.insert(name.clone(), value.clone());
                }
            }
        }
        put(&mut cfg.user, raw.user.as_ref().map(|v| self.account(v)));
        put(&mut cfg.group, raw.group.as_ref().map(|v| self.account(v)));
        put(
            &mut cfg.socket_group,
            raw.socket_group.as_ref().map(|v| self.account(v)),
        );
    }

    /// A user or group name (or number): looked up at spawn time, so only
    /// its shape is checked here.
    fn account(&mut self, v: &At<String>) -> Option<Option<String>> {
        let s = &v.value;
        let bad = s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/');
        if bad {
            self.errors.at(
                v.line,
                &v.key,
                format!(
                    "{s:?} is not a user or group name: use a non-empty name or number \
                     without spaces, ':' or '/'"
                ),
            );
            return None;
        }
        Some(Some(s.clone()))
    }

    fn processes(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        self.pool_bounds(raw, cfg);
        if let Some(v) = &raw.prestart_processes {
            cfg.prestart_processes = v.value;
        }
        if let Some(v) = &raw.template {
            cfg.template = v.value;
        }
        put(
            &mut cfg.occupancy_percent,
            raw.occupancy_percent.as_ref().map(|v| self.int(v, 1, 100)),
        );
        put(
            &mut cfg.maximum_requests,
            raw.maximum_requests
                .as_ref()
                .map(|v| self.int(v, 0, i64::MAX)),
        );
        put(
            &mut cfg.maximum_requests_jitter,
            raw.maximum_requests_jitter
                .as_ref()
                .map(|v| self.int(v, 0, 50)),
        );
        put(
            &mut cfg.crash_loop_count,
            raw.crash_loop_count
                .as_ref()
                .map(|v| self.int(v, 1, 10_000)),
        );
        put(
            &mut cfg.listen_backlog,
            raw.listen_backlog.as_ref().map(|v| self.int(v, 1, 65_535)),
        );
    }

    /// `minimum-processes` and `maximum-processes`, each valid and the
    /// minimum not above the maximum.
    fn pool_bounds(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        let min = raw
            .minimum_processes
            .as_ref()
            .map(|v| self.int(v, 0, MAX_PROCESSES));
        let max = raw
            .maximum_processes
            .as_ref()
            .map(|v| self.int(v, 1, MAX_PROCESSES));
        put(&mut cfg.minimum_processes, min);
        put(&mut cfg.maximum_processes, max);
        let both_valid = !matches!(min, Some(None)) && !matches!(max, Some(None));
        if both_valid && cfg.minimum_processes > cfg.maximum_processes {
            // Blame the key that was written; the other may be a default.
            let at = raw
                .minimum_processes
                .as_ref()
                .or(raw.maximum_processes.as_ref());
            let (line, key) = at.map_or((None, "minimum-processes"), |v| (v.line, &*v.key));
            let message = format!(
                "minimum-processes ({}) must not be more than maximum-processes ({}{})",
                cfg.minimum_processes,
                cfg.maximum_processes,
                if max.is_none() { ", the default" } else { "" },
            );
            self.errors.at(line, key, message);
        }
    }

    fn timing(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        let positive =
            |s: &mut Self, v: &Option<At<IntOrText>>| v.as_ref().map(|v| s.duration(v, false));
        put(&mut cfg.idle_timeout, positive(self, &raw.idle_timeout));
        put(
            &mut cfg.crash_loop_interval,
            positive(self, &raw.crash_loop_interval),
        );
        put(
            &mut cfg.affinity_timeout,
            positive(self, &raw.affinity_timeout),
        );
        put(&mut cfg.read_timeout, positive(self, &raw.read_timeout));
        put(&mut cfg.stop_grace, positive(self, &raw.stop_grace));
        put(
            &mut cfg.startup_timeout,
            positive(self, &raw.startup_timeout),
        );
        // 0 turns the unresponsive check off, stored as None.
        if let Some(v) = &raw.unresponsive_timeout {
            if let Some(d) = self.duration(v, true) {
                cfg.unresponsive_timeout = (!d.is_zero()).then_some(d);
            }
        }
        let cap = positive(self, &raw.exec_failure_backoff);
        let initial = positive(self, &raw.backoff_initial);
        put(&mut cfg.exec_failure_backoff, cap);
        put(&mut cfg.backoff_initial, initial);
        let both_valid = !matches!(cap, Some(None)) && !matches!(initial, Some(None));
        if both_valid && cfg.backoff_initial > cfg.exec_failure_backoff {
            let at = raw
                .backoff_initial
                .as_ref()
                .or(raw.exec_failure_backoff.as_ref());
            let (line, key) = at.map_or((None, "backoff-initial"), |v| (v.line, &*v.key));
            let message = format!(
                "backoff-initial ({}) must not be more than exec-failure-backoff ({}{}), \
                 the backoff's cap",
                show_duration(cfg.backoff_initial),
                show_duration(cfg.exec_failure_backoff),
                if cap.is_none() { ", the default" } else { "" },
            );
            self.errors.at(line, key, message);
        }
    }

    fn limits(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        let cpu = raw
            .ulimit_cpu_milliseconds
            .as_ref()
            .map(|v| self.int(v, 1, i64::MAX).map(Some));
        put(&mut cfg.ulimit_cpu_milliseconds, cpu);
        let data = raw
            .ulimit_data_memory
            .as_ref()
            .map(|v| self.size(v).map(Some));
        put(&mut cfg.ulimit_data_memory, data);
        // An instance needs fds 0-2, the arranged fds and a connection.
        let files = raw
            .ulimit_open_files
            .as_ref()
            .map(|v| self.int(v, 16, 1 << 20).map(Some));
        put(&mut cfg.ulimit_open_files, files);
        let rss = raw.maximum_rss.as_ref().map(|v| self.size(v).map(Some));
        put(&mut cfg.maximum_rss, rss);
    }

    fn socket(&mut self, raw: &RawService, cfg: &mut ServiceConfig) {
        put(
            &mut cfg.socket_mode,
            raw.socket_mode.as_ref().map(|v| self.mode(v)),
        );
        let uids = raw
            .allowed_uids
            .as_ref()
            .map(|v| self.ids(v, "uid").map(Some));
        put(&mut cfg.allowed_uids, uids);
        let gids = raw
            .allowed_gids
            .as_ref()
            .map(|v| self.ids(v, "gid").map(Some));
        put(&mut cfg.allowed_gids, gids);
    }

    /// An integer in `lo..=hi`, converted to the field's type.
    fn int<T: TryFrom<i64>>(&mut self, v: &At<i64>, lo: i64, hi: i64) -> Option<T> {
        let n = v.value;
        if n < lo || n > hi {
            let message = if hi == i64::MAX {
                format!("must be at least {lo}, but it is {n}")
            } else {
                format!("must be between {lo} and {hi}, but it is {n}")
            };
            self.errors.at(v.line, &v.key, message);
            return None;
        }
        // The callers' ranges fit their fields' types, so this never fails.
        T::try_from(n).ok()
    }

    fn duration(&mut self, v: &At<IntOrText>, zero_is_off: bool) -> Option<Duration> {
        let d = match &v.value {
            IntOrText::Int(n) => match u64::try_from(*n) {
                Ok(secs) => Ok(Duration::from_secs(secs)),
                Err(_) => Err(format!(
                    "must not be negative, but it is {n}: write a number of seconds \
                     or a string such as \"10s\""
                )),
            },
            IntOrText::Text(s) => parse_duration(s),
        };
        let message = match d {
            Err(message) => message,
            Ok(d) if d.is_zero() && !zero_is_off => {
                "must be more than 0 (e.g. \"250ms\" or \"10s\")".to_string()
            }
            Ok(d) if d > MAX_DURATION => format!(
                "must be at most {} (365d), but it is {}",
                show_duration(MAX_DURATION),
                show_duration(d)
            ),
            Ok(d) => return Some(d),
        };
        self.errors.at(v.line, &v.key, message);
        None
    }

    fn size(&mut self, v: &At<IntOrText>) -> Option<u64> {
        let bytes = match &v.value {
            IntOrText::Int(n) => u64::try_from(*n).map_err(|_| {
                format!("must not be negative, but it is {n}: write a number of bytes or a string such as \"512M\"")
            }),
            IntOrText::Text(s) => parse_size(s),
        };
        let message = match bytes {
            Err(message) => message,
            Ok(0) => "must be more than 0 bytes (leave the key out for no limit)".to_string(),
            Ok(n) => return Some(n),
        };
        self.errors.at(v.line, &v.key, message);
        None
    }

    fn mode(&mut self, v: &At<IntOrText>) -> Option<u32> {
        let mode = match &v.value {
            IntOrText::Int(n) => u32::try_from(*n).map_err(|_| {
                format!(
                    "{n} is not a mode: write octal permission digits such as \"0660\" or 0o660"
                )
            }),
            IntOrText::Text(s) => parse_octal_mode(s),
        };
        let message = match mode {
            Err(message) => message,
            Ok(m) if m > 0o777 => {
                let hint = match &v.value {
                    IntOrText::Int(_) => {
                        " (a plain integer is decimal: write \"0660\" or 0o660, not 660)"
                    }
                    IntOrText::Text(_) => "",
                };
                format!(
                    "only permission bits are allowed, at most 0o777, but this is 0o{m:o}{hint}"
                )
            }
            Ok(m) => return Some(m),
        };
        self.errors.at(v.line, &v.key, message);
        None
    }

    fn ids(&mut self, v: &At<Vec<At<i64>>>, what: &str) -> Option<Vec<u32>> {
        if v.value.is_empty() {
            let message = format!(
                "is empty, which would refuse every peer: list at least one {what}, \
                 or leave the key out to allow every {what}"
            );
            self.errors.at(v.line, &v.key, message);
            return None;
        }
        // u32::MAX is (uid_t)-1, which means "no id" to the kernel.
        let hi = i64::from(u32::MAX) - 1;
        let ids: Vec<Option<u32>> = v.value.iter().map(|id| self.int(id, 0, hi)).collect();
        ids.into_iter().collect()
    }
}

/// A duration as the config would write it, in its largest exact unit.
pub(crate) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
