//! A batch or transaction Bundle as it arrives: its envelope parsed, each entry's resource kept as
//! a slice of the request body and parsed only when its entry is processed. A Bundle of thousands
//! of entries is never one parsed tree (which takes ten times its size in memory).

use crate::outcome::ApiError;
use bytes::Bytes;
use carapace_core::fhir::json;
use carapace_core::store::EntryResource;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The envelope of a posted Bundle.
pub struct IncomingBundle {
    pub resource_type: Option<String>,
    pub kind: Option<String>,
    pub entries: Vec<IncomingEntry>,
}

pub struct IncomingEntry {
    pub full_url: Option<String>,
    /// `Bundle.entry.request`, parsed (it is small); `Null` when absent.
    pub request: Value,
    /// `Bundle.entry.resource`: the raw JSON object, a zero-copy slice of the body.
    pub resource: Option<Bytes>,
}

impl IncomingEntry {
    /// The resource, to be parsed when the store gets to it, or `None` if the entry has none or it
    /// is not a JSON object.
    pub fn resource(&self) -> Option<EntryResource> {
        self.resource
            .clone()
            .filter(|raw| raw.first() == Some(&b'{'))
            .map(EntryResource::Raw)
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    entry: Option<Vec<Entry<'a>>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    request: Option<Value>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
}

impl IncomingBundle {
    /// Check the body as JSON (duplicate keys, depth) and split it into entries. Errors name the
    /// position, never the content.
    pub fn parse(body: Bytes) -> Result<IncomingBundle, ApiError> {
        let text = json::check(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "structure", e.0))?;
        let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "structure",
                format!(
                    "a Bundle is an object whose entry is an array of objects with fullUrl, request \
                     and resource (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let base = text.as_ptr() as usize;
        let entries = envelope
            .entry
            .unwrap_or_default()
            .into_iter()
            .map(|e| IncomingEntry {
                full_url: e.full_url,
                request: e.request.unwrap_or(Value::Null),
                resource: e.resource.map(|raw| {
                    let start = raw.get().as_ptr() as usize - base;
                    body.slice(start..start + raw.get().len())
                }),
            })
            .collect();
        Ok(IncomingBundle {
            resource_type: envelope.resource_type,
            kind: envelope.kind,
            entries,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"resourceType":"Bundle","type":"transaction","entry":[
                {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","active":true},
                 "request":{"method":"POST","url":"Patient"}},
                {"request":{"method":"DELETE","url":"Patient/2"}}]}"#,
        );
        let b = IncomingBundle::parse(body).unwrap();
        assert_eq!(b.kind.as_deref(), Some("transaction"));
        assert_eq!(b.entries.len(), 2);
        assert_eq!(
            b.entries[0].resource.as_deref(),
            Some(&br#"{"resourceType":"Patient","active":true}"#[..])
        );
        assert_eq!(b.entries[0].request["url"], "Patient");
        assert!(b.entries[1].resource.is_none());
    }

    #[test]
    fn malformed_envelopes_are_refused_without_echoing_content() {
        for body in [
            &br#"{"entry":{"a":1}}"#[..],
            br#"{"entry":[{"fullUrl":"x","fullUrl":"y"}]}"#,
            br#"[1,2]"#,
            br#"{"entry":[{"fullUrl":12345678}]}"#,
        ] {
            let e = IncomingBundle::parse(Bytes::copy_from_slice(body))
                .err()
                .unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(!e.message.contains("12345678"), "{}", e.message);
        }
    }
}
