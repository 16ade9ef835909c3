//! Carapace core: everything that is neither HTTP nor terminal — FHIR handling, encrypted storage,
//! key management, access context, audit and configuration.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod audit;
pub mod auth;
pub mod authorize;
pub mod clock;
pub mod config;
pub mod core;
pub mod crypto;
pub mod db;
pub mod dek_cache;
pub mod embedded;
pub mod fhir;
pub mod keys;
pub mod policy;
pub mod search;
pub mod store;
pub mod users;

pub use secrecy;
