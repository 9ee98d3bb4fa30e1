"""`prompttune compare` on generation data (issue 14, item 4): every arm (hard prompts zero-shot and few-shot, soft
methods, LoRA) runs on the tiny model, the report is ranked by the chosen metric and names it, no input is on two
sides of the split, and bad choices are errors naming the flag."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from prompttune import cli
from prompttune.compare import run_compare
from prompttune.compare.generation import demos_for, generation_split
from prompttune.core.errors import PromptTuneError

INPUTS = [
    "a great movie",
    "the cat sat",
    "I loved it",
    "boring and bad",
    "a joy to watch",
    "what a waste",
    "the cat sat on the mat",
    "a terrible film",
    "truly wonderful and fun",
    "I hated it",
]
ARMS = ["zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "lora"]


def gen_rows() -> list[dict]:
    rows = [{"input": w, "target": f"{w} , truly fun"} for w in INPUTS]
    return rows + [{"input": w, "target": f"it was {w}"} for w in INPUTS]  # two references per input


@pytest.fixture
def gen_file(tmp_path):
    return write_jsonl(tmp_path / "gen.jsonl", gen_rows())


def test_the_split_keeps_an_inputs_references_together(gen_file):
    split = generation_split(gen_file, None, None, None, None)
    sides = [{r.fields["input"] for r in part.rows} for part in (split.pool, split.val, split.test)]
    assert sides[0] and sides[1] and sides[2]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(part) for part in (split.pool, split.val, split.test)) == len(gen_rows())
    demos = demos_for(split.pool, ["input"], 3, 0)
    assert len({d["input"] for d in demos}) == 3 and all(d["label"] for d in demos)


@pytest.mark.parametrize("metric", ["rougeL", "bleu"])
def test_a_generation_compare_ranks_every_arm_by_the_metric(tmp_path, gen_file, tiny_model_dir, metric):
    out = tmp_path / "cmp"
    result = run_compare(
        gen_file,
        out,
        methods=",".join(ARMS),
        method_options=["few-shot.demos=2", "prompt-tuning.num_virtual_tokens=4", "prefix-tuning.num_virtual_tokens=4"],
        max_steps=2,
        batch_size=4,
        model=str(tiny_model_dir),
        isolate=False,
        metric=metric,
    )
    table = result["summary"]["methods"]
    assert [r["method"] for r in table if r["status"] == "ok"] and all(r["status"] == "ok" for r in table), table
    assert sorted(r["method"] for r in table) == sorted(ARMS)
    scores = [r["accuracy_mean"] for r in table]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in table] == list(range(1, len(ARMS) + 1))
    report = json.loads((out / "report.json").read_text())
    cells = {c["arm"]["name"]: c for c in report["cells"]}
    for name, cell in cells.items():
        key = {"rougeL": "rougeL", "bleu": "bleu"}[metric]
        assert cell["metric"] == metric and cell["accuracy"] == cell[key], name
        assert {"bleu", "rougeL", "exact_match", "f1"} <= set(cell) and cell["n_test"] == 2
    assert cells["zero-shot"]["trainable_params"] == 0 and cells["zero-shot"]["steps"] == 0
    assert cells["few-shot"]["trainable_params"] == 0
    assert cells["lora"]["trainable_params"] > 0 and cells["lora"]["steps"] == 2
    assert cells["prefix-tuning"]["steps"] == 2
    md = (out / "report.md").read_text()
    label = {"rougeL": "ROUGE-L", "bleu": "BLEU"}[metric]
    assert f"| {label} |" in md and "| accuracy |" not in md and f"ranked by {label}" in md
    # rerun: every cell is reused, nothing trains again
    again = run_compare(
        gen_file,
        out,
        methods=",".join(ARMS),
        method_options=["few-shot.demos=2", "prompt-tuning.num_virtual_tokens=4", "prefix-tuning.num_virtual_tokens=4"],
        max_steps=2,
        batch_size=4,
        model=str(tiny_model_dir),
        isolate=False,
        metric=metric,
    )
    assert again["ran"] == 0


def test_bad_choices_are_errors_naming_the_flag(tmp_path, gen_file, sentiment_file, tiny_model_dir):
    with pytest.raises(PromptTuneError, match="--metric accuracy: unknown"):
        run_compare(gen_file, tmp_path / "a", methods="zero-shot", model=str(tiny_model_dir), metric="accuracy")
    with pytest.raises(PromptTuneError, match="--methods calibrated: not for generation data"):
        run_compare(gen_file, tmp_path / "b", methods="zero-shot,calibrated", model=str(tiny_model_dir))
    with pytest.raises(PromptTuneError, match="--metric bleu: for generation data"):
        run_compare(sentiment_file, tmp_path / "c", methods="zero-shot", model=str(tiny_model_dir), metric="bleu")


def test_compare_cli_runs_generation_data_in_its_own_processes(tmp_path, gen_file, tiny_model_dir):
    """The default --methods on generation data leave 'calibrated' out; cells run isolated; --metric em."""
    out = tmp_path / "cmp"
    args = ["compare", str(gen_file), "--out", str(out), "--model", str(tiny_model_dir), "--metric", "em"]
    args += ["--methods", "zero-shot,prompt-tuning", "-o", "prompt-tuning.num_virtual_tokens=2"]
    result = CliRunner().invoke(cli.app, [*args, "--max-steps", "1", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert [m["method"] for m in payload["methods"]] and all(m["status"] == "ok" for m in payload["methods"])
    assert "exact match" in (out / "report.md").read_text()
