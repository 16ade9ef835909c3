//! Consent, labels and break-the-glass through the real server: what each role sees of two
//! patients as consents are granted, narrowed, denied, expire and are revoked; every search path
//! that could leak across patients; emergency access and its audit.

use carapace_core::access::{Role, Scope};
use carapace_tests::*;

const SECRET_CODE: &str = "http://loinc.org|SECRET-1";

/// Two patients, A and B, with data each; a practitioner user `dr` (Practitioner/pr-1, with a
/// PractitionerRole at Organization/org-1), an analytics user, and each patient's own token.
struct World {
    stack: Stack,
    a: String,
    b: String,
    obs_a: String,
    cond_a: String,
    obs_b: String,
    dr: String,
    analyst: String,
    patient_a: String,
}

async fn token(
    db: &sqlx::PgPool,
    user: &str,
    role: Role,
    scopes: &str,
    patient: Option<&str>,
) -> String {
    let scopes: Vec<Scope> = scopes
        .split_whitespace()
        .map(|s| Scope::parse(s).unwrap())
        .collect();
    carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        user,
        role,
        &scopes,
        patient,
    )
    .await
    .unwrap()
    .access_token
}

async fn world(extra_env: Vec<(String, String)>) -> World {
    let stack = Stack::start_with(Bao::start_dev().await.unwrap(), extra_env)
        .await
        .unwrap();
    let f = stack.fhir();
    let id = |r: HttpResponse| {
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    for (t, body) in [
        (
            "Practitioner",
            json!({"resourceType": "Practitioner", "id": "pr-1"}),
        ),
        (
            "Organization",
            json!({"resourceType": "Organization", "id": "org-1", "name": "Ward 7"}),
        ),
        (
            "PractitionerRole",
            json!({"resourceType": "PractitionerRole", "id": "role-1",
            "practitioner": {"reference": "Practitioner/pr-1"},
            "organization": {"reference": "Organization/org-1"}}),
        ),
    ] {
        let r = f
            .put(&format!("{t}/{}", body["id"].as_str().unwrap()), &body)
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    let a = id(f
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Alpha"}]}),
        )
        .await);
    let b = id(f
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Bravo"}],
            "link": [{"other": {"reference": format!("Patient/{a}")}, "type": "seealso"}]}),
        )
        .await);
    // A links to B too: includes in either direction would cross patients.
    let mut pa = f.get(&format!("Patient/{a}")).await.json();
    pa["link"] = json!([{"other": {"reference": format!("Patient/{b}")}, "type": "seealso"}]);
    assert_eq!(f.put(&format!("Patient/{a}"), &pa).await.status, 200);
    let obs = |p: &str, code: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{p}")}})
    };
    let obs_a = id(f.post("Observation", &obs(&a, "8867-4")).await);
    let cond_a = id(f
        .post(
            "Condition",
            &json!({"resourceType": "Condition",
            "subject": {"reference": format!("Patient/{a}")}}),
        )
        .await);
    // B's observation is about A too (focus): `_has` on A through it would be an oracle.
    let mut secret = obs(&b, "SECRET-1");
    secret["focus"] = json!([{"reference": format!("Patient/{a}")}]);
    let obs_b = id(f.post("Observation", &secret).await);

    let db = stack.db().await;
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    stack.token_user("analyst", "analytics", None).await;
    let dr = token(&db, "dr", Role::Practitioner, "user/*.cruds", None).await;
    let analyst = token(&db, "analyst", Role::Analytics, "user/*.rs", None).await;
    let patient_a = token(&db, "patient-a", Role::Patient, "patient/*.cruds", Some(&a)).await;
    World {
        stack,
        a,
        b,
        obs_a,
        cond_a,
        obs_b,
        dr,
        analyst,
        patient_a,
    }
}

impl World {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        call_as(&self.stack.server, token, method, path, body, extra).await
    }

    async fn get(&self, token: &str, path: &str) -> HttpResponse {
        self.call(token, "GET", path, None, &[]).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> HttpResponse {
        self.call(token, "POST", path, Some(body), &[]).await
    }

    async fn status(&self, token: &str, path: &str) -> u16 {
        self.get(token, path).await.status
    }

    /// Ids of the matches of a search (not the includes).
    async fn ids(&self, token: &str, query: &str) -> Vec<String> {
        self.entries(token, query, "match").await
    }

    async fn entries(&self, token: &str, query: &str, mode: &str) -> Vec<String> {
        let r = self.get(token, query).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        let mut ids = r.entry_refs(mode);
        ids.sort();
        ids
    }

    async fn grant(&self, consent: Value) -> String {
        let r = self.stack.fhir().post("Consent", &consent).await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn admin(&self) -> String {
        self.stack
            .server
            .bearer()
            .trim_start_matches("Bearer ")
            .to_string()
    }
}

#[tokio::test]
async fn consents_decide_what_each_role_sees() {
    let w = world(vec![]).await;
    let (a, b) = (&w.a, &w.b);
    let pa = format!("Patient/{a}");
    let pb = format!("Patient/{b}");
    let oa = format!("Observation/{}", w.obs_a);
    let ca = format!("Condition/{}", w.cond_a);

    // Practitioner without any consent: nothing of either patient; non-patient data is there.
    assert_eq!(w.status(&w.dr, &pa).await, 404);
    assert_eq!(w.status(&w.dr, &oa).await, 404);
    assert!(w.ids(&w.dr, "Observation").await.is_empty());
    assert_eq!(w.status(&w.dr, "Organization/org-1").await, 200);

    // A permits Practitioner/pr-1: A's record opens, B's stays closed.
    let permit_a = w.grant(permit_consent(a, "Practitioner/pr-1")).await;
    assert_eq!(w.status(&w.dr, &pa).await, 200);
    assert_eq!(w.status(&w.dr, &oa).await, 200);
    assert_eq!(w.status(&w.dr, &format!("{oa}/_history/1")).await, 200);
    assert_eq!(w.ids(&w.dr, "Observation").await, vec![oa.clone()]);
    assert_eq!(w.status(&w.dr, &pb).await, 404);

    // B permits the practitioner's organization (through their PractitionerRole).
    let permit_b = w.grant(permit_consent(b, "Organization/org-1")).await;
    assert_eq!(w.status(&w.dr, &pb).await, 200);
    assert_eq!(w.ids(&w.dr, "Observation").await.len(), 2);
    // ... and a deny naming the practitioner wins over it.
    let deny_b = w
        .grant(consent(b, "deny", Some("Practitioner/pr-1"), &[], None))
        .await;
    assert_eq!(w.status(&w.dr, &pb).await, 404);
    assert_eq!(w.ids(&w.dr, "Observation").await, vec![oa.clone()]);
    assert_eq!(
        w.stack
            .fhir()
            .delete(&format!("Consent/{deny_b}"))
            .await
            .status,
        204
    );
    assert_eq!(w.status(&w.dr, &pb).await, 200);
    assert_eq!(
        w.stack
            .fhir()
            .delete(&format!("Consent/{permit_b}"))
            .await
            .status,
        204
    );

    // Narrowed by type: A's permit replaced by one for Observations only.
    assert_eq!(
        w.stack
            .fhir()
            .delete(&format!("Consent/{permit_a}"))
            .await
            .status,
        204
    );
    let obs_only = w
        .grant(consent(
            a,
            "permit",
            Some("Practitioner/pr-1"),
            &["Observation"],
            None,
        ))
        .await;
    assert_eq!(w.status(&w.dr, &oa).await, 200);
    assert_eq!(w.status(&w.dr, &ca).await, 404);
    assert_eq!(w.status(&w.dr, &pa).await, 404);
    assert!(w.ids(&w.dr, "Condition").await.is_empty());
    assert_eq!(w.ids(&w.dr, "Observation").await, vec![oa.clone()]);
    assert_eq!(
        w.stack
            .fhir()
            .delete(&format!("Consent/{obs_only}"))
            .await
            .status,
        204
    );

    // Expired: a permit whose period ended yesterday opens nothing.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    w.grant(consent(
        a,
        "permit",
        Some("Practitioner/pr-1"),
        &[],
        Some(&yesterday),
    ))
    .await;
    assert_eq!(w.status(&w.dr, &pa).await, 404);

    // Revoked mid-session: the same token loses access on its next request.
    let revocable = w.grant(permit_consent(a, "Practitioner/pr-1")).await;
    assert_eq!(w.status(&w.dr, &pa).await, 200);
    let mut revoked = w
        .stack
        .fhir()
        .get(&format!("Consent/{revocable}"))
        .await
        .json();
    revoked["status"] = json!("inactive");
    let put = w
        .stack
        .fhir()
        .put(&format!("Consent/{revocable}"), &revoked)
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(w.status(&w.dr, &pa).await, 404);
    assert!(w.ids(&w.dr, "Observation").await.is_empty());

    // Revoked outside this server (here a DBA marks it deleted; another node or the console
    // alike): the server keeps what the policy read between requests, and forgets it when the
    // database tells — the same token loses access within the notification's delay, not at
    // the kept inputs' 60-second end.
    let elsewhere = w.grant(permit_consent(a, "Practitioner/pr-1")).await;
    assert_eq!(w.status(&w.dr, &pa).await, 200);
    assert_eq!(w.status(&w.dr, &pa).await, 200);
    sqlx::query("UPDATE resources SET deleted = true WHERE resource_type = 'Consent' AND id = $1")
        .bind(&elsewhere)
        .execute(&w.stack.db().await)
        .await
        .unwrap();
    assert_eq!(status_within(404, || w.status(&w.dr, &pa)).await, 404);

    // A practitioner cannot consent on a patient's behalf.
    let self_grant = w
        .post(&w.dr, "Consent", permit_consent(b, "Practitioner/pr-1"))
        .await;
    assert_eq!(self_grant.status, 403, "{}", self_grant.text());
    // Nor write into a record no consent opens to them.
    let write = w
        .post(
            &w.dr,
            "Observation",
            json!({"resourceType": "Observation",
            "status": "final", "code": {"text": "x"}, "subject": {"reference": pb}}),
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.text());

    // Analytics: research consents only, never writes.
    assert!(w.ids(&w.analyst, "Observation").await.is_empty());
    w.grant(consent(b, "permit", None, &[], None).as_object().cloned().map(|mut c| {
        c["provision"]["purpose"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]);
        Value::Object(c)
    }).unwrap())
    .await;
    assert_eq!(w.status(&w.analyst, &pb).await, 200);
    assert_eq!(w.status(&w.analyst, &pa).await, 404);
    // The research consent is not a treatment consent.
    assert_eq!(w.status(&w.dr, &pb).await, 404);
    let analyst_write = w
        .post(
            &w.analyst,
            "Organization",
            json!({"resourceType": "Organization"}),
        )
        .await;
    assert_eq!(analyst_write.status, 403);

    // The patient sees their own record whatever the consents say, manages their own consents,
    // and nobody else's.
    w.grant(consent(a, "deny", None, &[], None)).await;
    assert_eq!(w.status(&w.patient_a, &pa).await, 200);
    assert_eq!(w.status(&w.patient_a, &pb).await, 404);
    let own = w
        .post(
            &w.patient_a,
            "Consent",
            permit_consent(a, "Practitioner/pr-1"),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.text());
    // (A's own deny for everyone still wins over the permit they just wrote.)
    assert_eq!(w.status(&w.dr, &pa).await, 404);
    let theirs = w
        .post(
            &w.patient_a,
            "Consent",
            permit_consent(b, "Practitioner/pr-1"),
        )
        .await;
    assert_eq!(theirs.status, 403, "{}", theirs.text());
    let unenforceable = w
        .post(&w.patient_a, "Consent", {
            let mut c = permit_consent(a, "Practitioner/pr-1");
            c["provision"]["code"] = json!([{"text": "only the nice parts"}]);
            c
        })
        .await;
    assert_eq!(unenforceable.status, 400, "{}", unenforceable.text());
    assert!(unenforceable.text().contains("provision.code"));

    // System clients and administrators are institutional: every patient, consent or not.
    let admin = w.admin();
    assert_eq!(w.status(&admin, &pa).await, 200);
    assert_eq!(w.ids(&admin, "Observation").await.len(), 2);
    let db = w.stack.db().await;
    let administrator = token(&db, "root", Role::Admin, "user/*.cruds", None).await;
    assert_eq!(w.status(&administrator, &pa).await, 200);
    assert_eq!(w.ids(&administrator, "Observation").await.len(), 2);
    // An administrator may record a consent for a patient (as the console does).
    let recorded = w
        .post(
            &administrator,
            "Consent",
            // (a practitioner this server has: referential integrity)
            permit_consent(b, "Practitioner/pr-1"),
        )
        .await;
    assert_eq!(recorded.status, 201, "{}", recorded.text());
}

#[tokio::test]
async fn security_labels_hide_restricted_data() {
    let w = world(vec![]).await;
    w.grant(permit_consent(&w.a, "Practitioner/pr-1")).await;
    let labelled = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": code},
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": code}]},
            "subject": {"reference": format!("Patient/{}", w.a)}})
    };
    let r = w.stack.fhir().post("Observation", &labelled("R")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let restricted = format!("Observation/{}", r.json()["id"].as_str().unwrap());
    let v = w.stack.fhir().post("Observation", &labelled("V")).await;
    let very = format!("Observation/{}", v.json()["id"].as_str().unwrap());
    let admin = w.admin();
    // The system client wrote them but sees neither; the consented practitioner sees R, not V;
    // the patient sees both.
    assert_eq!(w.status(&admin, &restricted).await, 404);
    assert_eq!(w.status(&admin, &very).await, 404);
    assert_eq!(w.status(&w.dr, &restricted).await, 200);
    assert_eq!(w.status(&w.dr, &very).await, 404);
    assert_eq!(w.status(&w.patient_a, &very).await, 200);
    let dr_sees = w.ids(&w.dr, "Observation").await;
    assert!(dr_sees.contains(&restricted) && !dr_sees.contains(&very));
    let admin_sees = w.ids(&admin, "Observation").await;
    assert!(!admin_sees.contains(&restricted) && !admin_sees.contains(&very));
    assert_eq!(w.ids(&w.patient_a, "Observation").await.len(), 3);
    let everything = w
        .entries(&w.dr, &format!("Patient/{}/$everything", w.a), "match")
        .await;
    assert!(everything.contains(&restricted) && !everything.contains(&very));
    let count = w
        .get(&admin, "Observation?_summary=count&code:text=V")
        .await
        .json();
    assert_eq!(count["total"], 0);
}

#[tokio::test]
async fn no_search_path_leaks_across_patients() {
    let w = world(vec![]).await;
    let (a, b) = (&w.a, &w.b);
    w.grant(permit_consent(a, "Practitioner/pr-1")).await;
    let admin = w.admin();
    let pb = format!("Patient/{b}");
    let ob = format!("Observation/{}", w.obs_b);
    // Each attempt, first as the system client (the data is there), then as the practitioner.
    let attempts: Vec<(String, &str, Vec<String>)> = vec![
        (
            format!("Patient?_id={a}&_include=Patient:link"),
            "include",
            vec![pb.clone()],
        ),
        (
            format!("Patient?_id={a}&_revinclude=Patient:link"),
            "include",
            vec![pb.clone()],
        ),
        (
            format!("Patient?_id={a}&_revinclude=Observation:focus"),
            "include",
            vec![ob.clone()],
        ),
        (
            format!("Patient?_has:Observation:focus:code={SECRET_CODE}"),
            "match",
            vec![format!("Patient/{a}")],
        ),
        (
            "Patient?link:Patient.family=Bravo".to_string(),
            "match",
            vec![format!("Patient/{a}")],
        ),
        (
            format!("Observation?code={SECRET_CODE}"),
            "match",
            vec![ob.clone()],
        ),
        (
            "Patient?family=Bravo".to_string(),
            "match",
            vec![pb.clone()],
        ),
    ];
    for (query, mode, leaked) in &attempts {
        let system = w.entries(&admin, query, mode).await;
        assert!(
            leaked.iter().all(|l| system.contains(l)),
            "{query}: the system client should see {leaked:?}, saw {system:?}"
        );
        let dr = w.entries(&w.dr, query, mode).await;
        assert!(
            leaked.iter().all(|l| !dr.contains(l)),
            "{query}: leaked {dr:?}"
        );
    }
    // Counts are no oracle either.
    let count = w
        .get(
            &w.dr,
            &format!("Observation?code={SECRET_CODE}&_summary=count"),
        )
        .await
        .json();
    assert_eq!(count["total"], 0);
    // $everything: B's compartment is not there; A's holds only A's data.
    assert_eq!(
        w.status(&w.dr, &format!("Patient/{b}/$everything")).await,
        404
    );
    let everything = w
        .entries(&w.dr, &format!("Patient/{a}/$everything"), "match")
        .await;
    assert!(!everything.is_empty() && !everything.contains(&ob) && !everything.contains(&pb));
    // History of the whole server and of a type: only what the caller may see.
    let history = w.get(&w.dr, "Observation/_history").await.json();
    let refs: Vec<String> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        refs.contains(&w.obs_a) && !refs.contains(&w.obs_b),
        "{refs:?}"
    );
    // A batch reads entry by entry under the same policy.
    let batch = w
        .post(
            &w.dr,
            "",
            json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{a}")}},
            {"request": {"method": "GET", "url": format!("Patient/{b}")}},
            {"request": {"method": "GET", "url": format!("Observation?code={SECRET_CODE}")}}]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let entries = batch.json()["entry"].as_array().unwrap().clone();
    assert!(entries[0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("200"));
    assert!(entries[1]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("404"));
    assert_eq!(entries[2]["resource"]["total"], 0);
    // A transaction cannot write into B's record either; nothing of it is written.
    let tx = w
        .post(&w.dr, "", json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation",
              "status": "final", "code": {"text": "mine"}, "subject": {"reference": format!("Patient/{a}")}}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation",
              "status": "final", "code": {"text": "theirs"}, "subject": {"reference": format!("Patient/{b}")}}}]}))
        .await;
    assert_eq!(tx.status, 403, "{}", tx.text());
    assert_eq!(w.ids(&admin, "Observation?code:text=mine").await.len(), 0);
}

#[tokio::test]
async fn a_refused_read_looks_exactly_like_a_missing_one_and_is_audited() {
    let w = world(vec![]).await;
    // The same request for an id that exists but is refused, and for one that does not exist:
    // byte for byte the same answer, but for the id asked for.
    let unknown = uuid::Uuid::new_v4().to_string();
    let hidden = w.get(&w.dr, &format!("Patient/{}", w.b)).await;
    let missing = w.get(&w.dr, &format!("Patient/{unknown}")).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.status, missing.status);
    assert_eq!(
        hidden.text().replace(&w.b, "ID"),
        missing.text().replace(&unknown, "ID"),
        "the bodies differ"
    );
    let shape = |r: &HttpResponse| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "date" && k.as_str() != "x-request-id")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(shape(&hidden), shape(&missing));
    for path in [
        format!("Observation/{}/_history/1", w.obs_b),
        format!("Observation/{}/_history", w.obs_b),
    ] {
        let hidden = w.get(&w.dr, &path).await;
        let missing = w.get(&w.dr, &path.replace(&w.obs_b, &unknown)).await;
        assert_eq!(
            (hidden.status, hidden.text().replace(&w.obs_b, "ID")),
            (missing.status, missing.text().replace(&unknown, "ID")),
            "{path}"
        );
    }
    // The refusal is in the audit trail as a failed read by the practitioner.
    let failed = w
        .stack
        .audit_events("agent=dr&subtype=read&outcome=4")
        .await;
    let names_b = |e: &Value| {
        e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["what"]["reference"] == format!("Patient/{}", w.b))
    };
    assert_eq!(
        failed.iter().filter(|e| names_b(e)).count(),
        1,
        "{failed:?}"
    );
}

#[tokio::test]
async fn the_trail_is_read_by_administrators_and_by_patients_for_their_record() {
    let w = world(vec![]).await;
    w.grant(permit_consent(&w.a, "Practitioner/pr-1")).await;
    assert_eq!(w.status(&w.dr, &format!("Patient/{}", w.a)).await, 200);
    assert_eq!(w.ids(&w.dr, "Patient?family=Alpha").await.len(), 1);
    // Patient A asks who accessed their record: the practitioner's read and search are there,
    // with the search's query; nothing about B.
    let mine = w.get(&w.patient_a, "AuditEvent?agent=dr").await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let events: Vec<Value> = mine.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    let subtypes: Vec<&str> = events
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(subtypes, vec!["search-type", "read"], "{events:?}");
    let query = events[0]["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|x| x["query"].as_str())
        .unwrap();
    use base64::Engine;
    let query = base64::engine::general_purpose::STANDARD
        .decode(query)
        .unwrap();
    assert_eq!(String::from_utf8(query).unwrap(), "Patient?family=Alpha");
    let theirs = w
        .get(&w.patient_a, &format!("AuditEvent?patient=Patient/{}", w.b))
        .await;
    assert_eq!(theirs.json()["entry"].as_array().map_or(0, Vec::len), 0);
    // A single event of A's by id; one of B's is not there for A.
    let id = events[1]["id"].as_str().unwrap();
    assert_eq!(
        w.status(&w.patient_a, &format!("AuditEvent/{id}")).await,
        200
    );
    let b_event = w
        .stack
        .audit_events(&format!("patient=Patient/{}&_count=1", w.b))
        .await;
    let b_id = b_event[0]["id"].as_str().unwrap();
    assert_eq!(
        w.status(&w.patient_a, &format!("AuditEvent/{b_id}")).await,
        404
    );
    // Administrators search by agent, action, outcome and date; practitioners do not read it.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let reads = w
        .stack
        .audit_events(&format!("agent=dr&action=R&outcome=0&date=ge{today}"))
        .await;
    assert_eq!(reads.len(), 2);
    assert_eq!(w.status(&w.dr, "AuditEvent").await, 403);
    // Nobody writes the trail through the API.
    let forged = w
        .post(
            &w.admin(),
            "AuditEvent",
            json!({"resourceType": "AuditEvent"}),
        )
        .await;
    assert_eq!(forged.status, 405);
    let bad = w.get(&w.patient_a, "AuditEvent?name=x").await;
    assert_eq!(bad.status, 400);
    // In the database the events are sealed: the searched family name appears nowhere.
    let db = w.stack.db().await;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event IS NOT NULL),
                count(*) FILTER (WHERE position('Alpha'::bytea IN sealed) > 0)
           FROM audit_events",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row, (0, 0));
}

#[tokio::test]
async fn break_the_glass_is_bounded_refused_to_others_and_reviewed() {
    let w = world(vec![("CARAPACE_BTG_SECONDS".into(), "4".into())]).await;
    let pb = format!("Patient/{}", w.b);
    let btg = [("X-Purpose-Of-Use", "BTG")];
    let reason = [
        ("X-Purpose-Of-Use", "BTG"),
        (
            "X-Break-Glass-Reason",
            "unconscious in ED, no consent on file",
        ),
    ];
    assert_eq!(w.status(&w.dr, &pb).await, 404);
    // No reason, no glass broken.
    let bare = w.call(&w.dr, "GET", &pb, None, &btg).await;
    assert_eq!(bare.status, 403, "{}", bare.text());
    assert!(bare.text().contains("X-Break-Glass-Reason"));
    // With a reason: B's record, and within the window the grant holds without repeating it.
    assert_eq!(w.call(&w.dr, "GET", &pb, None, &reason).await.status, 200);
    let searched = w.call(&w.dr, "GET", "Observation", None, &btg).await;
    assert_eq!(searched.json()["entry"].as_array().map_or(0, Vec::len), 2);
    // Without the header the practitioner is back under consent.
    assert_eq!(w.status(&w.dr, &pb).await, 404);

    // Patients, analytics users and system clients never break the glass.
    let admin = w.admin();
    for (who, token) in [
        ("patient", &w.patient_a),
        ("analytics", &w.analyst),
        ("system", &admin),
    ] {
        let r = w.call(token, "GET", &pb, None, &reason).await;
        assert_eq!(r.status, 403, "{who}: {}", r.text());
    }

    // Every access under the grant is audited with the purpose and the grant.
    let mut under_btg = w.stack.audit_events("agent=dr&purpose=BTG").await;
    under_btg.reverse();
    let in_grant = |e: &Value| {
        e["entity"].as_array().unwrap().iter().any(|x| {
            x["what"]["identifier"]["system"] == "urn:carapace:break-glass"
                || x["what"]["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("urn:carapace:break-glass:"))
        })
    };
    let subtypes: Vec<&str> = under_btg
        .iter()
        .filter(|e| in_grant(e))
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        subtypes,
        vec!["break-glass", "read", "search-type", "search-type"],
        "{under_btg:?}"
    );
    // The bare assertion was refused and audited as a failure, outside any grant.
    assert_eq!(under_btg[0]["outcome"], "4");
    assert!(!in_grant(&under_btg[0]));
    for e in &under_btg {
        assert_eq!(e["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "BTG");
    }
    // The grant waits in the review queue with its reason; reviewing it is itself audited.
    let env = w.stack.console_env("security-officer").await;
    let (ok, out, err) = console(&env, &["btg", "list"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("unconscious in ED") && out.contains(" dr "),
        "{out}"
    );
    let id = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (ok, _, err) = console(
        &env,
        &["btg", "review", &id, "--note", "justified: trauma call"],
        None,
    );
    assert!(ok, "{err}");
    let (_, out, _) = console(&env, &["btg", "list"], None);
    assert_eq!(out.lines().count(), 1, "the queue is empty: {out}");
    let (_, all, _) = console(&env, &["btg", "list", "--all"], None);
    assert!(all.contains("security-officer"), "{all}");

    // Expired: after the window the grant no longer holds, and a new one needs a new reason.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let expired = w.call(&w.dr, "GET", &pb, None, &btg).await;
    assert_eq!(expired.status, 403);
    assert_eq!(w.call(&w.dr, "GET", &pb, None, &reason).await.status, 200);
}
