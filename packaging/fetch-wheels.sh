#!/bin/sh
# Fill a wheelhouse with every wheel the package's private venv needs for one CPython version
# (network: PyPI), so the package build itself runs offline. Binary wheels only, for manylinux
# x86_64, whatever Python runs this script.
# Usage: packaging/fetch-wheels.sh WHEELHOUSE PYVERSION   (e.g. 3.11, 3.13)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wh=${1:?usage: fetch-wheels.sh WHEELHOUSE PYVERSION}
pyver=${2:?usage: fetch-wheels.sh WHEELHOUSE PYVERSION}
mkdir -p "$wh"
if [ -e "$wh/.complete" ]; then exit 0; fi
python3 -m pip download --disable-pip-version-check --quiet --no-deps --dest "$wh" \
    --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -r "$here/requirements.lock" -r "$here/build-requirements.txt"
touch "$wh/.complete"
