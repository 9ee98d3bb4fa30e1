"""Bad input and faults from issue 18 (§5, §6.1, §6.4-6.6), each through the CLI where the user meets it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_jsonl
from test_cli import FAST, assert_user_error, rows, run_main  # noqa: F401  (fixture)


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", rows(8))


def train(run_main, data, out, model, *extra):  # noqa: F811
    return run_main("train", data, "--out", out, "--model", model, *FAST, *extra)


# --- §6.1 outputs never destroy what is at the path --------------------------------------------------------
def test_out_that_is_a_file_is_refused_and_kept(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    assert_user_error(train(run_main, data, f, tiny_model_dir), "--out", "is a file")
    assert f.read_text() == "hi\n"


def test_out_folder_with_other_files_is_refused_and_kept(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    v = tmp_path / "v"
    v.mkdir()
    (v / "important.txt").write_text("keep\n")
    assert_user_error(train(run_main, data, v, tiny_model_dir), "--out", "important.txt")
    assert (v / "important.txt").read_text() == "keep\n"


def test_an_earlier_artifact_is_replaced_only_with_overwrite(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir).code == 0
    before = json.loads((art / "manifest.json").read_text())["created"]
    assert_user_error(train(run_main, data, art, tiny_model_dir), "--overwrite")
    assert train(run_main, data, art, tiny_model_dir, "--overwrite").code == 0
    assert (art / "manifest.json").exists() and before


def test_an_unwritable_out_fails_before_training(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder would have to be\n")
    run = train(run_main, data, blocker / "art", tiny_model_dir)
    assert_user_error(run, "--out", "cannot write")
    assert "training" not in run.err and "train " not in run.err  # nothing trained first


def test_export_never_replaces_a_folder_of_other_files(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir, "--template", "[soft]{{ text }} [label]").code == 0
    v = tmp_path / "v"
    v.mkdir()
    (v / "important.txt").write_text("keep\n")
    assert_user_error(run_main("export", art, v, "--format", "peft", "--model", tiny_model_dir), "important.txt")
    assert (v / "important.txt").read_text() == "keep\n"


# --- §6.6 integrity ----------------------------------------------------------------------------------------
def test_damaged_weights_are_refused(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir).code == 0
    weights = art / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-8:] = b"\xff" * 8  # NaNs in the last values; the header stays intact
    weights.write_bytes(bytes(raw))
    assert_user_error(run_main("eval", art, data, "--model", tiny_model_dir), "weights.safetensors", "damaged")


def test_resume_on_other_data_is_refused(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir).code == 0
    shutil.rmtree(art)  # as after a crash: only the checkpoint is left
    other = write_jsonl(tmp_path / "other.jsonl", rows(8)[::-1][:12])
    assert_user_error(train(run_main, other, art, tiny_model_dir, "--resume"), "--resume", "other rows")


# --- §6.4 tracebacks where an error belongs ------------------------------------------------------------------
def test_data_that_is_not_utf8_names_the_line(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    assert_user_error(train(run_main, bad, tmp_path / "o", tiny_model_dir), "bad.jsonl, line 2", "UTF-8")
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir).code == 0
    assert_user_error(run_main("eval", art, bad, "--model", tiny_model_dir), "line 2", "UTF-8")
    assert_user_error(run_main("predict", art, "--file", bad, "--model", tiny_model_dir), "line 2", "UTF-8")
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"text,label\nfine,a\n\xff\xfe,b\n")
    assert_user_error(train(run_main, csv, tmp_path / "o2", tiny_model_dir), "bad.csv, line 3", "UTF-8")


def test_lone_surrogates_are_an_error(tiny_backbone):
    import prompttune

    task = prompttune.PromptTask.create(tiny_backbone, ["a", "b"], "zero-shot", {})
    with pytest.raises(prompttune.DataError, match="lone surrogate"):
        task.predict(["\ud800"])


# --- §6.5 invalid values accepted silently -----------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--limit", "-5"], "--limit"),
        (["--max-steps", "0"], "--max-steps"),
        (["--ema", "2"], "--ema"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_invalid_training_values_are_refused(run_main, data, tiny_model_dir, tmp_path, flags, needle):  # noqa: F811
    run = run_main("train", data, "--out", tmp_path / "o", "--model", tiny_model_dir, *flags)
    assert_user_error(run, needle)
    assert not (tmp_path / "o").exists()


def test_a_label_that_is_a_list_is_refused(run_main, tiny_model_dir, tmp_path):  # noqa: F811
    bad = write_jsonl(tmp_path / "l.jsonl", [{"text": "x", "label": ["positive"]}, *rows(4)])
    assert_user_error(train(run_main, bad, tmp_path / "o", tiny_model_dir), "l.jsonl, line 1", "one label")


def test_one_label_is_refused(run_main, tiny_model_dir, tmp_path):  # noqa: F811
    one = write_jsonl(tmp_path / "one.jsonl", [r for r in rows(8) if r["label"] == "positive"])
    assert_user_error(train(run_main, one, tmp_path / "o", tiny_model_dir), "at least two labels")


# --- §5 a run whose best step is 0 says so -------------------------------------------------------------------
def test_a_run_that_never_beat_step_zero_warns(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    run = train(run_main, data, tmp_path / "o", tiny_model_dir, "--lr", "1e-9", "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out.strip().splitlines()[-1])
    if summary["best_val_accuracy"] <= summary["initial_val_accuracy"]:  # nothing beat step 0 (a tie may be kept)
        assert "warning:" in run.err and "untrained prompt" in run.err
        assert summary["warnings"]
    else:
        assert not summary["warnings"]


def test_the_warning_says_when_no_step_got_past_warm_up():
    from prompttune.api import _steps_and_warmup

    assert _steps_and_warmup(2, 20) == (
        "2 steps ran, all within the 20-step warm-up (the learning rate never reached its peak)"
    )
    assert _steps_and_warmup(1, 1).startswith("1 step ran, all within")
    assert _steps_and_warmup(30, 20) == "30 steps ran, 20 of them warm-up"


# --- generation settings through the CLI ---------------------------------------------------------------------
def test_generate_refuses_bad_settings_and_honours_stop(run_main, tiny_model_dir):  # noqa: F811
    assert_user_error(run_main("generate", "hi", "--model", tiny_model_dir, "--max-new-tokens", "-3"), "max-new-tokens")
    assert_user_error(run_main("generate", "hi", "--model", tiny_model_dir, "--top-p", "0"), "top-p")
    plain = run_main("generate", "hi", "--model", tiny_model_dir, "--max-new-tokens", "8", "--repetition-penalty", "1")
    assert plain.code == 0, plain.err
    text = plain.out.rstrip("\n")
    if len(text) > 2:
        cut = run_main(
            "generate", "hi", "--model", tiny_model_dir, "--max-new-tokens", "8", "--repetition-penalty", "1",
            "--stop", text[1:3],
        )  # fmt: skip
        assert cut.code == 0 and cut.out.rstrip("\n") == text[: text.find(text[1:3])]


def test_eval_limit_takes_the_first_rows(run_main, data, tiny_model_dir, tmp_path):  # noqa: F811
    art = tmp_path / "art"
    assert train(run_main, data, art, tiny_model_dir).code == 0
    run = run_main("eval", art, data, "--model", tiny_model_dir, "--limit", "5", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out.strip().splitlines()[-1])["n"] == 5
    assert_user_error(run_main("eval", art, data, "--model", tiny_model_dir, "--limit", "0"), "--limit")
