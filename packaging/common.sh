# Shared by build-deb.sh and build-rpm.sh (sourced). Copies the package's sources into a
# cache folder named after their hash, so an unchanged tree reuses the package built before.
set -eu
KUPD_SRC=$(cd "$(dirname "$0")/.." && pwd)
KUPD_CACHE=${KUPD_CACHE:-${HOME:-/root}/.cache/kupd}
# What goes into a package; anything else in the work tree (venvs, caches, tests) does not.
KUPD_PKG_INPUTS="kupd crds systemd debian packaging cloud-init docs/usage/install.md pyproject.toml rpm.spec"
KUPD_WHEELHOUSE=${KUPD_WHEELHOUSE:-$KUPD_CACHE/wheelhouse/$(cat "$KUPD_SRC/packaging/requirements.lock" \
    "$KUPD_SRC/packaging/build-requirements.txt" | sha256sum | cut -c1-16)}
export KUPD_WHEELHOUSE

kupd_sources_hash() {
    (cd "$KUPD_SRC" && find $KUPD_PKG_INPUTS -type f \
        ! -path '*/__pycache__/*' ! -path 'debian/kupd/*' ! -path 'debian/.*' \
        ! -name '*.pyc' ! -path 'debian/files' ! -name '*.substvars' ! -name 'debhelper-build-stamp' \
        ! -name '*.debhelper' ! -name '*.debhelper.log' -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# kupd_stage DEST: a clean copy of the package inputs
kupd_stage() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$KUPD_SRC" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude=debian/kupd \
        --exclude=debian/.build --exclude=debian/.debhelper $KUPD_PKG_INPUTS) | tar -xf - -C "$1"
}
