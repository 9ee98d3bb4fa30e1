"""`prompttune train --average-best`: the summary, the manifest and the human output agree on what was saved."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl
from test_cli import invoke, last_json, rows

from prompttune.core.errors import PromptTuneError


def test_train_average_best_saves_and_reports_the_mean(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", rows(4))
    art = tmp_path / "art"
    common = [data, "--out", art, "--model", tiny_model_dir, "--batch-size", "4", "--num-virtual-tokens", "4"]
    result = invoke("train", *common, "--max-steps", "6", "--eval-every", "2", "--average-best", "2", "--json")
    assert result.exit_code == 0, result.stderr
    summary = last_json(result.stdout)
    metrics = json.loads((art / "manifest.json").read_text())["metrics"]
    assert metrics["kept_steps"] == summary["kept_steps"] and metrics["averaged_val"] == summary["averaged_val"]
    if summary["averaged_val"] is None:  # one state kept (the start, or an average that validated worse)
        assert summary["kept_steps"] == [summary["best_step"]]
    else:
        assert len(summary["kept_steps"]) == 2 and summary["best_step"] in summary["kept_steps"]
    human = invoke("train", *common, "--max-steps", "6", "--eval-every", "2", "--average-best", "2", "--overwrite")
    said = " ".join(human.stdout.split())
    assert ("saved the mean of the states validated at steps" in said) == (summary["averaged_val"] is not None)
    with pytest.raises(PromptTuneError, match="--average-best 0: must be at least 1"):
        invoke("train", *common, "--overwrite", "--average-best", "0")
