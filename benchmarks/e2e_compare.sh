#!/usr/bin/env bash
# Every way of writing on E2E NLG, side by side (issue 14's table): zero-shot and few-shot hard prompts, each soft
# method and PEFT LoRA, the same steps, batch and split, ranked by BLEU on held-out meaning representations.
# Data: ../shared/data/e2e_nlg/dev.jsonl (read in place, never copied into the repository), split by input:
# 60 inputs for test (benchmarks/generation_e2e_split.py, seed 0), the first 10 training inputs for validation.
# Usage: benchmarks/e2e_compare.sh [OUT=/tmp/e2e_compare]   (STEPS=200 METHODS=... to change the run)
# Measured with STEPS=200 on 2 cores: ~14 minutes a trained arm, ~80 minutes in all (README: Soft prompts that write).
set -euo pipefail
OUT=${1:-/tmp/e2e_compare}
STEPS=${STEPS:-200}
METHODS=${METHODS:-zero-shot,few-shot,prompt-tuning,prefix-tuning,p-tuning,p-tuning-v2,lora}
PY=${PY:-.venv/bin/python}
PT=${PT:-.venv/bin/prompttune}
mkdir -p "$OUT"
$PY benchmarks/generation_e2e_split.py "$OUT/split" --test-inputs 60
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
train = [json.loads(x) for x in (out / "split/train.jsonl").read_text().splitlines()]
val_inputs = list(dict.fromkeys(r["input"] for r in train))[:10]
(out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train if r["input"] not in val_inputs))
(out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train if r["input"] in val_inputs))
(out / "template.yaml").write_text(
    'user: "[soft]Write one sentence describing the restaurant from these attributes: {{ input }}"\n'
)
PY
$PT compare "$OUT/train.jsonl" --val "$OUT/val.jsonl" --test "$OUT/split/test.jsonl" --template "$OUT/template.yaml" \
  --metric bleu --methods "$METHODS" --max-steps "$STEPS" --out "$OUT/cmp" --json
