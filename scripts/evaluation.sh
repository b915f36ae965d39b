#!/usr/bin/env bash
# docs/evaluation.md: run the evaluation-small matrix (about 1.5 h on 2 cores), the
# evaluation-preempt points (about 55 min) and evaluation-compile (about 20 min), then
# print their tables and draw the figures. (The H100 tables: docs/evaluation.md, CUDA.)
# With --report-only, just the tables and figures from the recorded results
# (docs/evaluation/results.db).
#   bash scripts/evaluation.sh [--report-only] [DB]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
REPORT_ONLY=0
if [ "${1:-}" = "--report-only" ]; then REPORT_ONLY=1; shift; fi
DB=${1:-docs/evaluation/results.db}
if [ $REPORT_ONLY = 0 ]; then
    superb run benchmarks.toml --only evaluation-small-alone --db "$DB" --resume
    superb run benchmarks.toml --only evaluation-small --db "$DB" --resume
    superb run benchmarks.toml --only evaluation-preempt --db "$DB" --resume
    superb run benchmarks.toml --only evaluation-compile --db "$DB" --resume
fi
echo "## evaluation view"
superb report --db "$DB" --only evaluation-small --view evaluation --format markdown
echo "## latencies per model"
superb report --db "$DB" --only evaluation-small --format markdown
echo "## each model tuned alone"
superb report --db "$DB" --only evaluation-small-alone --group-by workload --format markdown
superb plot --db "$DB" --only evaluation-small --output docs/figures/evaluation
echo "## with preemption"
superb report --db "$DB" --only evaluation-preempt --view evaluation --format markdown
superb report --db "$DB" --only evaluation-preempt --format markdown
superb plot --db "$DB" --only evaluation-preempt --output docs/figures/evaluation
echo "## with compile split from finalize"
superb report --db "$DB" --only evaluation-compile --view evaluation --format markdown
superb report --db "$DB" --only evaluation-compile --format markdown
superb plot --db "$DB" --only evaluation-compile --output docs/figures/evaluation
