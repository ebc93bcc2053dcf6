//! The TOML side of a service file: which keys are there, with which TOML
//! types, on which lines.
//!
//! [`parse`] reads the text into a [`RawService`] whose fields mirror the
//! keys, each value remembering its line and key. It reports TOML syntax
//! errors, unknown keys (with a suggestion) and wrong types, and keeps
//! going after each so that one pass reports every such problem. What the
//! values mean (units, ranges, relations between keys, paths) is left to
//! `validate.rs`.
//!
//! The document is walked with `toml_edit`'s spans rather than deserialized
//! with serde: serde stops at the first unknown key or wrong type, and it
//! cannot give the line of each key inside `env`.

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::error::Errors;
use super::suggest::unknown_key_message;

/// Every key a service file may hold, in documentation order.
pub(crate) const KEYS: &[&str] = &[
    "exec",
    "cd",
    "env",
    "user",
    "group",
    "template",
    "minimum-processes",
    "maximum-processes",
    "prestart-processes",
    "occupancy-percent",
    "idle-timeout",
    "maximum-requests",
    "maximum-requests-jitter",
    "unresponsive-timeout",
    "exec-failure-backoff",
    "backoff-initial",
    "crash-loop-count",
    "crash-loop-interval",
    "listen-backlog",
    "affinity-timeout",
    "read-timeout",
    "stop-grace",
    "startup-timeout",
    "ulimit-cpu-milliseconds",
    "ulimit-data-memory",
    "ulimit-open-files",
    "maximum-rss",
    "socket-mode",
    "socket-group",
    "allowed-uids",
    "allowed-gids",
];

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    /// 1-based line of the key (or of the array element).
    pub line: Option<usize>,
    /// The key as reported in errors (`env.NAME` inside `env`).
    pub key: String,
}

/// `exec` as written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Exec {
    /// A string, to be split on white space.
    Words(String),
    /// An array of strings.
    List(Vec<At<String>>),
}

/// A value that is an integer or a string with a unit (durations, sizes,
/// modes); `validate.rs` knows which.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum IntOrText {
    Int(i64),
    Text(String),
}

/// A service file's keys with their TOML types checked. `None` means the
/// key is absent (or was reported as having the wrong type).
#[derive(Default, Debug)]
pub(crate) struct RawService {
    /// True when `exec` is written, even with the wrong type, so that
    /// validation does not also call it missing.
    pub exec_written: bool,
    pub exec: Option<At<Exec>>,
    pub cd: Option<At<String>>,
    pub env: Vec<At<(String, String)>>,
    pub user: Option<At<String>>,
    pub group: Option<At<String>>,
    pub minimum_processes: Option<At<i64>>,
    pub maximum_processes: Option<At<i64>>,
    pub prestart_processes: Option<At<bool>>,
    pub template: Option<At<bool>>,
    pub occupancy_percent: Option<At<i64>>,
    pub idle_timeout: Option<At<IntOrText>>,
    pub maximum_requests: Option<At<i64>>,
    pub maximum_requests_jitter: Option<At<i64>>,
    pub unresponsive_timeout: Option<At<IntOrText>>,
    pub exec_failure_backoff: Option<At<IntOrText>>,
    pub backoff_initial: Option<At<IntOrText>>,
    pub crash_loop_count: Option<At<i64>>,
    pub crash_loop_interval: Option<At<IntOrText>>,
    pub listen_backlog: Option<At<i64>>,
    pub affinity_timeout: Option<At<IntOrText>>,
    pub read_timeout: Option<At<IntOrText>>,
    pub stop_grace: Option<At<IntOrText>>,
    pub startup_timeout: Option<At<IntOrText>>,
    pub ulimit_cpu_milliseconds: Option<At<i64>>,
    pub ulimit_data_memory: Option<At<IntOrText>>,
    pub ulimit_open_files: Option<At<i64>>,
    pub maximum_rss: Option<At<IntOrText>>,
    pub socket_mode: Option<At<IntOrText>>,
    pub socket_group: Option<At<String>>,
    pub allowed_uids: Option<At<Vec<At<i64>>>>,
    pub allowed_gids: Option<At<Vec<At<i64>>>>,
}

/// What an integer-or-text key expects, for the wrong-type message.
const DURATION: &str =
    "a duration (an integer of seconds, or a string such as \"10s\" or \"250ms\")";
const SIZE: &str = "a size (an integer of bytes, or a string such as \"512M\")";
const MODE: &str = "a mode (a string of octal digits such as \"0660\", or 0o660)";

/// Parses a service file's text. `None` when the TOML itself is broken
/// (the syntax error is in `errors`); otherwise every key that was present
/// with the right TOML type, and an error for each one that was not.
pub(crate) fn parse(text: &str, errors: &mut Errors) -> Option<RawService> {
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            errors.at_line(line, syntax_message(e.message()));
            return None;
        }
    };
    let root = doc.as_table();
    let mut raw = RawService::default();
    for (name, item) in root.iter() {
        let span = root
            .get_key_value(name)
            .and_then(|(key, _)| key.span())
            .or_else(|| item.span());
        let mut field = Field {
            text,
            key: name.to_string(),
            line: span.map(|s| line_of(text, s.start)),
            item,
            errors: &mut *errors,
        };
        field.store(&mut raw);
    }
    Some(raw)
}

/// One top-level key being read.
struct Field<'a> {
    text: &'a str,
    key: String,
    line: Option<usize>,
    item: &'a Item,
    errors: &'a mut Errors,
}

impl<'a> Field<'a> {
    fn store(&mut self, raw: &mut RawService) {
        match self.key.as_str() {
            "exec" => {
                raw.exec_written = true;
                raw.exec = self.exec();
            }
            "cd" => raw.cd = self.string(),
            "env" => raw.env = self.env(),
            "user" => raw.user = self.string(),
            "group" => raw.group = self.string(),
            "minimum-processes" => raw.minimum_processes = self.int(),
            "maximum-processes" => raw.maximum_processes = self.int(),
            "prestart-processes" => raw.prestart_processes = self.boolean(),
            "template" => raw.template = self.boolean(),
            "occupancy-percent" => raw.occupancy_percent = self.int(),
            "idle-timeout" => raw.idle_timeout = self.int_or_text(DURATION),
            "maximum-requests" => raw.maximum_requests = self.int(),
            "maximum-requests-jitter" => raw.maximum_requests_jitter = self.int(),
            "unresponsive-timeout" => raw.unresponsive_timeout = self.int_or_text(DURATION),
            "exec-failure-backoff" => raw.exec_failure_backoff = self.int_or_text(DURATION),
            "backoff-initial" => raw.backoff_initial = self.int_or_text(DURATION),
            "crash-loop-count" => raw.crash_loop_count = self.int(),
            "crash-loop-interval" => raw.crash_loop_interval = self.int_or_text(DURATION),
            "listen-backlog" => raw.listen_backlog = self.int(),
            "affinity-timeout" => raw.affinity_timeout = self.int_or_text(DURATION),
            "read-timeout" => raw.read_timeout = self.int_or_text(DURATION),
            "stop-grace" => raw.stop_grace = self.int_or_text(DURATION),
            "startup-timeout" => raw.startup_timeout = self.int_or_text(DURATION),
            "ulimit-cpu-milliseconds" => raw.ulimit_cpu_milliseconds = self.int(),
            "ulimit-data-memory" => raw.ulimit_data_memory = self.int_or_text(SIZE),
            "ulimit-open-files" => raw.ulimit_open_files = self.int(),
            "maximum-rss" => raw.maximum_rss = self.int_or_text(SIZE),
            "socket-mode" => raw.socket_mode = self.int_or_text(MODE),
            "socket-group" => raw.socket_group = self.string(),
            "allowed-uids" => raw.allowed_uids = self.int_list(),
            "allowed-gids" => raw.allowed_gids = self.int_list(),
            _ => {
                let message = unknown_key_message(&self.key, KEYS);
                self.errors.at(self.line, &self.key, message);
            }
        }
    }

    fn at<T>(&self, value: T) -> Option<At<T>> {
        Some(At {
            value,
            line: self.line,
            key: self.key.clone(),
        })
    }

    fn wrong_type<T>(&mut self, expected: &str) -> Option<T> {
        let message = format!("expected {expected}, found {}", item_type(self.item));
        self.errors.at(self.line, &self.key, message);
        None
    }

    fn value(&self) -> Option<&'a Value> {
        self.item.as_value()
    }

    fn string(&mut self) -> Option<At<String>> {
        match self.value().and_then(Value::as_str) {
            Some(s) => self.at(s.to_string()),
            None => self.wrong_type("a string"),
        }
    }

    fn int(&mut self) -> Option<At<i64>> {
        match self.value().and_then(Value::as_integer) {
            Some(n) => self.at(n),
            None => self.wrong_type("an integer"),
        }
    }

    fn boolean(&mut self) -> Option<At<bool>> {
        match self.value().and_then(Value::as_bool) {
            Some(b) => self.at(b),
            None => self.wrong_type("true or false"),
        }
    }

    fn int_or_text(&mut self, expected: &str) -> Option<At<IntOrText>> {
        match self.value() {
            Some(Value::Integer(n)) => self.at(IntOrText::Int(*n.value())),
            Some(Value::String(s)) => self.at(IntOrText::Text(s.value().clone())),
            _ => self.wrong_type(expected),
        }
    }

    fn exec(&mut self) -> Option<At<Exec>> {
        const EXPECTED: &str = "a command: a string such as \"/usr/bin/my-service --flag\", \
                                or an array of strings";
        match self.value() {
            Some(Value::String(s)) => self.at(Exec::Words(s.value().clone())),
            Some(Value::Array(array)) => {
                let mut words = Vec::new();
                let mut ok = true;
                for (i, element) in array.iter().enumerate() {
                    let line = self.line_of_value(element);
                    match element.as_str() {
                        Some(s) => words.push(At {
                            value: s.to_string(),
                            line,
                            key: self.key.clone(),
                        }),
                        None => {
                            ok = false;
                            let message = format!(
                                "element {i} must be a string, but it is {}",
                                value_type(element)
                            );
                            self.errors.at(line, &self.key, message);
                        }
                    }
                }
                if ok {
                    self.at(Exec::List(words))
                } else {
                    None
                }
            }
            _ => self.wrong_type(EXPECTED),
        }
    }

    fn int_list(&mut self) -> Option<At<Vec<At<i64>>>> {
        const EXPECTED: &str = "an array of integer ids, such as [1000, 1001]";
        let Some(array) = self.value().and_then(Value::as_array) else {
            return self.wrong_type(EXPECTED);
        };
        let mut ids = Vec::new();
        let mut ok = true;
        for (i, element) in array.iter().enumerate() {
            let line = self.line_of_value(element);
            match element.as_integer() {
                Some(n) => ids.push(At {
                    value: n,
                    line,
                    key: self.key.clone(),
                }),
                None => {
                    ok = false;
                    let message = format!(
                        "element {i} must be an integer id, but it is {} \
                         (names are not looked up here)",
                        value_type(element)
                    );
                    self.errors.at(line, &self.key, message);
                }
            }
        }
        if ok {
            self.at(ids)
        } else {
            None
        }
    }

    fn env(&mut self) -> Vec<At<(String, String)>> {
        let Some(table) = self.item.as_table_like() else {
            self.wrong_type::<()>("a table of names to string values, such as { LANG = \"C\" }");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in table.iter() {
            let key = format!("env.{}", display_key(name));
            let line = key_line(self.text, table, name, item);
            match item.as_value().and_then(Value::as_str) {
                Some(value) => out.push(At {
                    value: (name.to_string(), value.to_string()),
                    line,
                    key,
                }),
                None => {
                    let hint = if KEYS.contains(&name) {
                        "; keys written after [env] belong to env, so move it above the \
                         [env] line"
                    } else {
                        " (quote numbers: \"8080\")"
                    };
                    let message = format!(
                        "an environment value must be a string, but this is {}{hint}",
                        item_type(item)
                    );
                    self.errors.at(line, &key, message);
                }
            }
        }
        out
    }

    fn line_of_value(&self, value: &Value) -> Option<usize> {
        value
            .span()
            .map(|s| line_of(self.text, s.start))
            .or(self.line)
    }
}

/// The line of `name` in `table`: its key's span, else its value's.
fn key_line(text: &str, table: &dyn TableLike, name: &str, item: &Item) -> Option<usize> {
    table
        .get_key_value(name)
        .and_then(|(key, _)| key.span())
        .or_else(|| item.span())
        .map(|s| line_of(text, s.start))
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A key as TOML would need it written: bare when it can be, else quoted.
fn display_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn item_type(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// toml_edit's message for a syntax error, on one line, prefixed so the
/// reader knows the file is not valid TOML at all.
fn syntax_message(message: &str) -> String {
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("invalid TOML: {}", one_line.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_the_key_they_meant_or_the_list() {
        let cases: &[(&str, Option<&str>)] = &[
            ("maximum_processes", Some("maximum-processes")),
            ("Maximum-Processes", Some("maximum-processes")),
            ("max-processes", Some("maximum-processes")),
            ("min-processes", Some("minimum-processes")),
            ("maximum-proceses", Some("maximum-processes")),
            ("occupancy", Some("occupancy-percent")),
            ("exe", Some("exec")),
            ("idle-timout", Some("idle-timeout")),
            ("maximum-procs", Some("maximum-processes")),
            ("max-procs", Some("maximum-processes")),
            ("exec-fail-backoff", Some("exec-failure-backoff")),
            ("ulimit-cpu", Some("ulimit-cpu-milliseconds")),
            ("colour", None),
            ("", None),
        ];
        for (name, want) in cases {
            let message = unknown_key_message(name, KEYS);
            match want {
                Some(key) => assert_eq!(
                    message,
                    format!("unknown key; did you mean `{key}`?"),
                    "{name}"
                ),
                None => assert!(
                    message.contains("valid keys are exec,"),
                    "{name}: {message}"
                ),
            }
        }
    }

    #[test]
    fn lines_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
