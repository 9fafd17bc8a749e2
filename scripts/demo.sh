#!/usr/bin/env bash
# Set up the venv (the project and its test extras) and run the main demo, `streampickle demo`:
# a server and a client on loopback stream a large object graph with adump/aload, then the
# naive way, and a table compares them. Arguments pass through to the demo (e.g.
# `bash scripts/demo.sh --payload arrays --mb 200 --backend trio`; `--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m streampickle demo "$@"
