#!/usr/bin/env python3
"""Writes a go.mod that builds binaries of k8s.io/kubernetes at a given version.

k8s.io/kubernetes replaces every k8s.io/<staging> module with a folder of its own repository,
which a dependent module cannot see; this pins each of them to its published v0.X.Y instead,
reading the list from upstream's own go.mod so that new staging modules are never missed.
Usage: gomod.py UPSTREAM_GO_MOD K8S_VERSION GO_VERSION > go.mod
"""
import re
import sys

upstream, version, go_version = sys.argv[1], sys.argv[2], sys.argv[3]
staging_version = "v0." + version.lstrip("v").split(".", 1)[1]
text = open(upstream).read()
staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", text, re.M)))
if not staging:
    sys.exit(f"no staging replace directives found in {upstream}")
print("module weir.dev/stack/k8s\n")
print(f"go {go_version}\n")
print(f"require k8s.io/kubernetes {version}\n")
print("replace (")
for mod in staging:
    print(f"\t{mod} => {mod} {staging_version}")
print(")")
