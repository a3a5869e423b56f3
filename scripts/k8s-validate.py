#!/usr/bin/env python3
"""Validates Kubernetes objects offline.

Core and built-in kinds are checked with kubernetes-validate (strict: unknown
fields are errors) against the given Kubernetes version; kinds defined by a
CRD in --crds are checked against that CRD's openAPIV3Schema. Files may hold
YAML documents, JSON, `*List` objects (items of core lists carry no kind, as
the API server returns them: it is taken from the list) and watch events
(`{"type": ..., "object": ...}`). Exit status 1 names every invalid object.

usage: k8s-validate.py [--crds DIR]... [-k VERSION] FILE...
"""

import argparse
import glob
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
                        schemas[(api, spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return schemas


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crds", action="append", default=[])
    ap.add_argument("-k", "--kubernetes-version", default="1.34.0")
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
                try:
                    if key in crds:
                        jsonschema.validate(obj, crds[key])
                    else:
                        kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
                except Exception as e:  # every kind of failure names the object
                    msg = getattr(e, "message", None) or str(e)
                    where = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
                    failures.append(f"{name}: {where}: {msg}")
    for line in failures:
        print(line)
    print(f"k8s-validate: {checked} objects checked, {len(failures)} invalid")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
