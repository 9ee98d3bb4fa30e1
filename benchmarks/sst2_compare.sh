#!/usr/bin/env bash
# Every way of adapting the default decoder to SST-2, ranked with cost, in one report:
# zero-shot, few-shot and calibrated hard prompts, every soft-prompt method in the registry, LoRA
# (and full fine-tuning with FULL_FT=1), on the first 2,000 rows of ../shared/data/sst2/train.jsonl
# (200 set apart for validation), 3 seeds, accuracy-vs-rows curves, tested on the file's last 1,000
# rows (never trained or validated on).
#   bash benchmarks/sst2_compare.sh [OUT_DIR]        # rerun the same command to resume after a stop
# Knobs (environment): SEEDS (0,1,2), SIZES (64,256,1800), STEPS (60 steps of 16 rows per run),
# THREADS (2), FULL_FT (0), METHODS (default: hard prompts, every registry soft method, lora),
# LR_GRID (unset: each arm at its default rate; 3: three rates per arm chosen on validation, see --lr-grid).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/sst2/train.jsonl
[ -f "$DATA" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/sst2-compare}
mkdir -p "$OUT"
tail -n 1000 "$DATA" > "$OUT/heldout.jsonl"
if [ -z "${METHODS:-}" ]; then
  METHODS=$(.venv/bin/python -c "
from prompttune.compare.arms import available
print(','.join(a for a in available() if a != 'full-ft' or '${FULL_FT:-0}' == '1'))")
fi
export OMP_NUM_THREADS=${THREADS:-2}
start=$(date +%s)
.venv/bin/prompttune compare "$DATA" --limit 2000 --test "$OUT/heldout.jsonl" --val-rows 200 \
  --methods "$METHODS" --seeds "${SEEDS:-0,1,2}" --train-sizes "${SIZES:-64,256,1800}" \
  --max-steps "${STEPS:-60}" --batch-size 16 ${LR_GRID:+--lr-grid "$LR_GRID"} --out "$OUT"
echo "whole run: $(( ($(date +%s) - start) / 60 )) min (cells reused from an earlier run take no time); \
report: $OUT/report.html"
