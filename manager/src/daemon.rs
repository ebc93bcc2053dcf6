//! Running the manager: validate the config dir (`check`), or set up the
//! run dir, the services' sockets and scoreboards and hand them to the event
//! loop (`run`). Everything that may fail here is a start-up problem, a
//! [`Fatal`] with one clear line; once the loop runs, a service's trouble is
//! only ever logged. Turning these into exit codes is the binary's job.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config as cfg;
use crate::config::ServiceConfig;
use crate::control::Control;
use crate::log::{info, warning};
use crate::runtime::{Manager, Paths};
use crate::services::Bound;
use crate::spawn::ForkExec;
use crate::{signals, startup};

/// What `charond` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory of `<service key>.toml` files.
    pub config_dir: PathBuf,
    /// Directory of the rendezvous sockets and the lock.
    pub run_dir: PathBuf,
    /// How often to log one statistics line per service.
    pub stats_interval: Duration,
    /// Write the log here instead of stderr (reopened on SIGUSR1).
    pub log_file: Option<PathBuf>,
    /// Serve `GET /metrics` (Prometheus text) over HTTP on this address.
    pub metrics_listen: Option<SocketAddr>,
}

/// How a stop went, for the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every instance, and every process an instance left behind, exited
    /// on its own within `stop-grace`.
    Graceful,
    /// Something had to be SIGKILLed: `stop-grace` passed, or a second stop
    /// signal asked for it.
    Forced,
}

/// A start-up problem that stops the manager: one clear line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// What `charond --check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Each error as a `FILE:LINE: KEY: message` line; empty when all is
    /// well.
    pub errors: Vec<String>,
    /// Each file that is not a service file, as `FILE: reason`.
    pub ignored: Vec<String>,
    /// How many service files are valid.
    pub valid: usize,
    /// How many service files have errors.
    pub broken: usize,
}

impl CheckReport {
    /// The one-line summary `charond --check` ends with, e.g. `config dir
    /// demo: 2 service file(s) valid, 1 with errors (3 error(s)), 1 ignored`.
    #[must_use]
    pub fn summary(&self, config_dir: &Path) -> String {
        let mut s = format!(
            "config dir {}: {} service file(s) valid, {} with errors",
            config_dir.display(),
            self.valid,
            self.broken
        );
        if !self.errors.is_empty() {
            s.push_str(&format!(" ({} error(s))", self.errors.len()));
        }
        if !self.ignored.is_empty() {
            s.push_str(&format!(", {} ignored", self.ignored.len()));
        }
        s
    }
}

/// Validates every config file in `config_dir`.
///
/// # Errors
///
/// The config dir cannot be read.
pub fn check(config_dir: &Path) -> Result<CheckReport, Fatal> {
    let scan = cfg::scan_dir(config_dir).map_err(|e| Fatal(e.to_string()))?;
    let broken: std::collections::BTreeSet<&Path> =
        scan.errors.iter().map(|e| e.file.as_path()).collect();
    Ok(CheckReport {
        valid: scan.services.len(),
        broken: broken.len(),
        errors: scan.errors.iter().map(ToString::to_string).collect(),
        ignored: scan
            .ignored
            .iter()
            .map(|i| format!("{}: {}", i.file.display(), i.reason))
            .collect(),
    })
}

/// Runs the manager in the foreground until SIGTERM or SIGINT, then stops
/// every instance (and every process an instance left behind) and returns
/// how the stop went.
///
/// # Errors
///
/// A [`Fatal`] start-up problem: the config dir is missing, the run dir
/// cannot be created or written, another manager holds its lock, or the
/// event loop cannot be set up.
pub fn run(opts: &Options) -> Result<Stop, Fatal> {
    // Sockets systemd passed back (fd store, socket activation) are taken
    // before anything else can open an fd.
    let run_dir_arg = opts
        .run_dir
        .canonicalize()
        .unwrap_or_else(|_| opts.run_dir.clone());
    let offered = crate::fdstore::Offered::take(&run_dir_arg);
    if let Some(path) = &opts.log_file {
        crate::log::to_file(path)
            .map_err(|e| Fatal(format!("unable to open log file {}: {e}", path.display())))?;
    }
    let config_dir = resolve_config_dir(&opts.config_dir)?;
    raise_fd_limit();
    become_subreaper();
    // Signals are blocked before anything is forked.
    let signals =
        signals::Signals::new().map_err(|e| Fatal(format!("unable to set up signals: {e}")))?;
    let lock = startup::lock_run_dir(&opts.run_dir).map_err(Fatal)?;
    let run_dir = prepare_run_dir(&opts.run_dir, &offered)?;
    // Bound before the control socket: a failure here leaves nothing in
    // the run dir that would say a manager runs.
    let metrics = match opts.metrics_listen {
        Some(addr) => Some(crate::metrics::serve(addr).map_err(Fatal)?),
        None => None,
    };
    let control = Control::bind(&run_dir).map_err(|e| {
        Fatal(format!(
            "unable to bind the control socket in {}: {e}",
            run_dir.display()
        ))
    })?;
    let mut m = match set_up(config_dir, run_dir, opts, lock, signals, control, offered) {
        Ok(m) => m,
        Err((e, control)) => {
            control.remove();
            return Err(e);
        }
    };
    m.send_metrics_to(metrics);
    m.store_live_sockets();
    log_started(&m);
    serve(m)
}

/// Runs the event loop until the stop, then removes the control socket.
fn serve(mut m: Manager) -> Result<Stop, Fatal> {
    let r = m.run();
    m.remove_control_socket();
    r.map(|graceful| {
        if graceful {
            Stop::Graceful
        } else {
            Stop::Forced
        }
    })
    .map_err(|e| Fatal(format!("event loop failed: {e}")))
}

/// The config dir as an absolute path; it must exist.
fn resolve_config_dir(dir: &Path) -> Result<PathBuf, Fatal> {
    if !dir.is_dir() {
        return Err(Fatal(format!(
            "config dir {} does not exist or is not a directory",
            dir.display()
        )));
    }
    dir.canonicalize().map_err(|e| {
        Fatal(format!(
            "unable to resolve config dir {}: {e}",
            dir.display()
        ))
    })
}

/// Descendants an instance leaves behind become ours, not init's
/// (`orphans.rs`); as a container's PID 1 we are their reaper anyway.
fn become_subreaper() {
    if let Err(e) = crate::sys::become_subreaper() {
        warning!(
            None,
            None,
            "unable to become a child subreaper: {e}; processes instances leave behind go to init"
        );
    }
}

/// Raises the soft fd limit to the hard one, saying so (or why not).
fn raise_fd_limit() {
    match crate::starved::raise_fd_limit() {
        Ok((old, new)) if old < new => {
            info!(
                None,
                None, "raised the fd limit from {old} to {new} (the hard limit)"
            );
        }
        Ok(_) => {}
        Err(e) => warning!(
            None,
            None,
            "unable to raise the fd limit to the hard limit: {e}"
        ),
    }
}

/// The locked run dir as an absolute path, checked writable and cleaned
/// of stale sockets (all but those systemd `offered` back).
fn prepare_run_dir(dir: &Path, offered: &crate::fdstore::Offered) -> Result<PathBuf, Fatal> {
    let run_dir = dir
        .canonicalize()
        .map_err(|e| Fatal(format!("unable to resolve run dir {}: {e}", dir.display())))?;
    // The lock file may be writable in a dir that is not: sockets could
    // not be bound there.
    nix::unistd::access(
        &run_dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        Fatal(format!(
            "run dir {} is not writable: {e}",
            run_dir.display()
        ))
    })?;
    match startup::remove_stale_sockets(&run_dir, &offered.paths(&run_dir)) {
        Ok(removed) => {
            for p in removed {
                info!(None, None, "removed stale socket {}", p.display());
            }
            Ok(run_dir)
        }
        Err(e) => Err(Fatal(format!(
            "unable to clean run dir {}: {e}",
            run_dir.display()
        ))),
    }
}

/// The start-up line: the version and how many services run.
fn log_started(m: &Manager) {
    let (services, broken) = m.counts();
    info!(
        None,
        None,
        "charond {} started ({} service(s){})",
        env!("CARGO_PKG_VERSION"),
        services,
        match broken {
            0 => String::new(),
            n => format!(", {n} broken config file(s) not running: see charon stats"),
        }
    );
}

/// Loads the config dir, binds the services and builds the event loop
/// around them and the control socket. On failure the control socket comes
/// back so that the caller can remove it.
fn set_up(
    config_dir: PathBuf,
    run_dir: PathBuf,
    opts: &Options,
    lock: nix::fcntl::Flock<std::fs::File>,
    signals: signals::Signals,
    control: Control,
    mut offered: crate::fdstore::Offered,
) -> Result<Manager, (Fatal, Control)> {
    let scan = match scan_config(&config_dir) {
        Ok(scan) => scan,
        Err(e) => return Err((e, control)),
    };
    let devnull = match startup::devnull() {
        Ok(fd) => fd,
        Err(e) => return Err((Fatal(format!("unable to open /dev/null: {e}")), control)),
    };
    let services = bind_services(scan.services, &run_dir, &mut offered);
    let paths = Paths {
        config_dir,
        run_dir,
        stats_interval: opts.stats_interval.max(Duration::from_secs(1)),
    };
    let mut m = match Manager::new(paths, lock, signals, services, devnull, Box::new(ForkExec)) {
        Ok(m) => m,
        Err(e) => {
            return Err((
                Fatal(format!("unable to set up the event loop: {e}")),
                control,
            ))
        }
    };
    if let Err((e, control)) = m.attach_control(control) {
        return Err((
            Fatal(format!("unable to watch the control socket: {e}")),
            control,
        ));
    }
    // Before the broken keys bind: a passed socket no key claimed has its
    // file removed.
    m.settle_offered(offered);
    // A broken file's key has no service: list it and answer for it.
    m.set_broken(scan.errors);
    Ok(m)
}

/// Reads the config dir, logging the files ignored and those that failed
/// to load.
fn scan_config(config_dir: &Path) -> Result<cfg::Scan, Fatal> {
    let scan = cfg::scan_dir(config_dir).map_err(|e| Fatal(e.to_string()))?;
    for i in &scan.ignored {
        info!(None, None, "ignored {}: {}", i.file.display(), i.reason);
    }
    for e in &scan.errors {
        warning!(None, None, "unable to load config: {e}");
    }
    Ok(scan)
}

/// Binds each service's socket and creates its scoreboard. A service that
/// cannot be set up is logged and left out; the others run.
fn bind_services(
    configs: Vec<ServiceConfig>,
    run_dir: &Path,
    offered: &mut crate::fdstore::Offered,
) -> Vec<Bound> {
    let mut services = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    for c in configs {
        let key = c.key.as_str().to_string();
        if !root && (c.user.is_some() || c.group.is_some()) {
            warning!(
                Some(&key),
                None,
                "unable to switch instances to user/group: charond is not running as root; they run as charond's user"
            );
        }
        let path = run_dir.join(c.key.socket_file_name());
        let (bound, how) = match offered.claim(&key) {
            Some(fd) => (
                startup::adopt_generation(c, fd, path),
                "listening (socket passed back by systemd) on",
            ),
            None => (startup::bind_generation(c, path), "listening on"),
        };
        match bound {
            Ok(b) => {
                info!(Some(&key), None, "{how} {}", b.sock_path().display());
                services.push(b);
            }
            Err(e) => warning!(Some(&key), None, "{e}"),
        }
    }
    services
}
