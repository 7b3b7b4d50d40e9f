#!/bin/sh
# rpmlint on a built .rpm with kupd's configuration (packaging/rpmlint.toml: what is filtered
# and why). Fails on any error or warning left. Usage: lint-rpm.sh RPM
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rpm=${1:?usage: lint-rpm.sh RPM}
out=$(rpmlint -c "$here/rpmlint.toml" "$rpm" 2>&1) || true
printf '%s\n' "$out"
summary=$(printf '%s\n' "$out" | tail -1)
case "$summary" in
    *" 0 errors, 0 warnings"*) exit 0 ;;
    *) echo "lint-rpm: rpmlint reported findings for $rpm" >&2; exit 1 ;;
esac
