//! Retention: how long what is no longer current is kept, and the purge that removes what is past
//! its time — non-current resource versions by type, and the audit trail's oldest events (archived
//! first, see `audit_archive.rs`). A patient under a legal hold is exempt from both; the database
//! functions that remove versions check holds themselves (`migrations/0015_retention_erasure.sql`).

use super::{HistoryPurge, Store, StoreError};
use crate::access::AccessContext;
use crate::fhir::ResourceType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The retention policy (`CARAPACE_RETENTION_HISTORY`, `CARAPACE_AUDIT_RETENTION_DAYS`,
/// `CARAPACE_AUDIT_ARCHIVE_DIR`, `CARAPACE_RETENTION_INTERVAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Days a non-current version of a type is kept after a newer version replaced it.
    pub history: HashMap<ResourceType, u32>,
    /// The same for every type `history` does not name; `None`: kept for ever.
    pub history_default: Option<u32>,
    /// Days an audit event is kept in the database before it is archived and removed; 0: for ever.
    pub audit_days: u32,
    /// Where archived audit segments are written.
    pub archive_dir: PathBuf,
    /// Seconds between the server's purge runs; 0: the server never purges (the console's
    /// `retention run` still does).
    pub interval_seconds: u64,
}

/// HIPAA's documentation retention: six years; seven is the common hospital policy.
pub const DEFAULT_AUDIT_DAYS: u32 = 2555;

impl RetentionConfig {
    /// Keep every version; audit events for 2,555 days, archived under `data_dir`.
    pub fn under(data_dir: &Path) -> RetentionConfig {
        RetentionConfig {
            history: HashMap::new(),
            history_default: None,
            audit_days: DEFAULT_AUDIT_DAYS,
            archive_dir: data_dir.join("audit-archive"),
            interval_seconds: 3600,
        }
    }

    /// `Observation=730,DiagnosticReport=3650,*=3650`: days per type, `*` for the others.
    pub fn parse_history(text: &str) -> Result<(HashMap<ResourceType, u32>, Option<u32>), String> {
        let mut history = HashMap::new();
        let mut default = None;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, days) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not Type=days"))?;
            let days: u32 = days
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: days must be a whole number"))?;
            let name = name.trim();
            if name == "*" {
                if default.replace(days).is_some() {
                    return Err("`*` is given twice".into());
                }
                continue;
            }
            let ty = ResourceType::parse(name)
                .ok_or_else(|| format!("`{name}` is not an R4 resource type"))?;
            if history.insert(ty, days).is_some() {
                return Err(format!("`{name}` is given twice"));
            }
        }
        Ok((history, default))
    }

    /// Days a non-current version of `ty` is kept, `None` for ever.
    pub fn history_days(&self, ty: ResourceType) -> Option<u32> {
        self.history.get(&ty).copied().or(self.history_default)
    }
}

/// What one retention run did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    pub history: HistoryPurge,
    /// The audit trail's oldest segment past its retention, archived then removed.
    pub audit: super::audit_archive::AuditArchiveReport,
    /// Binary uploads begun over a day ago that never became a version, removed (none in a dry
    /// run).
    pub unfinished_uploads: u64,
}

impl Store {
    /// One retention run: history past its time, then the audit trail's oldest segment past its
    /// own (archived first; at most one segment a run). The server runs it every `interval_seconds`;
    /// `carapace-console retention run [--dry-run]` on demand (which also finishes erasures whose
    /// key destruction failed: the server's key-provider credentials may not delete keys).
    pub async fn run_retention(
        &self,
        ctx: &AccessContext,
        config: &RetentionConfig,
        dry_run: bool,
    ) -> Result<RetentionReport, StoreError> {
        let history = self.purge_history(ctx, config, dry_run).await?;
        let audit = self
            .archive_audit(ctx, config, self.clock.now(), dry_run)
            .await?;
        let unfinished_uploads = if dry_run {
            0
        } else {
            self.remove_unfinished_uploads(self.clock.now() - chrono::Duration::days(1))
                .await?
        };
        Ok(RetentionReport {
            history,
            audit,
            unfinished_uploads,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn history_retention_reads_types_and_a_default() {
        let (h, d) = RetentionConfig::parse_history("Observation=730, *=3650,Encounter=0").unwrap();
        assert_eq!(
            h.get(&ResourceType::parse("Observation").unwrap()),
            Some(&730)
        );
        assert_eq!(h.get(&ResourceType::parse("Encounter").unwrap()), Some(&0));
        assert_eq!(d, Some(3650));
        let mut c = RetentionConfig::under(Path::new("/d"));
        (c.history, c.history_default) = (h, d);
        assert_eq!(
            c.history_days(ResourceType::parse("Patient").unwrap()),
            Some(3650)
        );
        assert!(RetentionConfig::parse_history("Observaton=1").is_err());
        assert!(RetentionConfig::parse_history("Observation=-1").is_err());
        assert!(RetentionConfig::parse_history("Observation").is_err());
        assert!(RetentionConfig::parse_history("*=1,*=2").is_err());
        assert_eq!(
            RetentionConfig::parse_history("").unwrap(),
            (HashMap::new(), None)
        );
    }
}
