#!/bin/sh
# lintian on a built .deb: fails on any error, shows warnings. The report is cached next to the
# .deb (lintian takes minutes on the 7000 files of the venv). Usage: lint-deb.sh DEB
set -eu
deb=${1:?usage: lint-deb.sh DEB}
report="${deb%.deb}.lintian.txt"
if [ ! -e "$report" ]; then
    lintian --fail-on error --pedantic --display-info "$deb" >"$report.tmp" 2>&1 || {
        cat "$report.tmp"
        echo "lint-deb: lintian reported errors for $deb" >&2
        exit 1
    }
    mv "$report.tmp" "$report"
fi
cat "$report"
echo "lint-deb: $(grep -c '^E:' "$report" || true) errors, $(grep -c '^W:' "$report" || true) warnings"
