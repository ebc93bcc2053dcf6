//! Finding and reading service files: the file-name rule, the config dir
//! scan, and safe reading (size cap, no blocking on odd files).
//!
//! What the text says is left to `raw.rs` and `validate.rs`; what to do
//! with the result (start, stop or keep services, log ignored files) is
//! left to the runtime.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use charon_protocol::ServiceKey;

use super::error::{ConfigError, Errors};
use super::{raw, validate, ServiceConfig};

/// Service files end with this; the rest of the name is the service key.
pub const SUFFIX: &str = ".toml";

/// Files larger than this are refused unread: a service file is a few
/// lines, and a huge one is a mistake (or a device) not worth parsing.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The result of scanning the config dir.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every valid service, sorted by key.
    pub services: Vec<ServiceConfig>,
    /// Every error of every file that failed, sorted by file then line.
    pub errors: Vec<ConfigError>,
    /// Files that are not service files, with why, sorted by file.
    pub ignored: Vec<Ignored>,
}

impl Scan {
    /// Keys of the service files that failed to load: on a reload, the
    /// runtime keeps these services running with their old config.
    #[must_use]
    pub fn failed_keys(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .errors
            .iter()
            .filter_map(|e| key_from_path(&e.file).ok())
            .collect();
        keys.dedup();
        keys
    }
}

/// A file in the config dir that is not a service file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The file.
    pub file: PathBuf,
    /// Why it is not a service file.
    pub reason: String,
}

/// Loads and validates one service file, named `<service key>.toml`.
///
/// Relative paths in `cd`, and in `exec`'s program when it holds a `/`,
/// resolve against the file's directory.
///
/// ```no_run
/// use std::path::Path;
/// use charon_manager::config::load_file;
/// match load_file(Path::new("/etc/charon/system.echo.0.raw.toml")) {
///     Ok(config) => println!("{} runs {:?}", config.key, config.exec),
///     Err(errors) => errors.iter().for_each(|e| eprintln!("{e}")),
/// }
/// ```
///
/// # Errors
///
/// Every problem found, each with the file and, where it has one, the line
/// and key: a file name that is not a service key, an unreadable, oversized
/// or non-UTF-8 file, a TOML syntax error, unknown keys, wrong types, out
/// of range values and inconsistent keys.
pub fn load_file(path: &Path) -> Result<ServiceConfig, Vec<ConfigError>> {
    let key = key_from_path(path).map_err(|reason| {
        vec![ConfigError::whole_file(
            path,
            format!("not a service file: {reason}"),
        )]
    })?;
    let bytes =
        read_capped(path).map_err(|message| vec![ConfigError::whole_file(path, message)])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).map_err(|e| {
        vec![ConfigError::whole_file(
            path,
            format!("unable to resolve the config dir's path: {e}"),
        )]
    })?;
    load_bytes(&bytes, key, path, &dir)
}

/// Parses and validates a file's contents; the seam the tests and fuzzing
/// use without touching the file system.
pub(crate) fn load_bytes(
    bytes: &[u8],
    key: ServiceKey,
    path: &Path,
    dir: &Path,
) -> Result<ServiceConfig, Vec<ConfigError>> {
    let mut errors = Errors::new(path);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            errors.at_line(
                Some(line),
                "not valid UTF-8: a config file must be UTF-8 text",
            );
            return Err(errors.into_vec());
        }
    };
    let Some(raw) = raw::parse(text, &mut errors) else {
        return Err(errors.into_vec());
    };
    match validate::validate(&raw, key, path, dir, &mut errors) {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(errors.into_vec()),
    }
}

/// The service key a file name gives, or why it gives none.
pub(crate) fn key_from_path(path: &Path) -> Result<ServiceKey, String> {
    let name = path
        .file_name()
        .ok_or_else(|| "the path has no file name".to_string())?;
    let name = name
        .to_str()
        .ok_or_else(|| "the file name is not UTF-8".to_string())?;
    let stem = name
        .strip_suffix(SUFFIX)
        .ok_or_else(|| format!("not a {SUFFIX} file"))?;
    ServiceKey::parse_config(stem).map_err(|e| {
        format!("the name before {SUFFIX} must be a service key, and {stem:?} is not: {e}")
    })
}

/// Reads a whole regular file of at most [`MAX_FILE_SIZE`] bytes.
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    // O_NONBLOCK so that a FIFO or a device named like a service file
    // cannot block the manager in open(); it is refused just below.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("unable to open: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("unable to stat: {e}"))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(format!("not a regular file: it is {what}"));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(too_large(meta.len()));
    }
    strict_modes(&meta, "the file")?;
    let mut bytes = Vec::new();
    // The file may grow between stat and read; the cap still holds.
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unable to read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// As sshd's StrictModes: when the manager runs as root, a config file or
/// dir that another user could change is refused, since it names programs
/// root will start. Either must be owned by root and writable by root only.
fn strict_modes(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let fix = "a root manager only reads config owned by root and writable by root alone";
    if meta.uid() != 0 {
        return Err(format!("{what} is owned by uid {}: {fix}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} has mode {:04o}, writable by group or others: {fix} (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn too_large(len: u64) -> String {
    format!(
        "the file is {len} bytes, over the limit of {MAX_FILE_SIZE} (1 MiB): \
         a service file is a few lines of TOML"
    )
}

/// Loads every service file in `dir`.
///
/// Each `<service key>.toml` is loaded with [`load_file`]; other names are
/// listed in [`Scan::ignored`] with a reason. Hidden files (starting with
/// `.`, which covers vim's `.x.swp` and emacs's `.#x`), names ending in `~`
/// and emacs autosaves (`#x#`) are skipped silently: editors create them
/// all the time and logging each would be noise.
///
/// ```no_run
/// use std::path::Path;
/// use charon_manager::config::scan_dir;
/// let scan = scan_dir(Path::new("/etc/charon"))?;
/// for e in &scan.errors {
///     eprintln!("{e}");
/// }
/// for i in &scan.ignored {
///     eprintln!("ignored: {}: {}", i.file.display(), i.reason);
/// }
/// println!("{} services", scan.services.len());
/// # Ok::<(), charon_manager::config::ConfigError>(())
/// ```
///
/// # Errors
///
/// A [`ConfigError`] naming the dir when it cannot be listed (missing, not
/// a directory, no permission). Problems with single files are not errors
/// of the scan: they are in [`Scan::errors`] and [`Scan::ignored`].
pub fn scan_dir(dir: &Path) -> Result<Scan, ConfigError> {
    if let Ok(meta) = std::fs::metadata(dir) {
        strict_modes(&meta, "the config dir")
            .map_err(|message| ConfigError::whole_file(dir, message))?;
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::whole_file(dir, format!("unable to read the config dir: {e}")))?;
    let mut scan = Scan::default();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                scan.errors.push(ConfigError::whole_file(
                    dir,
                    format!("unable to read the config dir: {e}"),
                ));
                continue;
            }
        };
        let path = entry.path();
        if is_editor_litter(&entry.file_name().to_string_lossy()) {
            continue;
        }
        if let Err(reason) = key_from_path(&path) {
            scan.ignored.push(Ignored { file: path, reason });
            continue;
        }
        match load_file(&path) {
            Ok(config) => scan.services.push(config),
            Err(errors) => scan.errors.extend(errors),
        }
    }
    scan.services.sort_by(|a, b| a.key.cmp(&b.key));
    // Stable, so each file's errors keep load_file's order.
    scan.errors.sort_by(|a, b| a.file.cmp(&b.file));
    scan.ignored.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(scan)
}

/// Hidden files, backups and autosaves, skipped without a word.
fn is_editor_litter(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || (name.starts_with('#') && name.ends_with('#'))
}
