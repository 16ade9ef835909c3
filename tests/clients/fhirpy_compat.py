#!/usr/bin/env python3
"""fhirpy (a published FHIR client) against Carapace, with every answer parsed by fhirclient's
strict R4 models: a search through fhirpy's search set, a FHIRPath Patch sent with fhirpy's
execute(), a conditional read that fhirpy sees as 304 (its _do_request returns None for it), and
a search over the patient's compartment.

Usage: fhirpy_compat.py BASE TOKEN PATIENT_ID
Prints one JSON line on stdout; exits 1 with the reason on stderr on any failure.
"""

import json
import sys

from fhirclient.models.bundle import Bundle
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient


def main():
    base, token, patient_id = sys.argv[1:4]
    client = SyncFHIRClient(base, authorization=f"Bearer {token}")

    observations = client.resources("Observation").search(subject=f"Patient/{patient_id}").fetch_all()
    found = sorted(o.id for o in observations)

    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "telecom"},
            {"name": "value", "valueContactPoint": {"system": "phone", "value": "555-0100"}},
        ]}],
    }
    patched = client.execute(f"Patient/{patient_id}", method="patch", data=parameters)
    strict = Patient(dict(patched), strict=True)

    # fhirpy's client has no headers per request: a conditional read goes with its extra_headers.
    etag = f'W/"{strict.meta.versionId}"'
    conditional = SyncFHIRClient(base, authorization=f"Bearer {token}",
                                 extra_headers={"If-None-Match": etag})
    unchanged = conditional.execute(f"Patient/{patient_id}", method="get")

    compartment = client.execute(f"Patient/{patient_id}/Observation", method="get")
    bundle = Bundle(dict(compartment), strict=True)

    print(json.dumps({
        "observations": found,
        "telecom": strict.telecom[0].value,
        "versionId": strict.meta.versionId,
        "notModified": unchanged is None,
        "compartment": sorted(e.resource.id for e in bundle.entry or []),
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the reason, for the test's failure message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
