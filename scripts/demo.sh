#!/usr/bin/env bash
# Set up a venv (the project and its small `demo` extra, installed once: a second run starts at
# once) and run the main demo, `streampickle demo`: a receiver and a sender, each a fresh
# process, stream a large object graph over loopback with adump/aload and the naive way,
# alternately after a warm-up; a table shows the medians, the receiver's floor (pickle.loads
# of the same bytes in a fresh process) and a verdict. Arguments pass through to the demo (e.g.
# `bash scripts/demo.sh --payload arrays --mb 200 --backend trio`; `--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-demo
# Reinstall only when the project's metadata changed since the last install.
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[demo]'
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
exec "$venv/bin/python" -m streampickle demo "$@"
