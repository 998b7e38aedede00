#!/usr/bin/env bash
# Creates .venv-bench at the repo root with the pinned peers (bench/requirements.txt)
# and simplequeue installed editable. Idempotent: a stamp keyed by the hash of the
# requirements file and pyproject.toml skips the install when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-bench"
REQ="$ROOT/bench/requirements.txt"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

# pip install, its build chatter kept in a log that is shown only if it fails.
quiet_pip() {
    local log="$VENV/.bench-pip.log"
    if ! "$VENV/bin/python" -m pip install --quiet "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "bench: pip install $* failed" >&2
        return 1
    fi
}

# An editable install made while the package had no __init__.py maps it as a
# namespace package forever; reinstalling is the only cure, and checking is cheap.
sq_is_package() {
    (cd / && "$VENV/bin/python" -c 'import sys, simplequeue; sys.exit(0 if simplequeue.__file__ else 1)') \
        >/dev/null 2>&1
}

KEY="$(cat "$REQ" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
STAMP="$VENV/.bench-stamp-$KEY"
if [ -f "$STAMP" ]; then
    if [ ! -f "$ROOT/simplequeue/__init__.py" ] || sq_is_package; then
        exit 0
    fi
    echo "bench: reinstalling simplequeue (editable) into .venv-bench"
    quiet_pip --no-deps --force-reinstall -e "$ROOT"
    exit 0
fi

quiet_pip -r "$REQ"
# With the janitor extra: the workers run the janitor (bench/churn.py measures it).
quiet_pip -e "$ROOT[janitor]"
rm -f "$VENV"/.bench-stamp-*
touch "$STAMP"
echo "bench: .venv-bench ready ($KEY)"
