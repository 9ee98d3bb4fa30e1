"""`prompttune compare` on the tiny model and a tiny made-up task: every method runs (LoRA and full
fine-tuning too), the reports are written and parse, finished cells are reused, a failing method is
reported without losing the others, and the data-advantage arithmetic on curves with a known answer."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import NEG, POS, write_jsonl
from reference import reference_scores
from typer.testing import CliRunner

from prompttune import cli
from prompttune.compare import run_compare
from prompttune.compare.arms import available, parse_options, resolve
from prompttune.compare.cell import build_task
from prompttune.compare.report import summarize
from prompttune.compare.worth import Curve, advantage, constant_worth, describe
from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template
from prompttune.methods import METHODS
from prompttune.methods.zero_shot import ZeroShot

FAST = {"max_steps": 2, "batch_size": 4}


@pytest.fixture
def task_file(tmp_path):
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    rows = rows * 4
    random.Random(0).shuffle(rows)
    return write_jsonl(tmp_path / "task.jsonl", rows)  # 40 rows: 32 train pool, 4 validation, 8 test (seeded)


def compare(task_file, out, tiny_model_dir, **kw):
    return run_compare(task_file, out, model=str(tiny_model_dir), isolate=kw.pop("isolate", False), **{**FAST, **kw})


def by_method(result) -> dict:
    return {row["method"]: row for row in result["summary"]["methods"]}


def test_every_method_runs_and_the_reports_parse(task_file, tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    result = compare(task_file, out, tiny_model_dir, methods="all")
    rows = by_method(result)
    # every registry method is picked up with no code of its own in the harness, plus hard prompts and baselines
    assert set(rows) == set(available()) >= {"zero-shot", "few-shot", "calibrated", "lora", "full-ft", *METHODS}
    assert all(r["status"] == "ok" and 0 <= r["accuracy_mean"] <= 1 for r in rows.values()), rows
    assert rows["zero-shot"]["trainable_params"] == rows["calibrated"]["trainable_params"] == 0
    assert 0 < rows["prompt-tuning"]["trainable_params"] < rows["lora"]["trainable_params"]
    assert rows["probe"]["trainable_params"] == 2 * 32 + 2 and rows["probe"]["kind"] == "probe"
    n_backbone = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        tiny_model_dir).parameters())  # fmt: skip
    assert rows["full-ft"]["trainable_params"] == n_backbone
    assert rows["full-ft"]["stored_bytes"] > rows["lora"]["stored_bytes"] > rows["zero-shot"]["stored_bytes"] > 0
    assert all(r["peak_rss_mb"] > 0 and r["eval_examples_per_s"] > 0 for r in rows.values())
    assert rows["lora"]["train_examples_per_s"] > 0 and rows["lora"]["train_seconds"] > 0

    report = json.loads((out / "report.json").read_text())
    assert {m["method"] for m in report["methods"]} == set(rows)
    assert [m["rank"] for m in report["methods"]] == list(range(1, len(rows) + 1))
    page = (out / "report.html").read_text()
    assert "<table id='methods'>" in page and "data:image/png;base64," in page and "full-ft" in page
    md = (out / "report.md").read_text()
    assert "| rank | method | kind | accuracy |" in md and "| lora | baseline |" in md


def test_resume_reuses_finished_cells_and_curves_get_a_data_advantage(task_file, tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    kw = {"methods": "zero-shot,prompt-tuning,lora", "train_sizes": "4,8"}
    first = compare(task_file, out, tiny_model_dir, **kw)
    assert (first["ran"], first["reused"]) == (5, 0)  # zero-shot once (data-independent) + 2 sizes x 2 methods
    again = compare(task_file, out, tiny_model_dir, **kw)
    assert (again["ran"], again["reused"]) == (0, 5)
    assert by_method(again) == by_method(first)
    more = compare(task_file, out, tiny_model_dir, **kw, seeds="0,1")  # only the new seed's cells run
    assert (more["ran"], more["reused"]) == (4, 5)
    changed = compare(task_file, out, tiny_model_dir, **{**kw, "methods": "prompt-tuning"}, batch_size=2)
    assert changed["ran"] == 2  # another setting is another cell

    s = more["summary"]
    assert [p["train_size"] for p in s["curves"]["prompt-tuning"]] == [4, 8]
    assert all(p["runs"] == 2 for p in s["curves"]["lora"]) and s["curves"]["zero-shot"] == []
    assert s["worth"]["reference"] == "lora"
    assert "zero-shot" in s["worth"]["methods"]  # a flat line is worth the reference's rows at its accuracy
    assert "Accuracy by training rows" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3


class Broken(ZeroShot):
    """A registry method that fails at its first forward pass."""

    name = "broken"

    def prefix_kv(self, backbone, segments):
        raise RuntimeError("deliberately broken")


def test_a_failing_method_is_reported_without_losing_the_others(task_file, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(METHODS, "broken", Broken)
    out = tmp_path / "cmp"
    result = compare(task_file, out, tiny_model_dir, methods="zero-shot,broken,prompt-tuning")
    rows = by_method(result)
    assert rows["broken"]["status"] == "failed" and "deliberately broken" in rows["broken"]["errors"][0]
    assert rows["broken"]["rank"] is None and result["summary"]["methods"][-1]["method"] == "broken"
    assert rows["zero-shot"]["status"] == rows["prompt-tuning"]["status"] == "ok"
    assert "deliberately broken" in (out / "report.md").read_text()
    again = compare(task_file, out, tiny_model_dir, methods="zero-shot,broken,prompt-tuning")
    assert (again["ran"], again["reused"]) == (1, 2)  # failed cells are retried, finished ones kept


def test_a_cell_in_its_own_process_reports_its_own_peak_memory(task_file, tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    result = compare(task_file, out, tiny_model_dir, methods="calibrated", isolate=True)  # one process: ~2 s
    (row,) = result["summary"]["methods"]
    assert row["status"] == "ok" and row["peak_rss_mb"] > 50
    (cell,) = json.loads((out / "report.json").read_text())["cells"]
    assert cell["isolated"] and cell["accuracy"] == row["accuracy_mean"]
    assert len(list((out / "cells").glob("*.json"))) == 1 and (out / "logs").is_dir()
    logs = "".join(f.read_text() for f in (out / "logs").iterdir())
    assert "RuntimeWarning" not in logs  # the cell's process runs its own entry module (compare/cell_process.py)


def test_lora_prefix_is_recomputed_with_gradients_and_the_cache_follows_the_weights(tiny_model_dir):
    from prompttune.core.backbone import Backbone

    backbone = Backbone.load(str(tiny_model_dir))  # its own copy: LoRA changes it
    (arm,) = resolve(["lora"], {"lora": {"r": 2}})
    task = build_task(arm, backbone, ["negative", "positive"], Template.from_spec("classify"), None, seed=0)
    pm = task.model
    _, v = pm.prefix_kv()[0]
    assert v.requires_grad  # the constant text's values depend on the adapters being trained (v_proj)
    ds = from_records([{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG])
    enc, y = pm.encode(ds), pm.label_indices(ds)
    torch.nn.functional.cross_entropy(pm.label_scores(enc.ids, pm.prefix_kv()), y).backward()
    lora_b = [p for n, p in pm.method.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    before = pm.score(enc, calibrate=False)
    with torch.no_grad():  # what training does to the adapters
        for p in lora_b:
            p.copy_(torch.randn_like(p) * 0.5)
    pm.clear_cache()  # the Trainer drops the scorer's cache after every step; nothing else may be stale
    after = pm.score(enc, calibrate=False)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, reference_scores(pm, ds.rows), rtol=1e-4, atol=1e-4)


def test_worth_on_curves_with_a_known_answer():
    sizes = [16, 64, 256, 1024]
    ref = Curve(sizes, [0.50 + 0.05 * math.log2(n / 16) for n in sizes])
    # the method at n rows is as good as the reference at 4n rows: worth 3n rows, 4x fewer, at every level
    method = Curve(sizes, [0.50 + 0.05 * math.log2(4 * n / 16) for n in sizes])
    adv = advantage(method, ref)
    assert adv["ratio"] == pytest.approx(4.0, rel=1e-6)
    assert adv["accuracy_band"] == pytest.approx([0.6, 0.8])
    # mean over levels a in [0.6, 0.8] of 3 * 16 * 2^((a - 0.6) / 0.05) = 48 * (2^4 - 1) / (4 ln 2)
    assert adv["rows"] == pytest.approx(48 * 15 / (4 * math.log(2)), rel=1e-4)
    assert advantage(ref, method)["ratio"] == pytest.approx(0.25, rel=1e-6)
    assert describe(adv) == "needs 260 fewer rows (4.00x fewer) at accuracy 0.600-0.800"
    assert describe(advantage(ref, method)) == "needs 260 more rows (4.00x as many) at accuracy 0.600-0.800"
    assert advantage(Curve([1, 2], [0.1, 0.2]), ref) is None  # no accuracy both reach
    assert ref.rows_for(0.55) == pytest.approx(32)  # halfway in log(rows) between 16 and 64
    assert constant_worth(0.65, ref)["rows"] == pytest.approx(128)
    assert constant_worth(0.9, ref)["above_rows"] == 1024 and constant_worth(0.3, ref)["below_rows"] == 16
    dip = Curve(sizes, [0.5, 0.7, 0.6, 0.8])  # a dip is read as the running maximum
    assert dip.rows_for(0.7) == pytest.approx(64)


def test_summary_of_made_up_cells_means_stds_and_ranks():
    def cell(name, seed, n, acc, uses_data=True):
        arm = {"name": name, "kind": "k", "method": name, "options": {}, "uses_data": uses_data}
        return {"arm": arm, "seed": seed, "train_size": n, "status": "ok", "accuracy": acc, "n_train": n or 0,
                "trainable_params": 1, "stored_bytes": 1, "peak_rss_mb": 1.0}  # fmt: skip

    records = [cell("zs", None, None, 0.6, uses_data=False)]
    for seed, jitter in ((0, -0.01), (1, 0.01)):
        records += [cell("a", seed, n, acc + jitter) for n, acc in ((10, 0.5), (100, 0.7))]
        records += [cell("b", seed, n, acc + jitter) for n, acc in ((10, 0.6), (100, 0.9))]
    s = summarize(records, ["zs", "a", "b"], reference="a")
    rows = {r["method"]: r for r in s["methods"]}
    assert [r["method"] for r in s["methods"]] == ["b", "a", "zs"]
    assert rows["b"]["accuracy_mean"] == pytest.approx(0.9) and rows["b"]["runs"] == 2
    assert rows["b"]["accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert s["worth"]["methods"]["b"]["ratio"] > 1 and s["worth"]["methods"]["zs"]["rows"] == pytest.approx(
        10 ** 1.5)  # fmt: skip


def test_option_and_method_errors_name_the_flag():
    with pytest.raises(PromptTuneError, match="--method-option 'lora-r=8'"):
        parse_options(["lora-r=8"])
    assert parse_options(["lora.r=16", "few-shot.demos=8", "x.t=abc"]) == {
        "lora": {"r": 16},
        "few-shot": {"demos": 8},
        "x": {"t": "abc"},
    }
    with pytest.raises(PromptTuneError, match="--methods nope"):
        resolve(["nope"], {})
    with pytest.raises(PromptTuneError, match="not in --methods"):
        resolve(["lora"], {"prompt-tuning": {"lr": 1}})


def test_cli_compare_and_its_errors(task_file, tmp_path, tiny_model_dir):
    runner = CliRunner()
    base = ["compare", str(task_file), "--out", str(tmp_path / "c"), "--model", str(tiny_model_dir), "--no-isolate"]
    ok = runner.invoke(cli.app, [*base, "--methods", "zero-shot,few-shot", "-o", "few-shot.demos=2", "--json"])
    assert ok.exit_code == 0, ok.output
    last = json.loads(ok.stdout.strip().splitlines()[-1])
    assert {m["method"] for m in last["methods"]} == {"zero-shot", "few-shot"} and last["ran"] == 2
    bad = runner.invoke(cli.app, [*base, "--train-sizes", "4,999"])
    assert isinstance(bad.exception, PromptTuneError) and "--train-sizes 999" in str(bad.exception)
