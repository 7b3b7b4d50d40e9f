#!/bin/sh
# Lay out kupd's installed files under DESTDIR; shared by debian/rules and rpm.spec so the
# .deb and the .rpm have the same layout:
#   /usr/bin/kupd                          wrapper -> the private venv
#   /usr/lib/kupd/venv                     venv of KUPD_PYTHON (default: the release's python3),
#                                          --system-site-packages, with kupd
#                                          and its pinned dependencies (packaging/requirements.lock)
#   /usr/lib/kupd/config.d/00-defaults.toml
#   UNITDIR/kupd.service, /usr/lib/tmpfiles.d/kupd.conf
#   /etc/kupd/config.d, /var/lib/kupd      (empty; the operator's config, the daemon's state)
#   /usr/share/kupd/crds/*.yaml            CustomResourceDefinitions for kubectl apply
#   /usr/share/kupd/rbac/*.yaml            namespace, roles, admission policies (docs/usage/security.md)
#   /usr/share/kupd/examples/*.yaml        sample DirectUpdate/ScheduledUpdate/UpdateSchedule
#   /usr/share/kupd/examples/cloud-init/user-data.yaml
#                                          the package manager's variant (CLOUDINIT: apt or dnf)
#   /usr/share/kupd/grafana/kupd.json      Grafana dashboard (docs/usage/metrics.md)
#   /usr/share/kupd/prometheus/kupd-rules.yaml  Prometheus alerting rules
#   /usr/share/man/man1/kupd*.1.gz, bash and zsh completion (generated from the argument parser)
# Usage: install-tree.sh DESTDIR UNITDIR WHEELHOUSE BUILDDIR CLOUDINIT
set -eu
destdir=${1:?DESTDIR}; unitdir=${2:?UNITDIR}; wh=${3:?WHEELHOUSE}; build=${4:?BUILDDIR}
cloudinit=${5:?CLOUDINIT (cloud-init/user-data.yaml or cloud-init/user-data-dnf.yaml)}
# zsh's folder for packaged completions: Debian vendor-completions, Fedora/RHEL site-functions.
zshdir=${KUPD_ZSH_DIR:-/usr/share/zsh/vendor-completions}
src=$(cd "$(dirname "$0")/.." && pwd)
py=${KUPD_PYTHON:-/usr/bin/python3}
venv=/usr/lib/kupd/venv
v="$destdir$venv"
pipq="--disable-pip-version-check --quiet --no-input"

pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ -e "$wh/.complete" ] || "$src/packaging/fetch-wheels.sh" "$wh" "$pyver"

rm -rf "$v" "$build/wheel"
mkdir -p "$build/wheel"
"$py" -m venv --system-site-packages "$v"
# Every dependency goes into the venv even when the build host has a Debian copy: the venv
# must not lean on python3-* packages the target node may not have. Only python3-apt comes
# from the distribution (not on PyPI; declared Depends; the rpm's dnf backend needs nothing).
"$v/bin/python" -m pip install $pipq --no-index --find-links "$wh" --no-deps --ignore-installed \
    --no-compile -r "$src/packaging/requirements.lock"
"$v/bin/python" -m pip wheel $pipq --no-index --find-links "$wh" --no-deps -w "$build/wheel" "$src"
"$v/bin/python" -m pip install $pipq --no-index --no-deps --ignore-installed --no-compile \
    "$build"/wheel/kupd-*.whl
"$v/bin/python" -m pip uninstall $pipq -y pip setuptools
# Man pages and shell completion, generated from kupd's own argument parser (kupd/clidoc.py) by
# the interpreter the package ships (-B: no byte code in the tree).
man="$destdir/usr/share/man/man1"
"$v/bin/python" -I -B -m kupd.clidoc man "$man"
gzip -9nf "$man"/kupd*.1
install -d -m 0755 "$destdir/usr/share/bash-completion/completions" "$destdir$zshdir"
"$v/bin/python" -I -B -m kupd completion bash >"$destdir/usr/share/bash-completion/completions/kupd"
"$v/bin/python" -I -B -m kupd completion zsh >"$destdir$zshdir/_kupd"
# Nothing in the venv may name the build folder: drop console scripts and activate files
# (/usr/bin/kupd is the entry point), caches and pip's record of where the wheel came from.
find "$v/bin" -mindepth 1 ! -name 'python*' -exec rm -f {} +
find "$v" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$v" -name direct_url.json -delete
# venv makes an include/pythonX.Y folder for packages that build C code; nothing here does.
find "$v/include" -depth -type d -empty -delete 2>/dev/null || true
# Some wheels mark plain modules and metadata executable; only bin/ and shared objects are.
find "$v/lib" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +
sed -i "s|^command = .*|command = $py -m venv --system-site-packages $venv|" "$v/pyvenv.cfg"
if grep -rIl --exclude-dir=__pycache__ "$destdir" "$v" >/dev/null 2>&1; then
    echo "install-tree: the venv still names $destdir:" >&2
    grep -rIl "$destdir" "$v" >&2
    exit 1
fi

install -D -m 0755 "$src/packaging/kupd.sh" "$destdir/usr/bin/kupd"
install -D -m 0644 "$src/systemd/kupd.service" "$destdir$unitdir/kupd.service"
install -D -m 0644 "$src/systemd/kupd.tmpfiles" "$destdir/usr/lib/tmpfiles.d/kupd.conf"
install -D -m 0644 "$src/packaging/00-defaults.toml" "$destdir/usr/lib/kupd/config.d/00-defaults.toml"
install -d -m 0755 "$destdir/etc/kupd/config.d"
install -d -m 0700 "$destdir/var/lib/kupd"
for part in crds rbac examples; do
    from="$src/$part"
    [ "$part" = rbac ] && from="$src/packaging/rbac"
    install -d -m 0755 "$destdir/usr/share/kupd/$part"
    install -m 0644 "$from"/*.yaml "$destdir/usr/share/kupd/$part/"
done
install -D -m 0644 "$src/$cloudinit" "$destdir/usr/share/kupd/examples/cloud-init/user-data.yaml"
install -D -m 0644 "$src/packaging/grafana/kupd.json" "$destdir/usr/share/kupd/grafana/kupd.json"
install -D -m 0644 "$src/packaging/prometheus/kupd-rules.yaml" "$destdir/usr/share/kupd/prometheus/kupd-rules.yaml"
exit 0
