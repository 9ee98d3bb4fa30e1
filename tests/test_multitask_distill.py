"""train-multi --teacher: single-task prompts distilled into a pack (MPT's distillation, on the label read-out)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from multitask_data import FAST, assert_user_error, invoke, last_json, make_runner, task_flags, write_tasks

import prompttune
from prompttune.core.artifact import read
from prompttune.core.data import load_rows
from prompttune.multitask import train_multi
from prompttune.multitask.distill import distill_loss, teacher_probs
from prompttune.multitask.mixture import MixtureObjective
from prompttune.multitask.multi import build_tasks
from prompttune.multitask.specs import TaskData, load_tasks, parse_specs
from prompttune.multitask.view import Stage, Strategy
from prompttune.task import split_validation
from prompttune.train import Callback, TrainConfig


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, files, tiny_model_dir):
    """A single-task prompt for 'sent' and one for 'topic', trained on their own rows."""
    folder = tmp_path_factory.mktemp("teachers")
    for name in ("sent", "topic"):
        invoke("train", files[name], "--method", "prompt-tuning", "--out", folder / name, "--model", tiny_model_dir,
               *FAST)  # fmt: skip
    return folder


def _objective(backbone, files, probs=None, weight=1.0):
    data = load_tasks(parse_specs([f"{n}={p}" for n, p in files.items()]), None, 0)
    strategy = Strategy.get("mpt", kinds=("mpt", "spot"))
    tasks = build_tasks(backbone, data, strategy, 4, "labels", 0)
    return MixtureObjective(tasks, data, Stage(strategy, strategy.keys()), 2.0, 0, "mixed", probs, weight), data


def test_the_loss_adds_weight_times_kl_to_the_teacher(tiny_backbone, files):
    """With one-hot teachers on the gold labels KL(teacher || pack) is the cross-entropy itself, so the loss is
    exactly (1 + weight) x the loss without teachers, and so are its gradients."""
    plain, data = _objective(tiny_backbone, files)
    onehot = {
        k: F.one_hot(part.y_train, len(part.model.verbalizer.labels)).float() for k, part in enumerate(plain.parts)
    }
    taught, _ = _objective(tiny_backbone, files, onehot, weight=0.5)
    batch = [j for k in range(3) for j in [j for j, (t, _) in enumerate(plain.pairs) if t == k][:4]]  # mixed
    a, b = plain.batch_loss(batch), taught.batch_loss(batch)
    assert torch.allclose(b, 1.5 * a, rtol=1e-5)
    ga = torch.autograd.grad(a, plain.trainable.parameters())
    gb = torch.autograd.grad(b, taught.trainable.parameters())
    assert all(torch.allclose(y, 1.5 * x, rtol=1e-4, atol=1e-7) for x, y in zip(ga, gb, strict=True))


def test_distill_loss_is_kl():
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    q = scores.softmax(-1)
    expected = sum(float((p[p > 0] * (p[p > 0] / qq[p > 0]).log()).sum()) for p, qq in zip(teacher, q, strict=True))
    assert float(distill_loss(scores, teacher)) == pytest.approx(expected, rel=1e-6)


def test_teacher_probabilities_are_its_predictions_in_the_tasks_label_order(tiny_backbone, files, teachers):
    rows = load_rows(files["topic"])
    train, val = split_validation(rows, 0.1, 0)
    labels = sorted(train.labels())[::-1]  # the pack task's order, whatever it is
    probs, val_acc = teacher_probs(tiny_backbone, TaskData("topic", train, val), labels, teachers / "topic")
    teacher = prompttune.load(teachers / "topic", model=tiny_backbone)
    preds = teacher.predict(train, calibrate=False)
    assert probs.shape == (len(train), len(labels))
    assert torch.allclose(probs, torch.tensor([[p.scores[x] for x in labels] for p in preds]), atol=1e-6)
    assert val_acc == teacher.evaluate(val, calibrate=False)["accuracy"]


def test_train_multi_with_teachers(tiny_backbone, files, teachers, tmp_path):
    specs = [f"{n}={p}" for n, p in files.items()]
    config = TrainConfig(max_steps=6, batch_size=4, eval_every=3, ema=0, warmup_steps=1, time_budget_s=None, lr=0.05)
    args = dict(num_virtual_tokens=4, config=config, backbone=tiny_backbone)
    seen, losses = [], {"taught": [], "plain": []}
    kw = dict(teachers=[f"sent={teachers / 'sent'}", f"topic={teachers / 'topic'}"], on_teacher=seen.append)
    log = lambda key: [Callback(on_step=lambda ev: losses[key].append(ev["loss"]))]  # noqa: E731
    _, _, taught = train_multi(specs, tmp_path / "taught", distill_weight=2.0, callbacks=log("taught"), **kw, **args)
    _, _, plain = train_multi(specs, tmp_path / "plain", callbacks=log("plain"), **args)
    assert seen == ["sent", "topic"]
    assert set(taught["teacher_val_accuracy"]) == {"sent", "topic"} and taught["distill_weight"] == 2.0
    assert "teachers" not in plain
    manifest = read(tmp_path / "taught")[0]["pack"]
    assert manifest["distill_weight"] == 2.0 and manifest["tasks"][0]["teacher"] == str(teachers / "sent")
    # the same seed and batches: up to the first batch holding a taught task's rows the runs are the same; that
    # step's loss adds 2 x KL (> 0) to the same cross-entropy
    pairs = list(zip(losses["taught"], losses["plain"], strict=True))
    assert len(pairs) == 6
    first = next(i for i, (t, p) in enumerate(pairs) if t != p)
    assert pairs[first][0] > pairs[first][1]


def test_cli_teacher_and_its_errors(run_main, files, teachers, tiny_model_dir, tmp_path):
    base = ["train-multi", *task_flags(files), "--model", tiny_model_dir, *FAST]
    out = invoke(*base, "--out", tmp_path / "p", "--teacher", f"sent={teachers / 'sent'}", "--json").stdout
    assert set(last_json(out)["teacher_val_accuracy"]) == {"sent"}
    assert_user_error(run_main(*base, "--out", "q", "--teacher", f"nope={teachers / 'sent'}"), "--teacher nope", "sent")
    assert_user_error(
        run_main(*base, "--out", "q", "--teacher", f"sent={teachers / 'topic'}"), "--teacher sent=", "labels"
    )
    assert_user_error(run_main(*base, "--out", "q", "--teacher", f"sent={tmp_path / 'p'}"), "pack artifact")
    assert_user_error(
        run_main(*base, "--out", "q", "--teacher", f"sent={teachers / 'sent'}", "--distill-weight", "0"),
        "--distill-weight 0",
    )
    assert_user_error(run_main(*base, "--out", "q", "--teacher", "sent=missing"), "missing")
