"""Data-parallel training: ranks started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free
port; gloo on the CPU), each taking its part of every global batch. Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from prompttune.api import train_from_file
from prompttune.core.errors import PromptTuneError
from prompttune.distributed.context import DistContext
from prompttune.distributed.launch import free_port, launch_local, strip_flag, torchrun_command
from prompttune.train import TrainConfig

WAIT_S = 600  # a rank's whole run, at most (the machine may be busy)
CONFIG = {"max_steps": 6, "batch_size": 7, "eval_every": 2, "time_budget_s": None, "warmup_steps": 2}

# One rank: trains through the library verb, records every write it makes under spec["watch"] (audit hooks see
# Python's opens, and the mkdir/rename of every atomic write), prints its result.
WORKER = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
writes = []
watch = spec["watch"]

def hook(event, args):
    if event == "open" and args and isinstance(args[0], str) and args[0].startswith(watch):
        mode, flags = args[1], args[2]
        if (mode and any(c in mode for c in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            writes.append(args[0])
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir") and str(args[0]).startswith(watch):
        writes.append(f"{event} {args[0]}")

sys.addaudithook(hook)
from prompttune.api import train_from_file
from prompttune.train import TrainConfig

_, result, summary = train_from_file(
    spec["data"], spec["out"], model=spec["model"], method_config=["num_virtual_tokens=3"],
    config=TrainConfig(**spec["config"]), resume=spec["resume"], **spec.get("kwargs", {}),
)
print("RESULT " + json.dumps({"steps": result.steps, "history": result.history, "writes": writes}), flush=True)
"""


def _env(rank: int, world: int, port: int) -> dict:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    env |= {"PROMPTTUNE_DIST_TIMEOUT": "600", "GLOO_SOCKET_IFNAME": "lo" if Path("/sys/class/net/lo").exists() else ""}
    return {k: v for k, v in env.items() if v != ""}


def start_ranks(spec: dict, world: int) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(spec)],
            env=_env(rank, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, dict | None, str]]:
    """(exit code, printed result, stderr) of each rank; every rank killed if one overruns."""
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=WAIT_S)
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            outs.append((p.returncode, json.loads(line[7:]) if line else None, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def prompt_of(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "weights.safetensors")


def assert_same_prompt(a: Path, b: Path) -> None:
    wa, wb = prompt_of(a), prompt_of(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5)


@pytest.fixture
def runs(tmp_path, sentiment_rows, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_rows)
    watch = tmp_path / "runs"
    watch.mkdir()

    def spec(name: str, resume: bool = False, **config) -> dict:
        return {
            "data": str(data),
            "out": str(watch / name),
            "model": str(tiny_model_dir),
            "config": CONFIG | config,
            "resume": resume,
            "watch": str(watch),
        }

    return spec


def single(spec: dict):
    return train_from_file(
        spec["data"],
        spec["out"],
        model=spec["model"],
        method_config=["num_virtual_tokens=3"],
        config=TrainConfig(**spec["config"]),
        resume=spec["resume"],
    )


def test_a_rank_takes_its_contiguous_part_of_every_batch():
    batch = list(range(7))
    parts = [DistContext(r, 3).shard(batch) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [DistContext(r, 4).shard([9, 8]) for r in range(4)] == [[9], [8], [], []]


def test_two_ranks_train_the_prompt_one_process_trains_and_rank_0_alone_writes(runs):
    ref = runs("one")
    _, ref_result, _ = single(ref)
    spec = runs("two")
    (c0, r0, e0), (c1, r1, e1) = finish(start_ranks(spec, 2))
    assert c0 == 0 and c1 == 0, e0[-3000:] + e1[-3000:]
    assert_same_prompt(Path(ref["out"]), Path(spec["out"]))
    # the same validations (sharded over the ranks, then summed) at the same steps
    assert [h["step"] for h in r0["history"]] == [h["step"] for h in ref_result.history] == [0, 2, 4, 6]
    assert [h["val"] for h in r0["history"]] == pytest.approx([h["val"] for h in ref_result.history])
    assert r0["steps"] == r1["steps"] == 6
    # the hooks see rank 0's writes (the artifact's manifest, each checkpoint's state.json) and none of rank 1's
    assert any("manifest.json" in w for w in r0["writes"]) and any("state.json" in w for w in r0["writes"])
    assert r1["writes"] == [], "rank 1 wrote"


def test_a_killed_rank_stops_the_run_and_resume_continues_with_one_or_two_ranks(runs, tmp_path):
    spec = runs("run", max_steps=100_000, patience=100_000, eval_every=3)
    procs = start_ranks(spec, 2)
    state = Path(spec["out"] + ".checkpoint") / "state.json"
    try:
        deadline = time.monotonic() + WAIT_S
        while not state.exists():  # rank 0 wrote its first checkpoint: the run is under way
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        _, err0 = procs[0].communicate(timeout=WAIT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0
    assert "rank 0 of 2: lost contact with another training process" in err0, err0[-3000:]
    assert "--resume" in err0
    assert not Path(spec["out"]).exists()  # nothing half-written
    step = json.loads(state.read_text())["step"]
    assert step >= 3 and step % 3 == 0
    # resume the same checkpoint with 1 rank and (a copy) with 2: the same global state, so the same prompt
    shutil.copytree(Path(spec["out"] + ".checkpoint"), tmp_path / "runs" / "copy.checkpoint")
    one = runs("run", resume=True, max_steps=step + 4, patience=100_000, eval_every=3)
    _, result, _ = single(one)
    assert result.steps == step + 4 and [h["step"] for h in result.history][-2:] == [step + 3, step + 4]
    two = runs("copy", resume=True, max_steps=step + 4, patience=100_000, eval_every=3)
    (c0, r0, e0), (c1, r1, e1) = finish(start_ranks(two, 2))
    assert c0 == 0 and c1 == 0, e0[-3000:] + e1[-3000:]
    assert r0["steps"] == r1["steps"] == step + 4
    assert_same_prompt(Path(one["out"]), Path(two["out"]))


def test_nproc_starts_torchrun_and_only_rank_0_reports(runs, tmp_path):
    spec = runs("cli")
    cmd = [sys.executable, "-m", "prompttune", "train", spec["data"], "--out", spec["out"], "--model", spec["model"]]
    cmd += ["--nproc", "2", "--max-steps", "2", "--eval-every", "2", "--time-budget", "0", "--batch-size", "7"]
    cmd += ["-o", "num_virtual_tokens=3", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 2  # one report: rank 0's
    assert summaries[0]["processes"] == 2 and "data-parallel over 2 processes" in res.stderr
    ref = runs("cli-ref", max_steps=2, warmup_steps=TrainConfig().warmup_steps)  # the CLI's warm-up
    single(ref)
    assert_same_prompt(Path(ref["out"]), Path(spec["out"]))


def test_accelerate_launch_trains_the_same_prompt(runs):
    """``accelerate launch`` (its multi-process launcher, which runs on CPUs too) sets the environment torchrun sets:
    the run joins it, rank 0 alone reports, and the prompt equals one process's."""
    pytest.importorskip("accelerate")
    spec = runs("acc")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    cmd = [*launcher, "-m", "prompttune", "train", spec["data"], "--out", spec["out"], "--model", spec["model"]]
    cmd += ["--max-steps", "2", "--eval-every", "2", "--time-budget", "0", "--batch-size", "7"]
    cmd += ["-o", "num_virtual_tokens=3", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(Path(spec["out"]).parent / "hf"))  # no user config
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2 and summaries[0]["steps"] == 2
    ref = runs("acc-ref", max_steps=2, warmup_steps=TrainConfig().warmup_steps)  # the CLI's warm-up
    single(ref)
    assert_same_prompt(Path(ref["out"]), Path(spec["out"]))


def test_launcher_arguments_and_errors(monkeypatch):
    assert strip_flag(["train", "d", "--nproc", "2", "--out", "x"], "--nproc") == ["train", "d", "--out", "x"]
    assert strip_flag(["train", "--nproc=4", "d"], "--nproc") == ["train", "d"]
    cmd = torchrun_command(3, ["train", "d"], port=1234)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-3:] == ["prompttune", "train", "d"]
    assert "127.0.0.1" in cmd and "3" in cmd and "1234" in cmd
    with pytest.raises(PromptTuneError, match=r"--nproc 0: must be between"):
        launch_local(0, [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PromptTuneError, match="already runs under a launcher"):
        launch_local(2, [])


GENERATION_ROWS = [  # targets of very different lengths: a per-row average would weigh their tokens unequally
    {"input": f"name: {n}; food: {f}", "target": f"{n} serves {f} food" + " near the river" * (k % 4 * 3) + "."}
    for k, (n, f) in enumerate(
        (n, f) for n in ("Aromi", "Zizzi", "Bibimbap", "Cotto", "Alimentum") for f in ("Italian", "French", "Chinese")
    )
]


@pytest.mark.parametrize(
    "kind, kwargs",
    [("head", {"head": "classification"}), ("generation", {"task_type": "generate"})],
)
def test_two_ranks_equal_one_process_for_the_head_and_generation_objectives(
    kind, kwargs, tmp_path, sentiment_rows, tiny_model_dir
):
    """Every objective goes through the same sharded step: a classification head and the language-modelling
    loss of a generation task train to the same weights on 2 ranks as in one process."""
    rows = GENERATION_ROWS if kind == "generation" else sentiment_rows
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "runs").mkdir()
    config = CONFIG | {"max_steps": 4, "batch_size": 15}  # one batch of every length
    spec = {
        "data": str(data), "model": str(tiny_model_dir), "config": config, "resume": False,
        "watch": str(tmp_path / "runs"), "kwargs": kwargs,
    }  # fmt: skip
    one = spec | {"out": str(tmp_path / "runs" / "one")}
    train_from_file(
        one["data"], one["out"], model=one["model"], method_config=["num_virtual_tokens=3"],
        config=TrainConfig(**config), **kwargs,
    )  # fmt: skip
    two = spec | {"out": str(tmp_path / "runs" / "two")}
    (c0, r0, e0), (c1, r1, e1) = finish(start_ranks(two, 2))
    assert c0 == 0 and c1 == 0, e0[-3000:] + e1[-3000:]
    assert r0["steps"] == r1["steps"] == 4
    assert_same_prompt(Path(one["out"]), Path(two["out"]))
    assert r1["writes"] == [], "rank 1 wrote"
