#!/usr/bin/env python3
"""Validates Kubernetes objects offline.

Core and built-in kinds are checked with kubernetes-validate (strict: unknown
fields are errors) against the given Kubernetes version; kinds defined by a
CRD in --crds are checked against that CRD's openAPIV3Schema as the API server
applies a structural schema with strict field validation (kubectl's default):
a field the schema does not declare is an error unless its object preserves
unknown fields, `null` counts as absent unless the field is nullable, and
x-kubernetes-int-or-string admits both. Files may hold
YAML documents, JSON, `*List` objects (items of core lists carry no kind, as
the API server returns them: it is taken from the list) and watch events
(`{"type": ..., "object": ...}`). Exit status 1 names every invalid object,
with the path of the first invalid field; --json prints one JSON line per
object instead (file, kind, namespace, name, errors).

usage: k8s-validate.py [--crds DIR]... [-k VERSION] [--json] FILE...
"""

import argparse
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


def load_crds(dirs):
    schemas = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.yaml"))):
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    if not doc or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    spec = doc["spec"]
                    for v in spec["versions"]:
                        api = f"{spec['group']}/{v['name']}"
                        schema = strict(v["schema"]["openAPIV3Schema"])
                        schemas[(api, spec["names"]["kind"])] = schema
    return schemas


def strict(schema, skeleton=True):
    """A structural schema as JSON Schema with the API server's strictness.

    Only the skeleton (properties, items, additionalProperties) declares fields;
    the branches of allOf/anyOf/oneOf/not only constrain values."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("properties", "patternProperties"):
            out[k] = {name: strict(sub, skeleton) for name, sub in v.items()}
        elif k in ("items", "additionalProperties"):
            out[k] = strict(v, skeleton)
        elif k == "not":
            out[k] = strict(v, False)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [strict(sub, False) for sub in v]
        else:
            out[k] = v
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if skeleton and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def prune_nulls(value, schema):
    """Drops `null` fields that the schema does not declare nullable, as the API server does."""
    if isinstance(value, dict):
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        extra = schema.get("additionalProperties") if isinstance(schema, dict) else None
        out = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else {})
            nullable = isinstance(sub, dict) and isinstance(sub.get("type"), list) and "null" in sub["type"]
            if v is None and not nullable:
                continue
            out[k] = prune_nulls(v, sub)
        return out
    if isinstance(value, list):
        items = schema.get("items", {}) if isinstance(schema, dict) else {}
        return [prune_nulls(v, items) for v in value]
    return value


def objects(value):
    """Yields every object in a document: lists flattened, watch events unwrapped."""
    if not isinstance(value, dict):
        return
    if "object" in value and value.get("type") in ("ADDED", "MODIFIED", "DELETED"):
        yield from objects(value["object"])
        return
    kind = value.get("kind", "")
    if kind.endswith("List") and "items" in value:
        for item in value["items"]:
            item = dict(item)
            item.setdefault("kind", kind[: -len("List")])
            item.setdefault("apiVersion", value.get("apiVersion", "v1"))
            yield from objects(item)
        return
    yield value


def field_path(parts):
    """`spec.ingress[0].toPorts`, as Kubernetes names fields."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crds", action="append", default=[])
    ap.add_argument("-k", "--kubernetes-version", default="1.34.0")
    ap.add_argument("--json", action="store_true", help="one JSON line per object")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    crds = load_crds(args.crds)
    checked, failures = 0, []
    for path in args.files:
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            for obj in objects(doc):
                meta = obj.get("metadata", {})
                name = f"{path}: {obj.get('kind')} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta.get('name')}"
                checked += 1
                key = (obj.get("apiVersion"), obj.get("kind"))
                errors = []
                try:
                    if key in crds:
                        schema = crds[key]
                        validator = jsonschema.Draft7Validator(schema)
                        for e in sorted(validator.iter_errors(prune_nulls(obj, schema)), key=str):
                            errors.append(f"{field_path(e.absolute_path)}: {e.message}")
                    else:
                        kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
                except Exception as e:  # every kind of failure names the object
                    msg = getattr(e, "message", None) or str(e)
                    errors.append(f"{field_path(getattr(e, 'absolute_path', []) or [])}: {msg}")
                failures.extend(f"{name}: {err}" for err in errors)
                if args.json:
                    print(json.dumps({"file": path, "kind": obj.get("kind"),
                                      "namespace": meta.get("namespace"),
                                      "name": meta.get("name"), "errors": errors}))
    for line in failures if not args.json else []:
        print(line)
    print(f"k8s-validate: {checked} objects checked, {len(failures)} invalid")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
