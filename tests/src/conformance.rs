//! Round-trip of the official R4 examples (`hl7.fhir.r4.examples`): PUT each example under its own
//! id, GET it back, compare with what was sent modulo `meta.versionId` and `meta.lastUpdated`.
//! Numbers are compared by their exact text, so `1.50` must come back as `1.50`. The XML round trip
//! ([`xml_round_trip_all`]) goes on from there through FHIR XML.

use crate::{http, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Verdict {
    Passed,
    /// The server refused it with a 4xx OperationOutcome (the reason is the outcome's text).
    Refused(u16, String),
    /// Larger than the server's body limit (413).
    TooLarge,
    /// Accepted, but what came back differs from what was sent.
    Mismatch(String),
    /// A 5xx, a transport error, or a refusal without an OperationOutcome.
    ServerError(String),
}

#[derive(Debug, Clone)]
pub struct ExampleResult {
    pub file: String,
    pub verdict: Verdict,
}

pub struct Report {
    pub total: usize,
    pub passed: usize,
    pub results: Vec<ExampleResult>,
}

impl Report {
    pub fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.verdict)).count()
    }

    pub fn summary(&self) -> String {
        let refused = self.count(|v| matches!(v, Verdict::Refused(..)));
        let large = self.count(|v| matches!(v, Verdict::TooLarge));
        let mismatch = self.count(|v| matches!(v, Verdict::Mismatch(_)));
        let errors = self.count(|v| matches!(v, Verdict::ServerError(_)));
        let mut s = format!(
            "R4 examples: {} tried, {} round-tripped exactly, {} refused as invalid (4xx), {} over the body limit, {} mismatched, {} server errors\n",
            self.total, self.passed, refused, large, mismatch, errors
        );
        for r in &self.results {
            match &r.verdict {
                Verdict::Passed => {}
                Verdict::TooLarge => {
                    s.push_str(&format!("  {}: over the body limit (413)\n", r.file))
                }
                Verdict::Refused(code, why) => {
                    s.push_str(&format!("  {}: refused {code}: {why}\n", r.file))
                }
                Verdict::Mismatch(why) => s.push_str(&format!("  {}: MISMATCH {why}\n", r.file)),
                Verdict::ServerError(why) => {
                    s.push_str(&format!("  {}: SERVER ERROR {why}\n", r.file))
                }
            }
        }
        s
    }
}

/// Every example resource file in the package directory.
pub fn example_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && name != "package.json" && !name.starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `authorization` is the `Authorization` header value sent with every request.
pub async fn round_trip_all(
    base: &str,
    authorization: &str,
    dir: &Path,
    concurrency: usize,
) -> anyhow::Result<Report> {
    run_all(base, authorization, dir, concurrency, false).await
}

/// The same round trip, then through FHIR XML: each example that came back exactly is read as XML,
/// created anew from that XML (POST), and read back as JSON, which must be what was sent (modulo
/// `meta.versionId`/`meta.lastUpdated` and the new id). An example whose XML the server refuses
/// (4xx) is a mismatch: what it stored, it must take back.
pub async fn xml_round_trip_all(
    base: &str,
    authorization: &str,
    dir: &Path,
    concurrency: usize,
) -> anyhow::Result<Report> {
    run_all(base, authorization, dir, concurrency, true).await
}

async fn run_all(
    base: &str,
    authorization: &str,
    dir: &Path,
    concurrency: usize,
    xml: bool,
) -> anyhow::Result<Report> {
    let files = Arc::new(example_files(dir)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (files, next, base) = (files.clone(), next.clone(), base.to_string());
        let authorization = authorization.to_string();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let verdict = round_trip(&base, &authorization, path, xml).await;
                out.push(ExampleResult {
                    file: path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("?")
                        .to_string(),
                    verdict,
                });
            }
            out
        }));
    }
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await?);
    }
    results.sort_by(|a, b| a.file.cmp(&b.file));
    let passed = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Passed))
        .count();
    Ok(Report {
        total: results.len(),
        passed,
        results,
    })
}

async fn round_trip(base: &str, authorization: &str, path: &Path, xml: bool) -> Verdict {
    let Ok(bytes) = std::fs::read(path) else {
        return Verdict::ServerError("unreadable file".into());
    };
    let Ok(sent) = serde_json::from_slice::<Value>(&bytes) else {
        return Verdict::Refused(0, "the example file is not JSON".into());
    };
    let Some(rt) = sent["resourceType"].as_str() else {
        return Verdict::Refused(0, "no resourceType".into());
    };
    let rt = rt.to_string();
    let headers = [
        ("Content-Type", "application/fhir+json"),
        ("Accept", "application/fhir+json"),
        ("Authorization", authorization),
    ];
    let (method, url) = match sent["id"].as_str() {
        Some(id) => ("PUT", format!("{base}/{rt}/{id}")),
        None => ("POST", format!("{base}/{rt}")),
    };
    let put = match http(method, &url, &headers, Some(bytes)).await {
        Ok(r) => r,
        Err(e) => return Verdict::ServerError(format!("{method}: {e}")),
    };
    if put.status == 413 {
        return Verdict::TooLarge;
    }
    if (400..500).contains(&put.status) {
        let body: Value = serde_json::from_slice(&put.body).unwrap_or(Value::Null);
        if body["resourceType"] != "OperationOutcome" {
            return Verdict::ServerError(format!("{} without an OperationOutcome", put.status));
        }
        let reasons: Vec<String> = body["issue"]
            .as_array()
            .map(|issues| {
                issues
                    .iter()
                    .take(3)
                    .map(|i| {
                        format!(
                            "{} {}",
                            i["expression"][0].as_str().unwrap_or(""),
                            i["diagnostics"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Verdict::Refused(put.status, reasons.join("; "));
    }
    if !(200..300).contains(&put.status) {
        return Verdict::ServerError(format!("{method} answered {}: {}", put.status, put.text()));
    }
    let location = match sent["id"].as_str() {
        Some(_) => url,
        None => {
            let id = serde_json::from_slice::<Value>(&put.body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string));
            match id {
                Some(id) => format!("{base}/{rt}/{id}"),
                None => return Verdict::ServerError("created without an id".into()),
            }
        }
    };
    let got = match http("GET", &location, &headers[1..], None).await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return Verdict::ServerError(format!("GET answered {}", r.status)),
        Err(e) => return Verdict::ServerError(format!("GET: {e}")),
    };
    let Ok(mut back) = serde_json::from_slice::<Value>(&got.body) else {
        return Verdict::Mismatch("GET returned something that is not JSON".into());
    };
    let mut sent = sent;
    strip_server_meta(&mut sent);
    strip_server_meta(&mut back);
    if sent.get("id").is_none() {
        if let Value::Object(m) = &mut back {
            m.remove("id");
        }
    }
    if sent != back {
        return Verdict::Mismatch(first_difference(&sent, &back, String::new()));
    }
    if xml {
        return through_xml(base, authorization, &location, &rt, sent).await;
    }
    Verdict::Passed
}

/// GET `location` as XML, POST that XML as a new resource, GET it as JSON: `sent` again (its id
/// and the server's meta aside).
async fn through_xml(
    base: &str,
    authorization: &str,
    location: &str,
    rt: &str,
    mut sent: Value,
) -> Verdict {
    const FHIR_XML: &str = "application/fhir+xml";
    let xml = match http(
        "GET",
        location,
        &[("Accept", FHIR_XML), ("Authorization", authorization)],
        None,
    )
    .await
    {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return Verdict::ServerError(format!("GET as XML answered {}", r.status)),
        Err(e) => return Verdict::ServerError(format!("GET as XML: {e}")),
    };
    let content_type = xml
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/fhir+xml; charset=utf-8" {
        return Verdict::Mismatch(format!("GET as XML came as {content_type}"));
    }
    let headers = [
        ("Content-Type", FHIR_XML),
        ("Accept", "application/fhir+json"),
        ("Authorization", authorization),
    ];
    let posted = match http(
        "POST",
        &format!("{base}/{rt}"),
        &headers,
        Some(xml.body.to_vec()),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return Verdict::ServerError(format!("POST XML: {e}")),
    };
    if posted.status == 413 {
        return Verdict::TooLarge;
    }
    if posted.status != 201 {
        let body: Value = serde_json::from_slice(&posted.body).unwrap_or(Value::Null);
        let why = &body["issue"][0];
        let verdict = format!(
            "its XML was refused {}: {} {}",
            posted.status,
            why["expression"][0].as_str().unwrap_or(""),
            why["diagnostics"].as_str().unwrap_or("")
        );
        return if posted.status >= 500 {
            Verdict::ServerError(verdict)
        } else {
            Verdict::Mismatch(verdict)
        };
    }
    let Some(id) = serde_json::from_slice::<Value>(&posted.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
    else {
        return Verdict::ServerError("created from XML without an id".into());
    };
    let got = match http("GET", &format!("{base}/{rt}/{id}"), &headers[1..], None).await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return Verdict::ServerError(format!("GET after XML answered {}", r.status)),
        Err(e) => return Verdict::ServerError(format!("GET after XML: {e}")),
    };
    let Ok(mut back) = serde_json::from_slice::<Value>(&got.body) else {
        return Verdict::Mismatch("GET after XML returned something that is not JSON".into());
    };
    strip_server_meta(&mut back);
    for v in [&mut sent, &mut back] {
        if let Value::Object(m) = v {
            m.remove("id");
        }
    }
    if sent == back {
        Verdict::Passed
    } else {
        Verdict::Mismatch(format!(
            "after XML: {}",
            first_difference(&sent, &back, String::new())
        ))
    }
}

fn strip_server_meta(v: &mut Value) {
    let Value::Object(map) = v else { return };
    let empty = match map.get_mut("meta") {
        Some(Value::Object(meta)) => {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.is_empty()
        }
        _ => false,
    };
    if empty {
        map.remove("meta");
    }
}

fn first_difference(a: &Value, b: &Value, path: String) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    None => return format!("{path}.{k} missing in the response"),
                    Some(w) if v != w => return first_difference(v, w, format!("{path}.{k}")),
                    _ => {}
                }
            }
            for k in y.keys() {
                if !x.contains_key(k) {
                    return format!("{path}.{k} added by the server");
                }
            }
            format!("{path}: objects differ")
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if v != w {
                    return first_difference(v, w, format!("{path}[{i}]"));
                }
            }
            format!("{path}: arrays differ")
        }
        _ => format!("{path}: sent {a}, got {b}")
            .chars()
            .take(300)
            .collect(),
    }
}
