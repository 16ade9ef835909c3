//! More than one machine, on one: a streaming replica of a test cluster (`pg_basebackup`), a
//! PgBouncer in transaction mode in front of the primary and the replica, and HAProxy in front of
//! several `carapace-server` processes — Debian's programs, each on free loopback ports, each
//! stopped when dropped. As root, PostgreSQL's programs and PgBouncer (which refuses root) run as
//! the `postgres` system user, as the embedded cluster does.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use crate::processes::free_port;

/// The user PostgreSQL's programs run as when the tests run as root (`None`: this process's).
fn postgres_user() -> Option<(u32, u32)> {
    carapace_core::db::embedded::cluster_user().expect("a `postgres` system user (running as root)")
}

/// `program` run as the user PostgreSQL runs as (this process's, unless it is root).
fn as_postgres_user(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = postgres_user() {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid).env("HOME", home);
    }
    cmd.current_dir(home);
    cmd
}

/// A directory the PostgreSQL user owns (mode 0700), in a temporary directory of the caller's.
fn owned_dir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = postgres_user() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        // The temporary parent must be passable for that user.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(dir)
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Wait until something accepts connections on 127.0.0.1:`port`.
fn wait_for_port(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A hot standby streaming from a test cluster of the caller's own.
pub struct Replica {
    bin_dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// A base backup of `primary` (its replication slot-less WAL stream; `-R` writes the standby
    /// settings), started as a hot standby on a port of its own.
    pub fn start(primary: &Postgres) -> anyhow::Result<Replica> {
        let dir = tempfile::tempdir()?;
        let home = owned_dir(dir.path(), "home")?;
        let data = home.join("data");
        let bin_dir = primary.bin_dir();
        let mut backup = as_postgres_user(bin_dir.join("pg_basebackup"), &home);
        backup
            .args(["-h", "127.0.0.1", "-p"])
            .arg(primary.port().to_string())
            .args(["-U", carapace_core::db::embedded::SUPERUSER, "-D"])
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast"]);
        run(backup, "pg_basebackup")?;
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             -c hot_standby=on -c max_connections=100",
            home.display()
        );
        let log = home.join("replica.log");
        let mut start = as_postgres_user(bin_dir.join("pg_ctl"), &home);
        start
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-l"])
            .arg(&log)
            .args(["-o", &options, "start"]);
        run(start, "starting the replica")?;
        Ok(Replica {
            bin_dir,
            data,
            port,
            _dir: dir,
        })
    }

    /// `postgres://` URL of `database` on the replica.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            carapace_core::db::embedded::SUPERUSER,
            self.port
        )
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let home = self
            .data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut stop = as_postgres_user(self.bin_dir.join("pg_ctl"), &home);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// PgBouncer in transaction mode: each `(name, port, database)` becomes a database `name` of
/// its own pool on 127.0.0.1:`port`.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `pool_size` server connections per database (small: the clients' transactions share them).
    pub fn start(databases: &[(&str, u16, &str)], pool_size: u32) -> anyhow::Result<PgBouncer> {
        let dir = tempfile::tempdir()?;
        let home = owned_dir(dir.path(), "home")?;
        let port = free_port();
        let user = carapace_core::db::embedded::SUPERUSER;
        let mut dbs = String::new();
        for (name, db_port, database) in databases {
            dbs.push_str(&format!(
                "{name} = host=127.0.0.1 port={db_port} dbname={database} user={user}\n"
            ));
        }
        // The settings Carapace needs behind a transaction-mode pooler (README, "More than one
        // machine"): statements prepared in a transaction are deallocated when it ends.
        let ini = format!(
            "[databases]\n{dbs}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {home}/users.txt\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
             server_reset_query = DISCARD ALL\nserver_reset_query_always = 1\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {home}/pgbouncer.log\n\
             pidfile = {home}/pgbouncer.pid\n",
            home = home.display()
        );
        std::fs::write(home.join("pgbouncer.ini"), ini)?;
        std::fs::write(home.join("users.txt"), format!("\"{user}\" \"\"\n"))?;
        if let Some((uid, gid)) = postgres_user() {
            for f in ["pgbouncer.ini", "users.txt"] {
                std::os::unix::fs::chown(home.join(f), Some(uid), Some(gid))?;
            }
        }
        let child = as_postgres_user("pgbouncer", &home)
            .arg(home.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer (Debian package pgbouncer)")?;
        wait_for_port(port, "pgbouncer", &home.join("pgbouncer.log"))?;
        Ok(PgBouncer {
            child,
            port,
            _dir: dir,
        })
    }

    /// `postgres://` URL of pooled database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{name}",
            carapace_core::db::embedded::SUPERUSER,
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy balancing HTTP round-robin over servers on loopback ports, each health-checked on
/// `/healthz` every 300 ms.
pub struct HaProxy {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    pub fn start(port: u16, backends: &[u16]) -> anyhow::Result<HaProxy> {
        let dir = tempfile::tempdir()?;
        let mut servers = String::new();
        for (i, p) in backends.iter().enumerate() {
            servers.push_str(&format!(
                "  server node{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 1\n"
            ));
        }
        let cfg = format!(
            "global\n  maxconn 512\n\ndefaults\n  mode http\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n  option forwardfor\n\n\
             frontend fhir\n  bind 127.0.0.1:{port}\n  default_backend carapace\n\n\
             backend carapace\n  balance roundrobin\n  option httpchk GET /healthz\n  \
             retry-on conn-failure\n  option redispatch\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting haproxy (Debian package haproxy)")?;
        wait_for_port(port, "haproxy", &log)?;
        Ok(HaProxy {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
