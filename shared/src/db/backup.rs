//! Backups of the embedded cluster with pgBackRest (Debian's `pgbackrest`): its configuration
//! under the data directory, the repository's passphrase (random, stored only wrapped by the key
//! provider), continuous WAL archiving, full and incremental backups, and point-in-time restore
//! into a fresh data directory. pgBackRest was chosen over `pg_basebackup` + WAL files encrypted
//! with `age`: it is one well-kept tool that does incremental backups, encrypts the repository
//! (AES-256-CBC under a passphrase), checks archive continuity and restores to a time itself.
//!
//! Layout: `<data_dir>/pgbackrest/` (its `pgbackrest.conf`, locks and logs) and the backup
//! directory (`CARAPACE_BACKUP_DIR`, default `<data_dir>/backup`): `repo/`, pgBackRest's
//! repository, and `cipher-pass.wrapped`, the passphrase wrapped by the key provider. The
//! passphrase reaches pgBackRest only through its environment (`PGBACKREST_REPO1_CIPHER_PASS`):
//! the postmaster's (for `archive-push` and `archive-get`) and each command's.

use crate::crypto::keys::{KeyError, KeyProvider};
use crate::crypto::Dek;
use crate::db::embedded::{self, Cluster, EmbeddedError, Ownership, Settings};
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pgBackRest stanza of the embedded cluster.
pub const STANZA: &str = "carapace";
/// How pgBackRest is given the repository's passphrase.
pub const PASS_ENV: &str = "PGBACKREST_REPO1_CIPHER_PASS";
const WRAPPED_PASS: &str = "cipher-pass.wrapped";
/// Full backups kept; older ones (and the WAL only they need) are expired after a backup.
const RETENTION_FULL: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("pgBackRest is not installed (Debian package `pgbackrest`): the embedded cluster runs without WAL archiving and cannot be backed up")]
    NoPgBackRest,
    #[error("backups are of the embedded cluster; a database given by CARAPACE_DATABASE_URL is backed up by its own operator")]
    External,
    #[error("key provider: {0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Embedded(#[from] EmbeddedError),
    #[error("pgBackRest {what} failed: {detail}")]
    Tool { what: String, detail: String },
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("backups need data and backup directory paths without spaces, quotes or shell characters (they go into the archive command); {0} has some")]
    UnsafePath(String),
}

impl BackupError {
    /// What keeps the embedded cluster from archiving at all (it then starts without, warning),
    /// as opposed to a failure of an archive that is set up.
    pub fn unavailable(&self) -> bool {
        matches!(self, BackupError::NoPgBackRest | BackupError::UnsafePath(_))
    }
}

fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.display().to_string();
    move |source| BackupError::Io {
        doing,
        path,
        source,
    }
}

/// `pgbackrest` on PATH (or Debian's place for it).
pub fn find_pgbackrest() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("pgbackrest"))
        .find(|p| p.is_file())
}

/// The backup repository of one data directory, and how pgBackRest reaches it.
pub struct Repository {
    data_dir: PathBuf,
    dir: PathBuf,
    pgbackrest: PathBuf,
    user: Option<(u32, u32)>,
}

/// One backup in the repository, as `pgbackrest info` reports it.
#[derive(Debug, Clone)]
pub struct BackupSet {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    pub started: i64,
    pub stopped: i64,
    /// Bytes of the database it holds, and bytes it added to the repository.
    pub size: u64,
    pub repo_size: u64,
}

impl Repository {
    /// The repository of `data_dir` in `backup_dir` (`None`: `<data_dir>/backup`).
    pub fn new(data_dir: &Path, backup_dir: Option<&Path>) -> Result<Repository, BackupError> {
        let pgbackrest = find_pgbackrest().ok_or(BackupError::NoPgBackRest)?;
        embedded::create_data_dir(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir).map_err(io("resolving", data_dir))?;
        let dir = backup_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("backup"));
        for path in [&data_dir, &dir] {
            // The archive command is one line of a configuration file and of a shell command:
            // a path that needs quoting in either is refused rather than quoted three ways.
            let text = path.display().to_string();
            if text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "'\"\\$`;&|<>*?#=".contains(c))
            {
                return Err(BackupError::UnsafePath(text));
            }
        }
        Ok(Repository {
            data_dir,
            dir,
            pgbackrest,
            user: embedded::cluster_user()?,
        })
    }

    fn conf_dir(&self) -> PathBuf {
        self.data_dir.join("pgbackrest")
    }

    /// `pgbackrest.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.conf_dir().join("pgbackrest.conf")
    }

    /// pgBackRest's repository (`repo1-path`).
    pub fn repo_path(&self) -> PathBuf {
        self.dir.join("repo")
    }

    fn wrapped_path(&self) -> PathBuf {
        self.dir.join(WRAPPED_PASS)
    }

    /// Make the directories and write `pgbackrest.conf` (readable by the cluster's user only).
    pub fn write_config(&self) -> Result<(), BackupError> {
        let conf_dir = self.conf_dir();
        embedded::own_path(&conf_dir, 0o700, self.user)?;
        for sub in ["log", "lock"] {
            embedded::own_path(&conf_dir.join(sub), 0o700, self.user)?;
        }
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        }
        // The cluster's user passes through the backup directory to its repository.
        embedded::own_path(&self.dir, 0o711, None)?;
        embedded::own_path(&self.repo_path(), 0o700, self.user)?;
        let d = self.data_dir.display();
        let text = format!(
            "# Written by Carapace at each start of the embedded cluster; edits are overwritten.\n\
             [global]\n\
             repo1-path={repo}\n\
             repo1-cipher-type=aes-256-cbc\n\
             repo1-retention-full={RETENTION_FULL}\n\
             compress-type=lz4\n\
             start-fast=y\n\
             archive-timeout=120\n\
             log-path={d}/pgbackrest/log\n\
             lock-path={d}/pgbackrest/lock\n\
             log-level-console=warn\n\
             log-level-stderr=warn\n\
             log-level-file=info\n\
             \n\
             [{STANZA}]\n\
             pg1-path={d}/postgres\n\
             pg1-socket-path={d}/run\n\
             pg1-port=5432\n\
             pg1-user={user}\n",
            repo = self.repo_path().display(),
            user = embedded::SUPERUSER,
        );
        let path = self.conf_path();
        write_private(&path, text.as_bytes())?;
        embedded::own_path(&path, 0o600, self.user)?;
        Ok(())
    }

    /// The repository's passphrase: made once (32 random bytes, hex), stored only wrapped by the
    /// key provider (`cipher-pass.wrapped`, beside the repository), unwrapped when needed.
    pub async fn passphrase(&self, keys: &KeyProvider) -> Result<SecretString, BackupError> {
        let path = self.wrapped_path();
        let wrapped = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.repo_path().join("backup").join(STANZA).exists() {
                    // A repository whose passphrase is lost cannot be opened: never make another.
                    return Err(BackupError::Refused(format!(
                        "the backup repository {} exists but its wrapped passphrase {} is missing",
                        self.repo_path().display(),
                        path.display()
                    )));
                }
                let (_, wrapped) = keys.generate_for(None).await?;
                std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
                match write_new_private(&path, wrapped.wrapped.as_bytes()) {
                    Ok(()) => wrapped.wrapped,
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(&path)
                            .map_err(io("reading", &path))?
                            .trim()
                            .to_string()
                    }
                    Err(e) => return Err(io("writing", &path)(e)),
                }
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let dek: Dek = keys.unwrap_dek(&wrapped).await?;
        Ok(SecretString::from(hex(dek.expose())))
    }

    /// What the embedded cluster starts with: archiving into this repository, the passphrase in
    /// the postmaster's environment, and pgAudit when installed.
    pub fn settings(&self, passphrase: SecretString, bin_dir: &Path) -> Settings {
        Settings {
            archive_command: Some(format!(
                "{} --config={} --stanza={STANZA} archive-push %p",
                self.pgbackrest.display(),
                self.conf_path().display()
            )),
            pgaudit: embedded::has_pgaudit(bin_dir),
            env: vec![(PASS_ENV, passphrase)],
        }
    }

    /// Create the stanza if the repository has none yet (a first start, a restored directory).
    pub fn ensure_stanza(&self, passphrase: &SecretString) -> Result<(), BackupError> {
        if self
            .repo_path()
            .join("backup")
            .join(STANZA)
            .join("backup.info")
            .exists()
        {
            return Ok(());
        }
        self.run("stanza-create", &[], passphrase).map(|_| ())
    }

    /// Take a backup: `incremental` (changes since the last backup) or full. The repository
    /// then holds it, and older full backups past the retention are expired.
    pub fn backup(
        &self,
        incremental: bool,
        passphrase: &SecretString,
    ) -> Result<BackupSet, BackupError> {
        let kind = if incremental { "incr" } else { "full" };
        self.run("backup", &[&format!("--type={kind}")], passphrase)?;
        self.list(passphrase)?
            .pop()
            .ok_or_else(|| BackupError::Tool {
                what: "info".into(),
                detail: "no backup listed after a backup".into(),
            })
    }

    /// The backups in the repository, oldest first.
    pub fn list(&self, passphrase: &SecretString) -> Result<Vec<BackupSet>, BackupError> {
        let out = self.run("info", &["--output=json"], passphrase)?;
        let info: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| BackupError::Tool {
                what: "info".into(),
                detail: format!("unreadable output: {e}"),
            })?;
        let sets = info
            .as_array()
            .and_then(|stanzas| stanzas.iter().find(|s| s["name"] == STANZA))
            .and_then(|s| s["backup"].as_array())
            .map(|backups| {
                backups
                    .iter()
                    .map(|b| BackupSet {
                        label: b["label"].as_str().unwrap_or_default().to_string(),
                        kind: b["type"].as_str().unwrap_or_default().to_string(),
                        started: b["timestamp"]["start"].as_i64().unwrap_or_default(),
                        stopped: b["timestamp"]["stop"].as_i64().unwrap_or_default(),
                        size: b["info"]["size"].as_u64().unwrap_or_default(),
                        repo_size: b["info"]["repository"]["delta"]
                            .as_u64()
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(sets)
    }

    /// Restore the database as it was at `to` into the fresh data directory `into`, replaying
    /// the archived WAL until then (point-in-time recovery), and copy in the key material it
    /// needs: the file keyring's keys from this data directory when `file_keyring` (with Vault
    /// nothing: the restored directory uses the same Vault). The repository holds neither.
    pub fn restore(
        &self,
        to: chrono::DateTime<chrono::Utc>,
        into: &Path,
        file_keyring: bool,
        passphrase: &SecretString,
    ) -> Result<(), BackupError> {
        // The backup to start from, chosen here rather than by pgBackRest: the newest that had
        // finished before the target (its stop time is in whole seconds, so strictly before the
        // target's second). Replaying from a backup taken after the target would start from data
        // newer than the target, and nothing in recovery would take it back out.
        let sets = self.list(passphrase)?;
        let set = sets
            .iter()
            .rev()
            .find(|s| s.stopped < to.timestamp())
            .ok_or_else(|| {
                BackupError::Refused(format!(
                    "no backup had finished by {}: the oldest finished at {}",
                    to.to_rfc3339(),
                    sets.first()
                        .and_then(|s| chrono::DateTime::from_timestamp(s.stopped, 0))
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "(none: the repository is empty)".into())
                ))
            })?;
        if into.exists()
            && std::fs::read_dir(into)
                .map_err(io("reading", into))?
                .next()
                .is_some()
        {
            return Err(BackupError::Refused(format!(
                "{} is not empty: a restore goes into a fresh data directory",
                into.display()
            )));
        }
        embedded::create_data_dir(into)?;
        let into = std::fs::canonicalize(into).map_err(io("resolving", into))?;
        if into == self.data_dir {
            return Err(BackupError::Refused(
                "a restore goes into a fresh data directory, not the one backed up".into(),
            ));
        }
        // The cluster's user passes through the new directory (as the server's start makes it).
        embedded::own_path(&into, 0o711, None)?;
        let pg_dir = into.join("postgres");
        embedded::own_path(&pg_dir, 0o700, self.user)?;
        let target = to.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        // archive-get runs in the restored cluster, whose directory it must be told.
        let restore_command = format!(
            "{} --config={} --stanza={STANZA} --pg1-path={} archive-get %f \"%p\"",
            self.pgbackrest.display(),
            self.conf_path().display(),
            pg_dir.display()
        );
        self.run(
            "restore",
            &[
                &format!("--pg1-path={}", pg_dir.display()),
                &format!("--set={}", set.label),
                "--type=time",
                &format!("--target={target}"),
                "--target-action=promote",
                &format!("--recovery-option=restore_command={restore_command}"),
            ],
            passphrase,
        )?;
        if file_keyring {
            copy_keyring(&self.data_dir, &into)?;
        }
        // Replay to the target now, with the passphrase for `archive-get` in the postmaster's
        // environment and no archiving: the server started on the directory later archives
        // into that directory's own repository, from a primary.
        let settings = Settings {
            env: vec![(PASS_ENV, passphrase.clone())],
            ..Settings::default()
        };
        let mut cluster = Cluster::start_with(&into, None, Ownership::Exclusive, &settings)?;
        cluster.wait_for_promotion(std::time::Duration::from_secs(1800))?;
        // What was replayed must end at or before the target: the last transaction applied is
        // checked, not assumed (a backup or archive that does not fit would show up here).
        let last = cluster.query_value(
            "postgres",
            "SELECT COALESCE(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '')",
        )?;
        if let Ok(last) = last.parse::<f64>() {
            let target = to.timestamp_micros() as f64 / 1e6;
            if last > target {
                cluster.stop()?;
                return Err(BackupError::Tool {
                    what: "restore".into(),
                    detail: format!(
                        "recovery replayed a transaction {:.3} s after the target; the restored \
                         directory is not the database at {}",
                        last - target,
                        to.to_rfc3339()
                    ),
                });
            }
        }
        cluster.stop()?;
        // Stopped out of recovery and cleanly: its next start replays nothing (anything else
        // would replay what `pg_wal` holds past the target).
        let state = cluster.control_state()?;
        if state != "shut down" {
            return Err(BackupError::Tool {
                what: "restore".into(),
                detail: format!(
                    "the restored cluster stopped as \"{state}\", not \"shut down\": its next \
                     start would replay past the target"
                ),
            });
        }
        Ok(())
    }

    /// Run `pgbackrest <command>` on the stanza as the cluster's user, with the passphrase in its
    /// environment; its standard output, or its error (pgBackRest's messages name no secret).
    fn run(
        &self,
        command: &str,
        args: &[&str],
        passphrase: &SecretString,
    ) -> Result<Vec<u8>, BackupError> {
        let mut cmd = Command::new(&self.pgbackrest);
        embedded::run_as_cluster_user(&mut cmd, self.user, &self.conf_dir());
        let out = cmd
            .current_dir(self.conf_dir())
            .arg(format!("--config={}", self.conf_path().display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .arg(command)
            .env(PASS_ENV, passphrase.expose_secret())
            .stdin(Stdio::null())
            .output()
            .map_err(io("running", &self.pgbackrest))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            Err(BackupError::Tool {
                what: command.into(),
                detail,
            })
        }
    }
}

/// The file keyring's master key and patients' KEKs, copied from `from` to `to` (mode 0600): the
/// keys as they are now, so a patient erased since the backup stays erased in the restore.
fn copy_keyring(from: &Path, to: &Path) -> Result<(), BackupError> {
    let master = from.join("master.key");
    let bytes = std::fs::read(&master).map_err(io("reading", &master))?;
    write_new_private(&to.join("master.key"), &bytes).map_err(io("writing", to))?;
    let patients = from.join("patient-keys");
    if patients.is_dir() {
        let dest = to.join("patient-keys");
        embedded::own_path(&dest, 0o700, None)?;
        for entry in std::fs::read_dir(&patients).map_err(io("reading", &patients))? {
            let entry = entry.map_err(io("reading", &patients))?;
            let bytes = std::fs::read(entry.path()).map_err(io("reading", &entry.path()))?;
            write_new_private(&dest.join(entry.file_name()), &bytes)
                .map_err(io("writing", &dest))?;
        }
    }
    Ok(())
}

fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new_private(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replacing", path))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
