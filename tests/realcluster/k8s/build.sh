#!/usr/bin/env bash
# Build (or reuse) kupd-k8s for one Kubernetes release: build.sh v1.37.2 [STAMP]
# The release's go.mod/go.sum live in <release>/ next to this script; main.go is shared.
# STAMP (default: the release) is the version the binary reports, as the upstream build stamps
# it: the tier's patch-stamp fallback links one release's source twice under two stamps.
# The binary is cached outside the work tree under a hash of its inputs and printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
release=${1:?usage: build.sh RELEASE [STAMP]}
stamp=${2:-$release}
[[ "$stamp" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "bad stamp $stamp" >&2; exit 2; }
src="$here/$release"
[ -f "$src/go.mod" ] || { echo "no go.mod for $release in $src" >&2; exit 2; }
cache=${KUPD_CACHE:-$HOME/.cache/kupd}
hash=$( (cd "$src" && cat go.mod go.sum; cat "$here/main.go" "$here/build.sh"; echo "$stamp") | sha256sum | cut -c1-16)
out="$cache/k8s-$stamp-$hash/kupd-k8s"
# One build at a time per output (CI's background prebuild and the tier may ask at once).
mkdir -p "$cache"
exec 9>"$cache/.k8s-$stamp-$hash.lock"
flock 9
if [ ! -x "$out" ]; then
  echo "building kupd-k8s $release as $stamp (cold: 15-30 minutes; cached in $cache)" >&2
  mkdir -p "$(dirname "$out")"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp "$here/main.go" "$src/go.mod" "$src/go.sum" "$work/"
  start=$(date +%s)
  minor=$(echo "$stamp" | cut -d. -f2)
  vpkg=k8s.io/component-base/version
  # The same build settings as tests/controlplane/build.sh, so the two share Go's build cache.
  (cd "$work" && GOFLAGS=-mod=mod go build \
    -ldflags="-s -w -X $vpkg.gitVersion=$stamp -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "built kupd-k8s $stamp in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
