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
# One build at a time per output: CI's background prebuild (scripts/prebuild.sh) and a test may
# ask for the same binary at once; the second waits for the first and reuses its result.
mkdir -p "$cache"
exec 9>"$cache/.testcp-$hash.lock"
flock 9
if [ ! -x "$out" ]; then
  echo "building kupd-testcp: a cold build takes about 12 minutes on 2 cores (later builds reuse Go's" \
       "build cache and take a minute or two); the binary is cached in $cache" >&2
  mkdir -p "$cache/testcp-$hash"
  start=$(date +%s)
  # Progress (tests/controlplane/progress.py, outside this file's cache key): the package graph
  # first (a first run downloads the modules here), then packages compiled out of its size.
  progress=(python3 "$here/progress.py" --label kupd-testcp)
  (cd "$here" && GOFLAGS=-mod=mod go list -deps . >"$cache/testcp-$hash/deps.txt") 2>&1 | "${progress[@]}"
  total=$(wc -l <"$cache/testcp-$hash/deps.txt")
  echo "kupd-testcp: compiling up to $total packages" >&2
  # The release's version, as the upstream build stamps it: kupd's skew checks read /version.
  k8s=$(cd "$here" && awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
  minor=$(echo "$k8s" | cut -d. -f2)
  vpkg=k8s.io/component-base/version
  (cd "$here" && GOFLAGS=-mod=mod go build -v \
    -ldflags="-s -w -X $vpkg.gitVersion=$k8s -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    -o "$out.tmp" .) 2>&1 | "${progress[@]}" --total "$total"
  mv "$out.tmp" "$out"
  echo "built kupd-testcp in $(( $(date +%s) - start ))s" >&2
fi
mkdir -p "$here/bin"
ln -sfn "$out" "$here/bin/kupd-testcp"
echo "$here/bin/kupd-testcp"
