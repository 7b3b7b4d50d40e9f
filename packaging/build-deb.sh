#!/bin/sh
# Build kupd's .deb for one distribution release, inside a root of that release (debootstrap)
# against its own python3, offline (wheels fetched beforehand, no network in the build).
# Prints the .deb's path on the last line (packaging/lint-deb.sh checks it).
# Usage: packaging/build-deb.sh [SUITE [MIRROR]]
#   SUITE   a release this host's debootstrap knows: bookworm, trixie, jammy, ... (default: the host's)
#   MIRROR  that release's archive (default: the host's Debian mirror; Ubuntu: http://archive.ubuntu.com/ubuntu)
# The version gets the release's tag (0.1.0+deb12, 0.1.0+deb13, 0.1.0+ubuntu22.04), so one
# repository can carry them all. Cached: the build root (~/.cache/kupd/buildroot-SUITE-<hash>)
# and the .deb (~/.cache/kupd/deb/SUITE-<hash of the package inputs>); KUPD_REBUILD=1 forces.
. "$(dirname "$0")/common.sh"
suite=${1:-${KUPD_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}}
mirror=${2:-${KUPD_MIRROR:-$(kupd_host_mirror)}}
hash=$(kupd_sources_hash)
out="$KUPD_CACHE/deb/$suite-$hash"
# One build at a time per output: two builds of the same inputs would share $work (CI's
# background prebuild and the system tier may ask at once); the second reuses the first's .deb.
mkdir -p "$KUPD_CACHE/deb"
exec 8>"$out.lock"
flock 8
deb=$(ls "$out"/kupd_*.deb 2>/dev/null | head -1 || true)
if [ -n "$deb" ] && [ -z "${KUPD_REBUILD:-}" ]; then
    echo "$deb"
    exit 0
fi
root=$(kupd_build_root "$suite" "$mirror")
pyver=$(chroot "$root" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
tag=$(. "$root/etc/os-release" && case "$ID" in debian) echo "deb${VERSION_ID:-}";; *) echo "$ID${VERSION_ID:-}";; esac)
wh=$(kupd_wheelhouse "$pyver")
"$KUPD_SRC/packaging/fetch-wheels.sh" "$wh" "$pyver" >&2
work="$KUPD_CACHE/deb-build/$suite-$hash"
kupd_stage "$work/kupd"
# The release's version and distribution in the staged changelog only.
sed -i "1s/^kupd (\([^)]*\)) [^;]*;/kupd (\1+$tag) $suite;/" "$work/kupd/debian/changelog"
systemd-nspawn --quiet --register=no --keep-unit --private-network --directory="$root" \
    --bind="$work:/build" --bind-ro="$wh:/wheelhouse" --setenv=KUPD_WHEELHOUSE=/wheelhouse \
    --setenv=HOME=/build --setenv=LC_ALL=C.UTF-8 --chdir=/build/kupd \
    dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage in $suite failed; full log: $work/build.log" >&2
    exit 1
}
mkdir -p "$out"
rm -f "$out"/*
mv "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes "$out"/
cp "$work/build.log" "$out/build.log"
deb=$(ls "$out"/kupd_*.deb | head -1)
rm -rf "$work"
echo "$deb"
