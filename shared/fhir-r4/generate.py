#!/usr/bin/env python3
"""Compile the official FHIR R4 (4.0.1) definitions into the compact tables carapace-core embeds.

Usage: generate.py PACKAGE_DIR   (the `package/` directory of `npm pack hl7.fhir.r4.examples@4.0.1`)

Writes, next to this script:
  schema.json               every resource, complex datatype and backbone element: its JSON
                            properties with type, array-ness and required-ness
  compartment-patient.json  per resource type, the reference paths that put it in a patient's
                            compartment (from CompartmentDefinition-patient + SearchParameters)
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


def type_code(t):
    code = t["code"]
    for ext in t.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT:
            return ext.get("valueUrl") or ext.get("valueUri")
    if code.startswith("http://hl7.org/fhirpath/System."):
        return FHIRPATH_SYSTEM[code.rsplit(".", 1)[1]]
    return code


def main(pkg):
    sds = []
    for name in ("Bundle-types.json", "Bundle-resources.json"):
        with open(os.path.join(pkg, name)) as f:
            sds += [e["resource"] for e in json.load(f)["entry"]
                    if e["resource"].get("resourceType") == "StructureDefinition"]
    primitives, resources, types = [], [], {}
    for sd in sds:
        if sd.get("derivation") == "constraint":
            continue  # profiles such as SimpleQuantity: same JSON shape as their base
        kind = sd["kind"]
        if kind == "primitive-type":
            primitives.append(sd["type"])
            continue
        if kind == "logical":
            continue
        if kind == "resource" and not sd.get("abstract"):
            resources.append(sd["type"])
        root = sd["type"]
        for el in sd["snapshot"]["element"]:
            path = el["path"]
            if "." not in path:
                continue
            parent, name = path.rsplit(".", 1)
            entry = types.setdefault(parent, {"e": {}, "req": []})
            is_array = el.get("max") != "1"
            required = el.get("min", 0) >= 1
            if "contentReference" in el:
                target = el["contentReference"].lstrip("#")
                entry["e"][name] = [target, is_array]
                if required:
                    entry["req"].append([name])
                continue
            codes = [type_code(t) for t in el.get("type", [])]
            if not codes:
                continue
            if name.endswith("[x]"):
                base = name[:-3]
                keys = []
                for c in codes:
                    key = base + c[0].upper() + c[1:]
                    entry["e"][key] = [c, is_array]
                    keys.append(key)
                if required:
                    entry["req"].append(keys)
                continue
            code = codes[0]
            if name == "id" and parent == root and kind == "resource":
                code = "id"  # a resource's logical id has the `id` type's lexical rules
            if code in ("BackboneElement", "Element") and any(
                    e["path"].startswith(path + ".") for e in sd["snapshot"]["element"]):
                code = path  # a backbone element: its own entry, named by its path
            entry["e"][name] = [code, is_array]
            if required:
                entry["req"].append([name])
        types.setdefault(root, {"e": {}, "req": []})
    # Primitive types' own `value` elements are not JSON properties.
    for p in primitives:
        types.pop(p, None)
    schema = {
        "primitives": sorted(primitives),
        "resources": sorted(resources),
        "types": {k: v for k, v in sorted(types.items())},
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "schema.json"), "w") as f:
        json.dump(schema, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")

    # Patient compartment: resource type -> reference paths.
    with open(os.path.join(pkg, "CompartmentDefinition-patient.json")) as f:
        compartment = json.load(f)
    with open(os.path.join(pkg, "Bundle-searchParams.json")) as f:
        params = [e["resource"] for e in json.load(f)["entry"]]
    by_code = {}
    for sp in params:
        for base in sp.get("base", []):
            by_code[(base, sp["code"])] = sp.get("expression", "")
    out = {}
    for res in compartment["resource"]:
        rt = res["code"]
        paths = []
        for code in res.get("param", []):
            if code == "{def}":
                continue
            expr = by_code.get((rt, code), "")
            for part in expr.split("|"):
                part = part.strip()
                if part.startswith("(") and part.endswith(")"):
                    part = part[1:-1].strip()
                if not part.startswith(rt + "."):
                    continue
                part = part[len(rt) + 1:]
                part = re.sub(r"\.where\(resolve\(\) is \w+\)", "", part)
                part = re.sub(r"\.where\([^()]*\)", "", part)
                part = re.sub(r"\s+as\s+\w+$", "", part)
                part = re.sub(r"\.as\(\w+\)", "", part)
                part = re.sub(r"\.resolve\(\)", "", part)
                if re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)*", part) and part not in paths:
                    paths.append(part)
        if paths:
            out[rt] = paths
    with open(os.path.join(here, "compartment-patient.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(schema['resources'])} resources, {len(types)} element tables, "
          f"{len(primitives)} primitives, {len(out)} compartment resource types")


if __name__ == "__main__":
    main(sys.argv[1])
