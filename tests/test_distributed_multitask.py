"""Multi-task packs and continual learning trained data-parallel (``--nproc 2``: torchrun, gloo on the loopback):
the same pack as one process, rank 0 alone writes and reports. Every wait is bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multitask_data import FAST, invoke, last_json, task_flags, write_tasks
from safetensors.torch import load_file

WAIT_S = 600  # a whole run of 2 processes, at most (the machine may be busy)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def two_processes(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prompttune", *[str(a) for a in args], "--nproc", "2"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "weights.safetensors"), load_file(b / "weights.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5)


def one_summary(res: subprocess.CompletedProcess) -> dict:
    summaries = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1  # rank 0's alone
    return summaries[0]


def test_train_multi_on_two_processes_equals_one(files, tiny_model_dir, tmp_path):
    args = ["train-multi", *task_flags(files), "--method", "mpt", "--model", tiny_model_dir, *FAST, "--json"]
    two = one_summary(two_processes(*args, "--out", tmp_path / "two"))
    one = last_json(invoke(*args, "--out", tmp_path / "one").stdout)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["steps"] == one["steps"] == 6
    assert two["val_accuracy"] == one["val_accuracy"]  # validation split over the ranks, counts summed
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_continual_on_two_processes_equals_one(files, tiny_model_dir, tmp_path):
    args = ["continual", *task_flags(files, ["sent", "topic"]), "--model", tiny_model_dir, *FAST, "--json"]
    res = two_processes(*args, "--out", tmp_path / "two")
    two = one_summary(res)
    one = last_json(invoke(*args, "--out", tmp_path / "one").stdout)
    assert two["processes"] == 2 and two["matrix"] == one["matrix"] and two["bwt"] == one["bwt"] == 0.0
    assert "data-parallel over 2 processes" in res.stderr
    assert_same_weights(tmp_path / "one" / "pack", tmp_path / "two" / "pack")


def test_transfer_from_a_pack_on_two_processes_equals_one(files, tiny_backbone, tiny_model_dir, tmp_path):
    """``train --init-from PACK`` with ATTEMPT's per-input mixture of the pack's source prompts (a prefix per row,
    an attention module trained beside the new prompt) goes through the same sharded step."""
    from test_attempt import make_pack

    (tmp_path / "src").mkdir()
    pack = make_pack(tmp_path / "src", tiny_backbone, "mpt", "early", spread=True)  # sources: sent, topic
    args = ["train", files["pair"], "--init-from", pack, "--source-task", "mixture", "--model", tiny_model_dir]
    args += [*FAST, "--json"]
    two = one_summary(two_processes(*args, "--out", tmp_path / "two"))
    one = last_json(invoke(*args, "--out", tmp_path / "one").stdout)
    assert two["processes"] == 2 and "mixture" in two["init_from"] and two["steps"] == one["steps"] == 6
    assert two["best_val_accuracy"] == one["best_val_accuracy"]
    assert_same_weights(tmp_path / "one", tmp_path / "two")
