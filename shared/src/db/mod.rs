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
    pool: &Db,
    reach: &RowReach,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    begin_as(pool, reach, "BEGIN").await
}

/// [`begin_with_reach`] for a read-only snapshot: every statement of the transaction sees the
/// database as it was at its first (a Bulk export's files all reflect one `transactionTime`).
pub(crate) async fn begin_snapshot_with_reach(
    pool: &Db,
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
    pool: &Db,
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
    pool.begin_with(&begin).await
}

/// The store's database: a connection pool, and how its transactions take their role.
///
/// Directly connected (the default), each connection takes the process's role once, as it
/// connects (`SET ROLE`), and a statement outside a transaction runs on its own. Behind a pooler
/// in transaction mode (PgBouncer's `pool_mode = transaction`) a client's consecutive
/// transactions may run on different server connections, so nothing may live in the session:
/// every transaction sets its role (`SET LOCAL ROLE`) with its reach, and a statement outside a
/// transaction is run inside one of its own (sqlx sends a statement's parse and its execution as
/// two exchanges, which a transaction-mode pooler could send to two servers). Every query of the
/// core goes through here (the store's fields hold a `Db`, never a bare pool), so no path can
/// forget either.
#[derive(Clone, Debug)]
pub struct Db {
    pool: sqlx::PgPool,
    /// The role every transaction sets (`SET LOCAL ROLE`), whatever its connection's session
    /// says: a connection that somehow kept another role (a pooler misconfigured, a session
    /// `SET` someone made through it) still works as this one. `None` only for
    /// [`Db::from`] a bare pool (tests and tools working as the URL's user).
    role: Option<&'static str>,
    /// Behind a transaction-mode pooler: a lone statement runs in a transaction of its own.
    pooled: bool,
}

impl Db {
    /// A pool whose connections took `role` as they connected (and whose transactions set it
    /// again).
    pub fn direct(pool: sqlx::PgPool, role: &'static str) -> Db {
        Db {
            pool,
            role: Some(role),
            pooled: false,
        }
    }

    /// A pool behind a transaction-mode pooler: every transaction sets `role`, and nothing runs
    /// outside a transaction.
    pub fn pooled(pool: sqlx::PgPool, role: &'static str) -> Db {
        Db {
            pool,
            role: Some(role),
            pooled: true,
        }
    }

    /// `BEGIN` (and the role, behind a pooler).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// `begin`: a `BEGIN` statement, possibly followed by `SET LOCAL`s (one simple-query
    /// message: one round trip); the role is set first.
    pub(crate) async fn begin_with(
        &self,
        begin: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        match self.role {
            None => self.pool.begin_with(begin.to_string()).await,
            Some(role) => {
                let (first, rest) = begin.split_once(';').unwrap_or((begin, ""));
                // A fixed role name (`DbRole::name`), not input.
                let rest = if rest.is_empty() {
                    String::new()
                } else {
                    format!(";{rest}")
                };
                self.pool
                    .begin_with(format!("{first}; SET LOCAL ROLE {role}{rest}"))
                    .await
            }
        }
    }

    /// Whether transactions set their role (a transaction-mode pooler is in front).
    pub fn behind_pooler(&self) -> bool {
        self.pooled
    }

    pub fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// Connections open, and of them idle (for monitoring).
    pub fn connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn close(&self) {
        self.pool.close().await
    }
}

impl From<sqlx::PgPool> for Db {
    /// A bare pool, working as its URL's user (tests, tools): transactions set no role.
    fn from(pool: sqlx::PgPool) -> Db {
        Db {
            pool,
            role: None,
            pooled: false,
        }
    }
}

impl<'c> sqlx::Executor<'c> for &'c Db {
    type Database = sqlx::Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        use futures_util::{StreamExt, TryStreamExt};
        if !self.pooled {
            return (&self.pool).fetch_many(query);
        }
        // In a transaction of its own; the results are collected first, as `fetch_all`,
        // `fetch_one` and `execute` do anyway (no query of the core streams from the pool).
        futures_util::stream::once(async move {
            let mut tx = self.begin().await?;
            let items: Vec<_> = sqlx::Executor::fetch_many(&mut *tx, query)
                .try_collect()
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures_util::stream::iter(items.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::postgres::PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        if !self.pooled {
            return (&self.pool).fetch_optional(query);
        }
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::Executor::fetch_optional(&mut *tx, query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    // Preparing and describing only parse (nothing of the core calls them): on the pool.
    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::postgres::PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<sqlx::Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).describe(sql)
    }
}

/// A LISTEN connection to `connect` (a direct one: a transaction-mode pooler cannot keep a
/// LISTEN), reconnecting as sqlx's listener does.
pub(crate) async fn listener(
    connect: &sqlx::postgres::PgConnectOptions,
) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    sqlx::postgres::PgListener::connect_with(
        &sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(connect.clone()),
    )
    .await
}

/// A process-local cache kept true by the database's notifications: while its listener is
/// subscribed the cache may answer; any notification on its channel forgets everything it holds.
pub trait Forgets: Send + Sync {
    /// Forget every entry (something it caches may have changed).
    fn forget_all(&self);
    /// Whether the listener is subscribed; off, the cache must not answer (nor keep answers).
    fn set_listening(&self, on: bool);
}

/// How often each node pings the first channel through its pool.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// A listener that has not heard its own node's ping this long counts as lost (the longest a
/// silently dead connection can leave the caches on).
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Listen on `connect` (a direct connection: a transaction-mode pooler cannot keep a LISTEN)
/// for the life of the process, on each follower's channel: a follower is on once subscribed;
/// every notification on its channel forgets all it holds; a lost connection turns every
/// follower off (and forgets all) until it is back.
pub async fn follow_changes(
    connect: sqlx::postgres::PgConnectOptions,
    pool: Db,
    followers: Vec<(&'static str, std::sync::Arc<dyn Forgets>)>,
) {
    let Some((ping_channel, _)) = followers.first().cloned() else {
        return;
    };
    let channels: Vec<&str> = followers.iter().map(|(c, _)| *c).collect();
    let all_off = || {
        for (_, f) in &followers {
            f.set_listening(false);
            f.forget_all();
        }
    };
    loop {
        match listener(&connect).await {
            Ok(mut listener) => match listener.listen_all(channels.iter().copied()).await {
                Ok(()) => {
                    // A half-open connection, or a direct URL naming another database, would
                    // hear nothing and say nothing: this node pings the first channel through its
                    // own pool every `PING_EVERY`, and the caches are on only while this
                    // listener hears this node's own ping — from its first echo on this
                    // connection (so a listener on the wrong database never turns them on) until
                    // one is `SILENCE` late. `try_recv` is `Ok(None)` once the connection is
                    // lost.
                    let ping = format!("ping:{}", uuid::Uuid::new_v4().simple());
                    let pinger = tokio::spawn({
                        let (pool, ping) = (pool.clone(), ping.clone());
                        async move {
                            loop {
                                let _ = sqlx::query("SELECT pg_notify($1, $2)")
                                    .bind(ping_channel)
                                    .bind(&ping)
                                    .execute(&pool)
                                    .await;
                                tokio::time::sleep(PING_EVERY).await;
                            }
                        }
                    });
                    let mut heard = std::time::Instant::now();
                    let mut on = false;
                    while let Ok(Ok(Some(n))) =
                        tokio::time::timeout(SILENCE, listener.try_recv()).await
                    {
                        if n.payload() == ping {
                            heard = std::time::Instant::now();
                            if !on {
                                for (_, f) in &followers {
                                    f.forget_all();
                                    f.set_listening(true);
                                }
                                on = true;
                            }
                        } else if !n.payload().starts_with("ping:") {
                            for (channel, f) in &followers {
                                if *channel == n.channel() {
                                    f.forget_all();
                                }
                            }
                        }
                        if heard.elapsed() > SILENCE {
                            break;
                        }
                    }
                    pinger.abort();
                    all_off();
                    tracing::warn!(
                        "lost the change listener; tokens and access policies are read from the \
                         database until it is back"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN for changes failed"),
            },
            Err(e) => tracing::warn!(error = %e, "connecting the change listener failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
