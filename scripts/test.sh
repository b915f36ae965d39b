#!/usr/bin/env bash
# The test suite (real TVM on tiny models; the `long` marker is left out by default).
set -euo pipefail
export SIMPLETVM_EXTRAS="${SIMPLETVM_EXTRAS:-dev,postgres}"
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
ruff check simpletvm sched superb tests benchmarks
python -m pytest "$@"
