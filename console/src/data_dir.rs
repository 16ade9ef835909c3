//! The server's data directory, as the console finds it. The console works on the server's
//! embedded PostgreSQL cluster and file key provider but never creates them: run from another
//! directory it would otherwise start a second, empty cluster under a fresh master key and then
//! refuse every sign-in. Only `carapace-server` initialises a data directory.

use carapace_core::config::Config;
use std::path::{Path, PathBuf};

/// What the data directory must already hold, for the parts of the configuration that live there:
/// (path inside it, what that is).
fn needed(config: &Config) -> Vec<(&'static str, &'static str)> {
    let mut needed = Vec::new();
    if config.database_url.is_none() {
        needed.push((
            "postgres/PG_VERSION",
            "initialised embedded PostgreSQL cluster",
        ));
    }
    if config.vault.is_none() {
        needed.push(("master.key", "master key of the file key provider"));
    }
    needed
}

/// `dir` as an absolute path (symbolic links resolved when it exists), for messages.
fn absolute(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// Refuse, before anything is created, when the configured data directory does not hold what the
/// server made there: the message names the absolute path looked at and how to point the console
/// at the server's.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let dir = absolute(&config.data_dir);
    let needed = needed(config);
    if !needed.is_empty() && dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "CARAPACE_DATA_DIR is {}, which is not a directory: point it at the server's data \
             directory",
            dir.display()
        );
    }
    for (file, what) in needed {
        let path = dir.join(file);
        match path.try_exists() {
            Ok(true) => {}
            Ok(false) => anyhow::bail!(
                "no Carapace data directory at {} (it holds no {what}: {} is missing). The console \
                 works on the data directory carapace-server made and never creates one: run it \
                 from the directory the server runs in, or point it at the server's with \
                 CARAPACE_DATA_DIR=/path/to/carapace-data (or the same CARAPACE_DATABASE_URL and \
                 CARAPACE_VAULT_ADDR and Vault credentials as the server).",
                dir.display(),
                path.display()
            ),
            Err(e) => anyhow::bail!(
                "cannot read {} ({e}): run the console as the user carapace-server runs as",
                path.display()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check;
    use carapace_core::config::Config;

    fn config(vars: &[(&str, String)]) -> Config {
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap()
    }

    #[test]
    fn a_data_directory_is_needed_only_for_what_lives_there() {
        let dir = tempfile_dir();
        let missing = dir.join("nowhere");
        let data = ("CARAPACE_DATA_DIR", missing.display().to_string());
        // Neither the database nor the keys live there: nothing is needed.
        let elsewhere = config(&[
            data.clone(),
            ("CARAPACE_DATABASE_URL", "postgres://u@127.0.0.1/db".into()),
            ("CARAPACE_VAULT_ADDR", "http://127.0.0.1:8200".into()),
            ("CARAPACE_VAULT_TOKEN", "t".into()),
        ]);
        assert!(check(&elsewhere).is_ok());
        // The file key provider lives there: its master key is needed.
        let keys_there = config(&[
            data,
            ("CARAPACE_DATABASE_URL", "postgres://u@127.0.0.1/db".into()),
        ]);
        let err = check(&keys_there).unwrap_err().to_string();
        assert!(
            err.contains("master.key") && err.contains("CARAPACE_DATA_DIR="),
            "{err}"
        );
        // A file where the directory should be says so.
        let file = dir.join("a-file");
        std::fs::write(&file, "").unwrap();
        let err = check(&config(&[(
            "CARAPACE_DATA_DIR",
            file.display().to_string(),
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory of this test's own.
    fn tempfile_dir() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("carapace-console-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
