"""Linear probes (``--head probe``, ``prompttune.probe``): the features are the frozen decoder's own states, the
head is scikit-learn's logistic regression, and a probe artifact trains, saves, loads, evaluates and serves."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from prompttune.api import load
from prompttune.cli.app import app
from prompttune.core.data import from_records
from prompttune.core.errors import DataError
from prompttune.core.template import SoftSlot
from prompttune.probe import ProbeTask
from prompttune.probe.features import batches, default_layers
from prompttune.probe.head import ProbeHead, choose_strength
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

PAIRS = [
    ("the cat sat on the mat", "a great movie", "entailment"),
    ("the cat sat on the mat", "boring and bad", "not_entailment"),
    ("I loved it", "truly wonderful and fun", "entailment"),
    ("I hated it", "what a waste", "not_entailment"),
    ("a joy to watch", "a great movie , truly wonderful", "entailment"),
    ("a terrible film", "boring and bad , what a waste", "not_entailment"),
]
ROWS = [{"text_a": a, "text_b": b, "label": label} for a, b, label in PAIRS] * 4


def test_features_are_the_layer_states_of_the_whole_prompt_run_at_once(tiny_backbone):
    """Cached prefix + left-padded rows of different lengths give each row's last-token state in each chosen
    layer exactly as one uncached run of its full prompt does."""
    from prompttune.core import layer_states

    ds = from_records(ROWS[:6])
    for layers in ((1, 2), (1,)):  # with the last layer (all of them run), and below it (the pass stops early)
        task = ProbeTask.create(tiny_backbone, ["entailment", "not_entailment"], _template(), layers=layers)
        assert layer_states.can_stop_early(tiny_backbone.body, layers) == (layers == (1,))
        got = task.model.features(ds)
        prompt = task.model.prompt
        for i, row in enumerate(ds.rows):
            prefix_ids = [t for s in prompt.segments if not isinstance(s, SoftSlot) for t in s.tolist()]
            full = torch.tensor([prefix_ids + prompt.encode([row]).ids[0]])
            with torch.no_grad():
                states = tiny_backbone.model(full, output_hidden_states=True).hidden_states
            want = torch.cat([states[j][0, -1] for j in layers]).float()
            assert torch.allclose(got[i], want, atol=1e-4), (layers, i)


def test_an_early_stop_runs_no_layer_above_and_leaves_other_threads_alone(tiny_backbone):
    from concurrent.futures import ThreadPoolExecutor

    from prompttune.core import layer_states

    body = tiny_backbone.body
    ran = []
    handle = body.layers[1].register_forward_hook(lambda m, a, o: ran.append(1))
    hooks = {i: set(block._forward_hooks) for i, block in enumerate(body.layers)}  # transformers' own and ours
    ids = torch.tensor([[5, 6, 7]])
    mask, pos = torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None]
    try:
        states = tiny_backbone.run(ids, mask, pos, None, layers=(1,))
        assert ran == [] and states[0].shape == (1, 3, 32)
        with ThreadPoolExecutor(2) as pool:  # a full pass in another thread while one thread stops early
            full = pool.submit(tiny_backbone.run, ids, mask, pos, None)
            early = pool.submit(tiny_backbone.run, ids, mask, pos, None, layers=(1,))
            assert full.result().shape == (1, 3, 32) and early.result()[0].shape == (1, 3, 32)
        assert hooks == {i: set(block._forward_hooks) for i, block in enumerate(body.layers)}  # its hooks are gone
        assert layer_states.states_of(body, (1,), lambda: body(input_ids=ids))[0].shape == (1, 3, 32)
    finally:
        handle.remove()


def test_head_equals_scikit_learn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g) * torch.arange(1, 9)  # features of different scales
    y = ((x[:, 0] / 1 + x[:, 3] / 4 + 0.5 * torch.randn(120, generator=g)) > 0).long() + (x[:, 5] > 6).long()
    head = ProbeHead(8, 3)
    head.fit(x, y, c=0.1)
    scaled = preprocessing.StandardScaler().fit_transform(x.double().numpy())
    # torch's std is the unbiased one: scale the same way for an exact comparison
    scaled = scaled * ((len(x) - 1) / len(x)) ** 0.5
    ref = sklearn.LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(scaled, y.numpy())
    with torch.no_grad():
        ours = head(x).softmax(-1).double().numpy()
    assert abs(ours - ref.predict_proba(scaled)).max() < 2e-3


def test_strength_is_chosen_on_validation_rows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 30, generator=g)
    y = (x[:, 0] > 0).long()
    x_val = torch.randn(200, 30, generator=g)
    y_val = (x_val[:, 0] > 0).long()
    c, grid = choose_strength(x, y, x_val, y_val, 2, strengths=(1e-4, 1.0))
    assert [r["c"] for r in grid] == [1e-4, 1.0]
    assert c == max(grid, key=lambda r: (r["val"], -r["c"]))["c"]


def test_feature_batches_are_bounded_and_cover_every_row():
    ids = [[1] * n for n in (3, 900, 5, 1200, 2, 40) * 20]
    plan = batches(ids)
    assert sorted(i for b in plan for i in b) == list(range(len(ids)))
    assert all(len(b) <= 64 and max(len(ids[i]) for i in b) * len(b) <= 2048 or len(b) == 1 for b in plan)


def test_default_layer_is_two_thirds_up():
    assert default_layers(30) == (20,) and default_layers(2) == (1,)


def test_train_save_load_predict_through_the_cli(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "probe"
    res = CliRunner().invoke(
        app, ["train", str(data), "--head", "probe", "--model", str(tiny_model_dir), "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["head"] == "probe" and summary["trainable_params"] == 2 * 32 + 2
    assert summary["steps"] == 3 and 0 <= summary["best_val_accuracy"] <= 1
    task = load(out, str(tiny_model_dir))
    assert isinstance(task, ProbeTask) and task.labels == ["entailment", "not_entailment"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["probe"]["layers"] == [1] and manifest["training"]["probe_c"] in (0.001, 0.01, 0.1)
    preds = task.predict(ROWS)
    assert {p["label"] for p in preds} <= set(task.labels)
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-5 for p in preds)
    report = task.evaluate(data)
    assert report["accuracy"] == pytest.approx(
        sum(p["label"] == r["label"] for p, r in zip(preds, ROWS, strict=True)) / len(ROWS)
    )
    res = CliRunner().invoke(app, ["eval", str(out), str(data), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["accuracy"] == pytest.approx(report["accuracy"])


def test_a_probe_fits_rows_its_features_separate(tiny_backbone):
    """On rows whose label follows the second text, the probe reaches full training accuracy (a random tiny
    model's states still tell those texts apart) and its predictions survive save and load."""
    task = ProbeTask.for_data(tiny_backbone, from_records(ROWS))
    task.fit(from_records(ROWS), from_records(ROWS[:6]))
    assert task.evaluate(from_records(ROWS))["accuracy"] == 1.0


def test_wrong_flags_and_labels_are_errors(tiny_model_dir, tiny_backbone, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    for extra in (["--method", "prompt-tuning"], ["--demos", "2"], ["--calibrate"]):
        res = CliRunner().invoke(
            app, ["train", str(data), "--head", "probe", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"),
                  *extra],
        )  # fmt: skip
        assert res.exit_code != 0 and "--head probe" in res.output + str(res.exception), (extra, res.output)
    task = ProbeTask.for_data(tiny_backbone, from_records(ROWS))
    with pytest.raises(DataError, match="not one of|unknown|label"):
        task.fit(from_records(ROWS), from_records([{"text_a": "a", "text_b": "b", "label": "maybe"}] * 2))
    with pytest.raises(DataError, match="layers"):
        ProbeTask.create(tiny_backbone, ["a", "b"], _template(), layers=(7,))


def test_served_probe_answers_as_the_library(tiny_model_dir, tiny_backbone, tmp_path):
    task = ProbeTask.for_data(tiny_backbone, from_records(ROWS))
    task.fit(from_records(ROWS), from_records(ROWS[:6]))
    task.save(tmp_path / "nli")
    table = build_table(ServeConfig(model=str(tiny_model_dir)), [f"nli={tmp_path / 'nli'}"], {})
    rows = [{"text_a": a, "text_b": b} for a, b, _ in PAIRS]
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=50), table)) as s, httpx.Client(base_url=s.url) as c:
        listed = c.get("/v1/tasks").json()
        r = c.post("/v1/tasks/nli/predict", json={"inputs": rows}, timeout=120)
    assert r.status_code == 200, r.text
    want = table.get("nli").task.predictions(from_records(rows))
    for got, w in zip(r.json()["outputs"], want, strict=True):
        assert got["label"] == w["label"] and got["scores"] == pytest.approx(w["scores"], abs=1e-6)
    assert any(t["name"] == "nli" and t.get("head") == "probe" for t in _tasks(listed)), listed


def _tasks(listed):
    return listed["tasks"] if isinstance(listed, dict) else listed


def _template():
    from prompttune.core.template import BUILTIN, Template

    return Template.from_spec(BUILTIN["classify-pair"])


def test_pair_rows_default_to_a_probe_unless_a_prompt_is_asked_for(tiny_model_dir, tmp_path):
    from prompttune.api import train_from_file
    from prompttune.prompt_task import PromptTask
    from prompttune.train import TrainConfig

    data = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    config = TrainConfig(max_steps=1, batch_size=4, eval_every=1)
    task, _, summary = train_from_file(data, tmp_path / "a", model=str(tiny_model_dir), config=config)
    assert isinstance(task, ProbeTask) and summary["head"] == "probe"
    for asked in ({"method": "prompt-tuning"}, {"template": "classify-pair"}, {"demos": 2}):
        task, _, summary = train_from_file(data, None, model=str(tiny_model_dir), config=config, **asked)
        assert isinstance(task, PromptTask) and "head" not in summary, asked
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": r["text_a"], "label": r["label"]} for r in ROWS])
    task, _, _ = train_from_file(single, None, model=str(tiny_model_dir), config=config)
    assert isinstance(task, PromptTask)  # single texts keep label words


def test_two_processes_fit_the_probe_one_process_fits(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        cmd = [sys.executable, "-m", "prompttune", "train", str(data), "--out", str(out), "--model",
               str(tiny_model_dir), "--json", *(["--nproc", "2"] if n == 2 else [])]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert len([x for x in res.stdout.splitlines() if x.startswith("{")]) == 1  # rank 0 reports
        outs[n] = load(out, str(tiny_model_dir))
    one, two = outs[1].predict(ROWS[:6]), outs[2].predict(ROWS[:6])
    for a, b in zip(one, two, strict=True):
        # features summed in another order (1 vs 2 threads a process), then L-BFGS to its tolerance: ~1e-4 apart
        assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-3)


def test_each_rank_reads_its_share_of_the_rows(tiny_backbone, monkeypatch):
    from prompttune.probe import task as probe_task

    class Rank:
        def __init__(self, rank):
            self.rank, self.world = rank, 2

        def all_reduce_sum(self, t):
            return t  # one rank's part alone: what it read itself

    task = ProbeTask.for_data(tiny_backbone, from_records(ROWS))
    ds = from_records(ROWS[:7])
    whole = task.model.features(ds)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(probe_task, "current", lambda r=r: Rank(r))
        parts.append(task.model.shared_features(task.model.prompt.encode(ds).ids))
    read = [set((p.abs().sum(-1) > 0).nonzero()[:, 0].tolist()) for p in parts]
    assert read[0].isdisjoint(read[1]) and read[0] | read[1] == set(range(7)) and {len(x) for x in read} == {3, 4}
    assert torch.allclose(parts[0] + parts[1], whole, atol=1e-5)
