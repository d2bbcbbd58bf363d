#!/usr/bin/env bash
# Every benchmark of DESIGN.md section 6, one after another (never two heavy jobs at once on 2 cores).
# Writes benchmarks/results/<name>.json. Needs a finished quickstart run for labeling / pipeline / eval-prm:
#   make quickstart && bash benchmarks/run_all.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
S=.venv/bin/sitf-ray
for b in engines actors weightsync orpo fit; do $S bench $b; done
$S bench labeling run="$RUN"
$S bench pipeline run="$RUN"
$S eval-prm "$RUN" --out benchmarks/results/eval_prm.json
