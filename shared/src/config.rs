//! Configuration: defaults, then `CARAPACE_*` environment variables, all declared once in
//! [`SETTINGS`] (`settings.rs`). Secrets live in `SecretString`, which never prints its value.

mod settings;

use settings::Lookup;
pub use settings::{markdown_table, setting_named, ReadBy, Setting, Unset, SETTINGS};

pub use crate::crypto::dek_cache::DekCacheConfig;
pub use crate::crypto::keys::{VaultAuth, VaultConfig};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where resources and keys live, and how the server is reached.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CARAPACE_DATABASE_URL`; `None` means the embedded PostgreSQL cluster under `data_dir`.
    pub database_url: Option<SecretString>,
    /// `CARAPACE_DATABASE_POOLER=transaction`: the URL goes through a transaction-mode pooler.
    pub behind_pooler: bool,
    /// `CARAPACE_DATABASE_DIRECT_URL`: the primary without the pooler (for the migrations).
    pub database_direct_url: Option<SecretString>,
    /// `CARAPACE_DATABASE_REPLICA_URL`: a streaming replica that serves searches.
    pub database_replica_url: Option<SecretString>,
    /// `CARAPACE_REPLICA_WAIT_MS`: how long a search waits for the replica to catch up.
    pub replica_wait: Duration,
    /// `CARAPACE_DATA_DIR` (default `./carapace-data`): embedded cluster and file key provider.
    pub data_dir: PathBuf,
    /// `CARAPACE_BACKUP_DIR`: the embedded cluster's backup repository (`None`: under `data_dir`).
    pub backup_dir: Option<PathBuf>,
    /// `CARAPACE_LISTEN` (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `CARAPACE_BASE_URL`: the public FHIR base, used in `Location` and links.
    pub base_url: Option<String>,
    pub vault: Option<VaultConfig>,
    /// `CARAPACE_TLS_CERT` / `CARAPACE_TLS_KEY` (PEM files): serve HTTPS with rustls.
    pub tls: Option<TlsConfig>,
    /// `CARAPACE_BODY_LIMIT` in bytes (default 16 MiB): larger request bodies get 413.
    pub body_limit: usize,
    /// `CARAPACE_BINARY_LIMIT` in bytes (default 1 GiB): larger Binary contents get 413.
    pub binary_limit: u64,
    /// `CARAPACE_DEK_CACHE_MAX_AGE` seconds (default 3600) and `CARAPACE_DEK_CACHE_MAX_USES`.
    pub dek_cache: DekCacheConfig,
    /// `CARAPACE_DB_MAX_CONNECTIONS` (default 16).
    pub db_max_connections: u32,
    /// `CARAPACE_SESSION_IDLE_MINUTES` (default 15) and `CARAPACE_SESSION_MAX_HOURS` (default 8).
    pub sessions: crate::identity::authorize::SessionPolicy,
    /// `CARAPACE_TRUSTED_PROXIES`: comma-separated addresses or CIDR networks of reverse proxies
    /// whose `X-Forwarded-For` is believed (default none: the address is the connection's peer).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CARAPACE_CONSENT_DEFAULT` (`deny`, the default, or `permit`): may practitioners see a
    /// patient no consent decides? `CARAPACE_BTG_ROLES` (default `practitioner`; `admin` may be
    /// added) and `CARAPACE_BTG_SECONDS` (default 3600): who may break the glass, for how long.
    pub policy: crate::access::policy::PolicyConfig,
    /// `CARAPACE_CORS_ORIGINS`: comma-separated browser origins (`https://app.example:8443`)
    /// that may call `/fhir` and `/auth/token` from a web page (default none: no CORS at all).
    pub cors_origins: Vec<CorsOrigin>,
    /// `CARAPACE_LOGIN_FAILURE_DECAY_HOURS` (default 24), `CARAPACE_LOGIN_ADDRESS_FAILURES`
    /// (default 50) and `CARAPACE_LOGIN_ADDRESS_WINDOW_MINUTES` (default 60): when a user's sign-in
    /// failures stop counting, and how many failures one address may have per window.
    pub sign_in: crate::access::SignInLimits,
    /// `CARAPACE_ENFORCE_PROFILES` (`off`, the default, or `on`): refuse a write whose
    /// `meta.profile` names a StructureDefinition stored here that the resource fails.
    pub enforce_profiles: bool,
    /// `CARAPACE_REFERENTIAL_INTEGRITY` (`on`, the default, or `off`): does a write that refers to
    /// a resource of this server that does not exist, or was deleted, fail (400)?
    pub referential_integrity: bool,
    /// `CARAPACE_DEID_RULES`: the de-identification rules read from that file (`None`: the
    /// Safe Harbor rules that ship).
    pub deid_rules: Option<crate::deid::Rules>,
    /// `CARAPACE_EXPORT_DIR`, `_TTL`, `_JOBS`, `_PER_CLIENT`, `_FILE_BYTES`: Bulk Data exports.
    pub export: crate::export::ExportConfig,
    /// `CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS`, `_FULL_PAYLOAD`, `_RETRY_MS`: where rest-hooks
    /// may go, which endpoints get whole resources, and the retries' first delay.
    pub subscriptions: crate::store::SubscriptionRules,
    /// `CARAPACE_RETENTION_HISTORY`, `CARAPACE_AUDIT_RETENTION_DAYS`, `CARAPACE_AUDIT_ARCHIVE_DIR`,
    /// `CARAPACE_RETENTION_INTERVAL`: what is purged when.
    pub retention: crate::store::RetentionConfig,
    /// `CARAPACE_RATE_LIMIT_CLIENT`, `_ADDRESS`, `_AUTH`: requests per second (0 = off).
    pub rate_limits: RateLimits,
    /// `CARAPACE_METRICS_LISTEN`, `CARAPACE_METRICS_TOKEN`: where `/metrics` is served.
    pub metrics: MetricsConfig,
}

/// Requests per second allowed, each with a burst of twice that; `0` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per signed-in caller (client and user of a verified token).
    pub client: u32,
    /// Per client address.
    pub address: u32,
    /// Per client address on `/auth/*`.
    pub auth: u32,
}

/// Who may scrape `/metrics`: a listener of its own, a bearer token, or both.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    pub token: Option<SecretString>,
}

/// The shortest metrics token taken: guessing one must be hopeless.
const MIN_METRICS_TOKEN: usize = 24;

fn metrics_config(env: &Lookup<'_>) -> Result<MetricsConfig, ConfigError> {
    let listen = match env.text("CARAPACE_METRICS_LISTEN")? {
        None => None,
        Some(a) => Some(a.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError("CARAPACE_METRICS_LISTEN is an address and port (127.0.0.1:9464)".into())
        })?),
    };
    let token = env
        .text("CARAPACE_METRICS_TOKEN")?
        .map(|t| t.trim().to_string());
    if token.as_ref().is_some_and(|t| t.len() < MIN_METRICS_TOKEN) {
        return Err(ConfigError(format!(
            "CARAPACE_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN} characters"
        )));
    }
    if listen.is_some_and(|a| !a.ip().is_loopback()) && token.is_none() {
        return Err(ConfigError(
            "CARAPACE_METRICS_LISTEN beyond loopback needs CARAPACE_METRICS_TOKEN".into(),
        ));
    }
    Ok(MetricsConfig {
        listen,
        token: token.map(SecretString::from),
    })
}

fn rate_limits(env: &Lookup<'_>) -> Result<RateLimits, ConfigError> {
    let rate = |name: &str| -> Result<u32, ConfigError> {
        // Bursts are twice the rate, and governor counts in u32.
        u32::try_from(env.number(name)?)
            .ok()
            .filter(|n| *n <= u32::MAX / 2)
            .ok_or_else(|| ConfigError(format!("{name} is too large")))
    };
    Ok(RateLimits {
        client: rate("CARAPACE_RATE_LIMIT_CLIENT")?,
        address: rate("CARAPACE_RATE_LIMIT_ADDRESS")?,
        auth: rate("CARAPACE_RATE_LIMIT_AUTH")?,
    })
}

/// A browser origin allowed to call the API cross-origin: `http` or `https`, a host and an
/// optional port, nothing else, in the lower-case form browsers send in `Origin`. `*` is refused:
/// these are PHI endpoints, and an origin list is what a deployment knows anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigin(String);

impl CorsOrigin {
    pub fn parse(text: &str) -> Result<CorsOrigin, ConfigError> {
        let bad = || {
            ConfigError(format!(
                "CARAPACE_CORS_ORIGINS lists exact origins such as https://app.example or \
                 http://localhost:3000 (no '*', path or trailing slash); '{}' is not one",
                crate::fhir::printable(text)
            ))
        };
        let lower = text.trim().to_ascii_lowercase();
        let host = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(bad)?;
        let (name, port) = match host.rsplit_once(':') {
            // An IPv6 literal without a port ends in `]`.
            Some((name, port)) if !port.ends_with(']') => (name, Some(port)),
            _ => (host, None),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !name_ok || !port_ok {
            return Err(bad());
        }
        Ok(CorsOrigin(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Connection parameters a `CARAPACE_DATABASE_URL` may carry (what the PostgreSQL driver reads).
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Why `url` is not a PostgreSQL URL the server can use, in words that never repeat its password
/// (or anything else of it but a parameter name): checked at start-up, so a typo is not reported
/// later as a connection refused by some other host.
pub fn check_database_url(url: &str) -> Result<(), String> {
    let trimmed = url.trim();
    let Some((scheme, _)) = trimmed.split_once("://") else {
        return Err("it must begin with postgres:// or postgresql://".into());
    };
    if !matches!(
        scheme.to_ascii_lowercase().as_str(),
        "postgres" | "postgresql"
    ) {
        return Err("it must begin with postgres:// or postgresql://".into());
    }
    // The url crate's errors name the problem ("invalid port number"), never the input.
    let parsed = url::Url::parse(trimmed).map_err(|e| e.to_string())?;
    let decodes = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .is_ok()
    };
    if !decodes(parsed.username()) {
        return Err("the user name is not valid percent-encoded UTF-8".into());
    }
    if !parsed.password().is_none_or(decodes) {
        return Err(
            "the password is not valid percent-encoded UTF-8 (percent-encode \
                    reserved characters such as @ : / ? # as %40 %3A %2F %3F %23)"
                .into(),
        );
    }
    if parsed.path().trim_start_matches('/').contains('/') || !decodes(parsed.path()) {
        return Err("the path must be one database name (/DATABASE)".into());
    }
    for (key, value) in parsed.query_pairs() {
        if !URL_PARAMETERS.contains(&key.as_ref()) && !key.starts_with("options[") {
            return Err(format!(
                "unknown connection parameter '{}' (known: {})",
                crate::fhir::printable(&key),
                URL_PARAMETERS.join(", ")
            ));
        }
        let number_ok = |v: &str| v.parse::<u16>().is_ok();
        match key.as_ref() {
            "sslmode" | "ssl-mode"
                if ![
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ]
                .contains(&value.to_ascii_lowercase().as_str()) =>
            {
                return Err(
                    "sslmode is one of disable, allow, prefer, require, verify-ca, \
                            verify-full"
                        .into(),
                )
            }
            "port" if !number_ok(&value) => return Err("port is a number up to 65535".into()),
            "hostaddr" if value.parse::<std::net::IpAddr>().is_err() => {
                return Err("hostaddr is an IP address".into())
            }
            _ => {}
        }
    }
    Ok(())
}

impl Config {
    /// Read the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read the configuration through `get` (tests pass a map instead of the environment). Only
    /// variables of [`SETTINGS`] are read, and an unset one takes the default stated there.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Lookup(&get);
        let listen = env
            .text("CARAPACE_LISTEN")?
            .unwrap_or_default()
            .parse()
            .map_err(|_| ConfigError("CARAPACE_LISTEN must be ADDRESS:PORT".into()))?;
        let vault = match env.text("CARAPACE_VAULT_ADDR")? {
            None => None,
            Some(addr) => {
                let auth = match (
                    env.text("CARAPACE_VAULT_TOKEN")?,
                    env.text("CARAPACE_VAULT_ROLE_ID")?,
                    env.text("CARAPACE_VAULT_SECRET_ID")?,
                ) {
                    (Some(t), _, _) => VaultAuth::Token(SecretString::from(t)),
                    (None, Some(role_id), Some(secret)) => VaultAuth::AppRole {
                        role_id,
                        secret_id: SecretString::from(secret),
                    },
                    _ => {
                        return Err(ConfigError(
                            "CARAPACE_VAULT_ADDR needs CARAPACE_VAULT_TOKEN or CARAPACE_VAULT_ROLE_ID + CARAPACE_VAULT_SECRET_ID".into(),
                        ))
                    }
                };
                Some(VaultConfig {
                    addr,
                    auth,
                    mount: env
                        .text("CARAPACE_VAULT_TRANSIT_MOUNT")?
                        .unwrap_or_default(),
                    key_name: env.text("CARAPACE_VAULT_KEY")?.unwrap_or_default(),
                })
            }
        };
        let tls = match (
            env.text("CARAPACE_TLS_CERT")?,
            env.text("CARAPACE_TLS_KEY")?,
        ) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "CARAPACE_TLS_CERT and CARAPACE_TLS_KEY go together".into(),
                ))
            }
        };
        let max_connections = env.number("CARAPACE_DB_MAX_CONNECTIONS")?;
        let trusted_proxies = env
            .list("CARAPACE_TRUSTED_PROXIES")?
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError(
                            "CARAPACE_TRUSTED_PROXIES lists addresses or networks (10.0.0.0/8)"
                                .into(),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_permit = env.switch("CARAPACE_CONSENT_DEFAULT", "permit", "deny")?;
        let btg_roles = env
            .list("CARAPACE_BTG_ROLES")?
            .map(|r| match crate::access::Role::parse(&r) {
                Some(role @ (crate::access::Role::Practitioner | crate::access::Role::Admin)) => {
                    Ok(role)
                }
                _ => Err(ConfigError(
                    "CARAPACE_BTG_ROLES lists practitioner and/or admin (patients, analytics \
                     users and system clients never break the glass)"
                        .into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let btg_seconds = env.number("CARAPACE_BTG_SECONDS")?.clamp(1, 24 * 3600);
        let policy = crate::access::policy::PolicyConfig {
            default_permit,
            btg_roles,
            btg_duration: chrono::Duration::seconds(i64::try_from(btg_seconds).unwrap_or(3600)),
        };
        let cors_origins = env
            .list("CARAPACE_CORS_ORIGINS")?
            .map(|o| CorsOrigin::parse(&o))
            .collect::<Result<Vec<_>, _>>()?;
        let sign_in = crate::access::SignInLimits {
            decay: chrono::Duration::hours(
                i64::try_from(
                    env.number("CARAPACE_LOGIN_FAILURE_DECAY_HOURS")?
                        .clamp(1, 24 * 30),
                )
                .unwrap_or(24),
            ),
            address_failures: i32::try_from(
                env.number("CARAPACE_LOGIN_ADDRESS_FAILURES")?
                    .clamp(1, 1_000_000),
            )
            .unwrap_or(50),
            address_window: chrono::Duration::minutes(
                i64::try_from(
                    env.number("CARAPACE_LOGIN_ADDRESS_WINDOW_MINUTES")?
                        .clamp(1, 24 * 60),
                )
                .unwrap_or(60),
            ),
        };
        let enforce_profiles = env.switch("CARAPACE_ENFORCE_PROFILES", "on", "off")?;
        let referential_integrity = env.switch("CARAPACE_REFERENTIAL_INTEGRITY", "on", "off")?;
        let database_url = match env.text("CARAPACE_DATABASE_URL")? {
            None => None,
            Some(url) => {
                check_database_url(&url).map_err(|reason| {
                    ConfigError(format!(
                        "CARAPACE_DATABASE_URL is not a valid PostgreSQL URL: {reason}"
                    ))
                })?;
                Some(SecretString::from(url))
            }
        };
        let url_named = |name: &str| -> Result<Option<SecretString>, ConfigError> {
            match env.text(name)? {
                None => Ok(None),
                Some(url) => {
                    check_database_url(&url).map_err(|reason| {
                        ConfigError(format!("{name} is not a valid PostgreSQL URL: {reason}"))
                    })?;
                    Ok(Some(SecretString::from(url)))
                }
            }
        };
        let database_direct_url = url_named("CARAPACE_DATABASE_DIRECT_URL")?;
        let database_replica_url = url_named("CARAPACE_DATABASE_REPLICA_URL")?;
        let behind_pooler = env.switch("CARAPACE_DATABASE_POOLER", "transaction", "none")?;
        if database_url.is_none()
            && (behind_pooler || database_direct_url.is_some() || database_replica_url.is_some())
        {
            return Err(ConfigError(
                "CARAPACE_DATABASE_POOLER, _DIRECT_URL and _REPLICA_URL need CARAPACE_DATABASE_URL \
                 (the embedded cluster is one local database)"
                    .into(),
            ));
        }
        if behind_pooler && database_direct_url.is_none() {
            return Err(ConfigError(
                "CARAPACE_DATABASE_POOLER=transaction needs CARAPACE_DATABASE_DIRECT_URL (the \
                 migrations hold a session lock, which a transaction-mode pooler cannot keep)"
                    .into(),
            ));
        }
        let replica_wait =
            Duration::from_millis(env.number("CARAPACE_REPLICA_WAIT_MS")?.min(10_000));
        let data_dir: PathBuf = env.text("CARAPACE_DATA_DIR")?.unwrap_or_default().into();
        let export = crate::export::ExportConfig {
            dir: match env.text("CARAPACE_EXPORT_DIR")? {
                Some(dir) => dir.into(),
                None => crate::export::ExportConfig::under(&data_dir).dir,
            },
            ttl_seconds: i64::try_from(env.number("CARAPACE_EXPORT_TTL")?.clamp(1, 30 * 24 * 3600))
                .unwrap_or(3600),
            concurrent: usize::try_from(env.number("CARAPACE_EXPORT_JOBS")?.clamp(1, 64))
                .unwrap_or(2),
            per_client: i64::try_from(env.number("CARAPACE_EXPORT_PER_CLIENT")?.clamp(1, 1000))
                .unwrap_or(1),
            file_bytes: env.number("CARAPACE_EXPORT_FILE_BYTES")?.max(1 << 10),
        };
        let origins = |name: &str| -> Result<Vec<String>, ConfigError> {
            env.list(name)?
                .map(|o| {
                    crate::store::parse_origin(&o).map_err(|e| ConfigError(format!("{name}: {e}")))
                })
                .collect()
        };
        let subscriptions = crate::store::SubscriptionRules {
            allowed_origins: origins("CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS")?,
            full_payload: origins("CARAPACE_SUBSCRIPTION_FULL_PAYLOAD")?,
            retry_base: Duration::from_millis(
                env.number("CARAPACE_SUBSCRIPTION_RETRY_MS")?
                    .clamp(10, 3_600_000),
            ),
        };
        let mut retention = crate::store::RetentionConfig::under(&data_dir);
        if let Some(text) = env.text("CARAPACE_RETENTION_HISTORY")? {
            (retention.history, retention.history_default) =
                crate::store::RetentionConfig::parse_history(&text)
                    .map_err(|e| ConfigError(format!("CARAPACE_RETENTION_HISTORY: {e}")))?;
        }
        retention.audit_days = u32::try_from(env.number("CARAPACE_AUDIT_RETENTION_DAYS")?)
            .map_err(|_| ConfigError("CARAPACE_AUDIT_RETENTION_DAYS is too large".into()))?;
        if let Some(dir) = env.text("CARAPACE_AUDIT_ARCHIVE_DIR")? {
            retention.archive_dir = dir.into();
        }
        retention.interval_seconds = env.number("CARAPACE_RETENTION_INTERVAL")?;
        let deid_rules = match env.text("CARAPACE_DEID_RULES")? {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(format!("CARAPACE_DEID_RULES: cannot read {path}: {e}"))
                })?;
                Some(
                    crate::deid::Rules::parse(&text)
                        .map_err(|e| ConfigError(format!("CARAPACE_DEID_RULES: {path}: {e}")))?,
                )
            }
        };
        let backup_dir = env.text("CARAPACE_BACKUP_DIR")?.map(PathBuf::from);
        Ok(Config {
            rate_limits: rate_limits(&env)?,
            metrics: metrics_config(&env)?,
            backup_dir,
            retention,
            deid_rules,
            export,
            subscriptions,
            enforce_profiles,
            referential_integrity,
            cors_origins,
            database_url,
            behind_pooler,
            database_direct_url,
            database_replica_url,
            replica_wait,
            data_dir,
            listen,
            base_url: env
                .text("CARAPACE_BASE_URL")?
                .map(|u| u.trim_end_matches('/').to_string()),
            vault,
            tls,
            body_limit: usize::try_from(env.number("CARAPACE_BODY_LIMIT")?)
                .map_err(|_| ConfigError("CARAPACE_BODY_LIMIT is too large".into()))?,
            binary_limit: match env.number("CARAPACE_BINARY_LIMIT")? {
                n if n <= crate::store::MAX_BINARY_LIMIT => n,
                _ => {
                    return Err(ConfigError(format!(
                        "CARAPACE_BINARY_LIMIT is at most {} (R4's Attachment.size)",
                        crate::store::MAX_BINARY_LIMIT
                    )))
                }
            },
            dek_cache: DekCacheConfig {
                max_age: Duration::from_secs(env.number("CARAPACE_DEK_CACHE_MAX_AGE")?),
                max_uses: env.number("CARAPACE_DEK_CACHE_MAX_USES")?,
                ..DekCacheConfig::default()
            },
            db_max_connections: u32::try_from(max_connections.clamp(1, 1000)).unwrap_or(16),
            sessions: crate::identity::authorize::SessionPolicy {
                idle: chrono::Duration::minutes(
                    i64::try_from(
                        env.number("CARAPACE_SESSION_IDLE_MINUTES")?
                            .clamp(1, 24 * 60),
                    )
                    .unwrap_or(15),
                ),
                absolute: chrono::Duration::hours(
                    i64::try_from(env.number("CARAPACE_SESSION_MAX_HOURS")?.clamp(1, 24 * 7))
                        .unwrap_or(8),
                ),
            },
            trusted_proxies,
            policy,
            sign_in,
        })
    }

    /// The FHIR base URL clients see.
    pub fn fhir_base(&self) -> String {
        match &self.base_url {
            Some(b) => b.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}/fhir", self.listen)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn policy_settings_are_checked() {
        let c = config(&[
            ("CARAPACE_CONSENT_DEFAULT", "permit"),
            ("CARAPACE_BTG_ROLES", "practitioner,admin"),
        ])
        .unwrap();
        assert!(c.policy.default_permit && c.policy.btg_roles.len() == 2);
        assert!(!config(&[]).unwrap().policy.default_permit);
        assert!(config(&[("CARAPACE_BTG_ROLES", "patient")]).is_err());
        assert!(config(&[("CARAPACE_CONSENT_DEFAULT", "maybe")]).is_err());
    }

    #[test]
    fn profile_enforcement_is_off_unless_turned_on() {
        assert!(!config(&[]).unwrap().enforce_profiles);
        assert!(
            config(&[("CARAPACE_ENFORCE_PROFILES", "on")])
                .unwrap()
                .enforce_profiles
        );
        assert!(
            !config(&[("CARAPACE_ENFORCE_PROFILES", "off")])
                .unwrap()
                .enforce_profiles
        );
        assert!(config(&[("CARAPACE_ENFORCE_PROFILES", "yes")]).is_err());
    }

    #[test]
    fn referential_integrity_is_on_unless_turned_off() {
        assert!(config(&[]).unwrap().referential_integrity);
        assert!(
            !config(&[("CARAPACE_REFERENTIAL_INTEGRITY", "off")])
                .unwrap()
                .referential_integrity
        );
        assert!(config(&[("CARAPACE_REFERENTIAL_INTEGRITY", "no")]).is_err());
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let c = config(&[(
            "CARAPACE_CORS_ORIGINS",
            "https://App.example, http://localhost:3000,http://[::1]:8080",
        )])
        .unwrap();
        let shown: Vec<&str> = c.cors_origins.iter().map(CorsOrigin::as_str).collect();
        assert_eq!(
            shown,
            [
                "https://app.example",
                "http://localhost:3000",
                "http://[::1]:8080"
            ]
        );
        assert!(config(&[]).unwrap().cors_origins.is_empty());
        for bad in [
            "*",
            "https://app.example/",
            "https://app.example/path",
            "app.example",
            "ftp://app.example",
            "https://",
            "https://a.example:0",
            "https://a.example:99999",
            "https://user@a.example",
        ] {
            let err = config(&[("CARAPACE_CORS_ORIGINS", bad)]).err();
            assert!(
                err.is_some_and(|e| e.to_string().contains("CARAPACE_CORS_ORIGINS")),
                "{bad}"
            );
        }
    }

    #[test]
    fn rate_limits_have_defaults_and_zero_turns_them_off() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.rate_limits,
            RateLimits {
                client: 1000,
                address: 2000,
                auth: 10
            }
        );
        let off = config(&[("CARAPACE_RATE_LIMIT_CLIENT", "0")]).unwrap();
        assert_eq!(off.rate_limits.client, 0);
        assert!(config(&[("CARAPACE_RATE_LIMIT_AUTH", "-1")]).is_err());
        assert!(config(&[("CARAPACE_RATE_LIMIT_ADDRESS", "4294967295")]).is_err());
    }

    #[test]
    fn metrics_are_off_by_default_and_never_open_beyond_loopback() {
        let c = config(&[]).unwrap();
        assert!(c.metrics.listen.is_none() && c.metrics.token.is_none());
        let token = "t".repeat(32);
        assert!(config(&[("CARAPACE_METRICS_LISTEN", "127.0.0.1:9464")]).is_ok());
        assert!(config(&[("CARAPACE_METRICS_LISTEN", "0.0.0.0:9464")]).is_err());
        assert!(config(&[
            ("CARAPACE_METRICS_LISTEN", "0.0.0.0:9464"),
            ("CARAPACE_METRICS_TOKEN", &token)
        ])
        .is_ok());
        assert!(config(&[("CARAPACE_METRICS_TOKEN", "short")]).is_err());
        assert!(config(&[("CARAPACE_METRICS_LISTEN", "nowhere")]).is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let c = config(&[("CARAPACE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1 ,")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[1].contains(&"192.0.2.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(config(&[]).unwrap().trusted_proxies.is_empty());
        let err = config(&[("CARAPACE_TRUSTED_PROXIES", "proxy.example")])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("CARAPACE_TRUSTED_PROXIES"),
            "{err}"
        );
    }

    #[test]
    fn defaults_listen_on_loopback_only_and_embed_everything() {
        let c = config(&[]).unwrap();
        assert!(c.listen.ip().is_loopback());
        assert!(c.database_url.is_none() && c.vault.is_none() && c.tls.is_none());
        assert_eq!(c.fhir_base(), "http://127.0.0.1:8080/fhir");
    }

    #[test]
    fn secrets_never_print() {
        let c = config(&[
            ("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200"),
            ("CARAPACE_VAULT_TOKEN", "s.very-secret-token"),
            ("CARAPACE_DATABASE_URL", "postgres://u:db-password@h/d"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-token") && !shown.contains("db-password"));
        match c.vault.unwrap().auth {
            VaultAuth::Token(t) => assert_eq!(t.expose_secret(), "s.very-secret-token"),
            other => panic!("{other:?}"),
        }
    }

    /// `from_lookup` reads exactly the settings the table declares for it: every variable it
    /// asks for is declared, and every declared one is asked for (Vault's once an address is set).
    #[test]
    fn the_configuration_reads_exactly_the_declared_settings() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        for pairs in [
            vec![],
            vec![
                ("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200"),
                ("CARAPACE_VAULT_TOKEN", "t"),
            ],
        ] {
            let map: HashMap<&str, &str> = pairs.into_iter().collect();
            let _ = Config::from_lookup(|k| {
                asked.borrow_mut().insert(k.to_string());
                map.get(k).map(|v| v.to_string())
            });
        }
        let declared: std::collections::BTreeSet<String> = SETTINGS
            .iter()
            .filter(|s| s.read_by == ReadBy::Config)
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(asked.into_inner(), declared);
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len(), "a setting is declared twice");
    }

    /// The defaults the table states are the ones the server uses.
    #[test]
    fn stated_defaults_are_the_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./carapace-data"));
        assert_eq!(c.body_limit, 16 * 1024 * 1024);
        assert_eq!(c.dek_cache.max_age, Duration::from_secs(3600));
        assert_eq!(c.dek_cache.max_uses, 10_000_000);
        assert_eq!(c.db_max_connections, 16);
        assert_eq!(c.sessions.idle, chrono::Duration::minutes(15));
        assert_eq!(c.sessions.absolute, chrono::Duration::hours(8));
        assert_eq!(c.policy.btg_roles, [crate::access::Role::Practitioner]);
        assert_eq!(c.policy.btg_duration, chrono::Duration::seconds(3600));
        assert_eq!(c.sign_in.decay, chrono::Duration::hours(24));
        assert_eq!(c.sign_in.address_failures, 50);
        assert_eq!(c.sign_in.address_window, chrono::Duration::minutes(60));
        let v = config(&[
            ("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200"),
            ("CARAPACE_VAULT_TOKEN", "t"),
        ])
        .unwrap()
        .vault
        .unwrap();
        assert_eq!(
            (v.mount.as_str(), v.key_name.as_str()),
            ("transit", "carapace")
        );
        let table = markdown_table();
        for shown in [
            "`127.0.0.1:8080`",
            "`./carapace-data`",
            "`16777216`",
            "`10000000`",
        ] {
            assert!(table.contains(shown), "{shown}");
        }
    }

    /// Every setting the table calls secret stays out of the configuration's `Debug`.
    #[test]
    fn settings_declared_secret_never_print() {
        let values: Vec<(String, String)> = SETTINGS
            .iter()
            .filter(|s| s.read_by == ReadBy::Config)
            .filter(|s| s.secret)
            .map(|s| {
                let sentinel = format!("sentinel-{}", s.name.to_ascii_lowercase());
                let value = match s.name {
                    "CARAPACE_DATABASE_URL"
                    | "CARAPACE_DATABASE_DIRECT_URL"
                    | "CARAPACE_DATABASE_REPLICA_URL" => format!("postgres://u:{sentinel}@h/d"),
                    _ => sentinel,
                };
                (s.name.to_string(), value)
            })
            .collect();
        assert!(values.len() >= 3, "{values:?}");
        let mut pairs: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200"));
        pairs.push(("CARAPACE_VAULT_ROLE_ID", "role"));
        let shown = format!("{:?}", config(&pairs).unwrap());
        for (name, _) in &values {
            let sentinel = format!("sentinel-{}", name.to_ascii_lowercase());
            assert!(!shown.contains(&sentinel), "{name} printed");
        }
    }

    #[test]
    fn a_transaction_mode_pooler_needs_a_direct_url_and_none_of_it_fits_the_embedded_cluster() {
        let url = ("CARAPACE_DATABASE_URL", "postgres://u@pooler:6432/d");
        let pooler = ("CARAPACE_DATABASE_POOLER", "transaction");
        let direct = (
            "CARAPACE_DATABASE_DIRECT_URL",
            "postgres://u@primary:5432/d",
        );
        let replica = (
            "CARAPACE_DATABASE_REPLICA_URL",
            "postgres://u@replica:5432/d",
        );
        let err = config(&[url, pooler]).unwrap_err().to_string();
        assert!(err.contains("CARAPACE_DATABASE_DIRECT_URL"), "{err}");
        let c = config(&[url, pooler, direct, replica]).unwrap();
        assert!(c.behind_pooler && c.database_direct_url.is_some());
        assert_eq!(c.replica_wait, Duration::from_millis(50));
        for alone in [pooler, direct, replica] {
            let err = config(&[alone]).unwrap_err().to_string();
            assert!(err.contains("need CARAPACE_DATABASE_URL"), "{err}");
        }
        let err = config(&[url, ("CARAPACE_DATABASE_POOLER", "session")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("transaction or none"), "{err}");
    }

    #[test]
    fn a_malformed_database_url_is_named_without_its_password() {
        let password = "Sup3r-s3cret";
        for (url, reason) in [
            ("localhost:5432/carapace", "must begin with postgres://"),
            ("mysql://u:Sup3r-s3cret@h/d", "must begin with postgres://"),
            (
                "postgres//u:Sup3r-s3cret@h/d",
                "must begin with postgres://",
            ),
            ("postgres://u:Sup3r-s3cret@h:54x2/d", "invalid port number"),
            ("postgres://u:Sup/3r-s3cret@h/d", "invalid port number"),
            ("postgres://u:Sup3r-s3cret@h/d/extra", "one database name"),
            (
                "postgres://u:Sup3r-s3cret@h/d?sslmod=require",
                "unknown connection parameter 'sslmod'",
            ),
            (
                "postgres://u:Sup3r-s3cret@h/d?sslmode=always",
                "sslmode is one of",
            ),
            (
                "postgres://u:Sup3r-s3cret@h/d?port=99999",
                "port is a number",
            ),
        ] {
            let err = config(&[("CARAPACE_DATABASE_URL", url)])
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("CARAPACE_DATABASE_URL is not a valid PostgreSQL URL")
                    && err.contains(reason),
                "{url}: {err}"
            );
            assert!(
                !err.contains(password) && !err.contains("3r-s3"),
                "{url}: {err}"
            );
        }
        for good in [
            "postgres://carapace@127.0.0.1:5432/carapace_test",
            "postgresql://u:p%40ss@db.example/carapace?sslmode=verify-full&application_name=x",
            "postgres:///carapace?host=/run/postgresql",
            "postgres://u:p@ss@db.example/carapace",
        ] {
            assert!(config(&[("CARAPACE_DATABASE_URL", good)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn vault_without_credentials_is_an_error() {
        assert!(config(&[("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200")]).is_err());
        assert!(config(&[("CARAPACE_TLS_CERT", "c.pem")]).is_err());
        assert!(config(&[("CARAPACE_LISTEN", "nonsense")]).is_err());
    }
}
