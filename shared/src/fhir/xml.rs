//! FHIR XML (R4 `xml.html`), read and written through FHIR JSON: an XML body becomes the JSON the
//! strict intake and the one validator take, and a JSON resource (as stored) becomes XML. Both
//! directions are driven by the R4 type tables of [`super::schema`] — element order, which elements
//! repeat, primitive or complex, expanded choices (`valueQuantity`), embedded resources
//! (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`, `outcome`) — so there is
//! no second model of R4 here, and no validation beyond what XML itself decides (which element,
//! in which order, once or repeated): everything else is the validator's, on the JSON.
//!
//! The mapping (R4 `xml.html`, `json.html`):
//! - the root element is named by its `resourceType`, in the namespace `http://hl7.org/fhir`; an
//!   embedded resource is the one child of its element (`<contained><Patient>…</Patient></contained>`);
//! - a primitive is an element with a `value` attribute; its id is an `id` attribute and its
//!   extensions are `extension` children (JSON's `_name`, an array with nulls where it repeats);
//! - an element's `id` (not a resource's, which is an `<id value=…/>` element) and `Extension.url`
//!   are attributes;
//! - `Narrative.div` is XHTML in the XHTML namespace, carried as XML (in JSON it is its text). Read
//!   from XML, a div is kept as the exact text it was sent as when that text stands alone as a
//!   document (it declares its own namespace), so a narrative reads back byte for byte; otherwise it
//!   is written out anew with its namespaces declared;
//! - numbers (`decimal`, `integer`, `positiveInt`, `unsignedInt`) keep their text both ways
//!   (`1.50` stays `1.50`; FHIR's decimal grammar is JSON's number grammar) exactly as the JSON
//!   intake keeps them (serde_json's `arbitrary_precision`, see `json.rs`, which writes an exponent
//!   as `e+3`/`e-3`: `1E3` is kept as `1e+3` from JSON and XML alike). A value that is not a JSON
//!   number or boolean stays a string, for the validator to refuse at its path;
//! - elements come in the definition's order: written sorted by it, and read refusing an element
//!   out of order, repeated where the definition has one, or unknown (400 naming the path).
//!
//! Parser: `roxmltree`, already the narrative's (see `narrative.rs` for the comparison with
//! quick-xml and xml-rs). It checks all of XML 1.0 well-formedness and namespaces, and refuses a DTD
//! with an internal subset, so no entity is ever declared or expanded; on top of it a DOCTYPE of any
//! kind (roxmltree lets an empty one through) and every processing instruction are refused, and an
//! encoding other than UTF-8 (XXE, billion laughs, stylesheets). Writing is the few lines of
//! escaping below: no crate needed.

use super::narrative::XHTML_NS;
use super::printable;
use super::schema::{self, Element, Kind, Primitive, TypeDef};
use roxmltree::{Document, Node, NodeType, ParsingOptions};
use serde_json::{Map, Number, Value};
use std::fmt::Write as _;

/// The namespace of every FHIR element.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Element nesting, as `json.rs` bounds JSON's (serde_json: 128 levels of arrays and objects).
const MAX_DEPTH: usize = 128;
/// Nodes in one document: bounds the tree a hostile body makes us build (a 16 MiB body of the
/// smallest elements has about four million).
const MAX_NODES: u32 = 5_000_000;

/// Why a body cannot be read as FHIR XML, or a resource written as it. Safe to show to the client:
/// element and attribute names (made printable) and positions, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct XmlError {
    /// Where, as a FHIRPath (`Patient.name[0].given[1]`); empty for the document as a whole.
    pub path: String,
    pub message: String,
}

fn fault(path: &str, message: impl Into<String>) -> XmlError {
    XmlError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// `Patient.name` + `given`, with its index where the element repeats.
fn child_path(path: &str, name: &str, index: Option<usize>) -> String {
    let mut p = format!("{path}.{}", printable(name));
    if let Some(i) = index {
        let _ = write!(p, "[{i}]");
    }
    p
}

// ---------------------------------------------------------------------------------------------
// XML → JSON

/// Read an XML body as the FHIR JSON of the same resource.
pub fn to_json(body: &[u8]) -> Result<Value, XmlError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        fault(
            "",
            format!(
                "body is not valid UTF-8 (at byte {}); FHIR XML is sent as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_declaration(text)?;
    let doc = parse_document(text).map_err(|e| fault("", format!("invalid XML: {e}")))?;
    let root = doc.root_element();
    // roxmltree refuses a DTD with declarations, but lets an empty DOCTYPE through.
    if text[..root.range().start].contains("<!DOCTYPE") {
        return Err(fault("", doctype_refused()));
    }
    if doc.descendants().any(|n| n.is_pi()) {
        return Err(fault(
            "",
            "processing instructions (other than the XML declaration) are not accepted",
        ));
    }
    Reader { text }.resource(root, "", 0)
}

fn doctype_refused() -> &'static str {
    "a DOCTYPE is not accepted in FHIR XML: no DTDs or entity declarations"
}

fn parse_document(text: &str) -> Result<Document<'_>, String> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => doctype_refused().to_string(),
        roxmltree::Error::NodesLimitReached => "the document has too many nodes".to_string(),
        e => {
            let pos = e.pos();
            format!(
                "{} at line {}, column {}",
                super::narrative::xml_fault(&e),
                pos.row,
                pos.col
            )
        }
    })
}

/// `<?xml version="1.0" encoding="…"?>`: only UTF-8, which is what the body was read as.
fn check_declaration(text: &str) -> Result<(), XmlError> {
    let Some(rest) = text.strip_prefix("<?xml") else {
        return Ok(());
    };
    let Some(end) = rest.find("?>") else {
        return Ok(()); // roxmltree reports the malformed declaration
    };
    let decl = &rest[..end];
    if let Some(at) = decl.find("encoding") {
        let value = decl[at + "encoding".len()..]
            .trim_start()
            .trim_start_matches('=')
            .trim_start();
        let value = value.trim_start_matches(['"', '\'']);
        let enc: String = value
            .chars()
            .take_while(|c| !matches!(c, '"' | '\''))
            .collect();
        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
            return Err(fault(
                "",
                format!(
                    "encoding '{}' is not accepted: send FHIR XML as UTF-8",
                    printable(&enc)
                ),
            ));
        }
    }
    Ok(())
}

struct Reader<'t> {
    text: &'t str,
}

/// The attribute names FHIR XML gives elements of type `t`: `id` (every element but a resource),
/// `url` (Extension).
fn is_attribute_element(t: &TypeDef, is_resource: bool, name: &str) -> bool {
    (name == "id" && !is_resource) || (name == "url" && t.name() == "Extension")
}

/// Only whitespace and comments may stand between FHIR elements.
fn check_no_text(node: Node<'_, '_>, path: &str) -> Result<(), XmlError> {
    if node.is_text()
        && node.text().is_some_and(|t| {
            t.bytes()
                .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        })
    {
        return Err(fault(
            path,
            "text is not allowed here: FHIR XML carries values in 'value' attributes",
        ));
    }
    Ok(())
}

impl<'t> Reader<'t> {
    /// A resource element (the root, or the one child of `contained`, `resource`, `outcome`…).
    fn resource(&self, node: Node<'_, '_>, path: &str, depth: usize) -> Result<Value, XmlError> {
        let name = node.tag_name().name();
        let shown = if path.is_empty() {
            printable(name)
        } else {
            path.to_string()
        };
        if node.tag_name().namespace() != Some(FHIR_NS) {
            return Err(fault(
                &shown,
                format!(
                    "<{}> is not in the FHIR namespace (xmlns=\"{FHIR_NS}\")",
                    printable(name)
                ),
            ));
        }
        let t = schema::is_resource_type(name)
            .then(|| schema::type_def(name))
            .flatten()
            .ok_or_else(|| {
                fault(
                    &shown,
                    format!("'{}' is not an R4 resource type", printable(name)),
                )
            })?;
        let path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.ofType({name})")
        };
        let mut map = Map::new();
        map.insert("resourceType".into(), Value::String(name.to_string()));
        self.members(node, t, true, &path, depth, &mut map)?;
        Ok(Value::Object(map))
    }

    /// The attributes and child elements of a resource, datatype or backbone element, into `map`.
    fn members(
        &self,
        node: Node<'_, '_>,
        t: &'static TypeDef,
        is_resource: bool,
        path: &str,
        depth: usize,
        map: &mut Map<String, Value>,
    ) -> Result<(), XmlError> {
        if depth > MAX_DEPTH {
            return Err(fault(
                path,
                format!("elements are nested more than {MAX_DEPTH} deep"),
            ));
        }
        for a in node.attributes() {
            match a.namespace() {
                // xsi:schemaLocation and the like say nothing about the resource.
                Some(XSI_NS) if is_resource => continue,
                None if is_attribute_element(t, is_resource, a.name()) => {
                    map.insert(a.name().to_string(), Value::String(a.value().to_string()));
                }
                _ => {
                    return Err(fault(
                        path,
                        format!("attribute '{}' is not allowed here", printable(a.name())),
                    ))
                }
            }
        }
        let mut kids = Vec::new();
        for child in node.children() {
            check_no_text(child, path)?;
            if child.is_element() {
                kids.push(child);
            }
        }
        let mut last: Option<usize> = None;
        let mut k = 0;
        while k < kids.len() {
            let child = kids[k];
            let name = child.tag_name().name();
            let index = t
                .position(name)
                .filter(|_| !is_attribute_element(t, is_resource, name))
                .ok_or_else(|| {
                    fault(
                        &child_path(path, name, None),
                        format!("unknown element '{}'", printable(name)),
                    )
                })?;
            let Some(e) = t.elements().get(index) else {
                return Err(fault(path, "the R4 tables are incomplete"));
            };
            let expected_ns = match e.kind {
                Kind::Primitive(Primitive::Xhtml) => XHTML_NS,
                _ => FHIR_NS,
            };
            if child.tag_name().namespace() != Some(expected_ns) {
                return Err(fault(
                    &child_path(path, name, None),
                    format!(
                        "<{}> must be in the namespace {expected_ns}",
                        printable(name)
                    ),
                ));
            }
            if let Some(prev) = last.and_then(|l| t.elements().get(l)) {
                if Some(index) < last {
                    return Err(fault(
                        &child_path(path, name, None),
                        format!(
                            "element '{}' is out of order: R4 puts it before '{}'",
                            printable(name),
                            prev.name()
                        ),
                    ));
                }
                if Some(index) == last {
                    return Err(fault(
                        &child_path(path, name, None),
                        format!(
                            "element '{}' must be given in one run, not split by other elements",
                            printable(name)
                        ),
                    ));
                }
            }
            let start = k;
            while k < kids.len()
                && kids[k].tag_name().name() == name
                && kids[k].tag_name().namespace() == child.tag_name().namespace()
            {
                k += 1;
            }
            let group = &kids[start..k];
            if group.len() > 1 && !e.is_array {
                return Err(fault(
                    &child_path(path, name, None),
                    format!("element '{}' does not repeat in R4", printable(name)),
                ));
            }
            last = Some(index);
            self.element(e, group, path, depth, map)?;
        }
        Ok(())
    }

    /// One element of the definition, given `group.len()` times in a row.
    fn element(
        &self,
        e: &'static Element,
        group: &[Node<'_, '_>],
        path: &str,
        depth: usize,
        map: &mut Map<String, Value>,
    ) -> Result<(), XmlError> {
        let at = |i: usize| child_path(path, e.name(), e.is_array.then_some(i));
        match e.kind {
            Kind::Primitive(Primitive::Xhtml) => {
                let mut divs = Vec::new();
                for (i, node) in group.iter().enumerate() {
                    divs.push(Value::String(self.xhtml(*node, &at(i), depth)?));
                }
                insert(map, e, divs);
            }
            Kind::Primitive(p) => {
                let mut values = Vec::new();
                let mut shadows = Vec::new();
                for (i, node) in group.iter().enumerate() {
                    let (value, shadow) = self.primitive(*node, p, &at(i), depth)?;
                    values.push(value.unwrap_or(Value::Null));
                    shadows.push(shadow.unwrap_or(Value::Null));
                }
                if values.iter().any(|v| !v.is_null()) {
                    insert(map, e, values);
                }
                if shadows.iter().any(|v| !v.is_null()) {
                    let shadow = if e.is_array {
                        Value::Array(shadows)
                    } else {
                        shadows.pop().unwrap_or(Value::Null)
                    };
                    map.insert(e.shadow_name().to_string(), shadow);
                }
            }
            Kind::Complex(index) => {
                let t = schema::type_at(index)
                    .ok_or_else(|| fault(path, "the R4 tables are incomplete"))?;
                let mut objects = Vec::new();
                for (i, node) in group.iter().enumerate() {
                    let mut m = Map::new();
                    self.members(*node, t, false, &at(i), depth + 1, &mut m)?;
                    objects.push(Value::Object(m));
                }
                insert(map, e, objects);
            }
            Kind::Resource => {
                let mut resources = Vec::new();
                for (i, node) in group.iter().enumerate() {
                    let path = at(i);
                    if let Some(a) = node.attributes().next() {
                        return Err(fault(
                            &path,
                            format!("attribute '{}' is not allowed here", printable(a.name())),
                        ));
                    }
                    let mut inner = None;
                    for child in node.children() {
                        check_no_text(child, &path)?;
                        if child.is_element() {
                            if inner.is_some() {
                                return Err(fault(&path, "holds exactly one resource"));
                            }
                            inner = Some(child);
                        }
                    }
                    let inner = inner.ok_or_else(|| fault(&path, "holds exactly one resource"))?;
                    resources.push(self.resource(inner, &path, depth + 1)?);
                }
                insert(map, e, resources);
            }
        }
        Ok(())
    }

    /// A primitive element: its `value` attribute (as JSON), and its id and extensions (`_name`).
    fn primitive(
        &self,
        node: Node<'_, '_>,
        p: Primitive,
        path: &str,
        depth: usize,
    ) -> Result<(Option<Value>, Option<Value>), XmlError> {
        let mut value = None;
        let mut shadow = Map::new();
        for a in node.attributes() {
            match (a.namespace(), a.name()) {
                (None, "value") => value = Some(json_value(p, a.value())),
                (None, "id") => {
                    shadow.insert("id".into(), Value::String(a.value().to_string()));
                }
                _ => {
                    return Err(fault(
                        path,
                        format!("attribute '{}' is not allowed here", printable(a.name())),
                    ))
                }
            }
        }
        let extension = schema::type_def("Extension")
            .ok_or_else(|| fault(path, "the R4 tables are incomplete"))?;
        let mut extensions = Vec::new();
        for child in node.children() {
            check_no_text(child, path)?;
            if !child.is_element() {
                continue;
            }
            let name = child.tag_name().name();
            if name != "extension" || child.tag_name().namespace() != Some(FHIR_NS) {
                return Err(fault(
                    &child_path(path, name, None),
                    format!(
                        "unknown element '{}': a primitive holds only extensions",
                        printable(name)
                    ),
                ));
            }
            let mut m = Map::new();
            let at = child_path(path, "extension", Some(extensions.len()));
            self.members(child, extension, false, &at, depth + 1, &mut m)?;
            extensions.push(Value::Object(m));
        }
        if !extensions.is_empty() {
            shadow.insert("extension".into(), Value::Array(extensions));
        }
        if value.is_none() && shadow.is_empty() {
            return Err(fault(
                path,
                "a primitive element needs a value attribute, an id or an extension",
            ));
        }
        let shadow = (!shadow.is_empty()).then_some(Value::Object(shadow));
        Ok((value, shadow))
    }

    /// A narrative's `div`: its own text where that stands alone, else written anew.
    fn xhtml(&self, node: Node<'_, '_>, path: &str, depth: usize) -> Result<String, XmlError> {
        if node.tag_name().name() != "div" {
            return Err(fault(
                path,
                format!("the narrative must be a <div xmlns=\"{XHTML_NS}\">"),
            ));
        }
        if node.attributes().any(|a| a.name() == "value") {
            return Err(fault(path, "a narrative is XHTML, not a value attribute"));
        }
        let raw = self.text.get(node.range()).unwrap_or_default();
        if is_standalone_div(raw) {
            return Ok(raw.to_string());
        }
        let mut out = String::new();
        write_node(node, None, depth, &mut out).map_err(|m| fault(path, m))?;
        Ok(out)
    }
}

/// Put an element's values into its JSON property: an array where it repeats.
fn insert(map: &mut Map<String, Value>, e: &Element, mut values: Vec<Value>) {
    let value = if e.is_array {
        Value::Array(values)
    } else {
        values.pop().unwrap_or(Value::Null)
    };
    map.insert(e.name().to_string(), value);
}

/// A `value` attribute as the JSON of its primitive type: numbers and booleans when they are
/// lexically one, else the text (which the validator then refuses for the type).
fn json_value(p: Primitive, text: &str) -> Value {
    match p {
        Primitive::Boolean => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Primitive::Decimal
        | Primitive::Integer
        | Primitive::PositiveInt
        | Primitive::UnsignedInt
            if is_json_number(text) =>
        {
            serde_json::from_str::<Number>(text)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string()))
        }
        _ => Value::String(text.to_string()),
    }
}

/// JSON's number grammar, which is also FHIR's decimal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A div whose text is a document by itself: it starts as `<div`, declares the XHTML namespace and
/// any prefix it uses. Then that text is the narrative, exactly.
fn is_standalone_div(raw: &str) -> bool {
    raw.starts_with("<div")
        && parse_document(raw).is_ok_and(|d| {
            let root = d.root_element();
            root.tag_name().name() == "div" && root.tag_name().namespace() == Some(XHTML_NS)
        })
}

/// Write an XHTML subtree with every namespace it uses declared where it is used. `default` is the
/// default namespace in force around `node`.
fn write_node(
    node: Node<'_, '_>,
    default: Option<&str>,
    depth: usize,
    out: &mut String,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("elements are nested more than {MAX_DEPTH} deep"));
    }
    match node.node_type() {
        NodeType::Element => {
            let name = node.tag_name().name();
            let ns = node.tag_name().namespace();
            out.push('<');
            out.push_str(name);
            if ns != default {
                out.push_str(" xmlns=\"");
                escape(ns.unwrap_or(""), out)?;
                out.push('"');
            }
            for (i, a) in node.attributes().enumerate() {
                out.push(' ');
                match a.namespace() {
                    None => {}
                    Some(XML_NS) => out.push_str("xml:"),
                    Some(uri) => {
                        let _ = write!(out, "xmlns:a{i}=\"");
                        escape(uri, out)?;
                        let _ = write!(out, "\" a{i}:");
                    }
                }
                out.push_str(a.name());
                out.push_str("=\"");
                escape(a.value(), out)?;
                out.push('"');
            }
            if node.has_children() {
                out.push('>');
                for child in node.children() {
                    write_node(child, ns, depth + 1, out)?;
                }
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            } else {
                out.push_str("/>");
            }
        }
        NodeType::Text => escape(node.text().unwrap_or_default(), out)?,
        NodeType::Comment => {
            out.push_str("<!--");
            out.push_str(node.text().unwrap_or_default());
            out.push_str("-->");
        }
        NodeType::Root | NodeType::PI => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON → XML

/// Write a FHIR JSON resource as FHIR XML (UTF-8, with the XML declaration).
pub fn from_json(resource: &Value) -> Result<String, XmlError> {
    let map = resource
        .as_object()
        .ok_or_else(|| fault("", "a resource is a JSON object"))?;
    let mut out = String::with_capacity(4096);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    write_resource(map, "", true, &mut out)?;
    Ok(out)
}

fn write_resource(
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut String,
) -> Result<(), XmlError> {
    let rt = map
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let t = schema::is_resource_type(rt)
        .then(|| schema::type_def(rt))
        .flatten()
        .ok_or_else(|| fault(path, "not an R4 resource (resourceType)"))?;
    let path = if path.is_empty() {
        rt.to_string()
    } else {
        format!("{path}.ofType({rt})")
    };
    out.push('<');
    out.push_str(rt);
    if root {
        let _ = write!(out, " xmlns=\"{FHIR_NS}\"");
    }
    out.push('>');
    write_children(map, t, true, &path, out)?;
    let _ = write!(out, "</{rt}>");
    Ok(())
}

/// A datatype or backbone element: `<name id=… url=…>children</name>`.
fn write_complex(
    name: &str,
    value: &Value,
    t: &'static TypeDef,
    path: &str,
    out: &mut String,
) -> Result<(), XmlError> {
    let map = value
        .as_object()
        .ok_or_else(|| fault(path, "expected an object"))?;
    out.push('<');
    out.push_str(name);
    for attr in ["id", "url"] {
        if !is_attribute_element(t, false, attr) {
            continue;
        }
        if let Some(v) = map.get(attr) {
            let s = v
                .as_str()
                .ok_or_else(|| fault(path, format!("'{attr}' is not a string")))?;
            let _ = write!(out, " {attr}=\"");
            escape(s, out).map_err(|m| fault(path, m))?;
            out.push('"');
        }
    }
    let open = out.len();
    out.push('>');
    let before = out.len();
    write_children(map, t, false, path, out)?;
    if out.len() == before {
        out.truncate(open);
        out.push_str("/>");
    } else {
        let _ = write!(out, "</{name}>");
    }
    Ok(())
}

/// The child elements of an object, in the definition's order.
fn write_children(
    map: &Map<String, Value>,
    t: &'static TypeDef,
    is_resource: bool,
    path: &str,
    out: &mut String,
) -> Result<(), XmlError> {
    let mut order = Vec::with_capacity(map.len());
    for key in map.keys() {
        if is_resource && key == "resourceType" {
            continue;
        }
        let (name, shadow) = match key.strip_prefix('_') {
            Some(name) => (name, true),
            None => (key.as_str(), false),
        };
        if is_attribute_element(t, is_resource, name) {
            if shadow {
                return Err(fault(
                    &child_path(path, key, None),
                    "an extension on an XML attribute ('id', 'url') has no XML form",
                ));
            }
            continue;
        }
        let index = t
            .position(name)
            .filter(|&i| !shadow || t.elements().get(i).is_some_and(Element::is_primitive))
            .ok_or_else(|| {
                fault(
                    &child_path(path, key, None),
                    format!("unknown element '{}'", printable(key)),
                )
            })?;
        // `name` and `_name` are one element.
        if !shadow || !map.contains_key(name) {
            order.push(index);
        }
    }
    order.sort_unstable();
    for index in order {
        let Some(e) = t.elements().get(index) else {
            continue;
        };
        write_element(e, map.get(e.name()), map.get(e.shadow_name()), path, out)?;
    }
    Ok(())
}

fn write_element<'v>(
    e: &'static Element,
    value: Option<&'v Value>,
    shadow: Option<&'v Value>,
    path: &str,
    out: &mut String,
) -> Result<(), XmlError> {
    let name = e.name();
    // One element's occurrences: an array where it repeats, else itself.
    let items = |v: Option<&'v Value>| -> Result<Vec<&'v Value>, XmlError> {
        match (v, e.is_array) {
            (None, _) => Ok(Vec::new()),
            (Some(Value::Array(a)), true) => Ok(a.iter().collect()),
            (Some(v), false) if !v.is_array() => Ok(vec![v]),
            _ => Err(fault(
                &child_path(path, name, None),
                "array where the definition has none, or none where it repeats",
            )),
        }
    };
    let values = items(value)?;
    let at = |i: usize| child_path(path, name, e.is_array.then_some(i));
    match e.kind {
        Kind::Primitive(Primitive::Xhtml) => {
            if shadow.is_some() {
                return Err(fault(&at(0), "a narrative has no id or extensions"));
            }
            for (i, v) in values.iter().enumerate() {
                let div = v
                    .as_str()
                    .filter(|d| is_standalone_div(d))
                    .ok_or_else(|| fault(&at(i), "the narrative is not a well-formed XHTML div"))?;
                out.push_str(div);
            }
        }
        Kind::Primitive(_) => {
            let shadows = items(shadow)?;
            if !values.is_empty() && !shadows.is_empty() && values.len() != shadows.len() {
                return Err(fault(
                    &at(0),
                    format!("'{name}' and '_{name}' differ in length"),
                ));
            }
            for i in 0..values.len().max(shadows.len()) {
                write_primitive(
                    name,
                    values.get(i).copied(),
                    shadows.get(i).copied(),
                    &at(i),
                    out,
                )?;
            }
        }
        Kind::Complex(index) => {
            let t = schema::type_at(index)
                .ok_or_else(|| fault(path, "the R4 tables are incomplete"))?;
            for (i, v) in values.iter().enumerate() {
                write_complex(name, v, t, &at(i), out)?;
            }
        }
        Kind::Resource => {
            for (i, v) in values.iter().enumerate() {
                let map = v
                    .as_object()
                    .ok_or_else(|| fault(&at(i), "expected a resource"))?;
                let _ = write!(out, "<{name}>");
                write_resource(map, &at(i), false, out)?;
                let _ = write!(out, "</{name}>");
            }
        }
    }
    Ok(())
}

/// `<name id="…" value="…">extensions</name>`.
fn write_primitive(
    name: &str,
    value: Option<&Value>,
    shadow: Option<&Value>,
    path: &str,
    out: &mut String,
) -> Result<(), XmlError> {
    let value = value.filter(|v| !v.is_null());
    let shadow = match shadow {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(fault(path, "'_' properties are objects")),
    };
    if value.is_none() && shadow.is_none() {
        return Err(fault(path, "neither a value nor an id or extension"));
    }
    out.push('<');
    out.push_str(name);
    let mut extensions: &[Value] = &[];
    if let Some(shadow) = shadow {
        for (k, v) in shadow {
            match (k.as_str(), v) {
                ("id", Value::String(id)) => {
                    out.push_str(" id=\"");
                    escape(id, out).map_err(|m| fault(path, m))?;
                    out.push('"');
                }
                ("extension", Value::Array(a)) => extensions = a,
                _ => {
                    return Err(fault(
                        path,
                        format!("'{}' has no XML form on a primitive", printable(k)),
                    ))
                }
            }
        }
    }
    if let Some(v) = value {
        out.push_str(" value=\"");
        match v {
            Value::String(s) => escape(s, out).map_err(|m| fault(path, m))?,
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            _ => return Err(fault(path, "a primitive is a string, number or boolean")),
        }
        out.push('"');
    }
    if extensions.is_empty() {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    let extension =
        schema::type_def("Extension").ok_or_else(|| fault(path, "the R4 tables are incomplete"))?;
    for (i, ext) in extensions.iter().enumerate() {
        write_complex(
            "extension",
            ext,
            extension,
            &child_path(path, "extension", Some(i)),
            out,
        )?;
    }
    let _ = write!(out, "</{name}>");
    Ok(())
}

/// Text as an attribute value (or character data): markup characters and the whitespace that
/// attribute normalisation would turn into spaces become references; a character XML 1.0 cannot
/// carry at all is an error.
fn escape(s: &str, out: &mut String) -> Result<(), String> {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}' => {
                out.push(c)
            }
            _ => {
                return Err(format!(
                    "the character U+{:04X} cannot be written in XML",
                    u32::from(c)
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
