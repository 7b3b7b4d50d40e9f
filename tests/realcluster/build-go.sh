#!/usr/bin/env bash
# Build (or reuse) the Go tools of the real-cluster tier that are not Kubernetes itself:
#   build-go.sh containerd VERSION   -> containerd, containerd-shim-runc-v2, ctr
#   build-go.sh crictl VERSION       -> crictl (cri-tools)
#   build-go.sh etcdutl VERSION      -> etcdutl (the module in etcdutl/, which pins VERSION)
# from the Go module proxy, static (CGO_ENABLED=0), cached outside the work tree under a hash of
# this script, the version (and etcdutl/'s files); prints the folder holding the binaries.
set -euo pipefail
what=${1:?usage: build-go.sh containerd|crictl VERSION}
version=${2:?usage: build-go.sh containerd|crictl VERSION}
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "bad version $version" >&2; exit 2; }
cache=${KUPD_CACHE:-$HOME/.cache/kupd}
here=$(cd "$(dirname "$0")" && pwd)
hash=$( (cat "$0"; echo "$what $version"; [ "$what" != etcdutl ] || cat "$here"/etcdutl/go.mod "$here"/etcdutl/go.sum "$here"/etcdutl/main.go) | sha256sum | cut -c1-16)
out="$cache/$what-$version-$hash"
case "$what" in
  containerd)
    mod=github.com/containerd/containerd/v2
    pkgs=("$mod/cmd/containerd@$version" "$mod/cmd/containerd-shim-runc-v2@$version" "$mod/cmd/ctr@$version")
    # As upstream's release build stamps them: `containerd --version` prints the version.
    ldflags="-s -w -X $mod/version.Version=$version -X $mod/version.Revision=kupd-test"
    tags=no_btrfs,no_devmapper,no_zfs ;;
  crictl)
    pkgs=("sigs.k8s.io/cri-tools/cmd/crictl@$version")
    ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
    tags="" ;;
  etcdutl)
    # upstream's etcdutl commands (its main package cannot be imported): the tier restores the
    # uploaded etcd snapshot with it. etcdutl/go.mod pins the version.
    grep -q "go.etcd.io/etcd/etcdutl/v3 $version\$" "$here/etcdutl/go.mod" || { echo "etcdutl/go.mod is not at $version" >&2; exit 2; }
    pkgs=()
    ldflags="-s -w"
    tags="" ;;
  *) echo "unknown tool $what" >&2; exit 2 ;;
esac
# One build at a time per output (CI's background prebuild and the tier may ask at once).
mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if [ ! -f "$out/.complete" ]; then
  echo "building $what $version (cold: 2-5 minutes; cached in $cache)" >&2
  rm -rf "$out" && mkdir -p "$out"
  start=$(date +%s)
  if [ "$what" = etcdutl ]; then
    (cd "$here/etcdutl" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" go build -ldflags "$ldflags" -o "$out/etcdutl" .)
  else
    (cd "$out" && GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -tags "$tags" -ldflags "$ldflags" "${pkgs[@]}")
  fi
  touch "$out/.complete"
  echo "built $what $version in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
