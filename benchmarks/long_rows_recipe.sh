#!/usr/bin/env bash
# The default recipe on longer rows and pairs (issue 18, 1): train on the first 2,000 rows of a data set in
# ../shared/data (no tuning flags), evaluate on rows the run never saw, and print accuracy, wall time, peak
# RSS and the load average before and after (the machine is shared: compare runs made under the same load).
#   bash benchmarks/long_rows_recipe.sh ag_news|rte|mnli|qqp|mrpc|dbpedia_14|emotion [OUT_DIR] [TRAIN FLAGS...]
# Held-out rows: ag_news rows 2,001-2,300 of train.jsonl; rte the last 490 rows of train.jsonl; mnli the
# first 500 rows of validation_matched.jsonl; qqp the last 500 rows of train.jsonl; mrpc validation.jsonl;
# dbpedia_14 (14 topics, labels of several tokens such as EducationalInstitution) and emotion (6 labels) the
# first 500 rows of test.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?ag_news, rte, mnli, qqp, mrpc, dbpedia_14 or emotion}
OUT=${2:-runs/$NAME-recipe}
shift; shift || true
DIR=../shared/data/$NAME
[ -f "$DIR/train.jsonl" ] || { echo "$DIR/train.jsonl: missing (see ../shared/data/README.md)" >&2; exit 1; }
mkdir -p "$OUT"
case $NAME in
  ag_news) sed -n 2001,2300p "$DIR/train.jsonl" > "$OUT/heldout.jsonl" ;;
  rte) tail -n 490 "$DIR/train.jsonl" > "$OUT/heldout.jsonl" ;;
  mnli) head -n 500 "$DIR/validation_matched.jsonl" > "$OUT/heldout.jsonl" ;;
  qqp) tail -n 500 "$DIR/train.jsonl" > "$OUT/heldout.jsonl" ;;
  mrpc) cp "$DIR/validation.jsonl" "$OUT/heldout.jsonl" ;;
  dbpedia_14|emotion) head -n 500 "$DIR/test.jsonl" > "$OUT/heldout.jsonl" ;;
  *) echo "$NAME: choose ag_news, rte, mnli, qqp, mrpc, dbpedia_14 or emotion" >&2; exit 1 ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PT=.venv/bin/prompttune
echo "load before: $(uptime)"
/usr/bin/time -f "%M KB %e s" -o "$OUT/train.time" $PT train "$DIR/train.jsonl" --limit 2000 --out "$OUT/prompt" "$@" \
  --json | tail -n 1 > "$OUT/train.json"
echo "load after training: $(uptime)"
$PT eval "$OUT/prompt" "$OUT/heldout.jsonl" --json | tail -n 1 > "$OUT/eval.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
tr, ev = json.load(open(f"{out}/train.json")), json.load(open(f"{out}/eval.json"))
kb, secs = open(f"{out}/train.time").read().split()[0::2][:2]
print(f"held-out accuracy {ev['accuracy']:.4f} on {ev['n']} rows (best val {tr['best_val_accuracy']:.4f} at step "
      f"{tr['best_step']} of {tr['steps']}, stopped by {tr.get('stopped_by')})")
print(f"train command {float(secs):.0f} s ({tr['train_seconds']:.0f} s of steps, {tr['train_examples_per_s']:.2f} "
      f"examples/s), peak RSS {int(kb) / 1024**2:.2f} GB")
PY
