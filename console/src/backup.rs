//! `backup` and `restore`: the embedded cluster's encrypted pgBackRest backups from the command
//! line. The work is the core's (`db::backup`); this signs the operator in, audits, and prints.

use anyhow::Context;
use carapace_core::access::AccessContext;
use carapace_core::config::Config;
use carapace_core::core::{self, Core};
use carapace_core::db::backup::{BackupSet, Repository};
use secrecy::SecretString;
use std::path::Path;

/// The repository of the configured data directory, or why there is none.
async fn repository(
    config: &Config,
    keys: &carapace_core::crypto::keys::KeyProvider,
) -> anyhow::Result<(Repository, SecretString)> {
    Ok(core::backup_repository(config, keys).await?)
}

/// Take a full or incremental backup of the running database (audited), and list what the
/// repository then holds.
pub async fn backup(
    core: &Core,
    config: &Config,
    ctx: &AccessContext,
    incremental: bool,
) -> anyhow::Result<()> {
    let (repo, passphrase) = repository(config, &core.keys).await?;
    let taken = tokio::task::spawn_blocking(move || {
        let taken = repo.backup(incremental, &passphrase);
        let listed = repo.list(&passphrase);
        taken.and_then(|t| Ok((t, listed?)))
    })
    .await?;
    core.store
        .record_admin(ctx, "backup", taken.is_ok())
        .await
        .context("auditing the backup")?;
    let (set, all) = taken.context("backing up")?;
    println!(
        "{} backup {} taken ({} of database, {} added to the repository)",
        set.kind,
        set.label,
        bytes(set.size),
        bytes(set.repo_size)
    );
    print_sets(&all);
    Ok(())
}

/// List the repository's backups (no backup taken; the listing is audited as a read).
pub async fn list(core: &Core, config: &Config, ctx: &AccessContext) -> anyhow::Result<()> {
    let (repo, passphrase) = repository(config, &core.keys).await?;
    let sets = tokio::task::spawn_blocking(move || repo.list(&passphrase)).await??;
    core.store.record_admin(ctx, "backup-list", true).await?;
    print_sets(&sets);
    Ok(())
}

fn print_sets(sets: &[BackupSet]) {
    println!("backups in the repository (oldest first):");
    for s in sets {
        let stopped = chrono::DateTime::from_timestamp(s.stopped, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!("  {:<26} {:<4} ended {stopped}", s.label, s.kind);
    }
}

fn bytes(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// `--to`: an RFC 3339 time (`2026-12-02T01:30:00Z`).
pub fn parse_time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .context("--to takes an RFC 3339 time, such as 2026-12-02T01:30:00Z")
}

/// Restore the database as it was at `to` into the fresh data directory `into`. The operator signs
/// in against the database backed up when it opens (and is refused there before anything is
/// written), and the restore is audited there; it is audited in the restored database too, so
/// the record of who restored it, and to when, travels with the data. A restore is for when the
/// database may be gone: then the operator signs in against the restored one instead (whoever can
/// run it holds the key provider already, so signing in first would keep nobody out).
pub async fn restore(config: &Config, to: &str, into: &Path) -> anyhow::Result<()> {
    let to = parse_time(to)?;
    let source = match Core::open_console(config).await {
        Ok(core) => Some(core),
        Err(e) => {
            eprintln!(
                "the database backed up does not open ({e}): restoring from the repository alone; \
                 the restore is recorded in the restored database"
            );
            None
        }
    };
    let mut operator = None;
    let keys = match &source {
        Some(core) => match super::operator(core).await {
            Ok(ctx) => {
                operator = Some(ctx);
                core.keys.clone()
            }
            Err(e) => {
                if let Some(core) = source {
                    core.shutdown().await;
                }
                return Err(e);
            }
        },
        None => std::sync::Arc::new(core::open_keys(config).await?.0),
    };
    let restored = match repository(config, &keys).await {
        Ok((repo, passphrase)) => {
            let dir = into.to_path_buf();
            let file_keyring = config.vault.is_none();
            tokio::task::spawn_blocking(move || repo.restore(to, &dir, file_keyring, &passphrase))
                .await?
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    if let Some(core) = source {
        if let Some(ctx) = &operator {
            core.store
                .record_admin(ctx, "restore", restored.is_ok())
                .await
                .context("auditing the restore")?;
        }
        core.shutdown().await;
    }
    restored.context("restoring")?;
    let mut config = config.clone();
    config.data_dir = into.to_path_buf();
    let core = Core::open_console(&config)
        .await
        .context("opening the restored database")?;
    let ctx = match operator {
        Some(ctx) => Ok(ctx),
        None => super::operator(&core).await,
    };
    let recorded = match &ctx {
        Ok(ctx) => core.store.record_admin(ctx, "restore", true).await,
        Err(_) => Ok(()),
    };
    core.shutdown().await;
    let ctx = ctx.context("signing in to the restored database")?;
    recorded.context("auditing the restore")?;
    println!(
        "restored to {} into {} (by {}); start carapace-server with CARAPACE_DATA_DIR={} \
         (it archives into that directory's own repository unless CARAPACE_BACKUP_DIR says \
         otherwise)",
        to.to_rfc3339(),
        into.display(),
        ctx.principal,
        into.display()
    );
    Ok(())
}
