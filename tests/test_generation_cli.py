"""Generation artifacts through the CLI (issue 14): train says what it trains (no empty label list), eval without
--json prints BLEU / ROUGE-L / EM / F1, predict / eval / generate take --num-beams (the artifact's text with beam
search, as the library writes it), and --num-beams on a label-word artifact is an error naming the flag."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from prompttune import cli
from prompttune.core.errors import PromptTuneError
from prompttune.core.generate import GenerationConfig

WORDS = ["a great movie", "the cat sat", "I loved it", "boring and bad", "a joy to watch", "what a waste"]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def refused(*args) -> str:
    """The message of the user error a command stops with (the entry point prints it and exits 2)."""
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert isinstance(result.exception, PromptTuneError), result.output
    return str(result.exception)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("gen-cli")
    data = write_jsonl(tmp / "gen.jsonl", [{"input": w, "target": f"{w} , truly fun"} for w in WORDS] * 3)
    out = tmp / "run"
    fast = ["--max-steps", "2", "--batch-size", "4", "--num-virtual-tokens", "4", "--eval-every", "2"]
    r = invoke("train", data, "--model", tiny_model_dir, "--out", out, "--method", "prompt-tuning", *fast)
    assert r.exit_code == 0, r.output
    return data, out, r.stderr


def test_train_names_a_generation_task_not_an_empty_label_list(trained):
    _, _, err = trained
    assert "labels []" not in err
    assert "generation task, targets of up to" in err and "tokens" in err


def test_eval_prints_generation_metrics(trained):
    data, out, _ = trained
    r = invoke("eval", out, data)
    assert r.exit_code == 0, r.output
    line = r.stdout.strip().splitlines()[0]
    assert line.startswith("BLEU ") and "ROUGE-L" in line and "exact match" in line and "F1" in line
    assert f"on {len(WORDS)} inputs" in line and "questions" not in line
    samples = r.stdout.strip().splitlines()[1:]
    assert samples and samples[0].strip() in WORDS  # a sample shows the input it was written for
    assert samples[1].strip().startswith("-> ") and "reference" in samples[1]


def test_num_beams_through_predict_eval_and_generate(trained):
    import prompttune

    data, out, _ = trained
    task = prompttune.load(out)
    beams = GenerationConfig(**{**task.decoding.__dict__, "num_beams": 3})
    expected = task.predict(["the cat sat", "I loved it"], config=beams)
    r = invoke("predict", out, "the cat sat", "I loved it", "--num-beams", "3", "--json")
    assert r.exit_code == 0, r.output
    got = [json.loads(line)["answer"] for line in r.stdout.strip().splitlines()]
    assert got == expected
    r = invoke("eval", out, data, "--num-beams", "3", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"bleu", "rougeL", "exact_match", "f1"} <= set(report)
    r = invoke("generate", "the cat sat", "--artifact", out, "--num-beams", "3", "--max-new-tokens", "5")
    assert r.exit_code == 0, r.output
    assert "--num-beams" in refused("predict", out, "the cat sat", "--num-beams", "0")


def test_num_beams_on_a_label_word_artifact_is_an_error(tmp_path, tiny_model_dir, sentiment_file):
    out = tmp_path / "cls"
    r = invoke(
        "train", sentiment_file, "--model", tiny_model_dir, "--out", out, "--max-steps", "1", "--batch-size", "4"
    )
    assert r.exit_code == 0, r.output
    message = refused("predict", out, "a great movie", "--num-beams", "2")
    assert "--num-beams" in message and "generation artifacts" in message
    assert "hard prompt" in refused("eval", "classify", sentiment_file, "--num-beams", "2", "--model", tiny_model_dir)
