#!/usr/bin/env python3
"""Builds a kustomization offline: the subset of kustomize that manifests/ uses.

kustomize (and `kubectl kustomize`) is not installed where `make test` runs, so
this builds the overlays for the offline checks. Supported, with kustomize's
meaning:
  resources:   files (YAML documents) and directories holding a Kustomization;
  components:  directories holding a Component (kustomize.config.k8s.io/v1alpha1),
               whose resources are added and whose patches apply to everything
               accumulated so far;
  patches:     `path:` or inline `patch:`, either a JSON6902 list (add, remove,
               replace, test) applied to every object its `target` selects (kind,
               name, namespace; selecting none is no error, as in kustomize), or
               a strategic-merge patch that is `$patch: delete` of one object.
Any other field, op or patch shape is an error naming it, so a kustomization
that needs real kustomize says so instead of building wrong.

usage: kustomize-build.py DIR   (prints the objects as YAML documents)
"""

import copy
import os
import sys

import yaml

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "patches"}


class BuildError(Exception):
    pass


def load_kustomization(d, want_kind):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(d, name)
        if os.path.exists(path):
            with open(path) as f:
                k = yaml.safe_load(f) or {}
            kind = k.get("kind", "Kustomization")
            if kind != want_kind:
                raise BuildError(f"{path}: kind {kind}, expected {want_kind}")
            unknown = set(k) - KUSTOMIZATION_FIELDS
            if unknown:
                raise BuildError(f"{path}: unsupported fields {sorted(unknown)}")
            return path, k
    raise BuildError(f"{d}: no kustomization.yaml")


def load_file(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def build(d, want_kind="Kustomization", objs=None):
    path, k = load_kustomization(d, want_kind)
    objs = [] if objs is None else objs
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(p):
            objs.extend(build(p))
        elif os.path.isfile(p):
            objs.extend(load_file(p))
        else:
            raise BuildError(f"{path}: resource {r}: no such file or directory")
    for c in k.get("components", []):
        p = os.path.normpath(os.path.join(d, c))
        if not os.path.isdir(p):
            raise BuildError(f"{path}: component {c}: not a directory")
        objs = build(p, "Component", objs)
    for i, patch in enumerate(k.get("patches", [])):
        objs = apply_patch(objs, patch, d, f"{path}: patches[{i}]")
    return objs


def apply_patch(objs, patch, d, where):
    unknown = set(patch) - {"path", "patch", "target"}
    if unknown:
        raise BuildError(f"{where}: unsupported fields {sorted(unknown)}")
    if "path" in patch:
        with open(os.path.join(d, patch["path"])) as f:
            body = yaml.safe_load(f)
        where = f"{where} ({patch['path']})"
    elif "patch" in patch:
        body = yaml.safe_load(patch["patch"])
    else:
        raise BuildError(f"{where}: neither path nor patch")
    if isinstance(body, list):
        target = patch.get("target")
        if not target:
            raise BuildError(f"{where}: a JSON6902 patch needs a target")
        out = []
        for o in objs:
            if selects(target, o):
                o = json6902(copy.deepcopy(o), body, f"{where} on {describe(o)}")
            out.append(o)
        return out
    if isinstance(body, dict) and body.get("$patch") == "delete":
        key = identity(body)
        kept = [o for o in objs if identity(o) != key]
        if len(kept) != len(objs) - 1:
            raise BuildError(f"{where}: no unique object {key} to delete")
        return kept
    raise BuildError(f"{where}: only JSON6902 lists and `$patch: delete` are supported")


def identity(o):
    m = o.get("metadata", {})
    return (o.get("apiVersion"), o.get("kind"), m.get("namespace"), m.get("name"))


def describe(o):
    m = o.get("metadata", {})
    ns = f"{m['namespace']}/" if m.get("namespace") else ""
    return f"{o.get('kind')} {ns}{m.get('name')}"


def selects(target, o):
    unknown = set(target) - {"kind", "name", "namespace"}
    if unknown:
        raise BuildError(f"target: unsupported fields {sorted(unknown)}")
    m = o.get("metadata", {})
    return all(
        target[k] == (o.get("kind") if k == "kind" else m.get(k)) for k in target
    )


def json6902(doc, ops, where):
    for i, op in enumerate(ops):
        here = f"{where}: op {i} ({op.get('op')} {op.get('path')})"
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            raise BuildError(f"{here}: the whole document cannot be patched")
        parent = doc
        for p in parts[:-1]:
            parent = step(parent, p, here)
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            if step(parent, last, here) != op["value"]:
                raise BuildError(f"{here}: found {step(parent, last, here)!r}, expected {op['value']!r}")
        elif kind == "add":
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else index(parent, last, here, insert=True)
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(op["value"])
            else:
                raise BuildError(f"{here}: parent is not a list or a map")
        elif kind in ("remove", "replace"):
            step(parent, last, here)  # must exist
            key = index(parent, last, here) if isinstance(parent, list) else last
            if kind == "remove":
                del parent[key]
            else:
                parent[key] = copy.deepcopy(op["value"])
        else:
            raise BuildError(f"{here}: unsupported op")
    return doc


def index(lst, p, where, insert=False):
    try:
        i = int(p)
    except ValueError:
        raise BuildError(f"{where}: {p!r} is not a list index") from None
    if not 0 <= i <= len(lst) - (0 if insert else 1):
        raise BuildError(f"{where}: index {i} out of range (length {len(lst)})")
    return i


def step(node, p, where):
    if isinstance(node, list):
        return node[index(node, p, where)]
    if isinstance(node, dict):
        if p not in node:
            raise BuildError(f"{where}: no field {p!r}")
        return node[p]
    raise BuildError(f"{where}: cannot descend into {type(node).__name__}")


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objs = build(sys.argv[1])
    except (BuildError, OSError, yaml.YAMLError) as e:
        print(f"kustomize-build: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
