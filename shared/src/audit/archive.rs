//! Archived segments of the audit chain: what an archive file says (a header, then one line per
//! event with every column its tag and link are computed from), reading a segment out of the
//! table, and the check that walks a segment from the link before it, recomputing each tag and
//! link — the same check whether the events come from the table or from a file.

use super::{link, tag, tag_link, Content, Row, CHAINED, EVENT_COLUMNS};
use crate::crypto::Dek;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row as _;
use std::borrow::Cow;

/// The first line's `format`: what the lines after it mean.
pub const ARCHIVE_FORMAT: &str = "carapace-audit-archive/1";

/// An archive file's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    pub format: String,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The link before `first_seq` (hex); `None` when the segment starts the chain.
    pub start_link: Option<String>,
    /// The link of `last_seq` (hex): where the next segment, or the live trail, starts.
    pub end_link: String,
    pub events: u64,
}

/// One archived event: its place, link and row, exactly as the table held them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub seq: i64,
    /// Its row id in `audit_events`.
    pub id: i64,
    /// RFC 3339 with microseconds (what the tag covers).
    pub recorded: String,
    pub action: String,
    pub outcome: String,
    pub principal: String,
    pub patient: Option<String>,
    pub subtype: Option<String>,
    pub purpose: Option<String>,
    /// The data key (`data_keys` row) the event is sealed under.
    pub dek_id: Option<i64>,
    /// The sealed AuditEvent (base64), as stored: opened with `dek_id`'s key.
    pub sealed: Option<String>,
    /// An event from before migration 0008, stored in plaintext.
    pub event: Option<Value>,
    /// HMAC over the row (base64); none for events chained on their own row.
    pub tag: Option<String>,
    /// Its link in the chain (hex).
    pub link: String,
    /// Chained on its own row (migrations 0005 to 0008): its link covers the row itself.
    pub own_row: bool,
    /// Its patient was under a legal hold when it was archived (so it stayed in the table).
    pub held: bool,
}

impl ArchivedEvent {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<ArchivedEvent, sqlx::Error> {
        let recorded: DateTime<Utc> = r.try_get("recorded")?;
        let sealed: Option<Vec<u8>> = r.try_get("sealed")?;
        let tag: Option<Vec<u8>> = r.try_get("tag")?;
        let link: Vec<u8> = r.try_get("link")?;
        Ok(ArchivedEvent {
            seq: r.try_get("at")?,
            id: r.try_get("id")?,
            recorded: recorded.to_rfc3339_opts(SecondsFormat::Micros, true),
            action: r.try_get("action")?,
            outcome: r.try_get("outcome")?,
            principal: r.try_get("principal")?,
            patient: r.try_get("patient")?,
            subtype: r.try_get("subtype")?,
            purpose: r.try_get("purpose")?,
            dek_id: r.try_get("dek_id")?,
            sealed: sealed.map(|s| B64.encode(s)),
            event: r
                .try_get::<Option<sqlx::types::Json<Value>>, _>("event")?
                .map(|j| j.0),
            tag: tag.map(|t| B64.encode(t)),
            link: to_hex(&link),
            own_row: r.try_get("own_row")?,
            held: r.try_get("held")?,
        })
    }

    /// The row its tag and link are computed from, and its sealed bytes.
    fn row(&self) -> Option<(Row<'_>, Option<Vec<u8>>)> {
        let recorded = DateTime::parse_from_rfc3339(&self.recorded).ok()?.to_utc();
        let sealed = match &self.sealed {
            Some(s) => Some(B64.decode(s).ok()?),
            None => None,
        };
        let content = match (&sealed, &self.event) {
            (Some(s), _) => Content::Sealed(s.clone()),
            (None, Some(e)) => Content::Plain(e.clone()),
            (None, None) => Content::Plain(Value::Null),
        };
        let row = Row {
            recorded,
            action: Cow::Borrowed(&self.action),
            outcome: Cow::Borrowed(&self.outcome),
            principal: Cow::Borrowed(&self.principal),
            patient: self.patient.as_deref().map(Cow::Borrowed),
            subtype: Cow::Borrowed(self.subtype.as_deref().unwrap_or("")),
            purpose: self.purpose.as_deref().map(Cow::Borrowed),
            content,
        };
        Some((row, sealed))
    }

    /// The stored tag, decoded.
    pub fn tag_bytes(&self) -> Option<Vec<u8>> {
        self.tag.as_ref().and_then(|t| B64.decode(t).ok())
    }

    /// The stored link, decoded.
    pub fn link_bytes(&self) -> Option<Vec<u8>> {
        from_hex(&self.link)
    }
}

/// The chained events after `after` up to `up_to`, in order (at most `limit`), as archive lines.
/// A place whose event is gone is simply absent: [`SegmentCheck`] finds the gap.
pub async fn segment_page(
    conn: &mut sqlx::PgConnection,
    after: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<ArchivedEvent>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT c.seq AS at, c.link, c.own_row, e.dek_id, {EVENT_COLUMNS},
                (e.patient IS NOT NULL AND carapace_held(e.patient)) AS held
           FROM {CHAINED} c JOIN audit_events e ON e.id = c.event_id
          WHERE c.seq > $1 AND c.seq <= $2 ORDER BY c.seq LIMIT $3"
    ))
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(ArchivedEvent::from_row).collect()
}

/// The segment an archive run would take: from the live start, the chained events recorded
/// before the cut-off, without a gap, at most `max` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: i64,
    pub last_seq: i64,
    pub events: u64,
    /// Of them, events of patients under a legal hold now.
    pub held: u64,
    /// The segment stopped at `max`: older events wait for the next run.
    pub more: bool,
}

/// How far the archivable prefix of the live trail reaches from `start`: `None` when its first
/// event is not past `cutoff` (or missing).
pub async fn archivable(
    conn: &mut sqlx::PgConnection,
    start: i64,
    cutoff: DateTime<Utc>,
    max: u64,
) -> Result<Option<Segment>, sqlx::Error> {
    let mut segment = Segment {
        first_seq: start,
        last_seq: start - 1,
        events: 0,
        held: 0,
        more: false,
    };
    'pages: loop {
        let rows = sqlx::query(&format!(
            "SELECT c.seq, e.recorded < $2 AS old,
                    (e.patient IS NOT NULL AND carapace_held(e.patient)) AS held
               FROM {CHAINED} c LEFT JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > $1 ORDER BY c.seq LIMIT 1000"
        ))
        .bind(segment.last_seq)
        .bind(cutoff)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            // A gap, a missing event or a young one ends the prefix (a break is never archived:
            // `audit verify` reports it).
            if seq != segment.last_seq + 1 || r.try_get::<Option<bool>, _>("old")? != Some(true) {
                break 'pages;
            }
            if segment.events == max {
                segment.more = true;
                break 'pages;
            }
            segment.last_seq = seq;
            segment.events += 1;
            segment.held += u64::from(r.try_get::<Option<bool>, _>("held")? == Some(true));
        }
    }
    Ok((segment.events > 0).then_some(segment))
}

/// Walks a segment event by event from the link before it, recomputing each event's tag from its
/// row and its link from the link before it.
pub struct SegmentCheck<'k> {
    key: &'k Dek,
    next_seq: i64,
    previous: Vec<u8>,
    pub checked: u64,
}

impl<'k> SegmentCheck<'k> {
    /// A walk starting at `first_seq`, whose previous link is `start_link`.
    pub fn new(key: &'k Dek, first_seq: i64, start_link: Vec<u8>) -> SegmentCheck<'k> {
        SegmentCheck {
            key,
            next_seq: first_seq,
            previous: start_link,
            checked: 0,
        }
    }

    /// Check the next event: `Err((seq, why))` at the first break.
    pub fn next(&mut self, event: &ArchivedEvent) -> Result<(), (i64, String)> {
        if event.seq != self.next_seq {
            return Err((
                self.next_seq,
                "the event is missing (deleted or renumbered)".into(),
            ));
        }
        let stored = event.link_bytes();
        let expected = event.row().and_then(|(row, sealed)| {
            if event.own_row {
                Some(link(self.key, &self.previous, event.seq, &row))
            } else {
                let t = event.tag_bytes()?;
                (tag(self.key, &row, sealed.as_deref()?) == t)
                    .then(|| tag_link(self.key, &self.previous, event.seq, &t))
            }
        });
        match (expected, stored) {
            (Some(e), Some(s)) if e == s => {
                self.previous = s;
                self.next_seq += 1;
                self.checked += 1;
                Ok(())
            }
            _ => Err((
                event.seq,
                "the event does not match its link (edited, moved or inserted)".into(),
            )),
        }
    }

    /// The link of the last event checked (the start link before any).
    pub fn previous(&self) -> &[u8] {
        &self.previous
    }

    /// The sequence number the next event must have.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }
}

/// Lower-case hex, as anchors are written (`SEQ:LINK`).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &Dek, seal: &Dek, previous: &[u8], seq: i64, patient: &str) -> ArchivedEvent {
        let sealed = crate::crypto::seal_with_aad(seal, super::super::EVENT_AAD, b"{}");
        let recorded = DateTime::parse_from_rfc3339("2019-05-06T07:08:09.123456Z")
            .unwrap()
            .to_utc();
        let row = Row {
            recorded,
            action: Cow::Borrowed("R"),
            outcome: Cow::Borrowed("0"),
            principal: Cow::Borrowed("dr.who"),
            patient: Some(Cow::Borrowed(patient)),
            subtype: Cow::Borrowed("read"),
            purpose: None,
            content: Content::Sealed(sealed.clone()),
        };
        let t = tag(key, &row, &sealed);
        ArchivedEvent {
            seq,
            id: seq + 100,
            recorded: recorded.to_rfc3339_opts(SecondsFormat::Micros, true),
            action: "R".into(),
            outcome: "0".into(),
            principal: "dr.who".into(),
            patient: Some(patient.into()),
            subtype: Some("read".into()),
            purpose: None,
            dek_id: Some(1),
            sealed: Some(B64.encode(&sealed)),
            event: None,
            tag: Some(B64.encode(&t)),
            link: to_hex(&tag_link(key, previous, seq, &t)),
            own_row: false,
            held: false,
        }
    }

    fn segment(key: &Dek, start: &[u8], first: i64, n: i64) -> Vec<ArchivedEvent> {
        let seal = Dek::random();
        let mut previous = start.to_vec();
        let mut out = Vec::new();
        for seq in first..first + n {
            let l = line(key, &seal, &previous, seq, &format!("Patient/p{seq}"));
            previous = l.link_bytes().unwrap();
            out.push(l);
        }
        out
    }

    fn walk(key: &Dek, first: i64, start: &[u8], events: &[ArchivedEvent]) -> Result<(), i64> {
        let mut check = SegmentCheck::new(key, first, start.to_vec());
        for e in events {
            check.next(e).map_err(|(at, _)| at)?;
        }
        Ok(())
    }

    #[test]
    fn a_segment_checks_from_its_start_link_and_survives_its_line_form() {
        let key = Dek::random();
        let start = [7u8; 32];
        let events = segment(&key, &start, 41, 5);
        // Through its NDJSON line and back.
        let back: Vec<ArchivedEvent> = events
            .iter()
            .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
            .collect();
        assert_eq!(back, events);
        assert_eq!(walk(&key, 41, &start, &back), Ok(()));
        let mut check = SegmentCheck::new(&key, 41, start.to_vec());
        for e in &back {
            check.next(e).unwrap();
        }
        assert_eq!(check.next_seq(), 46);
        assert_eq!(check.previous(), back[4].link_bytes().unwrap().as_slice());
    }

    #[test]
    fn an_edited_dropped_moved_or_foreign_event_breaks_the_walk() {
        let key = Dek::random();
        let start = [0u8; 32];
        let events = segment(&key, &start, 1, 4);
        // Another start link: the first event does not follow it.
        assert_eq!(walk(&key, 1, &[1u8; 32], &events), Err(1));
        // Another key.
        assert_eq!(walk(&Dek::random(), 1, &start, &events), Err(1));
        // A column edited (the tag covers it), the sealed event changed, the time moved.
        for edit in [
            |e: &mut ArchivedEvent| e.principal.push('x'),
            |e: &mut ArchivedEvent| e.patient = Some("Patient/other".into()),
            |e: &mut ArchivedEvent| e.sealed = Some(B64.encode(b"other")),
            |e: &mut ArchivedEvent| e.recorded = "2019-05-06T07:08:09.123457Z".into(),
        ] {
            let mut edited = events.clone();
            edit(&mut edited[2]);
            assert_eq!(walk(&key, 1, &start, &edited), Err(3));
        }
        // One dropped; two swapped.
        let mut dropped = events.clone();
        dropped.remove(1);
        assert_eq!(walk(&key, 1, &start, &dropped), Err(2));
        let mut swapped = events.clone();
        swapped.swap(1, 2);
        assert_eq!(walk(&key, 1, &start, &swapped), Err(2));
        // Renumbered in place: the link binds the place.
        let mut renumbered = events.clone();
        for e in &mut renumbered {
            e.seq += 10;
        }
        assert_eq!(walk(&key, 11, &start, &renumbered), Err(11));
    }

    #[test]
    fn hex_reads_back_and_refuses_what_is_not_hex() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("éé"), None);
    }
}
