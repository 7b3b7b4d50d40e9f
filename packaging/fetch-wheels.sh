#!/bin/sh
# Fill a wheelhouse with every wheel the package's private venv needs (network: PyPI), so the
# package build itself runs offline. Usage: packaging/fetch-wheels.sh WHEELHOUSE
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wh=${1:?usage: fetch-wheels.sh WHEELHOUSE}
mkdir -p "$wh"
if [ -e "$wh/.complete" ]; then exit 0; fi
python3.11 -m pip wheel --disable-pip-version-check --quiet --no-deps --wheel-dir "$wh" \
    -r "$here/requirements.lock" -r "$here/build-requirements.txt"
touch "$wh/.complete"
