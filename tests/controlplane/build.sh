#!/usr/bin/env bash
# Build (or reuse) kupd-testcp: embedded etcd + upstream kube-apiserver,
# kube-controller-manager and kubectl from the pinned Kubernetes release in go.mod.
# The binary is cached outside the work tree under a hash of the sources, so a fresh
# clone on the same machine reuses it; tests/controlplane/bin/ (gitignored) links to it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KUPD_CACHE:-$HOME/.cache/kupd}
hash=$(cd "$here" && cat go.mod go.sum ./*.go build.sh | sha256sum | cut -c1-16)
out="$cache/testcp-$hash/kupd-testcp"
if [ ! -x "$out" ]; then
  echo "building kupd-testcp (cold builds take 10-20 minutes; cached in $cache)" >&2
  mkdir -p "$cache/testcp-$hash"
  start=$(date +%s)
  # The release's version, as the upstream build stamps it: kupd's skew checks read /version.
  k8s=$(cd "$here" && awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
  minor=$(echo "$k8s" | cut -d. -f2)
  vpkg=k8s.io/component-base/version
  (cd "$here" && GOFLAGS=-mod=mod go build \
    -ldflags="-s -w -X $vpkg.gitVersion=$k8s -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "built kupd-testcp in $(( $(date +%s) - start ))s" >&2
fi
mkdir -p "$here/bin"
ln -sfn "$out" "$here/bin/kupd-testcp"
echo "$here/bin/kupd-testcp"
