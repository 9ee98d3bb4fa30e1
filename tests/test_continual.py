"""Continual learning (`continual`): progressive prompts keep earlier tasks bitwise, sequential forgets; the
accuracy matrix, average accuracy, BWT and FWT reported as JSON, Markdown and a plot; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from multitask_data import FAST, assert_user_error, invoke, last_json, make_runner, task_flags, write_tasks

import prompttune
from prompttune.core.artifact import read
from prompttune.core.data import load_rows
from prompttune.multitask import learn_continual
from prompttune.multitask.report import continual_metrics
from prompttune.task import split_validation
from prompttune.train import TrainConfig

CONFIG = dict(max_steps=6, batch_size=4, eval_every=3, ema=0, warmup_steps=1, time_budget_s=None, lr=0.05)


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def scores(pack, name, path):
    """Task ``name``'s label log-probabilities on its held-out rows (as the run carved them)."""
    _, val = split_validation(load_rows(path), 0.1, 0)
    task = pack.task(name)
    return task.model.score(task.model.encode(val))


def learn(files, names, method, backbone, out=None):
    specs = [f"{n}={files[n]}" for n in names]
    return learn_continual(
        specs, out, method=method, num_virtual_tokens=4, config=TrainConfig(**CONFIG), backbone=backbone
    )


def test_progressive_keeps_earlier_tasks_bitwise(files, tiny_backbone, tmp_path):
    first, _ = learn(files, ["sent"], "progressive", tiny_backbone, tmp_path / "one")
    pack, report = learn(files, ["sent", "topic", "pair"], "progressive", tiny_backbone, tmp_path / "three")
    # task sent predicts exactly as it did before later tasks were learned
    assert torch.equal(scores(first, "sent", files["sent"]), scores(pack, "sent", files["sent"]))
    m = report["matrix"]
    assert report["bwt"] == 0.0 and m[2][0] == m[1][0] == m[0][0] and m[2][1] == m[1][1]
    assert m[0][1] is None and len(m) == 3
    # the newest prompt stands before the frozen earlier ones: task pair's table holds topic's and sent's own rows
    _, w = read(tmp_path / "three" / "pack")
    own = {n: w[f"params.own_{n}"] for n in ("sent", "topic", "pair")}
    table = w["tasks.pair"]
    assert table.shape[0] == 3 * 4 + 4  # three [soft] prompts of 4 and the task's own [soft:4]
    assert torch.equal(table[:12], torch.cat([own["pair"][:4], own["topic"][:4], own["sent"][:4]]))
    assert torch.equal(table[12:], own["pair"][4:])


def test_sequential_trains_the_prompt_earlier_tasks_read(files, tiny_backbone):
    """Sequential: one prompt; the second task's run trains the very tensor the first task reads (so whatever it
    learns moves the first task: forgetting), where progressive trains only the new task's own prompt."""
    from prompttune.multitask.continual import Learner
    from prompttune.multitask.specs import load_tasks
    from prompttune.multitask.view import Stage, Strategy

    data = load_tasks([("sent", files["sent"]), ("topic", files["topic"])], None, 0)
    for method in ("sequential", "progressive"):
        strategy = Strategy.get(method)
        learner = Learner(tiny_backbone, strategy, 4, "labels", 0)
        first = learner.add(data[0], learner.fresh(data[0]))
        learner.add(data[1], learner.fresh(data[1]))
        trained = Stage(strategy, strategy.keys("topic")).params
        before = first.model.method.full_table()
        with torch.no_grad():
            for p in trained.values():
                p.add_(1.0)  # what a training step on task topic does to its parameters
        moved = not torch.equal(before, first.model.method.full_table())
        assert moved == (method == "sequential"), method


def test_cli_report_and_pack(files, tiny_model_dir, tmp_path):
    out = tmp_path / "cl"
    result = invoke("continual", *task_flags(files), "--out", out, "--model", tiny_model_dir, *FAST, "--json")
    report = last_json(result.stdout)
    saved = json.loads((out / "report.json").read_text())
    assert saved["matrix"] == report["matrix"] and saved["bwt"] == report["bwt"] == 0.0
    md = (out / "report.md").read_text()
    assert "| after \\ on | sent | topic | pair |" in md and "BWT" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    pred = invoke("predict", out / "pack", "a great movie", "--task", "sent", "--model", tiny_model_dir, "--json")
    assert json.loads(pred.stdout)["label"] in ("positive", "negative")
    ev = last_json(
        invoke("eval", out / "pack", files["topic"], "--task", "topic", "--model", tiny_model_dir, "--json").stdout
    )
    pack = prompttune.load(out / "pack", model=str(tiny_model_dir))
    assert ev["accuracy"] == pack.task("topic").evaluate(files["topic"])["accuracy"]
    # the same folder again: only with --overwrite
    again = ["continual", *task_flags(files, ["sent"]), "--out", out, "--model", tiny_model_dir, *FAST]
    assert "--overwrite" in invoke_error(*again)
    invoke(*again, "--overwrite")
    assert json.loads((out / "report.json").read_text())["tasks"] == ["sent"]


def invoke_error(*args) -> str:
    from multitask_data import runner

    from prompttune import cli

    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code != 0
    return str(result.exception)


def test_metrics_by_hand():
    m = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.7, 0.9]]
    got = continual_metrics(m, before=[0.5, 0.6, 0.4], baseline=[0.5, 0.5, 0.5])
    assert got["average_accuracy"] == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert got["bwt"] == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    assert got["fwt"] == pytest.approx(((0.6 - 0.5) + (0.4 - 0.5)) / 2)
    assert continual_metrics([[0.7]], [0.5], [0.5]) == {"average_accuracy": 0.7, "bwt": None, "fwt": None}


def test_bad_input(run_main, files, tiny_model_dir, tmp_path):
    base = ["continual", "--out", tmp_path / "o", "--model", tiny_model_dir]
    s = files["sent"]
    assert_user_error(run_main(*base, "--task", f"a={s}", "--task", f"a={s}"), "--task a", "twice")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--method", "mpt"), "--method mpt", "progressive")
    many = [x for i in range(3) for x in ("--task", f"t{i}={s}")]
    assert_user_error(run_main(*base, *many, "--num-virtual-tokens", "100"), "--num-virtual-tokens 100", "256")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    run = run_main("continual", "--task", f"a={s}", "--out", tmp_path / "busy", "--model", tiny_model_dir)
    assert_user_error(run, "keep.txt")


def test_tasks_whose_fields_the_built_in_template_never_shows_are_warned_about(files, tiny_backbone, tmp_path):
    """train-multi and continual pick each task's built-in template: a task whose rows carry other text (WiC's
    ``word``) gets a warning before training (on_start / on_warning) and in the summary / report."""
    from prompttune.multitask import train_multi

    rows = [json.loads(line) for line in open(files["pair"])]
    wic = tmp_path / "wic.jsonl"
    wic.write_text("".join(json.dumps({**r, "word": "bank", "idx": i}) + "\n" for i, r in enumerate(rows)))
    specs = [f"sent={files['sent']}", f"wic={wic}"]
    config = TrainConfig(**(CONFIG | {"max_steps": 1}))
    started, warned = [], []
    _, _, summary = train_multi(
        specs, None, method="spot", num_virtual_tokens=4, config=config, backbone=tiny_backbone,
        on_start=lambda info: started.extend(info["warnings"]),
    )  # fmt: skip
    assert len(started) == 1 and started[0].startswith("task wic: ") and "word field is never shown" in started[0]
    assert "built-in templates" in started[0] and "--template" not in started[0]  # packs have no --template
    assert summary["warnings"] == started
    _, report = learn_continual(
        specs, None, num_virtual_tokens=4, config=config, backbone=tiny_backbone, on_warning=warned.append
    )
    assert warned == started and report["warnings"] == started
