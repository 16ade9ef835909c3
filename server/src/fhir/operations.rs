//! The operations on stored resources: `$validate` (type and instance level),
//! `Patient/$everything` and `Patient/$summary`. The terminology operations, which read no stored resource, are in
//! `terminology.rs`.

use super::answer::Answer;
use super::dispatch::Input;
use super::intake;
use super::search::{page_links, SearchBundle, SearchEntry, SearchMode};
use crate::outcome::ApiError;
use crate::AppState;
use bytes::Bytes;
use carapace_core::access::AccessContext;
use carapace_core::fhir::validate;
use carapace_core::fhir::{printable, ResourceId, ResourceType};
use carapace_core::search::interaction_params;
use carapace_core::store::ValidateMode;
use chrono::SecondsFormat;
use hyper::StatusCode;
use serde_json::value::RawValue;

/// `$validate` at type and instance level, GET and POST: the operation's parameters (`mode`,
/// `profile`) from the query and from a `Parameters` body (whose `resource` is the resource to
/// validate; any other body is the resource itself). The checks are the store's; the answer is an
/// OperationOutcome, 200 whether or not the resource is valid (the operation itself succeeded).
pub async fn validate(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: Option<ResourceId>,
    by_post: bool,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let mut mode = None;
    let mut profiles = Vec::new();
    for (k, v) in input.params {
        match k.as_str() {
            "mode" => mode = Some(v.clone()),
            "profile" => profiles.push(v.clone()),
            _ => {}
        }
    }
    // A POST may have no body only to ask whether an instance may be deleted.
    let delete = mode.as_deref() == Some("delete");
    let body = match by_post {
        false => None,
        true => {
            let (headers, body) = input.body.http()?;
            if delete && !headers.contains_key("content-type") {
                None
            } else {
                let bytes =
                    intake::read_body(state, headers, body, intake::RESOURCE_MEDIA_TYPES).await?;
                if bytes.is_empty() && delete {
                    None
                } else {
                    Some(intake::resource_of(&bytes)?)
                }
            }
        }
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
    Ok(Answer::Json(body.to_string().into_bytes()))
}

/// `Patient/{id}/$everything` with `_since`, `_type`, `_count` and `next` links.
pub async fn everything(
    state: &AppState,
    ctx: &AccessContext,
    patient: &ResourceId,
    params: &[(String, String)],
) -> Result<Answer, ApiError> {
    let query = interaction_params::parse_everything(params)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?;
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
    Ok(Answer::Json(body))
}

/// The IPS Bundle profile, the only one `$summary` makes.
const IPS_BUNDLE: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips";

/// `Patient/{id}/$summary` (IPS): the patient summary document, built by the store from what the
/// caller may read. GET, or POST with no body or a `Parameters` body. `profile`, if given, must be
/// the IPS Bundle profile; `identifier` (finding the patient by an identifier) is not supported.
pub async fn summary(
    state: &AppState,
    ctx: &AccessContext,
    patient: &ResourceId,
    by_post: bool,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let mut params: Vec<(String, String)> = input.params.to_vec();
    let body = match by_post {
        false => Bytes::new(),
        true => {
            let (headers, body) = input.body.http()?;
            if headers.contains_key("content-type") {
                intake::read_body(state, headers, body, intake::RESOURCE_MEDIA_TYPES).await?
            } else {
                // Without a media type only an empty body is taken.
                let declared = headers
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match intake::read_limited(body, state.config.body_limit, declared).await? {
                    Some(b) if b.is_empty() => b,
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "not-supported",
                            "send no body, or a Parameters resource as application/fhir+json",
                        ))
                    }
                }
            }
        }
    };
    if !body.is_empty() {
        let value = intake::resource_of(&body)?;
        if value["resourceType"] != "Parameters" {
            return Err(ApiError::bad_request(
                "POST $summary takes no body or a Parameters resource",
            ));
        }
        for p in value["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("").to_string();
            let text = ["valueCanonical", "valueUri", "valueString"]
                .iter()
                .find_map(|k| p[k].as_str());
            match (name.as_str(), text) {
                ("identifier", _) => params.push((name, String::new())),
                (_, Some(v)) => params.push((name, v.to_string())),
                _ => {}
            }
        }
    }
    for (k, v) in &params {
        match k.as_str() {
            "profile" if v.split('|').next() != Some(IPS_BUNDLE) => {
                return Err(ApiError::bad_request(format!(
                    "$summary makes {IPS_BUNDLE} documents only, not '{}'",
                    printable(v)
                )))
            }
            "identifier" => return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "$summary takes the patient in the URL (Patient/[id]/$summary), not by identifier",
            )),
            _ => {}
        }
    }
    let document = state.store.summary(ctx, patient, &state.base).await?;
    Ok(Answer::Json(document.to_string().into_bytes()))
}
