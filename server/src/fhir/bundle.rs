//! Batch and transaction Bundles (`POST` to the base). Each entry's method and URL go through the
//! same parse as a REST request (`route.rs`). A batch entry then runs through the same dispatcher
//! as REST and answers from its result; a transaction's entries become the core's `TxEntry`s,
//! all written or none by `Store::transaction`, and its `TxResult`s become the entries' answers.

use super::answer::{Answer, Entry, EntryResponse};
use super::dispatch::{self, Body, Input};
use super::incoming::{IncomingBundle, IncomingEntry};
use super::intake;
use super::route::{self, Interaction, Route, Unroutable};
use super::write::create_condition;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::printable;
use carapace_core::fhir::validate;
use carapace_core::store::{TxEntry, TxResult, Written};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::StatusCode;

/// Entries per batch or transaction; the body limit bounds a Bundle's size as well.
const MAX_BATCH_ENTRIES: usize = 10_000;

/// A posted Bundle: read (two at a time server-wide, see `AppState::bundle_slots`), split into
/// entries, and run as the batch or transaction it says it is.
pub async fn serve(
    state: &AppState,
    ctx: &AccessContext,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Answer, ApiError> {
    let _slot = state.bundle_slots.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the server is shutting down",
        )
    })?;
    let body = intake::read_body(state, headers, body, intake::RESOURCE_MEDIA_TYPES).await?;
    let bundle = IncomingBundle::parse(body)?;
    let is_bundle = bundle.resource_type.as_deref() == Some("Bundle");
    match bundle.kind.as_deref() {
        Some("batch") if is_bundle => {
            crate::metrics::label_as("batch");
            batch(state, ctx, bundle.entries).await
        }
        Some("transaction") if is_bundle => {
            crate::metrics::label_as("transaction");
            transaction(state, ctx, bundle.entries).await
        }
        _ => Err(ApiError::bad_request(
            "POST to the base takes a Bundle of type batch or transaction",
        )),
    }
}

/// Which kind of Bundle an entry is in: it decides which interactions the entry may be.
#[derive(Clone, Copy)]
enum Kind {
    Batch,
    Transaction,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Batch => "batch",
            Kind::Transaction => "transaction",
        }
    }

    /// Reads and writes of resources; a batch also searches. (Operations, history, patches and
    /// Bundles are REST only.)
    fn allows(self, interaction: &Interaction) -> bool {
        use Interaction as I;
        match interaction {
            I::Read { .. }
            | I::Vread { .. }
            | I::Create { .. }
            | I::Update { .. }
            | I::Delete { .. } => true,
            // A search over several types costs a query per type: REST only, where the rate
            // limits count each request.
            I::Search { by_post, .. } => matches!(self, Kind::Batch) && !by_post,
            _ => false,
        }
    }
}

/// An entry's `request`, parsed: its interaction, the query of its URL and its conditions.
struct EntryRequest {
    interaction: Interaction,
    params: Vec<(String, String)>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    freshness: intake::Freshness,
}

impl EntryRequest {
    fn parse(state: &AppState, entry: &IncomingEntry, kind: Kind) -> Result<Self, ApiError> {
        let request = &entry.request;
        let method = request["method"].as_str().unwrap_or("");
        let url = request["url"].as_str().unwrap_or("");
        // Relative URLs (`Patient`, `Patient/1`, `Patient/1/_history/2`), searches
        // (`Patient?name=x`), conditional writes (`Patient?identifier=a|b`), or absolute ones
        // under this server's base.
        let url = url.strip_prefix(&format!("{}/", state.base)).unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let unsupported = || {
            ApiError::bad_request(format!(
                "unsupported {} request: {} {}",
                kind.name(),
                printable(method),
                printable(url)
            ))
        };
        let interaction = match route::parse(method, path, query) {
            Ok(Route::Interaction(i)) if kind.allows(&i) => i,
            Ok(_) | Err(Unroutable::NoInteraction(_)) => return Err(unsupported()),
            Err(Unroutable::Bad(e)) => return Err(e),
        };
        let if_match = match request["ifMatch"].as_str() {
            Some(tag) if interaction.takes_if_match() => {
                Some(intake::version_tag(tag).ok_or_else(|| {
                    ApiError::bad_request("ifMatch must be a version ETag such as W/\"3\"")
                })?)
            }
            _ => None,
        };
        Ok(EntryRequest {
            interaction,
            params: form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
            if_match,
            if_none_exist: request["ifNoneExist"].as_str().map(str::to_string),
            freshness: intake::Freshness::from_texts(
                request["ifNoneMatch"].as_str(),
                request["ifModifiedSince"].as_str(),
            ),
        })
    }
}

fn too_many(kind: Kind) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-costly",
        format!(
            "a {} holds at most {MAX_BATCH_ENTRIES} entries",
            kind.name()
        ),
    )
}

/// A `batch` Bundle: each entry processed on its own, in order, with its own status; one entry's
/// failure does not affect the others. Entries are the same interactions as over REST, under the
/// caller's own access.
async fn batch(
    state: &AppState,
    ctx: &AccessContext,
    entries: Vec<IncomingEntry>,
) -> Result<Answer, ApiError> {
    // Each entry's resource is validated when its own interaction runs, so one bad entry fails
    // alone; the envelope only has to be a list of entries.
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(too_many(Kind::Batch));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let answer = match EntryRequest::parse(state, &entry, Kind::Batch) {
            Ok(request) => {
                let input = Input {
                    params: &request.params,
                    if_match: request.if_match,
                    if_none_exist: request.if_none_exist,
                    freshness: request.freshness,
                    strict: false,
                    body: Body::Entry(entry.resource),
                };
                dispatch::run(state, ctx, request.interaction, input).await
            }
            Err(e) => Err(e),
        };
        out.push(match answer {
            Ok(answer) => answer.into_entry(state),
            Err(e) => Entry::failed(&e),
        });
        tracing::debug!(entry = i, "batch entry processed");
    }
    response_bundle("batch-response", out)
}

/// A `transaction` Bundle: all writes or none (see `Store::transaction`).
async fn transaction(
    state: &AppState,
    ctx: &AccessContext,
    entries: Vec<IncomingEntry>,
) -> Result<Answer, ApiError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(too_many(Kind::Transaction));
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
    let written = |status, w: &Written| Entry {
        response: EntryResponse::written(status, w, state),
        resource: None,
    };
    let out = results
        .into_iter()
        .map(|result| match result {
            TxResult::Created(w) => written(StatusCode::CREATED, &w),
            TxResult::Existing(w) => written(StatusCode::OK, &w),
            TxResult::Updated(u) => {
                let status = if u.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                written(status, &Written::from(&u.resource))
            }
            TxResult::Deleted(_) => Entry::status(StatusCode::NO_CONTENT),
            TxResult::Read(Ok(resource)) => Answer::Resource {
                status: StatusCode::OK,
                resource,
            }
            .into_entry(state),
            TxResult::Read(Err(e)) => Entry::failed(&ApiError::from(e)),
            TxResult::Skipped => Entry::status(StatusCode::OK),
        })
        .collect();
    response_bundle("transaction-response", out)
}

/// A transaction entry as the core runs it.
fn tx_entry(state: &AppState, entry: IncomingEntry) -> Result<TxEntry, ApiError> {
    let request = EntryRequest::parse(state, &entry, Kind::Transaction)?;
    let resource = || {
        entry
            .resource()
            .ok_or_else(|| ApiError::bad_request("this entry needs a resource"))
    };
    Ok(match request.interaction {
        Interaction::Create { rt } => TxEntry::Create {
            resource_type: rt,
            resource: resource()?,
            full_url: entry.full_url.clone(),
            if_none_exist: create_condition(request.if_none_exist, &request.params)?,
        },
        Interaction::Update { rt, target } => TxEntry::Update {
            resource_type: rt,
            target,
            resource: resource()?,
            if_match: request.if_match,
            full_url: entry.full_url.clone(),
        },
        Interaction::Delete { rt, target } => TxEntry::Delete {
            resource_type: rt,
            target,
        },
        Interaction::Read { rt, id } => TxEntry::Read {
            resource_type: rt,
            id,
            version: None,
        },
        Interaction::Vread { rt, id, version } => TxEntry::Read {
            resource_type: rt,
            id,
            version: Some(version),
        },
        // `Kind::Transaction` admits no other interaction.
        _ => {
            return Err(ApiError::bad_request(
                "unsupported transaction request: only reads and writes of resources",
            ))
        }
    })
}

#[derive(serde::Serialize)]
struct ResponseBundle {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    entry: Vec<Entry>,
}

fn response_bundle(bundle_type: &'static str, entry: Vec<Entry>) -> Result<Answer, ApiError> {
    let bundle = ResponseBundle {
        resource_type: "Bundle",
        bundle_type,
        entry,
    };
    serde_json::to_vec(&bundle).map(Answer::Json).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "could not build the response Bundle",
        )
    })
}
