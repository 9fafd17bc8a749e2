#!/usr/bin/env bash
# Set up (a venv per Python, installing the project with its test extras) and run every check:
# ruff (lint + format), mypy --strict, and the pytest suite. Extra pytest arguments pass through,
# e.g. `bash scripts/check.sh -k adump`. Runs the suite again on other installed Pythons
# (3.10, 3.12 and 3.13 from pyenv, when present) so the support claim in pyproject.toml is tested.
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {  # setup PYTHON VENV: create VENV with PYTHON and install the project into it
    if [ ! -x "$2/bin/python" ]; then
        "$1" -m venv "$2"
    fi
    "$2/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
}

setup "${PYTHON:-python3}" .venv
# One command per line: under `set -e`, a failure on the left of `&&` would not stop the script.
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy";   .venv/bin/mypy
# pytest-xdist workers: the suite's tests are independent processes' worth of sockets, files
# and subprocesses; WORKERS=0 runs them in this process (e.g. to debug with -s).
workers=(-n "${WORKERS:-2}")
echo "== pytest ($(.venv/bin/python --version))"
.venv/bin/python -m pytest -q "${workers[@]}" "$@"
# The vetting pass's compiled accelerator (setup.py) has a pure-Python fallback: the tests of
# restricted loads run again on it.
echo "== pytest, the pure-Python path (STREAMPICKLE_PURE_PYTHON=1)"
STREAMPICKLE_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider "${workers[@]}" \
    tests/test_scan.py tests/test_policy.py tests/test_limits.py tests/test_attacks.py \
    tests/test_fuzz.py tests/test_turns.py tests/test_shared.py tests/test_keys.py "$@"

for version in ${EXTRA_PYTHONS-3.10 3.12 3.13}; do
    python=$(ls -d /root/.pyenv/versions/"$version"*/bin/python3 2>/dev/null | head -n 1 || true)
    if [ -z "$python" ]; then
        echo "== Python $version not installed here; skipped"
        continue
    fi
    setup "$python" ".venv-$version"
    echo "== pytest ($(".venv-$version/bin/python" --version))"
    ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider "${workers[@]}" "$@"
done
