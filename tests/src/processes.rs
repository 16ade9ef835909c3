//! Child processes of the tests: free loopback ports, where the built binaries are, the
//! `carapace-server` process (started, restarted, stopped, its log) and one-shot console runs.

use crate::http::http;
use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where cargo put the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "CARAPACE_{}_BIN",
        name.replace('-', "_").to_uppercase()
    )) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join(name);
    assert!(
        candidate.exists(),
        "{} not found; build it first (`cargo build --workspace --bins`)",
        candidate.display()
    );
    candidate
}

/// The metrics token every test server is started with (a test may set another, or none).
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789abcdef";

/// A running `carapace-server` process.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// An access token the FHIR helpers send, once [`Server::authorize`] has run.
    pub token: Option<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start the server with `env` (plus a loopback listener on a free port) and wait until it serves.
    pub async fn start(env: Vec<(String, String)>) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let mut server = Server {
            child: None,
            base: String::new(),
            token: None,
            env,
            log,
            _dir: dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let port = free_port();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin_path("carapace-server"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CARAPACE_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,sqlx=warn")
            // `/metrics` answers the harness's scrapes (`Server::metric`) on the main listener.
            .env("CARAPACE_METRICS_TOKEN", METRICS_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting carapace-server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        self.child = Some(child);
        // The server prints its base URL on stdout once it is listening.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.split("listening: ").nth(1) {
                    let _ = tx.send(base.trim().to_string());
                }
            }
        });
        let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
            .await?
            .map_err(|_| {
                anyhow!(
                    "server did not start: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            })?;
        self.base = base;
        Ok(())
    }

    /// A server on the embedded default in `data_dir` (its own PostgreSQL cluster and file
    /// keys), signed in as a full-access backend client.
    pub async fn start_embedded(data_dir: &std::path::Path) -> anyhow::Result<Server> {
        let mut server = Server::start(vec![(
            "CARAPACE_DATA_DIR".to_string(),
            data_dir.display().to_string(),
        )])
        .await?;
        let pool = crate::postgres::embedded_pool(data_dir).await;
        server.authorize(&pool).await;
        pool.close().await;
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// The server's origin (scheme://host:port), for non-FHIR endpoints such as `/metrics`.
    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/fhir").to_string()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, and wait for a clean exit. Returns whether it exited successfully.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("server did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.terminate()?;
        self.spawn().await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Current value of a counter from `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let bearer = format!("Bearer {METRICS_TOKEN}");
        let r = http(
            "GET",
            &format!("{}/metrics", self.origin()),
            &[("authorization", &bearer)],
            None,
        )
        .await?;
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<u64>()))
            .context("metric not found")?
            .context("metric value")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid; a clean stop also stops an embedded cluster.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `carapace-console` with exactly `env` (and `PATH`), optionally a line on standard input;
/// returns (success, stdout, stderr).
pub fn console(
    env: &[(String, String)],
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin_path("carapace-console"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{input}\n").as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
