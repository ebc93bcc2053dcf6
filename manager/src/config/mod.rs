//! Service configuration: one TOML file per service in the config dir.
//!
//! `service.rs` holds the validated [`ServiceConfig`]; parsing and
//! validation (file, line and key in every error) come next to it.

mod service;

pub use service::ServiceConfig;
