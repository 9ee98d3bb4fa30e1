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


def test_verbalizer_tasks_say_they_need_the_cpu(tiny_backbone, monkeypatch):
    from prompttune.api import PromptTask

    monkeypatch.setattr(Backbone, "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(ModelError, match=r"--device cuda: verbalizer read-outs .* run on the CPU"):
        PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2})


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
