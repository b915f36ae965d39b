#!/usr/bin/env bash
# The main job on embedded defaults: generate the sample CNN, tune it on llvm with a small
# budget (64 trials), export it, print untuned / tuned / onnxruntime latencies, and
# benchmark the exported module.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
mkdir -p out
simpletvm sample cnn -o out/cnn.onnx
simpletvm tune out/cnn.onnx --target llvm --trials "${TRIALS:-64}" --db out/tuning.db \
    --output out/cnn.so
simpletvm bench out/cnn.so
