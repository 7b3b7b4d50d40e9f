# Shared by build-deb.sh and build-rpm.sh (sourced). Copies the package's sources into a
# cache folder named after their hash, so an unchanged tree reuses the package built before.
set -eu
KUPD_SRC=$(cd "$(dirname "$0")/.." && pwd)
KUPD_CACHE=${KUPD_CACHE:-${HOME:-/root}/.cache/kupd}
# What goes into a package; anything else in the work tree (venvs, caches, tests) does not.
KUPD_PKG_INPUTS="kupd crds examples systemd debian packaging cloud-init docs/usage/install.md pyproject.toml rpm.spec LICENSE CHANGELOG.md"

kupd_sources_hash() {
    (cd "$KUPD_SRC" && find $KUPD_PKG_INPUTS -type f \
        ! -path '*/__pycache__/*' ! -path 'debian/kupd/*' ! -path 'debian/.*' \
        ! -name '*.pyc' ! -path 'debian/files' ! -name '*.substvars' ! -name 'debhelper-build-stamp' \
        ! -name '*.debhelper' ! -name '*.debhelper.log' -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# kupd_wheelhouse PYVERSION: the wheelhouse for one CPython version (named after the lock).
kupd_wheelhouse() {
    echo "$KUPD_CACHE/wheelhouse/cp$1-$(cat "$KUPD_SRC/packaging/requirements.lock" \
        "$KUPD_SRC/packaging/build-requirements.txt" | sha256sum | cut -c1-16)"
}

# kupd_stage DEST: a clean copy of the package inputs
kupd_stage() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$KUPD_SRC" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude=debian/kupd \
        --exclude=debian/.build --exclude=debian/.debhelper $KUPD_PKG_INPUTS) | tar -xf - -C "$1"
}

# The Debian mirror this host's apt uses (deb822 or one-line sources), for debootstrap.
kupd_host_mirror() {
    sed -n -e 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/\{0,1\}[[:space:]]*$|\1|p' \
        -e 's|^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*/debian\)/\{0,1\}[[:space:]].*|\2|p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | head -1 | grep . || echo http://deb.debian.org/debian
}

# kupd_build_root SUITE MIRROR: a debootstrapped root of that release with the build
# dependencies of debian/control, cached under a hash of what goes into it; prints its path.
KUPD_BUILD_ROOT_PACKAGES="build-essential,debhelper,python3,python3-venv"
kupd_build_root() {
    key=$(printf '%s\n' "$1" "$2" "$KUPD_BUILD_ROOT_PACKAGES" | sha256sum | cut -c1-16)
    root="$KUPD_CACHE/buildroot-$1-$key"
    if [ ! -e "$root/.complete" ]; then
        mkdir -p "$KUPD_CACHE"
        (
            flock 9
            if [ ! -e "$root/.complete" ]; then
                rm -rf "$root.tmp"
                echo "build-deb: debootstrap $1 from $2 into $root (once; a minute or two)" >&2
                debootstrap --variant=minbase --include="$KUPD_BUILD_ROOT_PACKAGES" "$1" "$root.tmp" "$2" \
                    >"$KUPD_CACHE/buildroot-$1-$key.log" 2>&1 || {
                    tail -20 "$KUPD_CACHE/buildroot-$1-$key.log" >&2
                    exit 1
                }
                rm -rf "$root.tmp/var/cache/apt/archives"/*.deb
                touch "$root.tmp/.complete"
                rm -rf "$root"
                mv "$root.tmp" "$root"
            fi
        ) 9>"$KUPD_CACHE/.buildroot-$1.lock"
    fi
    echo "$root"
}
