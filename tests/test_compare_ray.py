"""`compare --executor ray` (each cell a Ray task on a local Ray instance, loopback only) lands the same cells in
the same store as the local executor, so the reports agree and either one resumes the other's run; and
`compare --lr-grid` (each trainable arm's learning rate chosen on validation)."""

from __future__ import annotations

import json
import logging
import random

import pytest
from conftest import NEG, POS, write_jsonl

from prompttune.compare import run_compare
from prompttune.compare.arms import resolve
from prompttune.compare.executors import check
from prompttune.compare.lr_grid import choose, expand, parse, rates
from prompttune.core.errors import PromptTuneError

FAST = {"max_steps": 4, "batch_size": 4}
METHODS = "zero-shot,prompt-tuning,prefix-tuning"


@pytest.fixture
def task_file(tmp_path):
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    rows = rows * 4
    random.Random(0).shuffle(rows)
    return write_jsonl(tmp_path / "task.jsonl", rows)


def compare(task_file, out, tiny_model_dir, **kw):
    return run_compare(task_file, out, model=str(tiny_model_dir), methods=METHODS, **{**FAST, **kw})


def scores(result) -> dict:
    """What a report says that does not depend on the machine's speed: each method's rank, score and size."""
    keep = ("rank", "accuracy_mean", "accuracy_std", "runs", "train_rows", "trainable_params", "status")
    return {row["method"]: {k: row[k] for k in keep} for row in result["summary"]["methods"]}


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_cells_give_the_local_report_and_resume_each_other(task_file, tmp_path, tiny_model_dir, local_ray):
    local = compare(task_file, tmp_path / "local", tiny_model_dir, seeds="0,1", isolate=False)
    remote = compare(task_file, tmp_path / "ray", tiny_model_dir, seeds="0,1", executor="ray")
    assert remote["ran"] == local["ran"] == 5  # zero-shot once, two methods x two seeds
    assert scores(remote) == scores(local)
    cells = sorted(p.name for p in (tmp_path / "ray" / "cells").glob("*.json"))
    assert cells == sorted(p.name for p in (tmp_path / "local" / "cells").glob("*.json"))  # the same keys
    record = json.loads(next((tmp_path / "ray" / "cells").glob("prompt-tuning-*.json")).read_text())
    assert record["isolated"] and record["peak_rss_mb"] > 0 and record["node"]
    # the Ray run's store resumes locally (nothing reruns), and the local one under Ray
    assert compare(task_file, tmp_path / "ray", tiny_model_dir, seeds="0,1", isolate=False)["ran"] == 0
    again = compare(task_file, tmp_path / "local", tiny_model_dir, seeds="0,1", executor="ray")
    assert again["ran"] == 0 and scores(again) == scores(local)


def test_executor_flags_are_checked_first():
    with pytest.raises(PromptTuneError, match="--executor dask: choose local or ray"):
        check("dask", None, 1, 0)
    with pytest.raises(PromptTuneError, match="--ray-address: only with --executor ray"):
        check("local", "auto", 1, 0)
    with pytest.raises(PromptTuneError, match="--cell-cpus 0"):
        check("local", None, 0, 0)
    with pytest.raises(PromptTuneError, match="--cell-gpus -1"):
        check("local", None, 1, -1)


def test_lr_grid_values_and_errors():
    assert parse(None) is None and parse("3") == 3 and parse("0.03, 0.003,0.01") == [0.003, 0.01, 0.03]
    arm = resolve(["prompt-tuning"], {})[0]
    assert rates(arm, 3) == [pytest.approx(arm.harness("lr") * f, rel=1e-2) for f in (10**-0.5, 1, 10**0.5)]
    for bad, says in (("1", "2 to 12"), ("13", "2 to 12"), ("0.01,x", "a count"), ("0.01,-1", "positive"),
                      ("0.01,0.01", "different")):  # fmt: skip
        with pytest.raises(PromptTuneError, match=f"--lr-grid {bad}: .*{says}"):
            parse(bad)
    hard, soft = resolve(["zero-shot", "prompt-tuning"], {"prompt-tuning": {"patience": 9}})
    grid = expand([hard, soft], [0.1, 0.2], max_steps=50)
    assert grid[0] == hard and [a.harness("lr") for a in grid[1:]] == [0.1, 0.2]
    assert all(a.harness("patience") == 9 and a.harness("eval_every") == 5 for a in grid[1:])  # the user's kept


def test_the_grid_keeps_the_rate_best_on_validation():
    def rec(lr, val, status="ok"):
        arm = {"name": "lora", "kind": "baseline", "method": "lora", "options": {"lr": lr}, "uses_data": True}
        return {"arm": arm, "seed": 0, "train_size": None, "status": status, "best_val_accuracy": val, "accuracy": lr}

    chosen, table = choose([rec(0.1, 0.5), rec(0.2, 0.75), rec(0.3, 0.9, "failed"), rec(0.4, 0.75)])
    assert len(chosen) == 1 and chosen[0]["lr"] == 0.2 and chosen[0]["accuracy"] == 0.2  # ties: the first rate
    assert [g["lr"] for g in chosen[0]["lr_grid"]] == [0.1, 0.2, 0.3, 0.4] and table["lora"][0]["lr"] == 0.2


def test_compare_with_an_lr_grid_reports_the_rate_chosen_per_arm(task_file, tmp_path, tiny_model_dir):
    out = tmp_path / "grid"
    result = compare(task_file, out, tiny_model_dir, lr_grid="0.001,0.05", isolate=False)
    assert result["ran"] == 5  # zero-shot once, each trained arm at both rates
    rows = {r["method"]: r for r in result["summary"]["methods"]}
    assert set(rows) == {"zero-shot", "prompt-tuning", "prefix-tuning"} and all(r["runs"] == 1 for r in rows.values())
    report = json.loads((out / "report.json").read_text())
    for arm in ("prompt-tuning", "prefix-tuning"):
        (pick,) = report["lr_grid"][arm]
        best = max(pick["grid"], key=lambda g: g["best_val_accuracy"])["best_val_accuracy"]
        assert pick["lr"] in (0.001, 0.05) and pick["grid"][[g["lr"] for g in pick["grid"]].index(pick["lr"])][
            "best_val_accuracy"] == best  # fmt: skip
    md = (out / "report.md").read_text()
    assert "learning rate chosen on validation: prompt-tuning" in md and "(of 0.001, 0.05)" in md
    assert compare(task_file, out, tiny_model_dir, lr_grid="0.001,0.05", isolate=False)["ran"] == 0  # resumes


def test_cli_executor_and_grid_flags_name_what_is_wrong(task_file, tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from prompttune.cli.app import app

    base = ["compare", str(task_file), "--out", str(tmp_path / "c"), "--model", str(tiny_model_dir)]
    for flags, says in (
        (["--executor", "dask"], "--executor dask: choose local or ray"),
        (["--ray-address", "auto"], "--ray-address: only with --executor ray"),
        (["--lr-grid", "0.01,x"], "--lr-grid 0.01,x: give a count"),
        (["--cell-cpus", "0"], "--cell-cpus 0"),
    ):
        res = CliRunner().invoke(app, base + flags)
        assert res.exit_code != 0 and says in (res.output + str(res.exception)), (flags, res.output)
    assert not (tmp_path / "c").exists()  # refused before anything ran or was written
