//! Integration tests: one binary, one module per area, each starting real
//! processes (services, clients, the manager) in a unique temp dir.

mod util;

// Service library: standalone and accept mode, via charon-echo.
mod service;
// Client library and the `charon` command line.
mod client;
// The manager: charond with real instances.
mod manager;
