//! The one parse of a FHIR request's method and URL into what it asks for. REST requests, batch
//! entries and transaction entries all come through here, so `PUT Patient?identifier=a|b` means
//! the same thing whichever way it arrives.

use super::terminology::Operation;
use crate::outcome::ApiError;
use carapace_core::fhir::{printable, ResourceId, ResourceType};
use carapace_core::store::Target;
use hyper::StatusCode;

/// Where a request goes: discovery (no token needed), a batch or transaction Bundle, or one
/// interaction.
pub enum Route {
    Capabilities,
    SmartConfiguration,
    /// OpenID Connect discovery, also at the FHIR base (SMART apps look there).
    OpenIdConfiguration,
    /// `POST` to the base: a batch or transaction Bundle.
    Bundle,
    Interaction(Interaction),
}

/// One interaction on resources (R4 `http.html`), or an operation.
pub enum Interaction {
    Read {
        rt: ResourceType,
        id: ResourceId,
    },
    Vread {
        rt: ResourceType,
        id: ResourceId,
        version: i64,
    },
    /// `GET Type?…`, or `POST Type/_search` with the parameters (also) in a form body; within
    /// a patient's compartment for `GET Patient/[id]/Type?…`.
    Search {
        rt: ResourceType,
        by_post: bool,
        compartment: Option<ResourceId>,
    },
    /// A search over several types: the system search (`GET [base]?_type=…`,
    /// `POST [base]/_search`) or every type of a patient's compartment (`GET Patient/[id]/*`).
    SearchAll {
        by_post: bool,
        compartment: Option<ResourceId>,
    },
    /// `POST Type`; conditional when the URL holds search parameters or `If-None-Exist` is sent.
    Create {
        rt: ResourceType,
    },
    Update {
        rt: ResourceType,
        target: Target,
    },
    Patch {
        rt: ResourceType,
        id: ResourceId,
    },
    Delete {
        rt: ResourceType,
        target: Target,
    },
    /// System (`_history`), type or instance history.
    History {
        rt: Option<ResourceType>,
        id: Option<ResourceId>,
    },
    Everything {
        patient: ResourceId,
    },
    /// `Patient/[id]/$summary`: the International Patient Summary document (`POST` with no body
    /// or a `Parameters` body).
    Summary {
        patient: ResourceId,
        by_post: bool,
    },
    /// `$meta` (of a version too), `$meta-add`, `$meta-delete` on an instance.
    Meta {
        rt: ResourceType,
        id: ResourceId,
        version: Option<i64>,
        op: super::meta::MetaOp,
    },
    /// `$validate` at type or instance level.
    Validate {
        rt: ResourceType,
        id: Option<ResourceId>,
        by_post: bool,
    },
    Terminology {
        op: Operation,
        by_post: bool,
    },
    AuditSearch,
    AuditRead {
        id: String,
    },
    /// A Bulk Data kick-off (`$export`, `Patient/$export`, `Group/[id]/$export`).
    Export {
        level: carapace_core::export::Level,
        by_post: bool,
    },
    /// A Bulk Data status URL: polled (`GET`) or cancelled (`DELETE`).
    ExportStatus {
        job: String,
        cancel: bool,
    },
    /// `$graphql` at the system level, or at an instance (the resource is the query's root).
    GraphQl {
        target: Option<(ResourceType, ResourceId)>,
        by_post: bool,
    },
}

impl Interaction {
    /// Writes answer as `Prefer: return=` asks; reads always return the resource.
    pub fn follows_prefer(&self) -> bool {
        matches!(
            self,
            Interaction::Create { .. } | Interaction::Update { .. } | Interaction::Patch { .. }
        )
    }

    /// Updates and patches may be conditional on the version (`If-Match`).
    pub fn takes_if_match(&self) -> bool {
        matches!(
            self,
            Interaction::Update { .. } | Interaction::Patch { .. } | Interaction::Meta { .. }
        )
    }
}

/// Why a request routes nowhere.
pub enum Unroutable {
    /// A part of the URL is wrong (an unknown type, a malformed id, a version that is not one):
    /// the same answer over REST and in a Bundle entry.
    Bad(ApiError),
    /// No interaction has this method and path (REST answers 404, 405 or 501; a Bundle entry
    /// names its request as unsupported).
    NoInteraction(ApiError),
}

impl Unroutable {
    pub fn into_error(self) -> ApiError {
        match self {
            Unroutable::Bad(e) | Unroutable::NoInteraction(e) => e,
        }
    }
}

/// Is this a read or vread of a Binary (`GET Binary/<id>[/_history/<v>]`)?
pub fn is_binary_read(method: &str, path: &str, query: &str) -> bool {
    matches!(
        parse(method, path, query),
        Ok(Route::Interaction(Interaction::Read { rt, .. } | Interaction::Vread { rt, .. }))
            if rt == ResourceType::BINARY
    )
}

/// Parse `method` and `path` (below the FHIR base; leading `/` optional) with its raw `query`.
pub fn parse(method: &str, path: &str, query: &str) -> Result<Route, Unroutable> {
    use Interaction as I;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let by_post = method == "POST";
    if let ([t, op], "GET" | "POST") = (segments.as_slice(), method) {
        if let Some(op) = Operation::of(t, op) {
            return Ok(Route::Interaction(Interaction::Terminology { op, by_post }));
        }
    }
    let interaction = match (segments.as_slice(), method) {
        (["metadata"], "GET") => return Ok(Route::Capabilities),
        ([".well-known", "smart-configuration"], "GET") => return Ok(Route::SmartConfiguration),
        ([".well-known", "openid-configuration"], "GET") => return Ok(Route::OpenIdConfiguration),
        ([], "POST") => return Ok(Route::Bundle),
        ([], "GET") => I::SearchAll {
            by_post: false,
            compartment: None,
        },
        (["_search"], "POST") => I::SearchAll {
            by_post: true,
            compartment: None,
        },
        ([], _) => {
            return Err(Unroutable::NoInteraction(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "the base URL takes GET (a search) and POST of a batch or transaction Bundle",
            )))
        }
        (["_history"], "GET") => I::History { rt: None, id: None },
        (["$graphql"], "GET" | "POST") => I::GraphQl {
            target: None,
            by_post,
        },
        ([t, id, "$graphql"], "GET" | "POST") => I::GraphQl {
            target: Some((resource_type(t)?, resource_id(id)?)),
            by_post,
        },
        (["$export"], "GET" | "POST") => I::Export {
            level: carapace_core::export::Level::System,
            by_post,
        },
        (["Patient", "$export"], "GET" | "POST") => I::Export {
            level: carapace_core::export::Level::Patient,
            by_post,
        },
        (["Group", id, "$export"], "GET" | "POST") => I::Export {
            level: carapace_core::export::Level::Group(resource_id(id)?.as_str().to_string()),
            by_post,
        },
        (["_export", job], "GET" | "DELETE") => I::ExportStatus {
            job: job.to_string(),
            cancel: method == "DELETE",
        },
        ([t, "$validate"], "POST") => I::Validate {
            rt: resource_type(t)?,
            id: None,
            by_post,
        },
        ([t, id, "$validate"], "POST" | "GET") => I::Validate {
            rt: resource_type(t)?,
            id: Some(resource_id(id)?),
            by_post,
        },
        (["AuditEvent"], "GET") => I::AuditSearch,
        (["AuditEvent", id], "GET") => I::AuditRead { id: id.to_string() },
        (["AuditEvent", ..], _) => return Err(Unroutable::Bad(super::audit::not_writable())),
        ([t, id, op], method) if super::meta::MetaOp::of(op).is_some() => {
            let op = super::meta::MetaOp::of(op).unwrap_or(super::meta::MetaOp::Read);
            let allowed = match op {
                super::meta::MetaOp::Read => matches!(method, "GET" | "POST"),
                _ => method == "POST",
            };
            if !allowed {
                return Err(Unroutable::NoInteraction(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    "$meta takes GET or POST; $meta-add and $meta-delete take POST",
                )));
            }
            I::Meta {
                rt: resource_type(t)?,
                id: resource_id(id)?,
                version: None,
                op,
            }
        }
        ([t, id, "_history", version, "$meta"], "GET" | "POST") => {
            let (rt, id) = (resource_type(t)?, resource_id(id)?);
            I::Meta {
                version: Some(version_number(&rt, &id, version)?),
                rt,
                id,
                op: super::meta::MetaOp::Read,
            }
        }
        ([_, "$meta"] | ["$meta"], _) => {
            return Err(Unroutable::NoInteraction(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-supported",
                "$meta is served on an instance ([type]/[id]/$meta): a type's or the system's \
                 would be drawn from resources the caller may not see",
            )))
        }
        (["Patient", id, "$everything"], "GET") => I::Everything {
            patient: resource_id(id)?,
        },
        (["Patient", id, "$summary"], "GET" | "POST") => I::Summary {
            patient: resource_id(id)?,
            by_post,
        },
        (["Patient", id, "*"], "GET") => I::SearchAll {
            by_post: false,
            compartment: Some(resource_id(id)?),
        },
        (["Patient", id, "*", "_search"], "POST") => I::SearchAll {
            by_post: true,
            compartment: Some(resource_id(id)?),
        },
        (["Patient", id, t], "GET") if !t.starts_with(['_', '$']) => {
            let (id, rt) = (resource_id(id)?, resource_type(t)?);
            I::Search {
                rt: in_patient_compartment(rt)?,
                by_post: false,
                compartment: Some(id),
            }
        }
        (["Patient", id, t, "_search"], "POST") => {
            let (id, rt) = (resource_id(id)?, resource_type(t)?);
            I::Search {
                rt: in_patient_compartment(rt)?,
                by_post: true,
                compartment: Some(id),
            }
        }
        ([c, _, t], "GET")
            if !t.starts_with(['_', '$'])
                && matches!(
                    *c,
                    "Encounter" | "RelatedPerson" | "Practitioner" | "Device"
                ) =>
        {
            return Err(Unroutable::NoInteraction(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-supported",
                "compartment searches are supported in the Patient compartment only",
            )))
        }
        ([t, ..], _) if t.starts_with('_') || t.starts_with('$') => {
            return Err(Unroutable::NoInteraction(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-supported",
                "this operation is not supported yet",
            )))
        }
        ([t], "POST") => I::Create {
            rt: resource_type(t)?,
        },
        ([t], "GET") => I::Search {
            rt: resource_type(t)?,
            by_post: false,
            compartment: None,
        },
        ([t, "_search"], "POST") => I::Search {
            rt: resource_type(t)?,
            by_post: true,
            compartment: None,
        },
        ([t], "PUT") => I::Update {
            rt: resource_type(t)?,
            target: conditional_target(query)?,
        },
        ([t], "DELETE") => I::Delete {
            rt: resource_type(t)?,
            target: conditional_target(query)?,
        },
        ([t, "_history"], "GET") => I::History {
            rt: Some(resource_type(t)?),
            id: None,
        },
        ([t, id], "GET") => I::Read {
            rt: resource_type(t)?,
            id: resource_id(id)?,
        },
        ([t, id], "PUT") => I::Update {
            rt: resource_type(t)?,
            target: Target::Id(resource_id(id)?),
        },
        ([t, id], "PATCH") => I::Patch {
            rt: resource_type(t)?,
            id: resource_id(id)?,
        },
        ([t, id], "DELETE") => I::Delete {
            rt: resource_type(t)?,
            target: Target::Id(resource_id(id)?),
        },
        ([t, id, "_history"], "GET") => I::History {
            rt: Some(resource_type(t)?),
            id: Some(resource_id(id)?),
        },
        ([t, id, "_history", version], "GET") => {
            let (rt, id) = (resource_type(t)?, resource_id(id)?);
            let version = version_number(&rt, &id, version)?;
            I::Vread { rt, id, version }
        }
        ([_, ..], _) if segments.len() <= 4 => {
            return Err(Unroutable::NoInteraction(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("{} is not supported here", printable(method)),
            )))
        }
        _ => {
            return Err(Unroutable::NoInteraction(ApiError::not_found(
                "no such endpoint",
            )))
        }
    };
    Ok(Route::Interaction(interaction))
}

fn version_number(rt: &ResourceType, id: &ResourceId, version: &str) -> Result<i64, Unroutable> {
    version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        Unroutable::Bad(ApiError::not_found(format!(
            "{rt}/{id} has no version '{}'",
            printable(version)
        )))
    })
}

fn resource_type(name: &str) -> Result<ResourceType, Unroutable> {
    ResourceType::parse(name).ok_or_else(|| {
        Unroutable::Bad(ApiError::not_found(format!(
            "'{}' is not an R4 resource type",
            printable(name)
        )))
    })
}

fn resource_id(id: &str) -> Result<ResourceId, Unroutable> {
    ResourceId::parse(id).map_err(|e| Unroutable::Bad(ApiError::bad_request(e.to_string())))
}

/// A compartment search's type: one the R4 Patient CompartmentDefinition puts in the compartment.
fn in_patient_compartment(rt: ResourceType) -> Result<ResourceType, Unroutable> {
    if rt.as_str() == "AuditEvent" {
        return Err(Unroutable::Bad(ApiError::bad_request(
            "AuditEvents are searched on their own: GET AuditEvent?patient=…",
        )));
    }
    if rt.in_patient_compartment() {
        Ok(rt)
    } else {
        Err(Unroutable::Bad(ApiError::bad_request(format!(
            "{rt} is not in the Patient compartment (R4 CompartmentDefinition patient)"
        ))))
    }
}

/// The query of a conditional update or delete; it must hold search parameters.
fn conditional_target(query: &str) -> Result<Target, Unroutable> {
    if query.is_empty() {
        return Err(Unroutable::Bad(ApiError::bad_request(
            "a conditional update or delete needs search parameters, such as ?identifier=a|b",
        )));
    }
    Ok(Target::Query(query.to_string()))
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn interaction(method: &str, path: &str, query: &str) -> Option<Interaction> {
        match parse(method, path, query) {
            Ok(Route::Interaction(i)) => Some(i),
            _ => None,
        }
    }

    fn refusal(method: &str, path: &str, query: &str) -> (bool, StatusCode) {
        match parse(method, path, query) {
            Err(Unroutable::Bad(e)) => (true, e.status),
            Err(Unroutable::NoInteraction(e)) => (false, e.status),
            Ok(_) => panic!("{method} {path}?{query} routed"),
        }
    }

    #[test]
    fn a_url_means_the_same_with_or_without_a_leading_slash() {
        for path in ["Patient/p1", "/Patient/p1", "Patient/p1/"] {
            assert!(matches!(
                interaction("GET", path, ""),
                Some(Interaction::Read { rt, id }) if rt.as_str() == "Patient" && id.as_str() == "p1"
            ));
        }
        assert!(matches!(parse("POST", "", ""), Ok(Route::Bundle)));
        assert!(matches!(
            parse("GET", "/metadata", ""),
            Ok(Route::Capabilities)
        ));
    }

    #[test]
    fn conditional_writes_take_their_condition_from_the_query() {
        assert!(matches!(
            interaction("PUT", "Patient", "identifier=a|b"),
            Some(Interaction::Update { target: Target::Query(q), .. }) if q == "identifier=a|b"
        ));
        assert!(matches!(
            interaction("DELETE", "Patient/x", "_format=json"),
            Some(Interaction::Delete {
                target: Target::Id(_),
                ..
            })
        ));
        assert_eq!(
            refusal("DELETE", "Patient", ""),
            (true, StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn bad_parts_and_missing_interactions_are_told_apart() {
        assert_eq!(refusal("GET", "Nope/1", ""), (true, StatusCode::NOT_FOUND));
        assert_eq!(
            refusal("GET", "Patient/1/_history/0", ""),
            (true, StatusCode::NOT_FOUND)
        );
        assert_eq!(
            refusal("POST", "Patient/1", ""),
            (false, StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            refusal("GET", "$meta", ""),
            (false, StatusCode::NOT_IMPLEMENTED)
        );
        assert_eq!(
            refusal("GET", "a/b/c/d/e", ""),
            (false, StatusCode::NOT_FOUND)
        );
        assert!(matches!(
            interaction("GET", "Patient/1/_history/2", ""),
            Some(Interaction::Vread { version: 2, .. })
        ));
        assert!(matches!(
            interaction("GET", "Patient/p1/$summary", ""),
            Some(Interaction::Summary { patient, by_post: false }) if patient.as_str() == "p1"
        ));
        assert!(matches!(
            interaction("POST", "Patient/p1/$summary", ""),
            Some(Interaction::Summary { by_post: true, .. })
        ));
        assert_eq!(
            refusal("DELETE", "Patient/p1/$summary", ""),
            (false, StatusCode::METHOD_NOT_ALLOWED)
        );
        assert!(matches!(
            interaction("POST", "$graphql", ""),
            Some(Interaction::GraphQl {
                target: None,
                by_post: true
            })
        ));
        assert!(matches!(
            interaction("GET", "Patient/p1/$graphql", "query=%7Bid%7D"),
            Some(Interaction::GraphQl { target: Some((rt, id)), by_post: false })
                if rt.as_str() == "Patient" && id.as_str() == "p1"
        ));
    }
}
