"""Parse every resource of the summaries implementation guide (conformance/ig/, examples and the
entries of example Bundles included) with the published strict R4 models of `fhirclient`, an
independent validator of R4 structure (element names, types, cardinality of required elements).
Prints one line per file parsed; exits 1 on the first that does not parse."""
import json
import pathlib
import sys

from fhirclient.models.fhirelementfactory import FHIRElementFactory


def parse(resource, where):
    try:
        FHIRElementFactory.instantiate(resource["resourceType"], resource)
    except Exception as e:  # fhirclient raises FHIRValidationError and others
        sys.exit(f"{where}: {e}")


def main(folder):
    files = sorted(pathlib.Path(folder).glob("*.json")) + sorted(pathlib.Path(folder).glob("examples/*.json"))
    if not files:
        sys.exit(f"no resources in {folder}")
    for path in files:
        resource = json.loads(path.read_text(encoding="utf-8"))
        parse(resource, path.name)
        for i, entry in enumerate(resource.get("entry", [])):
            parse(entry["resource"], f"{path.name} entry {i}")
        print(path.name, resource["resourceType"])


if __name__ == "__main__":
    main(sys.argv[1])
