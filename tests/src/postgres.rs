//! PostgreSQL for the tests: one private cluster per test process, started on first use and
//! stopped when the process ends, with a fresh database per test; and a cluster of a test's own
//! for the tests that stop their database.
//!
//! Starting a cluster (`initdb`, then `pg_ctl start`) takes seconds; creating a database in a
//! running one takes milliseconds. What the tests share is cluster-wide in PostgreSQL: the roles
//! migration 0007 creates (it tolerates another database's migration creating them at the same
//! time) and the settings the cluster starts with (no test changes them). A test that stops or
//! restarts PostgreSQL takes a cluster of its own ([`Postgres::start`]).
//!
//! The shared cluster is stopped twice over: at a normal exit (passed or failed tests) by an
//! `atexit` handler, and in any case by a watchdog process that waits for the test process's end
//! (the close of a pipe only that process holds) and then stops PostgreSQL and removes its
//! directory. So no `postgres` outlives `cargo test`, even when the test process is killed.

use anyhow::{bail, Context};
use carapace_core::db::embedded::Cluster;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::processes::free_port;

/// A PostgreSQL cluster a test works in: the process's shared one, or one of its own.
pub struct Postgres {
    place: Place,
}

enum Place {
    Shared(&'static Shared),
    Own {
        /// `None` only while [`Postgres::start_again`] replaces it.
        cluster: Option<Cluster>,
        _dir: tempfile::TempDir,
    },
}

/// The process's shared cluster, with what the tests need from it.
struct Shared {
    /// Kept (never dropped: a static), holding the data directory's lock until exit.
    _cluster: Cluster,
    dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    admin: PgConnectOptions,
    /// The watchdog, and the write end of its standard input: closed when this process ends.
    _watchdog: (Child, ChildStdin),
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

impl Postgres {
    /// The process's shared test cluster, started on first use (by whichever test comes first;
    /// the others wait for it).
    pub async fn shared() -> anyhow::Result<Postgres> {
        let shared = tokio::task::spawn_blocking(|| {
            SHARED
                .get_or_init(|| Shared::start().map_err(|e| format!("{e:#}")))
                .as_ref()
                .map_err(|e| anyhow::anyhow!("starting the shared test cluster: {e}"))
        })
        .await??;
        Ok(Postgres {
            place: Place::Shared(shared),
        })
    }

    /// A private cluster of the caller's own in a temporary directory (an `initdb` of its own),
    /// for a test that stops it. Stopped when dropped.
    pub async fn start() -> anyhow::Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_path_buf();
        let port = free_port();
        let cluster =
            tokio::task::spawn_blocking(move || Cluster::start(&path, Some(port))).await??;
        Ok(Postgres {
            place: Place::Own {
                cluster: Some(cluster),
                _dir: dir,
            },
        })
    }

    /// A fresh database named `name` (created; an error if it exists), and its URL.
    pub async fn database(&self, name: &str) -> anyhow::Result<String> {
        let admin = match &self.place {
            Place::Shared(shared) => shared.admin.clone(),
            Place::Own { cluster, .. } => own(cluster).connect_options("postgres"),
        };
        let mut conn = admin
            .connect()
            .await
            .context("connecting to the test cluster")?;
        // Identifiers cannot be bound; the name is the harness's own, quoted anyway.
        sqlx::query(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating the test database {name}"))?;
        Ok(self.url(name))
    }

    /// `postgres://` URL of `database` over loopback TCP.
    pub fn url(&self, database: &str) -> String {
        match &self.place {
            Place::Shared(shared) => format!(
                "postgres://{}@127.0.0.1:{}/{database}",
                carapace_core::db::embedded::SUPERUSER,
                shared.port
            ),
            Place::Own { cluster, .. } => own(cluster).tcp_url(database),
        }
    }

    /// `postgres://` URL of `database` over the cluster's unix socket.
    pub fn socket_url(&self, database: &str) -> String {
        let (socket_dir, port) = match &self.place {
            Place::Shared(shared) => (shared._cluster.socket_dir().to_path_buf(), shared.port),
            Place::Own { cluster, .. } => {
                (own(cluster).socket_dir().to_path_buf(), own(cluster).port())
            }
        };
        format!(
            "postgres://{}@localhost/{database}?host={}&port={port}",
            carapace_core::db::embedded::SUPERUSER,
            socket_dir.display()
        )
    }

    /// The directory of PostgreSQL's programs.
    pub fn bin_dir(&self) -> PathBuf {
        match &self.place {
            Place::Shared(shared) => shared.bin_dir.clone(),
            Place::Own { cluster, .. } => own(cluster).bin_dir().to_path_buf(),
        }
    }

    /// The loopback TCP port it listens on.
    pub fn port(&self) -> u16 {
        match &self.place {
            Place::Shared(shared) => shared.port,
            Place::Own { cluster, .. } => own(cluster).port(),
        }
    }

    /// Stop the cluster (as an outage would). Only a cluster of the test's own: the shared one
    /// serves the other tests.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match &mut self.place {
            Place::Own { cluster, .. } => {
                Ok(cluster.as_mut().expect("the test's cluster").stop()?)
            }
            Place::Shared(_) => bail!(
                "the shared test cluster serves every test of this process; \
                 a test that stops PostgreSQL starts with a cluster of its own (`Postgres::start`)"
            ),
        }
    }

    /// Start a stopped cluster of the test's own again, on the same directory and port (the
    /// outage over: a server that kept running must find it again by itself).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        match &mut self.place {
            Place::Own { cluster, _dir } => {
                let (path, port) = (_dir.path().to_path_buf(), own(cluster).port());
                // The stopped cluster's handle holds the directory's lock: released first.
                drop(cluster.take());
                let started =
                    tokio::task::spawn_blocking(move || Cluster::start(&path, Some(port)))
                        .await??;
                *cluster = Some(started);
                Ok(())
            }
            Place::Shared(_) => bail!("the shared test cluster is never stopped"),
        }
    }

    /// `pg_ctl stop -m immediate`: every backend killed, no shutdown checkpoint — what a crash
    /// leaves, as far as the data is concerned (the next start replays the WAL). Only a cluster of
    /// the caller's own.
    pub fn stop_immediately(&self) -> anyhow::Result<()> {
        self.own_pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"])
    }

    /// Start a cluster stopped by [`Postgres::stop_immediately`] again, as it was started:
    /// `pg_ctl restart` reads the options of the last start from `postmaster.opts` (and starts a
    /// stopped cluster), so the port and socket stay the same.
    pub fn start_after_crash(&self) -> anyhow::Result<()> {
        let log = self.dir().join("postgres/server.log");
        self.own_pg_ctl(&[
            "restart",
            "-w",
            "-t",
            "120",
            "-l",
            &log.display().to_string(),
        ])
    }

    /// `pg_ctl` on a cluster of the caller's own, as the user owning its data directory (the
    /// unprivileged `postgres` user when the tests run as root: PostgreSQL refuses root).
    fn own_pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let Place::Own { cluster, _dir } = &self.place else {
            bail!("only a cluster of the caller's own is stopped and started (`Postgres::start`)");
        };
        let pg_dir = _dir.path().join("postgres");
        let mut cmd = Command::new(own(cluster).bin_dir().join("pg_ctl"));
        cmd.arg("-D").arg(&pg_dir).args(args);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let owner = std::fs::metadata(&pg_dir)?;
            cmd.uid(owner.uid()).gid(owner.gid()).env("HOME", &pg_dir);
        }
        // A directory the cluster's owner may enter (the caller's may be root's own).
        cmd.current_dir(own(cluster).socket_dir());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A new database made from a [`Postgres::dump`] (a backup restored), as its `postgres://` URL.
    pub async fn restore(&self, database: &str, dump: &[u8]) -> anyhow::Result<String> {
        use std::io::Write;
        let url = self.database(database).await?;
        let bin_dir = match &self.place {
            Place::Shared(shared) => shared.bin_dir.as_path(),
            Place::Own { cluster, .. } => own(cluster).bin_dir(),
        };
        let mut psql = Command::new(bin_dir.join("psql"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running psql")?;
        psql.stdin
            .take()
            .context("psql's standard input")?
            .write_all(dump)?;
        let out = psql.wait_with_output()?;
        if !out.status.success() {
            bail!("restoring failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(url)
    }

    /// `pg_dump` of a database, as plain SQL text.
    /// The cluster's directory (its data directory is in it): what is left on disk.
    pub fn dir(&self) -> &Path {
        match &self.place {
            Place::Shared(shared) => shared.dir.as_path(),
            Place::Own { _dir, .. } => _dir.path(),
        }
    }

    pub fn dump(&self, database: &str) -> anyhow::Result<Vec<u8>> {
        let bin_dir = match &self.place {
            Place::Shared(shared) => shared.bin_dir.as_path(),
            Place::Own { cluster, .. } => own(cluster).bin_dir(),
        };
        let out = Command::new(bin_dir.join("pg_dump"))
            .arg(self.url(database))
            .output()
            .context("running pg_dump")?;
        if !out.status.success() {
            bail!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    }
}

fn own(cluster: &Option<Cluster>) -> &Cluster {
    cluster.as_ref().expect("the test's cluster")
}

impl Shared {
    fn start() -> anyhow::Result<Shared> {
        let dir = tempfile::Builder::new()
            .prefix("carapace-test-cluster-")
            .tempdir()?
            .keep();
        // The watchdog first: from here on, whatever happens to this process, the directory and
        // the cluster in it go with it.
        let watchdog = watchdog(&dir)?;
        let port = free_port();
        let cluster = Cluster::start(&dir, Some(port))
            .with_context(|| format!("starting a PostgreSQL cluster in {}", dir.display()))?;
        let shared = Shared {
            admin: cluster.connect_options("postgres"),
            bin_dir: cluster.bin_dir().to_path_buf(),
            port,
            dir,
            _cluster: cluster,
            _watchdog: watchdog,
        };
        // SAFETY: registers a plain function without arguments, called once at exit.
        if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
            bail!("registering the shared test cluster's stop at exit failed");
        }
        Ok(shared)
    }
}

/// Stop the shared cluster and remove its directory, at a normal exit of the test process. An
/// immediate shutdown (SIGQUIT to the postmaster): the data is thrown away, so the shutdown
/// checkpoint a fast one writes (a minute, for a whole suite's databases on a busy machine) is
/// skipped.
extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(shared)) = SHARED.get() {
        if let Err(e) = stop_and_remove(&shared.dir) {
            eprintln!(
                "stopping the shared test cluster in {} at exit: {e:#} (its watchdog stops it)",
                shared.dir.display()
            );
        }
    }
}

fn stop_and_remove(dir: &Path) -> anyhow::Result<()> {
    let pid_file = dir.join("postgres/postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no pid in {}", pid_file.display()))?;
    // SAFETY: kill(2) with a pid PostgreSQL wrote for its postmaster; signal 0 only checks.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: as above.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            bail!("the postmaster (pid {pid}) did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// A shell, in a process group of its own (a Ctrl-C to the tests does not reach it), that waits
/// for its standard input to close — when this process ends, however it ends, since only this
/// process holds the write end — then stops the cluster in `dir` if it still runs (SIGQUIT: an
/// immediate shutdown, sent by pid, so it works whichever user runs PostgreSQL) and removes `dir`.
fn watchdog(dir: &Path) -> anyhow::Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"cat >/dev/null
pid=$(head -n 1 "$1/postgres/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
fi
rm -rf "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT, "carapace-test-cluster-watchdog"])
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the shared test cluster's watchdog (sh)")?;
    let stdin = child.stdin.take().context("the watchdog's stdin")?;
    Ok((child, stdin))
}

/// A pool on an embedded server's private cluster (unix socket in its data directory).
pub async fn embedded_pool(data_dir: &Path) -> sqlx::PgPool {
    let options = sqlx::postgres::PgConnectOptions::new()
        .socket(data_dir.join("run"))
        .username(carapace_core::db::embedded::SUPERUSER)
        .database("carapace");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("connect to the embedded cluster")
}
