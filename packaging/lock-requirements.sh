#!/bin/sh
# Regenerate packaging/requirements.lock: the pinned closure of pyproject.toml's
# [project.dependencies] — what kupd imports at run time, never the test extras — as pip
# resolves it today from PyPI, for every Python the packages are built for (the union; one
# version per distribution, so the lock must agree across them). Network: PyPI.
# Usage: packaging/lock-requirements.sh [PYTHON_VERSION ...]   (default: 3.11 3.13)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
versions=${*:-3.11 3.13}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$here/../pyproject.toml" >"$tmp/direct.txt" <<'EOF'
import sys, tomllib
for dep in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    print(dep)
EOF
for v in $versions; do
    # --dry-run --report: resolve for that Python and manylinux x86_64 without installing.
    python3 -m pip install --disable-pip-version-check --quiet --dry-run --ignore-installed \
        --only-binary=:all: --python-version "$v" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --target "$tmp/target-$v" --report "$tmp/report-$v.json" -r "$tmp/direct.txt"
done
python3 - "$tmp" $versions >"$tmp/lock" <<'EOF'
import json, sys
pins: dict[str, set[str]] = {}
for v in sys.argv[2:]:
    for item in json.load(open(f"{sys.argv[1]}/report-{v}.json"))["install"]:
        meta = item["metadata"]
        pins.setdefault(meta["name"], set()).add(meta["version"])
split = {name: vs for name, vs in pins.items() if len(vs) > 1}
if split:
    sys.exit(f"lock-requirements: the Pythons resolve different versions: {split}")
print("# Pinned runtime closure of pyproject.toml [project.dependencies] (what kupd imports; the")
print("# test extras never), installed into the private venv of the .deb/.rpm")
print("# (packaging/install-tree.sh). Resolved for CPython " + ", ".join(sys.argv[2:]) + " on manylinux x86_64.")
print("# Regenerate: packaging/lock-requirements.sh")
for name in sorted(pins, key=str.lower):
    print(f"{name}=={pins[name].pop()}")
EOF
mv "$tmp/lock" "$here/requirements.lock"
echo "lock-requirements: $(grep -vc '^#' "$here/requirements.lock") pins written to packaging/requirements.lock" >&2
