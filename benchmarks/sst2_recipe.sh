#!/usr/bin/env bash
# The default recipe on SST-2: train on the first 2,000 rows of ../shared/data/sst2/train.jsonl (no tuning
# flags), evaluate on a held-out split of the file's last 1,000 rows (never seen in training or validation),
# next to the hard prompt alone (zero-shot) on the same rows. Prints wall time and peak RSS of training.
#   bash benchmarks/sst2_recipe.sh [OUT_DIR] [TRAIN FLAGS...]
# Other methods / settings: extra flags go to `prompttune train`, e.g.
#   bash benchmarks/sst2_recipe.sh runs/sst2-prefix --method prefix-tuning
#   bash benchmarks/sst2_recipe.sh runs/sst2-ptuning --method p-tuning -o encoder=lstm
# SKIP_ZERO_SHOT=1 leaves the zero-shot comparison out.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/sst2/train.jsonl
[ -f "$DATA" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/sst2-recipe}
shift || true
mkdir -p "$OUT"
tail -n 1000 "$DATA" > "$OUT/heldout.jsonl"
PT=.venv/bin/prompttune
/usr/bin/time -v -o "$OUT/train.time" $PT train "$DATA" --limit 2000 --out "$OUT/prompt" "$@" --json | tail -n 1 > "$OUT/train.json"
$PT eval "$OUT/prompt" "$OUT/heldout.jsonl" --json | tail -n 1 > "$OUT/eval.json"
if [ -z "${SKIP_ZERO_SHOT:-}" ]; then
  $PT train "$DATA" --limit 2000 --method zero-shot --out "$OUT/zero-shot" --json | tail -n 1 > /dev/null
  $PT eval "$OUT/zero-shot" "$OUT/heldout.jsonl" --json | tail -n 1 > "$OUT/zero-shot-eval.json"
fi
python3 - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
tr = json.load(open(f"{out}/train.json")); ev = json.load(open(f"{out}/eval.json"))
tm = open(f"{out}/train.time").read()
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", tm).group(1)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", tm).group(1)) / 1024 ** 2
print(f"held-out rows: {ev['n']}")
try:
    print(f"zero-shot (hard prompt) accuracy: {json.load(open(f'{out}/zero-shot-eval.json'))['accuracy']:.4f}")
except FileNotFoundError:
    pass
print(f"{tr['method'] + ' accuracy:':34}{ev['accuracy']:.4f}  (best val {tr['best_val_accuracy']:.4f} at step "
      f"{tr['best_step']} of {tr['steps']})")
print(f"training: {tr['train_seconds']:.0f} s of steps, {tr['train_examples_per_s']:.1f} examples/s; whole command "
      f"{wall} (load + validation + save); peak RSS {rss:.2f} GB")
print(f"evaluation: {ev['examples_per_s']:.1f} examples/s")
PY
