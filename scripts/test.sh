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
# A whole-suite run builds the later tiers' parts in the background (scripts/prebuild.sh, lowest
# priority) while the earlier tiers run; the tiers run unit, cluster, host, system, bench, then
# realcluster (tests/conftest.py), so on a cold machine the builds are done by the time the
# realcluster tier needs them. On a warm machine it finds everything cached in seconds.
prebuild=
if [ "$#" -eq 0 ] && [ "${KUPD_SKIP_REALCLUSTER:-0}" != 1 ]; then
  log="${KUPD_CACHE:-$HOME/.cache/kupd}/prebuild.log"
  mkdir -p "$(dirname "$log")"
  setsid nice -n 19 ionice -c 3 bash scripts/prebuild.sh "$log" </dev/null &
  prebuild=$!
  echo "building the realcluster tier's parts in the background; log: $log" >&2
fi
.venv/bin/pytest "${extra[@]}" "$@"
rc=$?
if [ -n "$prebuild" ]; then
  kill -- -"$prebuild" 2>/dev/null
  wait "$prebuild" 2>/dev/null
  sed -n 's/^prebuild: //p' "$log" | grep -v '\.\.\.$' >&2
fi
set -e
# pytest's 5 means no test ran: that is a failure here.
[ "$rc" -eq 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
