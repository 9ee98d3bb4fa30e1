#!/usr/bin/env bash
# Extractive QA on SQuAD v1.1 (../shared/data/squad/dev.jsonl, 24 articles): split BY ARTICLE (title) with a
# fixed seed, 6 articles held out for the test; a span head over a frozen backbone with deep prompts
# (P-tuning v2), next to a linear probe (the span head alone) with the same data, steps and batch size.
# Exact match / F1 as the official v1.1 script computes them, on the held-out articles.
#   bash benchmarks/squad_recipe.sh [OUT_DIR]    (MODEL=minilm by default; MODEL=smollm2 for the decoder;
#                                                STEPS=300, MAX_LENGTH=256, TEST_LIMIT=all questions)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/squad/dev.jsonl
[ -f "$DATA" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/squad-recipe}
MODEL=${MODEL:-minilm}
STEPS=${STEPS:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
python3 - "$DATA" "$OUT" "${TEST_LIMIT:-0}" <<'PY'
import json, random, sys
data, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(line) for line in open(data) if line.strip()]
titles = sorted({r["title"] for r in rows})
random.Random(0).shuffle(titles)
test_titles = set(titles[:6])
train = [r for r in rows if r["title"] not in test_titles]
test = [r for r in rows if r["title"] in test_titles][: limit or None]
for name, part in (("train", train), ("test", test)):
    with open(f"{out}/{name}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in part)
print(f"train {len(train)} questions ({len(titles) - 6} articles), test {len(test)} questions (6 articles)")
PY
PT=.venv/bin/prompttune
COMMON=(--head span --model "$MODEL" --batch-size 16 --max-steps "$STEPS" --eval-every 60 --head-lr 0.005
  --max-length "${MAX_LENGTH:-256}")
/usr/bin/time -f "%e" -o "$OUT/deep.time" $PT train "$OUT/train.jsonl" "${COMMON[@]}" --method p-tuning-v2 \
  -o init=random --num-virtual-tokens 16 --lr 0.02 --out "$OUT/deep" --json | tail -n 1 > "$OUT/deep.train.json"
$PT eval "$OUT/deep" "$OUT/test.jsonl" --json | tail -n 1 > "$OUT/deep.eval.json"
/usr/bin/time -f "%e" -o "$OUT/probe.time" $PT train "$OUT/train.jsonl" "${COMMON[@]}" --method zero-shot \
  --lr 0.005 --out "$OUT/probe" --json | tail -n 1 > "$OUT/probe.train.json"
$PT eval "$OUT/probe" "$OUT/test.jsonl" --json | tail -n 1 > "$OUT/probe.eval.json"
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
