//! The embedded default: a private PostgreSQL cluster under the data directory, started from the
//! machine's PostgreSQL 15+ server binaries, reachable only through a unix socket in a private
//! directory. Used by the server when no `CARAPACE_DATABASE_URL` is set, and by the tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("no PostgreSQL 15+ server binaries found (looked on PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin); install Debian's `postgresql` package")]
    NoBinaries,
    #[error("running as root, and there is no unprivileged `postgres` system user to run PostgreSQL as (initdb refuses root); create one or run as another user")]
    NoUnprivilegedUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("the data directory {dir} is in use by another Carapace process{holder}; stop it first, or give this one another CARAPACE_DATA_DIR")]
    InUse { dir: String, holder: String },
    #[error("the data directory {dir} is held by another Carapace process{holder}, whose PostgreSQL is not running (starting or stopping); try again")]
    NotRunning { dir: String, holder: String },
    #[error("CARAPACE_DATA_DIR {dir} {problem}")]
    DataDir { dir: String, problem: String },
    #[error("running as root, PostgreSQL runs as the unprivileged `postgres` system user (initdb refuses root), which cannot enter {dir} (mode {mode:o}, owner uid {owner}) on the way to the data directory {data_dir}: make it traversable (chmod o+x {dir}) or choose a CARAPACE_DATA_DIR outside it")]
    NotTraversable {
        dir: String,
        mode: u32,
        owner: u32,
        data_dir: String,
    },
    #[error("{doing} {path}: {source}")]
    Path {
        doing: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `e` about `path`, for `map_err`.
fn at(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let path = path.display().to_string();
    move |source| EmbeddedError::Path {
        doing,
        path,
        source,
    }
}

/// Create the data directory (`CARAPACE_DATA_DIR`) if it is missing, refusing clearly a path that
/// is a file, or under one.
pub fn create_data_dir(dir: &Path) -> Result<(), EmbeddedError> {
    let refuse = |problem: String| EmbeddedError::DataDir {
        dir: dir.display().to_string(),
        problem,
    };
    if let Some(file) = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists() && !a.is_dir())
    {
        return Err(refuse(if file == dir {
            "is a file, not a directory".into()
        } else {
            format!(
                "cannot be created: {} is a file, not a directory",
                file.display()
            )
        }));
    }
    std::fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot be created: {e}")))
}

/// As root, the `postgres` user (`uid`, `gid`) must pass through every directory above the data
/// directory; the first one it cannot enter is named, before anything is created under it.
fn check_traversable(data_dir: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    for dir in data_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let may_enter = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !may_enter {
            return Err(EmbeddedError::NotTraversable {
                dir: dir.display().to_string(),
                mode,
                owner: meta.uid(),
                data_dir: data_dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Whether a process may share the cluster with the one that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The server: it owns the cluster (starts it, or adopts one whose owner died, and stops it).
    /// A data directory another live process owns is refused, before the cluster is touched:
    /// otherwise that process stops the cluster under it on exit.
    Exclusive,
    /// The console: it owns the cluster when nobody else does, and otherwise works on the one the
    /// server runs, leaving stopping it to the server.
    Shared,
}

/// `carapace.lock` in the data directory, locked (flock) for as long as its owner runs the
/// cluster, holding the owner's pid and program name for the message a second process prints.
/// The kernel drops the lock when the process ends however it ends, so a stale file never blocks.
/// std's `File::try_lock` (flock on Linux, stable since Rust 1.89) is used rather than the `fs4`
/// or `fd-lock` crates, or `libc::flock` by hand: the same call, with no dependency and no unsafe.
struct DirLock {
    _file: std::fs::File,
}

const LOCK_FILE: &str = "carapace.lock";

impl DirLock {
    /// The lock, or `Ok(Err(holder))` when another process holds it (`holder`: its own words).
    fn try_acquire(data_dir: &Path) -> Result<Result<DirLock, String>, EmbeddedError> {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(at("opening", &path))?;
        match file.try_lock() {
            Ok(()) => {
                let program = std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                file.set_len(0)
                    .and_then(|()| writeln!(file, "{} {program}", std::process::id()))
                    .and_then(|()| file.flush())
                    .map_err(at("writing", &path))?;
                Ok(Ok(DirLock { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                // Read what the holder wrote; a read failure only loses the detail.
                let _ = file.read_to_string(&mut text);
                let mut words = text.split_whitespace();
                let holder = match (words.next(), words.next()) {
                    (Some(pid), Some(program)) if pid.bytes().all(|b| b.is_ascii_digit()) => {
                        format!(" (pid {pid}, {})", crate::fhir::printable(program))
                    }
                    (Some(pid), None) if pid.bytes().all(|b| b.is_ascii_digit()) => {
                        format!(" (pid {pid})")
                    }
                    _ => String::new(),
                };
                Ok(Err(holder))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(at("locking", &path)(e)),
        }
    }
}

/// A running private cluster. [`Cluster::stop`] shuts it down (fast mode); so does dropping it.
pub struct Cluster {
    bin_dir: PathBuf,
    pg_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    stopped: bool,
    /// Held while this process owns the cluster; released (on drop) after the cluster stopped.
    _lock: Option<DirLock>,
}

pub const SUPERUSER: &str = "carapace";

/// What the embedded default adds to a plain cluster (the tests' clusters start without it).
#[derive(Default)]
pub struct Settings {
    /// Continuous WAL archiving: `archive_mode = on` with this command (`%p` is the segment).
    pub archive_command: Option<String>,
    /// Load pgAudit (`shared_preload_libraries`), logging every statement by default; the server's
    /// and console's sessions narrow it for themselves (`core.rs`).
    pub pgaudit: bool,
    /// Variables for the postmaster's environment, inherited by the archive and restore commands
    /// it runs (the backup repository's passphrase). Never on a command line.
    pub env: Vec<(&'static str, secrecy::SecretString)>,
}

/// Where Debian (and `pg_config --pkglibdir`) put a server's extension libraries: beside `bin/`.
pub fn has_pgaudit(bin_dir: &Path) -> bool {
    bin_dir
        .parent()
        .is_some_and(|v| v.join("lib/pgaudit.so").exists())
}

impl Cluster {
    /// Initialise (first time) and start a cluster under `data_dir`, listening on a unix socket only
    /// (or also on `127.0.0.1:tcp_port` when given, for tools such as `pg_dump` in tests).
    /// Attaches to a cluster another process owns ([`Ownership::Shared`]).
    pub fn start(data_dir: &Path, tcp_port: Option<u16>) -> Result<Cluster, EmbeddedError> {
        Cluster::start_as(data_dir, tcp_port, Ownership::Shared)
    }

    /// [`Cluster::start`], as `ownership` says.
    pub fn start_as(
        data_dir: &Path,
        tcp_port: Option<u16>,
        ownership: Ownership,
    ) -> Result<Cluster, EmbeddedError> {
        Cluster::start_with(data_dir, tcp_port, ownership, &Settings::default())
    }

    /// [`Cluster::start_as`] with the embedded default's [`Settings`] (archiving, pgAudit). A
    /// cluster already running (attached, or adopted) keeps the settings it was started with.
    pub fn start_with(
        data_dir: &Path,
        tcp_port: Option<u16>,
        ownership: Ownership,
        settings: &Settings,
    ) -> Result<Cluster, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = cluster_user()?;
        create_data_dir(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir).map_err(at("resolving", data_dir))?;
        if let Some((uid, gid)) = run_as {
            check_traversable(&data_dir, uid, gid)?;
        }
        let lock = match DirLock::try_acquire(&data_dir)? {
            Ok(lock) => Ok(lock),
            Err(holder) if ownership == Ownership::Exclusive => {
                return Err(EmbeddedError::InUse {
                    dir: data_dir.display().to_string(),
                    holder,
                })
            }
            // Attaching: the owner's cluster must be up (checked once the paths are known).
            Err(holder) => Err(holder),
        };
        let pg_dir = data_dir.join("postgres");
        let socket_dir = data_dir.join("run");
        std::fs::create_dir_all(&socket_dir).map_err(at("creating", &socket_dir))?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(at("setting the mode of", &socket_dir))?;
        if let Some((uid, gid)) = run_as {
            // The unprivileged user must be able to pass through the data directory (not list it:
            // the master key file stays root-only) and own its own directories.
            let mode = std::fs::metadata(&data_dir)
                .map_err(at("reading", &data_dir))?
                .permissions()
                .mode()
                & 0o777;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(mode | 0o711))
                .map_err(at("setting the mode of", &data_dir))?;
            chown(&socket_dir, uid, gid)?;
            if pg_dir.exists() {
                chown(&pg_dir, uid, gid)?;
            }
        }
        let port = tcp_port.unwrap_or(5432);
        let mut cluster = Cluster {
            bin_dir,
            pg_dir,
            socket_dir,
            run_as,
            port,
            stopped: false,
            _lock: None,
        };
        let lock = match lock {
            Ok(lock) => lock,
            Err(holder) => {
                // Another live process (the server, when this is the console) owns the cluster:
                // attach, and leave stopping it to its owner.
                cluster.stopped = true;
                if !cluster.is_running() {
                    return Err(EmbeddedError::NotRunning {
                        dir: data_dir.display().to_string(),
                        holder,
                    });
                }
                return Ok(cluster);
            }
        };
        cluster._lock = Some(lock);
        if !cluster.pg_dir.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        if cluster.is_running() {
            // Nobody holds the lock, yet PostgreSQL runs: its owner died without stopping it.
            // Adopt it (and stop it on exit) rather than leave it to nobody.
            tracing::info!(
                "adopting the embedded PostgreSQL cluster a previous process left running"
            );
            return Ok(cluster);
        }
        let listen = if tcp_port.is_some() { "127.0.0.1" } else { "" };
        let mut options = format!(
            "-c listen_addresses='{listen}' -c port={port} -c unix_socket_directories='{}' \
             -c unix_socket_permissions=0700 -c max_connections=100 -c shared_buffers=256MB",
            cluster.socket_dir.display()
        );
        if let Some(command) = &settings.archive_command {
            // pg_ctl splits `-o` like a shell: the command is single-quoted, its quotes doubled.
            options.push_str(&format!(
                " -c wal_level=replica -c archive_mode=on -c archive_timeout=60 \
                 -c archive_command='{}'",
                command.replace('\'', "''")
            ));
        }
        if settings.pgaudit {
            // Everything by default: a DBA's psql session is logged statement by statement. The
            // server's and console's sessions narrow it to DDL and role changes (`core.rs`).
            // Catalog reads (psql's `\d`) are left out: they hold no PHI and would drown the rest.
            options.push_str(
                " -c shared_preload_libraries=pgaudit -c pgaudit.log=all \
                 -c pgaudit.log_catalog=off -c pgaudit.log_relation=on",
            );
        }
        let log = cluster.pg_dir.join("server.log");
        let log = log.display().to_string();
        let args = ["start", "-w", "-t", "60", "-l", &log, "-o", &options];
        cluster.pg_ctl_with_env(&args, &settings.env)?;
        Ok(cluster)
    }

    /// The cluster's PostgreSQL data directory (`postgres/` under the data directory).
    pub fn pg_dir(&self) -> &Path {
        &self.pg_dir
    }

    /// `program` run as the cluster's own user (the unprivileged `postgres` when this process is
    /// root), in the socket directory.
    pub fn tool(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        self.as_owner(&mut cmd);
        cmd
    }

    /// Wait until a cluster started in recovery (a point-in-time restore, `recovery.signal`)
    /// has reached its target and promoted itself, for at most `limit`. Promoted means out of
    /// recovery as PostgreSQL itself answers (`pg_is_in_recovery()` false), not only the signal
    /// file gone: PostgreSQL removes it when replay ends, before the promotion is through, and a
    /// cluster stopped in between is "shut down in recovery" — its next start then replays as a
    /// crash recovery everything in `pg_wal`, past the target (the last archived segment holds
    /// what came after it).
    pub fn wait_for_promotion(&self, limit: std::time::Duration) -> Result<(), EmbeddedError> {
        let started = std::time::Instant::now();
        let promoted = || {
            !self.pg_dir.join("recovery.signal").exists()
                && self
                    .query_value("postgres", "SELECT pg_is_in_recovery()")
                    .is_ok_and(|v| v == "f")
        };
        while !promoted() {
            if !self.is_running() {
                return Err(EmbeddedError::Command {
                    what: "recovery".into(),
                    detail: format!(
                        "PostgreSQL stopped before it finished ({})",
                        self.log_tail()
                    ),
                });
            }
            if started.elapsed() > limit {
                return Err(EmbeddedError::Command {
                    what: "recovery".into(),
                    detail: format!(
                        "not finished after {} s ({})",
                        limit.as_secs(),
                        self.log_tail()
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(())
    }

    /// The cluster's state as its control file records it (`pg_controldata`'s "Database
    /// cluster state": `shut down`, `in production`, `shut down in recovery`, ...).
    pub fn control_state(&self) -> Result<String, EmbeddedError> {
        let out = self
            .command("pg_controldata")
            .arg(&self.pg_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EmbeddedError::Command {
                what: "pg_controldata".into(),
                detail: e.to_string(),
            })?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| EmbeddedError::Command {
                what: "pg_controldata".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
    }

    /// The one value `sql` answers in `database`, as psql prints it unaligned (empty for NULL);
    /// for the restore's own checks, on the cluster's socket, before any server uses it.
    pub fn query_value(&self, database: &str, sql: &str) -> Result<String, EmbeddedError> {
        let out = self
            .command("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EmbeddedError::Command {
                what: "psql".into(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: "psql".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The last lines of the cluster's log, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.pg_dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!(
            "server log: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(&self.pg_dir).map_err(at("creating", &self.pg_dir))?;
        std::fs::set_permissions(&self.pg_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(at("setting the mode of", &self.pg_dir))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&self.pg_dir, uid, gid)?;
        }
        // Local socket connections are trusted: the socket lives in a 0700 directory only the
        // cluster's owner (and root) can enter. TCP, when enabled for tests, needs no password either,
        // but only listens on loopback.
        self.run(
            "initdb",
            &[
                "-D",
                &self.pg_dir.display().to_string(),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.pg_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), EmbeddedError> {
        self.pg_ctl_with_env(args, &[])
    }

    fn pg_ctl_with_env(
        &self,
        args: &[&str],
        env: &[(&'static str, secrecy::SecretString)],
    ) -> Result<(), EmbeddedError> {
        let mut all = vec!["-D".to_string(), self.pg_dir.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run_with_env("pg_ctl", &refs, env)
    }

    fn command(&self, program: &str) -> Command {
        self.tool(&self.bin_dir.join(program))
    }

    fn as_owner(&self, cmd: &mut Command) {
        run_as_cluster_user(cmd, self.run_as, &self.pg_dir);
        cmd.current_dir(&self.socket_dir);
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), EmbeddedError> {
        self.run_with_env(program, args, &[])
    }

    fn run_with_env(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&'static str, secrecy::SecretString)],
    ) -> Result<(), EmbeddedError> {
        use secrecy::ExposeSecret;
        let mut command = self.command(program);
        for (name, value) in env {
            command.env(name, value.expose_secret());
        }
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EmbeddedError::Command {
                what: program.into(),
                detail: match self.run_as {
                    // The child could not enter its working directory or run the binary as
                    // `postgres`: say so, and where.
                    Some((uid, _)) => format!(
                        "{} could not be started as the unprivileged `postgres` system user (uid \
                         {uid}; running as root, PostgreSQL runs as it) in {}: {e}",
                        self.bin_dir.join(program).display(),
                        self.socket_dir.display()
                    ),
                    None => format!(
                        "{} could not be started in {}: {e}",
                        self.bin_dir.join(program).display(),
                        self.socket_dir.display()
                    ),
                },
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            if program == "pg_ctl" {
                detail.push_str(&format!(" ({})", self.log_tail()));
            }
            Err(EmbeddedError::Command {
                what: program.into(),
                detail,
            })
        }
    }

    /// Connection options for a database in this cluster, over the unix socket.
    pub fn connect_options(&self, database: &str) -> sqlx::postgres::PgConnectOptions {
        sqlx::postgres::PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
    }

    /// `postgres://` URL over TCP (only meaningful when started with a TCP port).
    pub fn tcp_url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Create `database` if it does not exist yet.
    pub async fn ensure_database(&self, database: &str) -> Result<(), sqlx::Error> {
        use sqlx::ConnectOptions;
        let mut conn = self.connect_options("postgres").connect().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            // Identifiers cannot be bound; the name is ours (never client input), quoted anyway.
            sqlx::query(&format!(
                "CREATE DATABASE \"{}\"",
                database.replace('"', "\"\"")
            ))
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }

    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL cluster failed");
        }
    }
}

/// The user a cluster runs as: `None` for this process's own, or the unprivileged `postgres`
/// system user's (uid, gid) when this process is root (initdb refuses root).
pub fn cluster_user() -> Result<Option<(u32, u32)>, EmbeddedError> {
    if unsafe_is_root() {
        Ok(Some(
            postgres_user().ok_or(EmbeddedError::NoUnprivilegedUser)?,
        ))
    } else {
        Ok(None)
    }
}

/// `path` (made if missing) with `mode`, owned by the cluster's `user` ([`cluster_user`]): for
/// what tools running as that user write beside the cluster (pgBackRest's repository and logs).
pub fn own_path(path: &Path, mode: u32, user: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    if !path.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(at("creating", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(at("setting the mode of", path))?;
    if let Some((uid, gid)) = user {
        chown(path, uid, gid)?;
    }
    Ok(())
}

/// `cmd` set to run as the cluster's `user` ([`cluster_user`]), with `home` as its HOME.
pub fn run_as_cluster_user(cmd: &mut Command, user: Option<(u32, u32)>, home: &Path) {
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", home);
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` system user.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"postgres") && fields.len() > 3 {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(at("giving the `postgres` user", path))
}

/// The first directory holding `initdb`, `pg_ctl` and `postgres` of version 15 or newer.
pub fn find_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() {
                // On Debian, /usr/bin entries are wrappers or links; resolve to the real directory.
                let real = std::fs::canonicalize(dir.join("postgres"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(dir);
                candidates.push(real);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        candidates.extend(versions);
    }
    candidates.into_iter().find(|dir| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).exists())
            && major_version(dir) >= 15
    })
}

fn major_version(bin_dir: &Path) -> u32 {
    Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let version = text.split_whitespace().last()?.to_string();
            version.split('.').next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_that_is_a_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("carapace-data");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = create_data_dir(&file).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "CARAPACE_DATA_DIR {} is a file, not a directory",
                file.display()
            )
        );
        let under = file.join("inner");
        let err = create_data_dir(&under).unwrap_err().to_string();
        assert!(
            err.contains(&under.display().to_string())
                && err.contains(&format!("{} is a file, not a directory", file.display())),
            "{err}"
        );
        let fine = tmp.path().join("a/b");
        create_data_dir(&fine).unwrap();
        create_data_dir(&fine).unwrap();
        assert!(fine.is_dir());
    }

    #[test]
    fn a_parent_the_postgres_user_cannot_enter_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        let data_dir = private.join("carapace-data");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A uid and gid that own nothing here.
        let err = check_traversable(&data_dir, 4_000_001, 4_000_001)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("cannot enter {} (mode 700", private.display()))
                && err.contains("`postgres`")
                && err.contains(&data_dir.display().to_string()),
            "{err}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_traversable(&data_dir, 4_000_001, 4_000_001).unwrap();
    }
}
