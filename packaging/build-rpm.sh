#!/bin/sh
# Build kupd-*.rpm (rpmbuild -bb rpm.spec) in a cached copy of the sources; prints the .rpm's
# path on the last line. An unchanged tree reuses the .rpm built before (KUPD_REBUILD=1 forces).
. "$(dirname "$0")/common.sh"
hash=$(kupd_sources_hash)
out="$KUPD_CACHE/rpm/$hash"
rpmfile=$(ls "$out"/kupd-*.rpm 2>/dev/null | head -1 || true)
if [ -n "$rpmfile" ] && [ -z "${KUPD_REBUILD:-}" ]; then
    echo "$rpmfile"
    exit 0
fi
# The RHEL 9 family's python3.11 (its python3 is 3.9); this host's python3.11 builds the venv.
pyver=3.11
wh=$(kupd_wheelhouse "$pyver")
"$KUPD_SRC/packaging/fetch-wheels.sh" "$wh" "$pyver" >&2
work="$KUPD_CACHE/rpm-build/$hash"
kupd_stage "$work/kupd"
rpmbuild -bb --define "_topdir $work/rpmbuild" --define "_sourcedir $work/kupd" \
    --define "kupd_wheelhouse $wh" --define "kupd_python /usr/bin/python$pyver" "$work/kupd/rpm.spec" >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    echo "build-rpm: rpmbuild failed; full log: $work/build.log" >&2
    exit 1
}
mkdir -p "$out"
rm -f "$out"/*
mv "$work"/rpmbuild/RPMS/*/kupd-*.rpm "$out"/
rm -rf "$work"
ls "$out"/kupd-*.rpm | head -1
