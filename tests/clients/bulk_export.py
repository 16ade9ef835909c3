#!/usr/bin/env python3
"""A third-party Bulk Data client, as the Bulk Data IG's sample client works: kick-off, poll,
manifest, downloads, each NDJSON line parsed by the published strict R4 models (`fhirclient`
4.x, FHIR 4.0.1). Only the standard library's urllib speaks HTTP, so nothing here knows Carapace.

Usage: bulk_export.py BASE TOKEN [--type T1,T2] [--level system|patient|group:<id>]
         [--timeout SECONDS]

On success prints one JSON line on stdout, {"files": n, "resources": {type: count},
"parsed": total, "errors": m} (m: OperationOutcomes in the manifest's error files), and exits
0; on any failure prints why on stderr and exits 1.

fhirclient's models raise FHIRValidationError in strict mode on an element R4 does not define
("Superfluous entry"), a missing required element, a wrong JSON type or a malformed date, so a
line that parses is R4 JSON as another implementation reads it.
"""

import argparse
import email.utils
import importlib
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from fhirclient.models.fhirabstractresource import FHIRAbstractResource

NDJSON = "application/fhir+ndjson"
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")


class Failure(Exception):
    """Why the export, as this client saw it, is not what the IG says."""


def request(url, token, accept, method="GET", prefer=None):
    """One HTTP request: (status, headers, body bytes), error statuses included."""
    headers = {"Accept": accept, "Authorization": f"Bearer {token}"}
    if prefer:
        headers["Prefer"] = prefer
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except urllib.error.URLError as e:
        raise Failure(f"{method} {url}: {e.reason}") from e


def kick_off_url(base, level, types):
    if level == "system":
        path = "$export"
    elif level == "patient":
        path = "Patient/$export"
    elif level.startswith("group:") and len(level) > len("group:"):
        path = f"Group/{urllib.parse.quote(level[len('group:'):], safe='')}/$export"
    else:
        raise Failure(f"--level must be system, patient or group:<id>, not {level!r}")
    url = f"{base.rstrip('/')}/{path}"
    if types:
        url += "?" + urllib.parse.urlencode({"_type": ",".join(types)})
    return url


def retry_after(headers, default=1.0):
    """Seconds to wait before the next poll: Retry-After as seconds or an HTTP date."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return default
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return default


def poll(status_url, token, timeout):
    """Poll the status URL until 200; the manifest."""
    deadline = time.monotonic() + timeout
    while True:
        status, headers, body = request(status_url, token, "application/json")
        if status == 200:
            try:
                return json.loads(body)
            except ValueError as e:
                raise Failure(f"the manifest is not JSON: {e}") from e
        if status != 202:
            raise Failure(f"status request answered {status}: {body[:500]!r}")
        wait = retry_after(headers)
        if time.monotonic() + wait > deadline:
            raise Failure(
                f"export not complete after {timeout:.0f} s "
                f"(X-Progress: {headers.get('X-Progress')})"
            )
        time.sleep(wait)


def check_manifest(manifest, types):
    if not isinstance(manifest, dict):
        raise Failure("the manifest is not a JSON object")
    if manifest.get("requiresAccessToken") is not True:
        raise Failure(f"requiresAccessToken is {manifest.get('requiresAccessToken')!r}, not true")
    if not isinstance(manifest.get("transactionTime"), str):
        raise Failure("the manifest has no transactionTime")
    if not isinstance(manifest.get("request"), str):
        raise Failure("the manifest has no request")
    for key in ("output", "error"):
        files = manifest.get(key, [])
        if not isinstance(files, list):
            raise Failure(f"the manifest's {key} is not a list")
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("type"), str) or not isinstance(
                f.get("url"), str
            ):
                raise Failure(f"a {key} entry has no type and url: {f!r}")
    if "output" not in manifest:
        raise Failure("the manifest has no output list")
    for f in manifest["output"]:
        if types and f["type"] not in types:
            raise Failure(f"an output file of type {f['type']}, which _type did not ask for")


def model_class(resource_type):
    """The fhirclient model class of a resource type: module `fhirclient.models.<lower>`."""
    if not RESOURCE_TYPE.fullmatch(resource_type or ""):
        raise Failure(f"not a resource type: {resource_type!r}")
    try:
        module = importlib.import_module(f"fhirclient.models.{resource_type.lower()}")
    except ImportError as e:
        raise Failure(f"R4 has no resource type {resource_type}") from e
    cls = getattr(module, resource_type, None)
    if not (isinstance(cls, type) and issubclass(cls, FHIRAbstractResource)):
        raise Failure(f"R4 has no resource type {resource_type}")
    return cls


def parse_file(entry, token, counts):
    """Download one file and parse every line strictly; the number of lines."""
    status, headers, body = request(entry["url"], token, NDJSON)
    if status != 200:
        raise Failure(f"download {entry['url']} answered {status}: {body[:500]!r}")
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
    if content_type != NDJSON:
        raise Failure(f"download {entry['url']} is {content_type!r}, not {NDJSON}")
    lines = 0
    for number, line in enumerate(body.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{entry['url']} line {number}"
        try:
            resource = json.loads(line)
        except ValueError as e:
            raise Failure(f"{where}: not JSON: {e}") from e
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if rtype != entry["type"]:
            raise Failure(f"{where}: a {rtype} in the file of {entry['type']}")
        try:
            model_class(rtype)(resource, strict=True)
        except Failure:
            raise
        except Exception as e:  # fhirclient raises FHIRValidationError, TypeError, ValueError
            raise Failure(f"{where}: not valid R4 {rtype}: {e}") from e
        counts[rtype] = counts.get(rtype, 0) + 1
        lines += 1
    if "count" in entry and entry["count"] != lines:
        raise Failure(f"{entry['url']}: the manifest counts {entry['count']}, the file has {lines}")
    return lines


def run(args):
    types = [t for t in (args.type or "").split(",") if t]
    kick_off = kick_off_url(args.base, args.level, types)
    status, headers, body = request(
        kick_off, args.token, "application/fhir+json", prefer="respond-async"
    )
    if status != 202:
        raise Failure(f"kick-off {kick_off} answered {status}, not 202: {body[:500]!r}")
    location = headers.get("Content-Location")
    if not location:
        raise Failure("the kick-off's 202 has no Content-Location")
    manifest = poll(urllib.parse.urljoin(kick_off, location), args.token, args.timeout)
    check_manifest(manifest, types)
    counts = {}
    parsed = sum(parse_file(f, args.token, counts) for f in manifest["output"])
    errors = sum(parse_file(f, args.token, {}) for f in manifest.get("error", []))
    return {
        "files": len(manifest["output"]),
        "resources": counts,
        "parsed": parsed,
        "errors": errors,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    parser.add_argument("token", help="a bearer access token allowed to export")
    parser.add_argument("--type", help="resource types to export, comma-separated (_type)")
    parser.add_argument("--level", default="system", help="system, patient or group:<id>")
    parser.add_argument("--timeout", type=float, default=120.0, help="most seconds to poll")
    args = parser.parse_args()
    try:
        print(json.dumps(run(args), sort_keys=True))
    except Failure as e:
        print(f"bulk_export: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
