#!/usr/bin/env bash
# Set up a fresh machine for kupd's demo and tests: Debian packages, the Python venv and the
# Go build of the real control plane (cached in ~/.cache/kupd). Idempotent and quick when warm.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
mapfile -t pkgs < <(grep -v '^\s*#' .ci/apt-packages.txt | sed 's/#.*//; s/\s*$//; /^\s*$/d')
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  # Debian's python3 with system site-packages: python3-apt and python3-systemd come from the distribution.
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
bash tests/controlplane/build.sh >/dev/null
