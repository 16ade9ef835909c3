//! The end of a record's life, from the command line: legal holds, retention runs, hard-deleting a
//! resource's old versions, and erasing a patient. Each calls one audited core operation; the
//! core and the database decide (holds are enforced there).

use crate::tui::text::inert;
use anyhow::{bail, Context};
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::store::{RetentionConfig, Store};
use clap::Subcommand;
use std::io::BufRead;

#[derive(Subcommand)]
pub enum PatientCommand {
    /// Erase a patient's record by crypto-shredding: their resources and every version go, their
    /// data key's row goes, tombstones keep the ids answering 410, and their key-encryption key is
    /// destroyed in the key provider, so backups taken before cannot open it either. Audit events
    /// stay. Refused under a legal hold or while a user account belongs to the patient. Asks for
    /// the patient id again (or `--confirm ID`).
    Erase {
        /// `Patient/<id>`.
        patient: String,
        /// The patient's id, typed again (for scripts; otherwise asked for).
        #[arg(long, value_name = "ID")]
        confirm: Option<String>,
    },
    /// After restoring a backup: erase again, in the database, every patient whose
    /// key-encryption key the key provider no longer has (they were erased after the backup).
    /// Lists them and asks for their number (or `--confirm N`); `--dry-run` only lists.
    Reconcile {
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_name = "N")]
        confirm: Option<usize>,
    },
}

#[derive(Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold: the patient's data and audit events are exempt from every purge and
    /// from erasure until it is released.
    Add {
        /// `Patient/<id>`.
        patient: String,
        /// Why (a case number, a request); kept sealed.
        #[arg(long)]
        reason: String,
    },
    /// Holds in force.
    List,
    /// Release a hold by its number (from `hold list`).
    Release { id: i64 },
}

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Purge what is past its retention now (what the server does every
    /// CARAPACE_RETENTION_INTERVAL seconds); `--dry-run` counts without removing.
    Run {
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn patient(
    store: &Store,
    ctx: &AccessContext,
    command: PatientCommand,
) -> anyhow::Result<()> {
    let (patient, confirm) = match command {
        PatientCommand::Erase { patient, confirm } => (patient, confirm),
        PatientCommand::Reconcile { dry_run, confirm } => {
            let gone = store.erasures_to_reconcile(ctx).await?;
            if gone.is_empty() {
                println!(
                    "every patient's key-encryption key is in the key provider: nothing to do"
                );
                return Ok(());
            }
            for scope in &gone {
                println!("{scope}: its key-encryption key is gone (erased after this backup)");
            }
            if dry_run {
                return Ok(());
            }
            let typed = match confirm {
                Some(n) => n.to_string(),
                None => {
                    eprint!("Erase these {} again? Type their number: ", gone.len());
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the confirmation")?;
                    line.trim().to_string()
                }
            };
            if typed != gone.len().to_string() {
                bail!("the number typed does not match; nothing was erased");
            }
            let mut failed = 0;
            for (scope, result) in store.reconcile_erasures(ctx, &gone).await? {
                match result {
                    Ok(_) => println!("{scope}: erased again (410 from now on)"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{scope}: not erased: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} could not be erased again");
            }
            return Ok(());
        }
    };
    let scope = carapace_core::store::patient_scope(&patient)?;
    let id = scope.trim_start_matches("Patient/");
    let typed = match confirm {
        Some(typed) => typed,
        None => {
            eprint!("This erases {scope} for good. Type the patient id to confirm: ");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the confirmation")?;
            line.trim().to_string()
        }
    };
    if typed != id {
        bail!("the id typed does not match; nothing was erased");
    }
    let erased = store.erase_patient(ctx, &scope).await?;
    println!(
        "{scope} erased: {} resources, {} versions removed; ids kept as tombstones (410)",
        erased.resources, erased.versions
    );
    if erased.kek_destroyed {
        match erased.main_key_until {
            None => println!("its key-encryption key is destroyed: backups taken before cannot open it"),
            Some(since) => println!(
                "its key-encryption key is destroyed; WARNING: its data key was wrapped by the main \
                 key until {}: backups taken before then can still open it",
                since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        }
    } else {
        println!(
            "WARNING: its data key was wrapped by the main key (not yet moved under a key of its \
             own): backups taken before this erasure can still open it"
        );
    }
    Ok(())
}

pub async fn hold(store: &Store, ctx: &AccessContext, command: HoldCommand) -> anyhow::Result<()> {
    match command {
        HoldCommand::Add { patient, reason } => {
            let id = store.place_hold(ctx, &patient, &reason).await?;
            println!("legal hold {id} placed on {patient}");
        }
        HoldCommand::List => {
            let holds = store.holds(ctx).await?;
            if holds.is_empty() {
                println!("no legal holds in force");
            }
            for h in holds {
                println!(
                    "{:>5}  {:<44}  {}  by {}  {}",
                    h.id,
                    h.patient,
                    h.placed_at.format("%Y-%m-%d %H:%M"),
                    inert(&h.placed_by, 64),
                    inert(&h.reason, 200)
                );
            }
        }
        HoldCommand::Release { id } => {
            store.release_hold(ctx, id).await?;
            println!("legal hold {id} released");
        }
    }
    Ok(())
}

pub async fn retention(
    store: &Store,
    ctx: &AccessContext,
    config: &RetentionConfig,
    command: RetentionCommand,
) -> anyhow::Result<()> {
    let RetentionCommand::Run { dry_run } = command;
    let report = store.run_retention(ctx, config, dry_run).await?;
    let verb = if dry_run { "due" } else { "purged" };
    if report.history.per_type.is_empty() {
        println!("history: nothing {verb}");
    }
    for (ty, n) in &report.history.per_type {
        println!("history: {ty}: {n} non-current versions {verb}");
    }
    let audit = &report.audit;
    match audit.segment {
        None => println!("audit: nothing {verb}"),
        Some((first, last)) => println!(
            "audit: events {first}-{last}: {} archived{}, {} removed, {} kept under legal hold{}",
            audit.archived,
            audit
                .file
                .as_ref()
                .map(|f| format!(" to {}", f.display()))
                .unwrap_or_default(),
            audit.removed,
            audit.held_kept,
            if audit.more {
                " (more are due: run again, or `audit archive`)"
            } else {
                ""
            }
        ),
    }
    if !dry_run {
        let (done, failed) = store.finish_erasures(ctx).await?;
        if done > 0 {
            println!("erasures: {done} key-encryption keys destroyed (their destruction had failed before)");
        }
        if failed > 0 {
            bail!(
                "erasures: {failed} key-encryption keys could not be destroyed yet; run this again"
            );
        }
    }
    Ok(())
}

/// `expunge Type/id`: every non-current version of one resource, now.
pub async fn expunge(store: &Store, ctx: &AccessContext, reference: &str) -> anyhow::Result<()> {
    let (ty, id) = reference
        .split_once('/')
        .and_then(|(t, i)| Some((ResourceType::parse(t)?, ResourceId::parse(i).ok()?)))
        .with_context(|| format!("`{reference}` is not Type/id"))?;
    let n = store.expunge_history(ctx, ty, &id).await?;
    println!("{reference}: {n} non-current versions removed; the current version stays");
    Ok(())
}
