//! FHIR XML over REST: every official R4 example the JSON round trip accepts goes through XML and
//! back unchanged; XML bodies for create, update, transactions and `$validate`; answers in XML on
//! `Accept` or `_format` (searches, histories, errors); the refusals (DOCTYPE and entities,
//! processing instructions, elements out of order or unknown) as OperationOutcomes in XML, with
//! nothing written; 406 and 415 for what the server cannot speak.

use carapace_tests::conformance::{xml_round_trip_all, Verdict};
use carapace_tests::*;
use serde_json::{json, Value};

const XML: &str = "application/fhir+xml";
const XML_TYPE: &str = "application/fhir+xml; charset=utf-8";

fn content_type(r: &HttpResponse) -> &str {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_examples_round_trip_through_xml() {
    let Some(dir) = examples_dir() else {
        eprintln!("SKIPPED: R4 examples not found (run tests/run, or set CARAPACE_R4_EXAMPLES)");
        return;
    };
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![("CARAPACE_REFERENTIAL_INTEGRITY".into(), "off".into())],
    )
    .await
    .unwrap();
    let report = xml_round_trip_all(&stack.server.base, &stack.server.bearer(), &dir, 8)
        .await
        .unwrap();
    eprintln!(
        "through XML (JSON PUT, GET as XML, POST that XML, GET as JSON): {} of {} examples came back exactly",
        report.passed, report.total
    );
    eprintln!("{}", report.summary());
    assert!(
        report.total > 5000,
        "all examples were tried: {}",
        report.total
    );
    let bad: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::ServerError(_) | Verdict::Mismatch(_)))
        .collect();
    assert!(
        bad.is_empty(),
        "examples that did not come back through XML: {bad:#?}"
    );
    assert!(
        report.passed * 100 >= report.total * 99,
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn xml_in_and_out_over_rest() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let patient = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Ann &amp; Bea</p></div></text>
  <name><family value="Xml"/><given value="Ann"/><given id="g2"><extension url="http://hl7.org/fhir/StructureDefinition/data-absent-reason"><valueCode value="unknown"/></extension></given></name>
  <gender value="female"/>
  <birthDate value="1970-01-01"/>
</Patient>"#;
    let created = fhir
        .raw(
            "POST",
            "Patient",
            patient.into(),
            &[("Content-Type", XML), ("Accept", XML)],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(content_type(&created), XML_TYPE);
    assert!(created.headers.contains_key("location") && created.headers.contains_key("etag"));
    let body = created.text();
    assert!(
        body.starts_with(
            r#"<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir">"#
        ),
        "{body}"
    );
    let id = body
        .split(r#"<id value=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // The JSON form is what the XML said.
    let json = fhir.get(&format!("Patient/{id}")).await.json();
    assert_eq!(json["name"][0]["given"], json!(["Ann", null]));
    assert_eq!(json["name"][0]["_given"][1]["id"], "g2");
    assert_eq!(
        json["text"]["div"],
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Ann &amp; Bea</p></div>"#
    );

    // Read in XML by Accept and by every _format spelling.
    let auth = stack.server.bearer();
    for (path, accept) in [
        (format!("Patient/{id}"), "application/fhir+xml"),
        (
            format!("Patient/{id}"),
            "application/xml;q=0.9, application/fhir+json;q=0.5",
        ),
        (format!("Patient/{id}"), "text/xml"),
        (format!("Patient/{id}?_format=xml"), "application/fhir+json"),
        (
            format!("Patient/{id}?_format=application/fhir%2Bxml"),
            "*/*",
        ),
        (format!("Patient/{id}?_format=application/fhir+xml"), "*/*"),
        (format!("Patient/{id}?_format=text/xml"), "*/*"),
    ] {
        let r = http(
            "GET",
            &stack.server.url(&path),
            &[("Accept", accept), ("Authorization", &auth)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, content_type(&r)),
            (200, XML_TYPE),
            "{path} {accept}"
        );
        assert!(
            r.text().contains(r#"<given id="g2"><extension"#),
            "{}",
            r.text()
        );
    }
    // JSON stays the default, and wins when asked for first.
    let r = http(
        "GET",
        &stack.server.url(&format!("Patient/{id}")),
        &[
            ("Accept", "application/fhir+json, application/fhir+xml"),
            ("Authorization", &auth),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(content_type(&r), "application/fhir+json; charset=utf-8");

    // Update from XML, conditional on the version: the ETag rules are the JSON ones.
    let updated = patient.replace(r#"<gender value="female"/>"#, r#"<gender value="other"/>"#);
    let updated = updated.replace("<text>", &format!(r#"<id value="{id}"/><text>"#));
    let stale = fhir
        .raw(
            "PUT",
            &format!("Patient/{id}"),
            updated.clone().into(),
            &[
                ("Content-Type", XML),
                ("Accept", XML),
                ("If-Match", "W/\"7\""),
            ],
        )
        .await;
    assert_eq!(
        (stale.status, content_type(&stale)),
        (412, XML_TYPE),
        "{}",
        stale.text()
    );
    assert!(
        stale.text().contains("<OperationOutcome"),
        "{}",
        stale.text()
    );
    let ok = fhir
        .raw(
            "PUT",
            &format!("Patient/{id}"),
            updated.into(),
            &[("Content-Type", "text/xml"), ("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["gender"], "other");

    // Searches and histories as XML Bundles, their resources inside.
    let search = fhir
        .raw("GET", "Patient?family=Xml", vec![], &[("Accept", XML)])
        .await;
    assert_eq!((search.status, content_type(&search)), (200, XML_TYPE));
    let text = search.text();
    assert!(
        text.contains(r#"<Bundle xmlns="http://hl7.org/fhir">"#)
            && text.contains("<resource><Patient>"),
        "{text}"
    );
    assert!(text.contains(r#"<total value="1"/>"#), "{text}");
    let history = fhir
        .raw(
            "GET",
            &format!("Patient/{id}/_history"),
            vec![],
            &[("Accept", XML)],
        )
        .await;
    assert_eq!(history.status, 200);
    assert_eq!(
        history.text().matches("<resource><Patient>").count(),
        2,
        "{}",
        history.text()
    );
    let metadata = fhir.get("metadata?_format=xml").await;
    assert_eq!((metadata.status, content_type(&metadata)), (200, XML_TYPE));
    assert!(metadata
        .text()
        .contains(r#"<format value="application/fhir+xml"/>"#));

    // A transaction in XML: urn:uuid references resolved, the response in XML.
    let tx = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
      <entry><fullUrl value="urn:uuid:4e1c7bd2-1a7f-4a57-9d2c-1f6a7b0f9b11"/><resource><Patient><name><family value="Tx"/></name></Patient></resource><request><method value="POST"/><url value="Patient"/></request></entry>
      <entry><resource><Observation><status value="final"/><code><text value="weight"/></code><subject><reference value="urn:uuid:4e1c7bd2-1a7f-4a57-9d2c-1f6a7b0f9b11"/></subject><valueQuantity><value value="72.50"/><unit value="kg"/></valueQuantity></Observation></resource><request><method value="POST"/><url value="Observation"/></request></entry>
    </Bundle>"#;
    let r = fhir
        .raw(
            "POST",
            "",
            tx.into(),
            &[("Content-Type", XML), ("Accept", XML)],
        )
        .await;
    assert_eq!(
        (r.status, content_type(&r)),
        (200, XML_TYPE),
        "{}",
        r.text()
    );
    assert_eq!(
        r.text().matches(r#"<status value="201 Created"/>"#).count(),
        2,
        "{}",
        r.text()
    );
    let obs = fhir.get("Observation?code:text=weight").await.json();
    let value = &obs["entry"][0]["resource"]["valueQuantity"]["value"];
    assert_eq!(value.to_string(), "72.50", "the decimal keeps its text");
    assert!(obs["entry"][0]["resource"]["subject"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Patient/"));

    // $validate takes XML and answers XML.
    let bad = r#"<Patient xmlns="http://hl7.org/fhir"><gender value="blue"/></Patient>"#;
    let r = fhir
        .raw(
            "POST",
            "Patient/$validate",
            bad.into(),
            &[("Content-Type", XML), ("Accept", XML)],
        )
        .await;
    assert_eq!(content_type(&r), XML_TYPE, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("<OperationOutcome")
            && text.contains(r#"<expression value="Patient.gender"/>"#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_xml_is_refused_as_an_operation_outcome_and_nothing_is_written() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let cases = [
        (
            r#"<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir"><gender value="&x;"/></Patient>"#,
            "DOCTYPE",
            "",
        ),
        (
            r#"<!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"/>"#,
            "DOCTYPE",
            "",
        ),
        (
            r#"<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><Patient xmlns="http://hl7.org/fhir"><gender value="&c;"/></Patient>"#,
            "DOCTYPE",
            "",
        ),
        (
            r#"<?xml-stylesheet href="http://example.org/x.xsl"?><Patient xmlns="http://hl7.org/fhir"/>"#,
            "processing instructions",
            "",
        ),
        (
            r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><active value="true"/></Patient>"#,
            "out of order",
            "Patient.active",
        ),
        (
            r#"<Patient xmlns="http://hl7.org/fhir"><colour value="red"/></Patient>"#,
            "unknown element 'colour'",
            "Patient.colour",
        ),
        (
            r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a"/><family value="b"/></name></Patient>"#,
            "does not repeat",
            "Patient.name[0].family",
        ),
        (
            r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a"></name></Patient>"#,
            "invalid XML",
            "",
        ),
        (r#"{"resourceType": "Patient"}"#, "invalid XML", ""),
    ];
    for (body, needle, path) in cases {
        let r = fhir
            .raw(
                "POST",
                "Patient",
                body.into(),
                &[("Content-Type", XML), ("Accept", XML)],
            )
            .await;
        assert_eq!(
            (r.status, content_type(&r)),
            (400, XML_TYPE),
            "{body}: {}",
            r.text()
        );
        let text = r.text();
        assert!(
            text.contains("<OperationOutcome") && text.contains(needle),
            "{body}: {text}"
        );
        if !path.is_empty() {
            assert!(
                text.contains(&format!(r#"<expression value="{path}"/>"#)),
                "{body}: {text}"
            );
        }
        assert!(
            !text.contains("root:") && !text.contains("passwd"),
            "{text}"
        );
    }
    // The validator still judges what the XML says, at its path.
    let r = fhir
        .raw(
            "POST",
            "Patient",
            br#"<Patient xmlns="http://hl7.org/fhir"><birthDate value="1970-13-01"/></Patient>"#
                .to_vec(),
            &[("Content-Type", XML)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["issue"][0]["expression"][0], "Patient.birthDate");
    assert_eq!(stack.stored_versions().await, 0, "nothing was written");

    // What the server cannot speak: 415 for a body, 406 (in JSON) for an answer.
    let r = fhir
        .raw(
            "POST",
            "Patient",
            b"x".to_vec(),
            &[("Content-Type", "application/x-yaml")],
        )
        .await;
    assert_eq!(r.status, 415);
    assert!(r.text().contains("application/fhir+xml"), "{}", r.text());
    let r = fhir
        .raw("GET", "Patient", vec![], &[("Accept", "text/turtle")])
        .await;
    assert_eq!(
        (r.status, content_type(&r)),
        (406, "application/fhir+json; charset=utf-8")
    );
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let r = fhir.get("Patient?_format=rdf").await;
    assert_eq!(r.status, 406);
    // An unauthenticated request asking for XML gets its 401 in XML.
    let r = http(
        "GET",
        &stack.server.url("Patient"),
        &[("Accept", XML)],
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.status, content_type(&r)), (401, XML_TYPE));
}

/// An independent client: Python's own XML parser reads what the server writes, and the strict
/// R4 models of `fhirclient` (JSON only, so they read the same resource as JSON) accept what was
/// created from XML.
#[tokio::test]
async fn an_independent_client_speaks_xml() {
    let Ok(python) = std::env::var("CARAPACE_PYTHON_CLIENTS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CARAPACE_PYTHON_CLIENTS is unset (tests/run installs fhirclient)"
        );
        eprintln!("SKIPPED: set CARAPACE_PYTHON_CLIENTS (tests/run installs fhirclient)");
        return;
    };
    let stack = Stack::start().await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/xml_client.py");
    let mut command = std::process::Command::new(&python);
    command
        .arg(&script)
        .arg(&stack.server.base)
        .arg(stack.server.bearer());
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["created"], 201, "{report}");
    assert_eq!(report["family"], "Ünïcode & <Sons>", "{report}");
    assert_eq!(report["birth_time_extension"], true, "{report}");
    assert_eq!(report["strict_model"], "Patient", "{report}");
    assert_eq!(report["refused"], 400, "{report}");
    assert_eq!(report["refused_path"], "Patient.colour", "{report}");
}
