//! The Charon manager (`charond`).
#![deny(unsafe_code)]

pub mod config;
