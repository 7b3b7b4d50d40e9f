#!/usr/bin/env bash
# Build what the later test tiers need while the earlier ones run: the realcluster tier's Go
# builds (Kubernetes, containerd, crictl, etcdutl), its packages and images, kupd's .deb and the
# nspawn base image. scripts/test.sh starts this in the background for a whole-suite run, at
# the lowest CPU and I/O priority, so a cold machine spends the tests' idle CPU on the builds
# instead of building after them. Every build it starts is cached by its inputs and locked per
# output: a test that needs one while it is being built waits for it and reuses it; a build that
# fails here is simply done again (and reported) by the test that needs it.
# Usage: scripts/prebuild.sh LOG
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: prebuild.sh LOG}
exec >"$log" 2>&1
export GOFLAGS=${GOFLAGS:--buildvcs=false}
step() {
  local start=$SECONDS
  echo "prebuild: $* ..."
  if "$@"; then
    echo "prebuild: $* done in $((SECONDS - start))s"
  else
    echo "prebuild: $* FAILED after $((SECONDS - start))s (the test that needs it builds it again)"
  fi
}
step .venv/bin/python -m tests.realcluster.artifacts
step packaging/build-deb.sh bookworm
step .venv/bin/python -m tests.system.nspawn base
echo "prebuild: finished"
