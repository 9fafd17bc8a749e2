#!/usr/bin/env bash
# Set up the venv (the project and its test extras) and run the main demo: a server and a
# client on loopback streaming a large object graph with adump/aload. Arguments pass through
# (e.g. `bash scripts/demo.sh --records 1000000`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python examples/stream_graph.py "$@"
