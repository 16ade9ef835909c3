//! The CapabilityStatement: exactly what this server supports, no more.

use carapace_core::fhir::profile::builtin;
use carapace_core::fhir::ResourceType;
use carapace_core::search::index;
use carapace_core::search::params::{self, Kind};
use serde_json::{json, Value};

/// What each parameter type supports here (modifiers, prefixes), for its `documentation`.
fn documentation(kind: Kind) -> &'static str {
    match kind {
        Kind::String => {
            "starts-with (case- and accent-insensitive, compared on the first 32 characters), :exact, \
             :missing. :contains is refused (400): the values are encrypted and indexed only by \
             blind indexes of their leading characters."
        }
        Kind::Token => "system|code, |code, system|, code; :not, :text, :of-type (identifiers), :missing",
        Kind::Reference => "id, Type/id, absolute URL; :Type modifier, :missing; chaining and _has",
        Kind::Date => "prefixes eq ne gt lt ge le sa eb ap, precision ranges; :missing",
        Kind::Number => "prefixes eq ne gt lt ge le sa eb ap, precision ranges; :missing",
        Kind::Quantity => "prefixes with number|system|code or number||code; :missing",
        Kind::Uri => "exact, :below, :above; :missing",
        Kind::Composite => "first$second (a token with a token, string, quantity or date); :missing",
    }
}

fn search_params(t: ResourceType) -> Vec<Value> {
    let mut out = vec![
        json!({"name": "_id", "type": "token",
               "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
        json!({"name": "_lastUpdated", "type": "date",
               "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
               "documentation": "prefixes eq ne gt lt ge le sa eb, precision ranges"}),
    ];
    for p in params::for_type(t.as_str()) {
        if index::from_columns(&p.code) || !index::supported(p) {
            continue;
        }
        out.push(
            json!({"name": p.code, "type": p.kind.as_str(), "definition": p.url,
                        "documentation": documentation(p.kind)}),
        );
    }
    out
}

fn reference_params(t: ResourceType) -> Vec<String> {
    params::for_type(t.as_str())
        .into_iter()
        .filter(|p| p.kind == Kind::Reference)
        .map(|p| format!("{t}:{}", p.code))
        .collect()
}

/// The statement for this server's base URL, built once.
pub fn statement(base: &str) -> Value {
    static BUILT: std::sync::OnceLock<(String, Value)> = std::sync::OnceLock::new();
    let (built_for, value) = BUILT.get_or_init(|| (base.to_string(), build(base)));
    if built_for == base {
        value.clone()
    } else {
        build(base)
    }
}

/// The terminology operations a type serves (`ValueSet`, `CodeSystem`), as CapabilityStatement
/// `rest.resource.operation` entries.
fn terminology_operations(resource_type: &str) -> Vec<Value> {
    let op = |name: &str, id: &str| {
        json!({"name": name,
               "definition": format!("http://hl7.org/fhir/OperationDefinition/{id}")})
    };
    match resource_type {
        "ValueSet" => vec![
            op("expand", "ValueSet-expand"),
            op("validate-code", "ValueSet-validate-code"),
        ],
        "CodeSystem" => vec![
            op("lookup", "CodeSystem-lookup"),
            op("validate-code", "CodeSystem-validate-code"),
        ],
        _ => Vec::new(),
    }
}

fn build(base: &str) -> Value {
    let interactions = json!([
        {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"}, {"code": "delete"},
        {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"},
        {"code": "search-type"}
    ]);
    // Which types point at each type (for _revinclude).
    let all: Vec<ResourceType> = ResourceType::all().collect();
    let resources: Vec<Value> = all
        .iter()
        .map(|&t| {
            let mut includes = reference_params(t);
            includes.push(format!("{t}:*"));
            let revincludes: Vec<String> = all
                .iter()
                .flat_map(|&s| {
                    params::for_type(s.as_str())
                        .into_iter()
                        .filter(move |p| {
                            p.kind == Kind::Reference
                                && (p.targets.is_empty()
                                    || p.targets.iter().any(|x| x == t.as_str()))
                        })
                        .map(move |p| format!("{s}:{}", p.code))
                })
                .collect();
            let mut r = json!({
                "type": t.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": search_params(t),
            });
            let mut operations = terminology_operations(t.as_str());
            // Bulk Data (IG 2.0.0) kick-offs at Patient and Group level.
            match t.as_str() {
                "Patient" => {
                    operations.push(json!({"name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}));
                    // The International Patient Summary document of one patient.
                    operations.push(json!({"name": "summary",
                        "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"}));
                }
                "Group" => operations.push(json!({"name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"})),
                _ => {}
            }
            if !operations.is_empty() {
                r["operation"] = Value::Array(operations);
            }
            // The machine-generated summaries guide's profiles, built in (conformance/ig/).
            if let Some(profile) = builtin::for_type(t.as_str()) {
                r["supportedProfile"] = json!([profile]);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Carapace",
        "kind": "instance",
        "software": {"name": "Carapace", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Carapace FHIR R4 server (encrypted at rest)", "url": base},
        "fhirVersion": "4.0.1",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "implementationGuide": [builtin::GUIDE],
        "format": ["json", "application/fhir+json", "xml", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Every resource is encrypted (AES-256-GCM) before it reaches the database; \
                              search runs over keyed blind indexes (HMAC), shifted dates and opaque \
                              references, never over cleartext PHI. Conditional create, update and \
                              delete (single match) take any search parameters. PATCH takes JSON Patch \
                              (application/json-patch+json) and FHIRPath Patch (a Parameters body, \
                              application/fhir+json). Reads answer 304 to If-None-Match and \
                              If-Modified-Since. Compartment search in the Patient compartment \
                              (Patient/[id]/[type], Patient/[id]/*) and system search ([base]?_type=, \
                              POST [base]/_search; _type is required): over several types, every parameter must be one \
                              each type defines, a page holds one type's matches, no total. \
                              _pretty=true indents; Accept-Encoding: gzip compresses resources and \
                              Bundles of 1 KiB or more. Operations: $meta, $meta-add and $meta-delete \
                              on an instance (a change is a new version, under the update rules). \
                              Subscriptions (R4): channel rest-hook only (websocket and others are \
                              refused with 422); payload none (a ping) or application/fhir+json to \
                              origins an administrator allowed (CARAPACE_SUBSCRIPTION_FULL_PAYLOAD); \
                              criteria any search of the type without _count, _page, _sort, \
                              _include, _revinclude, _summary, _elements, _total, _contained; matched \
                              as the subscription's owner through the access gate; deliveries \
                              retried with back-off and audited. Other operations: $validate (type and instance, \
                              GET and POST, mode create/update/delete, profile= against \
                              StructureDefinitions stored here), Patient/[id]/$everything (_since, _type, _count) and \
                              Bulk Data $export (IG 2.0.0) at system, Patient and Group level (GET or \
                              POST Parameters; Prefer: respond-async; _outputFormat, _since with deleted[], \
                              _type, _typeFilter, _elements, patient, includeAssociatedData=\
                              LatestProvenanceResources; files NDJSON, sealed at rest, for the starting \
                              client only, removed after CARAPACE_EXPORT_TTL). Batch and transaction \
                              Bundles: transactions are atomic, resolve urn:uuid and conditional \
                              references (Type?query) and honour ifNoneExist and ifMatch. Search: every \
                              parameter listed per type, AND/OR, chaining (any depth) and _has (nested), \
                              _include/_revinclude (:iterate), _sort (_id, _lastUpdated and date/number/\
                              quantity parameters in the database; string, token, uri and reference \
                              parameters for up to 2,000 matches), _count (at most 1000), _summary, \
                              _elements, _total, sealed paging cursors (next/previous), POST _search. \
                              Unknown parameters are ignored with a warning (an error with Prefer: \
                              handling=strict). Token parameters take :in and :not-in (a value set \
                              that ships with R4) and :below and :above (system|code of a code \
                              system whose hierarchy ships), expanded to at most 1000 codes. \
                              _history and $everything take _since as an instant or a date (its \
                              start, UTC). Writes that refer to a resource of this server that does \
                              not exist or was deleted are refused (400) unless the server runs with \
                              CARAPACE_REFERENTIAL_INTEGRITY=off. Terminology: ValueSet/$expand \
                              (filter, count, offset), CodeSystem/$lookup, ValueSet/$validate-code and \
                              CodeSystem/$validate-code serve the code systems and value sets that \
                              ship with R4 (4.0.1); large external terminologies (SNOMED CT, LOINC, \
                              RxNorm, UCUM, ...) are out of scope: $lookup answers 404 and \
                              $validate-code an informational 'unknown system' for them.",
            "security": crate::oauth::capability_security(base),
            "resource": resources,
            "interaction": [{"code": "history-system"}, {"code": "batch"}, {"code": "transaction"},
                            {"code": "search-system"}],
            "operation": [
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "graphql", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-graphql",
                 "documentation": "queries only (no mutations), at system and instance level; limits as in the README"},
                {"name": "meta", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta"},
                {"name": "meta-add", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-add"},
                {"name": "meta-delete", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete"},
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "expand", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"},
                {"name": "lookup", "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"},
                {"name": "validate-code", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code"},
                {"name": "validate-code", "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code"}
            ],
        }],
    })
}
