"""`prompttune serve` through the CLI: flags checked before any model loads, tasks loaded, errors named."""

from __future__ import annotations

import pytest
import test_cli
from test_cli import assert_user_error

run_main = test_cli.run_main  # the fixture: the real entry point, in process


@pytest.fixture
def captured(monkeypatch):
    """Replace the foreground uvicorn run: keep what the command would serve."""
    seen = {}

    def fake_run(config, table, graceful_s=30.0):
        seen["config"], seen["table"] = config, table

    monkeypatch.setattr("prompttune.serve.runner.run", fake_run)
    return seen


def test_serve_loads_tasks_and_says_it_is_loopback_only(run_main, captured, tiny_model_dir):
    r = run_main("serve", "zs=classify", "gen=qa", "--labels", "zs=negative,positive", "--model", tiny_model_dir,
                 "--max-batch", "8", "--port", "0")  # fmt: skip
    assert r.code in (0, None), r.err
    assert "listening on 127.0.0.1 only, without authentication" in r.err
    table = captured["table"]
    assert table.names() == ["gen", "zs"]
    assert table.get("zs").describe()["labels"] == ["negative", "positive"]
    assert table.get("gen").kind == "generation"
    assert table.get("zs").backbone is table.get("gen").backbone  # one backbone per model id
    assert captured["config"].max_batch == 8


def test_serve_refuses_another_host_without_keys(run_main, captured):
    assert_user_error(run_main("serve", "--host", "0.0.0.0"), "--host 0.0.0.0", "--api-keys")


def test_serve_bad_arguments_name_what_to_fix(run_main, captured, tiny_model_dir, tmp_path):
    assert_user_error(run_main("serve", "noequals"), "TASK 'noequals'", "NAME=SOURCE")
    assert_user_error(run_main("serve", "x=" + str(tmp_path / "missing"), "--model", tiny_model_dir), "TASK x=")
    assert_user_error(run_main("serve", "a=classify", "--labels", "b=x,y"), "--labels b=", "no TASK named 'b'")
    assert_user_error(run_main("serve", "a=classify", "--labels", "a=x"), "--labels a=", "2 to")
    assert_user_error(run_main("serve", "--max-batch", "0"), "--max-batch 0")
    keys = tmp_path / "keys.txt"
    keys.write_text("short\n")
    assert_user_error(run_main("serve", "--api-keys", keys), f"--api-keys {keys}, line 1", "at least 16")
    assert "table" not in captured
