//! Exporting AuditEvents: NDJSON (one event per line, as the API serves them) or CSV for a
//! spreadsheet. CSV cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`,
//! `@`, their full-width forms, a tab, a carriage return or a newline) are escaped with a leading
//! `'` (OWASP "CSV injection").

use serde_json::Value;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// From a file name: `.ndjson`/`.jsonl` is NDJSON, anything else CSV.
    pub fn of_path(path: &str) -> Format {
        if path.ends_with(".ndjson") || path.ends_with(".jsonl") {
            Format::Ndjson
        } else {
            Format::Csv
        }
    }
}

pub const CSV_HEADER: [&str; 10] = [
    "id", "recorded", "action", "outcome", "subtype", "agent", "role", "address", "patient", "what",
];

/// A cell a spreadsheet shows as text, never evaluates.
pub fn csv_cell(value: &str) -> String {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\n' | '＝' | '＋' | '－' | '＠') => {
            format!("'{value}")
        }
        _ => value.to_string(),
    }
}

/// The references an AuditEvent's entities name: the patient's (entity type 1), or the others'
/// (the resource or administrative object acted on).
pub fn entity_references(event: &Value, patient: bool) -> impl Iterator<Item = &str> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| (e["type"]["code"] == "1") == patient)
        .filter_map(|e| e["what"]["reference"].as_str())
}

/// The CSV columns of one event.
pub fn csv_row(id: i64, event: &Value) -> [String; 10] {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let entity = |patient: bool| {
        entity_references(event, patient)
            .collect::<Vec<_>>()
            .join(" ")
    };
    [
        id.to_string(),
        s(&event["recorded"]),
        s(&event["action"]),
        s(&event["outcome"]),
        s(&event["subtype"][0]["code"]),
        s(&event["agent"][0]["who"]["display"]),
        s(&event["agent"][0]["role"][0]["coding"][0]["code"]),
        s(&event["agent"][0]["network"]["address"]),
        entity(true),
        entity(false),
    ]
    .map(|v| csv_cell(&v))
}

/// Writes events to a file in one format.
pub struct Writer<W: Write> {
    format: Format,
    csv: Option<csv::Writer<W>>,
    raw: Option<W>,
}

impl<W: Write> Writer<W> {
    pub fn new(format: Format, out: W) -> anyhow::Result<Writer<W>> {
        Ok(match format {
            Format::Csv => {
                let mut csv = csv::Writer::from_writer(out);
                csv.write_record(CSV_HEADER)?;
                Writer {
                    format,
                    csv: Some(csv),
                    raw: None,
                }
            }
            Format::Ndjson => Writer {
                format,
                csv: None,
                raw: Some(out),
            },
        })
    }

    pub fn write(&mut self, id: i64, event: &Value) -> anyhow::Result<()> {
        match (self.format, &mut self.csv, &mut self.raw) {
            (Format::Csv, Some(csv), _) => csv.write_record(csv_row(id, event))?,
            (Format::Ndjson, _, Some(out)) => {
                serde_json::to_writer(&mut *out, event)?;
                out.write_all(b"\n")?;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if let Some(mut csv) = self.csv {
            csv.flush()?;
        }
        if let Some(mut out) = self.raw {
            out.flush()?;
        }
        Ok(())
    }
}

/// Create the export file for the operator only (mode 0600) and never over an existing file.
pub fn create_private(path: &str) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_escaped_and_quoting_survives() {
        for hostile in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert!(csv_cell(hostile).starts_with('\''), "{hostile:?}");
        }
        assert_eq!(csv_cell("dr.house"), "dr.house");
        let event = serde_json::json!({
            "recorded": "2026-11-23T10:00:00Z", "action": "E", "outcome": "0",
            "subtype": [{"code": "admin"}],
            "agent": [{"who": {"display": "=cmd|' /C calc'!A0"}}],
            "entity": [{"type": {"code": "1"}, "what": {"reference": "Patient/p,1"}},
                       {"type": {"code": "2"}, "what": {"reference": "urn:carapace:admin:x\"y\nz"}}]
        });
        let mut out = Vec::new();
        let mut w = Writer::new(Format::Csv, &mut out).unwrap();
        w.write(7, &event).unwrap();
        w.finish().unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(&row[5], "'=cmd|' /C calc'!A0");
        assert_eq!(&row[8], "Patient/p,1", "commas stay inside the cell");
        assert_eq!(
            &row[9], "urn:carapace:admin:x\"y\nz",
            "quotes and newlines round-trip"
        );
    }

    #[test]
    fn ndjson_is_one_event_per_line() {
        let mut out = Vec::new();
        let mut w = Writer::new(Format::Ndjson, &mut out).unwrap();
        w.write(1, &serde_json::json!({"a": "x\ny"})).unwrap();
        w.write(2, &serde_json::json!({"b": 1})).unwrap();
        w.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(Format::of_path("a.ndjson"), Format::Ndjson);
        assert_eq!(Format::of_path("a.csv"), Format::Csv);
    }
}
