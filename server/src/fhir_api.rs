//! The FHIR REST interactions of R4 `http.html`: routing, content negotiation, conditional headers,
//! and turning store results into responses. No storage or crypto here: that is the core's.

use crate::capability;
use crate::incoming::{IncomingBundle, IncomingEntry};
use crate::outcome::{ApiError, HttpResponse, FHIR_JSON};
use crate::AppState;
use bytes::Bytes;
use carapace_core::access::AccessContext;
use carapace_core::fhir::printable;
use carapace_core::fhir::validate;
use carapace_core::fhir::{json, ResourceId, ResourceType};
use carapace_core::search::query as search_query;
use carapace_core::store::{
    Created, Deleted, EntryResource, EverythingQuery, HistoryQuery, StoreError, StoredResource,
    Target, TxEntry, TxResult, Updated, ValidateMode, Written,
};
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::value::RawValue;
use std::net::SocketAddr;
use std::sync::Arc;

const DEFAULT_HISTORY_COUNT: usize = 50;

/// Serve one request under `/fhir`.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    match route(&state, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// What the client asked to get back (`Prefer: return=`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

async fn route(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_string();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    negotiate(&parts.headers, &params)?;
    let path = parts.uri.path();
    let rest = path.strip_prefix("/fhir").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = parts.method.clone();
    let headers = parts.headers;
    // Discovery needs no token; everything else does.
    match (segments.as_slice(), &method) {
        (["metadata"], &Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                capability::statement(&state.base).to_string().into_bytes(),
            ))
        }
        ([".well-known", "smart-configuration"], &Method::GET) => {
            return Ok(crate::oauth::smart_configuration(&state.base))
        }
        _ => {}
    }
    let ctx = crate::oauth::authenticate(state, &headers, peer).await?;

    match (segments.as_slice(), &method) {
        ([], &Method::POST) => {
            let _slot = state.bundle_slots.acquire().await.map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "the server is shutting down",
                )
            })?;
            let body = read_body(state, &headers, body, RESOURCE_MEDIA_TYPES).await?;
            let bundle = IncomingBundle::parse(body)?;
            let is_bundle = bundle.resource_type.as_deref() == Some("Bundle");
            match bundle.kind.as_deref() {
                Some("batch") if is_bundle => batch(state, &ctx, bundle.entries).await,
                Some("transaction") if is_bundle => transaction(state, &ctx, bundle.entries).await,
                _ => Err(ApiError::bad_request(
                    "POST to the base takes a Bundle of type batch or transaction",
                )),
            }
        }
        ([], _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "the base URL takes POST of a batch Bundle",
        )),
        (["_history"], &Method::GET) => history(state, &ctx, None, None, &params).await,
        ([type_name, "$validate"], &Method::POST) => {
            let rt = resource_type(type_name)?;
            validate_operation(state, &ctx, &headers, Some(body), &params, rt, None).await
        }
        ([type_name, id, "$validate"], &Method::POST) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            validate_operation(state, &ctx, &headers, Some(body), &params, rt, Some(id)).await
        }
        ([type_name, id, "$validate"], &Method::GET) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            validate_operation(state, &ctx, &headers, None, &params, rt, Some(id)).await
        }
        ([type_name, op], &Method::GET | &Method::POST)
            if crate::terminology_api::Operation::of(type_name, op).is_some() =>
        {
            let op = crate::terminology_api::Operation::of(type_name, op)
                .ok_or_else(|| ApiError::not_found("no such operation"))?;
            crate::terminology_api::serve(state, &method, &headers, body, &params, op).await
        }
        (["AuditEvent"], &Method::GET) => crate::audit_api::search(state, &ctx, &params).await,
        (["AuditEvent", id], &Method::GET) => crate::audit_api::read(state, &ctx, id).await,
        (["AuditEvent", ..], _) => Err(crate::audit_api::not_writable()),
        (["Patient", id, "$everything"], &Method::GET) => {
            let id = resource_id(id)?;
            everything(state, &ctx, &id, &params).await
        }
        ([type_name, ..], _) if type_name.starts_with('_') || type_name.starts_with('$') => {
            Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-supported",
                "this operation is not supported yet",
            ))
        }
        ([type_name], &Method::POST) => {
            let rt = resource_type(type_name)?;
            let resource = read_resource(state, &headers, body).await?;
            let if_none_exist = create_condition(&headers, &params)?;
            let created = state
                .store
                .create(&ctx, rt, resource, if_none_exist.as_deref())
                .await?;
            let prefer = prefer(&headers);
            match created {
                Created::New(r) => Ok(resource_response(
                    state,
                    StatusCode::CREATED,
                    &r,
                    prefer,
                    true,
                )),
                Created::Existing(r) => {
                    Ok(resource_response(state, StatusCode::OK, &r, prefer, false))
                }
            }
        }
        ([type_name], &Method::GET) => {
            let rt = resource_type(type_name)?;
            search(state, &ctx, &headers, rt, &params).await
        }
        ([type_name, "_search"], &Method::POST) => {
            let rt = resource_type(type_name)?;
            let form = crate::oauth::read_form(&headers, body)
                .await
                .map_err(|e| ApiError::bad_request(e.description))?;
            let mut all = params.clone();
            all.extend(form);
            search(state, &ctx, &headers, rt, &all).await
        }
        ([type_name], &Method::PUT) => {
            // Conditional update: PUT Type?identifier=a|b
            let rt = resource_type(type_name)?;
            let if_match = if_match(&headers)?;
            let resource = read_resource(state, &headers, body).await?;
            let entry = TxEntry::Update {
                resource_type: rt,
                target: conditional_target(&query)?,
                resource: EntryResource::Parsed(resource),
                if_match,
                full_url: None,
            };
            match single_entry(state, &ctx, entry).await? {
                TxResult::Updated(updated) => Ok(updated_response(state, &updated, &headers)),
                _ => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "the conditional update did not run",
                )),
            }
        }
        ([type_name], &Method::DELETE) => {
            // Conditional delete (single): DELETE Type?identifier=a|b
            let rt = resource_type(type_name)?;
            let entry = TxEntry::Delete {
                resource_type: rt,
                target: conditional_target(&query)?,
            };
            let deleted = single_entry(state, &ctx, entry).await?;
            let mut resp = Response::builder().status(StatusCode::NO_CONTENT);
            if let TxResult::Deleted(Deleted::Now { version_id }) = deleted {
                resp = resp.header("ETag", etag(version_id));
            }
            Ok(resp.body(Full::new(Bytes::new())).unwrap_or_default())
        }
        ([type_name, "_history"], &Method::GET) => {
            let rt = resource_type(type_name)?;
            history(state, &ctx, Some(rt), None, &params).await
        }
        ([type_name, id], &Method::GET) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            let r = state.store.read(&ctx, rt, &id).await?;
            Ok(resource_response(
                state,
                StatusCode::OK,
                &r,
                Return::Representation,
                false,
            ))
        }
        ([type_name, id], &Method::PUT) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            let if_match = if_match(&headers)?;
            let resource = read_resource(state, &headers, body).await?;
            let updated = state
                .store
                .update(&ctx, rt, &id, resource, if_match)
                .await?;
            Ok(updated_response(state, &updated, &headers))
        }
        ([type_name, id], &Method::PATCH) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            let if_match = if_match(&headers)?;
            let body = read_json(state, &headers, body, &["application/json-patch+json"]).await?;
            let patch: json_patch::Patch = serde_json::from_value(body).map_err(|_| {
                ApiError::bad_request(
                    "the body is not a JSON Patch document (an array of operations)",
                )
            })?;
            let updated = state.store.patch(&ctx, rt, &id, &patch, if_match).await?;
            Ok(resource_response(
                state,
                StatusCode::OK,
                &updated.resource,
                prefer(&headers),
                false,
            ))
        }
        ([type_name, id], &Method::DELETE) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            let deleted = state.store.delete(&ctx, rt, &id).await?;
            let mut resp = Response::builder().status(StatusCode::NO_CONTENT);
            if let Deleted::Now { version_id } = deleted {
                resp = resp.header("ETag", etag(version_id));
            }
            Ok(resp.body(Full::new(Bytes::new())).unwrap_or_default())
        }
        ([type_name, id, "_history"], &Method::GET) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            // History of an id that never existed is a 404, not an empty Bundle.
            match state.store.read(&ctx, rt, &id).await {
                Ok(_) | Err(StoreError::Gone { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            history(state, &ctx, Some(rt), Some(&id), &params).await
        }
        ([type_name, id, "_history", version], &Method::GET) => {
            let (rt, id) = (resource_type(type_name)?, resource_id(id)?);
            let version: i64 = version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                ApiError::not_found(format!("{rt}/{id} has no version '{}'", printable(version)))
            })?;
            let r = state.store.vread(&ctx, rt, &id, version).await?;
            Ok(resource_response(
                state,
                StatusCode::OK,
                &r,
                Return::Representation,
                false,
            ))
        }
        ([_, ..], _) if segments.len() <= 4 => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("{method} is not supported here"),
        )),
        _ => Err(ApiError::not_found("no such endpoint")),
    }
}

fn resource_type(name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(name).ok_or_else(|| {
        ApiError::not_found(format!("'{}' is not an R4 resource type", printable(name)))
    })
}

fn resource_id(id: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Accept / `_format`: JSON only, 406 otherwise.
fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<(), ApiError> {
    let not_acceptable = || {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "only JSON is supported (application/fhir+json)",
        )
    };
    if let Some((_, format)) = params.iter().find(|(k, _)| k == "_format") {
        return match format.as_str() {
            "json" | "application/json" | "application/fhir+json" => Ok(()),
            _ => Err(not_acceptable()),
        };
    }
    let Some(accept) = headers.get("accept") else {
        return Ok(());
    };
    let accept = accept.to_str().map_err(|_| not_acceptable())?;
    let ok = accept.split(',').any(|item| {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*" | "application/*" | "application/json" | "application/fhir+json"
        ) || media.ends_with("+json")
    });
    if ok {
        Ok(())
    } else {
        Err(not_acceptable())
    }
}

/// Read, parse and check a request body: JSON media type (415), size limit (413), strict JSON (400).
pub(crate) async fn read_resource(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(state, headers, body, RESOURCE_MEDIA_TYPES).await?;
    resource_of(&bytes)
}

/// A body that must be one resource: a JSON object.
fn resource_of(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value =
        json::parse(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "structure", e.0))?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "a resource must be a JSON object",
        ));
    }
    Ok(value)
}

/// The media types a resource (or Bundle) may be sent as.
const RESOURCE_MEDIA_TYPES: &[&str] = &["application/fhir+json", "application/json"];

/// Read a JSON body of one of the `accepted` media types (415 otherwise), within the body limit.
async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
    accepted: &[&str],
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(state, headers, body, accepted).await?;
    json::parse(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "structure", e.0))
}

/// Read a body of one of the `accepted` media types (415 otherwise), within the body limit (413).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
    accepted: &[&str],
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !content_type
        .as_deref()
        .is_some_and(|t| accepted.contains(&t))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("send {}", accepted.join(" or ")),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!(
                "request body exceeds the limit of {} bytes",
                state.config.body_limit
            ),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    read_limited(body, state.config.body_limit, declared)
        .await?
        .ok_or_else(too_large)
}

/// Read at most `limit` bytes of body. Past the limit, keep reading and discarding (up to a bound)
/// so the client gets its 413 instead of a reset connection; memory never grows past `limit`.
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
) -> Result<Option<Bytes>, ApiError> {
    const DRAIN_MAX: u64 = 128 * 1024 * 1024;
    let unreadable = || ApiError::bad_request("the request body could not be read");
    let mut buf = bytes::BytesMut::new();
    let mut over = declared.is_some_and(|len| len > limit as u64);
    if over && declared.is_some_and(|len| len > DRAIN_MAX) {
        return Ok(None);
    }
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| unreadable())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if over || buf.len() + data.len() > limit {
            over = true;
            buf = bytes::BytesMut::new();
            if seen > DRAIN_MAX {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    Ok(if over { None } else { Some(buf.freeze()) })
}

fn header_str(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request(format!("{name} is not valid text")))
        })
        .transpose()
}

/// `If-Match: W/"3"` (or `"3"`) → 3.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = header_str(headers, "if-match")? else {
        return Ok(None);
    };
    let trimmed = raw.trim();
    let inner = trimmed
        .strip_prefix("W/")
        .unwrap_or(trimmed)
        .trim_matches('"');
    inner
        .parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request("If-Match must be a version ETag such as W/\"3\""))
}

fn prefer(headers: &HeaderMap) -> Return {
    let Some(prefer) = headers.get("prefer").and_then(|v| v.to_str().ok()) else {
        return Return::Representation;
    };
    for part in prefer.split([',', ';']) {
        match part.trim() {
            "return=minimal" => return Return::Minimal,
            "return=OperationOutcome" => return Return::OperationOutcome,
            "return=representation" => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

fn http_date(at: DateTime<Utc>) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::from(at))
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", FHIR_JSON)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn resource_response(
    state: &AppState,
    status: StatusCode,
    r: &StoredResource,
    ret: Return,
    location: bool,
) -> HttpResponse {
    let mut builder = Response::builder()
        .status(status)
        .header("ETag", etag(r.version_id))
        .header("Last-Modified", http_date(r.last_updated));
    if location {
        let url = format!(
            "{}/{}/{}/_history/{}",
            state.base, r.resource_type, r.id, r.version_id
        );
        if let Ok(v) = HeaderValue::from_str(&url) {
            builder = builder.header("Location", v);
        }
    }
    let body = match ret {
        Return::Minimal => return builder.body(Full::new(Bytes::new())).unwrap_or_default(),
        Return::Representation => Bytes::from(r.body.clone()),
        Return::OperationOutcome => Bytes::from(
            serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "informational",
                "diagnostics": format!("{} version {} stored", r.reference(), r.version_id)}]})
            .to_string(),
        ),
    };
    builder
        .header("Content-Type", FHIR_JSON)
        .body(Full::new(body))
        .unwrap_or_default()
}

#[derive(serde::Serialize)]
struct HistoryBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    link: Vec<Link>,
    entry: Vec<HistoryBundleEntry<'a>>,
}

#[derive(serde::Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(serde::Serialize)]
struct HistoryBundleEntry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    request: EntryRequest,
    response: EntryResponse,
}

#[derive(serde::Serialize)]
struct EntryRequest {
    method: String,
    url: String,
}

#[derive(serde::Serialize)]
struct EntryResponse {
    status: &'static str,
    etag: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}

async fn history(
    state: &AppState,
    ctx: &AccessContext,
    rt: Option<ResourceType>,
    id: Option<&ResourceId>,
    params: &[(String, String)],
) -> Result<HttpResponse, ApiError> {
    let mut query = HistoryQuery {
        count: DEFAULT_HISTORY_COUNT,
        ..HistoryQuery::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| {
                        ApiError::bad_request("_count must be a positive whole number")
                    })?;
            }
            "_since" => {
                query.since =
                    Some(carapace_core::fhir::since_instant(value).map_err(ApiError::bad_request)?);
            }
            "_page" => query.after = Some(value.clone()),
            _ => {}
        }
    }
    let page = state.store.history(ctx, rt, id, &query).await?;
    let path = match (rt, id) {
        (Some(t), Some(i)) => format!("{}/{t}/{i}/_history", state.base),
        (Some(t), None) => format!("{}/{t}/_history", state.base),
        _ => format!("{}/_history", state.base),
    };
    let mut base_params: Vec<(String, String)> = vec![("_count".into(), query.count.to_string())];
    if let Some(since) = query.since {
        base_params.push((
            "_since".into(),
            since.to_rfc3339_opts(SecondsFormat::Micros, true),
        ));
    }
    let links = page_links(&path, &base_params, params, page.next.clone(), None);
    let raw: Vec<Option<Box<RawValue>>> = page
        .entries
        .iter()
        .map(|e| {
            e.body
                .as_ref()
                .and_then(|b| String::from_utf8(b.clone()).ok())
                .and_then(|s| RawValue::from_string(s).ok())
        })
        .collect();
    let entries = page
        .entries
        .iter()
        .zip(raw.iter())
        .map(|(e, body)| HistoryBundleEntry {
            full_url: format!("{}/{}/{}", state.base, e.resource_type, e.id),
            resource: body.as_deref(),
            request: EntryRequest {
                method: e.method.clone(),
                url: if e.method == "POST" {
                    e.resource_type.to_string()
                } else {
                    format!("{}/{}", e.resource_type, e.id)
                },
            },
            response: EntryResponse {
                status: match (e.method.as_str(), e.version_id) {
                    ("DELETE", _) => "204 No Content",
                    (_, 1) => "201 Created",
                    _ => "200 OK",
                },
                etag: etag(e.version_id),
                last_modified: e.last_updated.to_rfc3339_opts(SecondsFormat::Micros, true),
            },
        })
        .collect();
    let bundle = HistoryBundle {
        resource_type: "Bundle",
        bundle_type: "history",
        link: links,
        entry: entries,
    };
    let body = serde_json::to_vec(&bundle).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "could not build the history Bundle",
        )
    })?;
    Ok(json_response(StatusCode::OK, body))
}

/// Type search: every R4 search parameter of the type over the blind index, narrowed to what the
/// caller may see. Unknown parameters are ignored with a warning entry, or refused with
/// `Prefer: handling=strict`.
async fn search(
    state: &AppState,
    ctx: &AccessContext,
    headers: &HeaderMap,
    rt: ResourceType,
    params: &[(String, String)],
) -> Result<HttpResponse, ApiError> {
    let strict = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split([',', ';']).any(|x| x.trim() == "handling=strict"));
    let query = search_query::parse(rt, params, strict)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?;
    let page = state.store.search(ctx, &query).await?;
    let path = format!("{}/{rt}", state.base);
    let link = page_links(&path, &query.kept, params, page.next, page.previous);
    let unreadable = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored resource is unreadable",
        )
    };
    // Stored bodies go out as they are unless `_summary`/`_elements` reshape them.
    let plain = query.summary == search_query::Summary::None && query.elements.is_none();
    let raw = |r: &StoredResource| -> Result<Box<RawValue>, ApiError> {
        let text = if plain {
            String::from_utf8(r.body.clone()).map_err(|_| unreadable())?
        } else {
            let mut resource: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|_| unreadable())?;
            carapace_core::search::shape(&mut resource, query.summary, query.elements.as_deref());
            resource.to_string()
        };
        RawValue::from_string(text).map_err(|_| unreadable())
    };
    let mut bodies = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
    let mut meta = Vec::with_capacity(bodies.capacity());
    for (mode, list) in [("match", &page.matches), ("include", &page.included)] {
        for r in list {
            bodies.push(raw(r)?);
            meta.push((
                Some(format!("{}/{}/{}", state.base, r.resource_type, r.id)),
                mode,
            ));
        }
    }
    if !query.ignored.is_empty() {
        let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "warning", "code": "not-supported",
            "diagnostics": format!("ignored unknown or unsupported search parameters: {}",
                                   query.ignored.join(", "))}]});
        bodies.push(RawValue::from_string(outcome.to_string()).map_err(|_| unreadable())?);
        meta.push((None, "outcome"));
    }
    let entry = meta
        .into_iter()
        .zip(bodies.iter())
        .map(|((full_url, mode), resource)| SearchEntry {
            full_url,
            resource,
            search: SearchMode { mode },
        })
        .collect();
    let bundle = SearchBundle {
        resource_type: "Bundle",
        bundle_type: "searchset",
        total: page.total,
        link,
        entry,
    };
    let body = serde_json::to_vec(&bundle).map_err(|_| unreadable())?;
    Ok(json_response(StatusCode::OK, body))
}

/// `$validate` at type and instance level, GET and POST: the operation's parameters (`mode`,
/// `profile`) from the query and from a `Parameters` body (whose `resource` is the resource to
/// validate; any other body is the resource itself). The checks are the store's; the answer is an
/// OperationOutcome, 200 whether or not the resource is valid (the operation itself succeeded).
async fn validate_operation(
    state: &AppState,
    ctx: &AccessContext,
    headers: &HeaderMap,
    body: Option<Incoming>,
    params: &[(String, String)],
    rt: ResourceType,
    id: Option<ResourceId>,
) -> Result<HttpResponse, ApiError> {
    let mut mode = None;
    let mut profiles = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "mode" => mode = Some(v.clone()),
            "profile" => profiles.push(v.clone()),
            _ => {}
        }
    }
    // A POST may have no body only to ask whether an instance may be deleted.
    let delete = mode.as_deref() == Some("delete");
    let body = match body {
        Some(_) if delete && !headers.contains_key("content-type") => None,
        Some(body) => {
            let bytes = read_body(state, headers, body, RESOURCE_MEDIA_TYPES).await?;
            if bytes.is_empty() && delete {
                None
            } else {
                Some(resource_of(&bytes)?)
            }
        }
        None => None,
    };
    let resource = match body {
        Some(value) if value["resourceType"] == "Parameters" => {
            let mut resource = None;
            for p in value["parameter"].as_array().into_iter().flatten() {
                let text = || {
                    [
                        "valueCode",
                        "valueString",
                        "valueUri",
                        "valueCanonical",
                        "valueUrl",
                    ]
                    .iter()
                    .find_map(|k| p[k].as_str())
                    .map(str::to_string)
                };
                match p["name"].as_str() {
                    Some("resource") if p["resource"].is_object() => {
                        resource = Some(p["resource"].clone())
                    }
                    Some("resource") => {
                        return Err(ApiError::bad_request(
                            "the 'resource' parameter must carry a resource",
                        ))
                    }
                    Some("mode") => mode = text().or(mode),
                    Some("profile") => profiles.extend(text()),
                    _ => {}
                }
            }
            resource
        }
        other => other,
    };
    let mode = match mode.as_deref() {
        None => ValidateMode::Content,
        Some(code) => ValidateMode::parse(code).ok_or_else(|| {
            ApiError::bad_request(format!(
                "mode '{}' is not one of create, update, delete",
                printable(code)
            ))
        })?,
    };
    let issues = state
        .store
        .validate(ctx, rt, id.as_ref(), resource, mode, &profiles)
        .await?;
    let body = if issues.is_empty() {
        serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": "the resource is valid"}]})
    } else {
        let issue: Vec<serde_json::Value> = issues.iter().map(validate::Issue::to_json).collect();
        serde_json::json!({"resourceType": "OperationOutcome", "issue": issue})
    };
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

#[derive(serde::Serialize)]
struct SearchBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<SearchEntry<'a>>,
}

#[derive(serde::Serialize)]
struct SearchEntry<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    resource: &'a RawValue,
    search: SearchMode,
}

#[derive(serde::Serialize)]
struct SearchMode {
    mode: &'static str,
}

/// `Patient/{id}/$everything` with `_since`, `_type`, `_count` and `next` links.
async fn everything(
    state: &AppState,
    ctx: &AccessContext,
    patient: &ResourceId,
    params: &[(String, String)],
) -> Result<HttpResponse, ApiError> {
    let mut query = EverythingQuery {
        count: DEFAULT_HISTORY_COUNT,
        ..EverythingQuery::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| {
                        ApiError::bad_request("_count must be a positive whole number")
                    })?;
            }
            "_since" => {
                query.since =
                    Some(carapace_core::fhir::since_instant(value).map_err(ApiError::bad_request)?);
            }
            "_type" => {
                for t in value.split(',').filter(|t| !t.is_empty()) {
                    query
                        .types
                        .push(ResourceType::parse(t.trim()).ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "_type: '{}' is not an R4 resource type",
                                printable(t)
                            ))
                        })?);
                }
            }
            "_page" => query.after = Some(value.clone()),
            _ => {}
        }
    }
    let page = state.store.everything(ctx, patient, &query).await?;
    let path = format!("{}/Patient/{patient}/$everything", state.base);
    let mut base_params: Vec<(String, String)> = vec![("_count".into(), query.count.to_string())];
    if let Some(since) = query.since {
        base_params.push((
            "_since".into(),
            since.to_rfc3339_opts(SecondsFormat::Micros, true),
        ));
    }
    if !query.types.is_empty() {
        let types: Vec<&str> = query.types.iter().map(|t| t.as_str()).collect();
        base_params.push(("_type".into(), types.join(",")));
    }
    let link = page_links(&path, &base_params, params, page.next.clone(), None);
    let raw: Vec<Box<RawValue>> = page
        .entries
        .iter()
        .map(|e| {
            String::from_utf8(e.body.clone())
                .ok()
                .and_then(|s| RawValue::from_string(s).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "exception",
                        "a stored resource is unreadable",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let entry = page
        .entries
        .iter()
        .zip(raw.iter())
        .map(|(e, r)| SearchEntry {
            full_url: Some(format!("{}/{}/{}", state.base, e.resource_type, e.id)),
            resource: r,
            search: SearchMode { mode: "match" },
        })
        .collect();
    let bundle = SearchBundle {
        resource_type: "Bundle",
        bundle_type: "searchset",
        total: None,
        link,
        entry,
    };
    let body = serde_json::to_vec(&bundle).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "could not build the Bundle",
        )
    })?;
    Ok(json_response(StatusCode::OK, body))
}

/// Entries per batch or transaction; the body limit bounds a Bundle's size as well.
const MAX_BATCH_ENTRIES: usize = 10_000;

/// A `batch` Bundle: each entry processed on its own, in order, with its own status; one entry's
/// failure does not affect the others. Entries are the same interactions as over REST, under the
/// caller's own access.
async fn batch(
    state: &AppState,
    ctx: &AccessContext,
    entries: Vec<IncomingEntry>,
) -> Result<HttpResponse, ApiError> {
    // Each entry's resource is validated when its own interaction runs, so one bad entry fails
    // alone; the envelope only has to be a list of entries.
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("a batch holds at most {MAX_BATCH_ENTRIES} entries"),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let response = match batch_entry(state, ctx, &entry.to_value()).await {
            Ok(r) => r,
            Err(e) => {
                let status = e.status;
                let outcome: serde_json::Value =
                    serde_json::from_slice(&body_bytes(e.into_response()).await)
                        .unwrap_or_default();
                serde_json::json!({"response": {
                    "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
                    "outcome": outcome}})
            }
        };
        tracing::debug!(entry = i, "batch entry processed");
        out.push(response);
    }
    let body =
        serde_json::json!({"resourceType": "Bundle", "type": "batch-response", "entry": out});
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// A `transaction` Bundle: all writes or none (see `Store::transaction`).
async fn transaction(
    state: &AppState,
    ctx: &AccessContext,
    entries: Vec<IncomingEntry>,
) -> Result<HttpResponse, ApiError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("a transaction holds at most {MAX_BATCH_ENTRIES} entries"),
        ));
    }
    let mut ops = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let at = |e: ApiError| ApiError {
            message: format!("Bundle.entry[{i}]: {}", e.message),
            ..e
        };
        ops.push(tx_entry(state, entry).map_err(at)?);
    }
    let results = match state.store.transaction(ctx, ops).await {
        Ok(r) => r,
        Err(failure) => {
            let i = failure.index;
            let mut e = ApiError::from(failure.error);
            // Name the failing entry: issue paths move under it, and a last issue says the outcome.
            for issue in &mut e.issues {
                let rest = issue
                    .path
                    .split_once('.')
                    .map(|(_, r)| format!(".{r}"))
                    .unwrap_or_default();
                issue.path = format!("Bundle.entry[{i}].resource{rest}");
            }
            if !e.issues.is_empty() {
                e.issues.push(validate::Issue::invalid(
                    format!("Bundle.entry[{i}]"),
                    "this entry failed; nothing was written",
                ));
            }
            return Err(ApiError {
                message: format!("Bundle.entry[{i}]: {}; nothing was written", e.message),
                ..e
            });
        }
    };
    let mut out = Vec::with_capacity(results.len());
    for result in results {
        out.push(match result {
            TxResult::Created(r) => entry_response(StatusCode::CREATED, &r, None, state),
            TxResult::Existing(r) => entry_response(StatusCode::OK, &r, None, state),
            TxResult::Updated(u) => {
                let status = if u.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                entry_response(status, &Written::from(&u.resource), None, state)
            }
            TxResult::Deleted(_) => serde_json::json!({"response": {"status": "204 No Content"}}),
            TxResult::Read(Ok(r)) => stored_entry_response(StatusCode::OK, &r, state),
            TxResult::Read(Err(e)) => {
                let e = ApiError::from(e);
                let status = e.status;
                let outcome: serde_json::Value =
                    serde_json::from_slice(&body_bytes(e.into_response()).await).unwrap_or_default();
                serde_json::json!({"response": {
                    "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
                    "outcome": outcome}})
            }
            TxResult::Skipped => serde_json::json!({"response": {"status": "200 OK"}}),
        });
    }
    let body =
        serde_json::json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out});
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

fn tx_entry(state: &AppState, entry: IncomingEntry) -> Result<TxEntry, ApiError> {
    let method = entry.request["method"].as_str().unwrap_or("").to_string();
    let url = entry.request["url"].as_str().unwrap_or("").to_string();
    let url = url
        .strip_prefix(&format!("{}/", state.base))
        .unwrap_or(&url)
        .to_string();
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u.to_string(), Some(q.to_string())),
        None => (url, None),
    };
    let if_none_exist = entry.request["ifNoneExist"].as_str().map(str::to_string);
    let full_url = entry.full_url.clone();
    let if_match = match entry.request["ifMatch"].as_str() {
        Some(tag) => Some(
            tag.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<i64>()
                .map_err(|_| {
                    ApiError::bad_request("ifMatch must be a version ETag such as W/\"3\"")
                })?,
        ),
        None => None,
    };
    let parts: Vec<&str> = url.split('/').filter(|p| !p.is_empty()).collect();
    let resource = || {
        entry
            .resource()
            .ok_or_else(|| ApiError::bad_request("this entry needs a resource"))
    };
    let target = |id: Option<&&str>| -> Result<Target, ApiError> {
        match (id, &query) {
            (Some(id), None) => Ok(Target::Id(resource_id(id)?)),
            (None, Some(q)) if !q.is_empty() => Ok(Target::Query(q.clone())),
            _ => Err(ApiError::bad_request(
                "the request url names a resource (Type/id) or a condition (Type?query)",
            )),
        }
    };
    Ok(match (method.as_str(), parts.as_slice()) {
        ("POST", [t]) if query.is_none() => TxEntry::Create {
            resource_type: resource_type(t)?,
            resource: resource()?,
            full_url,
            if_none_exist,
        },
        ("PUT", [t, rest @ ..]) if rest.len() <= 1 => TxEntry::Update {
            resource_type: resource_type(t)?,
            target: target(rest.first())?,
            resource: resource()?,
            if_match,
            full_url,
        },
        ("DELETE", [t, rest @ ..]) if rest.len() <= 1 => TxEntry::Delete {
            resource_type: resource_type(t)?,
            target: target(rest.first())?,
        },
        ("GET", [t, id]) => TxEntry::Read {
            resource_type: resource_type(t)?,
            id: resource_id(id)?,
            version: None,
        },
        ("GET", [t, id, "_history", v]) => TxEntry::Read {
            resource_type: resource_type(t)?,
            id: resource_id(id)?,
            version: Some(
                v.parse()
                    .map_err(|_| ApiError::not_found("no such version"))?,
            ),
        },
        _ => {
            return Err(ApiError::bad_request(format!(
                "unsupported transaction request: {} {}",
                printable(&method),
                printable(&url)
            )))
        }
    })
}

/// 201 for an update that created the resource, 200 for one that changed it.
fn updated_response(state: &AppState, updated: &Updated, headers: &HeaderMap) -> HttpResponse {
    let status = if updated.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    resource_response(
        state,
        status,
        &updated.resource,
        prefer(headers),
        updated.created,
    )
}

/// The condition of a create: `If-None-Exist`, or search parameters on the URL (`POST
/// Patient?identifier=a|b`, the convention of fhirpy and Aidbox), which are never ignored. Both,
/// when they differ, are refused.
fn create_condition(
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Option<String>, ApiError> {
    let header = header_str(headers, "if-none-exist")?;
    let search: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    if search.is_empty() {
        return Ok(header);
    }
    let mut url = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &search {
        url.append_pair(k, v);
    }
    let url = url.finish();
    let same = |h: &str| {
        form_urlencoded::parse(h.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .eq(search.iter().map(|p| (p.0.clone(), p.1.clone())))
    };
    match header {
        Some(h) if !same(&h) => Err(ApiError::bad_request(
            "a create with search parameters on its URL is conditional; If-None-Exist, when \
             also sent, must be the same query",
        )),
        _ => Ok(Some(url)),
    }
}

/// The query of a conditional update or delete; it must hold search parameters.
fn conditional_target(query: &str) -> Result<Target, ApiError> {
    if query.is_empty() {
        return Err(ApiError::bad_request(
            "a conditional update or delete needs search parameters, such as ?identifier=a|b",
        ));
    }
    Ok(Target::Query(query.to_string()))
}

/// Run one conditional write as a transaction of one entry (matched and written atomically with
/// respect to other entries, audited like any write).
async fn single_entry(
    state: &AppState,
    ctx: &AccessContext,
    entry: TxEntry,
) -> Result<TxResult, ApiError> {
    let mut results = state
        .store
        .transaction(ctx, vec![entry])
        .await
        .map_err(|f| ApiError::from(f.error))?;
    results.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "the write did not run",
        )
    })
}

async fn body_bytes(resp: HttpResponse) -> Bytes {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// An entry response with the resource itself.
fn stored_entry_response(
    status: StatusCode,
    r: &StoredResource,
    state: &AppState,
) -> serde_json::Value {
    entry_response(status, &Written::from(r), Some(&r.body), state)
}

fn entry_response(
    status: StatusCode,
    r: &Written,
    body: Option<&[u8]>,
    state: &AppState,
) -> serde_json::Value {
    let mut response = serde_json::json!({
        "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
        "etag": etag(r.version_id),
        "lastModified": r.last_updated.to_rfc3339_opts(SecondsFormat::Micros, true),
    });
    if status == StatusCode::CREATED {
        response["location"] = serde_json::json!(format!(
            "{}/{}/{}/_history/{}",
            state.base, r.resource_type, r.id, r.version_id
        ));
    }
    let mut entry = serde_json::json!({"response": response});
    if let Some(body) = body {
        if let Ok(resource) = serde_json::from_slice::<serde_json::Value>(body) {
            entry["resource"] = resource;
        }
    }
    entry
}

async fn batch_entry(
    state: &AppState,
    ctx: &AccessContext,
    entry: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let request = &entry["request"];
    let method = request["method"].as_str().unwrap_or("");
    let url = request["url"].as_str().unwrap_or("");
    // Relative URLs (`Patient`, `Patient/1`, `Patient/1/_history/2`), searches (`Patient?name=x`)
    // and conditional updates and deletes (`Patient?identifier=a|b`).
    let url = url.strip_prefix(&format!("{}/", state.base)).unwrap_or(url);
    if let Some((path, query)) = url.split_once('?') {
        let rt = resource_type(path.trim_matches('/'))?;
        return match method {
            "GET" => {
                let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
                let resp = search(state, ctx, &HeaderMap::new(), rt, &params).await?;
                let bundle: serde_json::Value =
                    serde_json::from_slice(&body_bytes(resp).await).unwrap_or_default();
                Ok(serde_json::json!({"resource": bundle, "response": {"status": "200 OK"}}))
            }
            "PUT" | "DELETE" => {
                let target = conditional_target(query)?;
                let entry = if method == "PUT" {
                    TxEntry::Update {
                        resource_type: rt,
                        target,
                        resource: EntryResource::Parsed(
                            entry.get("resource").cloned().ok_or_else(|| {
                                ApiError::bad_request("this entry needs a resource")
                            })?,
                        ),
                        if_match: None,
                        full_url: None,
                    }
                } else {
                    TxEntry::Delete {
                        resource_type: rt,
                        target,
                    }
                };
                Ok(match single_entry(state, ctx, entry).await? {
                    TxResult::Updated(u) => {
                        let status = if u.created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        stored_entry_response(status, &u.resource, state)
                    }
                    _ => serde_json::json!({"response": {"status": "204 No Content"}}),
                })
            }
            _ => Err(ApiError::bad_request(
                "a batch entry with a query is a search (GET) or a conditional PUT or DELETE",
            )),
        };
    }
    let parts: Vec<&str> = url.split('/').filter(|p| !p.is_empty()).collect();
    let if_match = match request["ifMatch"].as_str() {
        Some(tag) => {
            let inner = tag.trim().trim_start_matches("W/").trim_matches('"');
            Some(inner.parse::<i64>().map_err(|_| {
                ApiError::bad_request("ifMatch must be a version ETag such as W/\"3\"")
            })?)
        }
        None => None,
    };
    let resource = || {
        entry
            .get("resource")
            .cloned()
            .ok_or_else(|| ApiError::bad_request("this entry needs a resource"))
    };
    match (method, parts.as_slice()) {
        ("GET", [t, id]) => {
            let r = state
                .store
                .read(ctx, resource_type(t)?, &resource_id(id)?)
                .await?;
            Ok(stored_entry_response(StatusCode::OK, &r, state))
        }
        ("GET", [t, id, "_history", v]) => {
            let version: i64 = v
                .parse()
                .map_err(|_| ApiError::not_found("no such version"))?;
            let r = state
                .store
                .vread(ctx, resource_type(t)?, &resource_id(id)?, version)
                .await?;
            Ok(stored_entry_response(StatusCode::OK, &r, state))
        }
        ("POST", [t]) => {
            let created = state
                .store
                .create(
                    ctx,
                    resource_type(t)?,
                    resource()?,
                    request["ifNoneExist"].as_str(),
                )
                .await?;
            Ok(match created {
                Created::New(r) => stored_entry_response(StatusCode::CREATED, &r, state),
                Created::Existing(r) => stored_entry_response(StatusCode::OK, &r, state),
            })
        }
        ("PUT", [t, id]) => {
            let updated = state
                .store
                .update(
                    ctx,
                    resource_type(t)?,
                    &resource_id(id)?,
                    resource()?,
                    if_match,
                )
                .await?;
            let status = if updated.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(stored_entry_response(status, &updated.resource, state))
        }
        ("DELETE", [t, id]) => {
            state
                .store
                .delete(ctx, resource_type(t)?, &resource_id(id)?)
                .await?;
            Ok(serde_json::json!({"response": {"status": "204 No Content"}}))
        }
        _ => Err(ApiError::bad_request(format!(
            "unsupported batch request: {} {}",
            printable(method),
            printable(url)
        ))),
    }
}

/// `self` and `next` links of a paged Bundle: the query that produced it (`kept`), plus the page
/// cursor this request came with (self) or the one after it (next).
fn page_links(
    path: &str,
    kept: &[(String, String)],
    params: &[(String, String)],
    next_cursor: Option<String>,
    previous_cursor: Option<String>,
) -> Vec<Link> {
    let link_to = |cursor: Option<&str>| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in kept {
            ser.append_pair(k, v);
        }
        if let Some(c) = cursor {
            ser.append_pair("_page", c);
        }
        format!("{path}?{}", ser.finish())
    };
    let current = params
        .iter()
        .find(|(k, _)| k == "_page")
        .map(|(_, v)| v.as_str());
    let mut links = vec![Link {
        relation: "self",
        url: link_to(current),
    }];
    if let Some(next) = next_cursor {
        links.push(Link {
            relation: "next",
            url: link_to(Some(&next)),
        });
    }
    if let Some(previous) = previous_cursor {
        links.push(Link {
            relation: "previous",
            url: link_to(Some(&previous)),
        });
    }
    links
}
