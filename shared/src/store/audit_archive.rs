//! Audit retention: archive the oldest segment of the audit chain to a sealed file, then remove
//! its events from the table (all but those of patients under a legal hold) and start the live
//! chain after it; and verify an archive file on its own.
//!
//! Archive first: the segment is read in chain order and checked link by link as it is written
//! (a broken chain is never archived), the file is synced and renamed, and only then, in one
//! transaction, `carapace_audit_purge` (`migrations/0016_audit_archive.sql`) records the archive
//! with its SHA-256 and anchors, removes the events and moves the start, and the run's AuditEvent
//! commits with it. The database checks the segment itself: a caller cannot remove what no
//! archive covers, events younger than the purge floor, or a held patient's events.

use super::audited::admin_record;
use super::{Store, StoreError};
use crate::access::{AccessContext, Denied, Role};
use crate::audit::{self, ArchiveHeader, ArchivedEvent, Outcome, SegmentCheck};
use crate::crypto::chunks::{ChunkError, ChunkReader, ChunkWriter};
use crate::crypto::Dek;
use crate::store::RetentionConfig;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

/// Key scope of the data key archive files are sealed under.
const ARCHIVE_SCOPE: &str = "audit/archive";

/// Purpose bound into every chunk of an archive file (its object is the file's name).
const PURPOSE: &str = "carapace-audit-archive";

/// Plaintext per sealed chunk.
const CHUNK: usize = 1 << 20;

/// Events in one archive file at most (one purge transaction); a longer backlog takes more runs.
const MAX_EVENTS: u64 = 200_000;

/// Events read from the table at a time while writing.
const PAGE: i64 = 1000;

/// What an archive run did (or, dry, would do). No PHI: places, counts, a path and a digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditArchiveReport {
    pub dry_run: bool,
    /// The segment (sequence numbers), when there was one past retention.
    pub segment: Option<(i64, i64)>,
    /// Events written to the archive (would be, dry).
    pub archived: u64,
    /// Events of the segment removed from the table.
    pub removed: u64,
    /// Events of the segment kept in the table: their patients are under a legal hold.
    pub held_kept: u64,
    /// Events kept by earlier runs whose hold has ended, removed now (they are in their archive).
    pub released: u64,
    pub file: Option<PathBuf>,
    /// SHA-256 of the file (hex), as recorded in `audit_archives`.
    pub sha256: Option<String>,
    /// The new start anchor (`SEQ:LINK` of the segment's last event): where the live trail goes on.
    pub anchor: Option<(i64, Vec<u8>)>,
    /// More events are past retention than one run takes: run again.
    pub more: bool,
}

/// What checking an archive file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveCheckReport {
    /// The archive the file's SHA-256 is recorded for (its file name), if any.
    pub file_name: Option<String>,
    pub segment: Option<(i64, i64)>,
    /// Events whose tag and link were recomputed.
    pub checked: u64,
    /// Events of the segment still in the table (legal holds), found identical to the file's.
    pub kept: u64,
    /// What the segment's end joins: the next archive's file name, or the live trail.
    pub continues_into: Option<String>,
    /// An anchor given was found in the segment, matching.
    pub anchor_checked: bool,
    /// The first problem: what is wrong (and where).
    pub broken: Option<String>,
}

impl Store {
    /// Archive the audit trail's oldest events past `cfg.audit_days` (counted back from `now`)
    /// and remove them (see the module comment); `dry_run` only counts. Administrators only (the
    /// server's retention task runs as its own operator context, `AccessContext::operator`); a
    /// refusal or failure is audited, and a run that archived is audited with its counts in its
    /// transaction. `audit_days` 0 keeps every event.
    pub async fn archive_audit(
        &self,
        ctx: &AccessContext,
        cfg: &RetentionConfig,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<AuditArchiveReport, StoreError> {
        if ctx.role != Role::Admin {
            self.record_admin(ctx, "audit-archive", false).await?;
            return Err(Denied::AdministratorsOnly.into());
        }
        let result = self.archive_oldest(ctx, cfg, now, dry_run).await;
        self.audit_admin_result(ctx, "audit-archive", result).await
    }

    async fn archive_oldest(
        &self,
        ctx: &AccessContext,
        cfg: &RetentionConfig,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<AuditArchiveReport, StoreError> {
        let mut report = AuditArchiveReport {
            dry_run,
            ..Default::default()
        };
        if cfg.audit_days == 0 {
            return Ok(report);
        }
        let floor: i32 = sqlx::query_scalar("SELECT days FROM audit_purge_floor")
            .fetch_one(&self.pool)
            .await?;
        if i64::from(cfg.audit_days) < i64::from(floor) {
            return Err(StoreError::Conflict(format!(
                "audit retention ({} days) is below the database's purge floor ({floor} days, \
                 table audit_purge_floor): keep events longer, or have the database owner lower \
                 the floor",
                cfg.audit_days
            )));
        }
        self.chain_audit_with(true).await?;
        let cutoff = now - chrono::Duration::days(i64::from(cfg.audit_days));
        // The keys first: the run's one connection is then all it needs (a pool of one works).
        let keys = match dry_run {
            true => None,
            false => Some((
                self.dek_for_scope(ARCHIVE_SCOPE).await?.1,
                self.audit_chain_key().await?,
            )),
        };
        // One run at a time (the server's task, a console): a run holds this lock from before it
        // reads the segment until its purge commits, so no two write the same file. The same
        // transaction reads the segment (a statement at a time: no snapshot held while the file
        // is written) and commits the purge.
        let mut tx = self.begin_internal().await?;
        if !dry_run {
            let alone: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('carapace-audit-archive', 0))",
            )
            .fetch_one(&mut *tx)
            .await?;
            if !alone {
                return Err(StoreError::Conflict(
                    "another audit archive run is in progress: try again once it is done".into(),
                ));
            }
        }
        let start = sqlx::query("SELECT seq, link FROM audit_chain_start")
            .fetch_one(&mut *tx)
            .await?;
        let (start_seq, start_link): (i64, Vec<u8>) =
            (start.try_get("seq")?, start.try_get("link")?);
        let segment = audit::archivable(&mut tx, start_seq, cutoff, MAX_EVENTS).await?;
        // The end link is known before the walk (the table's link of the last event); writing
        // proves the segment reaches it.
        let end_link: Option<Vec<u8>> = match &segment {
            None => None,
            Some(s) => {
                sqlx::query_scalar(
                    "SELECT link FROM audit_links WHERE seq = $1
                     UNION ALL SELECT link FROM audit_events WHERE seq = $1",
                )
                .bind(s.last_seq)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let (Some(segment), Some(end_link)) = (segment, end_link) else {
            drop(tx);
            if dry_run {
                self.record_admin(ctx, "audit-archive-dry-run:events=0", true)
                    .await?;
            }
            return Ok(report);
        };
        report.segment = Some((segment.first_seq, segment.last_seq));
        report.archived = segment.events;
        report.held_kept = segment.held;
        report.removed = segment.events - segment.held;
        report.more = segment.more;
        let Some((dek, chain_key)) = keys else {
            drop(tx);
            let what = format!(
                "audit-archive-dry-run:{}-{}:events={}:held={}",
                segment.first_seq, segment.last_seq, segment.events, segment.held
            );
            self.record_admin(ctx, &what, true).await?;
            return Ok(report);
        };
        let name = format!(
            "audit-{}-{}.ndjson.sealed",
            segment.first_seq, segment.last_seq
        );
        let path = cfg.archive_dir.join(&name);
        let written = write_archive(
            &mut tx,
            &cfg.archive_dir,
            &name,
            (&dek, &chain_key),
            segment,
            (&start_link, &end_link),
        )
        .await;
        let sha256 = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(cfg.archive_dir.join(format!("{name}.part")));
                return Err(e);
            }
        };

        // One transaction: the archive's record, the removal, the new start and the run's event.
        let purge = async {
            let row = sqlx::query(
                "SELECT archive_id, removed, released, kept
                   FROM carapace_audit_purge($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(segment.first_seq)
            .bind(segment.last_seq)
            .bind((segment.first_seq > 1).then_some(&start_link))
            .bind(&end_link)
            .bind(cutoff)
            .bind(&name)
            .bind(sha256.as_slice())
            .bind(now)
            .bind(&ctx.principal)
            .fetch_one(&mut *tx)
            .await
            .map_err(refused_by_database)?;
            let counts: (i64, i64, i64, i64) = (
                row.try_get("archive_id")?,
                row.try_get("removed")?,
                row.try_get("released")?,
                row.try_get("kept")?,
            );
            let what = format!(
                "audit-archive:{}-{}:archive={}:events={}:removed={}:released={}:held={}",
                segment.first_seq,
                segment.last_seq,
                counts.0,
                segment.events,
                counts.1,
                counts.2,
                counts.3
            );
            self.audit_in(&mut tx, ctx, &admin_record(self, &what, Outcome::Success))
                .await?;
            Ok::<_, StoreError>(counts)
        }
        .await;
        let (_, removed, released, kept) = match purge {
            Ok(done) => done,
            Err(e) => {
                // Nothing was removed: the file records nothing the table does not still hold.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        // (Should the commit fail, the file stays: whether the purge committed is not known here,
        // and an archive too many is harmless where one too few is not.)
        tx.commit().await?;
        report.removed = u64::try_from(removed).unwrap_or(0);
        report.released = u64::try_from(released).unwrap_or(0);
        report.held_kept = u64::try_from(kept).unwrap_or(0);
        report.file = Some(path);
        report.sha256 = Some(audit::to_hex(&sha256));
        report.anchor = Some((segment.last_seq, end_link));
        Ok(report)
    }

    /// Check an archive file on its own: its SHA-256 is recorded in `audit_archives`; it opens
    /// (every sealed chunk, in order, bound to its name); its header is the record's; every
    /// event's tag and link recompute from the start link to the end link; events of it still in
    /// the table (legal holds) are the file's; and its end link is where the next archive, or
    /// the live trail, starts. With `anchor` in the segment, the event there must be the anchor.
    /// Administrators only; audited with its outcome.
    pub async fn verify_audit_archive(
        &self,
        ctx: &AccessContext,
        file: &Path,
        anchor: Option<&(i64, Vec<u8>)>,
    ) -> Result<ArchiveCheckReport, StoreError> {
        if ctx.role != Role::Admin {
            self.record_admin(ctx, "audit-verify-archive", false)
                .await?;
            return Err(Denied::AdministratorsOnly.into());
        }
        let result = self.check_archive(file, anchor).await;
        let ok = matches!(&result, Ok(r) if r.broken.is_none());
        let what = match &result {
            Ok(ArchiveCheckReport {
                file_name: Some(name),
                ..
            }) => format!("audit-verify-archive:{name}"),
            _ => "audit-verify-archive".to_string(),
        };
        self.record_admin(ctx, &what, ok).await?;
        result
    }

    async fn check_archive(
        &self,
        file: &Path,
        anchor: Option<&(i64, Vec<u8>)>,
    ) -> Result<ArchiveCheckReport, StoreError> {
        let mut report = ArchiveCheckReport::default();
        let sha256 = sha256_of(file).map_err(io_error)?;
        let Some(row) = sqlx::query(
            "SELECT id, first_seq, last_seq, start_link, end_link, events, file_name
               FROM audit_archives WHERE sha256 = $1",
        )
        .bind(&sha256)
        .fetch_optional(&self.pool)
        .await?
        else {
            report.broken = Some(
                "no archive of this audit trail has this file's SHA-256 (the file was changed, or \
                 is not one of this trail's archives)"
                    .into(),
            );
            return Ok(report);
        };
        let name: String = row.try_get("file_name")?;
        let (first, last): (i64, i64) = (row.try_get("first_seq")?, row.try_get("last_seq")?);
        let start_link: Option<Vec<u8>> = row.try_get("start_link")?;
        let end_link: Vec<u8> = row.try_get("end_link")?;
        let events: i64 = row.try_get("events")?;
        report.file_name = Some(name.clone());
        report.segment = Some((first, last));

        // Events of the segment still in the table: each must be the file's, to the byte.
        let kept_rows = sqlx::query(
            "SELECT l.seq, e.tag, l.link FROM audit_links l JOIN audit_events e ON e.id = l.event_id
              WHERE l.seq BETWEEN $1 AND $2
             UNION ALL
             SELECT e.seq, e.tag, e.link FROM audit_events e WHERE e.seq BETWEEN $1 AND $2",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&mut *self.begin_internal().await?)
        .await?;
        let mut kept = std::collections::HashMap::new();
        for r in &kept_rows {
            let seq: i64 = r.try_get("seq")?;
            let tag: Option<Vec<u8>> = r.try_get("tag")?;
            let link: Vec<u8> = r.try_get("link")?;
            kept.insert(seq, (tag, link));
        }

        let chain_key = self.audit_chain_key().await?;
        let (_, dek) = self.dek_for_scope(ARCHIVE_SCOPE).await?;
        let input = io::BufReader::new(File::open(file).map_err(io_error)?);
        let mut reader = ChunkReader::new(input, &dek, PURPOSE, name.clone());
        let mut lines = Lines::default();
        let mut header: Option<ArchiveHeader> = None;
        let mut check = SegmentCheck::new(
            &chain_key,
            first,
            start_link
                .clone()
                .unwrap_or_else(|| audit::GENESIS_LINK.to_vec()),
        );
        let mut anchor_seen = false;
        loop {
            let chunk = match reader.next_chunk() {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(ChunkError::Integrity) => {
                    report.broken = Some(
                        "the file failed its integrity check (its sealed chunks were changed, \
                         cut, reordered or moved)"
                            .into(),
                    );
                    return Ok(report);
                }
                Err(ChunkError::Io(e)) => return Err(io_error(e)),
            };
            for line in lines.feed(&chunk) {
                let problem = match &header {
                    None => match serde_json::from_slice::<ArchiveHeader>(&line) {
                        Ok(h)
                            if h.format == audit::ARCHIVE_FORMAT
                                && (h.first_seq, h.last_seq) == (first, last)
                                && h.start_link == start_link.as_deref().map(audit::to_hex)
                                && h.end_link == audit::to_hex(&end_link)
                                && i64::try_from(h.events).ok() == Some(events) =>
                        {
                            header = Some(h);
                            None
                        }
                        _ => Some("its header is not the archive's record".to_string()),
                    },
                    Some(_) => match serde_json::from_slice::<ArchivedEvent>(&line) {
                        Err(_) => Some(format!(
                            "the line after event {} is not an event",
                            check.next_seq() - 1
                        )),
                        Ok(event) => match check.next(&event) {
                            Err((at, why)) => Some(format!("event {at}: {why}")),
                            Ok(()) => {
                                if let Some((tag, link)) = kept.remove(&event.seq) {
                                    if tag != event.tag_bytes().filter(|_| !event.own_row)
                                        || Some(link) != event.link_bytes()
                                    {
                                        report.broken = Some(format!(
                                            "event {}: the event kept in the table differs from \
                                             the archive's",
                                            event.seq
                                        ));
                                        return Ok(report);
                                    }
                                    report.kept += 1;
                                }
                                if let Some((_, l)) = anchor.filter(|(at, _)| *at == event.seq) {
                                    if event.link_bytes().as_ref() != Some(l) {
                                        Some(format!(
                                            "event {}: the event is not the anchor recorded \
                                             earlier",
                                            event.seq
                                        ))
                                    } else {
                                        anchor_seen = true;
                                        None
                                    }
                                } else {
                                    None
                                }
                            }
                        },
                    },
                };
                if let Some(problem) = problem {
                    report.checked = check.checked;
                    report.broken = Some(problem);
                    return Ok(report);
                }
            }
        }
        report.checked = check.checked;
        if !lines.rest.is_empty() || header.is_none() {
            report.broken = Some("the file ends inside a line".into());
            return Ok(report);
        }
        if check.next_seq() != last + 1 || check.previous() != end_link.as_slice() {
            report.broken = Some(format!(
                "the segment ends at event {} instead of {last} with its end link",
                check.next_seq() - 1
            ));
            return Ok(report);
        }
        if let Some(seq) = kept.keys().min() {
            report.broken = Some(format!(
                "event {seq}: an event of the segment is in the table but not in the file"
            ));
            return Ok(report);
        }
        report.anchor_checked = anchor_seen;
        // Where the end leads: the next archive, or the live trail.
        let next =
            sqlx::query("SELECT start_link, file_name FROM audit_archives WHERE first_seq = $1")
                .bind(last + 1)
                .fetch_optional(&self.pool)
                .await?;
        let joins = match next {
            Some(n) => {
                let link: Option<Vec<u8>> = n.try_get("start_link")?;
                report.continues_into =
                    Some(format!("archive {}", n.try_get::<String, _>("file_name")?));
                link.as_deref() == Some(end_link.as_slice())
            }
            None => {
                let start = sqlx::query("SELECT seq, link FROM audit_chain_start")
                    .fetch_one(&self.pool)
                    .await?;
                report.continues_into = Some("the live trail".into());
                start.try_get::<i64, _>("seq")? == last + 1
                    && start.try_get::<Vec<u8>, _>("link")? == end_link
            }
        };
        if !joins {
            report.broken = Some(format!(
                "{} does not start where this archive ends",
                report
                    .continues_into
                    .as_deref()
                    .unwrap_or("the next segment")
            ));
        }
        Ok(report)
    }

    /// The chain key, for checking segments.
    async fn audit_chain_key(&self) -> Result<Dek, StoreError> {
        self.load_audit_key().await?;
        let keys = self.audit.keys().ok_or(StoreError::Integrity)?;
        Dek::from_bytes(keys.chain.expose()).ok_or(StoreError::Integrity)
    }
}

/// Write the segment to `dir/name` (as `.part`, synced, then renamed), checking every event's
/// tag and link from `start_link` as it goes, to `end_link`. `keys`: the archive's data key
/// and the chain key. Returns the file's SHA-256.
async fn write_archive(
    conn: &mut sqlx::PgConnection,
    dir: &Path,
    name: &str,
    keys: (&Dek, &Dek),
    segment: audit::Segment,
    (start_link, end_link): (&[u8], &[u8]),
) -> Result<Vec<u8>, StoreError> {
    let (dek, chain_key) = keys;
    // Made private when this makes it; a directory given (shared with a backup agent, say) keeps
    // its mode.
    if !dir.try_exists().map_err(io_error)? {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error)?;
    }
    let part = dir.join(format!("{name}.part"));
    let file = File::create(&part).map_err(io_error)?;
    let mut out = ChunkWriter::new(
        BufWriter::with_capacity(256 << 10, file),
        dek,
        PURPOSE,
        name.to_string(),
        CHUNK,
    )
    .map_err(io_error)?;
    let header = ArchiveHeader {
        format: audit::ARCHIVE_FORMAT.into(),
        first_seq: segment.first_seq,
        last_seq: segment.last_seq,
        start_link: (segment.first_seq > 1).then(|| audit::to_hex(start_link)),
        end_link: audit::to_hex(end_link),
        events: segment.events,
    };
    write_line(&mut out, &header)?;
    let mut check = SegmentCheck::new(chain_key, segment.first_seq, start_link.to_vec());
    while check.next_seq() <= segment.last_seq {
        let page = audit::segment_page(conn, check.next_seq() - 1, segment.last_seq, PAGE).await?;
        if page.is_empty() {
            return Err(broken_chain(check.next_seq(), "the event is missing"));
        }
        for event in &page {
            check
                .next(event)
                .map_err(|(at, why)| broken_chain(at, &why))?;
            write_line(&mut out, event)?;
        }
    }
    if check.previous() != end_link {
        return Err(broken_chain(
            segment.last_seq,
            "the segment does not reach its end link",
        ));
    }
    let file = out
        .finish()
        .map_err(io_error)?
        .into_inner()
        .map_err(|e| io_error(e.into_error()))?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    let path = dir.join(name);
    // Never over a file already there — another deployment's in the same directory, or this
    // segment's from a run whose purge did not commit: it is moved aside, never destroyed (runs
    // hold a lock, so nothing else races this one).
    if path.try_exists().map_err(io_error)? {
        let aside = dir.join(format!("{name}.replaced-{:016x}", rand::random::<u64>()));
        std::fs::rename(&path, &aside).map_err(io_error)?;
        tracing::warn!(file = %aside.display(), "an earlier file of this audit segment was moved aside");
    }
    std::fs::rename(&part, &path).map_err(io_error)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error)?;
    sha256_of(&path).map_err(io_error)
}

/// Splits a stream of chunks into lines.
#[derive(Default)]
struct Lines {
    rest: Vec<u8>,
}

impl Lines {
    fn feed(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.rest.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(at) = self.rest.iter().position(|b| *b == b'\n') {
            let rest = self.rest.split_off(at + 1);
            let mut line = std::mem::replace(&mut self.rest, rest);
            line.pop();
            lines.push(line);
        }
        lines
    }
}

fn write_line<W: io::Write>(
    out: &mut ChunkWriter<W>,
    value: &impl serde::Serialize,
) -> Result<(), StoreError> {
    let mut line = serde_json::to_vec(value).map_err(|e| io_error(io::Error::other(e)))?;
    line.push(b'\n');
    out.write(&line).map_err(io_error)
}

fn sha256_of(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hasher.finalize().to_vec());
        }
        hasher.update(&buffer[..n]);
    }
}

/// The purge function's own refusals (its checks, SQLSTATE `CH010`/`CH011`, a bad argument, a
/// hold placed meanwhile) say why, in words of its own (no PHI); anything else is a database error.
fn refused_by_database(e: sqlx::Error) -> StoreError {
    match e.as_database_error() {
        Some(db)
            if db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "CH010" | "CH011" | "22023" | "40001")) =>
        {
            StoreError::Conflict(format!("the database refused the purge: {}", db.message()))
        }
        _ => StoreError::Database(e),
    }
}

fn broken_chain(at: i64, why: &str) -> StoreError {
    StoreError::Conflict(format!(
        "the audit chain is broken at event {at} ({why}): nothing was archived; run `audit verify`"
    ))
}

/// A file-system failure of an archive, as the store reports it (no path: the operator knows it).
fn io_error(e: io::Error) -> StoreError {
    tracing::error!(error = %e, "writing or reading an audit archive failed");
    StoreError::Conflict(format!(
        "the audit archive could not be written or read: {e}"
    ))
}
