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

KEY="$(cat "$REQ" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
STAMP="$VENV/.bench-stamp-$KEY"
if [ -f "$STAMP" ]; then
    exit 0
fi

"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQ"
"$VENV/bin/python" -m pip install --quiet -e "$ROOT"
rm -f "$VENV"/.bench-stamp-*
touch "$STAMP"
echo "bench: .venv-bench ready ($KEY)"
