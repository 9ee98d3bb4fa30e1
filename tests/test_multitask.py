"""Multi-task packs (train-multi: spot, mpt), eval/predict --task, transfer (train --init-from), bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from multitask_data import FAST, SENTIMENT, assert_user_error, invoke, last_json, make_runner, task_flags, write_tasks

import prompttune
from prompttune.api import train_from_file
from prompttune.core.artifact import read
from prompttune.core.data import load_rows
from prompttune.multitask import PackTask, train_multi
from prompttune.multitask.mixture import sample_rows, task_shares
from prompttune.multitask.specs import load_tasks, task_templates
from prompttune.task import split_validation
from prompttune.train import Callback, TrainConfig

CONFIG = dict(max_steps=6, batch_size=4, eval_every=3, ema=0, warmup_steps=1, time_budget_s=None, lr=0.05)


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def mpt_pack(tmp_path_factory, files, tiny_model_dir):
    pack = tmp_path_factory.mktemp("mpt") / "pack"
    result = invoke(
        "train-multi", *task_flags(files), "--method", "mpt", "--out", pack, "--model", tiny_model_dir, *FAST, "--json"
    )
    return pack, last_json(result.stdout)


def test_pack_json_and_round_trip(mpt_pack, files, tiny_backbone):
    pack, summary = mpt_pack
    assert set(summary["val_accuracy"]) == set(files) == set(summary["trainable_params_per_task"])
    shared, own = summary["trainable_params_shared"], summary["trainable_params_task_specific"]["sent"]
    d = tiny_backbone.embedding_matrix.shape[1]
    assert own == 8 + d  # u (4 [soft] + 4 [soft:4] tokens) and v (width)
    assert summary["trainable_params_per_task"]["sent"] == own + round(shared / 3) < shared  # fewer than one prompt
    loaded = prompttune.load(pack, model=tiny_backbone)
    assert isinstance(loaded, PackTask) and loaded.names == ["sent", "topic", "pair"]
    _, weights = read(pack)
    for name, path in files.items():
        task = loaded.task(name)
        p, u, v = weights["params.shared"], weights[f"params.u_{name}"], weights[f"params.v_{name}"]
        assert torch.equal(task.model.method.table(), weights[f"tasks.{name}"])
        assert torch.allclose(weights[f"tasks.{name}"], p * torch.outer(u, v))
        _, val = split_validation(load_rows(path), 0.1, 0)  # the split train-multi carved
        assert task.evaluate(val)["accuracy"] == summary["val_accuracy"][name]


def test_eval_and_predict_task_equal_the_task_alone(mpt_pack, files, tiny_backbone, tiny_model_dir, tmp_path):
    pack, _ = mpt_pack
    loaded = prompttune.load(pack, model=tiny_backbone)
    for name, path in files.items():
        alone = tmp_path / name
        loaded.task(name).save(alone)  # the task as a single-task artifact
        a = last_json(invoke("eval", pack, path, "--task", name, "--model", tiny_model_dir, "--json").stdout)
        b = last_json(invoke("eval", alone, path, "--model", tiny_model_dir, "--json").stdout)
        drop = ("examples_per_s", "eval_seconds", "artifact", "prompt", "task")
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
        assert a["task"] == name
    text = "a great movie"
    a = invoke("predict", pack, text, "--task", "sent", "--model", tiny_model_dir, "--json").stdout
    b = invoke("predict", tmp_path / "sent", text, "--model", tiny_model_dir, "--json").stdout
    assert json.loads(a) == json.loads(b)


def test_spot_shares_one_prompt(files, tiny_backbone, tmp_path):
    pack, result, summary = train_multi(
        [f"{n}={p}" for n, p in files.items()],
        tmp_path / "spot",
        method="spot",
        num_virtual_tokens=4,
        config=TrainConfig(**CONFIG),
        backbone=tiny_backbone,
    )
    assert result.steps == 6
    shared = pack.params()["shared"]
    for name in files:
        assert torch.equal(pack.task(name).model.method.table(), shared)
    assert summary["trainable_params_task_specific"] == {n: 0 for n in files}


def test_template_forms(files, tiny_backbone, tmp_path):
    rows = [{"text": " ".join([r["text"]] * 10), "label": r["label"]} for r in SENTIMENT * 2]
    long = write_jsonl(tmp_path / "long.jsonl", rows)
    data = load_tasks([("short", files["sent"]), ("long", long)], None, 0)
    assert task_templates(tiny_backbone, data, "auto", uniform=False) == {"short": "classify", "long": "classify-late"}
    assert task_templates(tiny_backbone, data, "auto", uniform=True) == {"short": "classify", "long": "classify"}
    assert set(task_templates(tiny_backbone, data, "late", uniform=True).values()) == {"classify-late"}
    # one shared prompt over short and long rows: one layout of soft slots (auto: the early form for both)
    config = TrainConfig(**(CONFIG | {"max_steps": 1}))
    specs = [f"short={files['sent']}", f"long={long}"]
    _, _, summary = train_multi(specs, None, method="spot", num_virtual_tokens=4, config=config, backbone=tiny_backbone)
    assert summary["steps"] == 1


def test_temperature_sampling():
    assert task_shares([100, 1], 1.0) == pytest.approx([100 / 101, 1 / 101])
    assert task_shares([100, 1], 100.0)[1] > 0.45  # close to uniform
    pairs = sample_rows([30, 3], 2.0, 0)
    counts = [sum(1 for k, _ in pairs if k == t) for t in (0, 1)]
    assert counts[1] > 3 and sum(counts) == 33  # the small task is oversampled (its rows cycled)


def test_task_batching_gives_each_batch_one_task_and_every_row_once():
    from prompttune.batches import grouped_batches
    from prompttune.multitask.mixture import MixtureObjective

    pairs = sample_rows([30, 9, 14], 2.0, 0)
    lengths = [3 + (7 * j) % 11 for j in range(len(pairs))]
    fake = MixtureObjective.__new__(MixtureObjective)
    fake.pairs, fake.lengths, fake.batching = pairs, lengths, "task"
    for epoch in (0, 1):
        batches = fake.epoch_batches(4, 0, epoch)
        assert len(batches) == -(-len(pairs) // 4)  # as many as a mixed epoch: resume counts steps on it
        assert sorted(j for b in batches for j in b) == list(range(len(pairs)))
        one_task = [b for b in batches if len({pairs[j][0] for j in b}) == 1]
        assert len(one_task) >= sum(n // 4 for n in [sum(1 for k, _ in pairs if k == t) for t in (0, 1, 2)])
    assert fake.epoch_batches(4, 0, 0) != fake.epoch_batches(4, 0, 1)  # a new order every epoch
    assert fake.epoch_batches(4, 0, 0) == fake.epoch_batches(4, 0, 0)  # seeded
    assert sorted(grouped_batches([[0, 1, 2]], [1, 1, 1], 4, 0, 0)[0]) == [0, 1, 2]  # a group smaller than a batch
    fake.batching = "mixed"
    mixed = fake.epoch_batches(4, 0, 0)
    assert any(len({pairs[j][0] for j in b}) > 1 for b in mixed)


@pytest.mark.parametrize("batching", ["mixed", "task"])
def test_resume_after_a_kill(files, tiny_backbone, tmp_path, batching):
    specs = [f"{n}={p}" for n, p in files.items()]
    config = TrainConfig(**CONFIG)
    args = dict(num_virtual_tokens=4, config=config, backbone=tiny_backbone, batching=batching)
    _, _, whole = train_multi(specs, tmp_path / "whole", **args)

    def kill(ev):
        if ev["step"] == 4:  # after the checkpoint written at the validation of step 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_multi(specs, tmp_path / "cut", callbacks=[Callback(on_step=kill)], **args)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.checkpoint" / "state.json").exists()
    _, result, resumed = train_multi(specs, tmp_path / "cut", resume=True, **args)
    assert result.steps == 6
    _, w1 = read(tmp_path / "whole")
    _, w2 = read(tmp_path / "cut")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert resumed["val_accuracy"] == whole["val_accuracy"]


@pytest.mark.parametrize("source", ["shared", "pair"])
def test_transfer_starts_from_the_pack(mpt_pack, files, tiny_backbone, tmp_path, source):
    pack, _ = mpt_pack
    _, weights = read(pack)
    want = weights["params.shared"] if source == "shared" else weights[f"tasks.{source}"]
    seen = {}

    def started(task, info):  # called once the task is built, before the first step
        seen["table"] = task.model.method.table().detach().clone()
        seen["info"] = info

    config = TrainConfig(**CONFIG)
    _, _, summary = train_from_file(
        files["topic"],
        tmp_path / "target",
        shared_settings={"num_virtual_tokens": 4},
        config=config,
        backbone=tiny_backbone,
        init_from=pack,
        source_task=source,
        on_start=started,
    )
    assert torch.equal(seen["table"], want)
    assert source in summary["init_from"] and str(pack) in summary["init_from"]
    _, _, plain = train_from_file(
        files["topic"],
        None,
        shared_settings={"num_virtual_tokens": 4},
        config=config,
        backbone=tiny_backbone,
        on_start=started,
    )
    assert not torch.equal(seen["table"], want)  # without --init-from: topic's own (label-word) init


def test_transfer_through_the_cli(mpt_pack, files, tiny_model_dir, tmp_path):
    pack, _ = mpt_pack
    out = invoke(
        "train",
        files["topic"],
        "--out",
        tmp_path / "t",
        "--init-from",
        pack,
        "--source-task",
        "sent",
        "--model",
        tiny_model_dir,
        *FAST,
        "--json",
    ).stdout
    assert "task sent of" in last_json(out)["init_from"]


# --- bad input --------------------------------------------------------------------------------------------------


def test_unknown_task_name(run_main, mpt_pack, files, tiny_model_dir):
    pack, _ = mpt_pack
    assert_user_error(
        run_main("eval", pack, files["sent"], "--task", "nope", "--model", tiny_model_dir),
        "--task nope",
        "sent, topic, pair",
    )
    assert_user_error(run_main("predict", pack, "hi", "--model", tiny_model_dir), "--task NAME", "3 tasks")
    assert_user_error(
        run_main(
            "train",
            files["sent"],
            "--init-from",
            pack,
            "--source-task",
            "nope",
            "--out",
            "x",
            "--model",
            tiny_model_dir,
        ),
        "--source-task nope",
        "sent, topic, pair",
    )


def test_task_on_a_single_artifact_and_init_from_a_single_artifact(run_main, mpt_pack, files, tiny_model_dir, tmp_path):
    pack, _ = mpt_pack
    single = tmp_path / "single"
    prompttune.load(pack, model=str(tiny_model_dir)).task("sent").save(single)
    assert_user_error(
        run_main("eval", single, files["sent"], "--task", "sent", "--model", tiny_model_dir), "single-task artifact"
    )
    assert_user_error(
        run_main("train", files["sent"], "--init-from", single, "--out", "y", "--model", tiny_model_dir),
        "--init-from",
        "not a pack",
    )


def test_transfer_shape_must_fit(run_main, mpt_pack, files, tiny_model_dir):
    pack, _ = mpt_pack
    run = run_main(
        "train",
        files["sent"],
        "--init-from",
        pack,
        "--num-virtual-tokens",
        "6",
        "--out",
        "z",
        "--model",
        tiny_model_dir,
        "--max-steps",
        "1",
    )
    assert_user_error(run, "--init-from", "8 soft tokens", "10", "--form early")


def test_duplicate_names_and_bad_specs(run_main, files, tiny_model_dir):
    s = str(files["sent"])
    base = ["train-multi", "--out", "p", "--model", tiny_model_dir]
    assert_user_error(run_main(*base, "--task", f"a={s}", "--task", f"a={s}"), "--task a", "twice")
    assert_user_error(run_main(*base, "--task", s), "expected NAME=FILE")
    assert_user_error(run_main(*base, "--task", f"a b={s}"), "task name")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--method", "lora"), "--method lora", "mpt, spot")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--temperature", "0.5"), "--temperature 0.5")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--batching", "random"), "--batching 'random'", "mixed, task")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--form", "middle"), "--form middle", "early, late")
    assert_user_error(run_main(*base, "--task", f"a={s}", "--limit-per-task", "2"), "--limit-per-task 2")
    assert_user_error(run_main(*base, "--task", "a=missing.jsonl"), "missing.jsonl", "not found")


def test_rows_that_do_not_fit_their_template(run_main, files, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(x) for x in files["pair"].read_text().splitlines()]
    rows[7] = {"text": "only one text", "label": "yes"}  # a single-text row in a pair task
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = run_main(
        "train-multi",
        "--task",
        f"sent={files['sent']}",
        "--task",
        f"pair={bad}",
        "--out",
        "p",
        "--model",
        tiny_model_dir,
        *FAST,
    )
    assert_user_error(run, "bad.jsonl, line 8", "text_a")


def test_out_holding_other_files(run_main, files, tiny_model_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    run = run_main(
        "train-multi", "--task", f"sent={files['sent']}", "--out", tmp_path / "busy", "--model", tiny_model_dir
    )
    assert_user_error(run, "--out", "notes.txt")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
