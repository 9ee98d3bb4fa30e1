#!/usr/bin/env bash
# Soft prompts that write, on E2E NLG (../shared/data/e2e_nlg/dev.jsonl, never copied into the repo):
# zero-shot hard prompt vs prompt tuning vs prefix tuning on the default decoder, split by meaning
# representation (benchmarks/generation_e2e_split.py), BLEU / ROUGE-L on held-out inputs.
# Bounded for a shared 2-core CPU: STEPS training steps, VAL_INPUTS validation inputs (carved from train),
# TEST_INPUTS test inputs; ARMS picks the methods. Usage: benchmarks/generation_e2e.sh [OUT=/tmp/e2e_bench]
set -euo pipefail
OUT=${1:-/tmp/e2e_bench}
STEPS=${STEPS:-20}
TEST_INPUTS=${TEST_INPUTS:-8}
VAL_INPUTS=${VAL_INPUTS:-4}
THREADS=${THREADS:-2}
PT=.venv/bin/prompttune
mkdir -p "$OUT"
.venv/bin/python benchmarks/generation_e2e_split.py "$OUT/split" --test-inputs 60
.venv/bin/python - "$OUT" "$TEST_INPUTS" "$VAL_INPUTS" <<'PY'
import json, sys
from pathlib import Path
out, n_test, n_val = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def first_inputs(rows, n):
    keep = list(dict.fromkeys(r["input"] for r in rows))[:n]
    return [r for r in rows if r["input"] in keep], set(keep)
train = [json.loads(x) for x in (out / "split/train.jsonl").read_text().splitlines()]
test = [json.loads(x) for x in (out / "split/test.jsonl").read_text().splitlines()]
val, held = first_inputs(train, n_val)
(out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train if r["input"] not in held))
(out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
(out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first_inputs(test, n_test)[0]))
(out / "template.yaml").write_text(
    'user: "[soft]Write one sentence describing the restaurant from these attributes: {{ input }}"\n'
)
PY
export OMP_NUM_THREADS=$THREADS
for method in ${ARMS:-zero-shot prompt-tuning prefix-tuning}; do
  echo "== $method  (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  $PT train "$OUT/train.jsonl" --val "$OUT/val.jsonl" --template "$OUT/template.yaml" --method "$method" \
    --max-steps "$STEPS" --eval-every "$STEPS" --out "$OUT/$method" --overwrite --json > "$OUT/$method.train.json"
  $PT eval "$OUT/$method" "$OUT/test.jsonl" --json > "$OUT/$method.eval.json"
  .venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); t=json.load(open(sys.argv[2])); print(sys.argv[3], 'steps', t['steps'], 'train_s %.0f' % t['train_seconds'], 'BLEU %.1f ROUGE-L %.1f EM %.1f F1 %.1f' % (r['bleu'], r['rougeL'], r['exact_match'], r['f1']), 'on', r['n'], 'inputs', r['n_references'], 'refs', '%.2f ex/s' % r['examples_per_s'])" "$OUT/$method.eval.json" "$OUT/$method.train.json" "$method" | tee -a "$OUT/summary.txt"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
