//! The one table of settings: every environment variable Carapace reads, with its default and
//! meaning. [`super::Config::from_lookup`] reads through it, `carapace-server --help` prints it and
//! the README's configuration table is generated from it, so none can lack a variable.

use super::ConfigError;

/// One environment variable: the single definition from which [`Config::from_lookup`] reads,
/// `carapace-server --help` is printed and the README's configuration table is generated
/// (`carapace-server --config-table`), so none of them can name a variable the others lack.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    /// What an unset (or empty) variable means.
    pub unset: Unset,
    /// One or more sentences, Markdown (backticks only).
    pub meaning: &'static str,
    /// Never printed or logged: it holds a credential (or a URL that may carry one).
    pub secret: bool,
    pub read_by: ReadBy,
}

/// The value an unset variable takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    /// This value, read exactly as if it had been set.
    Value(&'static str),
    /// Nothing is read; the words say what happens instead.
    Means(&'static str),
    /// Nothing: optional, or needed only with another variable.
    Nothing,
}

/// Which process reads a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBy {
    /// [`Config::from_lookup`]: the server and the console alike.
    Config,
    /// The log filter of both processes.
    Log,
    /// The console alone (its operator sign-in and log file).
    Console,
}

impl Setting {
    /// The default as the README's table shows it.
    pub fn shown_default(&self) -> String {
        match self.unset {
            Unset::Value(v) => format!("`{v}`"),
            Unset::Means(words) => format!("*({words})*"),
            Unset::Nothing => "—".into(),
        }
    }
}

const fn setting(name: &'static str, unset: Unset, meaning: &'static str) -> Setting {
    Setting {
        name,
        unset,
        meaning,
        secret: false,
        read_by: ReadBy::Config,
    }
}

const fn secret(mut s: Setting) -> Setting {
    s.secret = true;
    s
}

const fn console(mut s: Setting) -> Setting {
    s.read_by = ReadBy::Console;
    s
}

use Unset::{Means, Nothing, Value};

/// Every environment variable Carapace reads, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    setting(
        "CARAPACE_LISTEN",
        Value("127.0.0.1:8080"),
        "Address and port to listen on. Nothing listens beyond loopback unless you set this.",
    ),
    setting(
        "CARAPACE_BASE_URL",
        Means("http(s)://LISTEN/fhir"),
        "Public FHIR base used in `Location` headers and links.",
    ),
    setting(
        "CARAPACE_DATA_DIR",
        Value("./carapace-data"),
        "Embedded PostgreSQL cluster and development key file; the server and the console must \
         be given the same one (a relative path is relative to the working directory).",
    ),
    setting(
        "CARAPACE_BACKUP_DIR",
        Means("`backup` under `CARAPACE_DATA_DIR`"),
        "The embedded cluster's pgBackRest repository (encrypted; WAL is archived into it \
         continuously) and its passphrase wrapped by the key provider. Put it on another disk \
         or mount: under the data directory it is lost with it. Not used with \
         `CARAPACE_DATABASE_URL` (that database's operator backs it up).",
    ),
    secret(setting(
        "CARAPACE_DATABASE_URL",
        Means("embedded"),
        "PostgreSQL URL for production (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`, checked at \
         start-up); unset = embedded private cluster (unix socket only). Its user runs the \
         migrations and owns the tables; the server then works as `carapace_app` and the console \
         as `carapace_console` (`SET ROLE`; created by the migrations when the user may create \
         roles, else by a DBA beforehand — see ARCHITECTURE.md).",
    )),
    setting(
        "CARAPACE_DATABASE_POOLER",
        Value("none"),
        "`transaction` when `CARAPACE_DATABASE_URL` goes through a pooler in transaction mode \
         (PgBouncer `pool_mode = transaction`, with `server_reset_query = DISCARD ALL` and \
         `server_reset_query_always = 1`): every transaction then sets its role and reach with \
         `SET LOCAL`, no statement runs outside a transaction, no prepared statement is reused. \
         Needs `CARAPACE_DATABASE_DIRECT_URL`.",
    ),
    secret(setting(
        "CARAPACE_DATABASE_DIRECT_URL",
        Means("CARAPACE_DATABASE_URL"),
        "The primary database directly, not through a pooler (same user): the migrations run \
         over it (they hold a session lock).",
    )),
    secret(setting(
        "CARAPACE_DATABASE_REPLICA_URL",
        Means("no replica"),
        "A streaming replica of the primary (same user; through the same kind of pooler, if \
         any): searches run on it once it has replayed the primary's WAL as of the search's start \
         (read-your-writes), else on the primary.",
    )),
    setting(
        "CARAPACE_REPLICA_WAIT_MS",
        Value("50"),
        "How long a search waits for the replica to catch up before it runs on the primary.",
    ),
    setting(
        "CARAPACE_VAULT_ADDR",
        Means("file keys"),
        "Vault or OpenBao address; unset = development file key provider.",
    ),
    secret(setting(
        "CARAPACE_VAULT_TOKEN",
        Nothing,
        "Vault token (renewed by the server); or AppRole, the next two.",
    )),
    setting(
        "CARAPACE_VAULT_ROLE_ID",
        Nothing,
        "AppRole role id (mount `approle`), with `CARAPACE_VAULT_SECRET_ID`; the server logs in \
         again when renewal fails.",
    ),
    secret(setting(
        "CARAPACE_VAULT_SECRET_ID",
        Nothing,
        "AppRole secret id.",
    )),
    setting(
        "CARAPACE_VAULT_TRANSIT_MOUNT",
        Value("transit"),
        "Transit engine mount.",
    ),
    setting(
        "CARAPACE_VAULT_KEY",
        Value("carapace"),
        "Transit key name (created if missing).",
    ),
    setting(
        "CARAPACE_TLS_CERT",
        Nothing,
        "PEM certificate chain, with `CARAPACE_TLS_KEY`: serve HTTPS (rustls, TLS 1.2/1.3, h2 + \
         http/1.1).",
    ),
    setting(
        "CARAPACE_TLS_KEY",
        Nothing,
        "PEM private key of `CARAPACE_TLS_CERT`.",
    ),
    setting(
        "CARAPACE_BODY_LIMIT",
        Value("16777216"),
        "Request body limit in bytes; larger bodies get 413.",
    ),
    setting(
        "CARAPACE_BINARY_LIMIT",
        Value("1073741824"),
        "Largest Binary content in bytes (raw uploads; at most 2147483647, R4's `Attachment.size`); larger get 413.",
    ),
    setting(
        "CARAPACE_DEK_CACHE_MAX_AGE",
        Value("3600"),
        "Seconds an unwrapped data key stays in memory.",
    ),
    setting(
        "CARAPACE_DEK_CACHE_MAX_USES",
        Value("10000000"),
        "Uses of a cached data key before it is unwrapped again.",
    ),
    setting(
        "CARAPACE_DB_MAX_CONNECTIONS",
        Value("16"),
        "Database pool size (1–1000).",
    ),
    setting(
        "CARAPACE_SESSION_IDLE_MINUTES",
        Value("15"),
        "A browser sign-in (and the full-screen console's) ends after this long unused.",
    ),
    setting(
        "CARAPACE_SESSION_MAX_HOURS",
        Value("8"),
        "A browser sign-in ends this long after it began, however busy.",
    ),
    setting(
        "CARAPACE_CONSENT_DEFAULT",
        Value("deny"),
        "`deny`: a practitioner sees a patient's record only under an active privacy Consent that \
         permits them (or their organization or care team). `permit`: records without any \
         applying consent are open to practitioners (denies still apply).",
    ),
    setting(
        "CARAPACE_BTG_ROLES",
        Value("practitioner"),
        "Roles that may break the glass: `practitioner`, and optionally `admin`. Patients, \
         analytics users and system clients never can.",
    ),
    setting(
        "CARAPACE_BTG_SECONDS",
        Value("3600"),
        "How long one break-the-glass assertion lasts (at most a day).",
    ),
    setting(
        "CARAPACE_TRUSTED_PROXIES",
        Means("none"),
        "Comma-separated addresses or networks (`10.0.0.0/8`) of reverse proxies whose \
         `X-Forwarded-For` is believed; the audit trail records the nearest address that is not \
         one of them. Otherwise it records the connection's peer, whatever the client sends.",
    ),
    setting(
        "CARAPACE_RATE_LIMIT_CLIENT",
        Value("1000"),
        "Requests per second each signed-in caller (a token's client and user) may make, with \
         bursts of twice that; more get 429 with `Retry-After`. Counted once the token is \
         verified, for every FHIR request (Binary uploads and downloads too). `0` turns it off.",
    ),
    setting(
        "CARAPACE_RATE_LIMIT_ADDRESS",
        Value("2000"),
        "Requests per second from one client address (as the audit trail records it, after \
         `CARAPACE_TRUSTED_PROXIES`; IPv6 by /64), bursts of twice that; `/livez`, `/readyz` \
         and `/metrics` are not counted. `0` turns it off.",
    ),
    setting(
        "CARAPACE_RATE_LIMIT_AUTH",
        Value("10"),
        "Requests per second from one client address to `/auth/*` (tokens, sign-in pages), \
         bursts of twice that, on top of the address limit. `0` turns it off.",
    ),
    setting(
        "CARAPACE_METRICS_LISTEN",
        Means("off"),
        "Address and port of a second listener that serves only `/metrics` (Prometheus), such \
         as `127.0.0.1:9464`. Beyond loopback it needs `CARAPACE_METRICS_TOKEN`.",
    ),
    secret(setting(
        "CARAPACE_METRICS_TOKEN",
        Means("no token"),
        "Bearer token a scraper sends for `/metrics` (at least 24 characters). When set, \
         `/metrics` answers on the main listener too, and on both only with this token; unset, \
         the main listener answers 404 there.",
    )),
    setting(
        "CARAPACE_CORS_ORIGINS",
        Means("none"),
        "Comma-separated browser origins (`https://app.example`, `http://localhost:3000`) whose \
         SMART apps may call `/fhir` and `/auth/token` from a web page (CORS). Exact origins only; \
         `*` is refused at start-up. Preflights need no token; other origins get no \
         `Access-Control-*` header.",
    ),
    setting(
        "CARAPACE_LOGIN_FAILURE_DECAY_HOURS",
        Value("24"),
        "A user's sign-in failures stop counting once the last one is this old.",
    ),
    setting(
        "CARAPACE_LOGIN_ADDRESS_FAILURES",
        Value("50"),
        "Sign-in failures one client address (IPv4, or IPv6 /64) may have per window, across \
         usernames; then it is refused until the window ends.",
    ),
    setting(
        "CARAPACE_LOGIN_ADDRESS_WINDOW_MINUTES",
        Value("60"),
        "The per-address window.",
    ),
    setting(
        "CARAPACE_EXPORT_DIR",
        Means("`exports` under `CARAPACE_DATA_DIR`"),
        "Where Bulk Data export files are written (each sealed under its job's data key; a copy \
         of the directory reveals nothing).",
    ),
    setting(
        "CARAPACE_EXPORT_TTL",
        Value("3600"),
        "Seconds a finished export's files stay downloadable; the server then removes them and \
         their key (within 5 seconds).",
    ),
    setting(
        "CARAPACE_EXPORT_JOBS",
        Value("2"),
        "Export jobs this server runs at once; more wait in the queue.",
    ),
    setting(
        "CARAPACE_EXPORT_PER_CLIENT",
        Value("1"),
        "Export jobs one client (token subject and client id) may have queued or running at \
         once; a further kick-off gets 429.",
    ),
    setting(
        "CARAPACE_EXPORT_FILE_BYTES",
        Value("67108864"),
        "An export's NDJSON file of one type is split into another file past this many bytes.",
    ),
    setting(
        "CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS",
        Means("none"),
        "Comma-separated origins (`http://127.0.0.1:8099`, `https://hooks.internal`) that \
         Subscription rest-hooks may reach although plain `http` or at a loopback, private or \
         link-local address. Every other endpoint must be `https` at a public address.",
    ),
    setting(
        "CARAPACE_SUBSCRIPTION_FULL_PAYLOAD",
        Means("none: pings only"),
        "Comma-separated endpoint origins that may receive whole resources (a Subscription's \
         `channel.payload` `application/fhir+json`); a Subscription asking for them elsewhere \
         is refused (422).",
    ),
    setting(
        "CARAPACE_SUBSCRIPTION_RETRY_MS",
        Value("10000"),
        "Milliseconds before a failed Subscription notification is retried; each further retry \
         waits twice as long (at most an hour).",
    ),
    setting(
        "CARAPACE_RETENTION_HISTORY",
        Means("every version is kept"),
        "How long non-current versions are kept: comma-separated `Type=days`, `*=days` for \
         every other type (`Observation=730,*=3650`). A version replaced more than that many \
         days ago is purged (current versions never are); patients under a legal hold are \
         exempt.",
    ),
    setting(
        "CARAPACE_AUDIT_RETENTION_DAYS",
        Value("2555"),
        "Days audit events stay in the database; older ones are archived (sealed, with their \
         chain anchors) and then removed, except those of patients under a legal hold. `0` keeps \
         them for ever.",
    ),
    setting(
        "CARAPACE_AUDIT_ARCHIVE_DIR",
        Means("`audit-archive` under `CARAPACE_DATA_DIR`"),
        "Where archived audit segments are written (keep a copy off the machine: they are the \
         only record of the events they hold).",
    ),
    setting(
        "CARAPACE_RETENTION_INTERVAL",
        Value("3600"),
        "Seconds between the server's retention runs (history purge, audit archive, pending key \
         destructions). `0`: the server never purges; `carapace-console retention run` does.",
    ),
    setting(
        "CARAPACE_REFERENTIAL_INTEGRITY",
        Value("on"),
        "`on`: a create, update, patch or transaction whose relative reference (`Patient/123`, or \
         an absolute one under `CARAPACE_BASE_URL`) names a resource of this server that does not \
         exist or is deleted (or a version that does not exist) is refused with 400 naming the \
         reference's path. `off`: references are stored unchecked (for loading data out of \
         order).",
    ),
    setting(
        "CARAPACE_DEID_RULES",
        Means("HIPAA Safe Harbor, `shared/deid-safe-harbor.json`"),
        "A JSON file of de-identification rules for what `analytics` callers receive (the \
         shipped Safe Harbor file shows the form: `path` `type:T` or `T.element`, `method` keep, \
         redact, generalise, pseudonymise, dateshift or perturb). Checked at start-up; a rule \
         set not seen before is recorded in the audit trail.",
    ),
    setting(
        "CARAPACE_ENFORCE_PROFILES",
        Value("off"),
        "`on`: a write whose `meta.profile` names a StructureDefinition stored here that the \
         resource fails is refused with 400 (profiles not stored are ignored on writes). `off`: \
         profiles are checked only when `$validate` is asked.",
    ),
    Setting {
        read_by: ReadBy::Log,
        ..setting(
            "RUST_LOG",
            Means("info"),
            "Log filter. Logs never carry PHI: resource types, ids and versions only.",
        )
    },
    console(setting(
        "CARAPACE_OPERATOR",
        Nothing,
        "Console: the operator's username for sign-in (asked for on a terminal).",
    )),
    console(secret(setting(
        "CARAPACE_OPERATOR_PASSWORD",
        Nothing,
        "Console: the operator's password (asked for on a terminal).",
    ))),
    console(secret(setting(
        "CARAPACE_OPERATOR_TOTP",
        Nothing,
        "Console: the operator's TOTP or recovery code (asked for on a terminal).",
    ))),
    console(secret(setting(
        "CARAPACE_ADMIN_TOKEN",
        Nothing,
        "Console, for automation: an administrator access token (`carapace-console login` prints \
         one) instead of the three above.",
    ))),
    console(setting(
        "CARAPACE_CONSOLE_LOG",
        Value("carapace-console.log"),
        "Console: the full-screen console's log file (created 0600).",
    )),
];

/// The declared setting called `name`.
pub fn setting_named(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The README's configuration table, generated from [`SETTINGS`] (`carapace-server
/// --config-table` prints it; the test suite compares it with README.md).
pub fn markdown_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        let secret = if s.secret {
            " Secret: never printed."
        } else {
            ""
        };
        out.push_str(&format!(
            "| `{}` | {} | {}{secret} |\n",
            s.name,
            s.shown_default(),
            s.meaning
        ));
    }
    out
}

/// Reads settings through a lookup, only those declared in [`SETTINGS`], with their defaults.
pub(super) struct Lookup<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Lookup<'_> {
    /// The variable's value (untrimmed, empty counts as unset), or its declared default.
    pub(super) fn text(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let declared = setting_named(name)
            .filter(|s| s.read_by == ReadBy::Config)
            .ok_or_else(|| ConfigError(format!("{name} is read but not declared in SETTINGS")))?;
        Ok(match (self.0)(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => Some(v),
            None => match declared.unset {
                Unset::Value(v) => Some(v.to_string()),
                Unset::Means(_) | Unset::Nothing => None,
            },
        })
    }

    pub(super) fn number(&self, name: &str) -> Result<u64, ConfigError> {
        self.text(name)?
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be a whole number")))
    }

    /// `true` for `yes`, `false` for `no`.
    pub(super) fn switch(&self, name: &str, yes: &str, no: &str) -> Result<bool, ConfigError> {
        match self.text(name)?.as_deref().map(str::trim) {
            Some(v) if v == yes => Ok(true),
            Some(v) if v == no => Ok(false),
            _ => Err(ConfigError(format!("{name} is {yes} or {no}"))),
        }
    }

    /// The comma-separated items of the value, trimmed, empty ones left out.
    pub(super) fn list(&self, name: &str) -> Result<impl Iterator<Item = String>, ConfigError> {
        let text = self.text(name)?.unwrap_or_default();
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter())
    }
}
