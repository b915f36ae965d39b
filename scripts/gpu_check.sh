#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU (docs/simpletvm.md "CUDA" quotes it):
#   1. the GPU-only tests (target limits read from the device);
#   2. `simpletvm tune` of the sample CNN and MLP with --target cuda: untuned, tuned and
#      onnxruntime latencies;
#   3. two CUDA jobs under a sched daemon with detected resources (gpu0 exclusive);
#   4. (STEPS=superb) superb's cuda-quick experiments into OUTDIR/cuda.db; docs/evaluation.md
#      reports them with `superb report --db OUTDIR/cuda.db --view evaluation`.
# Usage: bash scripts/gpu_check.sh OUTDIR [TRIALS]
#   STEPS="tests superb" runs the GPU-only tests and the superb step alone.
# Expects simpletvm, sched and python on PATH (scripts/venv.sh provides them).
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [TRIALS]}
TRIALS=${2:-64}
TARGET=${TARGET:-cuda}  # TARGET=llvm dry-runs the script on a CPU machine
WORKERS=${WORKERS:-8}
STEPS=${STEPS:-tests tune sched}  # a subset reruns part of the check
SUPERB_FILE=${SUPERB_FILE:-benchmarks.toml}
SUPERB_ONLY=${SUPERB_ONLY:-cuda-quick-alone cuda-quick}
SUPERB_TIMEOUT=${SUPERB_TIMEOUT:-480}  # what is recorded by then stays in cuda.db
WORK=$(mktemp -d)
mkdir -p "$OUT"
export SCHED_DB="$WORK/sched.db"
log() { echo "== $(date +%T) $*"; }

log "GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
nproc

if [[ $STEPS == *tests* ]]; then
    log "GPU-only tests"
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_targets.py
fi

for model in cnn mlp; do
    simpletvm sample "$model" -o "$WORK/$model.onnx"
    [[ $STEPS == *tune* ]] || continue
    log "tune $model on $TARGET, $TRIALS trials"
    timeout 180 simpletvm tune "$WORK/$model.onnx" --target "$TARGET" --trials "$TRIALS" \
        --per-round 16 --builder-workers "$WORKERS" --search-threads 4 \
        --db "$WORK/tune.db" --json > "$OUT/tune-$model-$TARGET.json"
    echo "rc=$?"
    python3 - "$OUT/tune-$model-$TARGET.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
keep = ("model", "target", "trials", "tasks", "tuning_seconds", "compile_seconds", "untuned_ms",
        "tuned_ms", "onnxruntime_ms", "speedup", "stage_seconds")
print(json.dumps({k: r.get(k) for k in keep if k in r}, indent=1, default=str)[:3000])
EOF
done

if [[ $STEPS == *superb* ]]; then
    only=()
    for name in $SUPERB_ONLY; do only+=(--only "$name"); done
    log "superb: $SUPERB_ONLY from $SUPERB_FILE, at most ${SUPERB_TIMEOUT}s"
    timeout "$SUPERB_TIMEOUT" superb run "$SUPERB_FILE" "${only[@]}" --db "$OUT/cuda.db" \
        --work-dir "$WORK/superb"
    echo "rc=$?"
    superb report --db "$OUT/cuda.db" --view evaluation --format markdown
    superb report --db "$OUT/cuda.db" --format markdown
fi

[[ $STEPS == *sched* ]] || exit 0
log "sched: two $TARGET jobs, detected resources"
sched start --strategy interleaved
for model in cnn mlp; do
    sched submit "$WORK/$model.onnx" --target "$TARGET" --trials "${SCHED_TRIALS:-32}" --per-round 16 \
        --name "$model-$TARGET" --option "builder_workers=$WORKERS"
done
for _ in $(seq 1 "${SCHED_WAIT_STEPS:-75}"); do
    left=$(sched jobs --json | python3 -c "import json,sys; print(sum(j['state'] in ('queued','running') for j in json.load(sys.stdin)))")
    [ "$left" = "0" ] && break
    sleep 2
done
sched status
sched status --json > "$OUT/sched-status.json"
sched jobs --all --json > "$OUT/sched-jobs.json"
sched timeline --json > "$OUT/sched-timeline.json"
sched stop
log "done"
