#!/usr/bin/env bash
# The main job of README.md: a real local control plane and simulated nodes upgraded live.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kupd demo --control-plane-binary "$(bash tests/controlplane/build.sh)" --crds crds "$@"
