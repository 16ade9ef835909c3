//! Opening the core: the database (embedded or configured), migrations, the key provider and the store.
//! The server and the console both start here.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::keys::{FileKeyring, KeyError, KeyProvider, VaultTransit};
use crate::db::backup::{BackupError, Repository};
use crate::db::embedded::{self, Cluster};
use crate::db::Db;
use crate::store::Store;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The newest migration this binary carries: the schema version a ready server runs on.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The first connection failed: named by where it went (never with the password).
    #[error("connecting to PostgreSQL at {target}: {cause}")]
    Connect { target: String, cause: sqlx::Error },
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("key provider: {0}")]
    Keys(#[from] KeyError),
    #[error("CARAPACE_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("backups: {0}")]
    Backup(#[from] crate::db::backup::BackupError),
}

/// The database role a process works as once the migrations have run (as the owner): the
/// server's or the console's (see migration 0007). Neither owns tables or bypasses row-level
/// security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    App,
    Console,
}

impl DbRole {
    pub fn name(self) -> &'static str {
        match self {
            DbRole::App => "carapace_app",
            DbRole::Console => "carapace_console",
        }
    }
}

/// An opened core: the store, and the embedded cluster when there is one (stopped on drop).
pub struct Core {
    pub store: Arc<Store>,
    /// Access tokens verified before (on once [`Core::follow_changes`] listens).
    pub tokens: Arc<crate::identity::tokens::TokenCache>,
    /// A direct connection to the primary (not through a pooler): for LISTEN.
    direct: PgConnectOptions,
    pub keys: Arc<KeyProvider>,
    pub cluster: Option<Cluster>,
    pub embedded_keys: bool,
}

impl Core {
    /// Open everything `config` describes with the system clock.
    pub async fn open(config: &Config) -> Result<Core, OpenError> {
        Core::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Open as the console (database role `carapace_console`).
    pub async fn open_console(config: &Config) -> Result<Core, OpenError> {
        Core::open_as(config, Arc::new(SystemClock), DbRole::Console).await
    }

    pub async fn open_with_clock(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Core, OpenError> {
        Core::open_as(config, clock, DbRole::App).await
    }

    pub async fn open_as(
        config: &Config,
        clock: Arc<dyn Clock>,
        role: DbRole,
    ) -> Result<Core, OpenError> {
        // The embedded cluster starts with its backup settings, which need the key provider
        // (the repository's passphrase is wrapped by it); an external database is reached first,
        // so that a URL nobody answers at is reported before any key file is made.
        let (keys, embedded_keys, (pool, replica, cluster, direct)) =
            if config.database_url.is_some() {
                // Boxed: the opening's future is large, and callers' stacks are not.
                let connected = Box::pin(connect(config, role, None)).await?;
                let (keys, embedded_keys) = open_keys(config).await?;
                (Arc::new(keys), embedded_keys, connected)
            } else {
                let (keys, embedded_keys) = open_keys(config).await?;
                let keys = Arc::new(keys);
                let connected = Box::pin(connect(config, role, Some(&keys))).await?;
                (keys, embedded_keys, connected)
            };
        let mut store = Store::new(
            pool,
            keys.clone(),
            config.dek_cache,
            clock,
            config.policy.clone(),
        )
        .with_sign_in_limits(config.sign_in)
        .with_profile_enforcement(config.enforce_profiles)
        .with_referential_integrity(config.referential_integrity)
        .with_subscription_rules(config.subscriptions.clone())
        // A Binary's FHIR-JSON form is base64: three quarters of the body limit fits in it.
        .with_binary_limits(config.binary_limit, config.body_limit as u64 / 4 * 3);
        if let Some(replica) = replica {
            store = store.with_replica(replica, config.replica_wait);
        }
        if let Some(rules) = &config.deid_rules {
            store = store.with_deid_rules(rules.clone());
        }
        let store = Arc::new(store);
        Ok(Core {
            store,
            tokens: Default::default(),
            direct,
            keys,
            cluster,
            embedded_keys,
        })
    }

    /// Keep [`Core::tokens`] and the store's policy inputs in step with the database for the
    /// life of the process (the server calls it once): verified tokens, and what the policy read
    /// for a user, are then answered from memory until the database says they may have changed
    /// (migration 0020's and 0021's notifications).
    pub fn follow_changes(&self) {
        let followers: Vec<(&'static str, Arc<dyn crate::db::Forgets>)> = vec![
            (
                crate::identity::tokens::TokenCache::CHANNEL,
                self.tokens.clone(),
            ),
            (
                crate::store::policy_inputs::PolicyInputs::CHANNEL,
                self.store.policy_inputs().clone(),
            ),
        ];
        tokio::spawn(crate::db::follow_changes(
            self.direct.clone(),
            self.store.pool().clone(),
            followers,
        ));
    }

    /// Close the pool and stop the embedded cluster, if any.
    pub async fn shutdown(mut self) {
        self.store.pool().close().await;
        if let Some(mut cluster) = self.cluster.take() {
            if let Err(e) = tokio::task::spawn_blocking(move || cluster.stop()).await {
                tracing::warn!(error = %e, "stopping the embedded cluster failed");
            }
        }
    }
}

/// The key provider `config` names: Vault transit, or the file keyring in the data directory
/// (`true`: the embedded default's).
pub async fn open_keys(config: &Config) -> Result<(KeyProvider, bool), OpenError> {
    Ok(match &config.vault {
        Some(vault) => (
            KeyProvider::Vault(Arc::new(VaultTransit::connect(vault.clone()).await?)),
            false,
        ),
        None => {
            embedded::create_data_dir(&config.data_dir)
                .map_err(|e| KeyError::Other(e.to_string()))?;
            (
                KeyProvider::File(FileKeyring::open_or_create(&config.data_dir)?),
                true,
            )
        }
    })
}

/// The embedded cluster's backup repository and its passphrase (made at the first call), or why
/// there is none ([`BackupError::External`] for a database given by URL).
pub async fn backup_repository(
    config: &Config,
    keys: &KeyProvider,
) -> Result<(Repository, SecretString), BackupError> {
    if config.database_url.is_some() {
        return Err(BackupError::External);
    }
    let repo = Repository::new(&config.data_dir, config.backup_dir.as_deref())?;
    repo.write_config()?;
    let passphrase = repo.passphrase(keys).await?;
    Ok((repo, passphrase))
}

/// One session's pgAudit logging, set before anything else it runs: DDL and role changes only.
/// The cluster logs every statement of every other session (a DBA's `psql`); the server's and
/// console's own work would drown that, and is in the audit trail already. pgAudit reads the
/// session's value whichever role is current, so it is set here, on the owner's connection
/// before `SET ROLE` (`ALTER ROLE carapace_app SET ...` would never apply: role settings are
/// read at login, and nobody logs in as `carapace_app`). Setting it needs a superuser (the
/// embedded cluster's owner is one); on a database without pgAudit, or whose owner may not set
/// it, this does nothing.
const NARROW_PGAUDIT: &str = "SELECT CASE WHEN current_setting('pgaudit.log', true) IS NOT NULL \
     AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
     THEN set_config('pgaudit.log', 'ddl, role', false) END";

/// Where `options` connect, for a message: host, port, database and user, never the password.
fn connect_target(options: &PgConnectOptions, embedded: bool) -> String {
    let place = match options.get_socket() {
        Some(socket) => format!("the unix socket in {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let source = if embedded {
        "the embedded cluster"
    } else {
        "CARAPACE_DATABASE_URL"
    };
    format!(
        "{place}, database {}, user {} ({source})",
        options.get_database().unwrap_or("(the user's)"),
        options.get_username()
    )
}

/// Run the migrations as the owner, then open the pool whose connections work as `role` (and the
/// replica's, when there is one).
async fn connect(
    config: &Config,
    role: DbRole,
    keys: Option<&KeyProvider>,
) -> Result<(Db, Option<Db>, Option<Cluster>, PgConnectOptions), OpenError> {
    let (options, cluster) = match &config.database_url {
        Some(url) => (url_options(url)?, None),
        None => {
            let dir = config.data_dir.clone();
            // The server owns the cluster it uses; the console works on the server's.
            let ownership = match role {
                DbRole::App => embedded::Ownership::Exclusive,
                DbRole::Console => embedded::Ownership::Shared,
            };
            let Some(keys) = keys else {
                return Err(OpenError::Keys(KeyError::Other(
                    "the embedded cluster is started after the key provider".into(),
                )));
            };
            let backup = match backup_repository(config, keys).await {
                Ok(backup) => Some(backup),
                // Without pgBackRest (or on a path it cannot be given) the cluster still starts,
                // loudly without archiving; `carapace-console backup` then says why.
                Err(e) if e.unavailable() => {
                    tracing::warn!("no WAL archiving and no backups: {e}");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let bin_dir = embedded::find_bin_dir().ok_or(embedded::EmbeddedError::NoBinaries)?;
            let settings = match &backup {
                Some((repo, passphrase)) => repo.settings(passphrase.clone(), &bin_dir),
                None => embedded::Settings {
                    pgaudit: embedded::has_pgaudit(&bin_dir),
                    ..embedded::Settings::default()
                },
            };
            let cluster = tokio::task::spawn_blocking(move || {
                let cluster = Cluster::start_with(&dir, None, ownership, &settings)?;
                if let Some((repo, passphrase)) = &backup {
                    repo.ensure_stanza(passphrase)?;
                }
                Ok::<_, OpenError>(cluster)
            })
            .await
            .map_err(|e| embedded::EmbeddedError::Command {
                what: "starting PostgreSQL".into(),
                detail: e.to_string(),
            })??;
            cluster.ensure_database("carapace").await?;
            (cluster.connect_options("carapace"), Some(cluster))
        }
    };
    // Behind a transaction-mode pooler the migrations go to the primary directly: they hold a
    // session-level advisory lock.
    let owner_options = match &config.database_direct_url {
        Some(url) => url_options(url)?,
        None => options.clone(),
    };
    let mut owner = PgConnection::connect_with(&owner_options)
        .await
        .map_err(|cause| OpenError::Connect {
            target: connect_target(&owner_options, cluster.is_some()),
            cause,
        })?;
    sqlx::query(NARROW_PGAUDIT).execute(&mut owner).await?;
    MIGRATOR.run(&mut owner).await?;
    owner.close().await?;
    let pool = open_pool(config, role, options).await?;
    let replica = match &config.database_replica_url {
        Some(url) => Some(open_pool(config, role, url_options(url)?).await?),
        None => None,
    };
    Ok((pool, replica, cluster, owner_options))
}

/// The driver's options for a configured URL (already checked by the configuration).
fn url_options(url: &secrecy::SecretString) -> Result<PgConnectOptions, OpenError> {
    crate::config::check_database_url(url.expose_secret()).map_err(OpenError::BadUrl)?;
    // The driver's own error may quote the URL: only that it failed is told.
    PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| OpenError::BadUrl("the PostgreSQL driver cannot read it".into()))
}

/// A pool of connections working as `role`: each takes it as it connects, or, behind a
/// transaction-mode pooler, each transaction takes it ([`Db`]).
async fn open_pool(
    config: &Config,
    role: DbRole,
    options: PgConnectOptions,
) -> Result<Db, OpenError> {
    let options = if config.behind_pooler {
        // A statement prepared on one server connection is not there on the next transaction's.
        options.statement_cache_capacity(0)
    } else {
        options
    };
    let pool_options = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        // How long a request waits for a connection before its answer is a 503: while the database
        // is away, every wait runs this long (a connection attempt is retried until then), and one
        // request may wait several times (its token, its data, its failure's audit event), so it is
        // short beside a client's timeout (seconds). A pool busy for longer is overloaded: a 503
        // with Retry-After is the answer then too.
        .acquire_timeout(Duration::from_secs(2))
        // No ping before each use: a round trip per statement batch otherwise. A connection the
        // database dropped fails its next statement (503, retry) and is not reused.
        .test_before_acquire(false);
    if config.behind_pooler {
        let pool = pool_options.connect_with(options).await?;
        return Ok(Db::pooled(pool, role.name()));
    }
    let pool = pool_options
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query(NARROW_PGAUDIT).execute(&mut *conn).await?;
                // A fixed role name, not input.
                sqlx::query(&format!("SET ROLE {}", role.name()))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(Db::direct(pool, role.name()))
}
