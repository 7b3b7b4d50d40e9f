#!/usr/bin/env bash
# The test command of README.md: set-up, lint, types, then every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check kupd tests bench
.venv/bin/mypy kupd bench
set +e
# The realcluster tier (a kubeadm cluster in nspawn nodes: ~16 min warm, ~35 min of builds cold)
# runs when asked for: KUPD_REALCLUSTER=1 bash scripts/test.sh [tests/realcluster]. It is out of the
# default run until it has been re-run against the merged coordinator (docs/development/testing.md).
extra=()
[ "${KUPD_REALCLUSTER:-0}" = 1 ] || extra+=(--ignore=tests/realcluster)
.venv/bin/pytest "${extra[@]}" "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure here.
[ "$rc" -eq 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
