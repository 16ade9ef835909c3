"""An independent FHIR XML client: stdlib HTTP and XML (ElementTree), plus fhirclient's strict R4
models for the JSON form of what was created from XML.

Usage: xml_client.py BASE AUTHORIZATION  -> prints a JSON report on stdout.
"""
import json
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

from fhirclient.models.patient import Patient

NS = {"f": "http://hl7.org/fhir"}
BASE, TOKEN = sys.argv[1], sys.argv[2]


def call(method, path, body=None, content_type=None, accept="application/fhir+xml"):
    req = urllib.request.Request(BASE + "/" + path, data=body, method=method)
    req.add_header("Authorization", TOKEN)
    req.add_header("Accept", accept)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


# Built with ElementTree, so the escaping and namespaces are Python's, not ours.
ET.register_namespace("", NS["f"])
p = ET.Element("{http://hl7.org/fhir}Patient")
name = ET.SubElement(p, "{http://hl7.org/fhir}name")
ET.SubElement(name, "{http://hl7.org/fhir}family", value="Ünïcode & <Sons>")
birth = ET.SubElement(p, "{http://hl7.org/fhir}birthDate", value="1970-01-01")
ext = ET.SubElement(
    birth,
    "{http://hl7.org/fhir}extension",
    url="http://hl7.org/fhir/StructureDefinition/patient-birthTime",
)
ET.SubElement(ext, "{http://hl7.org/fhir}valueDateTime", value="1970-01-01T10:00:00Z")
body = ET.tostring(p, encoding="utf-8", xml_declaration=True)

report = {}
status, ctype, created = call("POST", "Patient", body, "application/fhir+xml")
report["created"] = status
assert ctype == "application/fhir+xml; charset=utf-8", ctype
root = ET.fromstring(created)
assert root.tag == "{http://hl7.org/fhir}Patient", (status, created)
pid = root.find("f:id", NS).get("value")
report["family"] = root.find("f:name/f:family", NS).get("value")
report["birth_time_extension"] = (
    root.find("f:birthDate/f:extension", NS).get("url")
    == "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
)

# The same resource as JSON, read by the strict R4 models (they raise on anything not R4).
status, _, as_json = call("GET", "Patient/" + pid, accept="application/fhir+json")
report["strict_model"] = Patient(json.loads(as_json), strict=True).resource_type

# A refusal is an OperationOutcome in XML, naming the path.
bad = b'<Patient xmlns="http://hl7.org/fhir"><colour value="red"/></Patient>'
status, ctype, outcome = call("POST", "Patient", bad, "application/fhir+xml")
report["refused"] = status
oo = ET.fromstring(outcome)
assert oo.tag == "{http://hl7.org/fhir}OperationOutcome", oo.tag
report["refused_path"] = oo.find("f:issue/f:expression", NS).get("value")

print(json.dumps(report))
