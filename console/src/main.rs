//! carapace-console: the administrator's tool. Scriptable subcommands over the same core the server
//! uses (it connects to PostgreSQL and the key provider directly, never through the HTTP API).
//!
//! Every command but `bootstrap-admin` authenticates the operator first — an administrator's
//! username, password and TOTP code, or a short-lived admin token from `carapace-console login` —
//! and every administrative action is audited with that operator as the agent.

use anyhow::{bail, Context};
use carapace_console::data_dir;
use carapace_console::lifecycle;
use carapace_console::operator::sign_in;
use carapace_console::tui;
use carapace_core::access::{AccessContext, Role, Scope};
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::export::{ExportError, Exporter};
use carapace_core::identity::users::{self, Enrollment, NewUser};
use carapace_core::identity::{admin, tokens};
use carapace_core::store::OperatorCounts;
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};

mod audit_archive;
mod backup;

/// Carapace administrator console. Configuration comes from the same CARAPACE_* environment
/// variables as the server (see `carapace-server --help`). Without CARAPACE_DATABASE_URL or a
/// Vault it works on the server's data directory (CARAPACE_DATA_DIR, default ./carapace-data) and
/// refuses one the server has not made.
///
/// Operator sign-in: set CARAPACE_ADMIN_TOKEN to a token from `carapace-console login`, or
/// CARAPACE_OPERATOR, CARAPACE_OPERATOR_PASSWORD and CARAPACE_OPERATOR_TOTP (a TOTP or recovery
/// code); on a terminal, missing values are asked for once the console has started (leave the
/// TOTP unset: a code set before a build may expire).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Without a subcommand the full-screen console opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create the first administrator (refused once one exists). Prints the TOTP enrolment URI and
    /// recovery codes once.
    BootstrapAdmin {
        #[arg(long)]
        username: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Sign in as an administrator and print a short-lived access token (5 minutes) for automation
    /// (`CARAPACE_ADMIN_TOKEN`) and for trying the FHIR API.
    Login {
        /// Scopes of the token; `user/` scopes (default `user/*.cruds`).
        #[arg(long, default_value = "user/*.cruds")]
        scope: Vec<String>,
    },
    /// Connect to the database and key provider and print their status.
    Status,
    /// People: create, list, lock, unlock, reset MFA, change role.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Active access tokens (sessions).
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// SMART Backend Services clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// SMART EHR launch contexts.
    Launch {
        #[command(subcommand)]
        command: LaunchCommand,
    },
    /// Data-key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Break-the-glass grants: the review queue.
    Btg {
        #[command(subcommand)]
        command: BtgCommand,
    },
    /// Bulk Data export jobs: list them, cancel one.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// A patient's record as a whole: erase it (crypto-shredding).
    Patient {
        #[command(subcommand)]
        command: lifecycle::PatientCommand,
    },
    /// Legal holds: exempt a patient's data and audit events from purges and erasure.
    Hold {
        #[command(subcommand)]
        command: lifecycle::HoldCommand,
    },
    /// Retention: purge what is past its time (CARAPACE_RETENTION_HISTORY,
    /// CARAPACE_AUDIT_RETENTION_DAYS).
    Retention {
        #[command(subcommand)]
        command: lifecycle::RetentionCommand,
    },
    /// Hard-delete every non-current version of one resource (`Type/id`), for minimisation; the
    /// current version stays. Refused under a legal hold; audited.
    Expunge { reference: String },
    /// Back up the embedded cluster into its encrypted pgBackRest repository
    /// (CARAPACE_BACKUP_DIR): full, or `--incremental`; `--list` shows the backups. Audited.
    Backup {
        /// Only what changed since the last backup (pgBackRest takes a full one if none exists).
        #[arg(long, conflicts_with = "list")]
        incremental: bool,
        /// List the backups in the repository instead of taking one.
        #[arg(long)]
        list: bool,
    },
    /// Restore the embedded cluster as it was at a time (point-in-time recovery) into a fresh
    /// data directory, with the key material it needs; then start carapace-server on it. Needs
    /// the repository and key provider, not a running database; the restore is audited in the
    /// restored database, under the operator signed in there.
    Restore {
        /// The time to restore to, RFC 3339 (`2026-12-02T01:30:00Z`).
        #[arg(long, value_name = "TIME")]
        to: String,
        /// The new data directory (missing or empty).
        #[arg(long, value_name = "DIR")]
        into: std::path::PathBuf,
    },
}

/// Bulk Data `$export` jobs (not the audit trail's CSV export, which is the full-screen console's).
#[derive(Subcommand)]
enum ExportCommand {
    /// List export jobs, newest first (at most 500): who asked, level, state, size, expiry.
    List,
    /// Cancel a job by its id (audited): the server stops it and removes its files.
    Cancel {
        /// The job's id, as `export list` prints it.
        id: String,
    },
}

#[derive(Subcommand)]
enum BtgCommand {
    /// List grants waiting for review (newest first), with who, why, when and how many accesses.
    List {
        /// Reviewed grants too.
        #[arg(long)]
        all: bool,
    },
    /// Mark a grant reviewed, with a note (audited).
    Review {
        id: i64,
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain of every AuditEvent and report the first one edited, deleted,
    /// reordered or inserted (exit status 1 if the chain is broken). Prints the head (`SEQ:LINK`)
    /// to keep elsewhere.
    Verify {
        /// A head printed by an earlier run: also prove that nothing up to it was cut from the end.
        #[arg(long, value_name = "SEQ:LINK")]
        anchor: Option<String>,
        /// Check this archive file instead (from `audit archive`): its digest is recorded, every
        /// event's tag and link hold, and its end is where the next segment starts.
        #[arg(long, value_name = "FILE")]
        archive: Option<std::path::PathBuf>,
    },
    /// Archive the events older than CARAPACE_AUDIT_RETENTION_DAYS to sealed files in
    /// CARAPACE_AUDIT_ARCHIVE_DIR, then remove them from the database (all but those of patients
    /// under a legal hold); `audit verify` then proves the rest, `--archive` each file.
    Archive {
        /// Count what would be archived; write and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints the TOTP enrolment URI (admins, practitioners) and recovery codes once.
    Create {
        #[arg(long)]
        username: String,
        /// admin, practitioner, patient or analytics.
        #[arg(long)]
        role: String,
        /// The Patient resource id a patient user is linked to.
        #[arg(long)]
        patient: Option<String>,
        /// The Practitioner resource id a practitioner user is linked to.
        #[arg(long)]
        practitioner: Option<String>,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    List,
    /// Lock an account until an administrator unlocks it; revokes its tokens.
    Lock {
        username: String,
    },
    Unlock {
        username: String,
    },
    /// New TOTP seed and recovery codes; the old ones stop working.
    ResetMfa {
        username: String,
    },
    /// Change a user's role; revokes their tokens.
    SetRole {
        username: String,
        role: String,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Active tokens, optionally of one user or client.
    List { subject: Option<String> },
    /// Revoke all tokens of a user or client, or one token by its id (from `session list`).
    Revoke { target: String },
}

#[derive(Subcommand)]
enum LaunchCommand {
    /// Make a single-use launch id (valid 5 minutes) for an app's `/auth/authorize?launch=…`;
    /// prints it. Audited.
    Create {
        /// The Patient's id.
        #[arg(long)]
        patient: String,
        /// An Encounter's id, carried to the app as `encounter`.
        #[arg(long)]
        encounter: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a backend client with its public JWKS; prints the client_id.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        jwks_file: std::path::PathBuf,
        /// system/ scopes the client may request, e.g. system/*.rs (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// May call /auth/introspect (RFC 7662): for a resource server that checks the tokens
        /// presented to it. Introspection tells who holds a token; grant it sparingly.
        #[arg(long)]
        introspect: bool,
    },
    /// Register a user-facing app (authorization code + PKCE); prints the client_id.
    RegisterApp {
        #[arg(long)]
        name: String,
        /// Exact redirect URI (repeatable); https, or http on loopback.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// patient/ or user/ scopes, launch/patient, offline_access (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List,
    /// Disable a client and revoke its tokens.
    Disable {
        client_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the key-encryption key and rewrap every stored data key under the new version, online.
    Rotate,
    /// Show how many data keys are wrapped under each key version.
    Versions,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before anything is created (the log file, a cluster, a key): is this the server's data?
    let config = Config::from_env()?;
    data_dir::check(&config)?;
    if cli.command.is_none() {
        // The full-screen console owns the terminal: logs go to a file.
        let path =
            std::env::var("CARAPACE_CONSOLE_LOG").unwrap_or_else(|_| "carapace-console.log".into());
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        // The operator's log: readable by them only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .with_context(|| format!("opening the log file {path}"))?;
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return runtime.block_on(async {
            let core = Core::open_console(&config).await.context("connecting")?;
            let result = tui::run(&core, config.sessions).await;
            core.shutdown().await;
            result
        });
    }
    // The console's output is for the operator; logs go to stderr and stay quiet by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    if let Some(Command::Restore { to, into }) = &cli.command {
        // No database needs to run for a restore: it signs in against the restored one.
        return backup::restore(&config, to, into).await;
    }
    let core = Core::open_console(&config).await.context("connecting")?;
    let Some(command) = cli.command else {
        return Ok(());
    };
    let result = dispatch(&core, &config, command).await;
    core.shutdown().await;
    result
}

async fn dispatch(core: &Core, config: &Config, command: Command) -> anyhow::Result<()> {
    if let Command::BootstrapAdmin { username, .. } = &command {
        let password = read_secret_line("password")?;
        let enrollment = admin::bootstrap_admin(&core.store, username, &password).await?;
        println!("administrator '{username}' created");
        print_enrollment(&enrollment);
        return Ok(());
    }
    let ctx = operator(core).await?;
    match command {
        Command::BootstrapAdmin { .. } => Ok(()),
        Command::Login { scope } => login(core, &ctx, &scope).await,
        Command::Status => status(core).await,
        Command::User { command } => user(core, &ctx, command).await,
        Command::Session { command } => session(core, &ctx, command).await,
        Command::Client { command } => client(core, &ctx, command).await,
        Command::Launch {
            command: LaunchCommand::Create { patient, encounter },
        } => {
            let launch = carapace_core::identity::launch::create(
                &core.store,
                &ctx,
                &patient,
                encounter.as_deref(),
            )
            .await?;
            println!("{launch}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Versions,
        } => versions_table(core).await,
        Command::Keys {
            command: KeysCommand::Rotate,
        } => rotate(core, &ctx).await,
        Command::Audit {
            command:
                AuditCommand::Verify {
                    anchor,
                    archive: Some(file),
                },
        } => audit_archive::verify(core, &ctx, &file, anchor.as_deref()).await,
        Command::Audit {
            command: AuditCommand::Verify { anchor, .. },
        } => audit_verify(core, &ctx, anchor.as_deref()).await,
        Command::Audit {
            command: AuditCommand::Archive { dry_run },
        } => audit_archive::archive(core, &ctx, dry_run).await,
        Command::Btg {
            command: BtgCommand::List { all },
        } => btg_list(core, &ctx, all).await,
        Command::Btg {
            command: BtgCommand::Review { id, note },
        } => {
            if core.store.review_btg(&ctx, id, &note).await? {
                println!("grant {id} reviewed");
                Ok(())
            } else {
                bail!("no unreviewed break-the-glass grant {id}")
            }
        }
        Command::Patient { command } => lifecycle::patient(&core.store, &ctx, command).await,
        Command::Hold { command } => lifecycle::hold(&core.store, &ctx, command).await,
        Command::Retention { command } => {
            lifecycle::retention(&core.store, &ctx, &config.retention, command).await
        }
        Command::Expunge { reference } => lifecycle::expunge(&core.store, &ctx, &reference).await,
        Command::Backup { list: true, .. } => backup::list(core, config, &ctx).await,
        Command::Backup { incremental, .. } => {
            backup::backup(core, config, &ctx, incremental).await
        }
        Command::Restore { .. } => bail!("a restore runs before the console opens a database"),
        Command::Export {
            command: ExportCommand::List,
        } => export_list(core, &ctx).await,
        Command::Export {
            command: ExportCommand::Cancel { id },
        } => match Exporter::cancel_as_operator(&core.store, &ctx, &id).await {
            Ok(()) => {
                println!("export {id} cancelled; the server stops it and removes its files");
                Ok(())
            }
            Err(ExportError::NotFound) => {
                bail!(
                    "no export job {} to cancel (unknown, or already cancelled)",
                    shown(&id)
                )
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Read one line from standard input (no echo on a terminal).
fn read_secret_line(what: &str) -> anyhow::Result<String> {
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        bail!("no {what} given on standard input");
    }
    Ok(line)
}

/// `env`'s value, or asked for on the terminal. Called only once the core is open: a TOTP code
/// typed before the console has started (a build, a cluster starting) could expire first.
fn prompt(what: &str, env: &str, secret: bool) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("operator sign-in needs CARAPACE_ADMIN_TOKEN, or {env} (with the other CARAPACE_OPERATOR* variables)");
    }
    if secret {
        return Ok(rpassword::prompt_password(format!("{what}: "))?);
    }
    // On standard error: standard output is the command's answer (`TOKEN=$(carapace-console
    // login)` captures the token, not the prompt).
    eprint!("{what}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Authenticate the operator: an admin token, or username + password + TOTP.
pub(crate) async fn operator(core: &Core) -> anyhow::Result<AccessContext> {
    if let Ok(token) = std::env::var("CARAPACE_ADMIN_TOKEN") {
        let info = tokens::lookup(core.store.pool(), core.store.now(), token.trim())
            .await?
            .filter(|i| i.role == Role::Admin)
            .context("CARAPACE_ADMIN_TOKEN is not an active administrator token")?;
        return Ok(AccessContext::operator(&info.subject));
    }
    let username = prompt("username", "CARAPACE_OPERATOR", false)?;
    let password = prompt("password", "CARAPACE_OPERATOR_PASSWORD", true)?;
    let code = prompt("TOTP or recovery code", "CARAPACE_OPERATOR_TOTP", false)?;
    match sign_in(core, &username, &password, &code).await? {
        Some(ctx) => Ok(ctx),
        None if std::env::var("CARAPACE_OPERATOR_TOTP").is_ok_and(|v| !v.is_empty()) => bail!(
            "{} (the code came from CARAPACE_OPERATOR_TOTP and a TOTP code lasts 30 seconds: \
             leave it unset to be asked for it once the console has started)",
            users::LoginError::Invalid
        ),
        None => bail!("{}", users::LoginError::Invalid),
    }
}

/// Text from users and the database in a listing: letters and spaces as they are ("Ward EHR"),
/// control characters (escapes, newlines) and characters that reorder the line neutralised.
fn shown(text: &str) -> String {
    tui::inert(text, 64)
}

fn print_enrollment(e: &Enrollment) {
    if let Some(uri) = &e.totp_uri {
        println!("TOTP enrolment (add to an authenticator app; shown once):\n  {uri}");
    }
    println!("recovery codes (each works once; shown once):");
    for c in &e.recovery_codes {
        println!("  {c}");
    }
}

async fn login(core: &Core, ctx: &AccessContext, scopes: &[String]) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for s in scopes.iter().flat_map(|s| s.split_whitespace()) {
        let scope = Scope::parse(s)?;
        if !carapace_core::access::role_allows(Role::Admin, scope.context) {
            bail!("an administrator token takes user/ or system/ scopes");
        }
        parsed.push(scope);
    }
    let token = tokens::issue(
        core.store.pool(),
        core.store.now(),
        &ctx.principal,
        Role::Admin,
        &parsed,
        None,
    )
    .await?;
    core.store.record_admin(ctx, "token-issue", true).await?;
    println!("{}", token.access_token);
    eprintln!("expires in {} s; scopes: {}", token.expires_in, token.scope);
    Ok(())
}

async fn status(core: &Core) -> anyhow::Result<()> {
    let (resources, versions) = core.store.resource_counts().await?;
    let OperatorCounts {
        audit_events: audit,
        users: people,
        clients,
    } = core.store.operator_counts().await?;
    println!(
        "database:      connected{}",
        if core.cluster.is_some() {
            " (embedded cluster)"
        } else {
            ""
        }
    );
    println!("key provider:  {}", core.keys.describe());
    println!("resources:     {resources} current, {versions} versions");
    println!("audit events:  {audit}");
    println!("users:         {people}; backend clients: {clients}");
    versions_table(core).await
}

async fn versions_table(core: &Core) -> anyhow::Result<()> {
    println!("data keys by key version:");
    for (version, count) in core.store.key_versions().await? {
        println!("  v{version}: {count}");
    }
    Ok(())
}

fn parse_role(role: &str) -> anyhow::Result<Role> {
    Role::parse(role)
        .with_context(|| format!("unknown role '{role}' (admin, practitioner, patient, analytics)"))
}

async fn user(core: &Core, ctx: &AccessContext, command: UserCommand) -> anyhow::Result<()> {
    let store = &core.store;
    let (what, result): (String, anyhow::Result<()>) = match command {
        UserCommand::Create {
            username,
            role,
            patient,
            practitioner,
            ..
        } => {
            let role = parse_role(&role)?;
            let password = read_secret_line("password")?;
            let new = NewUser {
                username: &username,
                role,
                patient_id: patient.as_deref(),
                practitioner_id: practitioner.as_deref(),
                password: &password,
            };
            let r = admin::create_user(store, ctx, &new).await.map(|e| {
                println!("user '{username}' created ({})", role.as_str());
                print_enrollment(&e);
            });
            (format!("user-create:{username}"), r.map_err(Into::into))
        }
        UserCommand::List => {
            println!(
                "{:<24} {:<13} {:<8} {:<10} link",
                "username", "role", "mfa", "state"
            );
            for u in users::list(store).await? {
                let state = if u.admin_locked {
                    "locked"
                } else if u.locked_until.is_some_and(|t| t > store.now()) {
                    "back-off"
                } else {
                    "active"
                };
                let link = u.link().unwrap_or_default();
                println!(
                    "{:<24} {:<13} {:<8} {:<10} {link}",
                    shown(&u.username),
                    u.role.as_str(),
                    if u.mfa_enrolled { "totp" } else { "-" },
                    state
                );
            }
            return Ok(());
        }
        UserCommand::Lock { username } => {
            let r = admin::lock(store, ctx, &username).await;
            (format!("user-lock:{username}"), r.map_err(Into::into))
        }
        UserCommand::Unlock { username } => {
            let r = admin::unlock(store, ctx, &username).await;
            (format!("user-unlock:{username}"), r.map_err(Into::into))
        }
        UserCommand::ResetMfa { username } => {
            let r = admin::reset_mfa(store, ctx, &username)
                .await
                .map(|e| print_enrollment(&e));
            (format!("user-reset-mfa:{username}"), r.map_err(Into::into))
        }
        UserCommand::SetRole { username, role } => {
            let role = parse_role(&role)?;
            let r = admin::set_role(store, ctx, &username, role).await;
            (
                format!("user-set-role:{username}:{}", role.as_str()),
                r.map_err(Into::into),
            )
        }
    };
    // Each operation checked the operator's role and audited itself, with its change.
    if result.is_ok() && !what.starts_with("user-create") && !what.starts_with("user-reset-mfa") {
        println!("done: {what}");
    }
    result
}

async fn session(core: &Core, ctx: &AccessContext, command: SessionCommand) -> anyhow::Result<()> {
    let pool = core.store.pool();
    let now = core.store.now();
    match command {
        SessionCommand::List { subject } => {
            let policy = Config::from_env()?.sessions;
            let rows = tokens::active_tokens(pool, now, subject.as_deref(), &policy).await?;
            println!(
                "{:<18} {:<8} {:<38} {:<13} {:<22} ends",
                "id", "kind", "subject", "role", "started"
            );
            for t in rows {
                println!(
                    "{:<18} {:<8} {:<38} {:<13} {:<22} {}",
                    t.id,
                    t.kind,
                    shown(&t.subject),
                    t.role,
                    t.issued_at.format("%Y-%m-%d %H:%M:%S"),
                    t.expires_at.format("%H:%M:%S")
                );
            }
            Ok(())
        }
        SessionCommand::Revoke { target } => {
            let n = admin::end_sessions(&core.store, ctx, &target).await?;
            println!("revoked {n} token(s)");
            Ok(())
        }
    }
}

async fn client(core: &Core, ctx: &AccessContext, command: ClientCommand) -> anyhow::Result<()> {
    let pool = core.store.pool();
    match command {
        ClientCommand::Register {
            name,
            jwks_file,
            scopes,
            introspect,
        } => {
            let text = std::fs::read_to_string(&jwks_file)
                .with_context(|| format!("reading {}", jwks_file.display()))?;
            let jwks: serde_json::Value =
                serde_json::from_str(&text).context("the JWKS file is not JSON")?;
            let client_id =
                admin::register_client(pool, core.store.clock(), &name, &jwks, &scopes, introspect)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.description))?;
            core.store
                .record_admin(ctx, &format!("client-register:{client_id}"), true)
                .await?;
            println!("{client_id}");
            Ok(())
        }
        ClientCommand::RegisterApp {
            name,
            redirect_uris,
            scopes,
        } => {
            let client_id = carapace_core::identity::admin::register_app(
                pool,
                core.store.clock(),
                &name,
                &redirect_uris,
                &scopes,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.description))?;
            core.store
                .record_admin(ctx, &format!("client-register-app:{client_id}"), true)
                .await?;
            println!("{client_id}");
            Ok(())
        }
        ClientCommand::List => {
            println!("{:<38} {:<9} {:<24} scopes", "client_id", "state", "name");
            for c in tokens::list_clients(pool).await? {
                println!(
                    "{:<38} {:<9} {:<24} {}{}",
                    c.client_id,
                    if c.disabled { "disabled" } else { "active" },
                    shown(&c.name),
                    c.scopes.join(" "),
                    if c.introspect { " +introspect" } else { "" }
                );
            }
            Ok(())
        }
        ClientCommand::Disable { client_id } => {
            let found = admin::disable_client(pool, core.store.clock(), &client_id).await?;
            core.store
                .record_admin(ctx, &format!("client-disable:{client_id}"), found)
                .await?;
            if !found {
                bail!("no client {client_id}");
            }
            println!("client {client_id} disabled; its tokens are revoked");
            Ok(())
        }
    }
}

async fn audit_verify(
    core: &Core,
    ctx: &AccessContext,
    anchor: Option<&str>,
) -> anyhow::Result<()> {
    let anchor = match anchor {
        None => None,
        Some(text) => {
            let parsed = text
                .split_once(':')
                .and_then(|(seq, link)| Some((seq.parse::<i64>().ok()?, hex::decode(link).ok()?)));
            Some(parsed.context("--anchor takes SEQ:LINK as printed by `audit verify`")?)
        }
    };
    let mut last_shown = 0;
    let report = core
        .store
        .verify_audit_chain(anchor.as_ref(), |done, total| {
            if done == total || done - last_shown >= 10_000 {
                last_shown = done;
                eprint!("\rverified {done}/{total} events");
            }
        })
        .await
        .context("verifying the audit chain")?;
    eprintln!();
    // The verification is itself audited, after the walk.
    core.store
        .record_admin(ctx, "audit-verify", report.broken.is_none())
        .await?;
    match report.broken {
        None => {
            println!(
                "audit chain intact: {} events verified ({} recorded before the chain began)",
                report.checked, report.unchained
            );
            println!(
                "head: {}:{} (keep it elsewhere; `--anchor` it next time)",
                report.head.0,
                hex::encode(&report.head.1)
            );
            audit_archive::print_trail_start(&report);
            Ok(())
        }
        Some((at, why)) => anyhow::bail!(
            "audit chain BROKEN at event {at}: {why} ({} events verified before it)",
            report.checked
        ),
    }
}

async fn rotate(core: &Core, ctx: &AccessContext) -> anyhow::Result<()> {
    let mut last_shown = 0;
    let done = core
        .store
        .rewrap_all(ctx, |done, total| {
            if done == total || done - last_shown >= 100 {
                last_shown = done;
                print!("\rrewrapped {done}/{total} data keys");
                let _ = std::io::stdout().flush();
            }
        })
        .await
        .context("rotation")?;
    println!("\nrotation complete: {done} data keys rewrapped");
    versions_table(core).await
}

async fn btg_list(core: &Core, ctx: &AccessContext, all: bool) -> anyhow::Result<()> {
    let grants = core.store.btg_grants(all, 500).await?;
    core.store.record_admin(ctx, "btg-list", true).await?;
    println!(
        "{:>6}  {:<20}  {:<12}  {:<20}  {:<20}  {:>8}  {:<20}  REASON",
        "ID", "WHO", "ROLE", "STARTED", "EXPIRES", "ACCESSES", "REVIEWED"
    );
    for g in grants {
        println!(
            "{:>6}  {:<20}  {:<12}  {:<20}  {:<20}  {:>8}  {:<20}  {}",
            g.id,
            tui::inert(&g.principal, 20),
            g.role,
            g.started_at.format("%Y-%m-%d %H:%M:%S"),
            g.expires_at.format("%Y-%m-%d %H:%M:%S"),
            g.accesses,
            g.reviewed_by
                .as_deref()
                .map_or("no".into(), |r| tui::inert(r, 20)),
            tui::inert(&g.reason, 200),
        );
    }
    Ok(())
}

/// `export list`: every job as a plain table (sizes in bytes, times in UTC, for scripts).
async fn export_list(core: &Core, ctx: &AccessContext) -> anyhow::Result<()> {
    let jobs = Exporter::list(&core.store, ctx).await?;
    println!(
        "{:<36}  {:<40}  {:<7}  {:<9}  {:>9}  {:>12}  {:>5}  {:<19}  EXPIRES",
        "ID", "CLIENT", "LEVEL", "STATE", "RESOURCES", "BYTES", "FILES", "CREATED"
    );
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for j in jobs {
        println!(
            "{:<36}  {:<40}  {:<7}  {:<9}  {:>9}  {:>12}  {:>5}  {:<19}  {}",
            tui::inert(&j.id, 36),
            tui::inert(&tui::requester(&j), 40),
            tui::inert(&j.level, 7),
            j.state.as_str(),
            j.resources,
            j.bytes,
            j.files,
            time(j.created_at),
            j.expires_at.map_or("-".into(), time),
        );
    }
    Ok(())
}
