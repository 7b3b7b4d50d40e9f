#!/usr/bin/env bash
# The test command of README.md: set-up, lint, types, then every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check kupd tests bench
.venv/bin/mypy kupd bench
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure here.
[ "$rc" -eq 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
