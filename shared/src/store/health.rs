//! Is this process fit to serve? The checks behind the server's readiness answer and the
//! figures behind its metrics: the database reachable and at the schema this binary was built
//! for, the key provider answering (or enough keys cached to go on), the audit trail's writer and
//! chainer keeping up, and room on the data directory's disk. The server renders a
//! [`HealthReport`]; what a check means, and its limits, is decided here.
//!
//! Limits are fixed, each with its reason, rather than settings: they describe a server that has
//! stopped working (a chainer failing for a minute, a disk about to fill), not a tuning choice.

use super::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Each check gives up after this long and counts as failing: a readiness probe must answer
/// within a load balancer's timeout (typically 5 s) even when the database or Vault hangs.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Unchained audit events beyond which the chainer is not keeping up. It links a batch every
/// second at thousands of events a second, so this many waiting means it has been failing for
/// many seconds under full load (or much longer at an ordinary rate).
pub const MAX_UNCHAINED: u64 = 100_000;

/// The oldest unchained event's age beyond which the trail is failing: the chainer runs every
/// second and retries every 5 s, so a minute is a dozen failed tries in a row.
pub const MAX_CHAIN_LAG: Duration = Duration::from_secs(60);

/// An age past which the chainer is late (degraded, still ready): a few tries have failed.
pub const LATE_CHAIN_LAG: Duration = Duration::from_secs(10);

/// Free space below which the data directory's disk is failing: PostgreSQL stops when it cannot
/// write WAL, and an export or a backup needs room. Below [`LOW_DISK_BYTES`] it is degraded.
pub const MIN_DISK_BYTES: u64 = 512 * 1024 * 1024;
pub const LOW_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What readiness is checked against: fixed when the server starts.
#[derive(Debug, Clone)]
pub struct HealthExpectations {
    /// The newest migration this binary carries (`core::latest_migration`).
    pub migration: i64,
    /// The data directory whose disk is checked.
    pub data_dir: PathBuf,
}

/// A check's state. `Degraded` is still ready: the process serves, with something to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    Ok,
    Degraded,
    Failing,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Degraded => "degraded",
            CheckState::Failing => "failing",
        }
    }
}

/// The audit trail's backlog: events committed and not yet linked into the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditBacklog {
    /// Counted up to [`MAX_UNCHAINED`] + 1 (beyond, the exact number does not matter).
    pub unchained: u64,
    /// How long the oldest of them has waited (`None`: none waits).
    pub oldest: Option<Duration>,
}

/// One evaluation of every check, with the figures they were decided on (for metrics; a
/// readiness answer shows only the names and states).
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub database: CheckState,
    pub key_provider: CheckState,
    pub audit: CheckState,
    pub disk: CheckState,
    /// How long the database check waited for a pooled connection.
    pub pool_wait: Option<Duration>,
    pub audit_backlog: Option<AuditBacklog>,
    /// Events waiting for the audit writer, and how many it holds before callers wait.
    pub audit_queue: (usize, usize),
    /// Bytes free to the server on the data directory's disk.
    pub disk_free: Option<u64>,
}

impl HealthReport {
    /// The checks by name, in a fixed order: all a readiness answer reveals.
    pub fn checks(&self) -> [(&'static str, CheckState); 4] {
        [
            ("database", self.database),
            ("key_provider", self.key_provider),
            ("audit", self.audit),
            ("disk", self.disk),
        ]
    }

    /// Ready unless a check fails (a degraded one still serves).
    pub fn ready(&self) -> bool {
        self.checks().iter().all(|(_, s)| *s != CheckState::Failing)
    }
}

/// A database's pool, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

impl Store {
    /// Evaluate every check (each within [`CHECK_TIMEOUT`], together). The server caches the
    /// report briefly, so probes cost the database and Vault at most one evaluation a second.
    pub async fn health(&self, expect: &HealthExpectations) -> HealthReport {
        let (database, key_provider, backlog) = tokio::join!(
            self.check_database(expect.migration),
            self.check_key_provider(),
            bounded(self.audit_backlog()),
        );
        let audit_queue = self.audit.queued();
        let disk_free = free_space(&expect.data_dir);
        HealthReport {
            database: database.0,
            pool_wait: database.1,
            key_provider,
            audit: audit_state(backlog.as_ref().ok(), audit_queue),
            audit_backlog: backlog.ok(),
            audit_queue,
            disk: disk_state(disk_free),
            disk_free,
        }
    }

    /// Reachable, and migrated to exactly this binary's newest migration (an older schema lacks
    /// what the code needs; a newer one was migrated by a newer binary whose data this one may
    /// not understand). Also says how long a pooled connection took to get.
    async fn check_database(&self, migration: i64) -> (CheckState, Option<Duration>) {
        let started = Instant::now();
        let result = bounded(async {
            // A transaction (the only way to the database, `db::Db`): its BEGIN is the wait.
            let mut conn = self.pool.begin().await?;
            let waited = started.elapsed();
            let (applied, failed): (Option<i64>, Option<bool>) =
                sqlx::query_as("SELECT max(version), bool_or(NOT success) FROM _sqlx_migrations")
                    .fetch_one(&mut *conn)
                    .await?;
            Ok::<_, StoreError>((applied, failed, waited))
        })
        .await;
        match result {
            Ok((Some(applied), failed, waited)) => {
                let state = if applied == migration && failed != Some(true) {
                    CheckState::Ok
                } else {
                    tracing::warn!(
                        applied,
                        expected = migration,
                        "the database schema is not this binary's"
                    );
                    CheckState::Failing
                };
                (state, Some(waited))
            }
            Ok((None, _, waited)) => (CheckState::Failing, Some(waited)),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the database did not answer");
                (CheckState::Failing, None)
            }
        }
    }

    /// Answering: ok. Not answering while data keys are cached: degraded but ready — records
    /// whose keys are cached are read and written as before, the rest get 503 until it is back;
    /// taking the node out of a load balancer would turn those successes into failures too.
    /// Not answering with nothing cached: failing (no request that opens a record can succeed).
    async fn check_key_provider(&self) -> CheckState {
        match bounded(async { Ok::<_, StoreError>(self.keys.probe().await?) }).await {
            Ok(()) => CheckState::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the key provider did not answer");
                if self.cache.is_empty() {
                    CheckState::Failing
                } else {
                    CheckState::Degraded
                }
            }
        }
    }

    /// How many audit events wait to be chained, and since when.
    pub async fn audit_backlog(&self) -> Result<AuditBacklog, StoreError> {
        let mut tx = self.begin_internal().await?;
        let (unchained, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM audit_unchained LIMIT $1) q),
                    (SELECT e.recorded FROM audit_events e
                      WHERE e.id = (SELECT min(event_id) FROM audit_unchained))",
        )
        .bind(i64::try_from(MAX_UNCHAINED + 1).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        let now = self.clock.now();
        Ok(AuditBacklog {
            unchained: u64::try_from(unchained).unwrap_or(0),
            oldest: oldest.map(|at| (now - at).to_std().unwrap_or(Duration::ZERO)),
        })
    }

    /// Data-key lookups answered from the cache and those that were not, since start.
    pub fn dek_cache_hits_and_misses(&self) -> (u64, u64) {
        self.cache.hits_and_misses()
    }

    /// The connection pool: open connections, idle ones, the most it opens.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = self.pool.connections();
        PoolStats {
            size,
            idle,
            max: self.pool.max_connections(),
        }
    }
}

/// `work` within [`CHECK_TIMEOUT`]: one that hangs counts as failed.
async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Database(sqlx::Error::PoolTimedOut)))
}

/// Failing when the backlog cannot be read or is past its limits; degraded when the chainer is
/// late or the writer's queue is full (callers wait for room: back-pressure, not yet failure).
fn audit_state(backlog: Option<&AuditBacklog>, (queued, most): (usize, usize)) -> CheckState {
    let Some(backlog) = backlog else {
        return CheckState::Failing;
    };
    let lag = backlog.oldest.unwrap_or(Duration::ZERO);
    if backlog.unchained > MAX_UNCHAINED || lag > MAX_CHAIN_LAG {
        CheckState::Failing
    } else if lag > LATE_CHAIN_LAG || queued >= most {
        CheckState::Degraded
    } else {
        CheckState::Ok
    }
}

fn disk_state(free: Option<u64>) -> CheckState {
    match free {
        None => CheckState::Failing,
        Some(free) if free < MIN_DISK_BYTES => CheckState::Failing,
        Some(free) if free < LOW_DISK_BYTES => CheckState::Degraded,
        Some(_) => CheckState::Ok,
    }
}

/// Bytes free to unprivileged writers on the disk holding `dir` (or, before it is made, its
/// nearest existing parent: where it will be made).
fn free_space(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    let stat = rustix::fs::statvfs(existing).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(unchained: u64, lag_seconds: u64) -> AuditBacklog {
        AuditBacklog {
            unchained,
            oldest: (unchained > 0).then(|| Duration::from_secs(lag_seconds)),
        }
    }

    #[test]
    fn the_audit_check_follows_its_limits() {
        let q = (0, 4096);
        assert_eq!(audit_state(Some(&backlog(0, 0)), q), CheckState::Ok);
        assert_eq!(audit_state(Some(&backlog(500, 2)), q), CheckState::Ok);
        assert_eq!(
            audit_state(Some(&backlog(500, 11)), q),
            CheckState::Degraded
        );
        assert_eq!(audit_state(Some(&backlog(500, 61)), q), CheckState::Failing);
        assert_eq!(
            audit_state(Some(&backlog(MAX_UNCHAINED + 1, 1)), q),
            CheckState::Failing
        );
        assert_eq!(
            audit_state(Some(&backlog(0, 0)), (4096, 4096)),
            CheckState::Degraded
        );
        assert_eq!(audit_state(None, q), CheckState::Failing);
    }

    #[test]
    fn the_disk_check_follows_its_limits() {
        assert_eq!(disk_state(Some(LOW_DISK_BYTES)), CheckState::Ok);
        assert_eq!(disk_state(Some(MIN_DISK_BYTES)), CheckState::Degraded);
        assert_eq!(disk_state(Some(MIN_DISK_BYTES - 1)), CheckState::Failing);
        assert_eq!(disk_state(None), CheckState::Failing);
    }

    #[test]
    fn free_space_is_measured_where_the_directory_will_be() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("not/yet/made");
        assert!(free_space(&later).is_some_and(|free| free > 0));
    }
}
