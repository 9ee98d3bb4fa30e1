"""`compare`'s transfer arms (mpt-transfer, spot-transfer) on the tiny model and made-up tasks: a cell's prompt
starts from the pack's, the arm is otherwise prompt tuning, finished cells are reused, bad options are errors
naming the option before any cell runs."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import write_jsonl
from multitask_data import SENTIMENT, write_tasks
from safetensors.torch import load_file, save_file

from prompttune.compare import run_compare
from prompttune.compare.arms import parse_options, resolve
from prompttune.core.artifact import file_digest, read
from prompttune.core.errors import PromptTuneError
from prompttune.multitask import train_multi
from prompttune.prompt_task import PromptTask
from prompttune.train import TrainConfig

CONFIG = dict(max_steps=4, batch_size=4, eval_every=2, ema=0, warmup_steps=1, time_budget_s=None, lr=0.05)


@pytest.fixture(scope="module")
def pack(tmp_path_factory, tiny_backbone):
    folder = tmp_path_factory.mktemp("transfer-pack")
    files = write_tasks(folder)
    out = folder / "pack"
    specs = [f"sent={files['sent']}", f"topic={files['topic']}"]
    train_multi(specs, out, method="mpt", num_virtual_tokens=4, config=TrainConfig(**CONFIG), backbone=tiny_backbone)
    shift(out)  # 4 steps may keep the label-word init (best at step 0), which a fresh target prompt shares
    return out


def shift(pack, by: float = 0.01) -> None:
    """Move every tensor of a pack (as if trained further), keeping its checksum right."""
    weights = {k: v + by for k, v in load_file(pack / "weights.safetensors").items()}
    save_file(weights, pack / "weights.safetensors")
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["weights_sha256"] = file_digest(pack / "weights.safetensors")
    (pack / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def task_file(tmp_path):
    rows = SENTIMENT * 4
    random.Random(0).shuffle(rows)
    return write_jsonl(tmp_path / "target.jsonl", rows)


def start_tables(monkeypatch) -> list[tuple[str, torch.Tensor]]:
    """(method, prompt table) of every cell, read just before its first step."""
    seen = []
    fit = PromptTask.fit

    def recording_fit(self, *args, **kwargs):
        seen.append((self.method_name, self.model.method.table().detach().clone()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(PromptTask, "fit", recording_fit)
    return seen


def compare(task_file, out, model_dir, options, methods="prompt-tuning,mpt-transfer"):
    return run_compare(
        task_file,
        out,
        methods=methods,
        method_options=options,
        train_sizes="4,8",
        max_steps=2,
        batch_size=4,
        model=str(model_dir),
        isolate=False,
    )


@pytest.mark.parametrize("source", [None, "sent"])
def test_a_transfer_cell_starts_from_the_pack(pack, task_file, tmp_path, tiny_model_dir, monkeypatch, source):
    seen = start_tables(monkeypatch)
    _, weights = read(pack)
    want = weights["params.shared"] if source is None else weights[f"tasks.{source}"]
    options = [f"mpt-transfer.pack={pack}", "prompt-tuning.num_virtual_tokens=4"]  # the pack's size
    options += [f"mpt-transfer.source-task={source}"] if source else []
    out = tmp_path / "cmp"
    result = compare(task_file, out, tiny_model_dir, options)
    assert len(seen) == 4  # 2 arms x 2 sizes, one seed
    transfer = [t for i, (_, t) in enumerate(seen) if i >= 2]  # arms run in --methods order
    plain = [t for i, (_, t) in enumerate(seen) if i < 2]
    assert all(torch.equal(t, want) for t in transfer)
    assert not any(torch.equal(t, want) for t in plain)  # prompt tuning from its own init
    rows = {r["method"]: r for r in result["summary"]["methods"]}
    assert rows["mpt-transfer"]["kind"] == "transfer" and rows["mpt-transfer"]["status"] == "ok"
    # exactly the prompt-tuning arm otherwise: same parameters, same curve points
    assert rows["mpt-transfer"]["trainable_params"] == rows["prompt-tuning"]["trainable_params"]
    curves = result["summary"]["curves"]
    assert [p["train_size"] for p in curves["mpt-transfer"]] == [p["train_size"] for p in curves["prompt-tuning"]]
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("mpt-transfer-*.json")]
    assert len(cells) == 2 and all(str(pack) in c["init_from"] for c in cells)
    assert "| mpt-transfer | transfer |" in (out / "report.md").read_text()
    again = compare(task_file, out, tiny_model_dir, options)
    assert (again["ran"], again["reused"]) == (0, 4)
    assert len(seen) == 4  # nothing trained again


def test_a_retrained_pack_reruns_its_cells(pack, task_file, tmp_path, tiny_model_dir):
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    options = [f"mpt-transfer.pack={copy}"]
    out = tmp_path / "cmp"
    first = compare(task_file, out, tiny_model_dir, options, methods="mpt-transfer")
    assert first["ran"] == 2
    shift(copy)  # as if retrained
    assert compare(task_file, out, tiny_model_dir, options, methods="mpt-transfer")["ran"] == 2
    arm = resolve(["mpt-transfer"], parse_options([f"mpt-transfer.pack={pack}"]), str(tiny_model_dir))[0]
    assert arm.start_from["weights_sha256"] == read(pack)[0]["weights_sha256"]
    assert "start_from" not in resolve(["prompt-tuning"], {})[0].to_dict()  # other arms keep their cell keys


def arm_error(options: list[str], model, name: str = "mpt-transfer") -> str:
    with pytest.raises(PromptTuneError) as err:
        resolve([name], parse_options(options), str(model) if model else None)
    return str(err.value)


def test_bad_transfer_options_name_the_option(pack, tmp_path, tiny_model_dir, tiny_backbone):
    msg = arm_error([], tiny_model_dir)
    assert "-o mpt-transfer.pack=PACK" in msg
    msg = arm_error([f"mpt-transfer.pack={tmp_path / 'nope'}"], tiny_model_dir)
    assert "-o mpt-transfer.pack=" in msg and "no such artifact" in msg
    single = tmp_path / "single"
    import prompttune

    prompttune.load(pack, model=tiny_backbone).task("sent").save(single)
    assert "not a pack" in arm_error([f"mpt-transfer.pack={single}"], tiny_model_dir)
    spot = tmp_path / "spot"
    shutil.copytree(pack, spot)
    manifest = json.loads((spot / "manifest.json").read_text())
    manifest["pack"]["strategy"] = "spot"
    (spot / "manifest.json").write_text(json.dumps(manifest))
    msg = arm_error([f"mpt-transfer.pack={spot}"], tiny_model_dir)
    assert "of kind spot" in msg and "give it to spot-transfer" in msg
    msg = arm_error([f"spot-transfer.pack={pack}"], tiny_model_dir, "spot-transfer")
    assert "-o spot-transfer.pack=" in msg and "of kind mpt" in msg and "mpt-transfer" in msg
    msg = arm_error([f"mpt-transfer.pack={pack}", "mpt-transfer.source-task=nope"], tiny_model_dir)
    assert "--source-task nope" in msg and "sent, topic" in msg
    msg = arm_error([f"mpt-transfer.pack={pack}"], None)  # the comparison on the default model
    assert "trained on backbone" in msg and "--model" in msg
