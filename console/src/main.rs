//! carapace-console: the administrator's tool. For now, scriptable subcommands over the same core the
//! server uses (it connects to PostgreSQL and the key provider directly, never through the HTTP API).

use anyhow::Context;
use carapace_core::access::AccessContext;
use carapace_core::config::Config;
use carapace_core::core::Core;
use clap::{Parser, Subcommand};
use std::io::Write;

/// Carapace administrator console. Configuration comes from the same CARAPACE_* environment
/// variables as the server (see `carapace-server --help`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the database and key provider and print their status.
    Status,
    /// Data-key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the key-encryption key and rewrap every stored data key under the new version, online.
    Rotate {
        /// Operator name recorded in the audit trail.
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
    /// Show how many data keys are wrapped under each key version.
    Versions,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let core = Core::open(&config).await.context("connecting")?;
    let result = match cli.command {
        Command::Status => status(&core).await,
        Command::Keys {
            command: KeysCommand::Versions,
        } => versions(&core).await,
        Command::Keys {
            command: KeysCommand::Rotate { operator },
        } => rotate(&core, &operator).await,
    };
    core.shutdown().await;
    result
}

async fn status(core: &Core) -> anyhow::Result<()> {
    let pool = core.store.pool();
    let resources: i64 =
        sqlx_count(pool, "SELECT count(*) FROM resources WHERE NOT deleted").await?;
    let versions: i64 = sqlx_count(pool, "SELECT count(*) FROM resource_versions").await?;
    let audit: i64 = sqlx_count(pool, "SELECT count(*) FROM audit_events").await?;
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
    versions_table(core).await
}

async fn sqlx_count(pool: &carapace_core::sqlx::PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(carapace_core::sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await?)
}

async fn versions(core: &Core) -> anyhow::Result<()> {
    versions_table(core).await
}

async fn versions_table(core: &Core) -> anyhow::Result<()> {
    println!("data keys by key version:");
    for (version, count) in core.store.key_versions().await? {
        println!("  v{version}: {count}");
    }
    Ok(())
}

async fn rotate(core: &Core, operator: &str) -> anyhow::Result<()> {
    let ctx = AccessContext::operator(operator);
    let mut last_shown = 0;
    let done = core
        .store
        .rewrap_all(&ctx, |done, total| {
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
