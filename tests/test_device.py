"""--device: choosing where the backbone runs, and head tasks on a GPU (those tests run only where CUDA is)."""

from __future__ import annotations

import pytest
import torch
from test_heads import CLS, NER, QA
from tiny import make_encoder

from prompttune.api import load
from prompttune.core.backbone import Backbone, resolve_device, resolve_dtype
from prompttune.core.data import Dataset, from_records
from prompttune.core.errors import ModelError
from prompttune.heads.tagging import TaggingKind
from prompttune.heads.task import HeadTask
from prompttune.train import TrainConfig

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_names(monkeypatch):
    monkeypatch.delenv("PROMPTTUNE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")  # the default
    assert resolve_device("auto") == torch.device("cpu")  # no GPU here
    monkeypatch.setenv("PROMPTTUNE_DEVICE", "auto")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ModelError, match=r"--device cuda: this PyTorch sees no CUDA GPU"):
        resolve_device("cuda")
    for bad in ("tpu", "gpu0", "meta"):
        with pytest.raises(ModelError, match=rf"--device {bad}: choose cpu, cuda, cuda:N or auto"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("PROMPTTUNE_DTYPE", "auto")
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16  # a GPU computes bf16 natively


def test_a_verbalizer_task_builds_its_read_out_beside_the_backbone(tiny_backbone):
    """Label-word tensors (candidates, forms, continuation chunks) and the prompt live on the backbone's device."""
    from prompttune.api import PromptTask

    task = PromptTask.create(
        tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2},
        verbalizer="positive=great fun|good;negative=bad",
    )  # fmt: skip
    model = task.model
    assert model.candidates.device == model.form_first.device == model.form_label.device == tiny_backbone.device
    assert model._cont_chunks and all(c.assign.device == tiny_backbone.device for c in model._cont_chunks)
    assert all(p.device == tiny_backbone.device for p in model.method.parameters())


def test_cli_names_a_bad_device(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from prompttune.cli.app import app

    monkeypatch.setenv("PROMPTTUNE_DEVICE", "cpu")  # the flag sets it for the process: restored after the test
    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in NER))
    res = CliRunner().invoke(app, ["--device", "tpu", "train", str(data), "--out", str(tmp_path / "a")])
    assert res.exit_code != 0 and "--device tpu: choose cpu, cuda, cuda:N or auto" in str(res.exception)
    assert not (tmp_path / "a").exists()


# --- on a GPU -------------------------------------------------------------------------------------------
def _labels(kind: str, data: Dataset) -> list[str]:
    return {"tokens": TaggingKind.labels_from, "span": lambda d: [], "classification": Dataset.labels}[kind](data)


@gpu
@pytest.mark.parametrize(
    ("kind", "rows", "method"),
    [("tokens", NER, "p-tuning-v2"), ("span", QA, "p-tuning-v2"), ("classification", CLS, "prefix-tuning"),
     ("tokens", NER, "prompt-tuning"), ("span", QA, "zero-shot")],
)  # fmt: skip
def test_gpu_head_matches_cpu_trains_resumes_and_reloads(kind, rows, method, tmp_path):
    folder = str(make_encoder(tmp_path / "encoder"))
    cpu = Backbone.load(folder, dtype="float32", device="cpu")
    gpu_ = Backbone.load(folder, dtype="float32", device="cuda")
    assert gpu_.device.type == "cuda" and cpu.fingerprint() == gpu_.fingerprint()
    data = from_records(rows)
    tasks = [HeadTask.create(b, kind, _labels(kind, data), method, {"num_virtual_tokens": 4}) for b in (cpu, gpu_)]
    losses = []
    for t in tasks:
        t.model.trainable.eval()
        examples = t.head_kind.encode(t.model, data, training=True)
        with torch.no_grad():
            losses.append(float(t.head_kind.loss(t.model, examples, t.model.prefix_kv())))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # the same model in both places
    task = tasks[1]
    config = TrainConfig(max_steps=4, batch_size=4, lr=0.05, head_lr=0.05, eval_every=2, warmup_steps=1)
    task.fit(data, data, config, checkpoint_dir=tmp_path / "ckpt")
    config.max_steps = 6
    again = HeadTask.create(gpu_, kind, _labels(kind, data), method, {"num_virtual_tokens": 4})
    result = again.fit(data, data, config, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert result.steps == 6
    again.save(tmp_path / "art")
    on_cpu, on_gpu = load(tmp_path / "art", model=cpu), load(tmp_path / "art", model=gpu_)
    report_cpu, report_gpu = on_cpu.evaluate(data), on_gpu.evaluate(data)
    metric = again.head_kind.metric
    assert report_cpu[metric] == pytest.approx(report_gpu[metric], abs=0.15)
    assert on_gpu.predict(data) == again.predict(data)


# --- label words and generation on a GPU (these run only where CUDA is) ------------------------------------------
SENTIMENT = [{"text": t, "label": "positive"} for t in ("a great movie", "I loved it", "great fun , truly great")] + [
    {"text": t, "label": "negative"} for t in ("a terrible film", "boring and bad", "what a waste")
]


@gpu
@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning", "p-tuning"])
@pytest.mark.parametrize("demos", [0, 2])
def test_gpu_label_words_match_cpu_train_calibrate_and_reload(method, demos, tiny_model_dir, tmp_path):
    from prompttune.api import PromptTask

    folder = str(tiny_model_dir)
    cpu = Backbone.load(folder, dtype="float32", device="cpu")
    gpu_ = Backbone.load(folder, dtype="float32", device="cuda")
    data = from_records(SENTIMENT * 2)
    verbalizer = "positive=great fun|good;negative=bad|a waste"  # multi-token words: the continuation read-out
    tasks = [
        PromptTask.for_data(b, data, method, {"num_virtual_tokens": 3}, verbalizer=verbalizer, demos=demos)
        for b in (cpu, gpu_)
    ]
    config = TrainConfig(max_steps=4, batch_size=4, eval_every=2, warmup_steps=1, lr=0.05, time_budget_s=None)
    losses = []
    for t in tasks:
        objective = t.objective(data, data, config)
        with torch.no_grad():
            losses.append(float(objective.batch_loss(list(range(6)))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-3)  # the same model in both places
    task = tasks[1]
    result = task.fit(data, data, config, checkpoint_dir=tmp_path / "ckpt")
    assert result.steps == 4
    assert len(task.calibrate()) == 2
    task.save(tmp_path / "art")
    on_cpu, on_gpu = load(tmp_path / "art", model=cpu), load(tmp_path / "art", model=gpu_)
    report_cpu, report_gpu = on_cpu.evaluate(data), on_gpu.evaluate(data)
    assert report_cpu["accuracy"] == pytest.approx(report_gpu["accuracy"], abs=0.2)
    assert [p.label for p in on_gpu.predict(data)] == [p.label for p in task.predict(data)]


@gpu
def test_gpu_generation_matches_cpu_and_trains(tiny_model_dir, tmp_path):
    from prompttune.generation.task import GenerationTask

    folder = str(tiny_model_dir)
    cpu = Backbone.load(folder, dtype="float32", device="cpu")
    gpu_ = Backbone.load(folder, dtype="float32", device="cuda")
    data = from_records([{"input": w, "target": f"{w} , truly fun"} for w in ("great", "bad", "fun", "a joy")] * 2)
    tasks = [GenerationTask.for_data(b, data, "prefix-tuning", {"num_virtual_tokens": 3}) for b in (cpu, gpu_)]
    config = TrainConfig(max_steps=2, batch_size=4, eval_every=2, warmup_steps=1, time_budget_s=None)
    losses = []
    for t in tasks:
        with torch.no_grad():
            losses.append(float(t.objective(data, data, config).batch_loss([0, 1, 2, 3])))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-3)
    result = tasks[1].fit(data, data, config)
    assert result.steps == 2
    assert tasks[1].write(data.rows[:2]) == tasks[1].write(data.rows[:2])  # greedy, on the GPU
