//! Shared harness for the end-to-end tests, the conformance runner and the benchmarks: PostgreSQL
//! (one private cluster per test process, a fresh database per test), a real OpenBao server, and
//! the real `carapace-server` binary, each on free loopback ports, each stopped when dropped (the
//! shared cluster when the process ends).
//!
//! One module per concern, everything re-exported here (the tests `use carapace_tests::*`):
//! `processes` (ports, binaries, the server process, console runs), `postgres` (clusters and test
//! databases), `bao` (OpenBao), `stack` (the three together for one test), `http` (HTTP and FHIR
//! clients), `auth` (SMART clients, tokens, the scripted browser), `fixtures` (test data),
//! `bench` (the hello yardstick, the driver, benchmark tables), `tmux` (a program in a terminal),
//! `topology` (a streaming replica, PgBouncer, HAProxy: more than one node on one machine).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests play the client side, whose clock is the real one.
#![allow(clippy::disallowed_methods)]

pub mod conformance;
pub mod scripts;
pub mod synthea;

mod auth;
mod bao;
mod bench;
mod fixtures;
mod http;
mod postgres;
mod processes;
mod stack;
mod tmux;
mod topology;

pub use auth::{hidden_field, pkce, BackendClient, Browser};
pub use bao::{bao_binary, Bao};
pub use bench::{
    arg, drive, peak_rss_mb, percentile, unlimited, vs_hello, Hello, Timing, UNLIMITED_NOTE,
    VS_HELLO_ALIGN, VS_HELLO_HEADER,
};
pub use fixtures::{consent, examples_dir, ips_dir, permit_consent};
pub use http::{
    all_pages, call_as, document_bytes, download_digest, http, status_within, upload_stream,
    Downloaded, Fhir, HttpResponse, FHIR_JSON,
};
pub use postgres::{embedded_pool, Postgres};
pub use processes::{bin_path, console, free_port, Server, METRICS_TOKEN};
pub use serde_json::{json, Value};
pub use stack::Stack;
pub use tmux::Tmux;
pub use topology::{HaProxy, PgBouncer, Replica};
