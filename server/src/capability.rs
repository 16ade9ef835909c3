//! The CapabilityStatement: exactly what this server supports, no more.

use carapace_core::fhir::ResourceType;
use serde_json::{json, Value};

pub fn statement(base: &str) -> Value {
    let interactions = json!([
        {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"}, {"code": "delete"},
        {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"},
        {"code": "search-type"}
    ]);
    let resources: Vec<Value> = ResourceType::all()
        .map(|t| {
            json!({
                "type": t.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": "_id", "type": "token",
                     "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                    {"name": "_lastUpdated", "type": "date",
                     "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}
                ],
            })
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
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Every resource is encrypted (AES-256-GCM) before it reaches the database. \
                              Conditional create (If-None-Exist) supports the _id parameter only. \
                              PATCH takes JSON Patch (application/json-patch+json). \
                              Operations: $validate (type and instance) and Patient/[id]/$everything \
                              (_since, _type, _count). Batch and transaction Bundles (read, vread, create, update, \
                              delete entries; transactions are atomic and resolve urn:uuid references). \
                              Search: _id and _lastUpdated (all prefixes but ap), _count, paging and \
                              POST _search; other parameters are ignored with a warning (an error with \
                              Prefer: handling=strict) until the encrypted search index lands.",
            "resource": resources,
            "interaction": [{"code": "history-system"}, {"code": "batch"}, {"code": "transaction"}],
            "operation": [
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
            ],
        }],
    })
}
