#!/usr/bin/env bash
# CoNLL-2003 NER on the default encoder (all-MiniLM-L6-v2, frozen): deep prompts (P-tuning v2, 16 per-layer
# prompts) + a token head, next to a linear probe (the same head on the frozen encoder, no prompts) with the
# same data, steps and batch size. Validation for early stopping is a seeded 10% of train.jsonl; the figures
# are entity-level F1 (seqeval) on valid.jsonl, which training never sees.
#   bash benchmarks/conll_recipe.sh [OUT_DIR]        (STEPS=1200 by default; STEPS=300 for a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/conll2003
[ -f "$DATA/train.jsonl" ] && [ -f "$DATA/valid.jsonl" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/conll-recipe}
STEPS=${STEPS:-1200}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
PT=.venv/bin/prompttune
COMMON=(--head tokens --model minilm --batch-size 32 --max-steps "$STEPS" --eval-every 200 --head-lr 0.005)
/usr/bin/time -f "%e" -o "$OUT/deep.time" $PT train "$DATA/train.jsonl" "${COMMON[@]}" --method p-tuning-v2 \
  -o init=random --num-virtual-tokens 16 --lr 0.02 --out "$OUT/deep" --json | tail -n 1 > "$OUT/deep.train.json"
$PT eval "$OUT/deep" "$DATA/valid.jsonl" --json | tail -n 1 > "$OUT/deep.eval.json"
/usr/bin/time -f "%e" -o "$OUT/probe.time" $PT train "$DATA/train.jsonl" "${COMMON[@]}" --method zero-shot \
  --lr 0.005 --out "$OUT/probe" --json | tail -n 1 > "$OUT/probe.train.json"
$PT eval "$OUT/probe" "$DATA/valid.jsonl" --json | tail -n 1 > "$OUT/probe.eval.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = {}
for arm in ("deep", "probe"):
    tr, ev = (json.load(open(f"{out}/{arm}.{k}.json")) for k in ("train", "eval"))
    rows[arm] = (tr, ev, float(open(f"{out}/{arm}.time").read().split()[-1]))
print(f"CoNLL-2003 valid ({rows['deep'][1]['n']} sentences), entity F1 (seqeval), frozen all-MiniLM-L6-v2")
print(f"{'arm':34} {'F1':>7} {'P':>7} {'R':>7} {'params':>9} {'steps':>6} {'wall s':>7}")
names = {"deep": "deep prompts (p-tuning-v2) + head", "probe": "linear probe (head only)"}
for arm, (tr, ev, wall) in rows.items():
    print(f"{names[arm]:34} {100 * ev['f1']:7.2f} {100 * ev['precision']:7.2f} {100 * ev['recall']:7.2f} "
          f"{tr['trainable_params']:9,} {tr['steps']:6} {wall:7.0f}")
d, p = rows["deep"][1]["f1"], rows["probe"][1]["f1"]
print(f"deep - probe: {100 * (d - p):+.2f} F1 points; deep / probe: {d / p:.2f}x")
for t, m in rows["deep"][1]["per_type"].items():
    print(f"  {t:5} deep F1 {100 * m['f1']:6.2f}   probe F1 {100 * rows['probe'][1]['per_type'][t]['f1']:6.2f}")
PY
