//! Service configuration: one TOML file per service in the config dir,
//! named `<service key>.toml`.
//!
//! Loading runs in two phases, like a command line's raw and checked
//! arguments: `raw.rs` reads the TOML into values that remember their line
//! and key (syntax, unknown keys, TOML types), then `validate.rs` turns
//! them into a [`ServiceConfig`] (units, ranges, relations, paths).
//! `load.rs` finds and reads the files; `units.rs` parses durations and
//! sizes; `suggest.rs` finds the key a misspelt one meant; `error.rs` is
//! the [`ConfigError`] every phase reports with. Every error carries the
//! file, and where it has one the line and key. Running services from the
//! result is the runtime's business. CONFIG.md at the repository root
//! documents every key for operators.

mod error;
pub(crate) mod load;
mod raw;
mod service;
mod suggest;
mod units;
mod validate;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub(crate) use load::key_from_path;
pub use load::{load_file, scan_dir, Ignored, Scan, MAX_FILE_SIZE, SUFFIX};
pub use service::ServiceConfig;
pub use units::{parse_duration, parse_size};
