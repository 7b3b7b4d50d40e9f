#!/bin/sh
# Build kupd_*.deb (dpkg-buildpackage -us -uc -b) in a cached copy of the sources; prints the
# .deb's path on the last line (packaging/lint-deb.sh checks it). A tree whose package inputs did not
# change reuses the .deb built before (KUPD_REBUILD=1 forces a build).
. "$(dirname "$0")/common.sh"
hash=$(kupd_sources_hash)
out="$KUPD_CACHE/deb/$hash"
deb=$(ls "$out"/kupd_*.deb 2>/dev/null | head -1 || true)
if [ -n "$deb" ] && [ -z "${KUPD_REBUILD:-}" ]; then
    echo "$deb"
    exit 0
fi
"$KUPD_SRC/packaging/fetch-wheels.sh" "$KUPD_WHEELHOUSE" >&2
work="$KUPD_CACHE/deb-build/$hash"
kupd_stage "$work/kupd"
(cd "$work/kupd" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed; full log: $work/build.log" >&2
    exit 1
}
mkdir -p "$out"
rm -f "$out"/*
mv "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes "$out"/
deb=$(ls "$out"/kupd_*.deb | head -1)
rm -rf "$work"
echo "$deb"
