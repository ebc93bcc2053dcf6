//! Tests of config loading as a whole: one case per error message kind
//! (line, key and what the message says is valid), defaults, units, path
//! resolution, file names and the dir scan, and a property test that no
//! input panics. Unit parsing and key suggestions have their own tests
//! beside their code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use charon_protocol::ServiceKey;
use proptest::prelude::*;

use super::load::load_bytes;
use super::raw::KEYS;
use super::*;

const DIR: &str = "/srv/conf";
const FILE: &str = "/srv/conf/system.echo.0.raw.toml";

fn key() -> ServiceKey {
    ServiceKey::parse_config("system.echo.0.raw").unwrap()
}

fn load(text: &str) -> Result<ServiceConfig, Vec<ConfigError>> {
    load_bytes(text.as_bytes(), key(), Path::new(FILE), Path::new(DIR))
}

fn defaults(exec: &[&str]) -> ServiceConfig {
    ServiceConfig::defaults(
        key(),
        PathBuf::from(FILE),
        exec.iter().map(|s| s.to_string()).collect(),
    )
}

/// The errors of a file that must fail, as (line, key, message).
fn errors_of(text: &str) -> Vec<(Option<usize>, Option<String>, String)> {
    match load(text) {
        Ok(config) => panic!("expected errors, got {config:?} from:\n{text}"),
        Err(errors) => errors
            .into_iter()
            .inspect(|e| assert_eq!(e.file, Path::new(FILE)))
            .map(|e| (e.line, e.key, e.message))
            .collect(),
    }
}

#[test]
fn exec_alone_gives_every_default() {
    let config = load("exec = \"/usr/bin/echo-service --fast\"\n").unwrap();
    assert_eq!(config, defaults(&["/usr/bin/echo-service", "--fast"]));
}

/// A file that sets every key, each in its own unit.
const EVERY_KEY: &str = r#"
        exec = ["/opt/svc/bin/svc", "--name", "two words"]
        cd = "/var/lib/svc"
        user = "svc"
        group = "svc"
        minimum-processes = 2
        maximum-processes = 40
        prestart-processes = true
        template = true
        occupancy-percent = 85
        idle-timeout = "2m"
        maximum-requests = 0
        maximum-requests-jitter = 25
        unresponsive-timeout = "1500ms"
        exec-failure-backoff = "5m"
        backoff-initial = 2
        crash-loop-count = 3
        crash-loop-interval = "30s"
        listen-backlog = 1024
        affinity-timeout = "1h"
        read-timeout = "3s"
        stop-grace = "20s"
        startup-timeout = "2m"
        ulimit-cpu-milliseconds = 2500
        ulimit-data-memory = "512M"
        ulimit-open-files = 4096
        maximum-rss = 268435456
        socket-mode = "0600"
        socket-group = "clients"
        allowed-uids = [1000, 1001]
        allowed-gids = [100]

        [env]
        LANG = "C.UTF-8"
        PORT = "8080"
"#;

/// The config `EVERY_KEY` says.
fn every_key_wanted() -> ServiceConfig {
    let mut want = defaults(&["/opt/svc/bin/svc", "--name", "two words"]);
    want.cd = Some(PathBuf::from("/var/lib/svc"));
    want.env = BTreeMap::from([
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("PORT".to_string(), "8080".to_string()),
    ]);
    want.user = Some("svc".into());
    want.group = Some("svc".into());
    want.minimum_processes = 2;
    want.maximum_processes = 40;
    want.prestart_processes = true;
    want.template = true;
    want.occupancy_percent = 85;
    want.idle_timeout = Duration::from_secs(120);
    want.maximum_requests = 0;
    want.maximum_requests_jitter = 25;
    want.unresponsive_timeout = Some(Duration::from_millis(1500));
    want.exec_failure_backoff = Duration::from_secs(300);
    want.backoff_initial = Duration::from_secs(2);
    want.crash_loop_count = 3;
    want.crash_loop_interval = Duration::from_secs(30);
    want.listen_backlog = 1024;
    want.affinity_timeout = Duration::from_secs(3600);
    want.read_timeout = Duration::from_secs(3);
    want.stop_grace = Duration::from_secs(20);
    want.startup_timeout = Duration::from_secs(120);
    want.ulimit_cpu_milliseconds = Some(2500);
    want.ulimit_data_memory = Some(512 << 20);
    want.ulimit_open_files = Some(4096);
    want.maximum_rss = Some(256 << 20);
    want.socket_mode = 0o600;
    want.socket_group = Some("clients".into());
    want.allowed_uids = Some(vec![1000, 1001]);
    want.allowed_gids = Some(vec![100]);
    want
}

#[test]
fn every_key_is_read_with_its_unit() {
    assert_eq!(load(EVERY_KEY).unwrap(), every_key_wanted());
}

#[test]
fn value_forms() {
    type Check = fn(&ServiceConfig) -> bool;
    let cases: &[(&str, Check)] = &[
        ("unresponsive-timeout = 0", |c| {
            c.unresponsive_timeout.is_none()
        }),
        ("unresponsive-timeout = \"0\"", |c| {
            c.unresponsive_timeout.is_none()
        }),
        ("unresponsive-timeout = \"0ms\"", |c| {
            c.unresponsive_timeout.is_none()
        }),
        ("socket-mode = 0o640", |c| c.socket_mode == 0o640),
        ("socket-mode = \"640\"", |c| c.socket_mode == 0o640),
        ("socket-mode = \"0o640\"", |c| c.socket_mode == 0o640),
        ("maximum-rss = \"1GiB\"", |c| c.maximum_rss == Some(1 << 30)),
        ("ulimit-data-memory = 4096", |c| {
            c.ulimit_data_memory == Some(4096)
        }),
        ("idle-timeout = 30", |c| {
            c.idle_timeout == Duration::from_secs(30)
        }),
        ("stop-grace = \"250ms\"", |c| {
            c.stop_grace == Duration::from_millis(250)
        }),
        ("env.LANG = \"C\"", |c| c.env["LANG"] == "C"),
        ("env = { A = \"1\", B = \"\" }", |c| {
            c.env["A"] == "1" && c.env["B"].is_empty()
        }),
        ("minimum-processes = 0", |c| c.minimum_processes == 0),
        (
            "minimum-processes = 10000\nmaximum-processes = 10000",
            |c| c.maximum_processes == 10_000,
        ),
        ("backoff-initial = \"60s\"", |c| {
            c.backoff_initial == c.exec_failure_backoff
        }),
    ];
    for (line, check) in cases {
        let text = format!("exec = \"svc\"\n{line}\n");
        let config = load(&text).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        assert!(check(&config), "{line}: {config:?}");
    }
}

#[test]
fn paths_resolve_against_the_config_dir() {
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        ("exec = \"svc --x\"", &["svc", "--x"], None),
        ("exec = \"/bin/svc\"", &["/bin/svc"], None),
        ("exec = \"bin/svc\"", &["/srv/conf/bin/svc"], None),
        ("exec = \"./svc a\"", &["/srv/conf/svc", "a"], None),
        ("exec = \"../bin/svc\"", &["/srv/conf/../bin/svc"], None),
        (
            "exec = \"svc\"\ncd = \"work\"",
            &["svc"],
            Some("/srv/conf/work"),
        ),
        ("exec = \"svc\"\ncd = \"/tmp\"", &["svc"], Some("/tmp")),
        ("exec = \"svc\"\ncd = \".\"", &["svc"], Some("/srv/conf")),
    ];
    for (text, exec, cd) in cases {
        let config = load(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        assert_eq!(config.exec, *exec, "{text}");
        assert_eq!(config.cd.as_deref(), cd.map(Path::new), "{text}");
    }
}

/// One case per kind of error message: the file's text (after a valid
/// `exec` line, so line numbers start at 2), then the line, key and a
/// part of the message that says what would be valid.
#[rustfmt::skip]
const ERROR_CASES: &[(&str, usize, &str, &str)] = &[
    // Unknown keys.
    ("maximum_processes = 3", 2, "maximum_processes", "did you mean `maximum-processes`?"),
    ("max-processes = 3", 2, "max-processes", "did you mean `maximum-processes`?"),
    ("colour = 1", 2, "colour", "valid keys are exec, cd, env, user"),
    ("\n[service]\nexec = \"x\"", 3, "service", "valid keys are"),
    // Wrong TOML types.
    ("minimum-processes = \"two\"", 2, "minimum-processes", "expected an integer, found a string"),
    ("maximum-processes = 2.5", 2, "maximum-processes", "expected an integer, found a float"),
    ("prestart-processes = 1", 2, "prestart-processes", "expected true or false, found an integer"),
    ("idle-timeout = true", 2, "idle-timeout", "expected a duration (an integer of seconds"),
    ("idle-timeout = 10:00:00", 2, "idle-timeout", "found a date-time"),
    ("maximum-rss = [1]", 2, "maximum-rss", "expected a size (an integer of bytes"),
    ("socket-mode = true", 2, "socket-mode", "expected a mode (a string of octal digits"),
    ("cd = 5", 2, "cd", "expected a string, found an integer"),
    ("user = [\"a\"]", 2, "user", "expected a string, found an array"),
    ("env = \"A=1\"", 2, "env", "expected a table of names to string values"),
    ("allowed-uids = 1000", 2, "allowed-uids", "expected an array of integer ids"),
    ("allowed-gids = [\"wheel\"]", 2, "allowed-gids", "element 0 must be an integer id"),
    ("\n\n[env]\nA = \"1\"\nPORT = 8080", 6, "env.PORT", "must be a string, but this is an integer"),
    // Environment names and values.
    ("env = { \"\" = \"x\" }", 2, "env.\"\"", "must not be empty"),
    ("env = { \"A=B\" = \"x\" }", 2, "env.\"A=B\"", "must not contain '='"),
    ("env = { \"A\\u0000\" = \"x\" }", 2, "env.\"A\\0\"", "NUL"),
    ("env = { A = \"x\\u0000y\" }", 2, "env.A", "NUL"),
    ("env.CHARON_RUN_DIR = \"/x\"", 2, "env.CHARON_RUN_DIR", "reserved"),
    ("[env]\nA = \"1\"\nuser = \"svc\"", 4, "env.user", "move it above the [env] line"),
    ("[env]\nmaximum-processes = 3", 3, "env.maximum-processes", "move it above the [env] line"),
    // Ranges.
    ("minimum-processes = -1", 2, "minimum-processes", "between 0 and 10000, but it is -1"),
    ("maximum-processes = 0", 2, "maximum-processes", "between 1 and 10000, but it is 0"),
    ("maximum-processes = 10001", 2, "maximum-processes", "between 1 and 10000, but it is 10001"),
    ("occupancy-percent = 0", 2, "occupancy-percent", "between 1 and 100"),
    ("occupancy-percent = 101", 2, "occupancy-percent", "between 1 and 100"),
    ("maximum-requests = -5", 2, "maximum-requests", "at least 0, but it is -5"),
    ("maximum-requests-jitter = 51", 2, "maximum-requests-jitter", "between 0 and 50"),
    ("crash-loop-count = 0", 2, "crash-loop-count", "between 1 and 10000"),
    ("listen-backlog = 0", 2, "listen-backlog", "between 1 and 65535"),
    ("listen-backlog = 65536", 2, "listen-backlog", "between 1 and 65535"),
    ("ulimit-cpu-milliseconds = 0", 2, "ulimit-cpu-milliseconds", "at least 1"),
    ("ulimit-open-files = 8", 2, "ulimit-open-files", "between 16 and 1048576"),
    ("allowed-uids = [0, -1]", 2, "allowed-uids", "between 0 and 4294967294, but it is -1"),
    ("allowed-uids = []", 2, "allowed-uids", "leave the key out to allow every uid"),
    // Durations.
    ("idle-timeout = \"10 sec\"", 2, "idle-timeout", "one of ms, s, m, h, d"),
    ("read-timeout = \"fast\"", 2, "read-timeout", "a whole number and a unit"),
    ("stop-grace = \"1.5s\"", 2, "stop-grace", "\"1500ms\""),
    ("idle-timeout = -3", 2, "idle-timeout", "must not be negative"),
    ("idle-timeout = 0", 2, "idle-timeout", "must be more than 0"),
    ("affinity-timeout = \"0s\"", 2, "affinity-timeout", "must be more than 0"),
    ("crash-loop-interval = \"400d\"", 2, "crash-loop-interval", "at most 365d"),
    ("unresponsive-timeout = \"10x\"", 2, "unresponsive-timeout", "ms, s, m, h, d"),
    // Sizes.
    ("ulimit-data-memory = \"512MB\"", 2, "ulimit-data-memory", "write 512M or 512MiB"),
    ("maximum-rss = \"lots\"", 2, "maximum-rss", "B, K, M, G, T"),
    ("maximum-rss = 0", 2, "maximum-rss", "more than 0 bytes"),
    ("maximum-rss = -1", 2, "maximum-rss", "must not be negative"),
    // Modes.
    ("socket-mode = 660", 2, "socket-mode", "at most 0o777, but this is 0o1224 (a plain integer is decimal"),
    ("socket-mode = \"4755\"", 2, "socket-mode", "only permission bits are allowed, at most 0o777"),
    ("socket-mode = \"rw-rw----\"", 2, "socket-mode", "octal permission digits"),
    ("socket-mode = -1", 2, "socket-mode", "octal permission digits"),
    // Names.
    ("user = \"\"", 2, "user", "not a user or group name"),
    ("group = \"a b\"", 2, "group", "without spaces"),
    ("socket-group = \"a:b\"", 2, "socket-group", "':'"),
    ("cd = \"\"", 2, "cd", "leave cd out to run in the config dir"),
    ("cd = \"a\\u0000\"", 2, "cd", "NUL"),
    // Relations between keys.
    ("minimum-processes = 5\nmaximum-processes = 3", 2, "minimum-processes", "minimum-processes (5) must not be more than maximum-processes (3)"),
    ("\nmaximum-processes = 3\nminimum-processes = 4", 4, "minimum-processes", "must not be more than maximum-processes (3)"),
    ("minimum-processes = 11", 2, "minimum-processes", "maximum-processes (10, the default)"),
    ("maximum-processes = 0\nminimum-processes = 0", 2, "maximum-processes", "between 1"),
    ("backoff-initial = \"2m\"", 2, "backoff-initial", "backoff-initial (2m) must not be more than exec-failure-backoff (1m, the default)"),
    ("exec-failure-backoff = \"500ms\"", 2, "exec-failure-backoff", "backoff-initial (1s) must not be more than exec-failure-backoff (500ms)"),
];

/// Each of `ERROR_CASES` fails with one error, at its line and key, whose
/// lowercase message says what would be valid.
#[test]
fn each_error_names_line_key_and_what_is_valid() {
    for (body, line, key, message) in ERROR_CASES {
        let text = format!("exec = \"svc\"\n{body}\n");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{body}: {errors:?}");
        let (got_line, got_key, got_message) = &errors[0];
        assert_eq!(*got_line, Some(*line), "{body}: {errors:?}");
        assert_eq!(got_key.as_deref(), Some(*key), "{body}: {errors:?}");
        assert!(got_message.contains(message), "{body}: {got_message}");
        assert_eq!(
            got_message.to_lowercase()[..1],
            got_message[..1],
            "{got_message}"
        );
    }
}

#[test]
fn exec_errors() {
    let cases: &[(&str, Option<usize>, &str)] = &[
        ("", None, "missing: every service needs exec"),
        ("cd = \"/\"", None, "missing: every service needs exec"),
        (
            "exec = \"  \"",
            Some(1),
            "is empty: give the program to run",
        ),
        ("exec = []", Some(1), "is empty: give the program to run"),
        ("exec = 3", Some(1), "expected a command: a string"),
        ("[exec]\nx = 1", Some(1), "expected a command: a string"),
        (
            "exec = [\"\", \"-x\"]",
            Some(1),
            "the program (element 0) is an empty string",
        ),
        (
            "exec = [\"svc\", \"a\\u0000\"]",
            Some(1),
            "element 1 contains a NUL",
        ),
        (
            "exec = [\n  \"svc\",\n  7,\n]",
            Some(3),
            "element 1 must be a string, but it is an integer",
        ),
    ];
    for (text, line, message) in cases {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        let (got_line, got_key, got_message) = &errors[0];
        assert_eq!(got_line, line, "{text}: {errors:?}");
        assert_eq!(got_key.as_deref(), Some("exec"), "{text}");
        assert!(got_message.contains(message), "{text}: {got_message}");
    }
}

#[test]
fn syntax_errors_have_a_line_and_no_key() {
    let cases: &[(&str, usize)] = &[
        ("exec = \"svc\"\nmaximum-processes = \n", 2),
        ("exec = \"svc\"\n\nexec = \"again\"\n", 3),
        ("exec = \"svc\n", 1),
        ("exec = \"svc\"\n[env\n", 2),
    ];
    for (text, line) in cases {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert_eq!(errors[0].0, Some(*line), "{text:?}: {errors:?}");
        assert_eq!(errors[0].1, None, "{text:?}");
        assert!(errors[0].2.starts_with("invalid TOML: "), "{}", errors[0].2);
        assert!(!errors[0].2.contains('\n'), "{}", errors[0].2);
    }
}

#[test]
fn non_utf8_text_names_its_line() {
    let errors = load_bytes(
        b"exec = \"svc\"\ncd = \"\xff\"\n",
        key(),
        Path::new(FILE),
        Path::new(DIR),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].message.contains("not valid UTF-8"));
}

#[test]
fn every_error_of_a_file_is_reported_in_line_order() {
    let text = "\
minimum-processes = -1
maximum-procs = 4
idle-timeout = \"3 min\"
prestart-processes = \"yes\"
[env]
\"X=Y\" = \"1\"
";
    let got: Vec<String> = load(text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let want = [
        format!("{FILE}: exec: missing: every service needs exec, the program to run, e.g. exec = \"/usr/bin/my-service --flag\""),
        format!("{FILE}:1: minimum-processes: must be between 0 and 10000, but it is -1"),
        format!("{FILE}:2: maximum-procs: unknown key; did you mean `maximum-processes`?"),
        format!("{FILE}:3: idle-timeout: \"3 min\" is not a duration: the unit must be one of ms, s, m, h, d, right after the number with no space (e.g. \"10s\")"),
        format!("{FILE}:4: prestart-processes: expected true or false, found a string"),
        format!("{FILE}:6: env.\"X=Y\": an environment name must not contain '='"),
    ];
    assert_eq!(got, want);
}

/// A temp config dir holding the given files.
fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A config dir with two services, two broken files, and files the scan
/// ignores (bad names, a subdir) or skips silently (hidden, editor files).
fn a_dir_of_every_kind() -> tempfile::TempDir {
    let dir = config_dir(&[
        ("system.echo.0.raw.toml", "exec = \"charon-echo\"\n"),
        (
            "mail..1.JSON.toml",
            "exec = \"bin/mail\"\nmaximum-processes = 4\n",
        ),
        ("app.fn.2.XML.toml", "exec = \"x\"\nmaximum-processes = 0\n"),
        ("app.broken.2.XML.toml", "exec = \n"),
        ("notes.txt", "hello"),
        ("bad.key.toml", "exec = \"x\"\n"),
        ("a.b.01.raw.toml", "exec = \"x\"\n"),
        ("Upper.x.0.raw.TOML", "exec = \"x\"\n"),
        (".hidden.x.0.raw.toml", "exec = \"x\"\n"),
        (".system.echo.0.raw.toml.swp", "junk"),
        ("system.echo.0.raw.toml~", "junk"),
        ("#system.echo.0.raw.toml#", "junk"),
    ]);
    std::fs::create_dir(dir.path().join("subdir")).unwrap();
    dir
}

#[test]
fn scan_sorts_services_errors_and_ignored_files() {
    let dir = a_dir_of_every_kind();
    let scan = scan_dir(dir.path()).unwrap();

    let keys: Vec<&str> = scan.services.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["mail..1.JSON", "system.echo.0.raw"]);
    let mail = &scan.services[0];
    assert!(mail.key.is_wildcard());
    assert_eq!(mail.maximum_processes, 4);
    assert_eq!(mail.file, dir.path().join("mail..1.JSON.toml"));
    assert_eq!(mail.exec, [dir.path().join("bin/mail").to_str().unwrap()]);

    let errors: Vec<(PathBuf, Option<usize>)> = scan
        .errors
        .iter()
        .map(|e| (e.file.clone(), e.line))
        .collect();
    assert_eq!(
        errors,
        [
            (dir.path().join("app.broken.2.XML.toml"), Some(1)),
            (dir.path().join("app.fn.2.XML.toml"), Some(2)),
        ]
    );
    let failed: Vec<String> = scan.failed_keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(failed, ["app.broken.2.XML", "app.fn.2.XML"]);
    ignored_files_are_listed_with_why(&scan);
}

/// The scan of `a_dir_of_every_kind` lists the files it ignored, sorted,
/// each with why (hidden and editor files are not listed).
fn ignored_files_are_listed_with_why(scan: &Scan) {
    let ignored: Vec<(String, &str)> = scan
        .ignored
        .iter()
        .map(|i| {
            let name = i.file.file_name().unwrap().to_string_lossy().into_owned();
            (name, i.reason.as_str())
        })
        .collect();
    let names: Vec<&str> = ignored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Upper.x.0.raw.TOML",
            "a.b.01.raw.toml",
            "bad.key.toml",
            "notes.txt",
            "subdir"
        ]
    );
    assert_eq!(ignored[0].1, "not a .toml file");
    assert!(
        ignored[1].1.contains("the version part must be a decimal"),
        "{}",
        ignored[1].1
    );
    assert!(ignored[2].1.contains("exactly 4 parts"), "{}", ignored[2].1);
    assert_eq!(ignored[3].1, "not a .toml file");
}

#[test]
fn unreadable_dir_is_the_scans_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = scan_dir(&missing).unwrap_err();
    assert_eq!(e.file, missing);
    assert_eq!((e.line, e.key.as_deref()), (None, None));
    assert!(
        e.message.starts_with("unable to read the config dir: "),
        "{e}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(scan_dir(&file).is_err());
}

#[test]
fn load_file_refuses_what_it_should_not_parse() {
    let big = format!("exec = \"x\"\n#{}\n", "x".repeat(MAX_FILE_SIZE as usize));
    let dir = config_dir(&[
        ("big.x.0.raw.toml", &big),
        ("not-a-key.toml", "exec = \"x\""),
    ]);
    let d = dir.path();
    std::fs::create_dir(d.join("dir.x.0.raw.toml")).unwrap();
    nix::unistd::mkfifo(&d.join("fifo.x.0.raw.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let cases: &[(&str, &str)] = &[
        ("big.x.0.raw.toml", "over the limit of 1048576 (1 MiB)"),
        ("dir.x.0.raw.toml", "not a regular file: it is a directory"),
        (
            "fifo.x.0.raw.toml",
            "not a regular file: it is a special file",
        ),
        ("gone.x.0.raw.toml", "unable to open: "),
        (
            "not-a-key.toml",
            "not a service file: the name before .toml must be a service key",
        ),
    ];
    for (name, message) in cases {
        let errors = load_file(&d.join(name)).unwrap_err();
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        assert_eq!(errors[0].file, d.join(name));
        assert_eq!(errors[0].line, None, "{name}");
        assert!(errors[0].message.contains(message), "{name}: {}", errors[0]);
    }
    // The scan reports these as errors of their files and carries on.
    let scan = scan_dir(d).unwrap();
    assert_eq!(scan.errors.len(), 3, "{:?}", scan.errors);
    assert_eq!(scan.ignored.len(), 1);
}

#[test]
fn load_file_resolves_relative_paths_against_its_own_dir() {
    let dir = config_dir(&[(
        "system.echo.0.raw.toml",
        "exec = \"./bin/echo -v\"\ncd = \"data\"\n",
    )]);
    let config = load_file(&dir.path().join("system.echo.0.raw.toml")).unwrap();
    let bin = dir.path().join("bin/echo");
    assert_eq!(config.exec, [bin.to_str().unwrap(), "-v"]);
    assert_eq!(config.cd, Some(dir.path().join("data")));
}

/// TOML-ish lines: valid keys, near misses and junk, with values of every
/// shape, so the property test reaches validation as well as the parser.
fn tomlish_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        proptest::sample::select(KEYS).prop_map(str::to_string),
        "[a-z_-]{1,20}",
        Just("env.X".to_string()),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{1,4}(ms|s|m|h|d|K|M|G|KiB|MB| sec)?".prop_map(|s| format!("{s:?}")),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        proptest::collection::vec(any::<i32>(), 0..4).prop_map(|v| format!("{v:?}")),
        proptest::collection::vec("[a-z/ ]{0,6}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("{ A = \"1\", \"B=C\" = 2 }".to_string()),
        Just("0o777".to_string()),
        Just("1979-05-27".to_string()),
        Just("[".to_string()),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("[env]".to_string()),
        "[ -~]{0,30}",
    ]
}

fn check_errors(errors: &[ConfigError]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    for e in errors {
        prop_assert_eq!(&e.file, Path::new(FILE));
        prop_assert!(!e.message.is_empty());
        // A parse failure always has a place in the file.
        if e.message.starts_with("invalid TOML") || e.message.starts_with("not valid UTF-8") {
            prop_assert!(e.line.is_some(), "{}", e);
        }
        if let Some(line) = e.line {
            prop_assert!(line >= 1);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(errors) = load_bytes(&bytes, key(), Path::new(FILE), Path::new(DIR)) {
            check_errors(&errors)?;
        }
    }

    #[test]
    fn arbitrary_tomlish_files_never_panic(
        lines in proptest::collection::vec(tomlish_line(), 0..12),
    ) {
        let text = lines.join("\n");
        match load(&text) {
            Ok(config) => {
                prop_assert!(!config.exec.is_empty());
                prop_assert!(config.minimum_processes <= config.maximum_processes);
                prop_assert!(config.backoff_initial <= config.exec_failure_backoff);
            }
            Err(errors) => check_errors(&errors)?,
        }
    }
}

#[test]
fn config_md_example_loads_as_documented() {
    let doc = include_str!("../../../CONFIG.md");
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &doc[start..start + doc[start..].find("```").unwrap()];
    let key = ServiceKey::parse_config("mail.send.1.JSON").unwrap();
    let file = Path::new("/etc/charon/mail.send.1.JSON.toml");
    let config = load_bytes(text.as_bytes(), key, file, Path::new("/etc/charon")).unwrap();
    assert_eq!(
        config.exec,
        [
            "/etc/charon/bin/mail-send",
            "--queue",
            "/var/spool/mail out"
        ]
    );
    assert_eq!(config.backoff_initial, Duration::from_millis(500));
    assert_eq!(config.ulimit_data_memory, Some(1 << 30));
    assert_eq!(config.allowed_gids, Some(vec![1200]));
    assert_eq!(config.env.len(), 2);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let text = format!("exec = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let errors = errors_of(&text);
    assert_eq!(errors[0].0, Some(1), "{errors:?}");
    let text = format!("exec = \"x\"\nenv = {}\n", "{ a = ".repeat(depth));
    assert!(load(&text).is_err());
}

#[test]
fn every_listed_key_is_read() {
    for key in KEYS.iter().filter(|k| **k != "exec") {
        let errors = errors_of(&format!("exec = \"x\"\n{key} = 1979-05-27\n"));
        assert_eq!(errors.len(), 1, "{key}: {errors:?}");
        assert_eq!(errors[0].1.as_deref(), Some(*key));
        assert!(errors[0].2.starts_with("expected "), "{key}: {errors:?}");
        assert!(
            errors[0].2.ends_with("found a date-time"),
            "{key}: {errors:?}"
        );
    }
}
