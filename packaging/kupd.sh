#!/bin/sh
# kupd runs from its private virtual environment (see docs/development/packaging.md).
# -I: ignore PYTHON* variables, the user site and the current folder.
exec /usr/lib/kupd/venv/bin/python3.11 -I -m kupd "$@"
