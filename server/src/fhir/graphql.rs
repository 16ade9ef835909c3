//! `$graphql` (R4 `graphql.html`) at `[base]/$graphql` and `[base]/[Type]/[id]/$graphql`: the
//! request read from `GET ?query=&variables=&operationName=` or a `POST` body
//! (`application/json` `{"query", "variables", "operationName"}`, or `application/graphql` the
//! query itself), run by the core (`carapace_core::graphql`) as the caller, answered as GraphQL.
//!
//! | outcome | status | body |
//! |---|---|---|
//! | ran (some fields may have failed) | 200 | `{"data": …}`, plus `"errors"` naming each field that answered `null` and why |
//! | not a query this server runs (syntax, unknown fragment or variable, mutation, unsupported directive) | 400 | OperationOutcome `invalid` |
//! | over a limit (query size, nesting, depth, resources, `_count`, answer size) | 400 | OperationOutcome `too-costly` |
//! | the instance root is not there to the caller | 404 / 410 | OperationOutcome, as its read |
//! | the store failed | 503 / 500 | OperationOutcome, as a read |

use super::answer::Answer;
use super::dispatch::Input;
use super::intake;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::graphql::{Cause, Refusal, Request, Root};
use hyper::StatusCode;
use serde_json::{json, Value};

pub async fn serve(
    state: &AppState,
    ctx: &AccessContext,
    target: Option<(ResourceType, ResourceId)>,
    by_post: bool,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let request = if by_post {
        let (headers, body) = input.body.http()?;
        if intake::media_type(headers).as_deref() == Some("application/graphql") {
            let text = intake::read_body(state, headers, body, &["application/graphql"]).await?;
            Request {
                query: String::from_utf8(text.to_vec())
                    .map_err(|_| ApiError::bad_request("the query is not UTF-8 text"))?,
                ..Request::default()
            }
        } else {
            let posted = intake::read_json(state, headers, body, &["application/json"]).await?;
            posted_request(posted)?
        }
    } else {
        url_request(input.params)?
    };
    let root = match target {
        None => Root::System,
        Some((rt, id)) => Root::Instance(rt, id),
    };
    let response = state
        .store
        .graphql(ctx, &state.base, root, request)
        .await
        .map_err(refused)?;
    let errors: Vec<Value> = response
        .errors
        .into_iter()
        .map(|e| {
            let message = match e.cause {
                // What the read or search would have said, in the words outcome.rs gives it.
                Cause::Store(s) => ApiError::from(s).message,
                Cause::Query(m) => m,
            };
            json!({
                "message": message,
                "locations": [{"line": e.line, "column": e.column}],
                "path": e.path,
            })
        })
        .collect();
    let mut answer = json!({ "data": response.data });
    if !errors.is_empty() {
        answer["errors"] = Value::Array(errors);
    }
    Ok(Answer::Json(answer.to_string().into_bytes()))
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Bad(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
        Refusal::Limit(m) => ApiError::new(StatusCode::BAD_REQUEST, "too-costly", m),
        Refusal::Store(e) => e.into(),
    }
}

fn missing_query() -> ApiError {
    ApiError::bad_request("$graphql needs a query: ?query=… or a POST body {\"query\": …}")
}

/// `GET $graphql?query=…&variables=…&operationName=…` (variables as JSON text).
fn url_request(params: &[(String, String)]) -> Result<Request, ApiError> {
    let find = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let query = find("query").cloned().ok_or_else(missing_query)?;
    let variables = match find("variables").filter(|v| !v.is_empty()) {
        Some(text) => Some(
            carapace_core::fhir::json::parse(text.as_bytes())
                .map_err(|_| ApiError::bad_request("variables must be a JSON object"))?,
        ),
        None => None,
    };
    Ok(Request {
        query,
        variables,
        operation_name: find("operationName").cloned(),
    })
}

/// `POST $graphql` with `{"query": …, "variables": {…}, "operationName": …}`.
fn posted_request(posted: Value) -> Result<Request, ApiError> {
    let Value::Object(mut posted) = posted else {
        return Err(missing_query());
    };
    let query = match posted.remove("query") {
        Some(Value::String(q)) => q,
        _ => return Err(missing_query()),
    };
    let operation_name = match posted.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(ApiError::bad_request("operationName must be a string")),
    };
    Ok(Request {
        query,
        variables: posted.remove("variables"),
        operation_name,
    })
}
