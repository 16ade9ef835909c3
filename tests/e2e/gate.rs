//! Issue 13, "every row through one gate": the holes found by probing as a hostile EHR client, a
//! curious patient and a practitioner (one test per defect, each failing on the code before the
//! gate), and a table over caller × interaction × label × compartment that checks every path
//! answers as the one policy decides.

use carapace_core::access::Role;
use carapace_tests::*;

const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// Two patients A and B; a practitioner `dr` whom A's consent opens A's record to (not B's); A's
/// own token; an analytics user under a research consent of A; a system client with only
/// `system/Observation.rs`; an administrator; and the stack's system client (`system/*.cruds`).
pub(super) struct World {
    pub(super) stack: Stack,
    pub(super) a: String,
    pub(super) b: String,
    pub(super) callers: Vec<(&'static str, String)>,
}

pub(super) fn obs(patient: &str, label: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")}});
    if let Some(code) = label {
        o["meta"] = json!({"security": [{"system": CONFIDENTIALITY, "code": code}]});
    }
    o
}

fn group(members: &[&str]) -> Value {
    json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": members.iter().map(|m| json!({"entity": {"reference": format!("Patient/{m}")}})).collect::<Vec<_>>()})
}

fn created(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

pub(super) async fn world() -> World {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    for body in [json!({"resourceType": "Practitioner", "id": "pr-1"})] {
        let r = f.put("Practitioner/pr-1", &body).await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    let a = created(&f.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Alpha"}], "birthDate": "1970-01-01", "gender": "female"})).await);
    let b = created(&f.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Bravo"}], "birthDate": "1980-02-02", "gender": "male"})).await);
    assert_eq!(
        f.post("Consent", &permit_consent(&a, "Practitioner/pr-1"))
            .await
            .status,
        201
    );
    let mut research = consent(&a, "permit", None, &[], None);
    research["provision"]["purpose"] =
        json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]);
    assert_eq!(f.post("Consent", &research).await.status, 201);
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    stack.token_user("analyst", "analytics", None).await;
    let callers = vec![
        (
            "system",
            stack
                .server
                .bearer()
                .trim_start_matches("Bearer ")
                .to_string(),
        ),
        (
            "narrow",
            stack
                .token("narrow-client", Role::System, "system/Observation.rs", None)
                .await
                .unwrap(),
        ),
        (
            "admin",
            stack
                .token("root", Role::Admin, "system/*.cruds", None)
                .await
                .unwrap(),
        ),
        (
            "dr",
            stack
                .token("dr", Role::Practitioner, "user/*.cruds", None)
                .await
                .unwrap(),
        ),
        (
            "patient-a",
            stack
                .token("patient-a", Role::Patient, "patient/*.cruds", Some(&a))
                .await
                .unwrap(),
        ),
        (
            "analyst",
            stack
                .token("analyst", Role::Analytics, "user/*.rs", None)
                .await
                .unwrap(),
        ),
    ];
    World {
        stack,
        a,
        b,
        callers,
    }
}

impl World {
    fn token(&self, caller: &str) -> &str {
        &self.callers.iter().find(|(c, _)| *c == caller).unwrap().1
    }

    pub(super) async fn call(
        &self,
        caller: &str,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = format!("Bearer {}", self.token(caller));
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Accept", FHIR_JSON),
            ("Content-Type", FHIR_JSON),
        ];
        for (k, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k, v));
        }
        http(method, &self.stack.server.url(path), &headers, body)
            .await
            .unwrap()
    }

    pub(super) async fn get(&self, caller: &str, path: &str) -> HttpResponse {
        self.call(caller, "GET", path, None, &[]).await
    }

    pub(super) async fn send(
        &self,
        caller: &str,
        method: &str,
        path: &str,
        body: &Value,
    ) -> HttpResponse {
        self.call(
            caller,
            method,
            path,
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await
    }

    /// The system client writes `body` (POST to a type, or PUT to `Type/id`); the id.
    pub(super) async fn system_writes(&self, method: &str, path: &str, body: &Value) -> String {
        let r = self.send("system", method, path, body).await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// `Type/id` of a search's entries of `mode`.
    fn listed(r: &HttpResponse, mode: &str) -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text());
        r.entry_refs(mode)
    }

    async fn versions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM resource_versions")
            .fetch_one(&self.stack.db().await)
            .await
            .unwrap()
    }
}

/// A refusal answers exactly as a missing resource: same status, same body (less the id it
/// names), no ETag, no version.
fn assert_like_missing(
    hidden: &HttpResponse,
    missing: &HttpResponse,
    hidden_id: &str,
    missing_id: &str,
    what: &str,
) {
    assert_eq!(hidden.status, 404, "{what}: {}", hidden.text());
    assert_eq!(hidden.status, missing.status, "{what}");
    assert_eq!(
        hidden.text().replace(hidden_id, "ID"),
        missing.text().replace(missing_id, "ID"),
        "{what}"
    );
    assert!(hidden.header("etag").is_none(), "{what}: no ETag");
}

/// Defect 1: a caller that may not read a labelled resource can neither overwrite it (dropping
/// the label), nor delete it, nor learn its version through If-Match, nor tell it deleted (410)
/// from missing (404); and it may not label what it writes above what it may read.
#[tokio::test]
async fn labels_are_decided_on_writes() {
    let w = world().await;
    let f = w.stack.fhir();
    let very = created(&f.post("Observation", &obs(&w.a, Some("V"))).await);
    let restricted = created(&f.post("Observation", &obs(&w.a, Some("R"))).await);
    let missing = "no-such-observation";
    let before = w.versions().await;
    // The practitioner (consented to A, ceiling R) against A's V-labelled observation.
    let mut dropped = obs(&w.a, None);
    dropped["id"] = json!(very);
    let put = w
        .send("dr", "PUT", &format!("Observation/{very}"), &dropped)
        .await;
    let mut fresh = dropped.clone();
    fresh["id"] = json!(missing);
    let put_missing = w
        .send("dr", "PUT", &format!("Observation/{missing}"), &fresh)
        .await;
    assert_like_missing(
        &put,
        &put_missing,
        &very,
        missing,
        "PUT over a hidden label",
    );
    let del = w
        .call("dr", "DELETE", &format!("Observation/{very}"), None, &[])
        .await;
    let del_missing = w
        .call("dr", "DELETE", &format!("Observation/{missing}"), None, &[])
        .await;
    assert_like_missing(
        &del,
        &del_missing,
        &very,
        missing,
        "DELETE of a hidden label",
    );
    let if_match = w
        .call(
            "dr",
            "PUT",
            &format!("Observation/{very}"),
            Some(dropped.to_string().into_bytes()),
            &[("If-Match", "W/\"7\"")],
        )
        .await;
    assert_like_missing(
        &if_match,
        &put_missing,
        &very,
        missing,
        "If-Match on a hidden label",
    );
    assert!(
        !if_match.text().contains("current is"),
        "{}",
        if_match.text()
    );
    let patch = w
        .call(
            "dr",
            "PATCH",
            &format!("Observation/{very}"),
            Some(br#"[{"op":"replace","path":"/status","value":"amended"}]"#.to_vec()),
            &[("Content-Type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(patch.status, 404, "{}", patch.text());
    // System clients never see R: they may not overwrite it either.
    let mut sys_drop = obs(&w.a, None);
    sys_drop["id"] = json!(restricted);
    assert_eq!(
        f.put(&format!("Observation/{restricted}"), &sys_drop)
            .await
            .status,
        404
    );
    assert_eq!(
        w.versions().await,
        before,
        "no refused write wrote anything"
    );
    // The patient still reads both as they were.
    let v = w.get("patient-a", &format!("Observation/{very}")).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["meta"]["versionId"], "1");
    assert_eq!(v.json()["meta"]["security"][0]["code"], "V");

    // Deleted by the patient, the V observation is as missing to the practitioner as any.
    assert_eq!(
        w.call(
            "patient-a",
            "DELETE",
            &format!("Observation/{very}"),
            None,
            &[]
        )
        .await
        .status,
        204
    );
    assert_eq!(
        w.get("patient-a", &format!("Observation/{very}"))
            .await
            .status,
        410
    );
    let gone = w.get("dr", &format!("Observation/{very}")).await;
    let never = w.get("dr", &format!("Observation/{missing}")).await;
    assert_like_missing(&gone, &never, &very, missing, "a deleted hidden resource");

    // A write may only carry labels its writer may see: the practitioner cannot hide A's data
    // from everyone but A by labelling it V.
    let hide = w
        .send("dr", "POST", "Observation", &obs(&w.a, Some("V")))
        .await;
    assert_eq!(hide.status, 403, "{}", hide.text());
    assert_eq!(hide.json()["resourceType"], "OperationOutcome");
    let r_ok = w
        .send("dr", "POST", "Observation", &obs(&w.a, Some("R")))
        .await;
    assert_eq!(r_ok.status, 201, "{}", r_ok.text());
    // Nor may they declassify what they can read (dropping R opens it to system clients,
    // administrators and analytics); the patient may, for their own record.
    let mut unlabelled = obs(&w.a, None);
    unlabelled["id"] = json!(restricted);
    let drop_r = w
        .send(
            "dr",
            "PUT",
            &format!("Observation/{restricted}"),
            &unlabelled,
        )
        .await;
    assert_eq!(drop_r.status, 403, "{}", drop_r.text());
    assert_eq!(
        w.get("system", &format!("Observation/{restricted}"))
            .await
            .status,
        404
    );
    let by_patient = w
        .send(
            "patient-a",
            "PUT",
            &format!("Observation/{restricted}"),
            &unlabelled,
        )
        .await;
    assert_eq!(by_patient.status, 200, "{}", by_patient.text());
    assert_eq!(
        w.get("system", &format!("Observation/{restricted}"))
            .await
            .status,
        200
    );
}

/// Defect 2: a reference that the key scope and the index read differently was sealed in A's
/// record and indexed in B's. One grammar now serves both, and a malformed reference is refused.
#[tokio::test]
async fn one_reference_grammar_for_key_scope_and_index() {
    let w = world().await;
    let (a, b) = (&w.a, &w.b);
    let before = w.versions().await;
    let mut planted = obs(a, None);
    planted["subject"]["reference"] = json!(format!("Patient/{b}/_history/1/Patient/{a}"));
    let r = w.send("patient-a", "POST", "Observation", &planted).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("Observation.subject.reference"),
        "{}",
        r.text()
    );
    assert_eq!(w.versions().await, before);
    // As a system client too, and in a transaction entry.
    assert_eq!(
        w.stack.fhir().post("Observation", &planted).await.status,
        400
    );
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": planted, "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(w.stack.fhir().post("", &tx).await.status, 400);
    // B's record lists nothing of it, and a search value of that shape is refused, not guessed.
    let listed = w
        .get("system", &format!("Observation?subject=Patient/{b}"))
        .await;
    assert!(World::listed(&listed, "match").is_empty());
    let odd = w
        .get(
            "system",
            &format!("Observation?subject=Patient/{b}/_history/1/Patient/{a}"),
        )
        .await;
    assert_eq!(odd.status, 400, "{}", odd.text());
    // Absolute references name the same patient for the key and for the index.
    let mut absolute = obs(a, None);
    absolute["subject"]["reference"] = json!(format!(
        "https://ehr.example/fhir/Patient/{b}/_history/1/Patient/{a}"
    ));
    let id = created(&w.stack.fhir().post("Observation", &absolute).await);
    assert!(World::listed(
        &w.get("system", &format!("Observation?subject=Patient/{b}"))
            .await,
        "match"
    )
    .is_empty());
    assert_eq!(
        World::listed(
            &w.get("system", &format!("Observation?subject=Patient/{a}"))
                .await,
            "match"
        ),
        vec![format!("Observation/{id}")]
    );
    assert_eq!(
        w.get("patient-a", &format!("Observation/{id}"))
            .await
            .status,
        200
    );
}

/// Defect 3: chains and `_has` match on the types they join, so they need those types' scopes
/// (as `_include` does): 403 naming the missing scope, never an oracle.
#[tokio::test]
async fn chains_and_has_need_the_scopes_of_the_types_they_join() {
    let w = world().await;
    assert_eq!(w.get("narrow", "Patient").await.status, 403);
    assert_eq!(w.get("narrow", "Observation").await.status, 200);
    for q in [
        "Observation?subject:Patient.name=Alpha",
        "Observation?subject.birthdate=1970-01-01",
        "Observation?subject:Patient.identifier=x",
        "Observation?subject:Patient.gender=female",
        "Observation?_has:DiagnosticReport:result:code=http://loinc.org|1",
        "Observation?subject:Patient.name=Alpha&_summary=count",
    ] {
        let r = w.get("narrow", q).await;
        assert_eq!(r.status, 403, "{q}: {}", r.text());
        let text = r.text();
        assert!(
            text.contains("Patient") || text.contains("DiagnosticReport"),
            "{q}: names the scope: {text}"
        );
    }
    // A client with the joined type's scope may still chain.
    let r = w
        .get("system", "Observation?subject:Patient.name=Alpha")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Defect 4: a NUL in `_id`, in a reference search value, in `If-None-Exist` or in a
/// conditional delete reached PostgreSQL (500). Every one is a 400 now.
#[tokio::test]
async fn nul_characters_never_reach_the_database() {
    let w = world().await;
    let before = w.versions().await;
    for q in [
        "Observation?_id=a%00b",
        "Observation?subject=Patient/a%00b",
        "Observation?subject=a%00b",
        "AuditEvent?agent=a%00b",
        "Patient?name=a%00b",
    ] {
        let r = w.get("system", q).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let r = w
        .call(
            "system",
            "POST",
            "Observation",
            Some(obs(&w.a, None).to_string().into_bytes()),
            &[("If-None-Exist", "_id=a%00b")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = w
        .call(
            "system",
            "DELETE",
            "Observation?identifier=a%00b",
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = w
        .call(
            "system",
            "PUT",
            "Observation?_id=a%00b",
            Some(obs(&w.a, None).to_string().into_bytes()),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(w.versions().await, before);
}

/// Defect 5: update-as-create told a compartment-narrowed caller which ids exist in records it
/// cannot see (404 for an id in B's record, 201 for a fresh one). Both answer alike now.
#[tokio::test]
async fn update_as_create_is_no_existence_oracle() {
    let w = world().await;
    let in_b = created(&w.stack.fhir().post("Observation", &obs(&w.b, None)).await);
    for caller in ["patient-a", "dr"] {
        let mut body = obs(&w.a, None);
        body["id"] = json!(in_b);
        let taken = w
            .send(caller, "PUT", &format!("Observation/{in_b}"), &body)
            .await;
        let fresh_id = format!("fresh-{caller}");
        body["id"] = json!(fresh_id);
        let fresh = w
            .send(caller, "PUT", &format!("Observation/{fresh_id}"), &body)
            .await;
        assert_like_missing(&taken, &fresh, &in_b, &fresh_id, caller);
        // A create with a server-assigned id still works for them.
        assert_eq!(
            w.send(caller, "POST", "Observation", &obs(&w.a, None))
                .await
                .status,
            201
        );
    }
    // Callers no compartment narrows may still choose ids.
    let mut own = obs(&w.a, None);
    own["id"] = json!("chosen-by-ehr");
    assert_eq!(
        w.stack
            .fhir()
            .put("Observation/chosen-by-ehr", &own)
            .await
            .status,
        201
    );
}

/// Defect 6: a resource in two patients' compartments was decided on the first alone (A read a
/// Group listing A and B, and learnt B's membership). Every compartment decides now.
#[tokio::test]
async fn a_resource_in_two_compartments_is_decided_on_both() {
    let w = world().await;
    let (a, b) = (w.a.clone(), w.b.clone());
    let both = created(&w.stack.fhir().post("Group", &group(&[&a, &b])).await);
    let only_a = created(&w.stack.fhir().post("Group", &group(&[&a])).await);
    let mut by_b = obs(&a, None);
    by_b["performer"] = json!([{"reference": format!("Patient/{b}")}]);
    let performed = created(&w.stack.fhir().post("Observation", &by_b).await);
    for caller in ["patient-a", "dr"] {
        assert_eq!(
            w.get(caller, &format!("Group/{both}")).await.status,
            404,
            "{caller}"
        );
        assert_eq!(
            w.get(caller, &format!("Group/{only_a}")).await.status,
            200,
            "{caller}"
        );
        assert_eq!(
            w.get(caller, &format!("Observation/{performed}"))
                .await
                .status,
            404,
            "{caller}"
        );
        let listed = World::listed(&w.get(caller, "Group").await, "match");
        assert_eq!(listed, vec![format!("Group/{only_a}")], "{caller}");
        let count = w
            .get(caller, &format!("Group?member=Patient/{b}&_summary=count"))
            .await;
        assert_eq!(count.json()["total"], 0, "{caller}: {}", count.text());
        let everything = World::listed(
            &w.get(caller, &format!("Patient/{a}/$everything")).await,
            "match",
        );
        assert!(
            !everything.contains(&format!("Group/{both}"))
                && !everything.contains(&format!("Observation/{performed}")),
            "{caller}: {everything:?}"
        );
        let history = w.get(caller, &format!("Group/{both}/_history")).await;
        assert_eq!(history.status, 404, "{caller}");
        // Nor may they write a resource into B's compartment beside A's.
        let r = w.send(caller, "POST", "Group", &group(&[&a, &b])).await;
        assert_eq!(r.status, 403, "{caller}: {}", r.text());
    }
    assert_eq!(w.get("system", &format!("Group/{both}")).await.status, 200);
    let count = w
        .get(
            "system",
            &format!("Group?member=Patient/{b}&_summary=count"),
        )
        .await;
    assert_eq!(count.json()["total"], 1);
}

/// Defect 8: a transaction acting twice on one resource, or with a `urn:uuid` reference that
/// resolves to nothing, fails whole (R4 http.html#trules).
#[tokio::test]
async fn transactions_refuse_overlaps_and_dangling_references() {
    let w = world().await;
    let f = w.stack.fhir();
    let id = created(&f.post("Observation", &obs(&w.a, None)).await);
    let mut body = obs(&w.a, None);
    body["id"] = json!(id);
    let before = w.versions().await;
    let put =
        json!({"resource": body, "request": {"method": "PUT", "url": format!("Observation/{id}")}});
    let delete = json!({"request": {"method": "DELETE", "url": format!("Observation/{id}")}});
    let conditional_delete =
        json!({"request": {"method": "DELETE", "url": format!("Observation?_id={id}")}});
    let mut dangling = obs(&w.a, None);
    dangling["subject"]["reference"] = json!("urn:uuid:6f1a9d3e-0b7c-4e7a-9d2f-1a2b3c4d5e6f");
    for (what, entries) in [
        ("PUT twice", vec![put.clone(), put.clone()]),
        ("DELETE and PUT", vec![delete.clone(), put.clone()]),
        (
            "conditional DELETE and PUT",
            vec![conditional_delete, put.clone()],
        ),
        (
            "urn:uuid naming no entry",
            vec![
                json!({"fullUrl": "urn:uuid:0d3a4a2e-6c1b-4b7e-8f0a-000000000001", "resource": dangling, "request": {"method": "POST", "url": "Observation"}}),
            ],
        ),
    ] {
        let r = f
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
            )
            .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    assert_eq!(w.versions().await, before, "nothing was written");
}

/// Defect 9: `Prefer: handling=strict` refuses an empty `_sort` and a malformed quantity; a
/// `POST Type?params` is a conditional create, never a silent duplicate.
#[tokio::test]
async fn strict_handling_and_conditional_create_by_url() {
    let w = world().await;
    let strict = [("Prefer", "handling=strict")];
    for q in [
        "Observation?_sort=",
        "Observation?value-quantity=1|||||",
        "Observation?_sort=,",
    ] {
        let r = w.call("system", "GET", q, None, &strict).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    let r = w.get("system", "Observation?value-quantity=1|||||").await;
    assert_eq!(
        r.status,
        400,
        "a malformed quantity is refused whatever the handling: {}",
        r.text()
    );
    let p =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M-77"}]});
    let first = w
        .send("system", "POST", "Patient?identifier=urn:mrn|M-77", &p)
        .await;
    assert_eq!(first.status, 201, "{}", first.text());
    let second = w
        .send("system", "POST", "Patient?identifier=urn:mrn|M-77", &p)
        .await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["id"], first.json()["id"]);
    let listed = World::listed(
        &w.get("system", "Patient?identifier=urn:mrn|M-77").await,
        "match",
    );
    assert_eq!(listed.len(), 1);
    let differs = w
        .call(
            "system",
            "POST",
            "Patient?identifier=urn:mrn|M-77",
            Some(p.to_string().into_bytes()),
            &[("If-None-Exist", "identifier=urn:mrn|OTHER")],
        )
        .await;
    assert_eq!(differs.status, 400, "{}", differs.text());
}

/// What the one policy says each caller may do with each kind of resource: the oracle of the table
/// below (README, "Consent, labels and break-the-glass"). `sees`: read it; `writes`: replace or
/// delete it (it must be seen, and the caller needs the write scopes).
fn expected(caller: &str, target: &str) -> (bool, bool) {
    let sees = matches!(
        (caller, target),
        ("system" | "admin", "a" | "b" | "ab")
            | ("narrow", "a" | "b")
            | ("dr", "a" | "a-r")
            | ("patient-a", "a" | "a-r" | "a-v")
            | ("analyst", "a")
    );
    let may_write = matches!(caller, "system" | "admin" | "dr" | "patient-a");
    (sees, sees && may_write)
}

/// The table: caller (system client, narrow system client, administrator, practitioner, patient,
/// analytics) × interaction (read, vread, history, search, count, chain, `_has`, include,
/// `$everything`, batch, transaction, If-Match, update, patch, conditional update, conditional
/// create, delete, conditional delete) × label (none, R, V) × compartment (own A, other B, a Group
/// in both). Every row answers as the policy decides, and every refusal as a missing resource.
#[tokio::test]
async fn every_path_answers_as_the_policy_decides() {
    let w = world().await;
    let f = w.stack.fhir();
    let (a, b) = (w.a.clone(), w.b.clone());
    let callers: Vec<&str> = w.callers.iter().map(|(c, _)| *c).collect();
    let make = |target: &str| match target {
        "a" => obs(&a, None),
        "a-r" => obs(&a, Some("R")),
        "a-v" => obs(&a, Some("V")),
        "b" => obs(&b, None),
        _ => group(&[&a, &b]),
    };
    let targets = ["a", "a-r", "a-v", "b", "ab"];
    // Read paths, on one shared set.
    let mut shared = Vec::new();
    for t in targets {
        let body = make(t);
        let rt = body["resourceType"].as_str().unwrap().to_string();
        let id = created(&f.post(&rt, &body).await);
        shared.push((t, rt, id));
    }
    for caller in &callers {
        for (t, rt, id) in &shared {
            let (sees, _) = expected(caller, t);
            let scoped = *caller != "narrow" || rt == "Observation";
            let label = format!("{caller} × {t}");
            let status = |ok: u16| {
                if !scoped {
                    403
                } else if sees {
                    ok
                } else {
                    404
                }
            };
            let patient = if *t == "b" { &b } else { &a };
            let reference = if rt == "Group" { "member" } else { "subject" };
            for path in [
                format!("{rt}/{id}"),
                format!("{rt}/{id}/_history/1"),
                format!("{rt}/{id}/_history"),
            ] {
                let r = w.get(caller, &path).await;
                assert_eq!(r.status, status(200), "{label}: GET {path}: {}", r.text());
            }
            // What an analytics caller receives is de-identified: the resource is listed under
            // the pseudonym its read gives.
            let me = if *caller == "analyst" && sees {
                let r = w.get(caller, &format!("{rt}/{id}")).await;
                format!("{rt}/{}", r.json()["id"].as_str().unwrap())
            } else {
                format!("{rt}/{id}")
            };
            let search = w.get(caller, &format!("{rt}?_id={id}")).await;
            if scoped {
                assert_eq!(
                    World::listed(&search, "match").contains(&me),
                    sees,
                    "{label}: search"
                );
                let count = w
                    .get(caller, &format!("{rt}?_id={id}&_summary=count"))
                    .await;
                assert_eq!(count.json()["total"], u64::from(sees), "{label}: count");
            } else {
                assert_eq!(search.status, 403, "{label}: search");
            }
            // Joined paths need Patient's scopes: the narrow client is refused (403) whatever
            // the data, everyone else sees the row only where both ends are visible.
            let patient_seen = match *caller {
                "system" | "admin" => true,
                "narrow" => false,
                _ => *t != "b",
            };
            let chain = w
                .get(
                    caller,
                    &format!("{rt}?_id={id}&{reference}:Patient._id={patient}"),
                )
                .await;
            let has = w
                .get(
                    caller,
                    &format!("Patient?_id={patient}&_has:{rt}:{reference}:_id={id}"),
                )
                .await;
            let include = w
                .get(
                    caller,
                    &format!("Patient?_id={patient}&_revinclude={rt}:{reference}"),
                )
                .await;
            if *caller == "narrow" {
                for (what, r) in [("chain", &chain), ("_has", &has), ("include", &include)] {
                    assert_eq!(r.status, 403, "{label}: {what}: {}", r.text());
                }
            } else {
                assert_eq!(
                    World::listed(&chain, "match").contains(&me),
                    sees && patient_seen,
                    "{label}: chain"
                );
                assert_eq!(
                    !World::listed(&has, "match").is_empty(),
                    sees && patient_seen,
                    "{label}: _has"
                );
                assert_eq!(
                    World::listed(&include, "include").contains(&me),
                    sees && patient_seen,
                    "{label}: include"
                );
            }
            let everything = w
                .get(caller, &format!("Patient/{patient}/$everything"))
                .await;
            if everything.status == 200 {
                assert_eq!(
                    World::listed(&everything, "match").contains(&me),
                    sees,
                    "{label}: $everything"
                );
            } else {
                assert!(
                    !sees || !patient_seen || !scoped,
                    "{label}: $everything {}",
                    everything.text()
                );
            }
            for kind in ["batch", "transaction"] {
                let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [
                    {"request": {"method": "GET", "url": format!("{rt}/{id}")}}]});
                let r = w.send(caller, "POST", "", &bundle).await;
                assert_eq!(r.status, 200, "{label}: {kind}: {}", r.text());
                let got = r.json()["entry"][0]["response"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    got.starts_with(&status(200).to_string()),
                    "{label}: {kind} GET answered {got}"
                );
            }
        }
    }
    // Write paths, each caller on a set of its own.
    for caller in &callers {
        for t in targets {
            let (sees, writes) = expected(caller, t);
            let body = make(t);
            let rt = body["resourceType"].as_str().unwrap().to_string();
            let id = created(&f.post(&rt, &body).await);
            let label = format!("{caller} × {t}");
            let scope_ok = !matches!(*caller, "narrow" | "analyst");
            // Refusals by scope come first (403, whatever exists); so do refusals of what the
            // caller's own body would write (data into B's record from someone B's record is
            // closed to: 403 for any id, taken or not). Then a hidden resource looks missing.
            let body_refused = matches!(*caller, "dr" | "patient-a") && matches!(t, "b" | "ab");
            let status = |ok: u16| {
                if !scope_ok {
                    403
                } else if writes {
                    ok
                } else {
                    404
                }
            };
            // Dropping a label the caller can see is declassifying: the patient's alone.
            let lowers = writes && matches!(t, "a-r" | "a-v") && *caller != "patient-a";
            let put_status = |ok: u16| {
                if scope_ok && (body_refused || lowers) {
                    403
                } else {
                    status(ok)
                }
            };
            let mut update = body.clone();
            update["id"] = json!(id);
            if let Some(meta) = update.get_mut("meta") {
                // The attacker's move: drop the label.
                *meta = json!({});
                update.as_object_mut().unwrap().remove("meta");
            }
            let stale = w
                .call(
                    caller,
                    "PUT",
                    &format!("{rt}/{id}"),
                    Some(update.to_string().into_bytes()),
                    &[("If-Match", "W/\"9\"")],
                )
                .await;
            assert_eq!(
                stale.status,
                put_status(412),
                "{label}: If-Match: {}",
                stale.text()
            );
            let patch_body: &[u8] = if rt == "Group" {
                // (not `actual`: a Group with members is an actual one, grp-1)
                br#"[{"op":"add","path":"/name","value":"Ward"}]"#
            } else {
                br#"[{"op":"replace","path":"/status","value":"amended"}]"#
            };
            let patch = w
                .call(
                    caller,
                    "PATCH",
                    &format!("{rt}/{id}"),
                    Some(patch_body.to_vec()),
                    &[("Content-Type", "application/json-patch+json")],
                )
                .await;
            // Patching keeps the label: a practitioner may patch R, not V.
            assert_eq!(
                patch.status,
                status(200),
                "{label}: PATCH: {}",
                patch.text()
            );
            let put = w.send(caller, "PUT", &format!("{rt}/{id}"), &update).await;
            assert_eq!(put.status, put_status(200), "{label}: PUT: {}", put.text());
            let cond_put = w
                .send(caller, "PUT", &format!("{rt}?_id={id}"), &update)
                .await;
            assert_eq!(
                cond_put.status,
                put_status(200),
                "{label}: conditional PUT: {}",
                cond_put.text()
            );
            // A conditional create finds only what the caller sees; otherwise it creates anew.
            if scope_ok {
                let mut fresh = make(t);
                if let Some(m) = fresh.as_object_mut() {
                    m.remove("meta");
                }
                let cond = w
                    .call(
                        caller,
                        "POST",
                        &rt,
                        Some(fresh.to_string().into_bytes()),
                        &[("If-None-Exist", &format!("_id={id}"))],
                    )
                    .await;
                let want = if body_refused {
                    403
                } else if sees {
                    200
                } else {
                    201
                };
                assert_eq!(
                    cond.status,
                    want,
                    "{label}: conditional create: {}",
                    cond.text()
                );
            }
            let del = w
                .call(caller, "DELETE", &format!("{rt}/{id}"), None, &[])
                .await;
            assert_eq!(del.status, status(204), "{label}: DELETE: {}", del.text());
            // Whatever was refused left the system's copy as it was.
            let after = f.get(&format!("{rt}/{id}")).await;
            if writes {
                // Deleted; the system client sees the deletion where it saw the last version
                // (only the patient could have dropped its label).
                let seen = expected("system", t).0 || *caller == "patient-a";
                let want = if seen { 410 } else { 404 };
                assert_eq!(after.status, want, "{label}: deleted");
            } else if expected("system", t).0 {
                assert_eq!(after.json()["meta"]["versionId"], "1", "{label}: untouched");
            }
            let cond_del = w
                .call(caller, "DELETE", &format!("{rt}?_id={id}"), None, &[])
                .await;
            assert!(
                matches!(cond_del.status, 204 | 403),
                "{label}: conditional DELETE: {}",
                cond_del.text()
            );
        }
    }
}
