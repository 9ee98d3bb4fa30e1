#!/usr/bin/env bash
# Zero-shot built-in templates on four tasks with the default decoder: accuracy without calibration, with
# contextual calibration, and with the default (auto: calibration kept only if it is more accurate on check
# rows from --calibration-rows, here rows of the task's training split that are not reported on). One run per
# task: the report's calibration.reported_rows holds what --no-calibrate and --calibrate score on the same rows.
#   OMP_NUM_THREADS=1 BOOLQ=PATH/val.jsonl bash benchmarks/hard_prompts_calibration.sh [OUT_DIR]
# BOOLQ: the SuperGLUE BoolQ validation file (question, passage, label true/false; not in ../shared/data):
# its first 300 rows are reported on, rows 301-1,300 are the check rows. Without BOOLQ that task is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
OUT=${1:-/tmp/prompttune-hard-calibration}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
tail -n 1000 "$SHARED/sst2/train.jsonl" > "$OUT/sst2-heldout.jsonl"
head -n 2000 "$SHARED/sst2/train.jsonl" > "$OUT/sst2-check.jsonl"
tail -n 300 "$SHARED/rte/train.jsonl" > "$OUT/rte-heldout.jsonl"
head -n 2000 "$SHARED/rte/train.jsonl" > "$OUT/rte-check.jsonl"
run() {  # name, template, data, check rows
  .venv/bin/prompttune eval "$2" "$3" --calibration-rows "$4" --json 2>/dev/null | tail -n 1 > "$OUT/$1.json"
  .venv/bin/python - "$OUT/$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["calibration"]; rep = c["reported_rows"]
top = max(r["predicted_share"].items(), key=lambda kv: kv[1])
print(f"{sys.argv[2]:<6} n={r['n']:<5} off {rep['accuracy_uncalibrated']:.3f}  on {rep['accuracy_calibrated']:.3f}  "
      f"auto {r['accuracy']:.3f} ({'applied' if c['applied'] else 'not applied'}; check rows "
      f"{c['check_accuracy_uncalibrated']:.3f} off / {c['check_accuracy_calibrated']:.3f} on)  "
      f"majority predicted: {top[0]} {top[1]:.0%}  {r['eval_seconds']:.0f} s")
PY
}
run sst2 classify "$OUT/sst2-heldout.jsonl" "$OUT/sst2-check.jsonl"
run rte classify-pair "$OUT/rte-heldout.jsonl" "$OUT/rte-check.jsonl"
run mrpc classify-pair "$SHARED/mrpc/validation.jsonl" "$SHARED/mrpc/train.jsonl"
if [ -n "${BOOLQ:-}" ]; then
  head -n 300 "$BOOLQ" > "$OUT/boolq-300.jsonl"
  sed -n 301,1300p "$BOOLQ" > "$OUT/boolq-check.jsonl"
  run boolq qa-yes-no "$OUT/boolq-300.jsonl" "$OUT/boolq-check.jsonl"
fi
