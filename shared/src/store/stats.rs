//! Counts for the console's dashboard and for monitoring: resources, versions, types, operator
//! sessions, the audit chain's queue. No content, no PHI.

use super::{Store, StoreError};
use sqlx::Row;

/// Counts of what the console administers (no content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorCounts {
    pub audit_events: i64,
    pub users: i64,
    pub clients: i64,
}

impl Store {
    /// Current resources and stored versions, all compartments: counts for an operator's status
    /// display (no content).
    pub async fn resource_counts(&self) -> Result<(i64, i64), StoreError> {
        let mut tx = self.begin_internal().await?;
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM resources WHERE NOT deleted) AS current,
                    (SELECT count(*) FROM resource_versions) AS versions",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((row.try_get("current")?, row.try_get("versions")?))
    }

    /// AuditEvents, people and enabled backend clients: counts for an operator's status display.
    pub async fn operator_counts(&self) -> Result<OperatorCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM audit_events) AS audit_events,
                    (SELECT count(*) FROM users) AS users,
                    (SELECT count(*) FROM clients WHERE NOT disabled) AS clients",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OperatorCounts {
            audit_events: row.try_get("audit_events")?,
            users: row.try_get("users")?,
            clients: row.try_get("clients")?,
        })
    }

    /// The database server's version (`15.8`), for an operator's status display.
    pub async fn database_version(&self) -> Result<String, StoreError> {
        let v: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.split_whitespace().next().unwrap_or_default().to_string())
    }

    /// Current resources per type, most first: what the console's dashboard shows.
    pub async fn resource_types(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut tx = self.begin_internal().await?;
        let rows = sqlx::query(
            "SELECT resource_type, count(*) AS n FROM resources WHERE NOT deleted
              GROUP BY resource_type ORDER BY n DESC, resource_type",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok((r.try_get("resource_type")?, r.try_get("n")?)))
            .collect()
    }

    /// The audit chain's queue: events committed and waiting for a server's chainer, and how long
    /// the oldest has waited (seconds). A running server keeps both near zero.
    pub async fn chain_queue(&self) -> Result<(i64, Option<f64>), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n,
                    (SELECT extract(epoch FROM now() - e.recorded)::float8 FROM audit_events e
                      WHERE e.id = (SELECT min(event_id) FROM audit_unchained)) AS oldest
               FROM audit_unchained",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }
}
