"""Every example in the OpenAPI document fits the schema beside it, and every request body, every response
with a body and every outgoing event has one (reference pages and schemathesis's explicit phase use them).

    python ci/openapi/examples.py openapi.json      (needs jsonschema; .ci/run uses the validator's venv)
"""
import json
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

doc = json.load(open(sys.argv[1]))
registry = Registry().with_resource("urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012))


def absolute(v):
    """Points the document's own `#/…` references at the registered copy."""
    if isinstance(v, dict):
        return {k: "urn:doc" + x if k == "$ref" and isinstance(x, str) and x.startswith("#") else absolute(x)
                for k, x in v.items()}
    if isinstance(v, list):
        return [absolute(x) for x in v]
    return v


problems, checked = [], 0


def check(where, schema, example):
    global checked
    checked += 1
    for e in Draft202012Validator(absolute(schema), registry=registry).iter_errors(example):
        problems.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}")


for group in ("paths", "webhooks"):
    for path, item in doc.get(group, {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            media = [("request", m) for m in op.get("requestBody", {}).get("content", {}).values()]
            media += [(status, m) for status, r in op["responses"].items() for m in r.get("content", {}).values()]
            for what, m in media:
                where = f"{method.upper()} {path} {what}"
                if "example" not in m:
                    problems.append(f"{where}: no example")
                else:
                    check(where, m["schema"], m["example"])
            for p in op.get("parameters", []):
                if "example" in p:
                    check(f"{method.upper()} {path} parameter {p['name']}", p["schema"], p["example"])

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{checked} examples fit their schemas")
