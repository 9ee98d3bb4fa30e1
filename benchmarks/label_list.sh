#!/usr/bin/env bash
# Does listing the label words in the prompt pay for itself? A real task with many labels of several words:
# SQuAD v1.1 dev questions (../shared/data/squad/dev.jsonl) classified by their article's title (24 titles,
# "Super Bowl 50" ... "Intergovernmental Panel on Climate Change"; 423 characters as a list). The rows are
# shuffled (seed 0); the first 2,000 train, the next 1,000 are held out. The default recipe runs twice: with the
# built-in template (which leaves a list over 200 characters out) and with the same template listing every
# label. Prints held-out accuracy, examples/s, whole-command time and peak RSS of each, side by side.
#   bash benchmarks/label_list.sh [OUT_DIR] [TRAIN FLAGS...]      e.g. ... runs/titles --seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/squad/dev.jsonl
[ -f "$DATA" ] || { echo "$DATA: missing (see ../shared/data/README.md)" >&2; exit 1; }
OUT=${1:-runs/label-list}
shift || true
mkdir -p "$OUT"
python3 - "$DATA" "$OUT" <<'PY'
import json, random, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
random.Random(0).shuffle(rows)
task = [{"text": r["question"], "label": r["title"].replace("_", " ")} for r in rows]
for name, part in (("train", task[:2000]), ("heldout", task[2000:3000])):
    with open(f"{sys.argv[2]}/{name}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in part)
listed = "Classify the text. Possible labels: {{ labels | join(', ') }}. Reply with the label only."
json.dump({"system": listed, "user": "[soft]{{ text }}", "answer": "[soft:4]"}, open(f"{sys.argv[2]}/listing-template.json", "w"))
PY
PT=.venv/bin/prompttune
run() {  # NAME [FLAGS...]
  local name=$1; shift
  rm -rf "${OUT:?}/$name"
  /usr/bin/time -v -o "$OUT/$name.time" $PT train "$OUT/train.jsonl" --out "$OUT/$name" "$@" --json | tail -n 1 > "$OUT/$name.json"
  $PT eval "$OUT/$name" "$OUT/heldout.jsonl" --json | tail -n 1 > "$OUT/$name-eval.json"
}
run built-in "$@"
run listed --template "$OUT/listing-template.json" "$@"
python3 - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
print(f"{'template':12}{'held-out':>10}{'best val':>10}{'steps':>7}{'ex/s':>7}{'command':>9}{'peak RSS':>10}")
for name in ("built-in", "listed"):
    tr, ev = json.load(open(f"{out}/{name}.json")), json.load(open(f"{out}/{name}-eval.json"))
    tm = open(f"{out}/{name}.time").read()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", tm).group(1)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", tm).group(1)) / 1024**2
    print(f"{name:12}{ev['accuracy']:>10.3f}{tr['best_val_accuracy']:>10.3f}{tr['steps']:>7}"
          f"{tr['train_examples_per_s']:>7.1f}{wall:>9}{rss:>8.2f} GB")
PY
