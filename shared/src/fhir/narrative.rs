//! The R4 narrative rules (`Narrative.div`, the `xhtml` type): well-formed XHTML rooted at
//! `<div xmlns="http://www.w3.org/1999/xhtml">`, only the formatting elements and attributes txt-1
//! allows, URLs and inline styles that cannot run or smuggle script, and some content (txt-2).
//!
//! Every EHR that shows a resource renders this text as HTML, so what is stored here is markup a
//! browser will run. The check is an allow-list (elements, attributes, URL schemes, CSS functions):
//! anything not named is refused, and a narrative is refused whole rather than cleaned, so what is
//! read back is byte for byte what was sent.
//!
//! Parser: `roxmltree`. Compared with `quick-xml` (a streaming reader that leaves well-formedness
//! checks such as matching end tags, duplicate attributes and namespace resolution largely to its
//! caller) and `xml-rs` (slower, and it expands internal DTD entities), roxmltree checks the whole
//! of XML 1.0 well-formedness and namespaces itself, refuses a DTD by default (so no entity
//! expansion, internal or external), decodes character references before we look at a value (so
//! `java&#x09;script:` is judged as the browser will see it), and has no unsafe code of its own.
//! A narrative is small enough (bounded by the request body limit) to hold as a tree.
//!
//! The allow-list is R4's txt-1 (HTML 4.0 chapters 7-11 less forms and frames, `<a>`, images and
//! `style` attributes) as the FHIR reference validator spells it out; every official R4 example
//! passes it. Decisions of our own, each stricter than the letter of txt-1 where browsers differ
//! from XML parsers:
//! - `data:` URLs only as an image source (`img/@src`, CSS `url()`), and only raster types
//!   (`image/png`, `gif`, `jpeg`, `webp`, `bmp`): the examples embed their icons so, and a raster
//!   image cannot carry script. `image/svg+xml` and every other `data:` use is refused.
//! - Links may be relative or use `http`, `https`, `ftp`, `mailto`, `tel` or `urn`; images `http`,
//!   `https`, relative (`#contained`) or `data:` as above. Anything before a `:` that is not one of
//!   those (including something that is not a valid scheme at all) is refused.
//! - CDATA sections and comments holding `<` or `>` are refused: an HTML parser ends both at a
//!   different place than XML does (`<![CDATA[ ><img onerror=…> ]]>`, `<!--><script>…-->`), so the
//!   markup a browser sees would not be the markup checked here.
//! - Inline CSS may call only `url()` (checked as an image URL), `rgb[a]()`, `hsl[a]()` and
//!   `calc()`; backslash escapes, comments, at-rules and the script-bearing properties of old
//!   browsers (`behavior`, `-moz-binding`) are refused.

use super::printable;
use roxmltree::{Document, Node, NodeType, ParsingOptions};

/// The XHTML namespace every element of a narrative is in.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Problems reported for one narrative: enough to fix it, short enough to read.
const MAX_PROBLEMS: usize = 10;
/// Nodes in one narrative. The largest official example (a 1 MB+ definition table) has about
/// 250,000; this bounds the tree a hostile body can make us build.
const MAX_NODES: u32 = 2_000_000;

/// Elements txt-1 allows (HTML 4.0 chapters 7-11 less forms, frames, objects and scripts).
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// Attributes allowed on every element (HTML 4.0 core, i18n and table-cell attributes; no event
/// handlers).
const GLOBAL_ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "axis",
    "char",
    "charoff",
    "class",
    "colspan",
    "dir",
    "headers",
    "id",
    "lang",
    "rowspan",
    "scope",
    "span",
    "style",
    "tabindex",
    "title",
    "valign",
    "width",
];

/// Attributes allowed on one element only, as `element.attribute`.
const ELEMENT_ATTRIBUTES: &[&str] = &[
    "a.charset",
    "a.coords",
    "a.href",
    "a.hreflang",
    "a.name",
    "a.rel",
    "a.rev",
    "a.shape",
    "a.type",
    "area.alt",
    "area.coords",
    "area.href",
    "area.nohref",
    "area.shape",
    "blockquote.cite",
    "img.alt",
    "img.border",
    "img.height",
    "img.ismap",
    "img.longdesc",
    "img.src",
    "img.usemap",
    "img.width",
    "map.name",
    "q.cite",
    "table.border",
    "table.cellpadding",
    "table.cellspacing",
    "table.frame",
    "table.rules",
    "table.summary",
    "table.width",
];

/// Schemes a link (`href`, `cite`, `longdesc`) may use.
const LINK_SCHEMES: &[&str] = &["ftp", "http", "https", "mailto", "tel", "urn"];
/// Schemes an image source may use besides `data:` (checked on its own).
const IMAGE_SCHEMES: &[&str] = &["http", "https"];
/// `data:` media types an image may carry: raster formats only, never SVG (which may hold script).
const DATA_IMAGE_TYPES: &[&str] = &[
    "image/bmp",
    "image/gif",
    "image/jpeg",
    "image/png",
    "image/webp",
];
/// CSS functions an inline style may call; `url()` is checked as an image source.
/// `var()` reads a custom property (the IG Publisher's narratives use `var(--ig-left,left)`): every
/// function call in the whole attribute, custom property values and fallbacks included, is checked,
/// so a `var()` can only bring in what the attribute could say directly.
const CSS_FUNCTIONS: &[&str] = &["calc", "hsl", "hsla", "rgb", "rgba", "url", "var"];

/// Check a narrative; `Err` lists the problems found (at most ten), each a short message that names
/// the element or attribute at fault but never repeats the content.
pub fn check(xhtml: &str) -> Result<(), Vec<String>> {
    let mut problems = Problems(Vec::new());
    check_into(xhtml, &mut problems);
    if problems.0.is_empty() {
        Ok(())
    } else {
        Err(problems.0)
    }
}

struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, message: String) {
        if self.0.len() < MAX_PROBLEMS && !self.0.contains(&message) {
            self.0.push(message);
        }
    }

    fn full(&self) -> bool {
        self.0.len() >= MAX_PROBLEMS
    }
}

fn check_into(xhtml: &str, problems: &mut Problems) {
    // The div is the document: no XML declaration, DOCTYPE, comment or space before it.
    if !xhtml.starts_with("<div") {
        problems
            .push("narrative must start with <div xmlns=\"http://www.w3.org/1999/xhtml\">".into());
        return;
    }
    // A CDATA section is plain text to XML but a bogus comment ending at the first `>` to HTML.
    // `<!` cannot occur in attribute values (no raw `<`) and comments are refused below when they
    // hold `<`, so any `<![` here is a CDATA section (or a stray DOCTYPE-like declaration).
    if xhtml.contains("<![") {
        problems.push(
            "'<![' (a CDATA section or conditional comment) is not allowed in a narrative".into(),
        );
        return;
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = match Document::parse_with_options(xhtml, options) {
        Ok(doc) => doc,
        Err(e) => {
            problems.push(parse_problem(&e));
            return;
        }
    };
    let root = doc.root_element();
    if root.tag_name().name() != "div" || root.tag_name().namespace() != Some(XHTML_NS) {
        problems.push(
            "the narrative's root must be <div> in the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")"
                .into(),
        );
    }
    let mut has_content = false;
    // `descendants` walks the tree without recursion, so nesting depth cannot exhaust the stack.
    for node in doc.root().descendants() {
        if problems.full() {
            return;
        }
        match node.node_type() {
            NodeType::Root => {}
            NodeType::Element => {
                check_element(node, problems);
                if node.tag_name().name() == "img" && node.has_attribute("src") {
                    has_content = true;
                }
            }
            NodeType::Text => {
                // txt-2 reads XPath's normalize-space: XML whitespace only.
                let text = node.text().unwrap_or_default();
                if text
                    .bytes()
                    .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    has_content = true;
                }
            }
            NodeType::Comment => {
                let text = node.text().unwrap_or_default();
                if text.contains(['<', '>']) {
                    problems.push("comments in a narrative must not contain '<' or '>'".into());
                }
            }
            NodeType::PI => {
                problems.push("processing instructions are not allowed in a narrative".into());
            }
        }
    }
    if !has_content {
        problems.push("the narrative must have some non-whitespace content (txt-2)".into());
    }
}

/// roxmltree's own messages quote element and entity names from the input; ours keep to the kind
/// of fault and where it is.
fn parse_problem(e: &roxmltree::Error) -> String {
    use roxmltree::Error as E;
    let pos = e.pos();
    let what = match e {
        E::DtdDetected => return "a DOCTYPE is not allowed in a narrative".into(),
        E::NodesLimitReached => return "the narrative has too many nodes".into(),
        e => xml_fault(e),
    };
    format!(
        "narrative is not well-formed XHTML: {what} at line {}, column {}",
        pos.row, pos.col
    )
}

/// The kind of an XML well-formedness fault, without the names roxmltree quotes from the input
/// (shared with `xml.rs`).
pub(super) fn xml_fault(e: &roxmltree::Error) -> &'static str {
    use roxmltree::Error as E;
    match e {
        E::UnknownEntityReference(..) | E::EntityReferenceLoop(..) => {
            "an entity other than &lt; &gt; &amp; &quot; &apos; or a character reference"
        }
        E::UnexpectedCloseTag(..) => "an end tag that does not match its start tag",
        E::UnclosedRootNode => "an element that is never closed",
        E::DuplicatedAttribute(..) => "a repeated attribute",
        E::UnknownNamespace(..) => "an undeclared namespace prefix",
        E::NonXmlChar(..) => "a character XML does not allow",
        E::InvalidAttributeValue(..) => "a raw '<' in an attribute value",
        E::MalformedEntityReference(..) => "a '&' that does not start an entity",
        E::DtdDetected => "a DOCTYPE",
        _ => "malformed markup",
    }
}

fn check_element(node: Node<'_, '_>, problems: &mut Problems) {
    let name = node.tag_name().name();
    if node.tag_name().namespace() != Some(XHTML_NS) {
        problems.push(format!(
            "element <{}> is not in the XHTML namespace",
            printable(name)
        ));
        return;
    }
    if !ELEMENTS.contains(&name) {
        problems.push(format!(
            "element <{}> is not allowed in a narrative (txt-1)",
            printable(name)
        ));
        return;
    }
    for attr in node.attributes() {
        let attr_name = attr.name();
        let allowed = match attr.namespace() {
            None => {
                GLOBAL_ATTRIBUTES.contains(&attr_name)
                    || ELEMENT_ATTRIBUTES
                        .iter()
                        .any(|ea| ea.split_once('.') == Some((name, attr_name)))
            }
            Some(XML_NS) => attr_name == "lang" || (attr_name == "space" && name == "pre"),
            Some(_) => false,
        };
        if !allowed {
            problems.push(format!(
                "attribute '{}' is not allowed on <{}> in a narrative (txt-1)",
                printable(attr_name),
                printable(name)
            ));
            continue;
        }
        let value = attr.value();
        let fault = match attr_name {
            "href" | "cite" | "longdesc" => url_fault(value, LINK_SCHEMES, false),
            "src" => url_fault(value, IMAGE_SCHEMES, true),
            "usemap" => (!value.starts_with('#')).then_some("must be a local '#name' reference"),
            "style" => css_fault(value),
            _ => None,
        };
        if let Some(fault) = fault {
            problems.push(format!(
                "attribute '{}' on <{}>: {fault}",
                printable(attr_name),
                printable(name)
            ));
        }
    }
}

/// Judge a URL as a browser reads it (WHATWG URL parsing): C0 controls and spaces at either end
/// and tabs and line breaks anywhere are dropped, and the scheme is case-insensitive. So
/// ` JaVa&#x09;ScRiPt:` is `javascript:`. What remains is either relative (no `:` before the first
/// `/`, `?` or `#`) or starts with a scheme that must be on the list.
fn url_fault(value: &str, schemes: &[&str], image: bool) -> Option<&'static str> {
    let cleaned: String = value
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let Some(end) = cleaned.find([':', '/', '?', '#']) else {
        return None; // relative: a path
    };
    if !cleaned[end..].starts_with(':') {
        return None; // relative: `path/…`, `?query`, `#fragment`, `//host/…`
    }
    let scheme = &cleaned[..end];
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Some("a URL whose scheme is not valid");
    }
    let scheme = scheme.to_ascii_lowercase();
    if image && scheme == "data" {
        return data_image_fault(&cleaned[end + 1..]);
    }
    if schemes.contains(&scheme.as_str()) {
        None
    } else if scheme == "data" {
        Some("data: URLs are allowed only as image sources")
    } else {
        Some("a URL scheme that is not allowed (only http, https, ftp, mailto, tel, urn or relative)")
    }
}

/// `data:[<media type>][;base64],<data>`: the media type (spaces around it are ignored, as the
/// browser does; the official examples write `data: image/png`) must be a raster image type.
fn data_image_fault(rest: &str) -> Option<&'static str> {
    let Some((header, _)) = rest.split_once(',') else {
        return Some("a data: URL without data");
    };
    let media = header.split(';').next().unwrap_or_default().trim();
    if DATA_IMAGE_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(media))
    {
        None
    } else {
        Some("a data: image must be PNG, GIF, JPEG, WebP or BMP")
    }
}

/// An inline style may lay out and colour; it may not load anything but an image, nor use the
/// escapes, comments and at-rules that hide what a declaration says.
fn css_fault(style: &str) -> Option<&'static str> {
    if style.contains('\\') {
        return Some("CSS escapes are not allowed");
    }
    if style.contains("/*") {
        return Some("CSS comments are not allowed");
    }
    if style.contains('@') {
        return Some("CSS at-rules are not allowed");
    }
    let lower = style.to_ascii_lowercase();
    if lower.contains("behavior") || lower.contains("binding") || lower.contains("expression") {
        return Some("script-bearing CSS (behavior, -moz-binding, expression) is not allowed");
    }
    let mut rest = lower.as_str();
    while let Some(open) = rest.find('(') {
        let before = &rest[..open];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map_or(0, |i| i + 1);
        let function = &before[start..];
        if !CSS_FUNCTIONS.contains(&function) {
            return Some(
                "a CSS function that is not allowed (only url, rgb, rgba, hsl, hsla, calc, var)",
            );
        }
        let after = &rest[open + 1..];
        let close = after.find(')').unwrap_or(after.len());
        if function == "url" {
            let arg = after[..close]
                .trim()
                .trim_matches(|c| c == '"' || c == '\'');
            if arg.is_empty() {
                return Some("an empty CSS url()");
            }
            if let Some(fault) = url_fault(arg, IMAGE_SCHEMES, true) {
                return Some(fault);
            }
            rest = &after[close..];
        } else {
            // Other functions' arguments are scanned too: a call nested in calc() or var() is
            // checked like any other.
            rest = after;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn div(inner: &str) -> String {
        format!("<div xmlns=\"{XHTML_NS}\">{inner}</div>")
    }

    fn refused(xhtml: &str) -> Vec<String> {
        match check(xhtml) {
            Ok(()) => panic!("accepted: {xhtml}"),
            Err(problems) => problems,
        }
    }

    /// The first problem mentions `needle`.
    fn refused_for(xhtml: &str, needle: &str) {
        let problems = refused(xhtml);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{xhtml}: {problems:?} does not mention {needle:?}"
        );
    }

    #[test]
    fn scripts_and_active_elements_are_refused() {
        refused_for(&div("<script>alert(1)</script>"), "<script>");
        refused_for(&div("x<iframe src=\"http://e.org\"></iframe>"), "<iframe>");
        refused_for(&div("x<base href=\"http://e.org/\"/>"), "<base>");
        refused_for(&div("x<object data=\"x.swf\"></object>"), "<object>");
        refused_for(&div("x<embed src=\"x.swf\"/>"), "<embed>");
        refused_for(&div("x<applet code=\"x\"></applet>"), "<applet>");
        refused_for(
            &div("<form action=\"http://e.org\"><input name=\"p\"/></form>"),
            "<form>",
        );
        refused_for(&div("x<link rel=\"stylesheet\" href=\"x.css\"/>"), "<link>");
        refused_for(
            &div("x<meta http-equiv=\"refresh\" content=\"0\"/>"),
            "<meta>",
        );
        refused_for(&div("<style>p{}</style>x"), "<style>");
        refused_for(&div("x<frameset></frameset>"), "<frameset>");
        // In another namespace a name on the list is still not XHTML.
        refused_for(
            &div("<svg xmlns=\"http://www.w3.org/2000/svg\"><a>x</a></svg>"),
            "not in the XHTML namespace",
        );
        refused_for(
            &div("<p xmlns=\"http://evil.example/\">x</p>"),
            "not in the XHTML namespace",
        );
    }

    #[test]
    fn event_and_unknown_attributes_are_refused() {
        refused_for(&div("<p onclick=\"alert(1)\">x</p>"), "'onclick'");
        refused_for(
            &div("<img src=\"x.png\" onerror=\"alert(1)\"/>"),
            "'onerror'",
        );
        refused_for(&div("<p onClick=\"alert(1)\">x</p>"), "'onClick'");
        refused_for(&div("<a href=\"#x\" target=\"_blank\">x</a>"), "'target'");
        // `src` is for images only; a namespaced link is not a link.
        refused_for(&div("<p src=\"x\">x</p>"), "'src'");
        refused_for(
            &div("<a xmlns:xl=\"http://www.w3.org/1999/xlink\" xl:href=\"javascript:alert(1)\">x</a>"),
            "'href'",
        );
        refused_for(
            &format!("<div xmlns=\"{XHTML_NS}\" onload=\"alert(1)\">x</div>"),
            "'onload'",
        );
    }

    #[test]
    fn script_urls_are_refused_however_written() {
        for href in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "  javascript:alert(1)",
            "&#x20;javascript:alert(1)",
            "java&#x09;script:alert(1)",
            "java&#x0A;script:alert(1)",
            "java&#13;script:alert(1)",
            "&#106;avascript:alert(1)",
            "&#x6A;&#x61;&#x76;&#x61;script&#x3A;alert(1)",
            "vbscript:msgbox(1)",
            "data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;",
            "java script:alert(1)",
            "jav&#xE5;script:alert(1)",
        ] {
            let problems = refused(&div(&format!("<a href=\"{href}\">x</a>")));
            assert!(
                problems.iter().all(|p| !p.contains("alert")),
                "a message echoes the input: {problems:?}"
            );
            assert!(
                problems[0].contains("'href' on <a>"),
                "{href}: {problems:?}"
            );
        }
        refused(&div("<a href=\"&#x01;javascript:alert(1)\">x</a>"));
        refused_for(&div("<img src=\"javascript:alert(1)\"/>"), "'src' on <img>");
        refused_for(
            &div("<img src=\"data:image/svg+xml;base64,PHN2Zz4=\"/>"),
            "PNG",
        );
        refused_for(&div("<img src=\"data:text/html,x\"/>"), "PNG");
        refused_for(&div("<img src=\"ftp://e.org/x.png\"/>"), "scheme");
        refused_for(
            &div("<blockquote cite=\"javascript:x\">x</blockquote>"),
            "'cite'",
        );
        refused_for(&div("<area href=\"javascript:x\"/>x"), "'href' on <area>");
        refused_for(
            &div("<img src=\"x.png\" usemap=\"http://e.org/m\"/>"),
            "'usemap'",
        );
    }

    #[test]
    fn styles_may_not_load_or_run_anything() {
        for style in [
            "background:url(javascript:alert(1))",
            "background:url( 'http://e.org/x' ) ; width: expression(alert(1))",
            "width:expression(alert(1))",
            "behavior:url(x.htc)",
            "-moz-binding:url(http://e.org/x.xml#x)",
            "background:url(data:text/html,x)",
            "background:image-set('x.png' 1x)",
            "background:u\\72l(javascript:x)",
            "color:red/**/;x:expr/**/ession(1)",
            "@import 'x.css'",
            "background:var(--a, url(javascript:x))",
            "width:calc(1px + image-set('x.png' 1x))",
        ] {
            refused_for(
                &div(&format!("<p style=\"{style}\">x</p>")),
                "'style' on <p>",
            );
        }
    }

    #[test]
    fn malformed_or_unsafe_xml_is_refused() {
        refused_for("<div>x</div>", "XHTML namespace");
        refused_for(
            "<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>",
            "must start with <div",
        );
        refused_for(
            &format!("<div xmlns=\"{XHTML_NS}\"><p>x</div>"),
            "does not match",
        );
        refused_for(
            &format!("<div xmlns=\"{XHTML_NS}\"><p>x</p>"),
            "never closed",
        );
        refused_for(&div("<br>x"), "not well-formed");
        refused_for(
            &div("<p title=\"a\" title=\"b\">x</p>"),
            "repeated attribute",
        );
        refused_for(&div("x&nbsp;y"), "entity");
        refused_for(&div("x&#0;y"), "not well-formed");
        refused_for(&div("x & y"), "not well-formed");
        refused_for(&div("<x:p>y</x:p>"), "namespace prefix");
        refused_for(
            &format!("<?xml version=\"1.0\"?><div xmlns=\"{XHTML_NS}\">x</div>"),
            "must start with <div",
        );
        refused_for(
            &format!(
                "<!DOCTYPE div [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>\
                 <div xmlns=\"{XHTML_NS}\">&lol2;</div>"
            ),
            "must start with <div",
        );
        // A DOCTYPE after a leading `<div` prefix trick is still a DOCTYPE to the parser.
        refused(&format!("<div xmlns=\"{XHTML_NS}\"><!DOCTYPE x>x</div>"));
        refused_for(&div("<![CDATA[ ><img src=x onerror=alert(1)> ]]>"), "CDATA");
        refused_for(&div("<!--><script>alert(1)</script>-->x"), "comments");
        refused_for(&div("<!--[if IE]>x<![endif]-->x"), "CDATA");
        refused_for(&div("<?php echo 1 ?>x"), "processing instructions");
        refused_for(&format!("{}<p>after</p>", div("x")), "not well-formed");
    }

    #[test]
    fn a_narrative_needs_content() {
        refused_for(&div(""), "txt-2");
        refused_for(&div("\n   \t"), "txt-2");
        refused_for(&div("<p> </p><br/><table><tr><td/></tr></table>"), "txt-2");
        refused_for(&div("<!-- nothing -->"), "txt-2");
        assert_eq!(check(&div("<img src=\"#photo\"/>")), Ok(()));
        assert_eq!(check(&div("&#160;")), Ok(()));
    }

    #[test]
    fn rich_narratives_pass() {
        let rich = div(concat!(
            "<h2 class=\"title\">Summary</h2>",
            "<p style=\"color: rgb(0, 0, 0); background-color: #F7F7F7; width: calc(100% - 2px)\">",
            "Peter <b>James</b> <span class=\"family\" title=\"t\" lang=\"en\" xml:lang=\"en\">Chalmers</span></p>",
            "<table border=\"0\" cellpadding=\"1\" class=\"grid\"><thead><tr><th scope=\"col\">Code</th></tr></thead>",
            "<tbody><tr><td colspan=\"2\" style=\"vertical-align: top\">&lt;tag&gt; &amp; &#x2014; &quot;</td></tr></tbody></table>",
            "<img src=\"http://example.org/logo.png\" alt=\"logo\" width=\"10\"/>",
            "<img src=\"#binary1\" alt=\"contained\"/>",
            "<img src=\"data: image/png;base64,iVBORw0KGgo=\" alt=\".\" style=\"background-color: inherit\"/>",
            "<p style=\"background-image: url(data: image/png;base64,iVBORw0KGgo=)\">x</p>",
            "<a href=\"http://hl7.org/fhir\">spec</a> <a href=\"https://example.org/a?b=c#d\">s</a>",
            "<a href=\"Patient/123\">rel</a> <a href=\"#section\">frag</a> <a name=\"anchor\">n</a>",
            "<a href=\"mailto:a@example.org\">m</a> <a href=\"tel:+1-555\">t</a> <a href=\"//example.org/x\">p</a>",
            "<a href=\" http://example.org \">spaced</a>",
            "<ul><li>one</li></ul><ol><li>two</li></ol><dl><dt>a</dt><dd>b</dd></dl>",
            "<pre xml:space=\"preserve\">  code  </pre><blockquote cite=\"http://example.org\">q</blockquote>",
            "<!-- a plain comment -->",
            "<map name=\"m\"><area shape=\"rect\" coords=\"0,0,1,1\" href=\"#a\" alt=\"a\"/></map>",
            "<img src=\"x.png\" usemap=\"#m\" alt=\"\"/>",
            // As the IG Publisher writes its narratives (the IPS profiles' among them).
            "<table style=\"float: var(--ig-left,left); --ig-left: left\"><tr><td>x</td></tr></table>",
        ));
        assert_eq!(check(&rich), Ok(()));
        // Extra namespace declarations are harmless while nothing uses them.
        let declared = format!(
            "<div xmlns=\"{XHTML_NS}\" xmlns:x=\"http://example.org/x\"><p xmlns=\"{XHTML_NS}\">x</p></div>"
        );
        assert_eq!(check(&declared), Ok(()));
    }

    #[test]
    fn messages_are_short_and_capped() {
        let many = div(&"<script>x</script><blink>y</blink>".repeat(50));
        let problems = refused(&many);
        assert!(problems.len() <= MAX_PROBLEMS);
        let long_name = "q".repeat(5000);
        let problems = refused(&div(&format!("<{long_name}>x</{long_name}>")));
        assert!(problems.iter().all(|p| p.len() < 200), "{problems:?}");
        // Deep nesting is walked without recursion.
        let deep = div(&format!(
            "{}x{}",
            "<span>".repeat(20_000),
            "</span>".repeat(20_000)
        ));
        assert_eq!(check(&deep), Ok(()));
    }
}
