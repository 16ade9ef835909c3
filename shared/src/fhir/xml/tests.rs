use super::*;
use crate::fhir::json;
use serde_json::json;

/// Parse JSON as the intake does (numbers keep their text).
fn j(text: &str) -> Value {
    json::parse(text.as_bytes()).unwrap()
}

fn read(xml: &str) -> Result<Value, XmlError> {
    to_json(xml.as_bytes())
}

/// JSON → XML → JSON gives back the same JSON.
fn round_trip(v: &Value) -> String {
    let xml = from_json(v).unwrap_or_else(|e| panic!("{}: {}", e.path, e.message));
    let back = read(&xml).unwrap_or_else(|e| panic!("{}: {} in {xml}", e.path, e.message));
    assert_eq!(&back, v, "{xml}");
    xml
}

#[test]
fn primitives_are_value_attributes_with_ids_and_extensions() {
    let v = j(r#"{"resourceType":"Patient","id":"p1","active":true,
        "name":[{"id":"n1","given":["Ann",null,"Bea"],
            "_given":[null,{"id":"g2","extension":[{"url":"http://example.org/absent","valueCode":"unknown"}]},{"id":"g3"}]}],
        "birthDate":"1970-01-01","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-01-01T10:00:00Z"}]}}"#);
    let xml = round_trip(&v);
    assert_eq!(
        xml,
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir">"#,
            r#"<id value="p1"/><active value="true"/>"#,
            r#"<name id="n1"><given value="Ann"/>"#,
            r#"<given id="g2"><extension url="http://example.org/absent"><valueCode value="unknown"/></extension></given>"#,
            r#"<given id="g3" value="Bea"/></name>"#,
            r#"<birthDate value="1970-01-01"><extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">"#,
            r#"<valueDateTime value="1970-01-01T10:00:00Z"/></extension></birthDate></Patient>"#
        )
    );
    // Only extensions: no value array at all.
    let v = j(r#"{"resourceType":"Patient","name":[{"_given":[{"id":"a"},{"id":"b"}]}]}"#);
    round_trip(&v);
    // Values only: no `_given`.
    let back = read(r#"<Patient xmlns="http://hl7.org/fhir"><name><given value="a"/><given value="b"/></name></Patient>"#).unwrap();
    assert_eq!(
        back,
        json!({"resourceType":"Patient","name":[{"given":["a","b"]}]})
    );
}

#[test]
fn numbers_keep_their_exact_text() {
    let v = j(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
        "valueQuantity":{"value":1.50,"unit":"mg"},
        "referenceRange":[{"low":{"value":1e3},"high":{"value":-0.000}}],
        "component":[{"code":{"text":"n"},"valueInteger":12}]}"#,
    );
    let xml = round_trip(&v);
    assert!(xml.contains(r#"<value value="1.50"/>"#), "{xml}");
    // An exponent is written as the JSON intake keeps it (serde_json's form: `1e3` is `1e+3`).
    assert!(xml.contains(r#"<value value="1e+3"/>"#), "{xml}");
    assert!(xml.contains(r#"<valueInteger value="12"/>"#), "{xml}");
    let back = read(r#"<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="2.500E-3"/></valueQuantity></Observation>"#).unwrap();
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        r#"{"resourceType":"Observation","valueQuantity":{"value":2.500e-3}}"#
    );
    assert_eq!(
        back,
        j(r#"{"resourceType":"Observation","valueQuantity":{"value":2.500E-3}}"#)
    );
    // Not a number: left as text for the validator to refuse at its path.
    for bad in ["01", "1.", ".5", "+1", " 1", "1 ", "0x1", "", "NaN"] {
        let back = read(&format!(r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="{bad}"/></valueQuantity></Observation>"#)).unwrap();
        assert_eq!(back["valueQuantity"]["value"], json!(bad));
        let issues = crate::fhir::validate::validate_resource(&back).unwrap_err();
        assert!(
            issues
                .iter()
                .any(|i| i.path.starts_with("Observation.value")),
            "{bad}: {issues:?}"
        );
    }
    let back =
        read(r#"<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>"#).unwrap();
    assert_eq!(back["active"], json!("yes"));
    assert!(crate::fhir::validate::validate_resource(&back).is_err());
}

#[test]
fn narrative_is_xhtml_and_reads_back_exactly() {
    let div = r##"<div xmlns="http://www.w3.org/1999/xhtml"><p>Ann &amp; <b>Bea</b>&#160;é</p>
  <!-- kept --><img src="#pic" alt='single'/></div>"##;
    let v = json!({"resourceType":"Patient","text":{"status":"generated","div":div}});
    let xml = round_trip(&v);
    assert!(
        xml.contains(&format!(r#"<text><status value="generated"/>{div}</text>"#)),
        "{xml}"
    );
    // A div that leans on a prefix declared outside it is written anew, standing alone.
    let back = read(r#"<f:Patient xmlns:f="http://hl7.org/fhir" xmlns="http://www.w3.org/1999/xhtml"><f:text><f:status value="generated"/><div><p class="x">a&lt;b</p><br/></div></f:text></f:Patient>"#).unwrap();
    assert_eq!(
        back["text"]["div"],
        json!(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p class="x">a&lt;b</p><br/></div>"#)
    );
    assert!(crate::fhir::validate::validate_resource(&back).is_ok());
    // The div must be XHTML.
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div></text></Patient>"#).unwrap_err();
    assert_eq!(e.path, "Patient.text.div");
}

#[test]
fn element_ids_and_extension_urls_are_attributes_resource_ids_elements() {
    let v = j(
        r#"{"resourceType":"Patient","id":"x","extension":[{"id":"e1","url":"http://example.org/a","extension":[{"url":"b","valueString":"c"}]}],
        "contact":[{"id":"c1","name":{"family":"F"}}]}"#,
    );
    let xml = round_trip(&v);
    assert!(xml.contains(r#"<id value="x"/><extension id="e1" url="http://example.org/a"><extension url="b"><valueString value="c"/></extension></extension>"#), "{xml}");
    assert!(
        xml.contains(r#"<contact id="c1"><name><family value="F"/></name></contact>"#),
        "{xml}"
    );
    // An `id` attribute on a resource, or `url` anywhere but Extension, is not FHIR XML.
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir" id="x"/>"#).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("Patient", "attribute 'id' is not allowed here")
    );
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><name url="x"/></Patient>"#).unwrap_err();
    assert_eq!(e.path, "Patient.name[0]");
    // ...and an element id is not a child element.
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><name><id value="x"/></name></Patient>"#)
        .unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("Patient.name[0].id", "unknown element 'id'")
    );
}

#[test]
fn choices_and_embedded_resources() {
    let v = j(r##"{"resourceType":"Bundle","type":"collection","entry":[
        {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Observation","status":"final","code":{"text":"t"},
            "contained":[{"resourceType":"Patient","id":"p","deceasedBoolean":false}],
            "subject":{"reference":"#p"},"effectivePeriod":{"start":"2020"},"valueCodeableConcept":{"text":"v"}}},
        {"resource":{"resourceType":"Parameters","parameter":[{"name":"r","resource":{"resourceType":"Patient","multipleBirthInteger":2}},
            {"name":"v","valueDecimal":0.10}]}},
        {"response":{"status":"400","outcome":{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}}}]}"##);
    let xml = round_trip(&v);
    assert!(xml.contains(r#"<contained><Patient><id value="p"/><deceasedBoolean value="false"/></Patient></contained>"#), "{xml}");
    assert!(xml.contains(r#"<effectivePeriod><start value="2020"/></effectivePeriod><valueCodeableConcept><text value="v"/></valueCodeableConcept>"#), "{xml}");
    assert!(
        xml.contains(r#"<outcome><OperationOutcome><issue>"#),
        "{xml}"
    );
    assert!(xml.contains(r#"<valueDecimal value="0.10"/>"#), "{xml}");
    // Two elements of one choice reach the validator, which refuses them.
    let back = read(r#"<Patient xmlns="http://hl7.org/fhir"><deceasedBoolean value="true"/><deceasedDateTime value="2020"/></Patient>"#).unwrap();
    assert!(crate::fhir::validate::validate_resource(&back).is_err());
    // A contained element holds one resource.
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><contained><Patient/><Patient/></contained></Patient>"#).unwrap_err();
    assert_eq!(e.path, "Patient.contained[0]");
    let e = read(
        r#"<Patient xmlns="http://hl7.org/fhir"><contained><HumanName/></contained></Patient>"#,
    )
    .unwrap_err();
    assert_eq!(e.message, "'HumanName' is not an R4 resource type");
}

#[test]
fn element_order_is_the_definitions() {
    let ok = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="F"/></name><gender value="male"/></Patient>"#;
    assert!(read(ok).is_ok());
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><active value="true"/></Patient>"#).unwrap_err();
    assert_eq!(e.path, "Patient.active");
    assert_eq!(
        e.message,
        "element 'active' is out of order: R4 puts it before 'gender'"
    );
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><name><given value="a"/><family value="F"/></name></Patient>"#).unwrap_err();
    assert_eq!(e.path, "Patient.name[0].family");
    // A repeating element comes in one run; a single one once.
    let e = read(
        r#"<Patient xmlns="http://hl7.org/fhir"><name/><gender value="male"/><name/></Patient>"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "Patient.name");
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a"/><family value="b"/></name></Patient>"#).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        (
            "Patient.name[0].family",
            "element 'family' does not repeat in R4"
        )
    );
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><colour value="red"/></Patient>"#)
        .unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("Patient.colour", "unknown element 'colour'")
    );
    // Text between elements, elements outside the FHIR namespace, an empty primitive.
    assert_eq!(
        read(r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/>hi</Patient>"#)
            .unwrap_err()
            .path,
        "Patient"
    );
    assert_eq!(
        read(
            r#"<Patient xmlns="http://hl7.org/fhir"><active xmlns="urn:x" value="true"/></Patient>"#
        )
        .unwrap_err()
        .path,
        "Patient.active"
    );
    assert_eq!(
        read(r#"<Patient xmlns="urn:x"/>"#).unwrap_err().path,
        "Patient"
    );
    assert_eq!(
        read(r#"<Patient xmlns="http://hl7.org/fhir"><active/></Patient>"#)
            .unwrap_err()
            .path,
        "Patient.active"
    );
    // JSON → XML sorts by the definition, whatever the JSON's order.
    let v = j(
        r#"{"gender":"male","name":[{"given":["a"],"family":"F"}],"resourceType":"Patient","active":true}"#,
    );
    let xml = round_trip(&v);
    assert!(xml.contains(r#"<active value="true"/><name><family value="F"/><given value="a"/></name><gender value="male"/>"#), "{xml}");
}

#[test]
fn dtds_entities_and_processing_instructions_are_refused() {
    let refused = [
        r#"<!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"/>"#,
        r#"<?xml version="1.0"?><!DOCTYPE Patient SYSTEM "file:///etc/passwd"><Patient xmlns="http://hl7.org/fhir"/>"#,
        r#"<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir"><gender value="&x;"/></Patient>"#,
        concat!(
            r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">"#,
            r#"<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>"#,
            r#"<Patient xmlns="http://hl7.org/fhir"><gender value="&lol3;"/></Patient>"#
        ),
    ];
    for xml in refused {
        let e = read(xml).unwrap_err();
        assert!(e.message.contains("DOCTYPE"), "{xml}: {e:?}");
    }
    // An entity never declared is refused too, without naming it.
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><gender value="&secret;"/></Patient>"#)
        .unwrap_err();
    assert!(
        e.message.starts_with("invalid XML: an entity other than"),
        "{e:?}"
    );
    assert!(!e.message.contains("secret"));
    let e = read(r#"<?xml version="1.0"?><?xml-stylesheet href="x.xsl"?><Patient xmlns="http://hl7.org/fhir"/>"#).unwrap_err();
    assert!(e.message.contains("processing instructions"), "{e:?}");
    let e = read(r#"<Patient xmlns="http://hl7.org/fhir"><?php x ?></Patient>"#).unwrap_err();
    assert!(e.message.contains("processing instructions"), "{e:?}");
    let e = read(
        r#"<?xml version="1.0" encoding="ISO-8859-1"?><Patient xmlns="http://hl7.org/fhir"/>"#,
    )
    .unwrap_err();
    assert!(e.message.contains("UTF-8"), "{e:?}");
    assert!(to_json(
        b"<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"\xff\"/></name></Patient>"
    )
    .is_err());
    // The declaration, a BOM, comments and xsi attributes are fine.
    let ok = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- c --><Patient xmlns=\"http://hl7.org/fhir\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:schemaLocation=\"http://hl7.org/fhir x.xsd\">\n  <!-- c --><active value=\"true\"/>\n</Patient>";
    assert_eq!(
        read(ok).unwrap(),
        json!({"resourceType":"Patient","active":true})
    );
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 10_000;
    let xml = format!(
        r#"<Questionnaire xmlns="http://hl7.org/fhir">{}{}</Questionnaire>"#,
        "<item>".repeat(depth),
        "</item>".repeat(depth)
    );
    let e = read(&xml).unwrap_err();
    assert!(e.message.contains("nested"), "{e:?}");
}

#[test]
fn values_that_xml_must_escape_survive() {
    let v = json!({"resourceType":"Patient","name":[{"text":"a\"b<c>&d\te\nf\r\ng  h  "}]});
    let xml = round_trip(&v);
    assert!(
        xml.contains(r#"<text value="a&quot;b&lt;c&gt;&amp;d&#9;e&#10;f&#13;&#10;g  h  "/>"#),
        "{xml}"
    );
    // A character XML 1.0 cannot carry has no XML form.
    assert!(from_json(&json!({"resourceType":"Patient","name":[{"text":"\u{fffe}"}]})).is_err());
}

/// Every official R4 example the validator accepts comes back from XML as it was (numbers by
/// their text). Skipped without the examples (`CARAPACE_R4_EXAMPLES`, as `tests/run` sets it).
#[test]
fn official_examples_round_trip_through_xml() {
    let Some(dir) = std::env::var_os("CARAPACE_R4_EXAMPLES") else {
        eprintln!("SKIPPED: set CARAPACE_R4_EXAMPLES to the hl7.fhir.r4.examples package dir");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && name != "package.json" && !name.starts_with('.')
        })
        .collect();
    files.sort();
    let (mut total, mut failed) = (0, Vec::new());
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let v = json::parse(&std::fs::read(&path).unwrap()).unwrap();
        let outcome = match from_json(&v) {
            Ok(xml) => match to_json(xml.as_bytes()) {
                Ok(back) if back == v => Ok(()),
                Ok(_) => Err("differs after XML".to_string()),
                Err(e) => Err(format!("from XML: {} {}", e.path, e.message)),
            },
            Err(e) => Err(format!("to XML: {} {}", e.path, e.message)),
        };
        // Validated only when it fails (validation is the slow part): what the server refuses
        // as invalid need not have an XML form.
        let valid = || crate::fhir::validate::validate_resource(&v).is_ok();
        match outcome {
            Ok(()) => total += 1,
            Err(why) if valid() => {
                total += 1;
                failed.push(format!("{name}: {why}"));
            }
            Err(_) => {}
        }
    }
    eprintln!(
        "R4 examples through XML: {total} tried, {} failed",
        failed.len()
    );
    assert!(total > 5000, "{total}");
    assert!(failed.is_empty(), "{failed:#?}");
}
