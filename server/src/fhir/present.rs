//! How an answer under `/fhir` is presented, after the interaction has made it: `_pretty=true`
//! indents a JSON body, and `Accept-Encoding: gzip` compresses a large one.
//!
//! Compression and BREACH: a compressed answer's length tells an eavesdropper which texts repeat
//! in it, so an attacker who can put chosen text into an answer beside a secret, and watch the
//! answer's size on the wire, can learn the secret a character at a time. What is compressed here
//! is therefore only what carries no secret: FHIR resources and Bundles under `/fhir` (no access
//! token, refresh token, authorization code, anti-forgery token or cookie is ever in one; paging
//! cursors are sealed and grant nothing). Answers outside `/fhir` — `/auth/*` (tokens), the
//! sign-in pages (anti-forgery tokens beside the echoed user name), `/metrics` — never pass here,
//! and an answer with `Set-Cookie` is never compressed. Streamed answers (Binary content, Bulk
//! export files) are sent as they are. What remains is a length oracle on PHI itself for an
//! attacker who can both write into a record the victim reads and watch the victim's traffic: a
//! client that fears it does not send `Accept-Encoding`.

use crate::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::Response;
use std::io::Write;

/// Bodies shorter than this are sent as they are: gzip's framing would outweigh the gain.
const GZIP_FROM: usize = 1024;

/// What the request asked of the presentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presentation {
    pretty: bool,
    gzip: bool,
}

impl Presentation {
    pub fn of(headers: &HeaderMap, params: &[(String, String)]) -> Presentation {
        Presentation {
            pretty: params.iter().any(|(k, v)| k == "_pretty" && v == "true"),
            gzip: accepts_gzip(headers),
        }
    }

    pub async fn apply(self, resp: Response<Body>) -> Response<Body> {
        if !self.pretty && !self.gzip {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        let body = match body {
            Either::Left(full) => full,
            streamed => return Response::from_parts(parts, streamed),
        };
        // A `Full` body is one chunk already in memory: collecting it cannot fail or wait.
        let mut bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let json = content_type.starts_with("application/fhir+json")
            || content_type.starts_with("application/json");
        let xml = content_type.starts_with("application/fhir+xml")
            || content_type.starts_with("application/xml");
        if self.pretty && json {
            if let Some(pretty) = indented(&bytes) {
                bytes = pretty;
            }
        }
        if self.gzip
            && (json || xml)
            && bytes.len() >= GZIP_FROM
            && !parts.headers.contains_key(header::SET_COOKIE)
            && !parts.headers.contains_key(header::CONTENT_ENCODING)
        {
            if let Some(compressed) = gzip(&bytes) {
                bytes = compressed;
                parts
                    .headers
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        if (json || xml) && !parts.headers.contains_key(header::VARY) {
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Either::Left(Full::new(bytes)))
    }
}

/// The body indented: whitespace added between tokens and nothing else, so every number keeps
/// its text (`1e3` stays `1e3`, which parsing and printing would turn into `1e+3`) and every key
/// its order. Written by hand because a JSON pretty-printer re-prints the values it parses; the
/// body is the server's own valid JSON, so a scan that tells strings from structure suffices.
/// `None` when the body does not look like JSON.
fn indented(body: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                out.push(c);
            }
            b'{' | b'[' => {
                // An empty object or list stays on its line.
                let close = if c == b'{' { b'}' } else { b']' };
                let next = body[i + 1..].iter().position(|b| !b.is_ascii_whitespace());
                if next.map(|n| body[i + 1 + n]) == Some(close) {
                    out.extend([c, close]);
                    i += 2 + next.unwrap_or(0);
                    continue;
                }
                out.push(c);
                depth += 1;
                newline(&mut out, depth);
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                newline(&mut out, depth);
                out.push(c);
            }
            b',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            b':' => out.extend(b": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
        i += 1;
    }
    (depth == 0 && !in_string).then(|| Bytes::from(out))
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// Does `Accept-Encoding` accept gzip (RFC 9110 §12.5.3: `gzip` or `*`, with a q-value above 0)?
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").map(str::trim))
                .filter_map(|q| q.parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        h
    }

    #[test]
    fn gzip_is_taken_only_when_accepted_with_a_positive_weight() {
        assert!(accepts_gzip(&headers("gzip, deflate, br")));
        assert!(accepts_gzip(&headers("br;q=1.0, gzip;q=0.5")));
        assert!(accepts_gzip(&headers("*")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("*, gzip;q=0")));
        assert!(!accepts_gzip(&headers("br, identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn pretty_printing_changes_whitespace_only() {
        let body = br#"{"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"mg"},"b":1e3,"a":[],"s":"x, y: {\"z\"}"}"#;
        let pretty = indented(body).unwrap();
        let text = std::str::from_utf8(&pretty).unwrap();
        assert!(
            text.contains("\n  \"valueQuantity\": {\n    \"value\": 1.50"),
            "{text}"
        );
        assert!(text.contains("\"a\": [],"), "{text}");
        let reparsed: serde_json::Value = serde_json::from_str(text).unwrap();
        let original: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(reparsed, original);
        assert!(
            text.contains("1e3") && text.contains(r#""x, y: {\"z\"}""#),
            "{text}"
        );
        assert!(
            indented(b"{\"a\":1").is_none(),
            "an unclosed object is left as it is"
        );
    }
}
