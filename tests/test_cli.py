"""The command line, in process (typer's CliRunner, and the real ``main()`` for errors) and once as a
subprocess: what a user sees, exit codes, JSON output, and one-line error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NEG, POS, write_jsonl
from typer.testing import CliRunner

from prompttune import cli
from prompttune.core.errors import PromptTuneError

LABELS = ["negative", "positive"]
FAST = ["--max-steps", "4", "--batch-size", "4", "--num-virtual-tokens", "4"]
LONG_TEXT = " ".join(["a great movie , truly wonderful and fun"] * 60)  # far past 256 positions

runner = CliRunner()


def rows(n_each: int = 4) -> list[dict]:
    out = []
    for i in range(n_each):
        out.append({"text": POS[i % len(POS)], "label": "positive"})
        out.append({"text": NEG[i % len(NEG)], "label": "negative"})
    return out


def invoke(*args) -> object:
    result = runner.invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    """Run the real entry point (``prompttune.cli.main``) in process, from tmp_path, as a user would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # a wide terminal: line breaks come from the message only

    def run(*args) -> Run:
        monkeypatch.setattr(sys, "argv", ["prompttune", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
        captured = capsys.readouterr()
        return Run(e.value.code, captured.out, captured.err)

    return run


def assert_user_error(run: Run, *needles: str) -> str:
    """Exit code 2; stderr ends with one line 'error: ...' holding every needle; no traceback.

    (Progress lines printed before the problem was found may come first.)"""
    assert run.code == 2, (run.code, run.err)
    assert "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert errors == [lines[-1]], run.err
    assert lines[-1].startswith("error: ")
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One artifact trained through the CLI, shared by the eval/predict tests."""
    folder = tmp_path_factory.mktemp("cli")
    data = write_jsonl(folder / "train.jsonl", rows(8))
    art = folder / "art"
    result = invoke("train", data, "--out", art, "--json", "--model", tiny_model_dir, *FAST)
    return {"data": data, "art": art, "result": result}


# --- train ------------------------------------------------------------------------------------------


def test_train_json(trained, tiny_model_dir):
    result = trained["result"]
    assert result.exit_code == 0, result.stderr
    metrics = last_json(result.stdout)
    assert {"train_examples_per_s", "train_seconds", "steps", "best_val_accuracy", "trainable_params"} <= metrics.keys()
    assert metrics["steps"] == 4
    assert metrics["trainable_params"] == (4 + 4) * 32  # 4 virtual tokens + the template's 4, x hidden size 32
    assert metrics["train_seconds"] > 0 and metrics["train_examples_per_s"] > 0
    assert metrics["processes"] == 1
    assert 0.0 <= metrics["best_val_accuracy"] <= 1.0
    assert metrics["n_train"] + metrics["n_val"] == 16
    assert metrics["artifact"] == str(trained["art"])
    # the progress goes to stderr, so stdout is JSON only
    assert all(json.loads(line) for line in result.stdout.strip().splitlines())
    manifest = json.loads((trained["art"] / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4
    assert manifest["training"]["batch_size"] == 4
    assert manifest["data"]["n_train"] == metrics["n_train"]
    assert manifest["data"]["train_hash"].startswith("sha256:")
    assert manifest["method_config"]["num_virtual_tokens"] == 4
    assert manifest["backbone"]["id"] == str(Path(tiny_model_dir).resolve())


def test_train_human_output_and_resume(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", rows(4))
    art = tmp_path / "art"
    common = [data, "--out", art, "--model", tiny_model_dir, "--batch-size", "4", "--num-virtual-tokens", "4"]
    first = invoke("train", *common, "--max-steps", "2")
    assert first.exit_code == 0, first.stderr
    said = " ".join(first.stdout.split())  # rich wraps long lines at the console width
    assert f"saved {art}: best validation accuracy" in said
    assert "after 2 steps" in said
    assert (tmp_path / "art.checkpoint" / "state.json").exists()
    resumed = invoke("train", *common, "--max-steps", "4", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_json(resumed.stdout)["steps"] == 4


def test_train_zero_shot(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", rows(4))
    result = invoke(
        "train", data, "--out", tmp_path / "zs", "--method", "zero-shot", "--json", "--model", tiny_model_dir, *FAST
    )
    assert result.exit_code == 0, result.stderr
    metrics = last_json(result.stdout)
    assert metrics["trainable_params"] == 0 and metrics["steps"] == 0
    assert metrics["best_val_accuracy"] == metrics["initial_val_accuracy"]


# --- eval / predict / generate ------------------------------------------------------------------------


def test_eval_json(trained, tiny_model_dir):
    result = invoke("eval", trained["art"], trained["data"], "--json", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    report = last_json(result.stdout)
    assert {"accuracy", "n", "examples_per_s", "per_class"} <= report.keys()
    assert report["n"] == 16
    assert 0.0 <= report["accuracy"] <= 1.0 and report["examples_per_s"] > 0
    assert sorted(report["per_class"]) == LABELS
    assert sum(c["support"] for c in report["per_class"].values()) == 16


def test_eval_table(trained, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", rows(2))
    result = invoke("eval", trained["art"], data, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    assert "accuracy" in result.stdout and "on 4 rows" in result.stdout
    assert "negative" in result.stdout and "positive" in result.stdout


def test_predict_text(trained, tiny_model_dir):
    result = invoke("predict", trained["art"], "some text", "a great movie", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] in LABELS and lines[0].endswith("| some text")
    assert "negative=" in lines[0] and "positive=" in lines[0]


def test_predict_file_json(trained, tiny_model_dir, tmp_path):
    data = write_jsonl(
        tmp_path / "rows.jsonl", [{"text": "I loved it"}, {"text": "what a waste"}, {"text": "meh", "label": "ignored"}]
    )
    result = invoke("predict", trained["art"], "--file", data, "--json", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    preds = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [p["input"] for p in preds] == ["I loved it", "what a waste", "meh"]
    for p in preds:
        assert p["label"] in LABELS
        assert sorted(p["scores"]) == LABELS
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["scores"], key=p["scores"].get)


def test_predict_matches_the_python_api(trained, tiny_model_dir):
    import prompttune

    result = invoke("predict", trained["art"], "truly wonderful and fun", "--json", "--model", tiny_model_dir)
    cli_pred = last_json(result.stdout)
    task = prompttune.load(trained["art"], model=str(tiny_model_dir))
    api_pred = task.predict(["truly wonderful and fun"])[0]
    assert cli_pred["label"] == api_pred.label
    assert cli_pred["scores"] == pytest.approx(api_pred.scores, abs=1e-6)


def test_predict_text_with_square_brackets(trained, tiny_model_dir):
    result = runner.invoke(
        cli.app, ["predict", str(trained["art"]), "a [/] b [soft] c", "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 0, repr(result.exception)
    assert result.stdout.rstrip().endswith("| a [/] b [soft] c")


def test_generate(tiny_model_dir):
    result = invoke("generate", "a great movie", "--model", tiny_model_dir, "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr


def test_generate_with_artifact(trained, tiny_model_dir):
    args = [
        "generate",
        "a great movie",
        "--artifact",
        trained["art"],
        "--model",
        tiny_model_dir,
        "--max-new-tokens",
        "3",
    ]
    first, again = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == again.stdout  # greedy decoding is deterministic


# --- user errors: exit code 2 and one clear line -------------------------------------------------------


def test_missing_data_file(run_main, tiny_model_dir):
    run = run_main("train", "nope.jsonl", "--out", "art", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "nope.jsonl: file not found")
    assert not Path("art").exists()


def test_malformed_line(run_main, tiny_model_dir):
    Path("rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(2)) + '{"text": "x", label}\n')
    run = run_main("train", "rows.jsonl", "--out", "art", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "rows.jsonl, line 5: not valid JSON")


def test_missing_field(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2) + [{"txt": "oops", "label": "positive"}])
    run = run_main("train", "rows.jsonl", "--out", "art", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "rows.jsonl, line 5: missing field 'text'", "label, txt")


def test_empty_label(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2) + [{"text": "oops", "label": ""}])
    run = run_main("train", "rows.jsonl", "--out", "art", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "rows.jsonl, line 5: empty label")


def test_eval_with_unknown_label(run_main, trained, tiny_model_dir):
    write_jsonl(Path("eval.jsonl"), rows(1) + [{"text": "so-so", "label": "neutral"}])
    run = run_main("eval", trained["art"], "eval.jsonl", "--model", tiny_model_dir)
    assert_user_error(run, "eval.jsonl, line 3", "label 'neutral'", "negative, positive")


def test_eval_without_labels(run_main, trained, tiny_model_dir):
    write_jsonl(Path("eval.jsonl"), [{"text": "no label here"}])
    run = run_main("eval", trained["art"], "eval.jsonl", "--model", tiny_model_dir)
    assert_user_error(run, "eval.jsonl, line 1: missing field 'label'")


def test_training_row_longer_than_the_context(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2) + [{"text": LONG_TEXT, "label": "positive"}])
    run = run_main("train", "rows.jsonl", "--out", "art", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "rows.jsonl, line 5", "longer than the model's context (256)")


def test_predict_text_longer_than_the_context(run_main, trained, tiny_model_dir):
    run = run_main("predict", trained["art"], LONG_TEXT, "--model", tiny_model_dir)
    assert_user_error(run, "longer than the model's context (256)")


def test_unknown_method(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main("train", "rows.jsonl", "--out", "art", "--method", "lora", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "--method lora: unknown method", "prompt-tuning", "zero-shot")


def test_unknown_init(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main("train", "rows.jsonl", "--out", "art", "--init", "zeros", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "--init zeros: unknown", "vocab", "labels")


def test_init_text_without_text(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main("train", "rows.jsonl", "--out", "art", "--init", "text", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "--init text needs --init-text")


def test_resume_without_checkpoint(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main("train", "rows.jsonl", "--out", "art", "--resume", "--model", tiny_model_dir, *FAST)
    assert_user_error(run, "--resume: no checkpoint in art.checkpoint")
    assert not Path("art").exists()


def test_bad_numbers(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main("train", "rows.jsonl", "--out", "art", "--model", tiny_model_dir, "--batch-size", "0")
    assert_user_error(run, "--batch-size 0: must be at least 1")


def test_eval_missing_artifact(run_main, tiny_model_dir):
    write_jsonl(Path("eval.jsonl"), rows(1))
    run = run_main("eval", "no-run", "eval.jsonl", "--model", tiny_model_dir)
    assert_user_error(run, "no-run: no such artifact", "prompttune train DATA --out no-run")


def test_predict_without_input(run_main, trained, tiny_model_dir):
    run = run_main("predict", trained["art"], "--model", tiny_model_dir)
    assert_user_error(run, "predict: give texts as arguments or --file")


def test_error_message_keeps_square_brackets(run_main, tiny_model_dir):
    write_jsonl(Path("rows.jsonl"), rows(2))
    run = run_main(
        "train", "rows.jsonl", "--out", "art", "--template", "Review: {{ text }}", "--model", tiny_model_dir, *FAST
    )
    assert_user_error(run, "not a built-in name", "has no [label] marker")


def test_in_process_runner_sees_the_same_error(tmp_path, tiny_model_dir):
    """CliRunner calls the app directly: the PromptTuneError is what main() turns into exit code 2."""
    result = runner.invoke(cli.app, ["train", str(tmp_path / "nope.jsonl"), "--model", str(tiny_model_dir)])
    assert isinstance(result.exception, PromptTuneError)
    assert "file not found" in str(result.exception)


# --- as a real process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subprocess_error(tmp_path_factory, tiny_model_dir):
    """``python -m prompttune.cli train`` on rows with a missing field; stderr piped, as in CI logs."""
    folder = tmp_path_factory.mktemp("proc")
    write_jsonl(folder / "rows.jsonl", rows(2) + [{"txt": "oops", "label": "positive"}])
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prompttune.cli",
            "train",
            "rows.jsonl",
            "--out",
            "art",
            "--model",
            str(tiny_model_dir),
            *FAST,
        ],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_exit_code_and_message(subprocess_error):
    proc = subprocess_error
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    text = " ".join(proc.stderr.split())
    assert "rows.jsonl, line 5: missing field 'text' (the template uses it). The row has: label, txt." in text
    assert proc.stdout == ""


def test_subprocess_message_is_one_line(subprocess_error):
    assert len(subprocess_error.stderr.strip().splitlines()) == 1, subprocess_error.stderr


def test_demo_runs_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    res = invoke("demo", "--out", str(out), "--max-steps", "3", "--model", str(tiny_model_dir))
    assert res.exit_code == 0, res.output
    assert "zero-shot" in res.output and "prompt tuning" in res.output
    assert (out / "manifest.json").exists()
    assert (tmp_path / "demo-data" / "test.jsonl").exists()
    assert sum(1 for _ in open(tmp_path / "demo-data" / "test.jsonl")) == 150
