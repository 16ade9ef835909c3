//! What clients and test kits expect at first contact: compartment and system search, FHIRPath
//! Patch, conditional reads (304), `$meta`/`$meta-add`/`$meta-delete`, `_pretty` and gzip —
//! over REST, with fhir-kit-client (a published client) for the compartment search and a
//! FHIRPath Patch, and with the access gate deciding every path as it does a read or search.

use carapace_core::access::Role;
use carapace_tests::*;
use std::io::Read;

const HEART_RATE: &str = "8867-4";

fn observation(patient: &str, code: &str, performer: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min"}});
    if let Some(p) = performer {
        o["performer"] = json!([{"reference": format!("Patient/{p}")}]);
    }
    o
}

async fn call(
    stack: &Stack,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> HttpResponse {
    call_as(&stack.server, token, method, path, body, extra).await
}

/// Two patients; A's and B's heart rates, A's other observation, one observation of A performed
/// by B (in both compartments), and a Condition of A.
struct Records {
    stack: Stack,
    admin: String,
    a: String,
    b: String,
    a_hr: String,
    a_other: String,
    b_hr: String,
    shared: String,
    a_condition: String,
}

async fn records() -> Records {
    let stack = Stack::start().await.unwrap();
    let admin = stack
        .token("root", Role::Admin, "system/*.cruds", None)
        .await
        .unwrap();
    let fhir = stack.fhir();
    let a = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Ames"}]}),
        )
        .await
        .created_id();
    let b = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Boyd"}]}),
        )
        .await
        .created_id();
    let a_hr = fhir
        .post("Observation", &observation(&a, HEART_RATE, None))
        .await
        .created_id();
    let a_other = fhir
        .post("Observation", &observation(&a, "2339-0", None))
        .await
        .created_id();
    let b_hr = fhir
        .post("Observation", &observation(&b, HEART_RATE, None))
        .await
        .created_id();
    let shared = fhir
        .post("Observation", &observation(&a, HEART_RATE, Some(&b)))
        .await
        .created_id();
    let a_condition = fhir
        .post(
            "Condition",
            &json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{a}")},
                    "code": {"text": "asthma"}}),
        )
        .await
        .created_id();
    Records {
        stack,
        admin,
        a,
        b,
        a_hr,
        a_other,
        b_hr,
        shared,
        a_condition,
    }
}

fn ids(r: &HttpResponse) -> Vec<String> {
    let mut ids = r.entry_refs("match");
    ids.sort();
    ids
}

fn refs(list: &[(&str, &str)]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|(t, id)| format!("{t}/{id}")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_compartment_search_finds_what_the_patient_compartment_holds_and_nothing_hidden() {
    let r = records().await;
    let s = &r.stack;
    // Every Observation in A's compartment, by subject or by performer; B's the same way.
    let a_obs = get(&r, format!("Patient/{}/Observation", r.a)).await;
    assert_eq!(a_obs.status, 200, "{}", a_obs.text());
    let b_obs = get(&r, format!("Patient/{}/Observation", r.b)).await;
    assert_eq!(
        ids(&b_obs),
        refs(&[("Observation", &r.b_hr), ("Observation", &r.shared)])
    );
    // With a search parameter, and by POST with the parameters in a form.
    let a_hr = get(
        &r,
        format!(
            "Patient/{}/Observation?code=http://loinc.org|{HEART_RATE}",
            r.a
        ),
    )
    .await;
    assert_eq!(
        ids(&a_hr),
        refs(&[("Observation", &r.a_hr), ("Observation", &r.shared)])
    );
    let auth = format!("Bearer {}", r.admin);
    let posted = http(
        "POST",
        &s.server
            .url(&format!("Patient/{}/Observation/_search", r.a)),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(format!("code=http://loinc.org|{HEART_RATE}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(ids(&posted), ids(&a_hr));
    // The self link is the compartment search's own.
    let link = a_hr.json()["link"][0]["url"].as_str().unwrap().to_string();
    assert!(
        link.contains(&format!("/Patient/{}/Observation?", r.a)),
        "{link}"
    );
    // A type outside the compartment, and another compartment, are refused.
    let org = get(&r, format!("Patient/{}/Organization", r.a)).await;
    assert_eq!(org.status, 400, "{}", org.text());
    assert!(org.text().contains("not in the Patient compartment"));
    let enc = get(&r, format!("Encounter/{}/Observation", r.a)).await;
    assert_eq!(enc.status, 501);

    // A's own token searches A's compartment as the gate lets it: not the observation that is
    // also in B's record (a resource is seen only where every compartment it is in may be);
    // B's compartment through it is empty, its count too — never an oracle for B's record.
    let a_token = s
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&r.a))
        .await
        .unwrap();
    let own = call(
        s,
        &a_token,
        "GET",
        &format!("Patient/{}/Observation", r.a),
        None,
        &[],
    )
    .await;
    assert_eq!(
        ids(&own),
        refs(&[("Observation", &r.a_hr), ("Observation", &r.a_other)])
    );
    let other = call(
        s,
        &a_token,
        "GET",
        &format!("Patient/{}/Observation", r.b),
        None,
        &[],
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(ids(&other), Vec::<String>::new());
    assert_eq!(other.json()["total"], 0, "the count is of what may be seen");

    // Patient/[id]/* : every type of the compartment, one type per page, paged through.
    let seen = all_pages(&s.server, &r.admin, &format!("Patient/{}/*?_count=2", r.a)).await;
    assert_eq!(
        seen,
        refs(&[
            ("Condition", &r.a_condition),
            ("Observation", &r.a_hr),
            ("Observation", &r.a_other),
            ("Observation", &r.shared),
            ("Patient", &r.a),
        ])
    );
    let narrowed = get(&r, format!("Patient/{}/*?_type=Condition,Patient", r.a)).await;
    assert_eq!(narrowed.status, 200);
    let t = narrowed.text();
    assert!(
        t.contains(&r.a_condition) || t.contains(&format!("Patient/{}", r.a)),
        "{t}"
    );
}

async fn get(r: &Records, path: String) -> HttpResponse {
    call(&r.stack, &r.admin, "GET", &path, None, &[]).await
}

#[tokio::test]
async fn a_system_search_spans_the_named_types_and_refuses_what_would_widen_it() {
    let r = records().await;
    let s = &r.stack;
    let auth = format!("Bearer {}", r.admin);
    // Through every page: both Patients and all four Observations, nothing else.
    let seen = all_pages(&s.server, &r.admin, "?_type=Patient,Observation&_count=3").await;
    assert_eq!(
        seen,
        refs(&[
            ("Observation", &r.a_hr),
            ("Observation", &r.a_other),
            ("Observation", &r.b_hr),
            ("Observation", &r.shared),
            ("Patient", &r.a),
            ("Patient", &r.b),
        ])
    );
    // POST [base]/_search with the parameters in a form body; a parameter both types define.
    let posted = http(
        "POST",
        &s.server.url("_search"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(format!("_type=Observation,Condition&patient={}", r.b).into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(
        ids(&posted),
        refs(&[("Observation", &r.b_hr)]),
        "B's observations (a page holds one type)"
    );
    // A parameter one type lacks would widen that type's matches: refused, not ignored.
    let widened = call(
        s,
        &r.admin,
        "GET",
        "?_type=Patient,Observation&code=x",
        None,
        &[],
    )
    .await;
    assert_eq!(widened.status, 400, "{}", widened.text());
    assert!(widened.text().contains("code"), "{}", widened.text());
    // A type the caller's scopes do not open is refused when named.
    let narrow = s
        .token("reader", Role::System, "system/Patient.rs", None)
        .await
        .unwrap();
    let refused = call(s, &narrow, "GET", "?_type=Patient,Observation", None, &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let patients_only = call(s, &narrow, "GET", "?_type=Patient", None, &[]).await;
    assert_eq!(patients_only.status, 200, "{}", patients_only.text());
    assert_eq!(
        ids(&patients_only),
        refs(&[("Patient", &r.a), ("Patient", &r.b)])
    );
    // A system search names its types (each is a query and an audited search).
    let unnamed = call(s, &r.admin, "GET", "?_lastUpdated=gt2000-01-01", None, &[]).await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.text());
    assert!(unnamed.text().contains("_type"));
    let unknown = call(s, &r.admin, "GET", "?_type=Nope", None, &[]).await;
    assert_eq!(unknown.status, 400);
    // AuditEvents are read through their own search, never as stored resources.
    let audit = call(
        s,
        &r.admin,
        "GET",
        &format!("Patient/{}/AuditEvent", r.a),
        None,
        &[],
    )
    .await;
    assert_eq!(audit.status, 400, "{}", audit.text());
    let audit = call(s, &r.admin, "GET", "?_type=AuditEvent", None, &[]).await;
    assert_eq!(audit.status, 400, "{}", audit.text());
    // A search over several types costs a query per type: not in a batch, where one request
    // could hold thousands.
    let batch = call(
        s,
        &r.admin,
        "POST",
        "",
        Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "?_type=Patient,Observation"}}]})),
        &[],
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert!(
        batch.json()["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("400"),
        "{}",
        batch.text()
    );
}

#[tokio::test]
async fn fhirpath_patch_applies_validates_and_respects_versions() {
    let r = records().await;
    let s = &r.stack;
    let op = |kind: &str, path: &str, extra: Value| {
        let mut part = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        part.extend(extra.as_array().unwrap().iter().cloned());
        json!({"name": "operation", "part": part})
    };
    let patch = |ops: Vec<Value>| json!({"resourceType": "Parameters", "parameter": ops});
    let path = format!("Patient/{}", r.a);
    let patched = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(patch(vec![
            op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "gender"},
                                       {"name": "value", "valueCode": "female"}]),
            ),
            op(
                "insert",
                "Patient.name",
                json!([
                {"name": "value", "valueHumanName": {"family": "Ames-Lee", "use": "maiden"}},
                {"name": "index", "valueInteger": 0}]),
            ),
        ])),
        &[("If-Match", "W/\"1\"")],
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let body = patched.json();
    assert_eq!(body["gender"], "female");
    assert_eq!(body["name"][0]["family"], "Ames-Lee");
    assert_eq!(body["name"][1]["family"], "Ames");
    assert_eq!(body["meta"]["versionId"], "2");
    // The stored version is the patched one.
    assert_eq!(
        call(s, &r.admin, "GET", &path, None, &[]).await.json()["gender"],
        "female"
    );
    // A stale If-Match is a conflict, and nothing is written.
    let before = s.stored_versions().await;
    let stale = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(patch(vec![op("delete", "Patient.gender", json!([]))])),
        &[("If-Match", "W/\"1\"")],
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.text());
    // A patch that does not apply: 422 naming the operation; a result the validator refuses: 400.
    let bad = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(patch(vec![op(
            "replace",
            "Patient.name",
            json!([{"name": "value", "valueString": "x"}]),
        )])),
        &[],
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert!(bad.text().contains("operation 1"), "{}", bad.text());
    let invalid = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(patch(vec![op(
            "replace",
            "Patient.gender",
            json!([{"name": "value", "valueCode": "sometimes"}]),
        )])),
        &[],
    )
    .await;
    assert!(
        invalid.status == 400 || invalid.status == 422,
        "{}",
        invalid.text()
    );
    assert!(invalid.text().contains("gender"), "{}", invalid.text());
    let not_parameters = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(json!({"resourceType": "Patient"})),
        &[],
    )
    .await;
    assert_eq!(not_parameters.status, 400);
    // A patch's result is built in memory, past the intake's depth limit: a document nested deeper
    // than every later parse reads back is refused when stored, not kept to fail each read.
    let mut nested = json!({"url": "http://example.org/x", "valueString": "v"});
    for _ in 0..61 {
        nested = json!({"url": "http://example.org/x", "extension": [nested]});
    }
    // The body is 126 levels deep (the intake takes it); the patched Patient would be 127.
    let deep = call(
        s,
        &r.admin,
        "PATCH",
        &path,
        Some(json!([
            {"op": "add", "path": "/extension", "value": [{"url": "http://example.org/x"}]},
            {"op": "add", "path": "/extension/0/extension", "value": [nested]}
        ])),
        &[("Content-Type", "application/json-patch+json")],
    )
    .await;
    assert_eq!(deep.status, 400, "{}", deep.text());
    assert!(deep.text().contains("levels deep"), "{}", deep.text());
    assert_eq!(
        s.stored_versions().await,
        before,
        "no refused patch wrote anything"
    );
    // A patient-context token of A cannot patch B: as hidden (404), nothing written.
    let a_token = s
        .token("patient-a", Role::Patient, "patient/*.cruds", Some(&r.a))
        .await
        .unwrap();
    let across = call(
        s,
        &a_token,
        "PATCH",
        &format!("Patient/{}", r.b),
        Some(patch(vec![op("delete", "Patient.name", json!([]))])),
        &[],
    )
    .await;
    assert_eq!(across.status, 404, "{}", across.text());
    assert_eq!(s.stored_versions().await, before);
}

#[tokio::test]
async fn a_read_answers_304_when_the_client_holds_the_current_version() {
    let r = records().await;
    let s = &r.stack;
    let path = format!("Patient/{}", r.a);
    let first = call(s, &r.admin, "GET", &path, None, &[]).await;
    let etag = first.header("etag").unwrap();
    let modified = first.header("last-modified").unwrap();
    let same = call(s, &r.admin, "GET", &path, None, &[("If-None-Match", &etag)]).await;
    assert_eq!(same.status, 304);
    assert!(same.body.is_empty());
    assert_eq!(same.header("etag").unwrap(), etag);
    let strong = call(
        s,
        &r.admin,
        "GET",
        &path,
        None,
        &[("If-None-Match", "\"1\"")],
    )
    .await;
    assert_eq!(strong.status, 304, "weak comparison");
    let since = call(
        s,
        &r.admin,
        "GET",
        &path,
        None,
        &[("If-Modified-Since", &modified)],
    )
    .await;
    assert_eq!(since.status, 304);
    let old = call(
        s,
        &r.admin,
        "GET",
        &path,
        None,
        &[("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    )
    .await;
    assert_eq!(old.status, 200);
    // After an update the old tag no longer matches.
    let mut changed = first.json();
    changed["active"] = json!(true);
    assert_eq!(
        call(s, &r.admin, "PUT", &path, Some(changed), &[])
            .await
            .status,
        200
    );
    let stale = call(s, &r.admin, "GET", &path, None, &[("If-None-Match", &etag)]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["active"], true);
    // A hidden resource is a 404 whatever the client claims to hold.
    let a_token = s
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&r.a))
        .await
        .unwrap();
    let hidden = call(
        s,
        &a_token,
        "GET",
        &format!("Patient/{}", r.b),
        None,
        &[("If-None-Match", "*")],
    )
    .await;
    assert_eq!(hidden.status, 404);
    // In a batch, ifNoneMatch gives the entry a 304.
    let batch = call(
        s,
        &r.admin,
        "POST",
        "",
        Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": path, "ifNoneMatch": "W/\"2\""}},
            {"request": {"method": "GET", "url": path, "ifNoneMatch": "W/\"1\""}}]})),
        &[],
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let entries = batch.json()["entry"].clone();
    assert!(entries[0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("304"));
    assert!(entries[0].get("resource").is_none());
    assert!(entries[1]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("200"));
}

#[tokio::test]
async fn meta_operations_read_add_and_delete_under_the_write_rules() {
    let r = records().await;
    let s = &r.stack;
    let path = format!("Observation/{}", r.a_hr);
    let meta = |m: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": m}]});
    let tag = json!({"system": "http://example.org/tags", "code": "reviewed"});
    let added = call(
        s,
        &r.admin,
        "POST",
        &format!("{path}/$meta-add"),
        Some(meta(
            json!({"tag": [tag], "profile": ["http://example.org/fhir/StructureDefinition/hr"]}),
        )),
        &[],
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let returned = &added.json()["parameter"][0];
    assert_eq!(returned["name"], "return");
    assert_eq!(returned["valueMeta"]["tag"][0]["code"], "reviewed");
    let read = call(s, &r.admin, "GET", &path, None, &[]).await.json();
    assert_eq!(read["meta"]["versionId"], "2");
    assert_eq!(read["meta"]["tag"][0]["code"], "reviewed");
    // Adding what is there makes no version.
    call(
        s,
        &r.admin,
        "POST",
        &format!("{path}/$meta-add"),
        Some(meta(json!({"tag": [tag]}))),
        &[],
    )
    .await;
    assert_eq!(
        call(s, &r.admin, "GET", &path, None, &[]).await.json()["meta"]["versionId"],
        "2"
    );
    // $meta of the current and of an older version.
    let now = call(s, &r.admin, "GET", &format!("{path}/$meta"), None, &[]).await;
    assert_eq!(
        now.json()["parameter"][0]["valueMeta"]["tag"][0]["code"],
        "reviewed"
    );
    let then = call(
        s,
        &r.admin,
        "GET",
        &format!("{path}/_history/1/$meta"),
        None,
        &[],
    )
    .await;
    assert_eq!(then.status, 200);
    assert!(then.json()["parameter"][0]["valueMeta"]
        .get("tag")
        .is_none());
    let deleted = call(
        s,
        &r.admin,
        "POST",
        &format!("{path}/$meta-delete"),
        Some(meta(json!({"tag": [tag]}))),
        &[],
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert!(deleted.json()["parameter"][0]["valueMeta"]
        .get("tag")
        .is_none());
    assert_eq!(
        call(s, &r.admin, "GET", &path, None, &[]).await.json()["meta"]["versionId"],
        "3"
    );

    // A security label goes on under the write rules (the source system labels its data; an
    // administrator may not write above what it reads), and only the patient may take it off.
    let ehr = s
        .token("ehr", Role::System, "system/*.cruds", None)
        .await
        .unwrap();
    let by_admin = call(
        s,
        &r.admin,
        "POST",
        &format!("{path}/$meta-add"),
        Some(meta(json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}))),
        &[],
    )
    .await;
    assert_eq!(by_admin.status, 403, "{}", by_admin.text());
    let restricted =
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"});
    let labelled = call(
        s,
        &ehr,
        "POST",
        &format!("{path}/$meta-add"),
        Some(meta(json!({"security": [restricted]}))),
        &[],
    )
    .await;
    assert_eq!(labelled.status, 200, "{}", labelled.text());
    let before = s.stored_versions().await;
    let lowered = call(
        s,
        &ehr,
        "POST",
        &format!("{path}/$meta-delete"),
        Some(meta(json!({"security": [restricted]}))),
        &[],
    )
    .await;
    assert!(
        lowered.status == 403 || lowered.status == 404,
        "only the patient lowers a label: {} {}",
        lowered.status,
        lowered.text()
    );
    assert_eq!(s.stored_versions().await, before);
    // Another patient's token learns nothing: as hidden.
    let b_token = s
        .token("patient-b", Role::Patient, "patient/*.cruds", Some(&r.b))
        .await
        .unwrap();
    let hidden = call(
        s,
        &b_token,
        "GET",
        &format!("Observation/{}/$meta", r.a_other),
        None,
        &[],
    )
    .await;
    assert_eq!(hidden.status, 404);
    // Type- and system-level $meta would be drawn from what the caller may not see.
    assert_eq!(
        call(s, &r.admin, "GET", "Observation/$meta", None, &[])
            .await
            .status,
        501
    );
    let bad = call(
        s,
        &r.admin,
        "POST",
        &format!("{path}/$meta-add"),
        Some(json!({"resourceType": "Parameters"})),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn pretty_and_gzip_change_only_the_presentation() {
    let r = records().await;
    let s = &r.stack;
    let plain = call(s, &r.admin, "GET", "Observation?_count=50", None, &[]).await;
    let pretty = call(
        s,
        &r.admin,
        "GET",
        "Observation?_count=50&_pretty=true",
        None,
        &[],
    )
    .await;
    assert_eq!(pretty.status, 200);
    assert!(
        pretty.text().contains("\n  \"resourceType\""),
        "{}",
        pretty.text()
    );
    assert!(!plain.text().contains('\n'));
    let strip = |mut v: Value| {
        v["link"] = json!(null);
        v
    };
    assert_eq!(strip(pretty.json()), strip(plain.json()));

    let gz = call(
        s,
        &r.admin,
        "GET",
        "Observation?_count=50",
        None,
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    assert!(gz.header("vary").unwrap().contains("Accept-Encoding"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        strip(serde_json::from_str(&text).unwrap()),
        strip(plain.json())
    );
    assert!(gz.body.len() < plain.body.len());
    // Not when refused, not for small bodies.
    let refused = call(
        s,
        &r.admin,
        "GET",
        "Observation?_count=50",
        None,
        &[("Accept-Encoding", "gzip;q=0")],
    )
    .await;
    assert!(refused.header("content-encoding").is_none());
    let small = call(
        s,
        &r.admin,
        "GET",
        &format!("Patient/{}", r.a),
        None,
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert!(small.header("content-encoding").is_none());
    // Never what carries a token (BREACH): the token endpoint and the sign-in pages.
    let token = http(
        "POST",
        &format!("{}/auth/token", s.server.origin()),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept-Encoding", "gzip"),
        ],
        Some(b"grant_type=client_credentials".to_vec()),
    )
    .await
    .unwrap();
    assert!(token.header("content-encoding").is_none());
    let signin = http(
        "GET",
        &format!("{}/auth/authorize?response_type=code", s.server.origin()),
        &[("Accept-Encoding", "gzip")],
        None,
    )
    .await
    .unwrap();
    assert!(signin.header("content-encoding").is_none());
}

#[tokio::test]
async fn fhir_kit_client_searches_a_compartment_and_sends_a_fhirpath_patch() {
    let r = records().await;
    let s = &r.stack;
    let base = s.server.url("");
    let report = carapace_tests::scripts::node(
        "fhir-kit.mjs",
        &[
            ("FHIR_BASE", &base),
            ("ACCESS_TOKEN", &r.admin),
            ("PATIENT_ID", &r.a),
        ],
    )
    .await;
    let want = json!(refs(&[
        ("Observation", &r.a_hr),
        ("Observation", &r.shared)
    ]));
    assert_eq!(report["compartment"], want);
    assert_eq!(report["compartmentByPost"], want);
    assert_eq!(report["systemTypes"], json!(["Observation", "Patient"]));
    assert_eq!(report["systemCount"], 6, "two patients, four observations");
    assert_eq!(report["patched"]["birthDate"], "1970-01-02");
    assert_eq!(report["patched"]["family"], "Patched");
    assert_eq!(report["patched"]["versionId"], "2");
}

#[tokio::test]
async fn fhirpy_searches_patches_and_reads_conditionally_with_strict_models() {
    let Ok(python) = std::env::var("CARAPACE_PYTHON_CLIENTS") else {
        eprintln!(
            "SKIPPED: set CARAPACE_PYTHON_CLIENTS (tests/run installs fhirpy and fhirclient)"
        );
        return;
    };
    let r = records().await;
    let s = &r.stack;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/fhirpy_compat.py");
    let base = s.server.url("");
    let report = carapace_tests::scripts::report(
        &python,
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &[script.to_str().unwrap(), &base, &r.admin, &r.a],
        &[],
    )
    .await;
    let mut mine = vec![r.a_hr.clone(), r.a_other.clone(), r.shared.clone()];
    mine.sort();
    assert_eq!(report["observations"], json!(mine));
    assert_eq!(report["compartment"], json!(mine));
    assert_eq!(report["telecom"], "555-0100");
    assert_eq!(report["versionId"], "2");
    assert_eq!(report["notModified"], true);
}
