#!/usr/bin/env bash
# Hard prompts on SST-2 with the default decoder, scored by `prompttune eval` exactly like a soft prompt
# (same verbalizer read-out, same metrics): built-in templates zero-shot and 8-shot, with and without
# contextual calibration. Held-out: the last 1,000 rows of train.jsonl; demos from the first 2,000 rows.
#   OMP_NUM_THREADS=1 bash benchmarks/hard_prompts_sst2.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SST2:-/work/shared/data/sst2/train.jsonl}
OUT=${1:-/tmp/prompttune-hard-sst2}
mkdir -p "$OUT"
tail -n 1000 "$DATA" > "$OUT/heldout.jsonl"
head -n 2000 "$DATA" > "$OUT/pool.jsonl"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {  # name, then eval flags
  local name=$1; shift
  .venv/bin/prompttune eval "$@" "$OUT/heldout.jsonl" --json 2>/dev/null | tail -n 1 > "$OUT/$name.json"
  .venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:<34} accuracy {r['accuracy']:.3f}  macro F1 {r['macro_f1']:.3f}  {r['eval_seconds']:.0f} s\")" "$OUT/$name.json" "$name"
}
for t in classify classify-instruct; do
  run "$t-0shot" "$t" --no-calibrate
  run "$t-0shot-calibrated" "$t" --calibrate
  run "$t-8shot" "$t" --demos 8 --demo-selector random --demos-from "$OUT/pool.jsonl" --no-calibrate
  run "$t-8shot-calibrated" "$t" --demos 8 --demo-selector random --demos-from "$OUT/pool.jsonl" --calibrate
done
for sel in fixed ${KNN:+knn}; do  # KNN=1 adds nearest-neighbour demos (slow: every row has its own prefix)
  run "classify-8shot-$sel" classify --demos 8 --demo-selector "$sel" --demos-from "$OUT/pool.jsonl" --no-calibrate
  run "classify-8shot-$sel-calibrated" classify --demos 8 --demo-selector "$sel" --demos-from "$OUT/pool.jsonl" --calibrate
done
