"""ATTEMPT-style transfer (train --init-from PACK --source-task mixture) on the tiny model and made-up tasks: the
source prompts stay frozen, the mixture weights depend on the input, a row scores the same alone as in a batch,
the artifact round-trips through eval/predict, and packs without separate source prompts are errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from multitask_data import PAIR, assert_user_error, invoke, last_json, make_runner, write_tasks
from safetensors.torch import load_file, save_file

import prompttune
from prompttune.api import train_from_file
from prompttune.compare import run_compare
from prompttune.core.artifact import file_digest, read
from prompttune.core.errors import PromptTuneError
from prompttune.multitask import MixtureTask, train_multi
from prompttune.multitask.attempt import mixture_sources
from prompttune.task import as_dataset
from prompttune.train import TrainConfig

SPEED = ("examples_per_s", "eval_seconds")
CONFIG = dict(max_steps=6, batch_size=4, eval_every=3, ema=0, warmup_steps=1, time_budget_s=None, lr=0.05)


def make_pack(folder, backbone, method: str, form: str, spread: bool):
    files = write_tasks(folder)
    out = folder / f"{method}-{form}"
    specs = [f"sent={files['sent']}", f"topic={files['topic']}"]
    config = TrainConfig(**CONFIG)
    train_multi(specs, out, method=method, num_virtual_tokens=4, form=form, config=config, backbone=backbone)
    if spread:  # 6 steps may keep every task at P* (factors at 1): move the tasks apart, as longer training does
        weights = load_file(out / "weights.safetensors")
        for i, name in enumerate(["sent", "topic"]):
            weights[f"tasks.{name}"] = weights[f"tasks.{name}"] + 0.05 * (i + 1)
        save_file(weights, out / "weights.safetensors")
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["weights_sha256"] = file_digest(out / "weights.safetensors")
        (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module", params=["early", "late"])
def pack(request, tmp_path_factory, tiny_backbone):
    """An mpt pack of two source tasks with the early ([soft] before the text) or late (after) templates."""
    return make_pack(tmp_path_factory.mktemp("attempt"), tiny_backbone, "mpt", request.param, spread=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("target") / "pair.jsonl", PAIR * 4)


@pytest.fixture(scope="module")
def trained(pack, target, tmp_path_factory, tiny_backbone):
    """(the trained mixture task, its summary, its state before the first step, the saved artifact)."""
    seen, out = {}, tmp_path_factory.mktemp("mixture") / "mix"
    task, result, summary = train_mixture(pack, target, out, tiny_backbone, seen)
    assert result.steps == 6
    return task, summary, seen["state"], out


def train_mixture(pack, target, out, backbone, seen=None):
    form = "-late" if pack.name.endswith("late") else ""

    def started(task, info):
        if seen is not None:
            seen["state"] = {k: v.detach().clone() for k, v in task.model.method.trainable_state().items()}
            seen["task"] = task

    return train_from_file(
        target,
        out,
        template=f"classify-pair{form}",
        shared_settings={"num_virtual_tokens": 4},
        config=TrainConfig(**CONFIG),
        backbone=backbone,
        init_from=pack,
        source_task="mixture",
        on_start=started,
    )


def test_sources_stay_frozen_while_the_target_and_attention_train(pack, trained):
    task, summary, before, _ = trained
    assert isinstance(task, MixtureTask)
    assert "mixture of the 2 source prompts" in summary["init_from"]
    after = task.model.method.trainable_state()
    sources, names = mixture_sources(pack, *read(pack))
    assert names == ["sent", "topic"]
    assert torch.equal(before["sources"], sources) and torch.equal(after["sources"], sources)  # frozen
    assert not torch.equal(before["embeddings"], after["embeddings"])  # the target prompt trained
    assert not torch.equal(before["down.weight"], after["down.weight"])  # and the attention module
    n, d = sources.shape[1:]
    # trainable: the target prompt + W_down, W_up (with biases) + LayerNorm; not the sources
    assert summary["trainable_params"] == n * d + (d * 64 + 64) + (64 * d + d) + 2 * d


def test_weights_depend_on_the_input_and_a_row_scores_alone_as_in_a_batch(trained):
    task = trained[0]
    model = task.model
    records = [{"text_a": "a great movie", "text_b": "boring"}, {"text_a": "the mat", "text_b": "sports"}]
    rows = as_dataset(records)
    ids = model.encode(rows).ids
    with torch.no_grad():
        a = model.method.mixture_weights(model.pooled(ids))
    assert a.shape == (2, 3) and torch.allclose(a.sum(-1), torch.ones(2))
    assert not torch.allclose(a[0], a[1])  # instance-dependent
    both = task.predict(rows)
    alone = [task.predict(records[i : i + 1])[0] for i in range(2)]
    for x, y in zip(both, alone, strict=True):
        assert x.label == y.label
        assert all(abs(x.scores[k] - y.scores[k]) < 1e-5 for k in x.scores)
    # the mixture is what is scored: with the target prompt alone the scores differ
    plain = task.model.method.embeddings.detach()[None].expand(2, -1, -1)
    prefix = model.cached_prefix()
    with torch.no_grad():
        mixed = model.label_scores(ids, prefix)
        with model.method.rows(plain):
            target_only = super(type(model), model).label_scores(ids, model.prefix_kv(), None)
    assert not torch.allclose(target_only, mixed)


def test_save_and_load_score_identically(trained, target, tmp_path, tiny_backbone, tiny_model_dir):
    task, _, _, out = trained
    manifest, _ = read(out)
    assert manifest["method"] == "attempt" and manifest["mixture"]["sources"] == ["sent", "topic"]
    loaded = prompttune.load(out, model=tiny_backbone)
    assert isinstance(loaded, MixtureTask)
    a, b = loaded.evaluate(target), task.evaluate(target)
    assert {k: v for k, v in a.items() if k not in SPEED} == {k: v for k, v in b.items() if k not in SPEED}
    got = last_json(invoke("eval", out, target, "--model", tiny_model_dir, "--json").stdout)
    assert got["accuracy"] == task.evaluate(target)["accuracy"]
    fields = {"text_a": "I loved it", "text_b": "a joy"}
    rows = write_jsonl(tmp_path / "inputs.jsonl", [fields])
    said = json.loads(invoke("predict", out, "--file", rows, "--model", tiny_model_dir, "--json").stdout)
    said = said[0] if isinstance(said, list) else said
    want = task.predict([fields])[0]
    assert said["label"] == want.label
    assert all(abs(said["scores"][k] - want.scores[k]) < 1e-6 for k in want.scores)


def test_compare_arm_with_the_mixture(pack, target, tmp_path, tiny_model_dir):
    result = run_compare(
        target,
        tmp_path / "cmp",
        methods="mpt-transfer",
        method_options=[f"mpt-transfer.pack={pack}", "mpt-transfer.source-task=mixture"],
        train_sizes="8",
        max_steps=2,
        batch_size=4,
        model=str(tiny_model_dir),
        template="classify-pair-late" if pack.name.endswith("late") else None,  # the pack's layout
        isolate=False,
    )
    row = result["summary"]["methods"][0]
    assert row["status"] == "ok", row["errors"]


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


def test_packs_without_separate_sources(run_main, tmp_path, tiny_backbone, tiny_model_dir, target):
    spot = make_pack(tmp_path, tiny_backbone, "spot", "early", spread=False)
    with pytest.raises(PromptTuneError, match="no separate source prompts"):
        mixture_sources(spot, *read(spot))
    args = ["--template", "classify-pair", "--num-virtual-tokens", "4", "--model", tiny_model_dir, "--out", "x"]
    run = run_main("train", target, "--init-from", spot, "--source-task", "mixture", *args)
    assert_user_error(run, "--source-task mixture", "no separate source prompts", "--source-task shared")
    single = tmp_path / "single"
    prompttune.load(spot, model=tiny_backbone).task("sent").save(single)
    run = run_main("train", target, "--init-from", single, "--source-task", "mixture", *args)
    assert_user_error(run, "--init-from", "not a pack")
    assert not (tmp_path / "x").exists()


def test_sources_are_each_tasks_own_prompt():
    """A progressive pack: each task's own prompt (not its table with the earlier prompts stacked behind it); a
    prompt several tasks read is one source; prompts of different sizes are an error."""
    own = {n: torch.full((3, 2), float(i)) for i, n in enumerate(["a", "b", "c"])}
    stacked = {f"tasks.{n}": torch.zeros(3 + 3 * i, 2) for i, n in enumerate(own)}  # grows with earlier prompts
    weights = {f"params.own_{n}": t for n, t in own.items()} | stacked
    manifest = {"pack": {"strategy": "progressive", "tasks": [{"name": n} for n in own]}}
    sources, names = mixture_sources("p", manifest, weights)
    assert names == ["a", "b", "c"] and torch.equal(sources, torch.stack(list(own.values())))
    shared = {"tasks.a": own["a"], "tasks.b": own["b"], "tasks.c": own["a"].clone()}  # c reads a's prompt
    manifest["pack"]["strategy"] = "mpt"
    assert mixture_sources("p", manifest, shared)[1] == ["a", "b"]
    with pytest.raises(PromptTuneError, match="differ in size"):
        mixture_sources("p", manifest, {**shared, "tasks.c": torch.zeros(4, 2)})
