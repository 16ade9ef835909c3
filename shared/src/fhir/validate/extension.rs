//! Extensions: ext-1 (a value or nested extensions, never both, never neither), then a core
//! extension against its definition in [`crate::fhir::extensions`]: its value type, the contexts
//! it may be used in (matched against the walk's frames), modifier or not, and a complex one's parts.

use super::walk::{type_name, Checker, Seg};
use super::IssueType;
use crate::fhir::extensions;
use crate::fhir::printable;
use crate::fhir::schema;
use serde_json::{Map, Value};

/// ext-1 (a value or nested extensions, never both, never neither), then a core extension against
/// its definition: its value type, where it is used, modifier or not, and a complex one's parts.
/// Called with the extension's frame on top and the path at `....extension[i]`.
pub(super) fn check_extension<'a>(c: &mut Checker<'a>, map: &'a Map<String, Value>) {
    let Some(ext) = schema::type_def("Extension") else {
        return;
    };
    // The value element (`valueAddress`, or `_valueCode` alone) and its type.
    let value = map.keys().find_map(|k| {
        ext.element(k.strip_prefix('_').unwrap_or(k))
            .filter(|el| el.choice.is_some())
            .map(|el| type_name(el.kind))
    });
    // A `valueFoo` of no R4 type is reported as unknown; it still counts as the value attempted.
    let valued = value.is_some()
        || map
            .keys()
            .any(|k| k.starts_with("value") || k.starts_with("_value"));
    let nested = map.get("extension");
    match (valued, nested) {
        (true, Some(_)) => c.issue(
            IssueType::Invariant,
            "ext-1: an extension has either a value[x] or nested extensions, not both",
        ),
        (false, None) => c.issue(
            IssueType::Invariant,
            "ext-1: an extension needs a value[x] or nested extensions",
        ),
        _ => {}
    }
    let Some(Value::String(url)) = map.get("url") else {
        return;
    };
    // A sub-extension of a known complex extension (`code` in patient-nationality).
    let parent = parent_extension(c);
    // Their slicing is open: a sub-extension the definition does not name is allowed.
    if let Some(types) = parent.and_then(|p| p.part(url)) {
        if let Some(ty) = value.filter(|ty| !types.iter().any(|t| **t == **ty)) {
            c.issue(
                IssueType::Extension,
                format!(
                    "sub-extension '{}' takes a value of type {}, not {ty}",
                    printable(url),
                    list(types)
                ),
            );
        }
        return;
    }
    let Some(def) = extensions::definition(url) else {
        return;
    };
    if let Some(ty) = value {
        if def.types.is_empty() {
            c.issue(
                IssueType::Extension,
                "this extension is complex: it takes nested extensions, not a value[x]",
            );
        } else if !def.allows_type(ty) {
            c.issue(
                IssueType::Extension,
                format!(
                    "this extension takes a value of type {}, not {ty}",
                    list(&def.types)
                ),
            );
        }
    }
    let modifier = matches!(
        c.path.as_slice(),
        [.., Seg::Name("modifierExtension"), Seg::Index(_)]
    );
    if def.modifier && !modifier {
        c.issue(
            IssueType::Extension,
            "this extension is a modifier: it must be a modifierExtension",
        );
    } else if !def.modifier && modifier {
        c.issue(
            IssueType::Extension,
            "this extension is not a modifier: it must not be a modifierExtension",
        );
    }
    if let Some(contexts) = &def.contexts {
        if !contexts.iter().any(|ctx| in_context(c, ctx)) {
            c.issue(
                IssueType::Extension,
                format!(
                    "this extension is not allowed here (only on {})",
                    list(contexts)
                ),
            );
        }
    }
}

fn list(items: &[Box<str>]) -> String {
    items.join(", ")
}

/// The core definition of the extension this one is nested in, if any.
fn parent_extension(c: &Checker<'_>) -> Option<&'static extensions::Definition> {
    let n = c.frames.len();
    let holder = c.frames.get(n.checked_sub(2)?)?;
    if holder.ty != "Extension" {
        return None;
    }
    extensions::definition(holder.url)
}

/// Whether the extension on top of the frames sits on an element its definition's context names:
/// a type (`HumanName`, `Element`, `Resource`) of the element holding it, or an element path
/// (`Patient.birthDate`, `HumanName.given`) from that element's resource or any datatype around it.
fn in_context(c: &Checker<'_>, ctx: &str) -> bool {
    if ctx == "Element" {
        return true;
    }
    let n = c.frames.len();
    let (Some(frames), Some(end)) = (
        c.frames.get(..n.saturating_sub(1)),
        c.path.len().checked_sub(2),
    ) else {
        return false;
    };
    let Some(holder) = frames.last() else {
        return false;
    };
    if holder.at == end {
        let ty = holder.ty;
        let is_a = ty == ctx
            || (holder.resource
                && (ctx == "Resource"
                    || (ctx == "DomainResource"
                        && !matches!(ty, "Bundle" | "Binary" | "Parameters"))))
            || base_type(ty).is_some_and(|base| base == ctx)
            || (ctx == "BackboneElement" && ty.contains('.'));
        if is_a {
            return true;
        }
    }
    // Any extension may appear inside an ElementDefinition's example, fixed or pattern value (an
    // instance of some other type), as the HL7 validator allows.
    let in_example = frames.iter().any(|f| {
        matches!(
            (f.ty, c.path.get(f.at)),
            (
                "ElementDefinition",
                Some(Seg::Choice("fixed" | "pattern", _))
            ) | ("ElementDefinition.example", Some(Seg::Choice("value", _)))
        )
    });
    if in_example {
        return true;
    }
    frames.iter().any(|f| {
        let Some(mut rest) = ctx.strip_prefix(f.ty) else {
            return false;
        };
        for seg in c.path.get(f.at..end).unwrap_or(&[]) {
            let name = match seg {
                Seg::Name(name) => *name,
                Seg::Choice(base, _) => base,
                Seg::Index(_) => continue,
                Seg::Resource(_) => return false,
            };
            match rest.strip_prefix('.').and_then(|r| r.strip_prefix(name)) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    })
}

/// The type a datatype specialises (its StructureDefinition's base other than `Element` or
/// `PrimitiveType`): a context naming the base admits the specialisation, as in the HL7 validator.
fn base_type(ty: &str) -> Option<&'static str> {
    match ty {
        "code" | "id" | "markdown" => Some("string"),
        "url" | "canonical" | "oid" | "uuid" => Some("uri"),
        "positiveInt" | "unsignedInt" => Some("integer"),
        "Age" | "Count" | "Distance" | "Duration" => Some("Quantity"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{issues, paths};
    use super::super::*;
    use crate::fhir::extensions;
    use serde_json::json;

    #[test]
    fn extensions_have_a_url_and_one_value_or_nested_extensions() {
        let ext = |e: Value| json!({"resourceType": "Patient", "extension": [e]});
        assert_eq!(
            paths(ext(json!({"valueString": "x"}))),
            ["Patient.extension[0].url"]
        );
        assert_eq!(
            paths(ext(
                json!({"url": "u", "valueString": "x", "valueBoolean": true})
            )),
            ["Patient.extension[0].value.ofType(boolean)"]
        );
        assert_eq!(
            paths(ext(
                json!({"url": "u", "valueString": "x", "extension": [{"url": "v", "valueCode": "c"}]})
            )),
            ["Patient.extension[0]"]
        );
        assert_eq!(paths(ext(json!({"url": "u"}))), ["Patient.extension[0]"]);
        assert_eq!(
            paths(ext(json!({"url": "u", "valueFoo": 1}))),
            ["Patient.extension[0].valueFoo"]
        );
        assert_eq!(
            issues(ext(
                json!({"url": "u", "extension": [{"url": "v", "valueCodeableConcept": {"text": "t"}}]})
            )),
            vec![]
        );
        assert_eq!(
            issues(ext(
                json!({"url": "u", "_valueCode": {"extension": [{"url": "v", "valueBoolean": true}]}})
            )),
            vec![]
        );
        assert_eq!(
            paths(ext(json!({"url": "u", "valueReference": {"reference": 1}}))),
            ["Patient.extension[0].value.ofType(Reference).reference"]
        );
        let modifier = json!({"resourceType": "Patient", "modifierExtension": [{"url": "u", "valueBoolean": "no"}]});
        assert_eq!(
            paths(modifier),
            ["Patient.modifierExtension[0].value.ofType(boolean)"]
        );
    }

    #[test]
    fn core_extensions_are_checked_against_their_definitions() {
        const BIRTH_PLACE: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
        const BIRTH_TIME: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthTime";
        const NATIONALITY: &str = "http://hl7.org/fhir/StructureDefinition/patient-nationality";
        let found = |v: Value| -> Vec<(String, IssueType)> {
            issues(v).into_iter().map(|i| (i.path, i.code)).collect()
        };
        let ext = |path: &str| vec![(path.to_string(), IssueType::Extension)];
        let place = json!({"url": BIRTH_PLACE, "valueAddress": {"city": "x"}});
        assert_eq!(
            found(json!({"resourceType": "Patient", "extension": [place.clone()]})),
            vec![]
        );
        // The wrong value type, named at the extension as the HL7 validator does.
        let wrong = json!({"resourceType": "Patient", "extension": [{"url": BIRTH_PLACE, "valueString": "x"}]});
        assert_eq!(found(wrong.clone()), ext("Patient.extension[0]"));
        let message = &issues(wrong)[0].message;
        assert!(
            message.contains("Address") && message.contains("string"),
            "{message}"
        );
        // The wrong context: patient-birthPlace is for Patient only.
        assert_eq!(
            found(json!({"resourceType": "Practitioner", "extension": [place.clone()]})),
            ext("Practitioner.extension[0]")
        );
        assert_eq!(
            found(json!({"resourceType": "Patient", "name": [{"extension": [place.clone()]}]})),
            ext("Patient.name[0].extension[0]")
        );
        // An element-path context: patient-birthTime on Patient.birthDate only.
        let time = json!({"url": BIRTH_TIME, "valueDateTime": "2000-01-01T10:00:00Z"});
        assert_eq!(
            found(json!({"resourceType": "Patient", "birthDate": "2000-01-01",
                         "_birthDate": {"extension": [time.clone()]}})),
            vec![]
        );
        assert_eq!(
            found(json!({"resourceType": "Patient", "extension": [time.clone()]})),
            ext("Patient.extension[0]")
        );
        assert_eq!(
            found(json!({"resourceType": "Patient", "contact": [{"name": {
                "_family": {"extension": [time.clone()]}}}]})),
            ext("Patient.contact[0].name.family.extension[0]")
        );
        // A type context matches the type wherever it is (HumanName.given on a contact's name),
        // and `Element` anything.
        let own_prefix = json!({"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
                                "valueString": "van"});
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "contact": [{"name": {"given": ["a"],
                "_given": [{"extension": [own_prefix.clone()]}]}}]})
            ),
            ext("Patient.contact[0].name.given[0].extension[0]")
        );
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "contact": [{"name": {"family": "a",
                "_family": {"extension": [own_prefix]}}}]})
            ),
            vec![]
        );
        // A context naming a type admits its specialisations: `string` admits `code`.
        let rendering = |ext: &str| {
            json!({"resourceType": "Patient", "gender": "male", "_gender": {"extension": [
                {"url": format!("http://hl7.org/fhir/StructureDefinition/{ext}"), "valueString": "m"}]}})
        };
        assert_eq!(found(rendering("rendering-xhtml")), vec![]);
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "active": true, "_active": {"extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/rendering-xhtml", "valueString": "m"}]}})
            ),
            ext("Patient.active.extension[0]")
        );
        let absent = json!({"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                            "valueCode": "unknown"});
        assert_eq!(
            found(
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "component": [{"code": {"text": "y"}, "_valueBoolean": {"extension": [absent]}}]})
            ),
            vec![]
        );
        // A complex extension takes no value; its own parts are checked for their value types,
        // other parts are allowed (its slicing is open).
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "extension": [{"url": NATIONALITY, "valueString": "x"}]})
            ),
            ext("Patient.extension[0]")
        );
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "extension": [{"url": NATIONALITY, "extension": [
                {"url": "code", "valueCodeableConcept": {"text": "x"}},
                {"url": "other", "valueString": "x"}]}]})
            ),
            vec![]
        );
        assert_eq!(
            found(
                json!({"resourceType": "Patient", "extension": [{"url": NATIONALITY, "extension": [
                {"url": "code", "valueString": "x"}]}]})
            ),
            ext("Patient.extension[0].extension[0]")
        );
        // Modifier extensions only as modifierExtension, and only those.
        let modifier = "http://hl7.org/fhir/StructureDefinition/request-doNotPerform";
        assert!(extensions::definition(modifier).unwrap().modifier);
        let request = |key: &str| {
            let mut r = json!({"resourceType": "NutritionOrder", "status": "active", "intent": "order",
                               "patient": {"reference": "Patient/1"}, "dateTime": "2020"});
            r[key] = json!([{"url": modifier, "valueBoolean": true}]);
            r
        };
        assert_eq!(found(request("modifierExtension")), vec![]);
        assert_eq!(
            found(request("extension")),
            ext("NutritionOrder.extension[0]")
        );
        assert_eq!(
            found(json!({"resourceType": "Patient", "modifierExtension": [place]})),
            ext("Patient.modifierExtension[0]")
        );
        // Extensions not in R4 are open by design.
        assert_eq!(
            found(json!({"resourceType": "Practitioner", "extension": [
                {"url": "http://example.org/anything", "valueString": "x"}]})),
            vec![]
        );
    }
}
