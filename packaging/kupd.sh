#!/bin/sh
# kupd runs from its private virtual environment (see docs/development/packaging.md); bin/python3
# is the interpreter the package was built for (the release's python3, or python3.11 on RHEL 9).
# -I: ignore PYTHON* variables, the user site and the current folder.
exec /usr/lib/kupd/venv/bin/python3 -I -m kupd "$@"
