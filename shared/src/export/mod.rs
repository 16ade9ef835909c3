//! Bulk Data export (FHIR Bulk Data Access IG 2.0.0, "Flat FHIR"): kick-off, status, cancel and
//! download of NDJSON files, the patient's own copy of their record, Group cohorts.
//!
//! A job runs in the background under the authority of the token that started it (its subject,
//! client, role, scopes and launch patient are kept with the job; the plan — consents, labels —
//! is computed when the job runs). It reads through [`crate::store::export`], the same SQL as a
//! search under the same gate, from one snapshot. Its files are NDJSON sealed in chunks
//! ([`crate::crypto::chunks`]) under a data key of the job's own (`export/<id>`), registered only
//! once whole, opened only for the job's own subject and client, and removed — with their key —
//! when the job expires. Jobs survive a restart: a job whose worker stopped is run again from the
//! start (its partial files removed), at most [`MAX_ATTEMPTS`] times.
//!
//! | file | what |
//! |------|------|
//! | `request.rs` | the kick-off parameters |
//! | `jobs.rs` | the job table: kick-off, status, cancel, claim, expiry, the console's list |
//! | `run.rs` | running a job: types, slices, files, the per-patient audit |
//! | `files.rs` | writing sealed NDJSON files split by size; reading them back for a download |

mod files;
mod jobs;
pub mod request;
mod run;

use crate::access::{AccessContext, Denied};
use crate::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

pub use files::Download;
pub use jobs::{JobState, JobSummary, Manifest, ManifestFile, Status};
pub use request::{BadRequest, ExportRequest, Level};

/// A job is run at most this many times (a restart or crash during a run counts as one).
pub const MAX_ATTEMPTS: i32 = 3;

/// A job that waited this long to start is not started: the authority it was given is stale.
const MAX_WAIT_SECONDS: i64 = 3600;

/// A running job says it is alive this often; one silent for [`STALE_SECONDS`] is run again.
const HEARTBEAT_SECONDS: u64 = 2;
const STALE_SECONDS: i64 = 10;

/// How often expired jobs are removed: files are gone at most this long after they expire.
const CLEANUP_SECONDS: u64 = 5;

/// Where and how exports are made (`CARAPACE_EXPORT_DIR`, `_TTL`, `_JOBS`, `_PER_CLIENT`, `_FILE_BYTES`).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `CARAPACE_EXPORT_DIR` (default `<data dir>/exports`).
    pub dir: PathBuf,
    /// `CARAPACE_EXPORT_TTL` seconds (default 3600): how long a finished job's files are kept.
    pub ttl_seconds: i64,
    /// `CARAPACE_EXPORT_JOBS` (default 2): jobs run at once by this server.
    pub concurrent: usize,
    /// `CARAPACE_EXPORT_PER_CLIENT` (default 1): jobs one client (subject and client id) may have
    /// queued or running at once.
    pub per_client: i64,
    /// `CARAPACE_EXPORT_FILE_BYTES` (default 64 MiB): an output file is split past this much NDJSON.
    pub file_bytes: u64,
}

impl ExportConfig {
    pub fn under(data_dir: &std::path::Path) -> ExportConfig {
        ExportConfig {
            dir: data_dir.join("exports"),
            ttl_seconds: 3600,
            concurrent: 2,
            per_client: 1,
            file_bytes: 64 << 20,
        }
    }
}

/// Why an export call failed; the server maps each to one status and OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// 400: a kick-off the server cannot run as asked.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// 403.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// 404: no such job or file for this caller (another's job looks the same as none).
    #[error("no such export job or file")]
    NotFound,
    /// 429: this client already has as many jobs as it may.
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export directory failed (full, not writable): 500, named in the log only.
    #[error("the export storage failed")]
    Storage(#[from] std::io::Error),
}

impl ExportError {
    /// The error for a log line: a refused request's words may quote its parameters (a
    /// `_typeFilter` can name a patient), so they are not logged.
    pub fn for_log(&self) -> String {
        match self {
            ExportError::BadRequest(_) | ExportError::Store(StoreError::BadRequest(_)) => {
                "a parameter of the request was refused".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> ExportError {
        ExportError::Store(e.into())
    }
}

/// The caller a job belongs to: its token's subject and the client the token was issued to.
fn owner(ctx: &AccessContext) -> (&str, Option<&str>) {
    (ctx.principal.as_str(), ctx.client.as_deref())
}

/// The exports of one server: its jobs, their runners and clean-up.
pub struct Exporter {
    store: Arc<Store>,
    config: ExportConfig,
    /// Wakes the runner when a job is queued.
    wake: tokio::sync::Notify,
    /// The runner, the clean-up and the running jobs, stopped together at shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Downloads being sent (each holds a blocking thread while its client reads).
    downloads: Arc<tokio::sync::Semaphore>,
}

/// Export files sent at once by one server; more get 429.
const MAX_DOWNLOADS: usize = 32;

impl Exporter {
    pub fn new(store: Arc<Store>, config: ExportConfig) -> Arc<Exporter> {
        Arc::new(Exporter {
            store,
            config,
            wake: tokio::sync::Notify::new(),
            tasks: Default::default(),
            downloads: Arc::new(tokio::sync::Semaphore::new(MAX_DOWNLOADS)),
        })
    }

    fn track(&self, task: tokio::task::AbortHandle) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Stop the runner and every running job (at shutdown). A stopped job stays `running` in the
    /// table; once its heartbeat is stale, the next server to look runs it again from the start.
    pub fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }

    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Start the runner (at most `concurrent` jobs at once) and the clean-up of expired jobs, for
    /// the life of the process.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        self.track(tokio::spawn(async move { me.run_jobs().await }).abort_handle());
        let me = self.clone();
        let cleanup = tokio::spawn(async move {
            loop {
                if let Err(e) = me.remove_expired().await {
                    tracing::warn!(error = %e, "removing expired exports failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_secs(CLEANUP_SECONDS)).await;
            }
        });
        self.track(cleanup.abort_handle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_parameter_is_not_logged_in_its_words() {
        let refused = ExportError::BadRequest(BadRequest(
            "_typeFilter 'Patient?name=Zqxsmith': bad".into(),
        ));
        assert!(!refused.for_log().contains("Zqxsmith"));
        let search = ExportError::Store(StoreError::BadRequest("name=Zqxsmith".into()));
        assert!(!search.for_log().contains("Zqxsmith"));
        assert_eq!(
            ExportError::NotFound.for_log(),
            "no such export job or file"
        );
    }
}
