//! End-to-end tests: the real `carapace-server` and `carapace-console` binaries against a real
//! PostgreSQL cluster and a real OpenBao (Vault API) server, each started by the test on free loopback
//! ports. One test binary (a `mod` per area) so the suite links once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests play the client side, whose clock is the real one.
#![allow(clippy::disallowed_methods)]

mod audit;
mod audit_retention;
mod auth;
mod authorize;
mod backup;
mod bad_input;
mod browser;
mod client_compat;
mod conformance;
mod consent;
mod console_ui;
mod crud;
mod database;
mod db_tls;
mod deid;
mod documents;
mod embedded;
mod encryption;
mod erasure;
mod export;
mod faults;
mod gate;
mod gate_review;
mod graphql;
mod health;
mod http_edge;
mod identity;
mod integrity;
mod multinode;
mod narrative;
mod operations;
mod pgaudit;
mod profiles;
mod rate_limits;
mod readme;
mod search;
mod smart;
mod subscriptions;
mod summaries;
mod summary;
mod terminology;
mod tls;
mod validation;
mod vault;
mod xml;
