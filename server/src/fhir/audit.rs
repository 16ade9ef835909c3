//! `GET /fhir/AuditEvent` and `GET /fhir/AuditEvent/{id}`: the audit trail for administrators,
//! and for patients their own record's events. Searchable by `date` (with prefixes, repeatable),
//! `agent` (user name or client id), `patient`, `action`, `outcome`, `subtype` and `purpose`;
//! newest first, `_count` per page, `next` links. AuditEvents are written by the server alone.

use super::answer::Answer;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::reference::SearchTarget;
use carapace_core::store::AuditQuery;
use hyper::StatusCode;
use serde_json::json;

const DEFAULT_COUNT: usize = 50;

/// Read the search parameters; unknown ones are refused (a filter silently ignored on the audit
/// trail would show more than asked, or hide what was asked for).
fn parse(params: &[(String, String)]) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        count: DEFAULT_COUNT,
        ..AuditQuery::default()
    };
    for (name, value) in params {
        // Values are bound as text, and PostgreSQL text holds no NUL.
        if name.contains('\0') || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "search parameter '{}' holds a NUL character",
                carapace_core::fhir::printable(name)
            )));
        }
        let value = value.trim();
        let text = || Some(value.to_string());
        match name.as_str() {
            "date" => {
                let range = carapace_core::fhir::date_search_range(value)
                    .map_err(|e| ApiError::bad_request(format!("date: {e}")))?;
                if range.negate {
                    return Err(ApiError::bad_request("date: ne is not supported here"));
                }
                if let Some(lo) = range.lo {
                    q.since = Some(q.since.map_or(lo, |s| s.max(lo)));
                }
                if let Some(hi) = range.hi {
                    q.until = Some(q.until.map_or(hi, |u| u.min(hi)));
                }
            }
            "agent" | "agent-name" => q.agent = text(),
            "patient" => {
                let bad = || ApiError::bad_request("patient: give a patient's id or Patient/id");
                q.patient = match SearchTarget::parse(value).map_err(|_| bad())? {
                    SearchTarget::Resource { resource_type, id }
                        if resource_type.is_none_or(|t| t.as_str() == "Patient") =>
                    {
                        Some(format!("Patient/{id}"))
                    }
                    _ => return Err(bad()),
                }
            }
            "action" if matches!(value, "C" | "R" | "U" | "D" | "E") => q.action = text(),
            "outcome" if matches!(value, "0" | "4" | "8" | "12") => q.outcome = text(),
            "subtype" => q.subtype = text(),
            "purpose" => q.purpose = text(),
            "_count" => {
                q.count = value
                    .parse()
                    .map_err(|_| ApiError::bad_request("_count must be a whole number"))?
            }
            "_page" => {
                q.before_id = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("_page is not a page of this search"))?,
                )
            }
            "action" | "outcome" => {
                return Err(ApiError::bad_request(format!(
                    "{name}: '{}' is not a code of the AuditEvent {name} value set",
                    carapace_core::fhir::printable(value)
                )))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "AuditEvent search takes date, agent, patient, action, outcome, subtype, \
                     purpose, _count and _page; not '{}'",
                    carapace_core::fhir::printable(other)
                )))
            }
        }
    }
    Ok(q)
}

pub async fn search(
    state: &AppState,
    ctx: &AccessContext,
    params: &[(String, String)],
) -> Result<Answer, ApiError> {
    let query = parse(params)?;
    let page = state.store.audit_events(ctx, &query).await?;
    let base = format!("{}/AuditEvent", state.base);
    let kept: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_page")
        .cloned()
        .collect();
    let url = |extra: Option<i64>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            s.append_pair(k, v);
        }
        if let Some(id) = extra {
            s.append_pair("_page", &id.to_string());
        }
        format!("{base}?{}", s.finish())
    };
    let mut link = vec![json!({"relation": "self", "url": url(query.before_id)})];
    if let Some(next) = page.next {
        link.push(json!({"relation": "next", "url": url(Some(next))}));
    }
    let entry: Vec<_> = page
        .events
        .into_iter()
        .map(|(id, event)| {
            json!({"fullUrl": format!("{base}/{id}"), "resource": event,
                   "search": {"mode": "match"}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "link": link,
                        "entry": entry});
    Ok(Answer::Json(bundle.to_string().into_bytes()))
}

pub async fn read(state: &AppState, ctx: &AccessContext, id: &str) -> Result<Answer, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "AuditEvent/{} is not known",
            carapace_core::fhir::printable(id)
        ))
    };
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let query = AuditQuery {
        id: Some(id),
        count: 1,
        ..AuditQuery::default()
    };
    let page = state.store.audit_events(ctx, &query).await?;
    match page.events.into_iter().next() {
        Some((_, event)) => Ok(Answer::Json(event.to_string().into_bytes())),
        None => Err(not_found()),
    }
}

pub fn not_writable() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "AuditEvents are written by the server alone; read them with GET",
    )
}
