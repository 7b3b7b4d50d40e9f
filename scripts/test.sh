#!/usr/bin/env bash
# The test command of README.md: set-up, lint, types, then every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check kupd tests bench
.venv/bin/mypy kupd bench
set +e
# Every tier runs, the realcluster tier too (a kubeadm cluster in nspawn nodes upgraded by kupd;
# docs/development/testing.md has its times). KUPD_SKIP_REALCLUSTER=1 leaves it out, e.g. while
# iterating on another tier; CI never sets it.
extra=()
[ "${KUPD_SKIP_REALCLUSTER:-0}" = 1 ] && extra+=(--ignore=tests/realcluster)
.venv/bin/pytest "${extra[@]}" "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure here.
[ "$rc" -eq 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
