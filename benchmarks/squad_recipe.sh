#!/usr/bin/env bash
# Extractive QA on SQuAD v1.1 (../shared/data/squad/dev.jsonl, 24 articles): split BY ARTICLE (title) with a
# fixed seed: 6 articles held out for the test, 1 for validation (early stopping); a span head over a frozen backbone with deep prompts
# (P-tuning v2), next to a linear probe (the span head alone) with the same data, steps and batch size.
# Exact match / F1 as the official v1.1 script computes them, on the held-out articles.
#   bash benchmarks/squad_recipe.sh [OUT_DIR]    (MODEL=minilm by default; MODEL=smollm2 for the decoder;
#                                                STEPS=360, MAX_LENGTH=192, TEST_LIMIT=all questions,
#                                                EVAL_EVERY=90, PATIENCE=4, DROPOUT=1 for --backbone-dropout,
#                                                DEVICE=cuda to run on a GPU, PARALLEL=1 trains both arms at once,
#                                                DEEP_FLAGS="..." replaces the deep arm's method flags)
# On a GPU (one H200: ~450 examples/s, about a minute an arm):
#   DEVICE=cuda STEPS=3000 MAX_LENGTH=384 EVAL_EVERY=100 PATIENCE=6 bash benchmarks/squad_recipe.sh runs/squad-gpu
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/squad/dev.jsonl
[ -f "$DATA" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/squad-recipe}
MODEL=${MODEL:-minilm}
STEPS=${STEPS:-360}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
python3 - "$DATA" "$OUT" "${TEST_LIMIT:-0}" <<'PY'
import json, random, sys
data, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(line) for line in open(data) if line.strip()]
titles = sorted({r["title"] for r in rows})
random.Random(0).shuffle(titles)
test_titles, val_titles = set(titles[:6]), set(titles[6:7])
train = [r for r in rows if r["title"] not in test_titles | val_titles]
val = [r for r in rows if r["title"] in val_titles]
test = [r for r in rows if r["title"] in test_titles][: limit or None]
for name, part in (("train", train), ("val", val), ("test", test)):
    with open(f"{out}/{name}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in part)
print(f"train {len(train)} questions ({len(titles) - 7} articles), validation {len(val)} (1 article), "
      f"test {len(test)} (6 articles)")
PY
PT=(.venv/bin/prompttune ${DEVICE:+--device "$DEVICE"})
COMMON=(--head span --model "$MODEL" --batch-size 16 --max-steps "$STEPS" --eval-every "${EVAL_EVERY:-90}"
  --patience "${PATIENCE:-4}" --head-lr 0.01 --max-length "${MAX_LENGTH:-192}" ${DROPOUT:+--backbone-dropout})
arm() {  # NAME TRAIN-FLAGS...: train, then evaluate on the held-out articles
  local name=$1; shift
  /usr/bin/time -f "%e" -o "$OUT/$name.time" "${PT[@]}" train "$OUT/train.jsonl" --val "$OUT/val.jsonl" "${COMMON[@]}" "$@" --out "$OUT/$name" \
    --json 2> "$OUT/$name.log" | tail -n 1 > "$OUT/$name.train.json"
  "${PT[@]}" eval "$OUT/$name" "$OUT/test.jsonl" --json 2>> "$OUT/$name.log" | tail -n 1 > "$OUT/$name.eval.json"
}
read -r -a DEEP <<< "${DEEP_FLAGS:---method p-tuning-v2 -o init=random --num-virtual-tokens 32 --lr 0.03}"
PROBE=(--method zero-shot --lr 0.01)
if [ -n "${PARALLEL:-}" ]; then  # both arms at once (each on its own thread)
  arm deep "${DEEP[@]}" & arm probe "${PROBE[@]}" & wait
else
  arm deep "${DEEP[@]}"; arm probe "${PROBE[@]}"
fi
python3 - "$OUT" "$MODEL" <<'PY'
import json, sys
out, model = sys.argv[1], sys.argv[2]
rows = {}
for arm in ("deep", "probe"):
    tr, ev = (json.load(open(f"{out}/{arm}.{k}.json")) for k in ("train", "eval"))
    rows[arm] = (tr, ev, float(open(f"{out}/{arm}.time").read().split()[-1]))
print(f"SQuAD v1.1, {rows['deep'][1]['n']} questions of 6 held-out articles, frozen {model}")
print(f"{'arm':34} {'EM':>7} {'F1':>7} {'params':>9} {'steps':>6} {'wall s':>7}")
names = {"deep": "deep prompts (p-tuning-v2) + span", "probe": "linear probe (span head only)"}
for arm, (tr, ev, wall) in rows.items():
    print(f"{names[arm]:34} {ev['exact_match']:7.2f} {ev['f1']:7.2f} {tr['trainable_params']:9,} {tr['steps']:6} "
          f"{wall:7.0f}")
d, p = rows["deep"][1]["f1"], rows["probe"][1]["f1"]
print(f"deep - probe: {d - p:+.2f} F1 points; deep / probe: {d / max(p, 1e-9):.2f}x")
PY
