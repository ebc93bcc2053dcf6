//! Templates (`template = true`, doc/charond.md "Templates"): instances
//! forked from a pre-initialised copy of the program instead of exec'd.
//! Every test here sets `template = true`, the knob under test; everything
//! else is at its default unless a comment says why.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::daemon::Daemon;
use crate::util::echo_config;
use crate::util::load::Load;
use crate::util::{bin, wait_for};

const KEY: &str = "system.echo.0.raw";
/// Generous: the machine is shared and may be slow.
const LONG: Duration = Duration::from_secs(60);

/// The request counts of every exited instance, from charond's log.
fn served_per_instance(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(": exited: "))
        .filter_map(|l| {
            let (head, _) = l.split_once(" request(s)")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect()
}

/// The pids of the log lines that contain `needle`, in order.
fn pids_of(log: &str, needle: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" pid=")?;
            rest.split(':').next()?.parse().ok()
        })
        .collect()
}

/// The instance starts logged after the first "template ready" line: each
/// says how it was started.
fn starts_after_ready(log: &str) -> Vec<String> {
    log.lines()
        .skip_while(|l| !l.contains("template ready"))
        .filter(|l| l.contains(": started (slot"))
        .map(str::to_string)
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Recycling at `maximum-requests` with a template: every instance after
/// the template is ready is forked from it, and the bound is exact.
#[test]
fn a_template_service_serves_and_recycles_with_forked_instances() {
    // maximum-requests is what makes instances start over and over; jitter
    // 0 makes the bound exact, as the recycle tests in lifecycle.rs check.
    let d = Daemon::start(&[(
        KEY,
        &echo_config("template = true\nmaximum-requests = 5\nmaximum-requests-jitter = 0"),
    )]);
    let mut c = d.client();
    for i in 0..60u8 {
        assert_eq!(c.call(KEY, &[i]).expect("answered"), [i]);
    }
    d.wait_log("recycles", |l| {
        l.matches("counted as max_requests").count() >= 8
    });
    let log = d.log();
    let served = served_per_instance(&log);
    println!("template, maximum-requests 5: served per instance {served:?}");
    assert!(served.iter().all(|&n| n <= 5), "{served:?}; log:\n{log}");
    let starts = starts_after_ready(&log);
    assert!(starts.len() >= 6, "{starts:?}; log:\n{log}");
    assert!(
        starts.iter().all(|l| l.contains("forked by the template")),
        "{starts:?}; log:\n{log}"
    );
    // The forked instances are charond's children: it saw their exits.
    let forked = pids_of(&log, "forked by the template");
    let exited = pids_of(&log, ": exited: ");
    assert!(
        forked.iter().filter(|p| exited.contains(p)).count() >= 5,
        "{forked:?} {exited:?}"
    );
    assert_eq!(d.count("counted as crashed"), 0);
    assert_eq!(d.count("template exited"), 0, "{log}");
}

/// A template SIGKILLed from outside under load: no request is lost,
/// instances keep starting (by exec meanwhile), and the template is started
/// again.
#[test]
fn a_template_killed_under_load_loses_nothing_and_is_restarted() {
    // maximum-requests keeps instances starting all through the test.
    let d = Daemon::start(&[(KEY, &echo_config("template = true\nmaximum-requests = 20"))]);
    let load = Load::echo(&d.run, KEY, 4, Duration::from_secs(10));
    d.wait_log("the template to be ready", |l| l.contains("template ready"));
    load.wait_more(200, "requests through forked instances");
    let template = pids_of(&d.log(), "template started")[0];
    d.signal_pid(template, Signal::SIGKILL);
    d.wait_log("the template's death", |l| {
        l.contains("template exited (signal 9)")
    });
    load.wait_more(200, "requests after the template died");
    d.wait_log("a second template, ready", |l| {
        l.matches("template ready").count() >= 2
    });
    load.wait_more(200, "requests through the new template");
    let tally = load.finish();
    let log = d.log();
    println!("template killed under 4 loops: {tally:?}");
    assert_eq!(tally.ok, tally.total(), "{tally:?}; log:\n{log}");
    let after = log
        .lines()
        .skip_while(|l| !l.contains("template exited (signal 9)"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        after.contains("forked by the template"),
        "the new template forks: {after}"
    );
    let meanwhile: Vec<&str> = after
        .lines()
        .take_while(|l| !l.contains("template ready"))
        .filter(|l| l.contains(": started (slot"))
        .collect();
    assert!(
        !meanwhile.is_empty() && meanwhile.iter().all(|l| !l.contains("forked")),
        "instances start by exec while no template is ready: {after}"
    );
    assert_eq!(d.stats(KEY)["backoffs"], 0, "{log}");
}

/// A program that starts a thread before its first request cannot be
/// forked: the template says so and exits, and exec serves every request.
#[test]
fn a_threaded_program_is_logged_not_forkable_and_exec_serves() {
    // maximum-requests makes instances start again after the template's
    // refusal.
    let exec = format!(
        "exec = [\"{}\", \"--thread\"]",
        bin("charon-echo").display()
    );
    let d = Daemon::start(&[(
        KEY,
        &format!("{exec}\ntemplate = true\nmaximum-requests = 5\nmaximum-requests-jitter = 0\n"),
    )]);
    let mut c = d.client();
    for i in 0..30u8 {
        assert_eq!(c.call(KEY, &[i]).expect("answered"), [i]);
    }
    d.wait_log("the refusal", |l| {
        l.contains("template cannot fork: 2 threads")
    });
    d.wait_log("recycles", |l| {
        l.matches("counted as max_requests").count() >= 4
    });
    let log = d.log();
    assert_eq!(d.count("forked by the template"), 0, "{log}");
    assert_eq!(d.count("template started"), 1, "not restarted: {log}");
    assert_eq!(d.stats(KEY)["backoffs"], 0, "{log}");
}

/// A reload gives the new generation its own template and stops the old
/// one; a stop leaves no process behind.
#[test]
fn reload_and_stop_leave_no_template_behind() {
    // prestart-processes makes the generation (and so its template) start
    // without a request.
    let d = Daemon::start(&[(
        KEY,
        &echo_config("template = true\nprestart-processes = true"),
    )]);
    d.wait_log("the template to be ready", |l| l.contains("template ready"));
    let first = pids_of(&d.log(), "template started")[0];
    let rows = d.ps();
    assert!(
        rows.iter()
            .any(|r| r["state"] == "template" && r["pid"] == i64::from(first)),
        "charon ps shows the template: {rows:?}"
    );
    d.write_conf(
        KEY,
        &echo_config("template = true\nprestart-processes = true\nmaximum-requests = 500"),
    );
    let (code, _, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{err}");
    d.wait_log("the new template to be ready", |l| {
        l.matches("template ready").count() >= 2
    });
    wait_for(LONG, "the old template to be gone", || !alive(first));
    let mut c = d.client();
    assert_eq!(c.call(KEY, b"after").expect("answered"), b"after");
    let second = pids_of(&d.log(), "template started")[1];
    d.signal(Signal::SIGTERM);
    let mut d = d;
    let status = d.proc.as_mut().expect("charond").wait_timeout(LONG);
    assert!(status.success(), "{status:?}; log:\n{}", d.log());
    assert!(!alive(second), "the template outlived charond");
    assert_eq!(d.instances(), Vec::<i32>::new(), "{}", d.log());
}

/// The Python library has no template: with `template = true` its
/// template refuses to start with a clear error, the manager gives up on
/// it after two tries, and exec serves.
#[test]
fn a_python_service_with_a_template_fails_clearly_and_exec_serves() {
    let py = std::path::Path::new("/usr/bin/python3");
    assert!(py.exists(), "this test needs /usr/bin/python3");
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let script = "import charon\n\
                  for req in charon.Service():\n    req.respond(req.body)\n";
    let d = Daemon::start(&[(
        KEY,
        &format!(
            "exec = [\"/usr/bin/python3\", \"-c\", {script:?}]\ntemplate = true\n\
             [env]\nPYTHONPATH = {:?}\n",
            lib.display().to_string()
        ),
    )]);
    let mut c = d.client();
    for i in 0..5u8 {
        assert_eq!(c.call(KEY, &[i]).expect("answered"), [i]);
    }
    d.wait_log("the template given up", |l| {
        l.contains("failed before ready twice in a row")
    });
    let log = d.log();
    assert!(log.contains("does not support"), "{log}");
    assert_eq!(d.stats(KEY)["backoffs"], 0, "{log}");
}
