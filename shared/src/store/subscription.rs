//! Subscriptions (R4 `subscription.html`, channel `rest-hook`) as they are written: what a
//! Subscription must say to be taken — criteria the search parser reads, a channel this server
//! delivers over, an endpoint it may reach — the status the server sets, and who owns it.
//!
//! Every create and update of a Subscription passes [`Store::admit_subscription`] (from
//! `prepare_create`/`prepare_update`, which every write path takes) and records its owner in the
//! write's own transaction ([`record_owners`]). Delivery is `notify.rs`.

use super::{Store, StoreError};
use crate::access::AccessContext;
use crate::fhir::validate::{Issue, IssueType};
use crate::fhir::ResourceType;
use serde_json::Value;
use std::time::Duration;

/// What an administrator lets Subscriptions do (`CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS`,
/// `_FULL_PAYLOAD`, `_RETRY_MS`).
#[derive(Debug, Clone)]
pub struct SubscriptionRules {
    /// Origins an endpoint may have although it is plain `http`, or at a loopback, private or
    /// link-local address (`CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS`). Anything else must be
    /// `https` at a public address.
    pub allowed_origins: Vec<String>,
    /// Origins that may receive whole resources (`channel.payload` `application/fhir+json`,
    /// `CARAPACE_SUBSCRIPTION_FULL_PAYLOAD`); every other endpoint gets a ping (no body).
    pub full_payload: Vec<String>,
    /// The first retry's delay; each further one doubles it, up to an hour
    /// (`CARAPACE_SUBSCRIPTION_RETRY_MS`).
    pub retry_base: Duration,
}

impl Default for SubscriptionRules {
    fn default() -> Self {
        SubscriptionRules {
            allowed_origins: Vec::new(),
            full_payload: Vec::new(),
            retry_base: Duration::from_secs(10),
        }
    }
}

impl SubscriptionRules {
    pub fn allows_any_address(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }

    pub fn allows_full_payload(&self, origin: &str) -> bool {
        self.full_payload.iter().any(|o| o == origin)
    }
}

/// An origin as a setting lists it (`https://hooks.example`, `http://127.0.0.1:8099`): scheme,
/// host and port, nothing else; returned in the form [`origin_of`] gives an endpoint.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "'{}' is not an origin such as https://hooks.example:8443",
            printable(text)
        )
    };
    let url = url::Url::parse(text.trim()).map_err(|_| bad())?;
    let bare = url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && !text.trim().ends_with('/');
    if !bare || !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad());
    }
    Ok(origin_of(&url))
}

/// `scheme://host[:port]` of an endpoint, the default port left out.
pub fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

fn printable(s: &str) -> String {
    crate::fhir::printable(s)
}

/// A Subscription as admitted: what its owner row records.
#[derive(Debug, Clone)]
pub(super) struct Admitted {
    pub(super) criteria_type: ResourceType,
    /// Its status is `active` (not `off`).
    pub(super) active: bool,
}

/// A Subscription's channel, read from a stored (already admitted) version.
pub(super) struct Channel {
    pub(super) endpoint: url::Url,
    pub(super) headers: Vec<(String, String)>,
    pub(super) full_payload: bool,
}

/// Parameters that shape a search's answer rather than what matches: meaningless for criteria.
const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_page",
    "_format",
    "_pretty",
    "_sort",
    "_include",
    "_include:iterate",
    "_revinclude",
    "_revinclude:iterate",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
];

/// Headers the server sets itself, or that would change how the request is framed.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

const MAX_HEADERS: usize = 16;
const MAX_HEADER_BYTES: usize = 4096;

fn refused(code: IssueType, path: &str, message: impl Into<String>) -> StoreError {
    StoreError::Unprocessable(vec![Issue::error(code, path, message)])
}

/// The criteria's type and search parameters (`Observation?code=http://loinc.org|1234-5`),
/// parsed by the search parser as a search of that type would be.
pub(super) fn parse_criteria(
    criteria: &str,
) -> Result<crate::search::query::SearchQuery, StoreError> {
    let path = "Subscription.criteria";
    let (type_name, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    let resource_type = ResourceType::parse(type_name).ok_or_else(|| {
        refused(
            IssueType::Value,
            path,
            format!(
                "the criteria must be a search such as Observation?code=...; '{}' is not an R4 resource type",
                printable(type_name)
            ),
        )
    })?;
    let pairs = super::read::form_pairs(query);
    if let Some((name, _)) = pairs
        .iter()
        .find(|(name, _)| RESULT_PARAMETERS.contains(&name.as_str()))
    {
        return Err(refused(
            IssueType::NotSupported,
            path,
            format!(
                "'{}' shapes a search's answer; criteria take only parameters that decide a match",
                printable(name)
            ),
        ));
    }
    crate::search::query::parse(resource_type, &pairs, true).map_err(|e| {
        refused(
            IssueType::NotSupported,
            path,
            format!("the criteria are not a search this server runs: {}", e.0),
        )
    })
}

/// The channel of a Subscription: `rest-hook` only, to an endpoint these rules allow.
pub(super) fn read_channel(
    rules: &SubscriptionRules,
    resource: &Value,
) -> Result<Channel, StoreError> {
    let channel = resource.get("channel").unwrap_or(&Value::Null);
    match channel.get("type").and_then(Value::as_str) {
        Some("rest-hook") => {}
        Some("websocket") => {
            return Err(refused(
                IssueType::NotSupported,
                "Subscription.channel.type",
                "channel type websocket is not supported by this server; use rest-hook",
            ))
        }
        Some(other) => {
            return Err(refused(
                IssueType::NotSupported,
                "Subscription.channel.type",
                format!(
                    "channel type '{}' is not supported by this server; use rest-hook",
                    printable(other)
                ),
            ))
        }
        None => {
            return Err(refused(
                IssueType::Required,
                "Subscription.channel.type",
                "a Subscription needs channel.type (rest-hook)",
            ))
        }
    }
    let path = "Subscription.channel.endpoint";
    let text = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refused(
                IssueType::Required,
                path,
                "a rest-hook needs channel.endpoint",
            )
        })?;
    let endpoint = url::Url::parse(text)
        .ok()
        .filter(|u| u.host().is_some() && matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            refused(
                IssueType::Value,
                path,
                "channel.endpoint must be an absolute https URL",
            )
        })?;
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(refused(
            IssueType::Value,
            path,
            "channel.endpoint may not carry credentials; send them in channel.header",
        ));
    }
    if endpoint.fragment().is_some() {
        return Err(refused(
            IssueType::Value,
            path,
            "channel.endpoint may not carry a fragment",
        ));
    }
    let origin = origin_of(&endpoint);
    if endpoint.scheme() != "https" && !rules.allows_any_address(&origin) {
        return Err(refused(
            IssueType::BusinessRule,
            path,
            "rest-hook endpoints must be https (plain http only to origins an administrator \
             listed in CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS)",
        ));
    }
    let full_payload = match channel.get("payload").and_then(Value::as_str) {
        None => false,
        Some(mime) if mime.split(';').next().map(str::trim) == Some("application/fhir+json") => {
            if !rules.allows_full_payload(&origin) {
                return Err(refused(
                    IssueType::BusinessRule,
                    "Subscription.channel.payload",
                    "whole resources are sent only to endpoints an administrator listed in \
                     CARAPACE_SUBSCRIPTION_FULL_PAYLOAD; leave channel.payload out for a \
                     notification without a body",
                ));
            }
            true
        }
        Some(other) => {
            return Err(refused(
                IssueType::NotSupported,
                "Subscription.channel.payload",
                format!(
                    "payload '{}' is not supported; use application/fhir+json, or none",
                    printable(other)
                ),
            ))
        }
    };
    let mut headers = Vec::new();
    let given = channel.get("header").and_then(Value::as_array);
    for (i, h) in given.into_iter().flatten().enumerate() {
        let path = format!("Subscription.channel.header[{i}]");
        let (name, value) = h
            .as_str()
            .and_then(|h| h.split_once(':'))
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| refused(IssueType::Value, &path, "a header is 'Name: value'"))?;
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        // Visible ASCII and spaces only: no line break can split the request.
        let value_ok = value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
        if !name_ok || !value_ok || name.len() + value.len() > MAX_HEADER_BYTES {
            return Err(refused(
                IssueType::Value,
                &path,
                "a header is 'Name: value' in visible ASCII, at most 4096 bytes",
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(refused(
                IssueType::BusinessRule,
                &path,
                format!("the server sets the {name} header itself"),
            ));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    if headers.len() > MAX_HEADERS {
        return Err(refused(
            IssueType::BusinessRule,
            "Subscription.channel.header",
            "at most 16 headers",
        ));
    }
    Ok(Channel {
        endpoint,
        headers,
        full_payload,
    })
}

impl Store {
    /// A Subscription as a client writes it: criteria and channel checked (422 naming what is
    /// refused), the criteria's type searchable by the writer, and the status the server's:
    /// `off` stays off, anything else becomes `active` (R4's requested → active) with no `error`.
    /// `None` for every other type.
    pub(super) fn admit_subscription(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        resource: &mut Value,
    ) -> Result<Option<Admitted>, StoreError> {
        if resource_type.as_str() != "Subscription" {
            return Ok(None);
        }
        let criteria = resource
            .get("criteria")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                refused(
                    IssueType::Required,
                    "Subscription.criteria",
                    "a Subscription needs criteria",
                )
            })?;
        let query = parse_criteria(criteria)?;
        // The owner's searches decide every notification: one who may not search the type
        // would never be told anything.
        super::search::authorize_search(ctx, &query, chrono::Datelike::year(&self.now()))?;
        read_channel(&self.subscription_rules, resource)?;
        let active = resource.get("status").and_then(Value::as_str) != Some("off");
        if let Value::Object(map) = resource {
            map.insert(
                "status".into(),
                Value::String(if active { "active" } else { "off" }.into()),
            );
            map.remove("error");
        }
        Ok(Some(Admitted {
            criteria_type: query.resource_type,
            active,
        }))
    }
}

/// Record who owns the admitted Subscriptions just written, in the write's transaction: the
/// writer (a later writer becomes the owner: nobody can point another's visibility at their own
/// endpoint). The failure count starts again.
pub(super) async fn record_owners(
    tx: &mut sqlx::PgConnection,
    ctx: &AccessContext,
    written: &[(&str, &Admitted)],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    if written.is_empty() {
        return Ok(());
    }
    let scopes: Vec<String> = ctx.scopes.iter().map(|s| s.to_string()).collect();
    for (id, admitted) in written {
        sqlx::query(
            "INSERT INTO subscription_owners
                    (id, criteria_type, active, principal, client_id, role, scopes, patient,
                     failures, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)
             ON CONFLICT (id) DO UPDATE
                SET criteria_type = EXCLUDED.criteria_type, active = EXCLUDED.active,
                    principal = EXCLUDED.principal, client_id = EXCLUDED.client_id,
                    role = EXCLUDED.role, scopes = EXCLUDED.scopes, patient = EXCLUDED.patient,
                    failures = 0, updated_at = EXCLUDED.updated_at",
        )
        .bind(id)
        .bind(admitted.criteria_type.as_str())
        .bind(admitted.active)
        .bind(&ctx.principal)
        .bind(&ctx.client)
        .bind(ctx.role.as_str())
        .bind(&scopes)
        .bind(&ctx.patient)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // Every active Subscription costs an audited search per matching write: bounded per owner.
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subscription_owners WHERE active AND principal = $1",
    )
    .bind(&ctx.principal)
    .fetch_one(&mut *tx)
    .await?;
    if active > MAX_ACTIVE_PER_OWNER {
        return Err(refused(
            IssueType::BusinessRule,
            "Subscription.status",
            format!(
                "an owner may have at most {MAX_ACTIVE_PER_OWNER} active Subscriptions (set others off)"
            ),
        ));
    }
    Ok(())
}

/// Active Subscriptions one principal may own.
const MAX_ACTIVE_PER_OWNER: i64 = 100;

/// A deleted Subscription notifies no one.
pub(super) async fn record_deleted(
    tx: &mut sqlx::PgConnection,
    resource_type: ResourceType,
    id: &str,
) -> Result<(), sqlx::Error> {
    if resource_type.as_str() == "Subscription" {
        sqlx::query("UPDATE subscription_owners SET active = false WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> SubscriptionRules {
        SubscriptionRules {
            allowed_origins: vec!["http://127.0.0.1:9000".into()],
            full_payload: vec!["https://full.example".into()],
            ..Default::default()
        }
    }

    fn channel(c: Value) -> Result<Channel, StoreError> {
        read_channel(
            &rules(),
            &json!({"resourceType": "Subscription", "channel": c}),
        )
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://a.example:443").unwrap(),
            "https://a.example"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        for bad in [
            "https://a.example/",
            "https://a.example/x",
            "ftp://a",
            "a.example",
            "https://u:p@a",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channels_are_rest_hooks_to_allowed_endpoints() {
        assert!(channel(json!({"type": "rest-hook", "endpoint": "https://x.example/h"})).is_ok());
        assert!(
            channel(json!({"type": "rest-hook", "endpoint": "http://127.0.0.1:9000/h"})).is_ok()
        );
        for refused in [
            json!({"type": "websocket"}),
            json!({"type": "email", "endpoint": "mailto:a@b"}),
            json!({"type": "rest-hook"}),
            json!({"type": "rest-hook", "endpoint": "http://x.example/h"}),
            json!({"type": "rest-hook", "endpoint": "https://u:p@x.example/h"}),
            json!({"type": "rest-hook", "endpoint": "https://x.example/h", "payload": "application/fhir+json"}),
            json!({"type": "rest-hook", "endpoint": "https://x.example/h", "payload": "application/fhir+xml"}),
            json!({"type": "rest-hook", "endpoint": "https://x.example/h", "header": ["Host: y"]}),
            json!({"type": "rest-hook", "endpoint": "https://x.example/h", "header": ["A: b\r\nC: d"]}),
        ] {
            assert!(
                matches!(channel(refused.clone()), Err(StoreError::Unprocessable(_))),
                "{refused}"
            );
        }
        let full = channel(
            json!({"type": "rest-hook", "endpoint": "https://full.example/h",
            "payload": "application/fhir+json", "header": ["Authorization: Bearer x"]}),
        )
        .unwrap();
        assert!(full.full_payload);
        assert_eq!(
            full.headers,
            vec![("Authorization".into(), "Bearer x".into())]
        );
    }

    #[test]
    fn criteria_are_searches_the_parser_reads() {
        assert!(parse_criteria("Observation?code=http://loinc.org|1234-5").is_ok());
        assert!(parse_criteria("Observation").is_ok());
        for bad in [
            "Nope?x=1",
            "Observation?no-such-parameter=1",
            "Observation?_count=5",
            "Observation?_include=Observation:subject",
        ] {
            assert!(
                matches!(parse_criteria(bad), Err(StoreError::Unprocessable(_))),
                "{bad}"
            );
        }
    }
}
