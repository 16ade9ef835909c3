#!/usr/bin/env python3
"""Regenerate the `snapshot` of every StructureDefinition in this folder from its `differential`
and the R4 base definitions (hl7.fhir.r4.examples 4.0.1 ships them; tests/run fetches it into
$CARAPACE_R4_EXAMPLES).

    CARAPACE_R4_EXAMPLES=.cache/r4-examples/package python3 conformance/ig/snapshot.py

Enough of the HL7 snapshot algorithm for these profiles: the base type's snapshot copied, each
differential element merged into the element of the same id, a datatype's elements expanded
where the differential constrains inside one (`content.attachment.contentType`), and slices
(`extension:confidence`, `deviceName:model`) inserted after their sliced element with the
children the differential gives them (from the slice type's own definition).
"""
import copy
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.environ.get("CARAPACE_R4_EXAMPLES")
# Keys of a differential element that replace the base's; `constraint` is appended.
MERGED = ("short", "definition", "comment", "min", "max", "type", "binding", "mustSupport",
          "slicing", "sliceName", "condition", "isModifier")


def base_elements(type_name):
    path = os.path.join(BASE, f"StructureDefinition-{type_name}.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["snapshot"]["element"]


def rebase(elements, old_root, new_id_root, new_path_root):
    """Datatype elements (`Attachment.data`) renamed below an element (`DocumentReference.content.attachment.data`)."""
    out = []
    for e in elements[1:]:
        e = copy.deepcopy(e)
        e["id"] = new_id_root + e["id"][len(old_root):]
        e["path"] = new_path_root + e["path"][len(old_root):]
        out.append(e)
    return out


def descendants_end(snap, index):
    """The index just past `snap[index]` and everything below it (children, slices)."""
    prefix = snap[index]["id"]
    j = index + 1
    while j < len(snap) and (snap[j]["id"].startswith(prefix + ".") or snap[j]["id"].startswith(prefix + ":")):
        j += 1
    return j


def find(snap, element_id):
    for i, e in enumerate(snap):
        if e["id"] == element_id:
            return i
    return None


def merge(target, d):
    for key, value in d.items():
        if key in ("id", "path"):
            continue
        if key == "constraint":
            target.setdefault("constraint", []).extend(copy.deepcopy(value))
        elif key in MERGED or key.startswith("fixed") or key.startswith("pattern"):
            target[key] = copy.deepcopy(value)


def parent_id(element_id):
    head, _, _ = element_id.rpartition(".")
    return head


def ensure(snap, element_id):
    """The index of `element_id`, expanding the datatype of its parent if it is not there yet."""
    i = find(snap, element_id)
    if i is not None:
        return i
    parent = ensure(snap, parent_id(element_id))
    types = [t["code"] for t in snap[parent].get("type", [])]
    if len(types) != 1:
        sys.exit(f"cannot expand {snap[parent]['id']}: it has types {types}")
    base = base_elements(types[0])
    children = rebase(base, types[0], snap[parent]["id"], snap[parent]["path"])
    at = parent + 1
    snap[at:at] = children
    i = find(snap, element_id)
    if i is None:
        sys.exit(f"{element_id} is not an element of {types[0]}")
    return i


def add_slice(snap, d):
    element_id = d["id"]
    head, _, last = element_id.rpartition(".")
    name, _, slice_name = last.partition(":")
    sliced = ensure(snap, f"{head}.{name}")
    element = copy.deepcopy(snap[sliced])
    element.pop("slicing", None)
    element["id"] = element_id
    element["sliceName"] = slice_name
    merge(element, d)
    at = descendants_end(snap, sliced)
    snap.insert(at, element)


def add_slice_child(snap, d):
    """`A.b:s.c`: an element of the slice's type, below the slice."""
    slice_id = parent_id(d["id"])
    s = find(snap, slice_id)
    if s is None:
        sys.exit(f"{d['id']}: its slice comes first in the differential")
    types = [t["code"] for t in snap[s].get("type", [])]
    base = base_elements(types[0])
    child = d["id"][len(slice_id) + 1:]
    for e in base:
        if e["id"] == f"{types[0]}.{child}":
            e = copy.deepcopy(e)
            e["id"] = d["id"]
            e["path"] = snap[s]["path"] + "." + child
            merge(e, d)
            snap.insert(descendants_end(snap, s), e)
            return
    sys.exit(f"{d['id']}: {child} is not an element of {types[0]}")


def snapshot(sd):
    snap = copy.deepcopy(base_elements(sd["type"]))
    for d in sd["differential"]["element"]:
        element_id = d["id"]
        if find(snap, element_id) is not None:
            merge(snap[find(snap, element_id)], d)
        elif ":" in element_id.rpartition(".")[2]:
            add_slice(snap, d)
        elif ":" in element_id:
            add_slice_child(snap, d)
        else:
            merge(snap[ensure(snap, element_id)], d)
    for e in snap:
        e.pop("mapping", None)
    return {"element": snap}


def main():
    if not BASE:
        sys.exit("set CARAPACE_R4_EXAMPLES to the hl7.fhir.r4.examples package folder")
    for path in sorted(glob.glob(os.path.join(HERE, "StructureDefinition-*.json"))):
        with open(path, encoding="utf-8") as f:
            sd = json.load(f)
        sd["snapshot"] = snapshot(sd)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(sd, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(os.path.basename(path), len(sd["snapshot"]["element"]), "elements")


if __name__ == "__main__":
    main()
