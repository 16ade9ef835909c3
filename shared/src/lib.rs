//! Carapace core: everything that is neither HTTP nor terminal — FHIR handling, encrypted storage,
//! key management, access context, audit and configuration.
//!
//! The modules are floors: each imports only the floors listed before it (`tests/layers.py`
//! checks this on every CI run; ARCHITECTURE.md draws the map).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod audit;
pub mod clock;
pub mod config;
pub mod core;
pub mod crypto;
pub mod db;
pub mod deid;
pub mod export;
pub mod fhir;
pub mod graphql;
pub mod identity;
pub mod meter;
pub mod search;
pub mod store;

pub use secrecy;
