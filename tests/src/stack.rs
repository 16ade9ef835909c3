//! [`Stack`]: everything one test needs — its own fresh database in the process's shared test
//! cluster (or a cluster of its own), an OpenBao, and a `carapace-server` signed in as a backend
//! client with full access — with shortcuts to the database, tokens and the audit trail.

use crate::bao::Bao;
use crate::http::{http, Fhir};
use crate::postgres::Postgres;
use crate::processes::Server;
use serde_json::Value;

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
    /// A fresh database in the shared test cluster + `bao server -dev` + carapace-server.
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(Bao::start_dev().await?, vec![]).await
    }

    /// [`Stack::start`] with this Vault and more server environment.
    pub async fn start_with(bao: Bao, extra_env: Vec<(String, String)>) -> anyhow::Result<Stack> {
        Stack::start_on(Postgres::shared().await?, bao, extra_env).await
    }

    /// [`Stack::start_with`] a fresh OpenBao, writing Bulk exports into a directory of the test's
    /// own (returned: the test looks at the files, and drops it last).
    pub async fn start_exporting(
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<(Stack, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let mut env = vec![(
            "CARAPACE_EXPORT_DIR".to_string(),
            dir.path().display().to_string(),
        )];
        env.extend(extra_env);
        Ok((Stack::start_with(Bao::start_dev().await?, env).await?, dir))
    }

    /// [`Stack::start`] on a PostgreSQL cluster of the test's own, for a test that stops it.
    pub async fn start_on_own_cluster() -> anyhow::Result<Stack> {
        Stack::start_on(Postgres::start().await?, Bao::start_dev().await?, vec![]).await
    }

    /// A fresh database in `postgres`, and a server on it with `bao` and `extra_env`.
    pub async fn start_on(
        postgres: Postgres,
        bao: Bao,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<Stack> {
        Stack::start_on_with(postgres, bao, extra_env, false).await
    }

    /// [`Stack::start_with`], the server connected to the shared cluster over its unix socket,
    /// as the embedded default is (the benchmarks: loopback TCP costs a read more).
    pub async fn start_over_socket(
        bao: Bao,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<Stack> {
        Stack::start_on_with(Postgres::shared().await?, bao, extra_env, true).await
    }

    async fn start_on_with(
        postgres: Postgres,
        bao: Bao,
        extra_env: Vec<(String, String)>,
        socket: bool,
    ) -> anyhow::Result<Stack> {
        let database = database_name();
        let database_url = postgres.database(&database).await?;
        let key_name = format!("carapace-{}", uuid::Uuid::new_v4().simple());
        let mut env = bao.env(&key_name);
        let server_url = match socket {
            true => postgres.socket_url(&database),
            false => database_url.clone(),
        };
        env.push(("CARAPACE_DATABASE_URL".into(), server_url));
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
            &self.db().await.into(),
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
            &self.db().await.into(),
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
            &self.db().await.into(),
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

/// A database name no other stack of this process has: the test's name (libtest names each test's
/// thread after it), so a kept cluster shows whose database is whose, and a sequence number.
fn database_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    let test: String = thread
        .name()
        .unwrap_or("stack")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("t{n}_{test}")
}
