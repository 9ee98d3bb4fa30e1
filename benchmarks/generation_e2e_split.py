"""Carve E2E NLG (../shared/data/e2e_nlg/dev.jsonl) into train / test by meaning representation (seeded):
every reference of an input lands on one side. Writes OUT/train.jsonl and OUT/test.jsonl (never into the repo).

python benchmarks/generation_e2e_split.py OUT [--test-inputs 60] [--seed 0]
"""

import argparse
import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e_nlg" / "dev.jsonl"

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--test-inputs", type=int, default=60)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
if not DATA.exists():
    sys.exit(f"{DATA}: not found; this benchmark needs the shared E2E NLG data (../shared/data/e2e_nlg).")
rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
inputs = list(dict.fromkeys(r["input"] for r in rows))
random.Random(args.seed).shuffle(inputs)
test = set(inputs[: args.test_inputs])
args.out.mkdir(parents=True, exist_ok=True)
for name, keep in (("train", lambda r: r["input"] not in test), ("test", lambda r: r["input"] in test)):
    part = [r for r in rows if keep(r)]
    (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    print(f"{name}: {len(part)} rows, {len({r['input'] for r in part})} inputs")
