#!/usr/bin/env python3
"""Compile the official FHIR R4 (4.0.1) definitions into the compact tables carapace-core embeds.

Usage: generate.py PACKAGE_DIR
  PACKAGE_DIR is the `package/` directory of `npm pack hl7.fhir.r4.examples@4.0.1`, unpacked.

Writes, next to this script:

schema.json
  {"primitives": [primitive type names],
   "resources":  [concrete resource type names],
   "types": {type name: {JSON property: [type, array, min, choice]}}}
  Every resource, complex datatype and backbone element (a backbone is named by its path, e.g.
  `Patient.contact`). Per property, trailing defaults are dropped to keep the file small:
    type    a primitive (`date`), a complex type (`HumanName`), a backbone path (`Patient.contact`),
            `#Questionnaire.item` for a contentReference (the backbone it reuses), or `Resource`
            for an embedded resource (validated by its own `resourceType`);
    array   1 when the element repeats (max != "1"), else 0 (default);
    min     minimum cardinality (default 0);
    choice  for an expanded `value[x]` (`valueString`, `valueQuantity`, ...), the choice's base
            name (`value`): at most one of a choice may appear, and a required choice needs one.

search-params.json
  {resource type: {parameter code: [kind, [[step, ..., datatype], ...], targets, url, components]}}
  Every R4 SearchParameter (Bundle-searchParams.json) whose FHIRPath expression is a union of
  simple paths, compiled to JSON steps: a property name (choices expanded: `effective` becomes
  `effectiveDateTime`, `effectivePeriod`, ...), `?name=value` for `where(name='value')` and
  `?resolve=Type` for `where(resolve() is Type)`; the last item is the FHIR datatype reached.
  Resource/DomainResource parameters are copied to every type. `targets` lists a reference's
  target types; `components` a composite's [kind, paths] pairs, relative to its base paths.
  Parameters whose expression cannot be compiled are left out (and so not advertised).

summary.json
  {resource type: [top-level JSON properties marked isSummary]}, for `_summary=true`.

compartment-patient.json
  {resource type: [element paths relative to the resource, e.g. "subject", "participant.actor"]}
  The references that put a resource in a patient's compartment, derived from the search
  parameters CompartmentDefinition-patient names (their FHIRPath `expression`).
"""
import json
import os
import re
import sys

FHIRPATH_SYSTEM = {
    "String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
    "Date": "date", "DateTime": "dateTime", "Time": "time",
}
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def load_entries(pkg, name):
    with open(os.path.join(pkg, name), encoding="utf-8") as f:
        return [e["resource"] for e in json.load(f)["entry"]]


def type_code(t):
    # The snapshot types `id`, `url` etc. as FHIRPath System types; the extension names the FHIR type.
    for ext in t.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT:
            return ext.get("valueUrl") or ext.get("valueUri")
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        return FHIRPATH_SYSTEM[code.rsplit(".", 1)[1]]
    return code


def upper_first(s):
    return s[0].upper() + s[1:]


def add(props, path, name, spec):
    if name in props:
        raise SystemExit(f"{path}: property '{name}' defined twice")
    props[name] = spec


def build_schema(pkg):
    sds = [r for name in ("Bundle-types.json", "Bundle-resources.json")
           for r in load_entries(pkg, name) if r.get("resourceType") == "StructureDefinition"]
    primitives, resources, types = [], [], {}
    for sd in sds:
        kind = sd["kind"]
        # Profiles (SimpleQuantity, MoneyQuantity) have their base's JSON shape, and elements are
        # typed by the base (`Quantity`); logical models (MetadataResource) never appear in JSON.
        if sd.get("derivation") == "constraint" or kind == "logical":
            continue
        if kind == "primitive-type":
            primitives.append(sd["type"])
            continue
        if kind == "resource" and not sd.get("abstract"):
            resources.append(sd["type"])
        root = sd["type"]
        elements = sd["snapshot"]["element"]
        parents = {e["path"].rsplit(".", 1)[0] for e in elements if "." in e["path"]}
        if root in types:
            raise SystemExit(f"{root}: defined twice")
        types[root] = {}
        for el in elements:
            path = el["path"]
            if "." not in path:
                continue
            parent, name = path.rsplit(".", 1)
            props = types.setdefault(parent, {})
            array = 1 if el.get("max") != "1" else 0
            minimum = int(el.get("min", 0))
            if "contentReference" in el:
                add(props, path, name, ["#" + el["contentReference"].lstrip("#"), array, minimum])
                continue
            codes = [type_code(t) for t in el.get("type", [])]
            if not codes:
                raise SystemExit(f"{path}: no type and no contentReference")
            if name.endswith("[x]"):
                base = name[:-3]
                for code in codes:
                    add(props, path, base + upper_first(code), [code, array, minimum, base])
                continue
            if len(codes) != 1:
                raise SystemExit(f"{path}: several types but not a choice")
            code = codes[0]
            if name == "id" and parent == root and kind == "resource":
                # The snapshot says `string`, but a resource's logical id is of type `id`
                # (resource.html, and the official JSON schema).
                code = "id"
            if code in ("BackboneElement", "Element") and path in parents:
                code = path  # a backbone element: its own table, named by its path
            add(props, path, name, [code, array, minimum])
    # A primitive's `value` is the JSON value itself, not a property.
    for p in primitives:
        types.pop(p, None)
    known = set(types) | set(primitives) | {"Resource"}
    for tname, props in types.items():
        for pname, spec in props.items():
            target = spec[0].lstrip("#")
            if target not in known:
                raise SystemExit(f"{tname}.{pname}: unknown type {target}")
    compact = {}
    for tname in sorted(types):
        out = {}
        for pname, spec in types[tname].items():
            spec = list(spec)
            while len(spec) in (2, 3) and spec[-1] == 0:
                spec.pop()
            out[pname] = spec
        compact[tname] = out
    return {"primitives": sorted(primitives), "resources": sorted(resources), "types": compact}


def split_top(expr, sep):
    """Split on `sep` outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def strip_calls(part, name):
    """Remove every `.name(...)` call (with nested parentheses)."""
    while True:
        at = part.find("." + name + "(")
        if at < 0:
            return part
        depth, end = 0, at + len(name) + 1
        while end < len(part):
            if part[end] == "(":
                depth += 1
            elif part[end] == ")":
                depth -= 1
                if depth == 0:
                    break
            end += 1
        part = part[:at] + part[end + 1:]


def resolve_path(types, rt, steps):
    """Map FHIRPath steps onto JSON property names; None if they do not name a Reference."""
    table, out = rt, []
    for i, (step, as_type) in enumerate(steps):
        props = types.get(table, {})
        name = step
        if name not in props and as_type:
            name = step + upper_first(as_type)  # `value as Reference` is `valueReference`
        if name not in props:
            return None
        out.append(name)
        target = props[name][0].lstrip("#")
        if i == len(steps) - 1:
            return ".".join(out) if target == "Reference" else None
        table = target
    return None


def compartment_paths(types, rt, expression):
    paths = []
    for part in split_top(expression, "|"):
        while part.startswith("(") and part.endswith(")"):
            part = part[1:-1].strip()
        part = strip_calls(part, "where")
        part = strip_calls(part, "resolve")
        as_type = None
        m = re.fullmatch(r"(.*?)\s+as\s+(\w+)", part)
        if m:
            part, as_type = m.group(1).strip(), m.group(2)
        m = re.fullmatch(r"(.*?)\.(?:as|ofType)\((\w+)\)", part)
        if m:
            part, as_type = m.group(1), m.group(2)
        while part.startswith("(") and part.endswith(")"):
            part = part[1:-1].strip()
        if not part.startswith(rt + "."):
            continue  # a union over several resource types: keep this type's parts only
        names = part[len(rt) + 1:].split(".")
        if not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n) for n in names):
            print(f"warning: {rt}: cannot read '{part}'", file=sys.stderr)
            continue
        steps = [(n, as_type if i == len(names) - 1 else None) for i, n in enumerate(names)]
        path = resolve_path(types, rt, steps)
        if path is None:
            print(f"warning: {rt}: '{part}' is not a Reference element", file=sys.stderr)
            continue
        if path not in paths:
            paths.append(path)
    return paths


def build_compartment(pkg, types):
    with open(os.path.join(pkg, "CompartmentDefinition-patient.json"), encoding="utf-8") as f:
        compartment = json.load(f)
    expressions = {}
    for sp in load_entries(pkg, "Bundle-searchParams.json"):
        for base in sp.get("base", []):
            expressions[(base, sp["code"])] = sp.get("expression", "")
    out = {}
    for res in compartment["resource"]:
        rt = res["code"]
        paths = []
        for code in res.get("param", []):
            if code == "{def}":
                continue  # the Patient itself
            expr = expressions.get((rt, code))
            if not expr:
                print(f"warning: {rt}: no search parameter '{code}'", file=sys.stderr)
                continue
            for p in compartment_paths(types, rt, expr):
                if p not in paths:
                    paths.append(p)
        if res.get("param") and not paths:
            print(f"warning: {rt}: in the compartment but no path found", file=sys.stderr)
        if paths:
            out[rt] = paths
    return dict(sorted(out.items()))


def compile_alternative(types, rt, part):
    """One `|` alternative of a FHIRPath expression as lists of [steps..., datatype], or None."""
    part = part.strip()
    while part.startswith("(") and part.endswith(")"):
        part = part[1:-1].strip()
    as_type = None
    m = re.fullmatch(r"(.*?)\s+as\s+(\w+)", part)
    if m:
        part, as_type = m.group(1).strip(), m.group(2)
    m = re.fullmatch(r"(.*?)\.as\((\w+)\)", part)
    if m:
        part, as_type = m.group(1), m.group(2)
    while part.startswith("(") and part.endswith(")"):
        part = part[1:-1].strip()
    tokens = re.findall(r"\.?(where\((?:[^()]|\([^()]*\))*\)|[A-Za-z][A-Za-z0-9]*)", part)
    if "".join("." + t for t in tokens).lstrip(".") != part.replace(" ", "") and \
            ".".join(tokens) != part:
        return None
    if not tokens or tokens[0] != rt and rt is not None:
        return None
    steps = tokens[1:]
    return walk(types, tokens[0], steps, as_type)


def walk(types, table, steps, as_type, out=None):
    """Expand steps over the schema: choices fan out into one path per datatype."""
    out = out or []
    if not steps:
        return [out + [table]]
    step, rest = steps[0], steps[1:]
    m = re.fullmatch(r"where\((\w+)\s*=\s*'([^']*)'\)", step)
    if m:
        return walk(types, table, rest, as_type, out + [f"?{m.group(1)}={m.group(2)}"])
    m = re.fullmatch(r"where\(resolve\(\)\s+is\s+(\w+)\)", step)
    if m:
        return walk(types, table, rest, as_type, out + [f"?resolve={m.group(1)}"])
    if step.startswith("where("):
        return None
    props = types.get(table, {})
    if step in props:
        return walk(types, props[step][0].lstrip("#"), rest, as_type, out + [step])
    choices = [(n, spec) for n, spec in props.items() if len(spec) > 3 and spec[3] == step]
    if not choices:
        return None
    if as_type and not rest:
        choices = [(n, s) for n, s in choices if n == step + upper_first(as_type)]
    paths = []
    for name, spec in choices:
        sub = walk(types, spec[0].lstrip("#"), rest, as_type, out + [name])
        if sub is None:
            return None
        paths.extend(sub)
    return paths or None


def compile_expression(types, rt, expression):
    paths = []
    for part in split_top(expression, "|"):
        inner = part.strip()
        while inner.startswith("(") and inner.endswith(")"):
            inner = inner[1:-1].strip()
        head = re.match(r"[A-Za-z]+", inner)
        if not head or head.group(0) != rt:
            continue  # an alternative for another resource type
        alt = compile_alternative(types, rt, part)
        if alt is None:
            return None
        paths.extend(p for p in alt if p not in paths)
    return paths or None


def build_search_params(pkg, schema):
    types, resources = schema["types"], schema["resources"]
    sps = load_entries(pkg, "Bundle-searchParams.json")
    by_url = {sp["url"]: sp for sp in sps}
    out = {rt: {} for rt in resources}
    skipped = []
    for sp in sps:
        expression = sp.get("expression")
        if not expression or sp["type"] == "special":
            skipped.append(f"{sp['code']} ({sp['type']})")
            continue
        # The one boolean expression in R4: deceased is "true" for a date or true, "false" otherwise.
        m = re.fullmatch(r"(\w+\.\w+)\.exists\(\) and \1 != false", expression)
        if m:
            expression = m.group(1)
        for base in sp["base"]:
            targets = [rt for rt in resources] if base in ("Resource", "DomainResource") else [base]
            for rt in targets:
                expr = expression if base not in ("Resource", "DomainResource") else \
                    expression.replace(base + ".", rt + ".")
                paths = compile_expression(types, rt, expr)
                if paths is None:
                    skipped.append(f"{rt}.{sp['code']}")
                    continue
                entry = [sp["type"], paths, sorted(sp.get("target", [])), sp["url"]]
                if sp["type"] == "composite":
                    comps = []
                    for c in sp.get("component", []):
                        csp = by_url.get(c["definition"])
                        table = paths[0][-1]
                        cexpr = c["expression"]
                        as_type = None
                        m = re.fullmatch(r"(.*?)\.as\((\w+)\)", cexpr)
                        if m:
                            cexpr, as_type = m.group(1), m.group(2)
                        cpaths = walk(types, table, cexpr.split("."), as_type) if csp else None
                        if not cpaths:
                            comps = None
                            break
                        comps.append([csp["type"], cpaths])
                    if comps is None:
                        skipped.append(f"{rt}.{sp['code']}")
                        continue
                    entry.append(comps)
                out[rt][sp["code"]] = entry
    print(f"search parameters left out: {len(skipped)}: {', '.join(skipped[:20])}", file=sys.stderr)
    return {rt: dict(sorted(ps.items())) for rt, ps in out.items()}


def build_summary(pkg):
    """Per resource type, the top-level JSON properties in the summary view (isSummary)."""
    out = {}
    for sd in load_entries(pkg, "Bundle-resources.json"):
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource" \
                or sd.get("abstract") or sd.get("derivation") == "constraint":
            continue
        names = []
        for el in sd["snapshot"]["element"]:
            parts = el["path"].split(".")
            if len(parts) != 2 or not el.get("isSummary"):
                continue
            name = parts[1]
            if name.endswith("[x]"):
                names.extend(name[:-3] + upper_first(type_code(t)) for t in el.get("type", []))
            else:
                names.append(name)
        out[sd["type"]] = sorted(set(names))
    return dict(sorted(out.items()))


STRENGTHS = {"required": "r", "extensible": "e", "preferred": "p", "example": "x"}
BOUND_TYPES = ("code", "Coding", "CodeableConcept")


def load_terminology(pkg):
    """Every CodeSystem-*.json and ValueSet-*.json file, by url (each url ships once)."""
    systems, sets = {}, {}
    for name in sorted(os.listdir(pkg)):
        if not name.endswith(".json") or not name.startswith(("CodeSystem-", "ValueSet-")):
            continue
        with open(os.path.join(pkg, name), encoding="utf-8") as f:
            res = json.load(f)
        table = systems if res["resourceType"] == "CodeSystem" else sets
        if res["url"] in table:
            raise SystemExit(f"{res['url']}: shipped twice")
        table[res["url"]] = res
    return systems, sets


class System:
    """A shipped CodeSystem flattened: concepts in document order, parents and children by index."""

    def __init__(self, cs):
        self.cs = cs
        self.url = cs["url"]
        self.complete = cs.get("content") == "complete"
        self.case_sensitive = bool(cs.get("caseSensitive"))
        self.concepts, self.index, self.props = [], {}, []
        parents = []

        def visit(concepts, parent):
            for c in concepts:
                i = self.index.get(c["code"])
                if i is None:
                    i = len(self.concepts)
                    self.index[c["code"]] = i
                    self.concepts.append(c)
                    parents.append([])
                    self.props.append({})
                if parent is not None and parent not in parents[i]:
                    parents[i].append(parent)
                for prop in c.get("property", []):
                    value = next((v for k, v in prop.items() if k.startswith("value")), None)
                    self.props[i].setdefault(prop["code"], []).append(value)
                visit(c.get("concept", []), i)

        visit(cs.get("concept", []), None)
        # Parent links given as properties (a concept may have several parents).
        for i, props in enumerate(self.props):
            for kid in props.get("child", []):
                k = self.index.get(kid)
                if k is not None and i not in parents[k]:
                    parents[k].append(i)
            for key in ("parent", "subsumedBy"):
                for par in props.get(key, []):
                    p = self.index.get(par)
                    if p is not None and p not in parents[i]:
                        parents[i].append(p)
        self.parents = parents
        self.children = [[] for _ in parents]
        for i, ps in enumerate(parents):
            for p in ps:
                self.children[p].append(i)

    def find(self, code):
        i = self.index.get(code)
        if i is None and not self.case_sensitive:
            low = code.lower()
            i = next((j for c, j in self.index.items() if c.lower() == low), None)
        return i

    def descendants(self, i):
        out, stack = [], list(self.children[i])
        seen = set()
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            out.append(j)
            stack.extend(self.children[j])
        return out

    def filter(self, f):
        """The concept indexes a compose filter selects, or None if it cannot be computed here."""
        prop, op, value = f.get("property"), f.get("op"), f.get("value", "")
        if prop == "concept" and op in ("is-a", "descendent-of", "is-not-a"):
            i = self.find(value)
            if i is None:
                return []
            below = self.descendants(i)
            if op == "descendent-of":
                return below
            if op == "is-a":
                return [i] + below
            excluded = set(below) | {i}
            return [j for j in range(len(self.concepts)) if j not in excluded]
        if prop in ("concept", "code") and op == "in":
            codes = [c.strip() for c in value.split(",")]
            return [i for i in (self.find(c) for c in codes) if i is not None]
        if prop in ("concept", "code") and op == "regex":
            try:
                rx = re.compile(value)
            except re.error:
                return None
            return [i for i, c in enumerate(self.concepts) if rx.fullmatch(c["code"])]
        if op == "=" and prop not in ("concept", "code"):
            # A concept property: only properties the system declares and its concepts carry.
            declared = {p["code"] for p in self.cs.get("property", [])}
            if prop not in declared:
                return None
            return [i for i, props in enumerate(self.props)
                    if any(str(v).lower() == value.lower() if isinstance(v, bool) else v == value
                           for v in props.get(prop, []))]
        return None


def expand(url, sets, systems, stack=()):
    """A value set's members as an ordered dict {(system, code): display}, or None."""
    vs = sets.get(url)
    if vs is None or url in stack:
        return None
    compose = vs.get("compose")
    if not compose:
        return None
    stack = stack + (url,)

    def part(inc):
        selected = None  # ordered dict, or None until the first constraint
        if "system" in inc:
            system = inc["system"]
            shipped = systems.get(system)
            version = inc.get("version")
            if "concept" in inc:
                selected = {}
                for c in inc["concept"]:
                    display = c.get("display")
                    if shipped is not None:
                        i = shipped.find(c["code"])
                        if i is not None:
                            display = display or shipped.concepts[i].get("display")
                            code = shipped.concepts[i]["code"]
                        elif shipped.complete:
                            continue  # not a code of the system: the HL7 expander drops it too
                        else:
                            code = c["code"]
                    else:
                        code = c["code"]
                    selected[(system, code)] = display
                if inc.get("filter"):
                    return None
            else:
                if shipped is None or not shipped.complete:
                    return None
                chosen = list(range(len(shipped.concepts)))
                for f in inc.get("filter", []):
                    got = shipped.filter(f)
                    if got is None:
                        return None
                    keep = set(got)
                    chosen = [i for i in chosen if i in keep]
                selected = {(system, shipped.concepts[i]["code"]):
                            shipped.concepts[i].get("display") for i in chosen}
            del version
        for ref in inc.get("valueSet", []):
            other = expand(ref.split("|")[0], sets, systems, stack)
            if other is None:
                return None
            if selected is None:
                selected = dict(other)
            else:
                selected = {k: v for k, v in selected.items() if k in other}
        return selected if selected is not None else None

    members = {}
    for inc in compose.get("include", []):
        got = part(inc)
        if got is None:
            return None
        for k, v in got.items():
            members.setdefault(k, v)
    for exc in compose.get("exclude", []):
        got = part(exc)
        if got is None:
            return None
        for k in got:
            members.pop(k, None)
    return members


def build_terminology(pkg, types_schema):
    cs_raw, vs_raw = load_terminology(pkg)
    systems = {url: System(cs) for url, cs in cs_raw.items()}
    out_cs = []
    for url in sorted(systems):
        s = systems[url]
        concepts = []
        for i, c in enumerate(s.concepts):
            row = [c["code"], c.get("display", ""), c.get("definition", ""), s.parents[i]]
            while len(row) > 1 and row[-1] in ("", []):
                row.pop()
            concepts.append(row)
        out_cs.append([url, s.cs.get("version", ""), s.cs.get("name", ""),
                       s.cs.get("content", ""), 1 if s.case_sensitive else 0, concepts])
    out_vs, enumerable = [], 0
    for url in sorted(vs_raw):
        vs = vs_raw[url]
        members = expand(url, vs_raw, systems)
        expansion = None
        if members is not None:
            enumerable += 1
            groups = {}
            for (system, code), display in members.items():
                shipped = systems.get(system)
                i = shipped.index.get(code) if shipped else None
                version = shipped.cs.get("version", "") if shipped else ""
                group = groups.setdefault(system, [system, version, [], []])
                if i is not None:
                    group[2].append(i)
                else:
                    group[3].append([code, display] if display else [code])
            expansion = list(groups.values())
        out_vs.append([url, vs.get("version", ""), vs.get("name", ""), vs.get("title", ""),
                       expansion])
    bindings = build_bindings(pkg)
    check_expansions(pkg, vs_raw, systems)
    print(f"terminology: {len(out_cs)} code systems, {len(out_vs)} value sets "
          f"({enumerable} enumerable), bindings on {sum(len(b) for b in bindings.values())} "
          f"elements of {len(bindings)} types", file=sys.stderr)
    return {"codeSystems": out_cs, "valueSets": out_vs, "bindings": bindings}


def check_expansions(pkg, sets, systems):
    """Compare with the expansions the package ships (Bundle-valueset-expansions.json)."""
    same = differ = skipped = 0
    for vs in load_entries(pkg, "Bundle-valueset-expansions.json"):
        ours = expand(vs["url"], sets, systems)
        if ours is None:
            skipped += 1
            continue
        theirs = set()

        def walk(items):
            for c in items:
                if "code" in c:
                    theirs.add((c.get("system"), c["code"]))
                walk(c.get("contains", []))

        walk(vs.get("expansion", {}).get("contains", []))
        if set(ours) == theirs:
            same += 1
        else:
            differ += 1
            print(f"expansion differs: {vs['url']}: ours {len(ours)}, shipped {len(theirs)}",
                  file=sys.stderr)
    print(f"expansions: {same} match the shipped ones, {differ} differ, {skipped} not enumerable",
          file=sys.stderr)


def build_bindings(pkg):
    out = {}
    for sd in [r for name in ("Bundle-types.json", "Bundle-resources.json")
               for r in load_entries(pkg, name) if r.get("resourceType") == "StructureDefinition"]:
        if sd.get("derivation") == "constraint" or sd["kind"] in ("logical", "primitive-type"):
            continue
        for el in sd["snapshot"]["element"]:
            binding = el.get("binding")
            if not binding or "valueSet" not in binding or "." not in el["path"]:
                continue
            parent, name = el["path"].rsplit(".", 1)
            entry = [STRENGTHS[binding["strength"]], binding["valueSet"].split("|")[0]]
            for code in (type_code(t) for t in el.get("type", [])):
                if code not in BOUND_TYPES:
                    continue
                prop = name[:-3] + upper_first(code) if name.endswith("[x]") else name
                out.setdefault(parent, {})[prop] = entry + [code]
    return {t: dict(sorted(p.items())) for t, p in sorted(out.items())}


def main(pkg):
    here = os.path.dirname(os.path.abspath(__file__))
    schema = build_schema(pkg)
    compartment = build_compartment(pkg, schema["types"])
    search = build_search_params(pkg, schema)
    for name, data in (("schema.json", schema), ("compartment-patient.json", compartment),
                       ("search-params.json", search), ("summary.json", build_summary(pkg)),
                       ("terminology.json", build_terminology(pkg, schema["types"]))):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"), ensure_ascii=True)
            f.write("\n")
    print(f"{len(schema['resources'])} resources, {len(schema['types'])} element tables, "
          f"{len(schema['primitives'])} primitives, {len(compartment)} compartment resource types")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
