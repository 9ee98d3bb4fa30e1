"""Made-up tasks for the multi-task and continual tests (three row shapes and label sets) and CLI helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NEG, POS, write_jsonl
from typer.testing import CliRunner

from prompttune import cli

SENTIMENT = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
TOPIC = [
    {"text": t, "label": label}
    for t, label in [
        ("the cat sat on the mat", "world"),
        ("sports world", "sports"),
        ("business sci tech", "business"),
        ("the mat", "world"),
        ("sports fun", "sports"),
        ("tech business", "business"),
    ]
]
PAIR = [
    {"text_a": a, "text_b": b, "label": label}
    for a, b, label in [
        ("the cat", "the cat sat", "yes"),
        ("a great movie", "boring", "no"),
        ("I loved it", "a joy", "yes"),
        ("bad", "great", "no"),
    ]
]
FAST = ["--max-steps", "6", "--batch-size", "4", "--num-virtual-tokens", "4", "--eval-every", "3", "--ema", "0"]
FAST += ["--lr", "0.05", "--time-budget", "0"]

runner = CliRunner()


def write_tasks(folder: Path) -> dict[str, Path]:
    return {
        "sent": write_jsonl(folder / "sent.jsonl", SENTIMENT * 2),
        "topic": write_jsonl(folder / "topic.jsonl", TOPIC * 2),
        "pair": write_jsonl(folder / "pair.jsonl", PAIR * 3),
    }


def task_flags(files: dict[str, Path], names: list[str] | None = None) -> list[str]:
    return [x for n in names or list(files) for x in ("--task", f"{n}={files[n]}")]


def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr
    return result


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@dataclass
class Run:
    code: int
    out: str
    err: str


def make_runner(monkeypatch, capsys, tmp_path):
    """The real entry point in process (for a ``run_main`` fixture): user errors exit 2 with one 'error:' line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")

    def run(*args) -> Run:
        monkeypatch.setattr(sys, "argv", ["prompttune", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
        captured = capsys.readouterr()
        return Run(e.value.code, captured.out, captured.err)

    return run


def assert_user_error(run: Run, *needles: str) -> str:
    assert run.code == 2, (run.code, run.err)
    assert "Traceback" not in run.err
    last = run.err.strip().splitlines()[-1]
    assert last.startswith("error: "), run.err
    for needle in needles:
        assert needle in last, (needle, last)
    return last
