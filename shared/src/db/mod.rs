//! What the fronts may know of the database: the kind of a failure, never its text or its SQL.
//! Every query is the core's; `server/` and `console/` do not depend on sqlx (`tests/run` fails
//! the build if they do) and pass database errors along only to ask [`failure`] what they mean.

pub mod backup;
pub mod embedded;

use crate::access::policy::RowReach;

/// A database error as the core's functions return it (the fronts only pass it to [`failure`]).
pub use sqlx::Error as DbError;

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// Row-level security or a missing privilege refused what the core's own checks let
    /// through: the backstop held (SQLSTATE 42501).
    Refused,
    /// A value the client sent that no check above the database caught (class 22: a NUL or an
    /// unencodable character, a number out of range).
    BadValue,
    /// The database is away: unreachable, shutting down or starting, out of connections.
    Unavailable,
    /// Anything else: a defect.
    Internal,
}

pub fn failure(e: &DbError) -> DbFailure {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            DbFailure::Unavailable
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("42501") => DbFailure::Refused,
            Some(c) if c.starts_with("22") => DbFailure::BadValue,
            // Connection exceptions (class 08), the server shutting down or starting
            // (57P01-57P03) and too many connections (53300).
            Some(c)
                if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300") =>
            {
                DbFailure::Unavailable
            }
            _ => DbFailure::Internal,
        },
        _ => DbFailure::Internal,
    }
}

/// `BEGIN` and the settings in one round trip (a custom begin statement: the transaction guard
/// still rolls back on drop): every transaction the store opens for a caller starts here, so
/// PostgreSQL's row-level security (migration 0007) sees only what the caller's plan lets through. The values are fixed words and compartment key scopes, quoted.
pub(crate) async fn begin_with_reach(
    pool: &sqlx::PgPool,
    reach: &RowReach,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    begin_as(pool, reach, "BEGIN").await
}

/// [`begin_with_reach`] for a read-only snapshot: every statement of the transaction sees the
/// database as it was at its first (a Bulk export's files all reflect one `transactionTime`).
pub(crate) async fn begin_snapshot_with_reach(
    pool: &sqlx::PgPool,
    reach: &RowReach,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    begin_as(
        pool,
        reach,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await
}

async fn begin_as(
    pool: &sqlx::PgPool,
    reach: &RowReach,
    begin: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let compartments: Vec<&str> = reach
        .compartments
        .iter()
        .map(String::as_str)
        // A key scope is `Patient/<id>`; an id never holds a comma, a quote or a NUL.
        .filter(|c| !c.contains([',', '\'', '\0']))
        .collect();
    // `SET LOCAL` is `set_config(..., true)` as a utility statement (nothing to plan).
    let begin = format!(
        "{begin}; SET LOCAL carapace.reach = '{}'; SET LOCAL carapace.compartments = '{}'; \
         SET LOCAL carapace.others = '{}'",
        reach.reach,
        compartments.join(","),
        if reach.others { "on" } else { "off" }
    );
    pool.begin_with(begin).await
}
