//! Issue 14, terminology: `ValueSet/$expand`, `CodeSystem/$lookup`, `ValueSet/$validate-code` and
//! `CodeSystem/$validate-code` over the code systems and value sets that ship with R4, by GET and
//! POST; large external systems answered as out of scope; and token search with `:in`,
//! `:not-in`, `:below` and `:above`.

use carapace_tests::*;

const GENDER_VS: &str = "http://hl7.org/fhir/ValueSet/administrative-gender";
const GENDER: &str = "http://hl7.org/fhir/administrative-gender";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const ENCOUNTER_VS: &str = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode";

fn q(path: &str, params: &[(&str, &str)]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("{path}?{query}")
}

fn codes(expansion: &Value) -> Vec<String> {
    expansion["expansion"]["contains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["code"].as_str().unwrap().to_string())
        .collect()
}

/// The named output parameter of a Parameters answer.
fn out<'a>(parameters: &'a Value, name: &str) -> &'a Value {
    parameters["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or(&Value::Null)
}

fn properties(parameters: &Value, code: &str) -> Vec<String> {
    parameters["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "property" && p["part"][0]["valueCode"] == code)
        .map(|p| p["part"][1]["valueCode"].as_str().unwrap().to_string())
        .collect()
}

fn ok(r: &HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn outcome(r: &HttpResponse, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let o = r.json();
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert!(r.text().contains(says), "{says}: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminology_operations_answer_from_the_shipped_tables() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();

    // $expand: every member, then filtered (case-insensitive, code or display) and paged.
    let all = ok(&f.get(&q("ValueSet/$expand", &[("url", GENDER_VS)])).await);
    assert_eq!(all["resourceType"], "ValueSet");
    assert_eq!(all["url"], GENDER_VS);
    let mut got = codes(&all);
    got.sort();
    assert_eq!(got, ["female", "male", "other", "unknown"]);
    assert_eq!(all["expansion"]["total"], 4);
    assert!(all["expansion"]["identifier"]
        .as_str()
        .unwrap()
        .starts_with("urn:uuid:"));
    assert!(all["expansion"]["timestamp"].is_string());
    let male = ok(&f
        .get(&q(
            "ValueSet/$expand",
            &[("url", GENDER_VS), ("filter", "MAL")],
        ))
        .await);
    let mut got = codes(&male);
    got.sort();
    assert_eq!(got, ["female", "male"], "'female' holds 'male'");
    let page = ok(&f
        .get(&q(
            "ValueSet/$expand",
            &[("url", GENDER_VS), ("offset", "1"), ("count", "2")],
        ))
        .await);
    assert_eq!(codes(&page), codes(&all)[1..3]);
    assert_eq!(
        (&page["expansion"]["total"], &page["expansion"]["offset"]),
        (&json!(4), &json!(1))
    );
    let posted = ok(&f
        .post(
            "ValueSet/$expand",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "url", "valueUri": GENDER_VS},
                {"name": "filter", "valueString": "fem"}]}),
        )
        .await);
    assert_eq!(codes(&posted), ["female"]);
    outcome(
        &f.get(&q(
            "ValueSet/$expand",
            &[("url", "http://example.org/ValueSet/none")],
        ))
        .await,
        404,
        "no value set",
    );
    outcome(
        &f.get(&q(
            "ValueSet/$expand",
            &[("url", "http://hl7.org/fhir/ValueSet/observation-codes")],
        ))
        .await,
        422,
        "cannot be expanded",
    );

    // $lookup: display and the hierarchy around the code.
    let imp = ok(&f
        .get(&q(
            "CodeSystem/$lookup",
            &[("system", ACT_CODE), ("code", "IMP")],
        ))
        .await);
    assert_eq!(out(&imp, "display")["valueString"], "inpatient encounter");
    assert_eq!(out(&imp, "name")["valueString"], "v3.ActCode");
    assert_eq!(properties(&imp, "parent"), ["_ActEncounterCode"]);
    let mut children = properties(&imp, "child");
    children.sort();
    assert_eq!(children, ["ACUTE", "NONAC"]);
    let by_coding = ok(&f
        .post(
            "CodeSystem/$lookup",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "coding", "valueCoding": {"system": GENDER, "code": "female"}}]}),
        )
        .await);
    assert_eq!(out(&by_coding, "display")["valueString"], "Female");
    outcome(
        &f.get(&q(
            "CodeSystem/$lookup",
            &[("system", GENDER), ("code", "robot")],
        ))
        .await,
        404,
        "is not a code",
    );
    outcome(
        &f.get(&q(
            "CodeSystem/$lookup",
            &[("system", "http://loinc.org"), ("code", "8867-4")],
        ))
        .await,
        404,
        "out of scope",
    );

    // ValueSet/$validate-code: in, not in, wrong display, unknown system (informational).
    let vs_check = |params: Vec<(&'static str, &'static str)>| {
        let mut all = vec![("url", GENDER_VS)];
        all.extend(params);
        q("ValueSet/$validate-code", &all)
    };
    let yes = ok(&f
        .get(&vs_check(vec![("system", GENDER), ("code", "female")]))
        .await);
    assert_eq!(out(&yes, "result")["valueBoolean"], true);
    assert_eq!(out(&yes, "display")["valueString"], "Female");
    let no = ok(&f
        .get(&vs_check(vec![("system", GENDER), ("code", "robot")]))
        .await);
    assert_eq!(out(&no, "result")["valueBoolean"], false);
    assert!(out(&no, "message")["valueString"]
        .as_str()
        .unwrap()
        .contains("not in"));
    let wrong = ok(&f
        .get(&vs_check(vec![
            ("system", GENDER),
            ("code", "male"),
            ("display", "Mann"),
        ]))
        .await);
    assert_eq!(out(&wrong, "result")["valueBoolean"], false);
    let concept = ok(&f
        .post(
            "ValueSet/$validate-code",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "url", "valueUri": GENDER_VS},
                {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
                    {"system": "http://snomed.info/sct", "code": "248152002"},
                    {"system": GENDER, "code": "female"}]}}]}),
        )
        .await);
    assert_eq!(out(&concept, "result")["valueBoolean"], true);
    let snomed = ok(&f
        .get(&vs_check(vec![
            ("system", "http://snomed.info/sct"),
            ("code", "248152002"),
        ]))
        .await);
    assert_eq!(out(&snomed, "result")["valueBoolean"], false);
    let issue = &out(&snomed, "issues")["resource"]["issue"][0];
    assert_eq!(issue["severity"], "information", "{snomed}");
    assert!(issue["diagnostics"].as_str().unwrap().contains("unknown"));

    // CodeSystem/$validate-code.
    let cs_check = |url: &'static str, code: &'static str| {
        q("CodeSystem/$validate-code", &[("url", url), ("code", code)])
    };
    let male = ok(&f.get(&cs_check(GENDER, "male")).await);
    assert_eq!(out(&male, "result")["valueBoolean"], true);
    assert_eq!(out(&male, "display")["valueString"], "Male");
    let robot = ok(&f.get(&cs_check(GENDER, "robot")).await);
    assert_eq!(out(&robot, "result")["valueBoolean"], false);
    assert!(out(&robot, "issues").is_null(), "a plain no: {robot}");
    let loinc = ok(&f.get(&cs_check("http://loinc.org", "8867-4")).await);
    assert_eq!(out(&loinc, "result")["valueBoolean"], false);
    assert_eq!(
        out(&loinc, "issues")["resource"]["issue"][0]["severity"],
        "information"
    );

    // The CapabilityStatement lists the operations and says what is out of scope.
    let cap = ok(&f.get("metadata").await);
    let ops: Vec<&str> = cap["rest"][0]["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for op in ["expand", "lookup", "validate-code"] {
        assert!(ops.contains(&op), "{op}: {ops:?}");
    }
    assert!(cap["rest"][0]["documentation"]
        .as_str()
        .unwrap()
        .contains("SNOMED CT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_search_takes_value_sets_and_hierarchies() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let mut ids = std::collections::HashMap::new();
    for (system, code) in [
        (ACT_CODE, "AMB"),
        (ACT_CODE, "IMP"),
        (ACT_CODE, "ACUTE"),
        (ACT_CODE, "EMER"),
        ("http://example.org/encounter-class", "home-visit"),
    ] {
        let r = f
            .post(
                "Encounter",
                &json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"system": system, "code": code}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.insert(code, r.json()["id"].as_str().unwrap().to_string());
    }
    let found = |r: HttpResponse| {
        assert_eq!(r.status, 200, "{}", r.text());
        let mut codes: Vec<&str> = r
            .entry_refs("match")
            .iter()
            .map(|reference| {
                let id = reference.trim_start_matches("Encounter/");
                *ids.iter().find(|(_, v)| v.as_str() == id).unwrap().0
            })
            .collect();
        codes.sort();
        codes
    };
    let below = format!("{ACT_CODE}|IMP");
    assert_eq!(
        found(f.get(&q("Encounter", &[("class:below", &below)])).await),
        ["ACUTE", "IMP"]
    );
    let above = format!("{ACT_CODE}|ACUTE");
    assert_eq!(
        found(f.get(&q("Encounter", &[("class:above", &above)])).await),
        ["ACUTE", "IMP"]
    );
    assert_eq!(
        found(f.get(&q("Encounter", &[("class:in", ENCOUNTER_VS)])).await),
        ["ACUTE", "AMB", "EMER", "IMP"]
    );
    assert_eq!(
        found(
            f.get(&q("Encounter", &[("class:not-in", ENCOUNTER_VS)]))
                .await
        ),
        ["home-visit"]
    );
    // Combined with other parameters like any token search.
    assert_eq!(
        found(
            f.get(&q(
                "Encounter",
                &[
                    ("class:in", ENCOUNTER_VS),
                    ("class:not", &format!("{ACT_CODE}|AMB"))
                ]
            ))
            .await
        ),
        ["ACUTE", "EMER", "IMP"]
    );
    for (param, value, says) in [
        ("class:below", "http://snomed.info/sct|1234", "out of scope"),
        ("class:below", "IMP", "system|code"),
        (
            "class:below",
            "http://hl7.org/fhir/administrative-gender|male",
            "hierarchy",
        ),
        (
            "class:in",
            "http://hl7.org/fhir/ValueSet/observation-codes",
            "cannot be enumerated",
        ),
        (
            "class:in",
            "http://example.org/ValueSet/none",
            "does not have",
        ),
    ] {
        let r = f.get(&q("Encounter", &[(param, value)])).await;
        outcome(&r, 400, says);
    }
}
