//! FHIR GraphQL (`$graphql`): reads, lists and references through the same gate as REST (a
//! hidden resource is `null` exactly as a missing one, a list never shows one), the instance
//! level, the limits and refusals, and a published client (`@medplum/core`'s `graphql()`).

use carapace_core::access::Role;
use carapace_tests::*;

const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

async fn gql(
    stack: &Stack,
    token: &str,
    path: &str,
    query: &str,
    variables: Value,
) -> HttpResponse {
    let auth = format!("Bearer {}", token.trim_start_matches("Bearer "));
    let body = json!({"query": query, "variables": variables});
    http(
        "POST",
        &stack.server.url(path),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        Some(body.to_string().into_bytes()),
    )
    .await
    .unwrap()
}

fn created(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Patients A (Smith) and B (Jones); for A an Observation with a quantity whose `focus` names B,
/// and one labelled R (restricted: above a system client's ceiling).
struct Chart {
    stack: Stack,
    a: String,
    b: String,
    obs: String,
    restricted: String,
}

async fn chart() -> Chart {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let a = created(
        &f.post(
            "Patient",
            &json!({"resourceType": "Patient", "birthDate": "1970-01-01",
                "name": [{"use": "official", "family": "Smith", "given": ["Ann", "Marie"]},
                         {"use": "nickname", "given": ["Annie"]}]}),
        )
        .await,
    );
    let b = created(
        &f.post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Jones"}]}),
        )
        .await,
    );
    let obs = created(
        &f.post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{a}")},
                "focus": [{"reference": format!("Patient/{b}")}],
                "valueQuantity": {"value": 72, "unit": "/min"}}),
        )
        .await,
    );
    let restricted = created(
        &f.post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"}]},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{a}")}}),
        )
        .await,
    );
    Chart {
        stack,
        a,
        b,
        obs,
        restricted,
    }
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn graphql_reads_lists_and_follows_references() {
    let c = chart().await;
    let s = &c.stack;
    let token = s.server.bearer();
    // An instance, with nested elements, arrays and primitives.
    let r = gql(
        s,
        &token,
        "$graphql",
        &format!(
            r#"{{ Patient(id: "{}") {{ id birthDate name {{ family given }} }} }}"#,
            c.a
        ),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"]["Patient"];
    assert_eq!(data["id"], c.a.as_str());
    assert_eq!(data["birthDate"], "1970-01-01");
    assert_eq!(
        data["name"][0],
        json!({"family": "Smith", "given": ["Ann", "Marie"]})
    );
    assert_eq!(r.json().get("errors"), None);

    // A list with a search argument; a list element filter; aliases, a fragment, variables.
    let r = gql(
        s,
        &token,
        "$graphql",
        r#"query Find($family: String!) {
             smiths: PatientList(name: $family, _count: 10) { ...Names }
             nobody: PatientList(family: "Nobody") { id }
           }
           fragment Names on Patient { id official: name(use: official) { given } }"#,
        json!({"family": "smith"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"];
    assert_eq!(ids(&data["smiths"]), vec![c.a.clone()]);
    assert_eq!(
        data["smiths"][0]["official"],
        json!([{"given": ["Ann", "Marie"]}])
    );
    assert_eq!(data["nobody"], json!([]));

    // References resolved through reads as the caller; a choice type by its JSON name; the R
    // label above a system client's ceiling is neither listed nor readable.
    let r = gql(
        s,
        &token,
        "$graphql",
        &format!(
            r#"{{ ObservationList(subject: "Patient/{a}") {{
                   id valueQuantity {{ value unit }}
                   subject {{ reference resource {{ ... on Patient {{ name {{ family }} }} }} }}
                   focus {{ resource(type: Patient) {{ id }} }}
                   wrong: focus {{ resource(type: Practitioner) {{ id }} }}
                 }}
                 hidden: Observation(id: "{restricted}") {{ id }}
                 missing: Observation(id: "no-such-observation") {{ id }} }}"#,
            a = c.a,
            restricted = c.restricted
        ),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let list = &body["data"]["ObservationList"];
    assert_eq!(
        ids(list),
        vec![c.obs.clone()],
        "the R-labelled one is not listed"
    );
    assert_eq!(
        list[0]["valueQuantity"],
        json!({"value": 72, "unit": "/min"})
    );
    assert_eq!(list[0]["subject"]["resource"]["name"][0]["family"], "Smith");
    assert_eq!(list[0]["focus"][0]["resource"]["id"], c.b.as_str());
    assert_eq!(list[0]["wrong"][0]["resource"], Value::Null);
    assert_eq!(body["data"]["hidden"], Value::Null);
    assert_eq!(body["data"]["missing"], Value::Null);
    let messages: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        vec![
            format!("Observation/{} is not known", c.restricted),
            "Observation/no-such-observation is not known".to_string()
        ],
        "a hidden resource is told exactly as a missing one"
    );
    assert_eq!(body["errors"][0]["path"], json!(["hidden"]));
    // As REST says it.
    assert_eq!(
        s.fhir()
            .get(&format!("Observation/{}", c.restricted))
            .await
            .status,
        404
    );

    // The instance level: the resource is the root; lists inside it by `_reference`. GET with
    // `query=`, and POST of `application/graphql`.
    let query = "{ id name(use: official) { family } ObservationList(_reference: subject) { id } }";
    let mut url = url_with(s, &format!("Patient/{}/$graphql", c.a), &[("query", query)]);
    let r = http("GET", &url, &[("Authorization", &token)], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"];
    assert_eq!(data["id"], c.a.as_str());
    assert_eq!(data["name"], json!([{"family": "Smith"}]));
    assert_eq!(ids(&data["ObservationList"]), vec![c.obs.clone()]);
    url = s.server.url(&format!("Patient/{}/$graphql", c.b));
    let r = http(
        "POST",
        &url,
        &[
            ("Authorization", &token),
            ("Content-Type", "application/graphql"),
        ],
        Some(b"{ name { family } }".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["name"][0]["family"], "Jones");
    let r = gql(
        s,
        &token,
        &format!("Observation/{}/$graphql", c.restricted),
        "{ id }",
        Value::Null,
    )
    .await;
    assert_eq!(
        r.status,
        404,
        "a hidden root is a 404, as its read: {}",
        r.text()
    );

    // Each read it made is audited as a read (here the instance root, B).
    let reads = Value::Array(s.audit_events("subtype=read&_count=100").await).to_string();
    assert!(
        reads.contains(&format!("Patient/{}/_history/1", c.b)),
        "{reads}"
    );
}

fn url_with(stack: &Stack, path: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    format!("{}?{}", stack.server.url(path), query.finish())
}

#[tokio::test]
async fn graphql_answers_a_patient_only_their_own_record() {
    let c = chart().await;
    let s = &c.stack;
    let patient = s
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&c.a))
        .await
        .unwrap();
    let r = gql(
        s,
        &patient,
        "$graphql",
        &format!(
            r#"{{ me: Patient(id: "{a}") {{ id }}
                 other: Patient(id: "{b}") {{ id }}
                 none: Patient(id: "no-such-patient") {{ id }}
                 PatientList {{ id }}
                 ObservationList {{ id focus {{ reference resource {{ id }} }} }} }}"#,
            a = c.a,
            b = c.b
        ),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let data = &body["data"];
    assert_eq!(data["me"]["id"], c.a.as_str());
    assert_eq!(data["other"], Value::Null);
    assert_eq!(data["none"], Value::Null);
    assert_eq!(
        ids(&data["PatientList"]),
        vec![c.a.clone()],
        "B is never listed"
    );
    let mut own = vec![c.obs.clone(), c.restricted.clone()];
    own.sort();
    assert_eq!(ids(&data["ObservationList"]), own);
    // A's observation names B: the reference is A's data, B is not.
    let focus = data["ObservationList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == c.obs.as_str())
        .unwrap()["focus"][0]
        .clone();
    assert_eq!(focus["reference"], format!("Patient/{}", c.b));
    assert_eq!(focus["resource"], Value::Null);
    let errors: Vec<(String, Value)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["message"].as_str().unwrap().to_string(),
                e["path"].clone(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (format!("Patient/{} is not known", c.b), json!(["other"])),
            (
                "Patient/no-such-patient is not known".into(),
                json!(["none"])
            ),
        ],
        "another patient is told exactly as no patient"
    );
    // B's record at the instance level: as its read, a 404.
    let r = gql(
        s,
        &patient,
        &format!("Patient/{}/$graphql", c.b),
        "{ id }",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn graphql_refuses_what_it_cannot_run_and_bounds_the_rest() {
    let c = chart().await;
    let s = &c.stack;
    let token = s.server.bearer();
    let refused = |r: &HttpResponse, code: &str, says: &str| {
        assert_eq!(r.status, 400, "{}", r.text());
        let outcome = r.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(outcome["issue"][0]["code"], code, "{}", r.text());
        let text = outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("Smith"), "{text}");
    };
    let run = |query: String| {
        let token = token.clone();
        async move { gql(s, &token, "$graphql", &query, Value::Null).await }
    };
    refused(
        &run(r#"{ Patient(id: "Smith") { id "#.into()).await,
        "invalid",
        "syntax error at line 1",
    );
    refused(
        &run(r#"mutation { PatientCreate(res: {}) { id } }"#.into()).await,
        "invalid",
        "mutations",
    );
    refused(
        &run("{ Patient(id: \"x\") { ...Nope } }".into()).await,
        "invalid",
        "Nope",
    );
    refused(
        &run("query Q($id: ID!) { Patient(id: $id) { id } }".into()).await,
        "invalid",
        "$id is required",
    );
    refused(
        &run("{ Patient(id: \"x\") { name @flatten { family } } }".into()).await,
        "invalid",
        "@flatten",
    );
    // A fragment that spreads itself, fields nested too deep, text nested too deep.
    refused(
        &run(format!(
            r#"{{ Patient(id: "{}") {{ ...Loop }} }} fragment Loop on Patient {{ id ...Loop }}"#,
            c.a
        ))
        .await,
        "too-costly",
        "deeper than",
    );
    let deep = format!(
        "{{ Patient(id: \"{}\") {{ {} id {} }} }}",
        c.a,
        "contact {".repeat(20),
        "}".repeat(20)
    );
    refused(&run(deep).await, "too-costly", "deeper than 16");
    refused(
        &run("{".repeat(10_000)).await,
        "too-costly",
        "deeper than 48",
    );
    // Too many resources resolved, a list asked too long.
    let many: String = (0..201)
        .map(|i| format!(r#"p{i}: Patient(id: "{}") {{ id }} "#, c.a))
        .collect();
    refused(
        &run(format!("{{ {many} }}")).await,
        "too-costly",
        "more than 200 resources",
    );
    // Searches that match nothing still cost a query and an audit event each: counted.
    let empty: String = (0..51)
        .map(|i| format!(r#"s{i}: PatientList(name: "nobody-{i}") {{ id }} "#))
        .collect();
    refused(
        &run(format!("{{ {empty} }}")).await,
        "too-costly",
        "more than 50 searches",
    );
    refused(
        &run("{ PatientList(_count: 1000) { id } }".into()).await,
        "too-costly",
        "_count must be 1 to 100",
    );
    // What a field cannot answer is that field's error; the rest answers.
    let r = run(format!(
        r#"{{ PatientConnection {{ count }} PatientList(shoe_size: "9") {{ id }}
             Patient(id: "{}") {{ id name }} ok: Patient(id: "{}") {{ id }} }}"#,
        c.a, c.a
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["data"]["ok"]["id"], c.a.as_str());
    let messages: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].contains("Connection types are not supported"));
    assert!(messages[1].contains("shoe-size"), "{}", messages[1]);
    assert!(messages[2].contains("select its fields"), "{}", messages[2]);
    // GET without a query; POST of another media type.
    let r = http(
        "GET",
        &s.server.url("$graphql"),
        &[("Authorization", &token)],
        None,
    )
    .await
    .unwrap();
    refused(&r, "invalid", "needs a query");
    let r = http(
        "POST",
        &s.server.url("$graphql"),
        &[("Authorization", &token), ("Content-Type", "text/plain")],
        Some(b"{ x }".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
}

#[tokio::test]
async fn a_published_client_queries_with_graphql() {
    let c = chart().await;
    let token = c
        .stack
        .server
        .bearer()
        .trim_start_matches("Bearer ")
        .to_string();
    let base = format!("{}/", c.stack.server.origin());
    let report = carapace_tests::scripts::node(
        "medplum-graphql.mjs",
        &[
            ("BASE_URL", &base),
            ("ACCESS_TOKEN", &token),
            ("PATIENT_ID", &c.a),
        ],
    )
    .await;
    let data = &report["result"]["data"];
    assert_eq!(data["Patient"]["id"], c.a.as_str());
    assert_eq!(data["Patient"]["name"][0]["family"], "Smith");
    assert_eq!(ids(&data["ObservationList"]), vec![c.obs.clone()]);
    assert_eq!(
        data["ObservationList"][0]["subject"]["resource"]["id"],
        c.a.as_str()
    );
    assert_eq!(
        report["mutation"], "invalid",
        "the client sees the refusal's OperationOutcome"
    );
}

/// The README's GraphQL examples, run by bash as written (curl failing on an error status)
/// against a server holding its `Patient/123` and a blood pressure of theirs.
#[tokio::test]
async fn the_readme_graphql_examples_run_as_written() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme.split("### GraphQL\n").nth(1).unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let patient = json!({"resourceType": "Patient", "id": "123",
        "name": [{"family": "Peña", "given": ["Ana"]}], "birthDate": "1970-03-04"});
    assert_eq!(f.put("Patient/123", &patient).await.status, 201);
    let obs = created(
        &f.post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "subject": {"reference": "Patient/123"},
                "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}),
        )
        .await,
    );
    let script = format!(
        "set -euo pipefail\ncurl() {{ command curl -sS --fail-with-body \"$@\"; echo; }}\n{block}"
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BASE", &stack.server.base)
        .env("TOKEN", stack.server.token.clone().unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{block}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert!(
        answers.iter().all(|a| a.get("errors").is_none()),
        "{stdout}"
    );
    assert_eq!(answers[0]["data"]["Patient"]["name"][0]["family"], "Peña");
    assert_eq!(answers[1]["data"]["birthDate"], "1970-03-04");
    assert_eq!(answers[1]["data"]["ObservationList"][0]["id"], obs.as_str());
    assert_eq!(
        answers[1]["data"]["ObservationList"][0]["valueQuantity"]["value"],
        120
    );
}
