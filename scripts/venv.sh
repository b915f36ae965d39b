#!/usr/bin/env bash
# Create or reuse the project's virtual environment at .venv (sourced by the other scripts).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# extras to install: the tests add postgres (psycopg, for the PostgreSQL registry's cases)
EXTRAS="${SIMPLETVM_EXTRAS:-dev}"
STAMP=.venv/.installed-${EXTRAS//,/-}-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$STAMP" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
    rm -f .venv/.installed-"${EXTRAS//,/-}"-*
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
