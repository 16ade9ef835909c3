//! `audit archive` and `audit verify --archive`: audit retention from the command line. The work
//! is the core's (`Store::archive_audit`, `Store::verify_audit_archive`), which checks the
//! operator and audits it; this prints what it did.

use anyhow::{bail, Context};
use carapace_core::access::AccessContext;
use carapace_core::audit::ChainReport;
use carapace_core::config::Config;
use carapace_core::core::Core;
use std::path::Path;

/// `SEQ:LINK`, as `audit verify` and `audit archive` print anchors.
pub fn parse_anchor(text: &str) -> anyhow::Result<(i64, Vec<u8>)> {
    text.split_once(':')
        .and_then(|(seq, link)| Some((seq.parse::<i64>().ok()?, hex::decode(link).ok()?)))
        .context("--anchor takes SEQ:LINK as printed by `audit verify`")
}

/// Archive the events past `CARAPACE_AUDIT_RETENTION_DAYS`, one segment after another until none
/// is left (dry: say what the next run would take).
pub async fn archive(core: &Core, ctx: &AccessContext, dry_run: bool) -> anyhow::Result<()> {
    let retention = Config::from_env()?.retention;
    if retention.audit_days == 0 {
        println!("audit retention is 0 (CARAPACE_AUDIT_RETENTION_DAYS): events are kept for ever");
        return Ok(());
    }
    let mut runs = 0;
    loop {
        let report = core
            .store
            .archive_audit(ctx, &retention, core.store.now(), dry_run)
            .await
            .context("archiving the audit trail")?;
        let Some((first, last)) = report.segment else {
            if runs == 0 {
                println!(
                    "no audit events older than {} days: nothing to archive",
                    retention.audit_days
                );
            }
            return Ok(());
        };
        runs += 1;
        if dry_run {
            println!(
                "would archive events {first}-{last} ({} events) to {}: {} removed, {} kept \
                 (patients under a legal hold){}",
                report.archived,
                retention.archive_dir.display(),
                report.removed,
                report.held_kept,
                if report.more {
                    "; more after them in later segments"
                } else {
                    ""
                }
            );
            return Ok(());
        }
        println!(
            "archived events {first}-{last} ({} events) to {}",
            report.archived,
            report
                .file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        println!("  sha256: {}", report.sha256.as_deref().unwrap_or(""));
        println!(
            "  {} removed from the database, {} kept (patients under a legal hold){}",
            report.removed,
            report.held_kept,
            if report.released > 0 {
                format!(
                    "; {} kept earlier removed, their hold ended",
                    report.released
                )
            } else {
                String::new()
            }
        );
        if let Some((seq, link)) = &report.anchor {
            println!(
                "  the live trail now starts after {seq}:{} (keep the file and this anchor elsewhere)",
                hex::encode(link)
            );
        }
        if !report.more {
            return Ok(());
        }
    }
}

/// Check an archive file on its own (exit status 1 if it does not hold).
pub async fn verify(
    core: &Core,
    ctx: &AccessContext,
    file: &Path,
    anchor: Option<&str>,
) -> anyhow::Result<()> {
    let anchor = anchor.map(parse_anchor).transpose()?;
    let report = core
        .store
        .verify_audit_archive(ctx, file, anchor.as_ref())
        .await
        .with_context(|| format!("verifying the audit archive {}", file.display()))?;
    let name = report.file_name.as_deref().unwrap_or("the file");
    if let Some(why) = &report.broken {
        bail!(
            "audit archive BROKEN: {name}: {why}{}",
            match report.checked {
                0 => String::new(),
                n => format!(" ({n} events verified before it)"),
            }
        );
    }
    let (first, last) = report.segment.unwrap_or_default();
    println!(
        "audit archive intact: {name}, events {first}-{last}: {} events verified, {} of them \
         still in the database (legal holds) and identical",
        report.checked, report.kept
    );
    println!(
        "its end joins {}",
        report.continues_into.as_deref().unwrap_or("nothing")
    );
    if let Some((seq, _)) = &anchor {
        if report.anchor_checked {
            println!("anchor {seq} found in the archive and unchanged");
        } else {
            println!("anchor {seq} is not in this archive: not checked");
        }
    }
    Ok(())
}

/// What `audit verify` adds once events have been archived: where the live trail starts, what
/// is archived and kept, and where an anchor given lies.
pub fn print_trail_start(report: &ChainReport) {
    if report.archives == 0 && report.kept == 0 {
        return;
    }
    println!(
        "live trail starts at event {} after {} archived segment(s), which join up to it \
         (`audit verify --archive FILE` checks each file); {} archived events kept for legal \
         holds, each verified by its tag",
        report.start.0, report.archives, report.kept
    );
    if let Some(file) = &report.anchor_archived {
        println!(
            "the anchor lies in the archive {file}: accepted here, proven by \
             `audit verify --archive {file} --anchor SEQ:LINK`"
        );
    }
}
