#!/usr/bin/env python3
"""Vendors the part of an operator's CRD that deploy/check.py needs.

    python3 vendor.py CRD.yaml SOURCE OUT.yaml [--prune spec.override ...]

Takes the served storage version's openAPIV3Schema from CRD.yaml, keeps
`spec` (drops `status`, which a manifest never sets), removes every
`description` (most of the size), and replaces each --prune path, a field
our manifests do not use, by an object that accepts anything. Writes OUT.yaml
with a header naming SOURCE (repository, tag, commit, path) so that an update
is the same command on the newer file. The CRDs are not fetched here: check
the operator's repository out at the release you install and point at its
config/crd/bases/ file.
"""
import argparse
import sys

import yaml


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("crd")
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--prune", action="append", default=[])
    args = parser.parse_args()

    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    version = next(v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage"))
    schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    for path in args.prune:
        parent, _, leaf = path.rpartition(".")
        node = schema
        for part in parent.split("."):
            node = node["properties"][part]
        if leaf not in node["properties"]:
            sys.exit(f"--prune {path}: no such field")
        node["properties"][leaf] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-vendored-pruned": True,
        }

    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    header = [
        f"# openAPIV3Schema of {kind} ({group}/{version['name']}), vendored by",
        "# deploy/schemas/vendor.py for deploy/check.py.",
        f"# Source: {args.source}",
        "# Kept: spec (descriptions removed). Dropped: status.",
    ]
    if args.prune:
        header.append("# Pruned to 'any object' (not used by our manifests): " + ", ".join(args.prune))
    document = {"group": group, "kind": kind, "version": version["name"], "openAPIV3Schema": schema}
    with open(args.out, "w") as f:
        f.write("\n".join(header) + "\n")
        yaml.safe_dump(document, f, sort_keys=True, width=100)


if __name__ == "__main__":
    main()
